"""Batch invariance: a token's logits do not depend on how the tokens were batched. Every row of
every kernel is computed on its own, so evaluating a sequence in one prefill, in chunks, or one
token at a time gives bit-identical logits. Generation relies on it: it reuses the KV cache of the
previous request's shared prefix, and "the same seed and request give the same text" must hold
whatever ran before."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SHARED, shared_path  # noqa: E402

from llmstream.engine import Model, Session  # noqa: E402


def _files():
    path = SHARED / "reference" / "MANIFEST.json"
    if not path.exists():
        return [pytest.param(None, id="shared-missing")]
    return [pytest.param(c["llama_cpp_file"], id=c["case"]) for c in json.loads(path.read_text())["cases"]]


@pytest.mark.parametrize("name", _files())
def test_logits_do_not_depend_on_batching(name):
    if name is None:
        shared_path("reference", "MANIFEST.json")
    path = shared_path("reference", name)
    rng = np.random.default_rng(7)
    with Model(path, n_batch=8) as m:
        tokens = rng.integers(0, m.n_vocab, size=21).astype(np.int32)
        s = Session(m)
        whole = s.prefill(tokens, all_logits=True)          # batches of 8, 8, 5
        s.reset()
        one_by_one = np.stack([s.prefill(tokens[:1], all_logits=True)[0]] +
                              [s.decode_step(int(t)).copy() for t in tokens[1:]])
        s.reset()
        s.prefill(tokens[:13])
        split = s.prefill(tokens[13:], all_logits=True)     # a cached prefix, then a batch of 8
    np.testing.assert_array_equal(whole, one_by_one)
    np.testing.assert_array_equal(whole[13:], split)
