"""Pieces every architecture shares: the embedding lookup and the logits of the wanted rows."""
from __future__ import annotations

import numpy as np

from .. import _ops


def embed(m, ids: np.ndarray, x: np.ndarray):
    """ids (T,) -> x (T, E): rows of the token embedding, dequantized from the mmap."""
    e = m.top.tok_embd
    _ops.get_rows(e.w, e.type, ids, x)


def final_logits(m, x: np.ndarray, want: np.ndarray, out: np.ndarray, norm) -> None:
    """The logits of the rows want (R,) of x (T, E) into out (R, V): the rows are gathered into
    the workspace, normed by norm(rows, normed) (the family's output norm), then projected."""
    if len(want):
        rows = m.ws.rows[:len(want)]
        np.take(x, want, axis=0, out=rows)
        hn = m.ws.h[:len(want)]
        norm(rows, hn)
        m.top.output(hn, out, m.ws.xq)
