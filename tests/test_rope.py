"""RoPE scalings: Llama 3's frequency factors (rope_freqs.weight) and linear scaling.

- ls_rope (through _ops.rope) against a numpy reference that does ggml-cpu's float arithmetic
  (running product of the angle in float, divided by the factor, times 1/linear factor), out to
  position 10^6, both pair layouts, partial rotation and the no-table path (n_rot/2 > 256);
- the fixtures of tests/data/rope/ (made by scripts/make_rope_fixtures.py; the logits are
  llama.cpp's, 200 positions): our logits (160 tokens in one batch, then 40 decode steps) within the conformance bounds of test_conformance.py, and far outside
  them without the scaling (so the fixtures do test it);
- the fused llama layer bit-identical to forward_ops on those files;
- a scaling llmstream does not compute (yarn, longrope, ...) or an invalid factor: a clear error.

Run `python tests/test_rope.py` for the table of measured figures."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_llama_fused import check_file_identical  # noqa: E402
from test_model_reference import _hp, random_weights, write_candle, write_llama_cpp  # noqa: E402

from llmstream import _ops  # noqa: E402
from llmstream.engine import Model, Session  # noqa: E402
from llmstream.errors import ModelError  # noqa: E402

DATA = Path(__file__).parent / "data" / "rope"
FIXTURES = sorted(json.loads((DATA / "MANIFEST.json").read_text())["fixtures"])
BOUNDS = (0.03, 0.15)   # rms, max of |ours - llama.cpp| / std(llama.cpp), as test_conformance.py


def rope_ref(x, pos, n_head, head_dim, n_rot, base, neox, scale=1.0, factors=None):
    """x (T, n_head*head_dim) rotated as ggml-cpu's rope computes it: per token the angle of pair
    i is a running product pos * ts^i in float32 (ts = base^(-2/n_rot) in float32), divided by
    factors[i], times scale, all in float32; cos/sin and the rotation in float64."""
    f32 = np.float32
    y = x.astype(np.float64)
    half = n_rot // 2
    ts = f32(float(base) ** (-2.0 / n_rot))
    i0 = np.arange(half) if neox else 2 * np.arange(half)
    i1 = i0 + half if neox else i0 + 1
    for t in range(len(x)):
        theta, th = f32(pos[t]), np.empty(half)
        for i in range(half):
            ff = f32(1.0) if factors is None else factors[i]
            th[i] = f32(f32(scale) * f32(theta / ff))
            theta = f32(theta * ts)
        c, s = np.cos(th), np.sin(th)
        for h in range(n_head):
            v = y[t, h * head_dim:(h + 1) * head_dim]
            a, b = v[i0].copy(), v[i1].copy()
            v[i0], v[i1] = a * c - b * s, a * s + b * c
    return y


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("head_dim, n_rot", [(128, 128), (64, 32), (1040, 1040)])
@pytest.mark.parametrize("base", [10000.0, 500000.0, 1e6])
def test_ls_rope_matches_ggml_arithmetic(neox, head_dim, n_rot, base):
    rng = np.random.default_rng(int(base) + head_dim + neox)
    n_head = 3
    pos = np.array([0, 1, 17, 4095, 100_000, 1_000_000], np.int32)
    x = rng.standard_normal((len(pos), n_head * head_dim)).astype(np.float32)
    factors = rng.uniform(1.0, 8.0, n_rot // 2).astype(np.float32)
    for scale, ff in ((1.0, None), (0.25, None), (1.0, factors), (1 / 3, factors)):
        y = x.copy()
        _ops.rope(y, n_head, head_dim, n_rot, pos, base, neox, scale, ff)
        ref = rope_ref(x, pos, n_head, head_dim, n_rot, base, neox, scale, ff)
        # the same float angles: only cos/sin rounding (glibc cosf/sinf vs float64) differs
        np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6)
        if n_rot < head_dim:    # the unrotated dims stay as they were, bit for bit
            tail = np.arange(n_head * head_dim).reshape(n_head, head_dim)[:, n_rot:].ravel()
            np.testing.assert_array_equal(y[:, tail], x[:, tail])


def test_rope_defaults_are_plain_rope():
    """Factors of 1 and scale 1 are plain RoPE bit for bit; linear scale 1/4 at position 4p is plain
    RoPE at p bit for bit (scaling by a power of two is exact), i.e. positions divided by 4."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2 * 64)).astype(np.float32)
    pos = np.array([0, 8, 400, 40_000], np.int32)
    plain, ones, lin = x.copy(), x.copy(), x.copy()
    _ops.rope(plain, 2, 64, 64, pos // 4, 1e6, False)
    _ops.rope(ones, 2, 64, 64, pos // 4, 1e6, False, 1.0, np.ones(32, np.float32))
    _ops.rope(lin, 2, 64, 64, pos, 1e6, False, 0.25)
    np.testing.assert_array_equal(ones, plain)
    np.testing.assert_array_equal(lin, plain)
    with pytest.raises(ValueError, match="n_rot/2"):
        _ops.rope(x.copy(), 2, 64, 64, pos, 1e6, False, 1.0, np.ones(31, np.float32))


N_PROMPT = 160   # evaluated in one batch, the rest one token at a time (llama.cpp: all in one batch)


def _logits(path, mutate=None, n_prompt=N_PROMPT):
    """Our logits for the tokens of the .npz beside the fixture `path` (n_prompt in one batch, the
    rest one at a time), and llama.cpp's from that file."""
    ref = np.load(Path(path).with_suffix(".npz"))
    tokens, expected = ref["tokens"], ref["logits"].astype(np.float64)
    with Model(path) as m:
        if mutate:
            mutate(m)
        s = Session(m)
        got = np.empty_like(expected)
        got[:n_prompt] = s.prefill(tokens[:n_prompt], all_logits=True)
        for i in range(n_prompt, len(tokens)):
            got[i] = s.decode_step(int(tokens[i]))
    return got, expected


def measure_file(path, mutate=None, n_prompt=N_PROMPT):
    """(rms, max) of |ours - llama.cpp| / std(llama.cpp logits) over every position of a fixture."""
    got, expected = _logits(path, mutate, n_prompt)
    err = (got - expected) / expected.std()
    return float(np.sqrt(np.mean(err ** 2))), float(np.abs(err).max())


def measure(name, mutate=None):
    return measure_file(DATA / f"{name}.gguf", mutate)


def _without_scaling(m):
    """The model as it would run if the file's RoPE scaling were ignored."""
    m.top = replace(m.top, rope_freqs=None)
    m.config = replace(m.config, rope_scaling="none", rope_scaling_factor=1.0)


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_match_llama_cpp(name):
    with Model(DATA / f"{name}.gguf") as m:   # the fixture carries what its name says
        if name == "llama-rope-freqs":
            assert m.top.rope_freqs is not None and m.top.rope_freqs.max() == 8.0
            assert m.config.rope_scaling == "none"
        else:
            assert (m.config.rope_scaling, m.config.rope_scaling_factor) == ("linear", 4.0)
            assert m.config.rope_base == 1e6 and m.config.rope_freq_scale == 0.25
    rms, mx = measure(name)
    assert rms <= BOUNDS[0] and mx <= BOUNDS[1], f"{name}: rms {rms:.5f}, max {mx:.5f} (units of σ)"
    rms0, _ = measure(name, _without_scaling)
    assert rms0 > 10 * BOUNDS[0], f"{name}: the fixture barely depends on its RoPE scaling ({rms0:.4f})"


@pytest.mark.parametrize("name", FIXTURES)
def test_fused_layer_matches_per_op_path(name):
    check_file_identical(DATA / f"{name}.gguf")


def _tiny(tmp_path, extra):
    hp = _hp("llama-mqa-tied")
    W = random_weights(hp, np.random.default_rng(1))
    path = tmp_path / "model.gguf"
    write_llama_cpp(path, W, hp, extra=extra)
    return path, hp


@pytest.mark.parametrize("kind", ["yarn", "longrope", "llama3", "dynamic"])
def test_unsupported_scaling_is_a_clear_error(tmp_path, kind):
    def extra(wr):
        wr.add_string("llama.rope.scaling.type", kind)
        wr.add_float32("llama.rope.scaling.factor", 4.0)
    path, _ = _tiny(tmp_path, extra)
    with pytest.raises(ModelError) as e:
        Model(path)
    msg = str(e.value)
    assert f"'{kind}'" in msg and "not supported" in msg and "linear" in msg and str(path) in msg


@pytest.mark.parametrize("factor", [-2.0, float("nan"), float("inf")])
def test_invalid_scaling_factor_is_a_clear_error(tmp_path, factor):
    def extra(wr):
        wr.add_string("llama.rope.scaling.type", "linear")
        wr.add_float32("llama.rope.scaling.factor", factor)
    path, _ = _tiny(tmp_path, extra)
    with pytest.raises(ModelError, match="factor"):
        Model(path)


@pytest.mark.parametrize("keys, expected", [
    ({}, ("none", 1.0, 1.0)),
    ({"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}, ("none", 1.0, 1.0)),
    ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 0.0}, ("none", 1.0, 1.0)),
    ({"llama.rope.scaling.factor": 2.0}, ("linear", 2.0, 0.5)),  # llama.cpp's default type: linear
    ({"llama.rope.scale_linear": 8.0}, ("linear", 8.0, 0.125)),   # the older key
])
def test_scaling_keys_read_as_llama_cpp_reads_them(tmp_path, keys, expected):
    def extra(wr):
        for k, v in keys.items():
            (wr.add_string if isinstance(v, str) else wr.add_float32)(k, v)
    path, _ = _tiny(tmp_path, extra)
    with Model(path) as m:
        c = m.config
        assert (c.rope_scaling, c.rope_scaling_factor, c.rope_freq_scale) == expected


@pytest.mark.parametrize("rope_scaling, expected", [
    ({"type": "linear", "factor": 4.0}, ("linear", 4.0)),
    ({"rope_type": "default"}, ("none", 1.0)),
    ({"rope_type": "llama3", "factor": 8.0}, "'llama3'"),
    ({"type": "yarn", "factor": 4.0}, "'yarn'"),
    ({"type": "linear", "factor": 0}, "factor"),
])
def test_candle_config_rope_scaling(tmp_path, rope_scaling, expected):
    """A candle file's config.json `rope_scaling`: linear is used, any other type refused."""
    hp = _hp("llama-mqa-tied")
    write_candle(tmp_path / "model.gguf", random_weights(hp, np.random.default_rng(1)), hp)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, rope_scaling=rope_scaling)))
    if isinstance(expected, str):
        with pytest.raises(ModelError, match=expected):
            Model(tmp_path / "model.gguf")
        return
    with Model(tmp_path / "model.gguf") as m:
        assert (m.config.rope_scaling, m.config.rope_scaling_factor) == expected


def test_bad_rope_freqs_tensor_is_a_clear_error(tmp_path):
    hp = _hp("llama-mqa-tied")
    half = hp["n_rot"] // 2
    for bad, match in ((np.ones(half + 1, np.float32), "shape"),
                       (np.concatenate([np.zeros(1), np.ones(half - 1)]).astype(np.float32), "finite and > 0")):
        path, _ = _tiny(tmp_path, lambda wr: wr.add_tensor("rope_freqs.weight", bad))
        with pytest.raises(ModelError, match=match):
            Model(path)


def test_rope_freqs_change_the_logits_as_factors_of_the_angles(tmp_path):
    """Factors all 4 are linear scaling by 4: the same logits bit for bit."""
    hp = _hp("llama-mqa-tied")
    half = hp["n_rot"] // 2
    tokens = np.random.default_rng(2).integers(0, hp["n_vocab"], 40).astype(np.int32)
    outs = []
    for extra in (lambda wr: wr.add_tensor("rope_freqs.weight", np.full(half, 4.0, np.float32)),
                  lambda wr: (wr.add_string("llama.rope.scaling.type", "linear"),
                              wr.add_float32("llama.rope.scaling.factor", 4.0)),
                  None):
        path, _ = _tiny(tmp_path, extra)
        with Model(path) as m:
            outs.append(Session(m).prefill(tokens, all_logits=True).copy())
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


if __name__ == "__main__":
    for name in FIXTURES:
        rms, mx = measure(name)
        rms0, mx0 = measure(name, _without_scaling)
        print(f"{name:<20} rms {rms:.5f}  max {mx:.5f}   (scaling ignored: rms {rms0:.3f}  max {mx0:.3f})")
    print(f"bounds: rms {BOUNDS[0]}, max {BOUNDS[1]} (units of the llama.cpp logits' std)")
