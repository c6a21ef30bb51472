"""The fused llama layer (_ops.llama_layer, one parallel region per layer) gives bit-identical logits
to the per-op forward pass (llama.forward_ops: one _ops call per operation, in paper order), for
every weight type of the shared llama fixtures, both file layouts (llama.cpp's interleaved RoPE
rows, candle's rotate-half rows), other head layouts (MQA, MHA, GQA 6/3, tied embeddings, a sliding
window), prefill and decode, and a batch mixing two sequences at different positions."""
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
from llmstream.models import llama  # noqa: E402


def _mixed(m, tokens):
    """Two sequences in one pool: each prefilled alone, then one batch holding two tokens of the
    first (positions 7, 8) and three of the second (positions 3..5), interleaved."""
    pool = m.new_pool(64, 2, prefix_cache=False)
    a, b = pool.open([], 64), pool.open([], 64)
    outs = []
    for seq, toks in ((a, tokens[:7]), (b, tokens[10:13])):
        pool.reserve(seq, len(toks))
        n = len(toks)
        outs.append(m.forward(pool, toks, np.arange(n), np.full(n, seq.slot), np.arange(n)).copy())
        pool.commit(seq, toks)
    pool.reserve(a, 2)
    pool.reserve(b, 3)
    ids = [tokens[13], tokens[7], tokens[14], tokens[8], tokens[15]]
    pos = [3, 7, 4, 8, 5]
    seq = [b.slot, a.slot, b.slot, a.slot, b.slot]
    outs.append(m.forward(pool, ids, pos, seq, np.arange(5)).copy())
    return np.concatenate(outs)


def _run(path, forward, tokens, threads, config=None):
    """All-token logits of one batched prefill, of prefill(5) + decode steps, of a mixed batch."""
    _ops.set_threads(threads)
    try:
        with Model(path, config_path=config, n_batch=8) as m:
            assert m._forward is llama.forward
            m._forward = forward
            s = Session(m)
            whole = s.prefill(tokens, all_logits=True)
            s.reset()
            steps = [s.prefill(tokens[:5], all_logits=True)]
            steps += [s.decode_step(int(t)).copy()[None] for t in tokens[5:]]
            mixed = _mixed(m, tokens)
    finally:
        _ops.set_threads(0)
    return whole, np.concatenate(steps), mixed


def _check_identical(path, n_vocab, config=None):
    tokens = np.random.default_rng(11).integers(0, n_vocab, size=19).astype(np.int32)
    for threads in (1, 2):
        ref = _run(path, llama.forward_ops, tokens, threads, config)
        got = _run(path, llama.forward, tokens, threads, config)
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g, r)
        assert np.abs(ref[0]).max() > 0


def check_file_identical(path, config=None):
    """_check_identical on a model file, with its vocabulary size read from the file."""
    with Model(path, config_path=config) as m:
        n_vocab = m.n_vocab
    _check_identical(path, n_vocab, config)


def _shared_llama(layout):
    path = SHARED / "reference" / "MANIFEST.json"
    if not path.exists():
        return [pytest.param(None, id="shared-missing")]
    cases = [c for c in json.loads(path.read_text())["cases"] if c["case"].startswith("llama")]
    if layout == "llama.cpp":
        return [pytest.param(c["llama_cpp_file"], id=c["case"]) for c in cases]
    # the candle copies (rotate-half rows, the NeoX RoPE path) of a few types
    return [pytest.param(c["candle_file"], id=c["case"] + "-candle") for c in cases
            if c["type"] in ("Q4_0", "Q4_K_M", "Q6_K", "Q8_0")]


@pytest.mark.parametrize("name", _shared_llama("llama.cpp") + _shared_llama("candle"))
def test_fused_layer_matches_per_op_path(name):
    if name is None:
        shared_path("reference", "MANIFEST.json")
    path = shared_path("reference", name)
    config = None
    if name.endswith(".candle.gguf"):
        config = str(shared_path("reference", "llama-gqa.config.json"))
    check_file_identical(path, config)


@pytest.mark.parametrize("name, layout", [
    (n, lay) for n in ("llama-mqa-tied", "llama-mha-hd64", "llama-gqa-6-3") for lay in ("llama.cpp", "candle")
] + [("window", "candle")])     # Mistral's sliding window (4 < the 19 tokens) comes from a HF config
def test_fused_layer_matches_per_op_path_other_shapes(tmp_path, name, layout):
    hp = dict(_hp("llama-gqa-6-3"), window=4) if name == "window" else _hp(name)
    W = random_weights(hp, np.random.default_rng(zlib.crc32(name.encode())))
    path = tmp_path / "model.gguf"
    if layout == "llama.cpp":
        write_llama_cpp(path, W, hp)
    else:
        write_candle(path, W, hp)
    with Model(path) as m:
        assert m.config.sliding_window == hp.get("window", 0) or not hp.get("window")
    _check_identical(path, hp["n_vocab"])
