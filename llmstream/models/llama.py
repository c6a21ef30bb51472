"""Llama / Llama 2 / Mistral (llama.cpp `llama` layout and candle's Mistral layout).

Per layer, in paper order:  h = RMSNorm(x);  q, k, v = h Wq, h Wk, h Wv;  RoPE(q, k);
attention with grouped KV heads (and Mistral's sliding window);  x += attn Wo;
h = RMSNorm(x);  x += (silu(h Wgate) * h Wup) Wdown.   Then RMSNorm and the output projection
(tied to the token embedding when the file has no output.weight).
RoPE: base `rope.freq_base`, linear scaling (config.rope_freq_scale) and, when the file has
`rope_freqs.weight` (Llama 3.1+), its per-pair frequency factors; see _ops.rope.

`forward` runs each layer as one _ops.llama_layer call (one parallel region); `forward_ops` is the
same model one operation at a time, the reference the fused layer is pinned to bit for bit
(tests/test_llama_fused.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np

from .. import _ops
from ..errors import ModelError
from .common import embed, final_logits


@dataclass(frozen=True)
class Layer:
    attn_norm: object
    wq: object
    wk: object
    wv: object
    wo: object
    ffn_norm: object
    w_gate: object
    w_up: object
    w_down: object


@dataclass(frozen=True)
class Top:
    tok_embd: object
    out_norm: object
    output: object
    rope_freqs: object = None   # (n_rot/2,) f32 Llama 3 frequency factors, or None


def load(w, cfg):
    layers = [Layer(
        attn_norm=w.vector("attn_norm", i),
        wq=w.linear("wq", i), wk=w.linear("wk", i), wv=w.linear("wv", i), wo=w.linear("wo", i),
        ffn_norm=w.vector("ffn_norm", i),
        w_gate=w.linear("w_gate", i), w_up=w.linear("w_up", i), w_down=w.linear("w_down", i),
    ) for i in range(cfg.n_layer)]
    tok = w.linear("tok_embd")
    out = w.linear("output") if w.has("output") else tok
    return layers, Top(tok_embd=tok, out_norm=w.vector("out_norm"), output=out,
                       rope_freqs=_rope_freqs(w))


def _rope_freqs(w):
    """rope_freqs.weight as a contiguous f32 vector (None when absent); its values divide RoPE
    angles, so each must be finite and > 0."""
    f = w.vector("rope_freqs")
    if f is None:
        return None
    f = np.ascontiguousarray(f, dtype=np.float32)
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise ModelError(f"{w.gf.path}: tensor '{w.name('rope_freqs')}' holds values that are not "
                         "finite and > 0; RoPE frequency factors divide the angles")
    return f


def forward(m, pool, ids, pos, seq, want, out):
    """Evaluate ids (T,) at positions pos (T,) of the sequences in pool slots seq (T,); the logits
    of rows want into out (len(want), V)."""
    c, ws = m.config, m.ws
    T, hd = len(ids), c.head_dim
    x, h, q, k, v, att, o, f1, f2 = (a[:T] for a in (ws.x, ws.h, ws.q, ws.k, ws.v, ws.att, ws.o,
                                                      ws.f1, ws.f2))
    embed(m, ids, x)
    for i, L in enumerate(m.layers):
        _ops.llama_layer(x, L.attn_norm, L.ffn_norm, L.wq.w, L.wq.type, L.wk.w, L.wk.type,
                         L.wv.w, L.wv.type, L.wo.w, L.wo.type, L.w_gate.w, L.w_gate.type,
                         L.w_up.w, L.w_up.type, L.w_down.w, L.w_down.type,
                         pool.k[i], pool.v[i], pos, seq, pool.tables, pool.block_size,
                         c.n_head, c.n_head_kv, hd, c.n_rot, c.rope_base, c.rope_neox,
                         c.rope_freq_scale, m.top.rope_freqs, c.norm_eps,
                         c.sliding_window, h, q, k, v, att, o, f1, f2, ws.xq, pool.scratch, pool.q16)
    _final(m, x, want, out)


def forward_ops(m, pool, ids, pos, seq, want, out):
    """forward() with one _ops call per operation, in paper order."""
    c, ws = m.config, m.ws
    T, hd = len(ids), c.head_dim
    x, h, q, k, v, att, o, f1, f2 = (a[:T] for a in (ws.x, ws.h, ws.q, ws.k, ws.v, ws.att, ws.o,
                                                      ws.f1, ws.f2))
    kv = (pos, seq, pool.tables, pool.block_size)
    embed(m, ids, x)
    for i, L in enumerate(m.layers):
        _ops.rmsnorm(x, L.attn_norm, h, c.norm_eps)
        L.wq(h, q, ws.xq)
        L.wk(h, k, ws.xq)
        L.wv(h, v, ws.xq)
        _ops.rope(q, c.n_head, hd, c.n_rot, pos, c.rope_base, c.rope_neox, c.rope_freq_scale,
                  m.top.rope_freqs)
        _ops.rope(k, c.n_head_kv, hd, c.n_rot, pos, c.rope_base, c.rope_neox, c.rope_freq_scale,
                  m.top.rope_freqs)
        _ops.store_kv(k, v, pool.k[i], pool.v[i], *kv, pool.scratch, hd)
        _ops.attention(q, pool.k[i], pool.v[i], att, *kv, c.n_head, c.n_head_kv, hd,
                       1.0 / math.sqrt(hd), c.sliding_window, pool.scratch, pool.q16)
        L.wo(att, o, ws.xq)
        x += o
        _ops.rmsnorm(x, L.ffn_norm, h, c.norm_eps)
        L.w_gate(h, f1, ws.xq)
        L.w_up(h, f2, ws.xq)
        _ops.swiglu(f1, f2)
        L.w_down(f1, o, ws.xq)
        x += o
    _final(m, x, want, out)


def _final(m, x, want, out):
    """Final RMSNorm and the output projection of the rows whose logits are wanted."""
    final_logits(m, x, want, out,
                 lambda rows, hn: _ops.rmsnorm(rows, m.top.out_norm, hn, m.config.norm_eps))
