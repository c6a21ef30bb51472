"""Batch invariance: a token's logits do not depend on how the tokens were batched. Every row of
every kernel is computed on its own, so evaluating a sequence in one prefill, in chunks, or one
token at a time gives bit-identical logits — and so does evaluating it in batches shared with
other sequences at other positions. Generation relies on it: it reuses the KV cache of a previous
request's shared prefix and batches every running sequence together, and "the same seed and request
give the same text" must hold whatever ran before or beside it."""
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


# Mixed batches, as the scheduler makes them: tokens of several sequences at different positions in
# one forward (prefill chunks beside single decode tokens), each sequence's own tokens in order.
# Each step: (sequence, how many of its next tokens); the rows of a step are interleaved.
MIXED_STEPS = [[(0, 5), (1, 3)],
               [(2, 4), (0, 1), (1, 5)],
               [(1, 1), (2, 1), (0, 6)],
               [(2, 3), (0, 1)],
               [(0, 1), (2, 1)]]
SLOTS = [2, 0, 1]          # the pool slot of each sequence


def _interleave(step, rng):
    """The rows of one step, (sequence, k-th of its tokens in this step), the sequences' rows
    merged in a random order that keeps each sequence's own tokens in order."""
    order = [s for s, n in step for _ in range(n)]
    rng.shuffle(order)
    seen = {}
    rows = []
    for s in order:
        rows.append((s, seen.get(s, 0)))
        seen[s] = seen.get(s, 0) + 1
    return rows


@pytest.mark.parametrize("name", _files())
def test_logits_do_not_depend_on_the_other_sequences_in_the_batch(name):
    """Model.forward with tokens of three sequences in one batch gives, for every row, bit for bit
    the logits of that sequence evaluated alone."""
    if name is None:
        shared_path("reference", "MANIFEST.json")
    path = shared_path("reference", name)
    rng = np.random.default_rng(13)
    lengths = [sum(n for step in MIXED_STEPS for s, n in step if s == i) for i in range(3)]
    with Model(path, n_batch=16) as m:
        seqs = [rng.integers(0, m.n_vocab, size=n).astype(np.int32) for n in lengths]
        alone = []
        for toks in seqs:
            s = Session(m)
            alone.append(s.prefill(toks, all_logits=True))
        pool = m.new_pool(64, 3, prefix_cache=False)
        opened = {}
        for i in sorted(range(3), key=lambda i: SLOTS[i]):   # slot SLOTS[i] for sequence i
            opened[i] = pool.open([], 64)
            assert opened[i].slot == SLOTS[i]
        n_rows = 0
        for step in MIXED_STEPS:
            rows = _interleave(step, rng)
            ids, pos, slot, where = [], [], [], []
            for s, k in rows:
                p = opened[s].n_past + k
                ids.append(seqs[s][p])
                pos.append(p)
                slot.append(SLOTS[s])
                where.append((s, p))
            for s, n in step:
                pool.reserve(opened[s], n)
            logits = m.forward(pool, ids, pos, slot, np.arange(len(ids))).copy()
            for s, n in step:
                pool.commit(opened[s], seqs[s][opened[s].n_past:opened[s].n_past + n])
            assert len(set(slot)) > 1
            for row, (s, p) in enumerate(where):
                np.testing.assert_array_equal(logits[row], alone[s][p], err_msg=f"sequence {s} position {p}")
            n_rows += len(rows)
    assert n_rows == sum(lengths)
