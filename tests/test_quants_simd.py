"""Every AVX2 kernel against its scalar twin (set_simd(1) vs set_simd(0)) on real and random rows.

The integer part of each block dot product is the same in both; only the order in which the scaled
block sums are added in float differs. So the two must agree to within float rounding:
|simd - scalar| <= 1e-5 * max(|scalar|, sum_i |w_i x_i| / sqrt(n))
(the second term only matters when the dot product cancels to nearly zero, where a relative
difference is meaningless). Activation quantizers must agree byte for byte."""
import math

import numpy as np
import pytest

from llmstream import _ops
from quants_ref import (ACTIVATION_TYPES, BF16, BLOCK, NAMES, VEC_DOT_TYPE, WEIGHT_TYPES,
                        random_activations, random_weights, row_bytes, tensors_of_type)

pytestmark = pytest.mark.skipif(not _ops.cpu_has_avx2(),
                                reason="CPU lacks AVX2/FMA/F16C: there is no SIMD kernel to compare")

SIMD_RTOL = 1e-5


def both_levels(fn):
    before = _ops.get_simd()
    try:
        assert _ops.set_simd(0) == 0
        a = fn()
        assert _ops.set_simd(1) == 1
        b = fn()
    finally:
        _ops.set_simd(before)
    return a, b


def abs_dot(t, w, xq, n):
    wd = _ops.dequantize_row(t, w, n).astype(np.float64)
    xd = _ops.dequantize_row(VEC_DOT_TYPE[t], xq, n).astype(np.float64)
    return float(np.sum(np.abs(wd * xd)))


def check_pair(t, n, w, xq, what):
    scalar, simd = both_levels(lambda: _ops.vec_dot(t, n, w, xq))
    scale = max(abs(scalar), abs_dot(t, w, xq, n) / math.sqrt(n))
    assert abs(simd - scalar) <= SIMD_RTOL * scale, \
        f"{NAMES[t]} {what} n={n}: avx2 {simd!r} vs scalar {scalar!r} (rel {abs(simd - scalar) / scale:.2e})"
    return abs(simd - scalar) / scale if scale else 0.0


def test_every_weight_type_has_an_avx2_vec_dot():
    missing = [NAMES[t] for t in WEIGHT_TYPES if t not in _ops.simd_kernel_types()]
    assert not missing, f"no AVX2 vec_dot for {missing}: they fall back to the scalar kernel"


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_simd_vs_scalar_random_rows(t):
    rng = np.random.default_rng(2000 + t)
    xt = VEC_DOT_TYPE[t]
    blck = max(BLOCK[t][0], BLOCK[xt][0])
    sizes = [256, 512, 1280, 2048, 2816, 4096, 5120, 11008]
    if blck == 1:
        sizes += [1, 7, 31, 33, 255, 257, 1000]        # F32/F16/BF16: every tail length
    if blck == 32:
        sizes += [32, 96, 800, 4128]                   # odd block counts: the unrolled loops' tails
    for n in sizes:
        for rep in range(4):
            w = random_weights(t, n, rng)
            x = random_activations(n, rng, [1.0, 1e-3, 50.0, 1.0][rep])
            if rep == 3:
                x[: n // 2] = 0.0                      # partly empty activations (zero blocks)
            check_pair(t, n, w, _ops.quantize_row(xt, x), f"random rep {rep}")


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_simd_vs_scalar_real_rows(t):
    if t == BF16:
        pytest.skip("no BF16 tensors in the reference files (covered by the random rows)")
    found = tensors_of_type(t)
    assert found, f"no {NAMES[t]} tensor in the reference files"
    rng = np.random.default_rng(11)
    xt = VEC_DOT_TYPE[t]
    for f, name, data, n_el, ne0 in found:
        rb = row_bytes(t, ne0)
        n_rows = n_el // ne0
        xq = _ops.quantize_row(xt, random_activations(ne0, rng))
        for r in sorted({0, min(1, n_rows - 1), n_rows // 3, n_rows - 1}):
            check_pair(t, ne0, data[r * rb:(r + 1) * rb], xq, f"{f}:{name} row {r}")
        # several consecutive rows read as one long row: n up to several thousand
        k = min(n_rows, max(1, 4096 // ne0))
        n = k * ne0
        check_pair(t, n, data[:k * rb], _ops.quantize_row(xt, random_activations(n, rng)),
                   f"{f}:{name} rows 0..{k}")


@pytest.mark.parametrize("t", ACTIVATION_TYPES, ids=[NAMES[t] for t in ACTIVATION_TYPES])
def test_simd_vs_scalar_quantize(t):
    rng = np.random.default_rng(3000 + t)
    blck = BLOCK[t][0]
    for n in (256, 1024, 4096, 11008):
        for scale in (1.0, 1e-4, 1e4):
            x = random_activations(n, rng, scale)
            x[:blck] = 0.0
            a, b = both_levels(lambda: _ops.quantize_row(t, x))
            np.testing.assert_array_equal(a, b, err_msg=f"{NAMES[t]} n={n} scale={scale}")


# ---- 4-token kernels (prompt matmuls): each pinned to 4 calls of the scalar single-token kernel ----

def test_the_bench_weight_types_have_a_4_token_avx2_kernel():
    from quants_ref import Q4_0, Q4_K, Q6_K, Q8_0
    assert {Q4_0, Q8_0, Q4_K, Q6_K} <= set(_ops.simd_x4_types())


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_vec_dot_x4_vs_scalar_vec_dot(t):
    rng = np.random.default_rng(4000 + t)
    xt = VEC_DOT_TYPE[t]
    blck = max(BLOCK[t][0], BLOCK[xt][0])
    sizes = [256, 2048, 5632] + ([32, 96] if blck == 32 else []) + ([7, 33] if blck == 1 else [])
    for n in sizes:
        w = random_weights(t, n, rng)
        xs = [random_activations(n, rng, s) for s in (1.0, 1e-3, 50.0, 1.0)]
        xs[3][: n // 2] = 0.0
        xq = np.stack([_ops.quantize_row(xt, x) for x in xs])
        before = _ops.get_simd()
        try:
            _ops.set_simd(0)
            scalar = [_ops.vec_dot(t, n, w, xq[k]) for k in range(4)]
            _ops.set_simd(1)
            simd = _ops.vec_dot_x4(t, n, w, xq)
        finally:
            _ops.set_simd(before)
        for k in range(4):
            scale = max(abs(scalar[k]), abs_dot(t, w, xq[k], n) / math.sqrt(n))
            assert abs(simd[k] - scalar[k]) <= SIMD_RTOL * scale, \
                f"{NAMES[t]} n={n} token {k}: x4 {simd[k]!r} vs scalar {scalar[k]!r}"


@pytest.mark.parametrize("n", [512, 2304])
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_matmul_tiles_match_row_by_row_vec_dot(t, n, avx512):
    """matmul (chunks of rows x groups of 4 tokens, any remainder; packed activations on AVX-512)
    == the scalar vec_dot of every (row, token)."""
    rng = np.random.default_rng(5000 + t)
    xt = VEC_DOT_TYPE[t]
    n_out = 37                                   # not a multiple of 16 (the batch kernels' rows)
    w = np.stack([random_weights(t, n, rng) for _ in range(n_out)])
    rs = row_bytes(xt, n)
    for T in (1, 3, 4, 5, 9):
        x = np.stack([random_activations(n, rng) for _ in range(T)])
        y = np.zeros((T, n_out), np.float32)
        _ops.matmul(w, t, x, y, np.zeros(T * rs, np.uint8))
        before = _ops.get_simd()
        _ops.set_simd(0)
        try:
            want_all = [[_ops.vec_dot(t, n, w[r], _ops.quantize_row(xt, x[k])) for r in range(n_out)]
                        for k in range(T)]
        finally:
            _ops.set_simd(before)
        for k in range(T):
            xq = _ops.quantize_row(xt, x[k])
            for r in range(n_out):
                want = want_all[k][r]
                scale = max(abs(want), abs_dot(t, w[r], xq, n) / math.sqrt(n))
                assert abs(y[k, r] - want) <= SIMD_RTOL * scale, f"{NAMES[t]} T={T} token {k} row {r}"


@pytest.mark.parametrize("n", [512, 2304])
@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_matmul_rows_do_not_depend_on_the_batch(t, n, avx512):
    """A token's outputs are bit-identical whether it is multiplied alone or among 9 (batch kernels
    and single-token kernels share one float evaluation order): the engine's batch invariance."""
    rng = np.random.default_rng(6000 + t)
    xt = VEC_DOT_TYPE[t]
    n_out = 37
    w = np.stack([random_weights(t, n, rng) for _ in range(n_out)])
    rs = row_bytes(xt, n)
    T = 9
    x = np.stack([random_activations(n, rng) for _ in range(T)])
    y = np.zeros((T, n_out), np.float32)
    _ops.matmul(w, t, x, y, np.zeros(T * rs, np.uint8))
    for k in range(T):
        y1 = np.zeros((1, n_out), np.float32)
        _ops.matmul(w, t, x[k:k + 1], y1, np.zeros(rs, np.uint8))
        np.testing.assert_array_equal(y[k], y1[0], err_msg=f"{NAMES[t]} token {k}")


def test_avx512_is_a_simd_level():
    """AVX-512 is level 2, set like the others: on a CPU without it asking for it gives AVX2, and
    the level in use is what get_simd says."""
    before = _ops.get_simd()
    try:
        got = _ops.set_simd(_ops.SIMD_AVX512)
        want = (_ops.SIMD_AVX512 if _ops.cpu_has_avx512() else
                _ops.SIMD_AVX2 if _ops.cpu_has_avx2() else _ops.SIMD_SCALAR)
        assert got == want == _ops.get_simd()
        assert _ops.set_simd(_ops.SIMD_SCALAR) == _ops.SIMD_SCALAR == _ops.get_simd()
    finally:
        _ops.set_simd(before)
