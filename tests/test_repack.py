"""Repacked weights (csrc/formats.h "Repacked layouts"): Q4_K and Q6_K matmul weights rewritten at
load with 8 rows interleaved, on AVX2 CPUs without the AVX-512 kernels. A repacked tensor must give
exactly the bits of the row-per-lane kernels on its source layout (their scalar twin,
matmul_lanes_ref), at both SIMD levels, for any token count (one kernel for 1-7 tokens, tiles made
from the x8 blocks for 8+), and a model loaded either way must give the same logits. Bit-identity,
not a tolerance: prefix reuse and seeded generation rely on it.

IQ4_NL and IQ4_XS are repacked too, but their file layout has no row-per-lane kernel (it goes through
vec_dot, which adds the block sums in another float order): their x8 kernels are pinned bit for bit
to their own scalar twin (the x8 matmul at the scalar level) and agree with the file's layout to
float rounding; a model loaded either way agrees within that, and batching still changes no bit."""
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from llmstream import _ops
from llmstream.engine import Linear, Model, Session, repack_by_default
from llmstream.gguf import GGUFFile
from quants_ref import (IQ4_NL, IQ4_XS, NAMES, Q4_0, Q4_K, Q6_K, VEC_DOT_TYPE, random_activations,
                        random_weights)

X8_TYPES = [Q4_K, Q6_K, IQ4_NL, IQ4_XS]
# x8 types whose source has no row-per-lane kernel: pinned to the scalar twin of the x8 kernel itself
OWN_TWIN = {IQ4_NL, IQ4_XS}
IQ4_DATA = Path(__file__).parent / "data" / "iq4"


def _matmul(t, w, x):
    T, n = x.shape
    y = np.full((T, w.shape[0]), np.nan, np.float32)
    _ops.matmul(w, t, np.ascontiguousarray(x), y, np.zeros(T * _ops.vec_dot_row_bytes(t, n), np.uint8))
    return y


def _weights(t, n, rows, rng):
    return np.stack([random_weights(t, n, rng) for _ in range(rows)])


def _reference(t, n, w, w8, t8, x):
    """The bits the x8 kernel must give on x: the row-per-lane twin on the source rows, or (OWN_TWIN)
    the scalar twin of the x8 kernel."""
    if t not in OWN_TWIN:
        return _ops.matmul_lanes_ref(t, n, w, np.stack([_ops.quantize_row(VEC_DOT_TYPE[t], r) for r in x]))
    before = _ops.get_simd()
    _ops.set_simd(_ops.SIMD_SCALAR)
    try:
        return _matmul(t8, w8, x)
    finally:
        _ops.set_simd(before)


def _assert_close_to_source(got, t, w, x, msg=""):
    """got within float rounding of the matmul on the source rows (vec_dot at this level): a relative
    1e-5 of the result, plus 1e-5 of the scale sum_k |w_k x_k| a row's float sums could lose."""
    n = x.shape[1]
    want = _matmul(t, w, x)
    absw = np.abs(np.stack([_ops.dequantize_row(t, r, n) for r in w]))
    scale = np.abs(x) @ absw.T
    err = np.abs(got.astype(np.float64) - want)
    bound = 1e-5 * np.abs(want) + 1e-5 * scale
    assert np.all(err <= bound), f"{msg}: worst error {np.max(err / (bound + 1e-30)):.2f} x the bound"


@pytest.fixture(params=["avx2", "scalar"])
def level(request):
    before = _ops.get_simd()
    want = _ops.SIMD_AVX2 if request.param == "avx2" else _ops.SIMD_SCALAR
    if _ops.set_simd(want) != want:
        _ops.set_simd(before)
        pytest.skip("CPU lacks AVX2/FMA/F16C")
    yield request.param
    _ops.set_simd(before)


@pytest.mark.parametrize("t", X8_TYPES, ids=[NAMES[t] for t in X8_TYPES])
def test_repacked_matmul_gives_the_source_bits(t, level):
    rng = np.random.default_rng(7300 + t)
    for n in (256, 768, 2304):
        for rows in (1, 7, 8, 13, 37):
            w = _weights(t, n, rows, rng)
            w8, t8 = _ops.repack(w, t, n)
            assert t8 == _ops.repack_type(t) and w8.shape == (rows, w8.shape[1])
            for T in (1, 2, 3, 4, 5, 7, 8, 9, 17):
                x = np.stack([random_activations(n, rng, [1.0, 1e-3, 50.0][k % 3]) for k in range(T)])
                if T > 2:
                    x[2, : n // 2] = 0.0
                got = _matmul(t8, w8, x)
                msg = f"{NAMES[t]} n={n} rows={rows} T={T}"
                np.testing.assert_array_equal(got, _reference(t, n, w, w8, t8, x), err_msg=msg)
                if t in OWN_TWIN:
                    _assert_close_to_source(got, t, w, x, msg)
                elif level == "avx2":       # the scalar level runs the source through vec_dot instead
                    np.testing.assert_array_equal(got, _matmul(t, w, x))


@pytest.mark.parametrize("t", X8_TYPES, ids=[NAMES[t] for t in X8_TYPES])
def test_extreme_quants_do_not_overflow(t, level):
    """Every quant at its largest magnitude against activations quantized to +-127: the int16 sums
    of the x8 kernels at their bounds."""
    rng = np.random.default_rng(7400 + t)
    n, rows = 512, 16
    w = _weights(t, n, rows, rng)
    blocks = w.reshape(rows, n // 256, -1)
    if t == Q4_K:
        blocks[:8, :, 16:] = 0xff                       # quants 15
        blocks[:8, :, 4:16] = 0xff                      # scales and mins 63
    elif t == Q6_K:
        blocks[:8, :, :192] = 0xff                      # quants 63
        blocks[:8, :, 192:208] = 0x7f                   # scales +127
        blocks[8:, :, 192:208] = 0x80                   # scales -128
    elif t == IQ4_NL:
        blocks = w.reshape(rows, n // 32, -1)
        blocks[:8, :, 2:] = 0x00                        # level -127 everywhere
        blocks[8:, :, 2:] = 0xf0                        # -127 and +113 in turn
    else:
        blocks[:8, :, 8:] = 0x00                        # level -127 ...
        blocks[:8, :, 2:8] = 0x00                       # ... at scale ls - 32 = -32
        blocks[8:, :, 8:] = 0xf0                        # -127 and +113 in turn
        blocks[8:, :, 2:8] = 0xff                       # at scale +31
    w8, t8 = _ops.repack(w, t, n)
    for sign in (1.0, -1.0):
        x = np.full((9, n), sign, np.float32)
        x[1] = -x[1]
        x[2, ::2] = -x[2, ::2]
        got = _matmul(t8, w8, x)
        np.testing.assert_array_equal(got, _reference(t, n, w, w8, t8, x), err_msg=f"sign {sign}")
        if t in OWN_TWIN:
            _assert_close_to_source(got, t, w, x, f"sign {sign}")


@pytest.mark.parametrize("t", [Q4_K, IQ4_XS], ids=[NAMES[Q4_K], NAMES[IQ4_XS]])
def test_threads_and_work_items_do_not_change_the_bits(t):
    """Several work items and threads (over the 1 MiB below which a matmul stays on one thread),
    the last group partial."""
    rng = np.random.default_rng(7500)
    n, rows = 2048, 1201
    w = _weights(t, n, rows, rng)
    w8, t8 = _ops.repack(w, t, n, threads=2)
    x = np.stack([random_activations(n, rng) for _ in range(6)])
    try:
        outs = []
        for threads in (1, 2, 3):
            _ops.set_threads(threads)
            outs.append(_matmul(t8, w8, x))
    finally:
        _ops.set_threads(0)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    np.testing.assert_array_equal(outs[0], _reference(t, n, w, w8, t8, x) if t in OWN_TWIN else _matmul(t, w, x))


def test_types_without_a_layout_and_bad_rows_are_refused():
    rng = np.random.default_rng(7600)
    assert _ops.repack_type(Q4_0) == -1
    with pytest.raises(ValueError, match="no repacked layout"):
        _ops.repack(_weights(Q4_0, 256, 8, rng), Q4_0, 256)
    with pytest.raises(ValueError, match="bytes"):
        _ops.repack(_weights(Q4_K, 512, 8, rng), Q4_K, 256)
    with pytest.raises(ValueError):      # an x8 layout is not a GGML type the row functions take
        _ops.dequantize_row(_ops.repack_type(Q4_K), np.zeros(148, np.uint8), 256)


def test_a_packed_linear_splits_on_groups_or_repacks_its_source():
    """phi-2's fused QKV is split by rows: a split on an 8-row boundary is a view of the packed
    weights, any other is repacked from the file's rows; both compute the rows they name."""
    rng = np.random.default_rng(7700)
    n, rows = 512, 40
    lin = Linear(_weights(Q4_K, n, rows, rng), Q4_K, n, rows)
    packed = lin.packed()
    assert packed.type == _ops.repack_type(Q4_K) and packed.src is lin and packed.packed() is packed
    x = np.stack([random_activations(n, rng) for _ in range(3)])
    full = _matmul(Q4_K, lin.w, x)
    for start, stop in ((0, 16), (16, 37), (3, 21), (37, 40)):
        part = packed.rows(start, stop)
        assert part.type == packed.type and part.n_out == stop - start
        if start % 8 == 0:
            assert np.shares_memory(part.w, packed.w)
        np.testing.assert_array_equal(_matmul(part.type, part.w, x), full[:, start:stop])


@pytest.mark.parametrize("name", ["llama-gqa-Q4_K_M.gguf", "phi2-Q4_K_M.gguf"])
def test_a_repacked_model_gives_the_same_logits(name):
    path = shared_path("reference", name)
    toks = (np.arange(1, 45) * 7) % 256
    out = {}
    for repack in (False, True):
        with Model(path, repack=repack) as m:
            assert m.repacked is repack
            if repack:
                assert {m.layers[0].wq.type, m.top.output.type} <= {_ops.repack_type(Q4_K), _ops.repack_type(Q6_K)}
            s = Session(m)
            out[repack] = [s.prefill(toks, all_logits=True).copy()] + [s.decode_step(t).copy() for t in (3, 5, 8)]
    for a, b in zip(out[False], out[True]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, t", [("llama-iq4_nl", IQ4_NL), ("llama-iq4_xs", IQ4_XS)])
def test_a_repacked_iq4_model_is_close_and_batch_invariant(name, t):
    """The llama.cpp-quantized IQ4 fixtures (tests/data/iq4): repacked, the logits are those of the
    file's layout to float rounding (test_iq4.py holds both to llama.cpp's); and a token's logits do not depend on the batch it came in (one
    prefill of 24 tokens runs the tiled kernel, the decode steps the 1-token one)."""
    tokens = np.load(IQ4_DATA / f"{name}.npz")["tokens"][:24]
    out = {}
    for repack in (False, True):
        with Model(IQ4_DATA / f"{name}.gguf", repack=repack) as m:
            if repack:
                assert m.layers[0].wq.type == _ops.repack_type(t) and m.layers[0].w_down.type == _ops.repack_type(t)
            s = Session(m)
            whole = s.prefill(tokens, all_logits=True).copy()
            s.reset()
            steps = [s.prefill(tokens[:1], all_logits=True).copy()]
            steps += [s.decode_step(int(tok)).copy()[None] for tok in tokens[1:]]
        np.testing.assert_array_equal(np.concatenate(steps), whole, err_msg=f"repack={repack}")
        out[repack] = whole
    # float rounding, amplified where it flips an activation's Q8 rounding: the file's layout at the
    # scalar level differs from it at AVX2 as much (IQ4_NL: max 0.029 std, rms 0.0023; IQ4_XS: 2e-6)
    diff, std = out[True] - out[False], out[False].std()
    rms, mx = np.sqrt(np.mean(diff ** 2)) / std, np.abs(diff).max() / std
    assert rms <= 0.01 and mx <= 0.1, f"repacked logits differ by rms {rms:.2e}, max {mx:.2e} of their std"


def test_repacking_is_on_for_avx2_without_avx512_and_env_decides(monkeypatch):
    monkeypatch.delenv("LLMSTREAM_REPACK", raising=False)
    assert repack_by_default() == (_ops.get_simd() == _ops.SIMD_AVX2 and not _ops.get_avx512())
    monkeypatch.setenv("LLMSTREAM_REPACK", "0")
    assert repack_by_default() is False
    monkeypatch.setenv("LLMSTREAM_REPACK", "1")
    assert repack_by_default() is True


def _mapping_rss_kb(path):
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                inside = len(head) >= 6 and os.path.realpath(head[-1]) == os.path.realpath(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_the_file_pages_of_repacked_weights_leave_the_resident_set():
    path = shared_path("reference", "llama-gqa-Q4_K_M.gguf")
    with GGUFFile(path) as gf:
        gf.page_in()
        before = _mapping_rss_kb(path)
        big = max(gf.tensors, key=lambda k: gf.tensors[k].nbytes)
        gf.release(big)
        after = _mapping_rss_kb(path)
        assert before - after >= gf.tensors[big].nbytes // 1024 - 8
        assert int(gf.raw(big)[0, 0]) >= 0            # still readable: it comes back from the cache
