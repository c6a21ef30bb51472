"""The KV pool shared by every sequence, paged in fixed-size blocks, and the prefix cache over it.

    pool = KVPool(model.config, n_tokens=4096, n_slots=4)
    seq = pool.open(prompt_ids)        # shares the longest cached prefix; seq.n_past tokens reused
    ... model.forward(pool, tokens, pos, seq_slots, ...)   # keys/values go to the sequences' blocks
    pool.close(seq)                    # its blocks go to the prefix cache (LRU-evicted when needed)

Layout: per layer one array of keys and one of values, (n_blocks * block_size, n_kv * head_dim)
f16. A sequence owns a slot (a row of `tables`, its block table: block ids in position order), so
position p of the sequence in slot s is pool row tables[s, p // block_size] * block_size + p %
block_size. A long conversation and several short ones draw blocks from the same pool: nothing is
reserved per slot up front (vLLM's paged attention).

Blocks are reference-counted. The prefix cache is a tree of blocks keyed by their tokens (a radix
tree with a block per edge): a full block is shared by reference by every sequence whose prompt
starts with the same tokens, and never written again (a sequence only appends after its shared
part); a partially matching block is copied (the rows that match) into a fresh block of the new
sequence — copy-on-write at the only place a write could happen. Cached blocks that no sequence
uses are evicted least-recently-used first, leaves before their parents; blocks of running
sequences and pinned prefixes (the pre-warmed context prompts) are never evicted.

Blocks are taken as sequences grow, not reserved for their longest possible answer: `can_open`
admits a prompt when its blocks fit beside one more block for every open sequence, and when the
pool runs dry mid-answer the scheduler preempts a sequence (its blocks go to the cache, it is
recomputed later, bit for bit the same). Everything here runs on the scheduler's thread (no locks).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .errors import ContextFullError

DEFAULT_BLOCK_SIZE = 16


@dataclass(eq=False)
class _Node:
    """A cached block: `tokens` (1..block_size of them) at positions depth*block_size.. ."""
    block: int
    tokens: tuple
    parent: "_Node | None"
    children: dict = field(default_factory=dict)    # tokens tuple -> _Node
    last_used: int = 0
    pins: int = 0


@dataclass(eq=False)
class Sequence:
    """One sequence's place in the pool: its slot, its blocks and the tokens whose keys/values
    are stored (positions 0 .. n_past-1)."""
    slot: int
    limit: int                                   # the most tokens it may hold
    blocks: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    reused: int = 0                              # tokens taken from the prefix cache at open

    @property
    def n_past(self) -> int:
        return len(self.tokens)


class KVPool:
    """Keys and values of every layer for up to n_tokens cached tokens, in blocks."""

    def __init__(self, cfg, n_tokens: int, n_slots: int = 1, block_size: int = DEFAULT_BLOCK_SIZE,
                 threads: int = 1, prefix_cache: bool = True):
        if n_tokens <= 0 or n_slots <= 0 or block_size <= 0:
            raise ValueError("the KV pool needs a positive size, slot count and block size")
        self.block_size = bs = block_size
        self.n_blocks = -(-n_tokens // bs)
        self.n_tokens = self.n_blocks * bs
        rows, width = self.n_tokens, cfg.n_embd_kv
        self.k = [np.zeros((rows, width), np.uint16) for _ in range(cfg.n_layer)]
        self.v = [np.zeros((rows, width), np.uint16) for _ in range(cfg.n_layer)]
        self.tables = np.zeros((n_slots, self.n_blocks), np.int32)
        # attention scratch, per thread: the scores of one head over a whole sequence + 2 rows
        threads = max(1, threads)
        self.scratch = np.zeros((threads, self.n_tokens + 2 * cfg.head_dim), np.float32)
        self.q16 = np.zeros((threads, cfg.head_dim), np.uint16)
        self.ref = np.zeros(self.n_blocks, np.int32)
        self._free = list(range(self.n_blocks - 1, -1, -1))
        self._free_slots = list(range(n_slots - 1, -1, -1))
        self.open_seqs: list[Sequence] = []
        self.prefix_cache = prefix_cache
        self._root = _Node(-1, (), None)
        self._nodes: dict[int, _Node] = {}              # block -> its cache node
        self._clock = itertools.count(1)
        self.hits = 0                                    # sequences opened on a cached prefix
        self.hit_tokens = 0                              # tokens they did not recompute

    # -- accounting ------------------------------------------------------------------------------
    @property
    def n_slots(self) -> int:
        return self.tables.shape[0]

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def used_blocks(self) -> int:
        """Blocks held by sequences or the cache."""
        return self.n_blocks - len(self._free)

    def active_blocks(self) -> int:
        """Blocks some open sequence uses (the rest of the used ones are only cached)."""
        return int(np.count_nonzero(self.ref > self._cache_refs()))

    def _cache_refs(self) -> np.ndarray:
        c = np.zeros(self.n_blocks, np.int32)
        if self._nodes:
            c[list(self._nodes)] = 1
        return c

    def _evictable(self) -> set:
        """The cached blocks eviction can free (leaves first): no sequence uses them, no pin holds
        them, and the same holds for every block cached below them. (A running sequence's block
        may hang below blocks only the cache holds: it cached its prompt under the equal blocks of
        another sequence that has ended since.)"""
        order, stack = [], list(self._root.children.values())
        while stack:
            n = stack.pop()
            order.append(n)
            stack.extend(n.children.values())
        free = set()
        for n in reversed(order):                # children before their parents
            if n.pins == 0 and self.ref[n.block] == 1 and all(c in free for c in n.children.values()):
                free.add(n)
        return free

    def pinned_blocks(self) -> int:
        return sum(1 for n in self._nodes.values() if n.pins > 0)

    def max_sequence_tokens(self) -> int:
        """The longest sequence the pool can ever hold (pinned prefixes stay)."""
        return (self.n_blocks - self.pinned_blocks()) * self.block_size

    # -- blocks ----------------------------------------------------------------------------------
    def _alloc(self) -> int:
        if not self._free and not self._evict_one():
            raise ContextFullError("the KV pool is full")
        b = self._free.pop()
        self.ref[b] = 1
        return b

    def _decref(self, b: int):
        self.ref[b] -= 1
        if self.ref[b] == 0:
            self._free.append(b)

    def _copy_rows(self, src: int, dst: int, n: int):
        bs = self.block_size
        for arr in itertools.chain(self.k, self.v):
            arr[dst * bs:dst * bs + n] = arr[src * bs:src * bs + n]

    def _evict_one(self) -> bool:
        """Free the least recently used cached leaf that nothing else holds."""
        best = None
        for n in self._nodes.values():
            if n.children or n.pins or self.ref[n.block] != 1:
                continue
            if best is None or n.last_used < best.last_used:
                best = n
        if best is None:
            return False
        self._drop(best)
        return True

    def _drop(self, node: _Node):
        del node.parent.children[node.tokens]
        del self._nodes[node.block]
        self._decref(node.block)

    # -- prefix matching -------------------------------------------------------------------------
    def _match(self, ids) -> tuple[list[_Node], _Node | None, int]:
        """Cached full blocks ids starts with, then the cached block sharing the longest partial
        prefix after them and how many of its tokens match. At most len(ids) - 1 tokens match:
        the last prompt token is always evaluated (its logits start the answer)."""
        bs, limit = self.block_size, len(ids) - 1
        node, full = self._root, []
        if not self.prefix_cache:
            return full, None, 0
        while (len(full) + 1) * bs <= limit:
            child = node.children.get(tuple(ids[len(full) * bs:(len(full) + 1) * bs]))
            if child is None or len(child.tokens) != bs:
                break
            full.append(child)
            node = child
        start = len(full) * bs
        rest = ids[start:limit]
        best, best_n = None, 0
        if rest:
            for child in node.children.values():
                n = 0
                for a, b in zip(child.tokens, rest):
                    if a != b:
                        break
                    n += 1
                if n > best_n:
                    best, best_n = child, n
        return full, best, best_n

    def available_blocks(self) -> int:
        """Blocks a new allocation can get: free ones and cached ones nothing holds."""
        return len(self._free) + len(self._evictable())

    def can_ever_open(self, ids) -> bool:
        """Whether a sequence for prompt ids (and its first answer token) fits the pool at all,
        beside the pinned prefixes (it shares the pinned blocks its prompt starts with)."""
        full, _, _ = self._match(ids)
        shared_pinned = sum(1 for n in full if n.pins)
        return self.blocks_for(len(ids) + 1) - shared_pinned <= self.n_blocks - self.pinned_blocks()

    def can_open(self, ids) -> bool:
        """Whether a sequence for prompt ids (and its first answer token) fits now, leaving one
        block of room for every open sequence's next step."""
        if not self._free_slots:
            return False
        full, _, _ = self._match(ids)
        evictable = self._evictable()
        shared = sum(1 for n in full if n in evictable)   # held once it is open: not evictable
        need = self.blocks_for(len(ids) + 1) - len(full)
        return need <= len(self._free) + len(evictable) - shared - len(self.open_seqs)

    def open(self, ids, limit: int) -> Sequence:
        """A new sequence for prompt ids (of at most `limit` tokens in all), on the longest cached
        prefix (call can_open first)."""
        if not self._free_slots:
            raise ContextFullError("every sequence slot is in use")
        full, part, n_part = self._match(ids)
        seq = Sequence(slot=self._free_slots.pop(), limit=limit)
        tick = next(self._clock)
        for n in full:
            self.ref[n.block] += 1
            n.last_used = tick
            seq.blocks.append(n.block)
        if part is not None and n_part:
            b = self._alloc()
            self._copy_rows(part.block, b, n_part)
            part.last_used = tick
            seq.blocks.append(b)
        seq.tokens = list(ids[:len(full) * self.block_size + n_part])
        seq.reused = seq.n_past
        if seq.reused:
            self.hits += 1
            self.hit_tokens += seq.reused
        self.tables[seq.slot, :len(seq.blocks)] = seq.blocks
        self.open_seqs.append(seq)
        return seq

    def reserve(self, seq: Sequence, n_new: int):
        """Blocks for n_new more tokens of seq (positions n_past .. n_past + n_new - 1)."""
        if seq.n_past + n_new > seq.limit:
            raise ContextFullError(f"the sequence would exceed its {seq.limit} tokens")
        need = self.blocks_for(seq.n_past + n_new)
        while len(seq.blocks) < need:
            b = self._alloc()
            self.tables[seq.slot, len(seq.blocks)] = b
            seq.blocks.append(b)

    def commit(self, seq: Sequence, tokens):
        """tokens' keys/values are now stored at positions n_past.. (after a forward)."""
        seq.tokens.extend(int(t) for t in tokens)

    def cache(self, seq: Sequence, partial: bool = False):
        """Enter seq's full blocks (and its last partial block with `partial`) into the prefix
        cache, so later sequences starting with the same tokens share them."""
        if not self.prefix_cache:
            return
        bs, node, tick = self.block_size, self._root, next(self._clock)
        n_full, rest = divmod(seq.n_past, bs)
        for i in range(n_full + (1 if partial and rest else 0)):
            key = tuple(seq.tokens[i * bs:(i + 1) * bs])
            b = seq.blocks[i]
            child = node.children.get(key)
            if child is None:
                old = self._nodes.get(b)
                if old is not None:          # this block was cached with fewer tokens: grow it
                    if old.children or old.parent is not node:
                        break
                    del node.children[old.tokens]
                    old.tokens = key
                    node.children[key] = child = old
                else:
                    child = _Node(b, key, node)
                    node.children[key] = child
                    self._nodes[b] = child
                    self.ref[b] += 1
            child.last_used = tick
            node = child
            if len(key) < bs:
                break

    def close(self, seq: Sequence, keep: bool = True):
        """Release seq: with `keep` its blocks stay cached as a prefix for later requests."""
        if keep:
            self.cache(seq, partial=True)
        for b in seq.blocks:
            self._decref(b)
        seq.blocks = []
        self.open_seqs.remove(seq)
        self._free_slots.append(seq.slot)

    def pin(self, ids) -> int:
        """Keep the cached blocks of prefix ids from eviction (a pre-warmed context prompt);
        returns how many of its tokens are cached."""
        node, n = self._root, 0
        bs = self.block_size
        while n < len(ids):
            child = node.children.get(tuple(ids[n:n + bs]))
            if child is None:
                break
            child.pins += 1
            n += len(child.tokens)
            node = child
        return n

    def clear_cache(self):
        """Forget every cached prefix that nothing holds (tests, benchmarks)."""
        while self._evict_one():
            pass
