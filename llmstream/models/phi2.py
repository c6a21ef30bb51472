"""Phi-2 (llama.cpp `phi2` layout and candle's mixformer layout).

Per layer, in paper order:  h = LayerNorm(x);  q, k, v = h Wqkv + b (fused, or separate);
partial NeoX RoPE on the first n_rot dims of each head;  attention;  a = attn Wo + bo;
m = gelu(h W1 + b1) W2 + b2;  x += a + m  (attention and MLP in parallel on the same h).
Then LayerNorm and the output projection with bias.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _ops
from .common import embed, final_logits


@dataclass(frozen=True)
class Layer:
    attn_norm: object
    attn_norm_b: object
    wq: object
    wk: object
    wv: object
    wo: object
    w_up: object
    w_down: object


@dataclass(frozen=True)
class Top:
    tok_embd: object
    out_norm: object
    out_norm_b: object
    output: object


def load(w, cfg):
    E, KV = cfg.n_embd, cfg.n_embd_kv
    layers = []
    for i in range(cfg.n_layer):
        if w.has("wqkv", i):
            qkv = w.linear("wqkv", i)
            b = w.vector("bqkv", i)
            wq, wk, wv = qkv.rows(0, E, b), qkv.rows(E, E + KV, b), qkv.rows(E + KV, E + 2 * KV, b)
        else:
            wq, wk, wv = (w.linear(n, i, bias=bn) for n, bn in (("wq", "bq"), ("wk", "bk"),
                                                                ("wv", "bv")))
        layers.append(Layer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            wq=wq, wk=wk, wv=wv, wo=w.linear("wo", i, bias="bo"),
            w_up=w.linear("w_up", i, bias="b_up"), w_down=w.linear("w_down", i, bias="b_down"),
        ))
    tok = w.linear("tok_embd")
    out = w.linear("output", bias="output_b") if w.has("output") else tok
    return layers, Top(tok_embd=tok, out_norm=w.vector("out_norm"),
                       out_norm_b=w.vector("out_norm_b"), output=out)


def forward(m, pool, ids, pos, seq, want, out):
    """Evaluate ids (T,) at positions pos (T,) of the sequences in pool slots seq (T,); the logits
    of rows want into out (len(want), V).

    Each layer is one _ops.phi2_layer call (one parallel region), bit-identical to forward_ops."""
    c, ws = m.config, m.ws
    T, hd = len(ids), c.head_dim
    x, h, q, k, v, att, o, f1 = (a[:T] for a in (ws.x, ws.h, ws.q, ws.k, ws.v, ws.att, ws.o,
                                                  ws.f1))
    embed(m, ids, x)
    for i, L in enumerate(m.layers):
        _ops.phi2_layer(x, L.attn_norm, L.attn_norm_b, L.wq.w, L.wq.type, L.wq.b,
                        L.wk.w, L.wk.type, L.wk.b, L.wv.w, L.wv.type, L.wv.b,
                        L.wo.w, L.wo.type, L.wo.b, L.w_up.w, L.w_up.type, L.w_up.b,
                        L.w_down.w, L.w_down.type, L.w_down.b,
                        pool.k[i], pool.v[i], pos, seq, pool.tables, pool.block_size,
                        c.n_head, c.n_head_kv, hd, c.n_rot, c.rope_base, c.rope_freq_scale,
                        c.norm_eps,
                        c.sliding_window, h, q, k, v, att, o, f1, ws.xq, pool.scratch, pool.q16)
    _final(m, x, want, out)


def forward_ops(m, pool, ids, pos, seq, want, out):
    """forward() with one _ops call per operation (the reference the fused layer must match)."""
    c, ws = m.config, m.ws
    T, hd = len(ids), c.head_dim
    x, h, q, k, v, att, o, f1 = (a[:T] for a in (ws.x, ws.h, ws.q, ws.k, ws.v, ws.att, ws.o,
                                                  ws.f1))
    q_scale = 1.0 / math.sqrt(hd)
    kv = (pos, seq, pool.tables, pool.block_size)
    embed(m, ids, x)
    for i, L in enumerate(m.layers):
        _ops.layernorm(x, L.attn_norm, L.attn_norm_b, h, c.norm_eps)
        L.wq(h, q, ws.xq)
        L.wk(h, k, ws.xq)
        L.wv(h, v, ws.xq)
        _ops.rope(q, c.n_head, hd, c.n_rot, pos, c.rope_base, True, c.rope_freq_scale)
        _ops.rope(k, c.n_head_kv, hd, c.n_rot, pos, c.rope_base, True, c.rope_freq_scale)
        q *= q_scale  # phi-2 scales queries before Q·K (as llama.cpp does), attention scale 1
        _ops.store_kv(k, v, pool.k[i], pool.v[i], *kv, pool.scratch, hd)
        _ops.attention(q, pool.k[i], pool.v[i], att, *kv, c.n_head, c.n_head_kv, hd,
                       1.0, c.sliding_window, pool.scratch, pool.q16)
        L.wo(att, o, ws.xq)
        L.w_up(h, f1, ws.xq)
        _ops.gelu(f1)
        L.w_down(f1, att, ws.xq)
        o += att
        x += o
    _final(m, x, want, out)


def _final(m, x, want, out):
    """Final LayerNorm and the output projection (with bias) of the rows whose logits are wanted."""
    final_logits(m, x, want, out, lambda rows, hn: _ops.layernorm(
        rows, m.top.out_norm, m.top.out_norm_b, hn, m.config.norm_eps))
