"""Pieces every architecture shares: the embedding lookup and the rows whose logits are wanted."""
from __future__ import annotations

import numpy as np

from .. import _ops


def embed(m, ids: np.ndarray, x: np.ndarray):
    """ids (T,) -> x (T, E): rows of the token embedding, dequantized from the mmap."""
    e = m.top.tok_embd
    _ops.get_rows(e.w, e.type, ids, x)


def final_rows(m, x: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The rows want (R,) of x (T, E), gathered into the workspace's (R, E) buffer."""
    rows = m.ws.rows[:len(want)]
    np.take(x, want, axis=0, out=rows)
    return rows
