"""IQ4_NL and IQ4_XS weights (GGML types 20 and 23: 4-bit indices into a fixed non-linear table).

- the block layouts exactly as csrc/formats.h states them, on hand-made blocks (every index, scales
  across the whole 6-bit range); the kernels against gguf-py's dequantizer, float64 dot products and
  their scalar twins are in test_quants.py and test_quants_simd.py, whose type lists hold both;
- the fixtures of tests/data/iq4/ (scripts/make_iq4_fixtures.py: a tiny random-weight llama quantized
  by llama.cpp, with llama.cpp's logits for 96 tokens): the file really holds the type, and our logits
  (64 tokens in one batch, then 32 decode steps) are within the bounds of test_conformance.py, with
  the AVX2 kernels and with the scalar ones;
- on those files the fused llama layer is bit-identical to the per-op path, and a token's logits do
  not depend on the batch it came in.

Run `python tests/test_iq4.py` for the table of measured figures."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from quants_ref import IQ4_NL, IQ4_XS  # noqa: E402
from test_llama_fused import check_file_identical  # noqa: E402
from test_rope import BOUNDS, measure_file  # noqa: E402

from llmstream import _ops  # noqa: E402
from llmstream.engine import Model, Session  # noqa: E402
from llmstream.gguf import GGUFFile  # noqa: E402

DATA = Path(__file__).parent / "data" / "iq4"
MANIFEST = json.loads((DATA / "MANIFEST.json").read_text())
FIXTURES = sorted(MANIFEST["fixtures"])
N_PROMPT = 64
LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def _pack(idx):
    """(k, 32) indices -> k x 16 bytes: element j < 16 in the low nibble of byte j, j + 16 high."""
    return (idx[:, :16] | idx[:, 16:] << 4).astype(np.uint8).reshape(-1)


def test_iq4_nl_block_layout(simd):
    idx = np.concatenate([np.arange(16), 15 - np.arange(16)]).reshape(1, 32)
    block = np.concatenate([np.array([-0.75], np.float16).view(np.uint8), _pack(idx)])
    np.testing.assert_array_equal(_ops.dequantize_row(IQ4_NL, block, 32),
                                  np.float32(-0.75) * LEVELS[idx[0]])


def test_iq4_xs_block_layout(simd):
    ls = np.array([0, 1, 31, 32, 33, 47, 63, 16])            # 6-bit sub-block scales, bias 32
    idx = np.random.default_rng(0).integers(0, 16, (8, 32))
    idx[0, :16] = np.arange(16)
    scales_h = np.array([np.sum(((ls >> 4) & 3) << (2 * np.arange(8)))], np.uint16)
    scales_l = ((ls[0::2] & 15) | (ls[1::2] & 15) << 4).astype(np.uint8)
    block = np.concatenate([np.array([1.5], np.float16).view(np.uint8), scales_h.view(np.uint8),
                            scales_l, _pack(idx)])
    assert block.size == 136
    dl = np.float32(1.5) * (ls - 32).astype(np.float32)
    np.testing.assert_array_equal(_ops.dequantize_row(IQ4_XS, block, 256),
                                  (dl[:, None] * LEVELS[idx]).reshape(-1))


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_holds_its_type(name):
    """Every layer matrix and the token embedding are in the fixture's type (output.weight is Q6_K,
    as llama.cpp makes it in IQ4 files)."""
    want = MANIFEST["fixtures"][name]["type"]
    with GGUFFile(DATA / f"{name}.gguf") as gf:
        types = {n: t.type_name for n, t in gf.tensors.items() if len(t.shape) == 2}
    assert types.pop("output.weight") == "Q6_K"
    assert len(types) == 1 + 7 * MANIFEST["dims"]["n_layer"] and set(types.values()) == {want}


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_match_llama_cpp(name, simd):
    rms, mx = measure_file(DATA / f"{name}.gguf", n_prompt=N_PROMPT)
    assert rms <= BOUNDS[0] and mx <= BOUNDS[1], f"{name}: rms {rms:.5f}, max {mx:.5f} (units of σ)"


@pytest.mark.parametrize("name", FIXTURES)
def test_fused_layer_matches_per_op_path(name):
    check_file_identical(DATA / f"{name}.gguf")


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_do_not_depend_on_the_batch(name):
    tokens = np.load(DATA / f"{name}.npz")["tokens"][:24]
    with Model(DATA / f"{name}.gguf") as m:
        s = Session(m)
        whole = s.prefill(tokens, all_logits=True).copy()
        s.reset()
        steps = [s.prefill(tokens[:5], all_logits=True).copy()]
        steps += [s.decode_step(int(t)).copy()[None] for t in tokens[5:]]
    np.testing.assert_array_equal(np.concatenate(steps), whole)


if __name__ == "__main__":
    for name in FIXTURES:
        for level, label in ((1, "avx2"), (0, "scalar")):
            before = _ops.get_simd()
            _ops.set_simd(level)
            try:
                rms, mx = measure_file(DATA / f"{name}.gguf", n_prompt=N_PROMPT)
            finally:
                _ops.set_simd(before)
            print(f"{name:<14} {label:<7} rms {rms:.5f}  max {mx:.5f}")
    print(f"bounds: rms {BOUNDS[0]}, max {BOUNDS[1]} (units of the llama.cpp logits' std)")
