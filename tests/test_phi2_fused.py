"""The fused phi-2 layer (_ops.phi2_layer, one parallel region per layer) gives bit-identical logits
to the per-op forward pass (phi2.forward_ops: one _ops call per operation), for every weight type
of the shared phi-2 fixtures, both file layouts and fused or separate q/k/v, prefill and decode."""
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SHARED, shared_path  # noqa: E402
from test_model_reference import _hp, random_weights, write_candle, write_llama_cpp  # noqa: E402

from llmstream import _ops  # noqa: E402
from llmstream.engine import Model, Session  # noqa: E402
from llmstream.models import phi2  # noqa: E402


def _run(path, forward, tokens, threads):
    """All-token logits of one batched prefill, then of prefill(5) + decode steps."""
    _ops.set_threads(threads)
    try:
        with Model(path, n_batch=8) as m:
            assert m._forward is phi2.forward
            m._forward = forward
            s = Session(m)
            whole = s.prefill(tokens, all_logits=True)
            s.reset()
            steps = [s.prefill(tokens[:5], all_logits=True)]
            steps += [s.decode_step(int(t)).copy()[None] for t in tokens[5:]]
    finally:
        _ops.set_threads(0)
    return whole, np.concatenate(steps)


def _check_identical(path, n_vocab):
    tokens = np.random.default_rng(11).integers(0, n_vocab, size=19).astype(np.int32)
    for threads in (1, 2):
        ref = _run(path, phi2.forward_ops, tokens, threads)
        got = _run(path, phi2.forward, tokens, threads)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def _shared_phi2():
    path = SHARED / "reference" / "MANIFEST.json"
    if not path.exists():
        return [pytest.param(None, id="shared-missing")]
    return [pytest.param(c["llama_cpp_file"], id=c["case"])
            for c in json.loads(path.read_text())["cases"] if c["case"].startswith("phi2")]


@pytest.mark.parametrize("name", _shared_phi2())
def test_fused_layer_matches_per_op_path(name):
    if name is None:
        shared_path("reference", "MANIFEST.json")
    path = shared_path("reference", name)
    with Model(path) as m:
        n_vocab = m.n_vocab
    _check_identical(path, n_vocab)


@pytest.mark.parametrize("name", ["phi2-partial8", "phi2-full-fused"])
@pytest.mark.parametrize("layout", ["llama.cpp", "candle"])
def test_fused_layer_matches_per_op_path_other_shapes(tmp_path, name, layout):
    hp = _hp(name)
    W = random_weights(hp, np.random.default_rng(zlib.crc32(name.encode())))
    path = tmp_path / "model.gguf"
    if layout == "llama.cpp":
        write_llama_cpp(path, W, hp, fused_qkv=hp.get("fused", False))
    else:
        write_candle(path, W, hp)
    _check_identical(path, hp["n_vocab"])
