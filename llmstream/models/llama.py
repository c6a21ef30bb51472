"""Llama / Llama 2 / Mistral (llama.cpp `llama` layout and candle's Mistral layout).

Per layer, in paper order:  h = RMSNorm(x);  q, k, v = h Wq, h Wk, h Wv;  RoPE(q, k);
attention with grouped KV heads (and Mistral's sliding window);  x += attn Wo;
h = RMSNorm(x);  x += (silu(h Wgate) * h Wup) Wdown.   Then RMSNorm and the output projection
(tied to the token embedding when the file has no output.weight).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import _ops
from .common import embed, final_rows


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


def load(w, cfg):
    layers = [Layer(
        attn_norm=w.vector("attn_norm", i),
        wq=w.linear("wq", i), wk=w.linear("wk", i), wv=w.linear("wv", i), wo=w.linear("wo", i),
        ffn_norm=w.vector("ffn_norm", i),
        w_gate=w.linear("w_gate", i), w_up=w.linear("w_up", i), w_down=w.linear("w_down", i),
    ) for i in range(cfg.n_layer)]
    tok = w.linear("tok_embd")
    out = w.linear("output") if w.has("output") else tok
    return layers, Top(tok_embd=tok, out_norm=w.vector("out_norm"), output=out)


def forward(m, ids, pos0: int, out):
    """Evaluate ids (T,) at positions pos0.. ; logits into out (T or 1, V) when out is given."""
    c, ws, cache = m.config, m.ws, m.cache
    T, hd = len(ids), c.head_dim
    x, h, q, k, v, att, o, f1, f2 = (a[:T] for a in (ws.x, ws.h, ws.q, ws.k, ws.v, ws.att, ws.o,
                                                      ws.f1, ws.f2))
    embed(m, ids, x)
    for i, L in enumerate(m.layers):
        _ops.llama_layer(x, L.attn_norm, L.ffn_norm, L.wq.w, L.wq.type, L.wk.w, L.wk.type,
                         L.wv.w, L.wv.type, L.wo.w, L.wo.type, L.w_gate.w, L.w_gate.type,
                         L.w_up.w, L.w_up.type, L.w_down.w, L.w_down.type,
                         cache.k[i], cache.v[i], pos0, c.n_head, c.n_head_kv, hd, c.n_rot,
                         c.rope_base, c.rope_neox, c.norm_eps, c.sliding_window,
                         h, q, k, v, att, o, f1, f2, ws.xq, ws.scratch, ws.q16)
    if out is not None:
        rows = final_rows(x, out)
        hn = h[:rows.shape[0]]
        _ops.rmsnorm(rows, m.top.out_norm, hn, c.norm_eps)
        m.top.output(hn, out, ws.xq)
