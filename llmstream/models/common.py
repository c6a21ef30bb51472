"""Pieces every architecture shares: the embedding lookup and the output projection."""
from __future__ import annotations

import numpy as np

from .. import _ops


def embed(m, ids: np.ndarray, x: np.ndarray):
    """ids (T,) -> x (T, E): rows of the token embedding, dequantized from the mmap."""
    e = m.top.tok_embd
    _ops.get_rows(e.w, e.type, ids, x)


def final_rows(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The rows of x (T, E) whose logits are wanted: all of them, or the last one."""
    return x if out.shape[0] == x.shape[0] else x[x.shape[0] - 1:]
