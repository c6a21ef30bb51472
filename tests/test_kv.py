"""KVPool's accounting, on its own (no model): blocks and slots, reference counts, the prefix cache
(sharing full blocks, copy-on-write of a partially matching one), LRU eviction of unpinned cached
leaves before their parents, pins, and can_open's promise that open and the next step's blocks
succeed. A fake "forward" writes into each stored position a value derived from the tokens up to
it, so every check can also verify that each sequence still reads its own keys/values."""
import copy
import random
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from llmstream.errors import ContextFullError
from llmstream.kv import KVPool

CFG = SimpleNamespace(n_layer=2, n_embd_kv=3, head_dim=3)


def pool_of(n_tokens=48, n_slots=4, block_size=4, **kw):
    return KVPool(CFG, n_tokens, n_slots, block_size=block_size, **kw)


def value(tokens, p: int, layer: int, kind: int) -> int:
    """What the fake forward stores at position p: depends on every token up to p (as keys and
    values do), the layer and k/v."""
    return zlib.crc32(repr((tuple(tokens[:p + 1]), layer, kind)).encode()) & 0xFFFF


def row(pool, seq, p: int) -> int:
    return int(pool.tables[seq.slot, p // pool.block_size]) * pool.block_size + p % pool.block_size


def feed(pool, seq, tokens):
    """reserve, 'forward' (write each new position's rows), commit — as the scheduler does."""
    pool.reserve(seq, len(tokens))
    whole = seq.tokens + list(tokens)
    for p in range(seq.n_past, len(whole)):
        for layer in range(CFG.n_layer):
            pool.k[layer][row(pool, seq, p)] = value(whole, p, layer, 0)
            pool.v[layer][row(pool, seq, p)] = value(whole, p, layer, 1)
    pool.commit(seq, tokens)


def start(pool, ids, limit=10 ** 6):
    """Open a sequence for prompt ids and evaluate what the cache did not give it."""
    seq = pool.open(ids, limit)
    assert seq.tokens == list(ids[:seq.n_past])
    feed(pool, seq, ids[seq.n_past:])
    return seq


def check(pool):
    """Every invariant of the pool; raises AssertionError with what broke."""
    bs = pool.block_size
    held = np.zeros(pool.n_blocks, np.int32)
    for s in pool.open_seqs:
        assert len(set(s.blocks)) == len(s.blocks)
        assert len(s.blocks) >= pool.blocks_for(s.n_past)
        assert list(pool.tables[s.slot, :len(s.blocks)]) == s.blocks
        for b in s.blocks:
            held[b] += 1
        for p in range(s.n_past):     # the sequence still reads its own keys and values
            for layer in range(CFG.n_layer):
                assert pool.k[layer][row(pool, s, p), 0] == value(s.tokens, p, layer, 0), \
                    f"slot {s.slot} position {p} layer {layer}: keys overwritten"
                assert pool.v[layer][row(pool, s, p), 0] == value(s.tokens, p, layer, 1)
    cached = np.zeros(pool.n_blocks, np.int32)
    seen = set()
    stack = [(pool._root, [])]
    while stack:                       # walk the tree: every node reachable, consistent
        node, prefix = stack.pop()
        for key, child in node.children.items():
            assert child.tokens == key and child.parent is node
            assert 1 <= len(key) <= bs and (len(key) == bs or not child.children)
            assert pool._nodes[child.block] is child and child.block not in seen
            seen.add(child.block)
            cached[child.block] = 1
            if child.pins:
                assert node is pool._root or node.pins, "a pinned block under an unpinned one"
            toks = prefix + list(key)
            for i in range(len(key)):  # a cached block holds the keys of its tokens
                p = len(prefix) + i
                r = child.block * bs + i
                assert pool.k[0][r, 0] == value(toks, p, 0, 0), f"cached block {child.block} corrupt"
            stack.append((child, toks))
    assert seen == set(pool._nodes)
    np.testing.assert_array_equal(pool.ref, held + cached)
    assert sorted(pool._free) == [b for b in range(pool.n_blocks) if pool.ref[b] == 0]
    assert pool.used_blocks() == int(np.count_nonzero(pool.ref))
    assert pool.active_blocks() == int(np.count_nonzero(held))
    assert sorted(pool._free_slots + [s.slot for s in pool.open_seqs]) == list(range(pool.n_slots))


def allocatable(pool) -> int:
    """How many blocks can really be allocated now (on a copy of the pool)."""
    p = copy.deepcopy(pool)
    n = 0
    while True:
        try:
            p._alloc()
        except ContextFullError:
            return n
        n += 1


def cached_len(pool, ids) -> int:
    """How many tokens of ids a sequence opened now would reuse (without opening one)."""
    full, part, n_part = pool._match(ids)
    return len(full) * pool.block_size + (n_part if part is not None else 0)


# ---------------------------------------------------------------------------------------- basics

def test_open_reserve_commit_close_return_every_block_and_slot():
    pool = pool_of()
    check(pool)
    a = start(pool, list(range(1, 11)))          # 10 tokens: 3 blocks of 4
    b = start(pool, [7] * 5)
    assert a.slot != b.slot and pool.free_slots == 2
    assert len(a.blocks) == 3 and len(b.blocks) == 2 and not set(a.blocks) & set(b.blocks)
    assert pool.used_blocks() == pool.active_blocks() == 5
    feed(pool, a, [11, 12, 13])                   # grows into a fourth block
    assert len(a.blocks) == 4 and a.n_past == 13
    check(pool)
    with pytest.raises(ContextFullError):
        pool.reserve(pool.open([1], limit=3), 4)  # beyond the sequence's own limit
    pool.close(pool.open_seqs[-1], keep=False)
    pool.close(a, keep=False)
    pool.close(b, keep=False)
    check(pool)
    assert pool.used_blocks() == 0 and pool.free_slots == 4 and not pool.ref.any()
    with pytest.raises(ContextFullError):         # no slot left: open refuses
        for _ in range(5):
            pool.open([1, 2], 10)


def test_a_closed_sequence_is_cached_and_reused_by_reference_and_copy_on_write():
    pool = pool_of()
    ids = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]      # 2 full blocks + 2 tokens
    a = start(pool, ids)
    blocks = list(a.blocks)
    pool.close(a)                                  # keep: every block goes to the cache
    check(pool)
    assert pool.active_blocks() == 0 and pool.used_blocks() == 3
    assert all(pool.ref[b] == 1 for b in blocks)
    # the same prompt and more: both full blocks shared by reference, the partial one copied
    b = pool.open(ids + [99, 98], 100)
    assert b.n_past == b.reused == 10 and b.tokens == ids
    assert b.blocks[:2] == blocks[:2] and b.blocks[2] != blocks[2]
    assert list(pool.ref[blocks]) == [2, 2, 1]
    for layer in range(CFG.n_layer):               # exactly the matching rows were copied
        for arr in (pool.k[layer], pool.v[layer]):
            np.testing.assert_array_equal(arr[b.blocks[2] * 4:b.blocks[2] * 4 + 2],
                                          arr[blocks[2] * 4:blocks[2] * 4 + 2])
            assert not arr[b.blocks[2] * 4 + 2:b.blocks[2] * 4 + 4].any()
    assert pool.hits == 1 and pool.hit_tokens == 10
    feed(pool, b, [99, 98])
    check(pool)
    # a prompt diverging inside the second block: one shared block, 2 rows of the next copied
    c = pool.open([5, 6, 7, 8, 9, 10, 0, 0], 100)
    assert c.n_past == 6 and c.blocks[0] == blocks[0] and c.blocks[1] not in blocks
    feed(pool, c, [0, 0])
    check(pool)
    # the whole cached prompt again: its last token is always evaluated (its logits are needed)
    d = pool.open(ids, 100)
    assert d.n_past == len(ids) - 1
    feed(pool, d, ids[d.n_past:])
    check(pool)
    for s in (b, c, d):
        pool.close(s)
    check(pool)
    pool.clear_cache()
    check(pool)
    assert pool.used_blocks() == 0 and not pool.ref.any() and not pool._nodes


def test_without_prefix_cache_nothing_is_shared_or_kept():
    pool = pool_of(prefix_cache=False)
    a = start(pool, list(range(10)))
    pool.cache(a)
    pool.close(a)
    b = pool.open(list(range(10)), 100)
    assert b.n_past == 0 and pool.used_blocks() == 0 and pool.hits == 0
    check(pool)


def test_cache_of_a_running_sequence_shares_its_prompt_blocks():
    pool = pool_of()
    a = start(pool, list(range(9)))                 # 2 full blocks + 1
    pool.cache(a)                                   # full blocks only
    assert [pool.ref[b] for b in a.blocks] == [2, 2, 1]
    b = pool.open(list(range(9)) + [50], 100)       # shares both full blocks (not a's partial)
    assert b.n_past == 8 and b.blocks == a.blocks[:2]
    feed(pool, b, [8, 50])
    feed(pool, a, [60, 61, 62, 63])                 # a appends after its shared part only
    check(pool)


# -------------------------------------------------------------------------------------- eviction

def test_eviction_is_least_recently_used_first():
    pool = pool_of(n_tokens=16, n_slots=2)         # 4 blocks
    prompts = {n: [n] * 4 + [0] for n in (1, 2, 3)}  # one full block each (+1 token evaluated)
    for n in (1, 2, 3):
        s = start(pool, prompts[n][:4])
        pool.close(s)
    assert pool.used_blocks() == 3
    s = pool.open(prompts[1], 100)                  # touch prompt 1: now the most recent
    pool.close(s, keep=False)
    check(pool)
    order = []
    s = pool.open([9], 100)
    for _ in range(4):
        before = {n: cached_len(pool, prompts[n]) for n in prompts}
        feed(pool, s, [9, 9, 9, 9])
        after = {n: cached_len(pool, prompts[n]) for n in prompts}
        order += [n for n in prompts if before[n] and not after[n]]
        check(pool)
    assert order == [2, 3, 1]
    with pytest.raises(ContextFullError):
        feed(pool, s, [9])
    check(pool)


def test_leaves_are_evicted_before_their_parents():
    pool = pool_of(n_tokens=24, n_slots=2)          # 6 blocks
    long = list(range(100, 112))                     # a chain of 3 full blocks
    s = start(pool, long)
    pool.close(s)
    s = start(pool, [7, 7, 7, 7])                    # a newer single block
    pool.close(s)
    nodes = {n.block: n for n in pool._nodes.values()}
    chain = [n.block for n in sorted(nodes.values(), key=lambda n: n.tokens[0]) if n.tokens[0] >= 100]
    assert len(chain) == 3
    s = pool.open([1], 100)
    evicted = []
    for _ in range(6):
        cached = set(pool._nodes)
        feed(pool, s, [1, 1, 1, 1])
        evicted += [b for b in cached if b not in pool._nodes]
        check(pool)                                  # (every node's parent is still cached)
    # the chain's deepest block first, although the single block's is younger than the chain
    assert evicted == chain[::-1] + [b for b in nodes if b not in chain]


def test_pinned_prefixes_and_running_sequences_are_never_evicted():
    pool = pool_of(n_tokens=32, n_slots=3)          # 8 blocks
    ctx = list(range(200, 210))                      # a context prompt: 2 full blocks + 2 tokens
    s = start(pool, ctx)
    pool.close(s)
    assert pool.pin(ctx) == 10 and pool.pinned_blocks() == 3
    assert pool.max_sequence_tokens() == (8 - 3) * 4
    running = start(pool, list(range(300, 309)))    # 3 blocks, its full ones cached too
    pool.cache(running)
    pool.close(start(pool, [1] * 4))                  # an evictable cached block
    filler = pool.open([2], 100)
    while True:
        try:
            feed(pool, filler, [2])
        except ContextFullError:
            break
        check(pool)
    check(pool)
    # everything evictable went; the pinned context and the running sequence stayed
    assert cached_len(pool, ctx + [0]) == 10
    assert cached_len(pool, [1] * 4 + [0]) == 0
    assert len(filler.blocks) == 8 - 3 - 3
    # the running sequence's next block comes back when the filler ends, not before
    pool.close(filler, keep=False)
    feed(pool, running, [5, 5, 5, 5])
    check(pool)
    # a pinned prefix is shared by a new sequence, copy-on-write for its partial block
    t = pool.open(ctx + [42], 100)
    assert t.n_past == 10 and t.blocks[:2] == [n.block for n in pool._match(ctx + [42])[0]]
    feed(pool, t, [42])
    check(pool)


# --------------------------------------------------------------------- can_open and availability

def test_cached_blocks_above_a_running_sequences_block_are_not_counted_free():
    """Two sequences with a common 2-block prefix start together (neither finds the other's blocks
    in the cache); the longer one's third block is cached below the first one's blocks. When the
    first ends, its blocks are only cached, but they cannot be evicted while the second one's
    block hangs below them: available_blocks must not count them, or can_open admits a sequence
    whose open() then finds no block for its copy-on-write."""
    pool = pool_of(n_tokens=40, n_slots=3)          # 10 blocks
    ctx = [90, 91, 92, 93, 94, 95]                   # a pinned context: 1 full block + 2 tokens
    pool.close(start(pool, ctx))
    assert pool.pin(ctx) == 6
    common = list(range(10, 18))
    a = start(pool, common + [1, 2])                 # 2 full + partial
    b = start(pool, common + [3, 4, 5, 6, 7])        # 3 full + partial
    pool.cache(a)
    pool.cache(b)                                    # b's third block goes below a's second
    pool.close(a)
    check(pool)
    assert pool.available_blocks() == allocatable(pool)
    feed(pool, b, [8] * 11)                          # b takes the free block and a's partial one
    check(pool)
    assert allocatable(pool) == 0
    assert pool.available_blocks() == 0
    probe = ctx + [42]                               # shares the pinned block, copies 2 rows
    assert not pool.can_open(probe)
    pool.close(b)
    assert pool.can_open(probe)
    d = pool.open(probe, 100)
    assert d.n_past == 6
    feed(pool, d, [42])
    check(pool)


def test_can_open_keeps_a_block_for_every_open_sequence():
    pool = pool_of(n_tokens=16, n_slots=4)          # 4 blocks
    a = start(pool, [1, 2, 3])                       # 1 block, 3 tokens
    assert pool.can_open([4, 5, 6])                  # 1 block for it + 1 for a + 1 spare
    b = start(pool, [4, 5, 6])
    assert not pool.can_open([7, 8, 9])             # 1 for it + 1 each for a and b: 5 > 4 - 2
    pool.close(b, keep=False)
    assert pool.can_open([7, 8, 9])
    assert not pool.can_open(list(range(20, 31)))   # 12 tokens: 3 blocks > 3 free - 1 for a
    check(pool)


def test_can_ever_open_counts_the_pinned_blocks_a_prompt_shares():
    pool = pool_of(n_tokens=32, n_slots=2)          # 8 blocks
    ctx = list(range(60, 70))                        # 2 full blocks + 2 tokens, pinned: 3 blocks
    pool.close(start(pool, ctx))
    pool.pin(ctx)
    assert pool.max_sequence_tokens() == 20
    other = list(range(100, 119))                    # 19 tokens + 1: 5 blocks, what is left
    assert pool.can_ever_open(other) and not pool.can_ever_open(other + [1])
    long = ctx + list(range(120, 137))               # 27 tokens + 1: 7 blocks, 2 of them shared
    assert len(long) + 1 > pool.max_sequence_tokens()
    assert pool.can_ever_open(long) and not pool.can_ever_open(long + [1, 2])
    assert pool.can_open(long)                       # (the pool is idle: it opens now)
    s = start(pool, long)
    feed(pool, s, [5])                               # and its first answer token fits
    check(pool)


@pytest.mark.parametrize("seed", range(8, 16))
def test_random_workloads_keep_every_invariant(seed):
    """Random opens (on a few shared prefixes), growth, caching, pins, preemption-like closes and
    evictions on a tiny pool; after every operation the accounting holds, every sequence still
    reads its own keys/values, available_blocks is what can really be allocated, and can_open's
    promise holds: open and the prompt's first step then succeed."""
    rng = random.Random(seed)
    pool = pool_of(n_tokens=48, n_slots=4)          # 12 blocks of 4
    stems = [[rng.randrange(50) for _ in range(rng.randrange(1, 14))] for _ in range(4)]
    for _ in range(300):
        op = rng.random()
        if op < 0.35:
            ids = rng.choice(stems)[:rng.randrange(1, 14)] + \
                [rng.randrange(50) for _ in range(rng.randrange(0, 8))]
            ids = ids or [1]
            if pool.can_open(ids):
                seq = start(pool, ids)               # must not raise
                p = copy.deepcopy(pool)              # and then every sequence can step once
                for s in p.open_seqs:
                    p.reserve(s, 1)
        elif op < 0.45 and pool.open_seqs:           # a prompt done: its full blocks shared
            pool.cache(rng.choice(pool.open_seqs))
        elif op < 0.7 and pool.open_seqs:
            seq = rng.choice(pool.open_seqs)
            try:
                feed(pool, seq, [rng.randrange(50) for _ in range(rng.randrange(1, 6))])
            except ContextFullError:                 # the pool is dry: preempt (keep) another
                others = [s for s in pool.open_seqs if s is not seq]
                if others:
                    pool.close(others[-1], keep=True)
        elif op < 0.9 and pool.open_seqs:
            pool.close(rng.choice(pool.open_seqs), keep=rng.random() < 0.8)
        elif op < 0.95:
            pool.pin(rng.choice(stems))
        else:
            pool.clear_cache()
        check(pool)
        assert pool.available_blocks() == allocatable(pool)
    for s in list(pool.open_seqs):
        pool.close(s)
    pool.clear_cache()
    check(pool)
    assert pool.used_blocks() == pool.pinned_blocks()
