"""The matmul kernels with a row per lane (the AVX2 gemm / gemv pairs of csrc/quants_avx2.c, and on
AVX-512 machines those of quants_avx512.c): each pinned bit for bit to its scalar twin
(matmul_lanes_ref, csrc/quants.c), which adds a row's scaled block sums in the kernels' float order
(acc = fma(float(isum_b), d_b * dx_b, acc), block by block). Bit-identity, not a tolerance: the batch
kernel (4+ tokens, 8-row tiles repacked per call, tokens 4 at a time then 1-3) and the decode
kernel (1-3 tokens, transposed in registers) must give a token the same logits whatever it was
batched with. Widths with odd block counts, row counts that leave partial 8-row groups, token counts
that leave partial 4-token tiles, and several threads (several 256-row work items, the last partial)
are all covered. The tolerance against the single-token scalar vec_dot is in test_quants_simd.py."""
import numpy as np
import pytest

from llmstream import _ops
from quants_ref import (BLOCK, NAMES, Q4_0, Q4_K, Q6_K, Q8_0, VEC_DOT_TYPE, extreme_q32_quants,
                        random_activations, random_weights, row_bytes)

pytestmark = pytest.mark.skipif(not _ops.cpu_has_avx2(),
                                reason="CPU lacks AVX2/FMA/F16C: there is no SIMD kernel to compare")

GEMM_TYPES = [t for t in (Q4_0, Q8_0, Q4_K, Q6_K) if t in _ops.simd_gemm_types()]


def widths(t):
    be = BLOCK[t][0]
    if be == 32:
        return [32, 96, 288, 800, 2080]             # 1, 3, 9, 25, 65 blocks
    return [256, 768, 2304]                         # 1, 3, 9 super-blocks


def _quantized(t, x):
    return np.stack([_ops.quantize_row(VEC_DOT_TYPE[t], row) for row in x])


def _matmul(t, w, x):
    T, n = x.shape
    y = np.full((T, w.shape[0]), np.nan, np.float32)
    _ops.matmul(w, t, np.ascontiguousarray(x), y, np.zeros(T * row_bytes(VEC_DOT_TYPE[t], n), np.uint8))
    return y


def test_the_bench_weight_types_have_row_per_lane_avx2_kernels():
    assert {Q4_0, Q8_0, Q4_K, Q6_K} <= set(_ops.simd_gemm_types())


@pytest.mark.parametrize("t", GEMM_TYPES, ids=[NAMES[t] for t in GEMM_TYPES])
def test_matmul_equals_its_scalar_twin_bit_for_bit(t, avx512):
    rng = np.random.default_rng(9100 + t)
    for n in widths(t):
        for n_out in (1, 7, 8, 13, 37):
            w = np.stack([random_weights(t, n, rng) for _ in range(n_out)])
            for T in (1, 2, 3, 4, 5, 6, 7, 8, 9):
                x = np.stack([random_activations(n, rng, [1.0, 1e-3, 50.0][k % 3]) for k in range(T)])
                if T > 2:
                    x[2, : n // 2] = 0.0                 # partly empty activations (zero blocks)
                want = _ops.matmul_lanes_ref(t, n, w, _quantized(t, x))
                np.testing.assert_array_equal(_matmul(t, w, x), want,
                                              err_msg=f"{NAMES[t]} n={n} rows={n_out} T={T}")


@pytest.mark.parametrize("t", GEMM_TYPES, ids=[NAMES[t] for t in GEMM_TYPES])
def test_extreme_quants_do_not_overflow(t, avx512):
    """The int16 partial sums at their bounds: every weight quant at its largest magnitude and
    activations that quantize to +-127 throughout."""
    rng = np.random.default_rng(9200 + t)
    n, n_out = 512, 9
    w = np.stack([random_weights(t, n, rng) for _ in range(n_out)])
    be, bb = BLOCK[t]
    blocks = w.reshape(n_out, n // be, bb)
    if t in (Q4_0, Q8_0):
        extreme_q32_quants(t, blocks)
    for sign in (1.0, -1.0):
        x = np.full((5, n), sign, np.float32)
        x[1] = -x[1]
        x[2, ::2] = -x[2, ::2]
        want = _ops.matmul_lanes_ref(t, n, w, _quantized(t, x))
        np.testing.assert_array_equal(_matmul(t, w, x), want, err_msg=f"{NAMES[t]} sign {sign}")
        for k in range(5):
            np.testing.assert_array_equal(_matmul(t, w, x[k:k + 1])[0], want[k])


@pytest.mark.parametrize("t", GEMM_TYPES, ids=[NAMES[t] for t in GEMM_TYPES])
def test_a_token_gets_the_same_bits_in_any_batch(t, avx512):
    """Batch (4-token tiles + a 1-3 token rest) == decode (1-3 tokens) == alone, bit for bit."""
    rng = np.random.default_rng(9300 + t)
    for n in widths(t)[1:]:
        n_out = 21
        w = np.stack([random_weights(t, n, rng) for _ in range(n_out)])
        x = np.stack([random_activations(n, rng) for _ in range(11)])
        whole = _matmul(t, w, x)
        for k in range(11):
            np.testing.assert_array_equal(_matmul(t, w, x[k:k + 1])[0], whole[k], err_msg=f"token {k}")
        for a, b in ((0, 2), (3, 6), (5, 10), (1, 8)):   # 2, 3, 5, 7 tokens at other offsets
            np.testing.assert_array_equal(_matmul(t, w, x[a:b]), whole[a:b], err_msg=f"tokens {a}..{b}")


@pytest.mark.parametrize("t", GEMM_TYPES, ids=[NAMES[t] for t in GEMM_TYPES])
def test_threads_and_work_items_do_not_change_the_bits(t, avx512):
    """Several 256-row work items (the last one partial, with a partial 8-row group) on 1-3 threads."""
    rng = np.random.default_rng(9400 + t)
    n = 1024 if BLOCK[t][0] == 32 else 1536
    n_out = 300
    w = np.stack([random_weights(t, n, rng) for _ in range(n_out)])
    x = np.stack([random_activations(n, rng) for _ in range(6)])
    want = _ops.matmul_lanes_ref(t, n, w, _quantized(t, x))
    try:
        for threads in (1, 2, 3):
            _ops.set_threads(threads)
            np.testing.assert_array_equal(_matmul(t, w, x), want, err_msg=f"{threads} threads")
            np.testing.assert_array_equal(_matmul(t, w, x[:1]), want[:1], err_msg=f"{threads} threads")
            np.testing.assert_array_equal(_matmul(t, w, x[:3]), want[:3], err_msg=f"{threads} threads")
    finally:
        _ops.set_threads(0)
