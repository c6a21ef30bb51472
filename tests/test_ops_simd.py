"""The AVX2 attention head (csrc/ops_avx2.c) against the scalar one (csrc/ops.c): same f16 rounding
of q, same softmax; only the order of the float sums differs."""
import math

import numpy as np
import pytest

from llmstream import _ops

pytestmark = pytest.mark.skipif(not _ops.cpu_has_avx2(),
                                reason="CPU lacks AVX2/FMA/F16C: there is no SIMD kernel to compare")


def run_attention(level, q, kc, vc, pos0, n_head, n_kv, hd, window):
    before = _ops.get_simd()
    try:
        _ops.set_simd(level)
        out = np.zeros_like(q)
        threads = 2
        scratch = np.zeros((threads, kc.shape[0] + 2 * hd), np.float32)
        q16 = np.zeros((threads, hd), np.uint16)
        # the cache as a paged pool: blocks of 8 rows in a shuffled order, positions pos0..
        T, bs = q.shape[0], 8
        n_blocks = kc.shape[0] // bs
        order = np.random.default_rng(1).permutation(n_blocks).astype(np.int32)
        kp, vp = np.empty_like(kc), np.empty_like(vc)
        for j, b in enumerate(order):
            kp[b * bs:(b + 1) * bs], vp[b * bs:(b + 1) * bs] = kc[j * bs:(j + 1) * bs], vc[j * bs:(j + 1) * bs]
        pos = np.arange(pos0, pos0 + T, dtype=np.int32)
        seq = np.zeros(T, np.int32)
        _ops.attention(q, kp, vp, out, pos, seq, order[None], bs, n_head, n_kv, hd,
                       1 / math.sqrt(hd), window, scratch, q16)
        return out
    finally:
        _ops.set_simd(before)


@pytest.mark.parametrize("hd,n_head,n_kv,window", [(64, 8, 2, 0), (32, 4, 4, 0), (80, 4, 1, 5),
                                                   (24, 6, 2, 0), (128, 2, 2, 3)])
def test_attention_avx2_vs_scalar(hd, n_head, n_kv, window):
    rng = np.random.default_rng(hd + n_head)
    n_ctx, T, pos0 = 40, 7, 20
    kc = np.zeros((n_ctx, n_kv * hd), np.uint16)
    vc = np.zeros((n_ctx, n_kv * hd), np.uint16)
    for c in (kc, vc):
        vals = rng.standard_normal((n_ctx, n_kv * hd)).astype(np.float32) * 3
        for i in range(n_ctx):
            c[i] = _ops.quantize_row(_ops.TYPE_F16, vals[i]).view(np.uint16)
    q = rng.standard_normal((T, n_head * hd)).astype(np.float32) * 2
    a = run_attention(0, q, kc, vc, pos0, n_head, n_kv, hd, window)
    b = run_attention(1, q, kc, vc, pos0, n_head, n_kv, hd, window)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
