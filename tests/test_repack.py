"""Repacked weights (csrc/formats.h "Repacked layouts"): matmul weights rewritten at load with 8 rows
interleaved, on AVX2 CPUs (except the types the AVX-512 kernels multiply there). A repacked tensor
of X8_TYPES (Q4_K, Q6_K, Q4_0, Q8_0) must give exactly the bits of the row-per-lane kernels on its
source layout (their scalar twin, matmul_lanes_ref), at both SIMD levels, for any token count (the
x8 blocks read in place for few tokens, tiles made from them for many: Q4_K / Q6_K from 8, Q4_0
from 64), and a model loaded either way must give the same logits. Bit-identity, not a tolerance:
prefix reuse and seeded generation rely on it. X8_ONLY_TYPES, whose source layout runs through
vec_dot (another float order: Q5_K, Q2_K, Q3_K, IQ4_NL, IQ4_XS, Q4_1, Q5_0, Q5_1), are pinned to
their scalar twins and to the source to rounding; a model loaded either way agrees within that, and
batching still changes no bit."""
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from llmstream import _ops
from llmstream.engine import Linear, Model, Session, repack_by_default
from llmstream.gguf import GGUFFile
from quants_ref import (BLOCK, F16, IQ4_NL, IQ4_XS, NAMES, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K,
                        Q6_K, Q8_0, VEC_DOT_TYPE, extreme_q32_quants, random_activations, random_weights)

X8_TYPES = [Q4_K, Q6_K]          # with a row-per-lane kernel on the source layout (matmul_lanes_ref)
X8_TYPES += [Q4_0, Q8_0]         # blocks of 32: Q4_0 x8, Q8_0 x8
X8_ONLY_TYPES = [Q5_K, Q2_K, Q3_K, IQ4_NL, IQ4_XS]   # whose source layout runs through vec_dot
X8_ONLY_Q32 = [Q4_1, Q5_0, Q5_1]                     # blocks of 32, Q4_0 x8 + their m / 5th bits
X8_ONLY_TYPES += X8_ONLY_Q32
IQ4_DATA = Path(__file__).parent / "data" / "iq4"


def _matmul(t, w, x):
    T, n = x.shape
    y = np.full((T, w.shape[0]), np.nan, np.float32)
    _ops.matmul(w, t, np.ascontiguousarray(x), y, np.zeros(T * _ops.vec_dot_row_bytes(t, n), np.uint8))
    return y


def _weights(t, n, rows, rng):
    return np.stack([random_weights(t, n, rng) for _ in range(rows)])


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
    for n in (256, 768, 2304) + ((32, 96) if BLOCK[t][0] == 32 else ()):
        for rows in (1, 7, 8, 13, 37):
            w = _weights(t, n, rows, rng)
            w8, t8 = _ops.repack(w, t, n)
            assert t8 == _ops.repack_type(t) and w8.shape == (rows, w8.shape[1])
            for T in (1, 2, 3, 4, 5, 7, 8, 9, 17):
                x = np.stack([random_activations(n, rng, [1.0, 1e-3, 50.0][k % 3]) for k in range(T)])
                if T > 2:
                    x[2, : n // 2] = 0.0
                want = _ops.matmul_lanes_ref(t, n, w, np.stack([_ops.quantize_row(VEC_DOT_TYPE[t], r) for r in x]))
                got = _matmul(t8, w8, x)
                np.testing.assert_array_equal(got, want, err_msg=f"{NAMES[t]} n={n} rows={rows} T={T}")
                if level == "avx2":         # the scalar level runs the source through vec_dot instead
                    np.testing.assert_array_equal(got, _matmul(t, w, x))


@pytest.mark.parametrize("t", X8_TYPES, ids=[NAMES[t] for t in X8_TYPES])
def test_extreme_quants_do_not_overflow(t, level):
    """Every quant at its largest magnitude against activations quantized to +-127: the int16 sums
    of the x8 kernels at their bounds."""
    rng = np.random.default_rng(7400 + t)
    n, rows = 512, 16
    w = _weights(t, n, rows, rng)
    blocks = w.reshape(rows, n // BLOCK[t][0], BLOCK[t][1])
    if t == Q4_K:
        blocks[:8, :, 16:] = 0xff                       # quants 15
        blocks[:8, :, 4:16] = 0xff                      # scales and mins 63
    elif t == Q6_K:
        blocks[:8, :, :192] = 0xff                      # quants 63
        blocks[:8, :, 192:208] = 0x7f                   # scales +127
        blocks[8:, :, 192:208] = 0x80                   # scales -128
    elif t in (Q4_0, Q8_0):
        extreme_q32_quants(t, blocks)                   # Q4_0 0 / 15, Q8_0 -128 / +127
    w8, t8 = _ops.repack(w, t, n)
    for sign in (1.0, -1.0):
        x = np.full((9, n), sign, np.float32)
        x[1] = -x[1]
        x[2, ::2] = -x[2, ::2]
        want = _ops.matmul_lanes_ref(t, n, w, np.stack([_ops.quantize_row(VEC_DOT_TYPE[t], r) for r in x]))
        np.testing.assert_array_equal(_matmul(t8, w8, x), want, err_msg=f"sign {sign}")
        for T in (1, 3, 4):                             # the kernels for fewer tokens than tiles
            np.testing.assert_array_equal(_matmul(t8, w8, x[:T]), want[:T], err_msg=f"sign {sign} T={T}")


@pytest.mark.parametrize("t", [Q4_0, Q8_0], ids=["Q4_0", "Q8_0"])
def test_prompt_sized_batches_give_the_source_bits(t, level):
    """From 64 tokens a Q4_0 x8 group is unpacked into tiles first (quants_avx2.c
    X8_Q4_0_TILE_MIN_T): both sides of that switch, a 1-3 token rest after the 4-token tiles, and
    quants at their extremes in rows 0-7."""
    rng = np.random.default_rng(7450 + t)
    for n, rows in ((96, 13), (2048, 16)):
        w = _weights(t, n, rows, rng)
        extreme_q32_quants(t, w.reshape(rows, n // 32, -1))
        w8, t8 = _ops.repack(w, t, n)
        x = np.stack([random_activations(n, rng, [1.0, 1e-3, 50.0][k % 3]) for k in range(67)])
        x[5] = 1.0
        want = _ops.matmul_lanes_ref(t, n, w, np.stack([_ops.quantize_row(VEC_DOT_TYPE[t], r) for r in x]))
        for T in (48, 63, 64, 67):
            np.testing.assert_array_equal(_matmul(t8, w8, x[:T]), want[:T], err_msg=f"{NAMES[t]} n={n} T={T}")


def _scalar(fn):
    before = _ops.get_simd()
    _ops.set_simd(_ops.SIMD_SCALAR)
    try:
        return fn()
    finally:
        _ops.set_simd(before)


@pytest.mark.parametrize("t", X8_ONLY_TYPES, ids=[NAMES[t] for t in X8_ONLY_TYPES])
def test_x8_kernels_equal_their_scalar_twin_and_the_source_to_rounding(t):
    """No row-per-lane kernel runs the source layout of these types (it goes through vec_dot, in
    another float order): the AVX2 x8 kernel is pinned to its scalar twin bit for bit, and to the
    source's matmul to float rounding."""
    if not _ops.cpu_has_avx2():
        pytest.skip("CPU lacks AVX2/FMA/F16C")
    rng = np.random.default_rng(7350 + t)
    for n in (256, 768, 2304):
        for rows in (1, 7, 8, 13, 37):
            w = _weights(t, n, rows, rng)
            w8, t8 = _ops.repack(w, t, n)
            for T in (1, 2, 3, 4, 5, 8, 9, 17):
                x = np.stack([random_activations(n, rng, [1.0, 1e-3, 50.0][k % 3]) for k in range(T)])
                got = _matmul(t8, w8, x)
                np.testing.assert_array_equal(got, _scalar(lambda: _matmul(t8, w8, x)),
                                              err_msg=f"{NAMES[t]} n={n} rows={rows} T={T}")
                src = _matmul(t, w, x)
                # per token (their scales differ by 5e4): to rounding of that token's largest output
                tol = 1e-3 * np.abs(src).max(axis=1, keepdims=True)
                assert (np.abs(got - src) <= tol).all(), f"{NAMES[t]} n={n} rows={rows} T={T}"


@pytest.mark.parametrize("t", X8_ONLY_Q32, ids=[NAMES[t] for t in X8_ONLY_Q32])
def test_x8_only_prompt_sized_batches_equal_their_scalar_twin(t):
    """Q5_0 / Q5_1 x8 groups are unpacked into tiles from 64 tokens (quants_avx2.c
    X8_Q5_TILE_MIN_T; Q4_1's never are): both sides of that switch, a 1-3 token rest after the
    4-token tiles, a partial last group, pinned to the scalar twin bit for bit."""
    if not _ops.cpu_has_avx2():
        pytest.skip("CPU lacks AVX2/FMA/F16C")
    rng = np.random.default_rng(7460 + t)
    for n, rows in ((96, 13), (2048, 16)):
        w = _weights(t, n, rows, rng)
        w8, t8 = _ops.repack(w, t, n)
        x = np.stack([random_activations(n, rng, [1.0, 1e-3, 50.0][k % 3]) for k in range(67)])
        x[5] = 1.0
        want = _scalar(lambda: _matmul(t8, w8, x))
        for T in (48, 63, 64, 67):
            np.testing.assert_array_equal(_matmul(t8, w8, x[:T]), want[:T], err_msg=f"{NAMES[t]} n={n} T={T}")


@pytest.mark.parametrize("t", X8_ONLY_TYPES, ids=[NAMES[t] for t in X8_ONLY_TYPES])
def test_x8_extreme_quants_do_not_overflow(t):
    """Every quant, scale and min at its largest against activations of +-127: the int16 sums of
    the x8 kernels at their bounds (Q5_K: 4 x 2 x 31 x 127; Q3_K: 4 x 2 x 7 x 127; IQ4: one pair
    2 x 127 x 127, at IQ4_XS's scale -32; Q4_1: 8 x 2 x 15 x 127, Q5_0 / Q5_1: 4 x 2 x 31 x 127, and
    Q5_0's offset quant 0 - 16)."""
    rng = np.random.default_rng(7450 + t)
    n, rows = 512, 16
    w = _weights(t, n, rows, rng)
    blocks = w.reshape(rows, n // 256, -1)
    if t == Q5_K:
        blocks[:8, :, 4:] = 0xff                  # scales, mins 63; qh and qs all ones: quants 31
    elif t == Q2_K:
        blocks[:8, :, :80] = 0xff                 # scales, mins 15; quants 3
    elif t == Q3_K:
        blocks[:8, :, :108] = 0xff                # high bits set, quants 3 (q = 3), scales 63 - 32
        blocks[8:, :, 32:96] = 0x00               # high bits random, low bits 0 (q = 0 or -4)
    elif t in X8_ONLY_Q32:
        blocks = w.reshape(rows, n // 32, -1)
        head = {Q4_1: 4, Q5_0: 2, Q5_1: 4}[t]     # d (and m); Q5_0 / Q5_1's qh come next
        blocks[:8, :, head:] = 0xff               # quants 15 / 31 (Q5_0: q - 16 = 15)
        blocks[8:12, :, head:] = 0x00             # quants 0 (Q5_0: -16)
        blocks[12:, :, head:] = 0xf0              # 0 and 15 (Q4_1) or 16 and 31 in turn (qh 0xf0)
    elif t == IQ4_NL:
        blocks = w.reshape(rows, n // 32, -1)
        blocks[:8, :, 2:] = 0x00                  # level -127 everywhere
        blocks[8:, :, 2:] = 0xf0                  # -127 and +113 in turn
    else:
        blocks[:8, :, 2:] = 0x00                  # level -127 at scale ls - 32 = -32
        blocks[8:, :, 2:8] = 0xff                 # scale +31 ...
        blocks[8:, :, 8:] = 0xf0                  # ... -127 and +113 in turn
    w8, t8 = _ops.repack(w, t, n)
    for sign in (1.0, -1.0):
        x = np.full((9, n), sign, np.float32)
        x[1] = -x[1]
        got = _matmul(t8, w8, x)
        np.testing.assert_array_equal(got, _scalar(lambda: _matmul(t8, w8, x)))
        src = _matmul(t, w, x)
        np.testing.assert_allclose(got, src, rtol=1e-4, atol=1e-4 * np.abs(src).max())


@pytest.mark.parametrize("t", [Q4_K, IQ4_XS, Q5_1], ids=[NAMES[Q4_K], NAMES[IQ4_XS], NAMES[Q5_1]])
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
    np.testing.assert_array_equal(outs[0], _matmul(t, w, x) if t in X8_TYPES else _scalar(lambda: _matmul(t8, w8, x)))


def test_types_without_a_layout_and_bad_rows_are_refused():
    rng = np.random.default_rng(7600)
    assert _ops.repack_type(F16) == -1
    with pytest.raises(ValueError, match="no repacked layout"):
        _ops.repack(_weights(F16, 256, 8, rng), F16, 256)
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


def _assert_same_logits_repacked(name, types):
    """A prompt's logits and three decode steps' with the model loaded in the file's layout and
    repacked (then its first query and output weights in the x8 layouts of `types`): equal bits."""
    path = shared_path("reference", name)
    toks = (np.arange(1, 45) * 7) % 256
    out = {}
    for repack in (False, True):
        with Model(path, repack=repack) as m:
            assert m.repacked is repack
            if repack:    # (on AVX-512 CPUs the types its kernels multiply keep the file's layout)
                want = {t if _ops.matmul_uses_avx512(t) else _ops.repack_type(t) for t in types}
                assert {m.layers[0].wq.type, m.top.output.type} <= want
            s = Session(m)
            out[repack] = [s.prefill(toks, all_logits=True).copy()] + [s.decode_step(t).copy() for t in (3, 5, 8)]
    for a, b in zip(out[False], out[True]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["llama-gqa-Q4_K_M.gguf", "phi2-Q4_K_M.gguf"])
def test_a_repacked_model_gives_the_same_logits(name):
    _assert_same_logits_repacked(name, (Q4_K, Q6_K))


@pytest.mark.parametrize("name", ["llama-gqa-Q4_0.gguf", "llama-gqa-Q8_0.gguf", "phi2-Q4_0.gguf", "phi2-Q8_0.gguf"])
def test_a_repacked_q4_0_or_q8_0_model_gives_the_same_logits(name):
    """Q4_0 files keep a Q6_K output (llama.cpp's mix): both x8 kinds in one model."""
    _assert_same_logits_repacked(name, (Q4_0, Q6_K) if "Q4_0" in name else (Q8_0,))


@pytest.mark.parametrize("name", ["llama-gqa-Q5_K_M.gguf", "llama-gqa-Q2_K.gguf", "llama-gqa-Q3_K_M.gguf",
                                  "phi2-Q3_K_M.gguf", "llama-gqa-Q4_1.gguf", "llama-gqa-Q5_0.gguf",
                                  "llama-gqa-Q5_1.gguf", "phi2-Q5_1.gguf"])
def test_a_repacked_model_is_batch_invariant_and_close_to_the_file_layout(name):
    """Files with x8-only types: a token's logits do not depend on batching, and they stay within
    what the scalar and AVX2 levels differ by on these files (measured: rms 0.0068 / 0.0086 / 0.012
    sigma, max 0.051 / 0.057 / 0.072 sigma for Q2_K / Q5_K_M / Q3_K_M)."""
    path = shared_path("reference", name)
    toks = (np.arange(1, 37) * 5) % 256
    with Model(path, repack=False) as m:
        plain = Session(m).prefill(toks, all_logits=True).copy()
    with Model(path, repack=True) as m:
        types = {l.type for layer in m.layers for l in vars(layer).values() if isinstance(l, Linear)}
        assert types & {_ops.repack_type(t) for t in X8_ONLY_TYPES}
        whole = Session(m).prefill(toks, all_logits=True).copy()
        s = Session(m)
        one = np.stack([s.prefill(toks[:1], all_logits=True)[0].copy()]
                       + [s.decode_step(int(t)).copy() for t in toks[1:]])
    np.testing.assert_array_equal(whole, one)
    sd = plain.std()
    assert np.sqrt(((whole - plain) ** 2).mean()) <= 0.02 * sd
    assert np.abs(whole - plain).max() <= 0.15 * sd


@pytest.mark.parametrize("name, t", [("llama-iq4_nl", IQ4_NL), ("llama-iq4_xs", IQ4_XS)])
def test_a_repacked_iq4_model_is_close_and_batch_invariant(name, t):
    """The llama.cpp-quantized IQ4 fixtures (tests/data/iq4): repacked, the logits are those of the
    file's layout to float rounding (test_iq4.py holds both to llama.cpp's); and a token's logits do
    not depend on the batch it came in (one prefill of 24 tokens runs the tiled kernel, the decode
    steps the 1-token one)."""
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


def test_repacking_is_on_with_simd_kernels_and_env_decides(monkeypatch):
    """On by default at the AVX2 and AVX-512 levels (where AVX-512 multiplies a type itself, that type
    stays in the file's layout: test below), off at the scalar level."""
    monkeypatch.delenv("LLMSTREAM_REPACK", raising=False)
    was = _ops.get_simd()
    try:
        for level in (_ops.SIMD_SCALAR, _ops.SIMD_AVX2, _ops.SIMD_AVX512):
            got = _ops.set_simd(level)
            assert repack_by_default() == (got != _ops.SIMD_SCALAR), got
    finally:
        _ops.set_simd(was)
    monkeypatch.setenv("LLMSTREAM_REPACK", "0")
    assert repack_by_default() is False
    monkeypatch.setenv("LLMSTREAM_REPACK", "1")
    assert repack_by_default() is True


def test_types_the_avx512_kernels_multiply_keep_the_file_layout(avx512):
    """On AVX-512 VNNI CPUs Q4_K / Q6_K (which quants_avx512.c multiplies) stay as in the file and Q5_K
    (which it does not) is repacked; without AVX-512 all three are repacked."""
    for name, kinds in (("llama-gqa-Q5_K_M.gguf", (Q5_K, Q6_K)), ("llama-gqa-Q4_K_M.gguf", (Q4_K, Q6_K))):
        with Model(shared_path("reference", name), repack=True) as m:
            types = {l.type for layer in m.layers for l in vars(layer).values() if isinstance(l, Linear)}
        for t in kinds:
            on_avx512 = _ops.matmul_uses_avx512(t)
            assert on_avx512 == (avx512 and t != Q5_K)
            assert (t in types) == on_avx512 and (_ops.repack_type(t) in types) != on_avx512, (name, t)


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
