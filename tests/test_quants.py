"""Quantized-tensor kernels (csrc/quants*.c via llmstream._ops): block sizes, dequantizers against
gguf-py's numpy reference on the real ../shared GGUF tensors, activation quantizers against
llama.cpp's reference rounding, vec_dot against float64 numpy, and argument checking.
SIMD-vs-scalar agreement is in test_quants_simd.py."""
import os
import subprocess
import sys

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as GT

from llmstream import _ops
from quants_ref import (ACTIVATION_TYPES, ALL_TYPES, BF16, BLOCK, F16, F32, NAMES, Q4_0, Q4_1,
                        Q5_0, Q5_1, Q8_0, Q8_1, Q8_K, REFERENCE_FILES, VEC_DOT_TYPE, WEIGHT_TYPES,
                        ref_dequantize_act, ref_quantize, random_activations, random_weights,
                        reference_tensors, row_bytes)


# ---- 1. block sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("t", ALL_TYPES, ids=[NAMES[t] for t in ALL_TYPES])
def test_type_info_matches_gguf(t):
    blck, size, vdt = _ops.type_info(t)
    want = tuple(gguf.GGML_QUANT_SIZES[GT(t)])
    if t == Q8_1 and want == (32, 40):
        # gguf <= 0.19 on PyPI still lists the old Q8_1 with float d and s (4 + 4 + 32 bytes);
        # ggml's block_q8_1 (and llama.cpp's own gguf-py) has fp16 d and s: 2 + 2 + 32.
        want = (32, 36)
    assert (blck, size) == want
    assert (blck, size) == BLOCK[t]
    assert vdt == VEC_DOT_TYPE[t]
    assert _ops.row_size(t, 4 * blck) == 4 * size


# ---- 2. dequantizers vs gguf's numpy reference -------------------------------------------------

def assert_dequant_close(got, want, what):
    assert got.shape == want.shape, what
    assert np.all(np.isfinite(got) == np.isfinite(want)), what
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin], err_msg=what)
    got, want = got[fin], want[fin]
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bound = 1e-6 * np.abs(want.astype(np.float64)) + 1e-30
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, f"{what}: {bad.size} elements differ, first at {bad[0]}: {got[bad[0]]} vs {want[bad[0]]}"


@pytest.mark.parametrize("filename", REFERENCE_FILES)
def test_dequantize_real_tensors(filename, simd):
    tensors = reference_tensors(filename)
    assert tensors, f"{filename} has no tensors"
    exact = 0
    for name, t, data, n_el, ne0 in tensors:
        want = gguf.quants.dequantize(data, GT(t)).astype(np.float32).reshape(-1)
        got = _ops.dequantize_row(t, data, n_el)
        assert_dequant_close(got, want, f"{filename}:{name} ({NAMES[t]})")
        # row by row too (the engine dequantizes single rows, e.g. token embeddings)
        rb = row_bytes(t, ne0)
        r = min(3, n_el // ne0 - 1)
        got_row = _ops.dequantize_row(t, data[r * rb:(r + 1) * rb], ne0)
        np.testing.assert_array_equal(got_row, got[r * ne0:(r + 1) * ne0])
        exact += bool(np.array_equal(got, want))
    # the formulas use ggml's operation order, so every real tensor is in fact bit-exact
    assert exact == len(tensors)


def test_reference_files_cover_every_weight_type():
    seen = set()
    for f in REFERENCE_FILES:
        seen.update(t for _, t, _, _, _ in reference_tensors(f))
    assert set(WEIGHT_TYPES) - {BF16} <= seen


@pytest.mark.parametrize("t", [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, F16, F32],
                         ids=lambda t: NAMES[t])
def test_dequantize_random_gguf_quantized(t, simd):
    """Random data quantized by gguf-py (the types it can quantize), dequantized by both."""
    rng = np.random.default_rng(t)
    for n, scale in ((32 * 7, 1.0), (4096, 0.01), (256 * 5, 300.0)):
        x = rng.standard_normal(n).astype(np.float32) * np.float32(scale)
        x[::97] = 0.0
        if t in (BF16, F32):
            x[1:4] = [np.inf, -np.inf, 1e-40]   # bf16 keeps infs and subnormals
        data = gguf.quants.quantize(x.reshape(-1, n), GT(t)).view(np.uint8).reshape(-1)
        want = gguf.quants.dequantize(data, GT(t)).astype(np.float32).reshape(-1)
        got = _ops.dequantize_row(t, data, n)
        assert_dequant_close(got, want, f"random {NAMES[t]} n={n}")
        assert np.array_equal(got, want)


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_dequantize_random_blocks_vs_gguf(t, simd):
    """Random valid blocks of every weight type (random quant bits and indices, sane fp16 scales),
    dequantized by gguf-py and by us: bit for bit (the types gguf-py cannot quantize, e.g. IQ4_XS)."""
    rng = np.random.default_rng(200 + t)
    for n in (256, 256 * 9):
        w = random_weights(t, n, rng)
        want = gguf.quants.dequantize(w, GT(t)).astype(np.float32).reshape(-1)
        np.testing.assert_array_equal(_ops.dequantize_row(t, w, n), want, err_msg=f"{NAMES[t]} n={n}")


@pytest.mark.parametrize("t", [Q8_0, Q8_1, Q8_K], ids=lambda t: NAMES[t])
def test_dequantize_activation_types(t):
    rng = np.random.default_rng(5)
    x = random_activations(1024, rng)
    q = ref_quantize(t, x)
    np.testing.assert_array_equal(_ops.dequantize_row(t, q, 1024), ref_dequantize_act(t, q))


def test_fp16_widening_every_half():
    """All 65536 halves widen exactly (F16 dequantizer = the scalar fp16 -> fp32 helper)."""
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = _ops.dequantize_row(F16, h.view(np.uint8), 65536)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    # NaN payloads are kept: widening then narrowing with F16C/numpy semantics gives the bits back
    np.testing.assert_array_equal(got[nan].view(np.uint32) >> 13 & 0x3FF, h[nan] & 0x3FF)


# ---- 3. activation quantizers: exact bytes -----------------------------------------------------

def quantize_cases(t):
    rng = np.random.default_rng(100 + t)
    blck = BLOCK[t][0]
    n = 256 * 6
    cases = {
        "normal": random_activations(n, rng),
        "tiny": random_activations(n, rng, 1e-6),
        "huge": random_activations(n, rng, 3e4),
        "zeros": np.zeros(n, np.float32),
        "single": np.zeros(n, np.float32),
    }
    cases["single"][7] = -3.0
    # exact ties: with max |x| = 127 the Q8_0 scale is 1, so x*id are the halves themselves
    ties = np.tile(np.array([127.0, 2.5, -2.5, 3.5, -0.5, 0.5, -126.5, 1.5], np.float32), n // 8)
    cases["ties"] = ties
    # Q8_K: max = -127 gives iscale = 1, so nearest_int sees exact halves (ties to even)
    cases["ties_k"] = -ties
    # first-largest |x| decides Q8_K's sign: equal magnitudes of both signs
    mixed = rng.standard_normal(n).astype(np.float32)
    mixed[0::256] = 5.0
    mixed[1::256] = -5.0
    cases["mixed_sign_max"] = mixed
    # F16 edge cases: subnormal halves, halfway points, overflow, negative zero
    edge = rng.standard_normal(n).astype(np.float32)
    edge[:12] = [65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                 2.0 ** -14 * 1.5, -0.0, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11]
    edge[12:20] = (np.arange(8) + 0.5).astype(np.float32) * np.float32(2.0 ** -24)
    cases["edges"] = edge
    if blck == 1:
        cases["uneven"] = rng.standard_normal(37).astype(np.float32)
    return cases


@pytest.mark.parametrize("t", ACTIVATION_TYPES, ids=[NAMES[t] for t in ACTIVATION_TYPES])
def test_quantize_row_exact(t, simd):
    for label, x in quantize_cases(t).items():
        got = _ops.quantize_row(t, x)
        want = ref_quantize(t, x)
        assert got.dtype == np.uint8 and got.shape == (row_bytes(t, x.size),)
        diff = np.flatnonzero(got != want)
        assert diff.size == 0, f"{NAMES[t]} {label}: {diff.size} bytes differ, first at byte {diff[0]}"


def test_quantize_q8_0_matches_gguf(simd):
    """gguf-py's Q8_0 quantizer is bit-exact with quantize_row_q8_0_ref too."""
    rng = np.random.default_rng(8)
    for scale in (1.0, 1e-3, 1e3):
        x = random_activations(2048, rng, scale)
        want = gguf.quants.quantize(x.reshape(1, -1), GT.Q8_0).view(np.uint8).reshape(-1)
        np.testing.assert_array_equal(_ops.quantize_row(Q8_0, x), want)


def test_quantize_bf16_matches_gguf_incl_nan(simd):
    x = np.array([1.0, np.nan, -np.nan, np.inf, -np.inf, 3.0e38, 1e-40, 1.00390625, 1.01171875,
                  -2.5, 0.0, -0.0, 65504.0, 1e-45, 7.0, 3.14159] * 4, np.float32)
    x.view(np.uint32)[2] = 0xFF800001          # a signalling NaN: gets quieted
    want = gguf.quants.quantize(x.reshape(1, -1), GT.BF16).view(np.uint8).reshape(-1)
    np.testing.assert_array_equal(_ops.quantize_row(BF16, x), want)


def test_quantize_f16_nan_is_quiet_0x7e00(simd):
    x = np.array([np.nan, 1.0, -np.nan, 2.0] * 8, np.float32)
    x.view(np.uint32)[2] = 0xFFC00000
    got = _ops.quantize_row(F16, x).view(np.uint16)
    assert got[0] == 0x7E00 and got[2] == 0xFE00 and got[1] == 0x3C00


# ---- 5. vec_dot vs float64 numpy -----------------------------------------------------------------

def dequant_any(t, data, n):
    if t in (Q8_1, Q8_K):
        return ref_dequantize_act(t, data)
    return gguf.quants.dequantize(data, GT(t)).astype(np.float32).reshape(-1)


def numpy_dot(t, w, xq, n):
    """float64 sum_i w_i x_i of the dequantized rows, and sum_i |w_i x_i| (the scale of rounding
    errors). For Q4_1/Q5_1 the kernel uses the stored s = fp16(d*sum(q)) of each Q8_1 block, as
    llama.cpp does; the reference uses the same s so that only float rounding can differ."""
    xt = VEC_DOT_TYPE[t]
    wd = dequant_any(t, w, n).astype(np.float64)
    xd = dequant_any(xt, xq, n).astype(np.float64)
    ref = float(np.dot(wd, xd))
    if xt == Q8_1:
        wb = w.reshape(-1, BLOCK[t][1])
        m = wb[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(-1)
        xb = xq.reshape(-1, 36)
        dx = xb[:, 0:2].copy().view(np.float16).astype(np.float64).reshape(-1)
        s = xb[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(-1)
        qsum = xb[:, 4:].copy().view(np.int8).astype(np.float64).sum(axis=1)
        ref += float(np.sum(m * (s - dx * qsum)))
    return ref, float(np.sum(np.abs(wd * xd)))


VEC_DOT_RTOL = 2e-6   # of sum|w_i x_i|: float accumulation over n/32 blocks


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_vec_dot_random_vs_numpy(t, simd):
    rng = np.random.default_rng(1000 + t)
    xt = VEC_DOT_TYPE[t]
    for n in (256, 768, 2560, 4096):
        for rep in range(3):
            w = random_weights(t, n, rng)
            xq = _ops.quantize_row(xt, random_activations(n, rng, 10.0 ** rep - 0.5))
            got = _ops.vec_dot(t, n, w, xq)
            ref, scale = numpy_dot(t, w, xq, n)
            assert abs(got - ref) <= VEC_DOT_RTOL * scale, \
                f"{NAMES[t]} n={n}: {got} vs {ref} (scale {scale}, rel {abs(got - ref) / scale:.2e})"


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=[NAMES[t] for t in WEIGHT_TYPES])
def test_vec_dot_real_rows_vs_numpy(t, simd):
    from quants_ref import tensors_of_type
    if t == BF16:
        pytest.skip("no BF16 tensors in the reference files (covered by the random rows)")
    found = tensors_of_type(t)
    assert found, f"no {NAMES[t]} tensor in the reference files"
    rng = np.random.default_rng(7)
    xt = VEC_DOT_TYPE[t]
    for f, name, data, n_el, ne0 in found[:6]:
        rb = row_bytes(t, ne0)
        n_rows = n_el // ne0
        x = random_activations(ne0, rng)
        xq = _ops.quantize_row(xt, x)
        for r in (0, n_rows // 2, n_rows - 1):
            w = data[r * rb:(r + 1) * rb]
            got = _ops.vec_dot(t, ne0, w, xq)
            ref, scale = numpy_dot(t, w, xq, ne0)
            assert abs(got - ref) <= VEC_DOT_RTOL * scale, f"{f}:{name} row {r}: {got} vs {ref}"


@pytest.mark.parametrize("threads", [1, 2])
def test_vec_dot_rows_matches_vec_dot(threads, simd):
    rng = np.random.default_rng(4)
    for t in WEIGHT_TYPES:
        n, rows = 512, 9
        w = np.concatenate([random_weights(t, n, rng) for _ in range(rows)])
        xq = _ops.quantize_row(VEC_DOT_TYPE[t], random_activations(n, rng))
        rb = row_bytes(t, n)
        want = np.array([_ops.vec_dot(t, n, w[r * rb:(r + 1) * rb], xq) for r in range(rows)], np.float32)
        np.testing.assert_array_equal(_ops.vec_dot_rows(t, n, w, xq, threads), want)
    with pytest.raises(ValueError, match="not whole rows"):
        _ops.vec_dot_rows(Q4_0, 64, np.zeros(37, np.uint8), np.zeros(68, np.uint8))


def test_vec_dot_zero_length():
    for t in WEIGHT_TYPES:
        assert _ops.vec_dot(t, 0, b"", b"") == 0.0


def test_vec_dot_from_threads(simd):
    """The kernels are re-entrant: many threads (nogil) get the same answers as one."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(3)
    n = 2048
    jobs = []
    for t in WEIGHT_TYPES:
        w = random_weights(t, n, rng)
        xq = _ops.quantize_row(VEC_DOT_TYPE[t], random_activations(n, rng))
        jobs.append((t, w, xq))
    want = [_ops.vec_dot(t, n, w, xq) for t, w, xq in jobs]
    with ThreadPoolExecutor(4) as ex:
        for _ in range(5):
            got = list(ex.map(lambda j: _ops.vec_dot(j[0], n, j[1], j[2]), jobs))
            assert got == want


# ---- 6. errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 4, 5, 16, 29, 31, 1000])
def test_unknown_type_rejected(bad):
    with pytest.raises(ValueError, match="unknown GGML type id"):
        _ops.type_info(bad)
    with pytest.raises(ValueError, match="unknown GGML type id"):
        _ops.dequantize_row(bad, np.zeros(64, np.uint8), 32)
    with pytest.raises(ValueError, match="unknown GGML type id"):
        _ops.quantize_row(bad, np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="unknown GGML type id"):
        _ops.vec_dot(bad, 32, np.zeros(64, np.uint8), np.zeros(64, np.uint8))


def test_wrong_sizes_rejected():
    w = np.zeros(18 * 4, np.uint8)                       # 4 Q4_0 blocks = 128 elements
    with pytest.raises(ValueError, match="needs 72 bytes, got 71"):
        _ops.dequantize_row(Q4_0, w[:-1], 128)
    with pytest.raises(ValueError, match="needs 90 bytes, got 72"):
        _ops.dequantize_row(Q4_0, w, 160)
    with pytest.raises(ValueError, match="not a multiple of the Q4_0 block size 32"):
        _ops.dequantize_row(Q4_0, w, 100)
    with pytest.raises(ValueError, match="n must be >= 0"):
        _ops.dequantize_row(Q4_0, w, -32)
    with pytest.raises(ValueError, match="not a multiple of the Q8_K block size 256"):
        _ops.quantize_row(Q8_K, np.zeros(300, np.float32))
    with pytest.raises(ValueError, match="converts activations only"):
        _ops.quantize_row(Q4_0, np.zeros(32, np.float32))
    xq = np.zeros(34 * 4, np.uint8)
    with pytest.raises(ValueError, match="Q4_0 weight row of 128 elements needs 72 bytes, got 71"):
        _ops.vec_dot(Q4_0, 128, w[:-1], xq)
    with pytest.raises(ValueError, match="Q8_0 activation row of 128 elements needs 136 bytes, got 135"):
        _ops.vec_dot(Q4_0, 128, w, xq[:-1])
    with pytest.raises(ValueError, match="not a multiple"):
        _ops.vec_dot(Q4_0, 100, w, xq)
    with pytest.raises(ValueError, match="SIMD level must be 0"):
        _ops.set_simd(3)
    with pytest.raises(ValueError, match="dtype mismatch"):
        _ops.quantize_row(Q8_0, np.zeros(32, np.float64))     # float32 only
    with pytest.raises(ValueError):
        _ops.quantize_row(Q8_0, np.zeros(64, np.float32)[::2])  # must be contiguous


# ---- SIMD level selection --------------------------------------------------------------------

def test_simd_level_api():
    before = _ops.get_simd()
    try:
        assert _ops.set_simd(0) == 0 and _ops.get_simd() == 0
        want = 1 if _ops.cpu_has_avx2() else 0
        assert _ops.set_simd(1) == want and _ops.get_simd() == want
    finally:
        _ops.set_simd(before)


def _best_level():
    return 2 if _ops.cpu_has_avx512() else 1 if _ops.cpu_has_avx2() else 0


@pytest.mark.parametrize("env,cap", [({"LLMSTREAM_SIMD": "scalar"}, 0), ({"LLMSTREAM_SIMD": "avx2"}, 1),
                                     ({"LLMSTREAM_SIMD": "avx512"}, 2), ({}, 2),
                                     ({"LLMSTREAM_AVX512": "0"}, 1),
                                     ({"LLMSTREAM_SIMD": "avx512", "LLMSTREAM_AVX512": "0"}, 1)],
                         ids=["scalar", "avx2", "avx512", "default", "avx512-off", "avx512-and-off"])
def test_llmstream_simd_env(env, cap):
    """The start-up level: the best the CPU has, at most what LLMSTREAM_SIMD / LLMSTREAM_AVX512 ask."""
    e = {k: v for k, v in os.environ.items() if k not in ("LLMSTREAM_SIMD", "LLMSTREAM_AVX512")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", "from llmstream import _ops; print(_ops.get_simd())"],
                         env=e, capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(min(cap, _best_level()))
