"""The scheduler over the shared tiny reference models (random weights, real tokenizers): requests
batched together give exactly what each gives alone — whatever the batch, its order, the chunking
of prompts, a preemption or the prefix cache — and the KV pool's blocks are accounted for through
cancellation, exhaustion, eviction and pins.

Concurrency is made deterministic without sleeping: a request's sink (called on the scheduler
thread) can hold that thread until the test has submitted what it wants to arrive at that moment,
so requests are admitted together, or while others decode. Every forward is recorded (its
sequences and positions) to prove the requests really shared batches. All waits are bounded."""
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path  # noqa: E402

from llmstream.engine import Model  # noqa: E402
from llmstream.errors import ContextLengthError  # noqa: E402
from llmstream.generate import LLM  # noqa: E402
from llmstream.sampling import SamplingParams  # noqa: E402
from llmstream.scheduler import Scheduler  # noqa: E402

LLAMA = "llama-gqa-Q4_K_M.gguf"
PHI2 = "phi2-Q8_0.gguf"
WAIT = 60.0        # generous bound for any wait on a loaded 2-core machine (never reached when green)


def load(name, **kw) -> LLM:
    return LLM.load(shared_path("reference", name), **kw)


@pytest.fixture(scope="module", params=[LLAMA, PHI2], ids=["llama", "phi2"])
def llm(request):
    m = load(request.param, parallel=8)
    yield m
    m.close()


def fresh(llm, n_tokens=4096, parallel=8, chunk=8, prefix_cache=False) -> Scheduler:
    """Give llm a new scheduler (a fresh pool): the runs of a test do not share cached prefixes
    unless it asks for them, and prompts are chunked by `chunk` tokens beside decoding streams."""
    llm.scheduler.close()
    llm.scheduler = Scheduler(llm.model, n_tokens=n_tokens, parallel=parallel, chunk=chunk,
                              prefix_cache=prefix_cache, n_ctx=llm.model.n_ctx)
    return llm.scheduler


class Run:
    """One generation started with a recording sink. hold_at=n: the n-th sink call holds the
    scheduler thread (`held` is set) until `release` — so the test can submit requests that then
    arrive exactly at that point of the schedule."""

    def __init__(self, llm, prompt=None, params=None, tokens=None, hold_at=None, on_call=None, **kw):
        self.llm = llm
        self.g = llm.generate(prompt, tokens=tokens, params=params or SamplingParams(), **kw)
        self.pieces, self.calls = [], 0
        self.hold_at, self.on_call = hold_at, on_call
        self.held, self.release, self.done = threading.Event(), threading.Event(), threading.Event()
        self.slot = None                     # its pool slot (set by `recording`)
        self.running_seen = 0

    def start(self) -> "Run":
        self.g.start(self._sink)
        return self

    def _sink(self, kind, value):            # on the scheduler thread
        self.calls += 1
        self.running_seen = max(self.running_seen, self.llm.scheduler.n_running)
        if kind == "piece":
            self.pieces.append(value)
        if self.on_call is not None:
            self.on_call(self, kind, value)
        if self.calls == self.hold_at:
            self.held.set()
            self.release.wait(WAIT)
        if kind in ("done", "error"):
            self.done.set()

    def wait(self) -> "Run":
        assert self.done.wait(WAIT), "the generation did not end"
        self.release.set()
        return self

    def result(self):
        self.wait()
        if self.g.error is not None:
            raise self.g.error
        return self.g.tokens, "".join(self.pieces), self.g.stats


@contextmanager
def held(run: Run):
    """Start run and hold the scheduler thread at its hold_at-th sink call for the block."""
    if run.g._sink is None:
        run.start()
    try:
        assert run.held.wait(WAIT), "the scheduler never reached the holding point"
        yield run
    finally:
        run.release.set()


def together(llm, runs, batches=None):
    """Start runs so that the scheduler admits them in one step, in this order: a holder request
    keeps the scheduler thread in its sink meanwhile, and is cancelled before the next step.
    Returns runs, or with `batches` (from `recording`) the index of the first forward after."""
    holder = Run(llm, "hold", SamplingParams(temperature=0, max_tokens=2), raw=True, hold_at=1)
    with held(holder):
        for r in runs:
            r.start()
        holder.g.cancel.set()
        mark = None if batches is None else len(batches)
    holder.wait()
    return runs if batches is None else mark


@contextmanager
def recording(model: Model, runs=()):
    """Record every forward of model: (sequence slots, positions) of each batch row; and the pool
    slot of each of `runs` (a list the test may extend) once it is admitted."""
    batches = []

    def forward(pool, tokens, pos, seq, want=None, out=None):
        batches.append((np.array(seq), np.array(pos)))
        for r in runs:
            if r.slot is None and r.g._req.seq is not None:
                r.slot = r.g._req.seq.slot
        return Model.forward(model, pool, tokens, pos, seq, want, out)

    model.forward = forward
    try:
        yield batches
    finally:
        del model.forward


def solo(llm, make, **sched) -> tuple:
    """What run make() gives alone on a fresh scheduler: (tokens, text, stats)."""
    fresh(llm, **sched)
    return make().start().result()


def sampled(seed, temperature=0.8, max_tokens=20, **kw):
    return SamplingParams(temperature=temperature, top_p=0.95, seed=seed, max_tokens=max_tokens,
                          repeat_penalty=1.1, **kw)


def prompt_ids(llm, rng, n):
    """n random prompt tokens (never an end-of-sequence id)."""
    eos = llm.tokenizer.eos_ids
    ids = [int(t) for t in rng.integers(3, llm.model.n_vocab, size=n)]
    return [t if t not in eos else 5 for t in ids]


def others(llm, rng, k):
    """k requests of different lengths, seeds and sampling (some greedy) to run beside the target."""
    out = []
    for i in range(k):
        ids = prompt_ids(llm, rng, int(rng.integers(2, 30)))
        greedy = i % 3 == 1
        params = sampled(int(rng.integers(1 << 30)), temperature=0.0 if greedy else 1.0,
                         max_tokens=int(rng.integers(6, 30)))
        out.append((ids, params))
    return out


def rows_of(batch, slot):
    seq, pos = batch
    return [i for i in range(len(seq)) if seq[i] == slot]


# ------------------------------------------------------------------------------ bit identity

TARGET = "Once upon a time, a dragon"


@pytest.mark.parametrize("seed", [3, 17, 2024])
def test_a_seeded_request_is_the_same_alone_and_beside_others(llm, seed):
    """The target (temperature > 0, fixed seed) gives the same tokens and text alone and beside
    1, 3 and 7 others (different prompts, lengths, seeds, some greedy) at the front, the middle and
    the end of the batch; while its prompt is prefilled in chunks beside decoding streams; and
    while it decodes beside a long prompt being prefilled in chunks."""
    rng = np.random.default_rng(seed)
    target = lambda **kw: Run(llm, TARGET, sampled(seed, max_tokens=24), raw=True, **kw)
    want_tokens, want_text, want_stats = solo(llm, target)
    # the premise: an answer long enough to be batched over many steps (where a seed's sample stops
    # depends on the kernels' float rounding, so not necessarily at max_tokens)
    assert want_stats.completion_tokens >= 12 and want_text
    # the three batch positions, rotating over the seeds so that every size meets every position
    rot = [3, 17, 2024].index(seed)
    positions = {1: ["first", "last", "first"][rot], 3: ["middle", "first", "last"][rot],
                 7: ["last", "middle", "first"][rot]}
    for k, where in positions.items():
        sched = fresh(llm)
        reqs = others(llm, rng, k)
        runs = [Run(llm, tokens=ids, params=p) for ids, p in reqs]
        t = target()
        at = {"first": 0, "middle": k // 2, "last": k}[where]
        runs.insert(at, t)
        steps0 = sched.metrics.steps
        with recording(llm.model, runs) as batches:
            mark = together(llm, runs, batches)
            results = [r.result() for r in runs]
        got_tokens, got_text, _ = results[at]
        assert got_tokens == want_tokens, f"beside {k} others ({where})"
        assert got_text == want_text
        # really batched: every prompt in the first forward; then one batch with every request's
        # next token, the target's at its place; and far fewer forwards than tokens generated
        order = [r.slot for r in runs]
        assert set(batches[mark][0]) == set(order)
        first_decode = next(b for b in batches[mark:] if len(b[0]) == k + 1)
        assert list(first_decode[0]) == order and t.slot == first_decode[0][at]
        n_tokens = sum(len(tk) for tk, _, _ in results)
        assert sched.metrics.steps - steps0 < n_tokens
        if k == 7:   # and each of the others is what it gives alone too
            for (ids, p), (tk, text, _) in zip(reqs, results[:at] + results[at + 1:]):
                alone = solo(llm, lambda: Run(llm, tokens=ids, params=p))
                assert (tk, text) == alone[:2]

    # the target arrives while 5 others decode: its prompt goes in chunks of 8 beside them
    sched = fresh(llm, chunk=8)
    runs = [Run(llm, tokens=ids, params=p) for ids, p in others(llm, rng, 5)]
    runs[0].hold_at = 2
    t = target()
    with recording(llm.model, runs + [t]) as batches:
        together(llm, runs)
        with held(runs[0]):
            t.start()
            mark = len(batches)                  # from here on, t.slot's rows are t's
        got = t.result()
        [r.wait() for r in runs]
    assert got[:2] == (want_tokens, want_text)
    after = batches[mark:]
    mixed = [b for b in after if len(rows_of(b, t.slot)) > 1 and len(b[0]) > len(rows_of(b, t.slot))]
    assert mixed, "the target's prompt never shared a batch with decoding streams"
    assert all(len(rows_of(b, t.slot)) <= 8 for b in after)

    # a long prompt arrives while the target decodes: it is prefilled in chunks beside the target
    sched = fresh(llm, chunk=8)
    t = target(hold_at=3)
    long_prompt = Run(llm, tokens=prompt_ids(llm, rng, 150), params=sampled(5, max_tokens=4))
    side = [Run(llm, tokens=ids, params=p) for ids, p in others(llm, rng, 2)]
    with recording(llm.model, side + [t, long_prompt]) as batches:
        together(llm, [side[0], t, side[1]])
        with held(t):
            long_prompt.start()
            mark = len(batches)
        got = t.result()
        long_prompt.wait()
    assert got[:2] == (want_tokens, want_text)
    beside = [b for b in batches[mark:]
              if len(rows_of(b, long_prompt.slot)) > 1 and rows_of(b, t.slot)]
    assert len(beside) >= 2, "the long prompt was not prefilled in chunks beside the target"


def test_many_concurrent_threads_each_get_their_solo_answer(llm):
    """Eight generations iterated from eight threads at once (the scheduler's own timing, no
    holding) each give exactly their solo text."""
    rng = np.random.default_rng(99)
    reqs = [(prompt_ids(llm, rng, int(rng.integers(3, 40))), sampled(i, max_tokens=16))
            for i in range(8)]
    fresh(llm, chunk=None)
    alone = [llm.generate(tokens=ids, params=p) for ids, p in reqs]
    want = [(g.text(), list(g.tokens)) for g in alone]
    sched = fresh(llm, chunk=None)
    gens = [llm.generate(tokens=ids, params=p) for ids, p in reqs]
    texts = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait(WAIT)
        texts[i] = gens[i].text()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    with recording(llm.model) as batches:
        for th in threads:
            th.start()
        for th in threads:
            th.join(WAIT)
    assert not any(th.is_alive() for th in threads)
    assert [(texts[i], gens[i].tokens) for i in range(8)] == want
    assert max(len(set(s)) for s, _ in batches) >= 2, "the threads' requests never shared a batch"
    assert sched.n_running == 0 and sched.n_waiting == 0


# ---------------------------------------------------------------------- cancellation, blocks

def pool_consistent(pool):
    """Reference counts: each block is held by the open sequences using it plus the cache."""
    held = np.zeros(pool.n_blocks, np.int32)
    for s in pool.open_seqs:
        for b in s.blocks:
            held[b] += 1
    cached = np.zeros(pool.n_blocks, np.int32)
    cached[list(pool._nodes)] = 1
    np.testing.assert_array_equal(pool.ref, held + cached)
    assert sorted(pool._free) == [b for b in range(pool.n_blocks) if pool.ref[b] == 0]


def test_cancelling_a_running_request_mid_batch_frees_its_blocks(llm):
    """Three requests decode together; one is cancelled from its sink. From the next step its
    blocks are held by nobody; the others go on to their solo answers; afterwards the pool is back
    at its warm baseline (the pinned context prompts) and every count is zero."""
    rng = np.random.default_rng(5)
    reqs = [(prompt_ids(llm, rng, n), sampled(40 + n, max_tokens=30)) for n in (20, 37, 9)]
    alone = [solo(llm, lambda ids=ids, p=p: Run(llm, tokens=ids, params=p), prefix_cache=True)
             for ids, p in reqs]
    sched = fresh(llm, n_tokens=1024, prefix_cache=True)
    assert llm.prewarm(["general"]) > 0
    pool = sched.pool
    base_used, base_pinned = pool.used_blocks(), pool.pinned_blocks()
    assert pool.active_blocks() == 0 and base_pinned > 0 and sched.usage()["kv_used"] == 0
    seen = {}

    def cancel_at_third_call(run, kind, value):
        if run.calls == 3:
            seen["active"] = pool.active_blocks()
            run.g.cancel.set()

    def after_cancel(run, kind, value):      # a later sink call of a survivor, a step or more on
        if "active" in seen and run.g._req.seq is not None and "after" not in seen:
            held_now = {b for s in pool.open_seqs for b in s.blocks}
            seen["after"] = (held_now, pool.active_blocks(), len(pool.open_seqs))

    runs = [Run(llm, tokens=ids, params=p) for ids, p in reqs]
    runs[1].on_call = cancel_at_third_call
    runs[0].on_call = after_cancel
    together(llm, runs)
    for r in runs:
        r.wait()
    assert runs[1].g.stats.finish_reason == "cancelled"
    assert runs[1].g.stats.completion_tokens < 30
    for i in (0, 2):
        assert runs[i].result()[:2] == alone[i][:2]
    held_now, active, n_open = seen["after"]
    assert n_open == 2 and active == len(held_now)      # the cancelled one holds no block
    assert active < seen["active"]
    llm.scheduler.close()                    # the thread is gone: the pool is ours to inspect
    pool_consistent(pool)
    assert pool.active_blocks() == 0 and not pool.open_seqs and pool.free_slots == pool.n_slots
    assert sched.n_running == 0 and sched.n_waiting == 0
    pool.clear_cache()
    assert pool.used_blocks() == base_used and pool.pinned_blocks() == base_pinned


def test_a_cancelled_waiting_request_leaves_no_count_behind(llm):
    """Requests cancelled while they wait (never admitted, or preempted back to the queue) end as
    cancelled, and the waiting/running figures come back to zero."""
    sched = fresh(llm, n_tokens=64, parallel=2, prefix_cache=True)
    rng = np.random.default_rng(8)
    a = Run(llm, tokens=prompt_ids(llm, rng, 10), params=sampled(1, max_tokens=40))
    b = Run(llm, tokens=prompt_ids(llm, rng, 10), params=sampled(2, max_tokens=40))
    c = Run(llm, tokens=prompt_ids(llm, rng, 5), params=sampled(3, max_tokens=5))
    preempted = {}

    def watch(run, kind, value):
        # a's sink: once b has been preempted (it waits again), cancel b and c
        if sched.metrics.preemptions and not preempted:
            preempted["waiting"] = sched.n_waiting
            b.g.cancel.set()
            c.g.cancel.set()

    a.on_call = watch
    together(llm, [a, b, c])
    for r in (a, b, c):
        r.wait()
    assert preempted, "the pool never ran dry (no preemption)"
    assert preempted["waiting"] == 2
    assert b.g.stats.finish_reason == c.g.stats.finish_reason == "cancelled"
    assert a.g.stats.finish_reason == "length"
    sched.close()
    assert sched.n_waiting == 0 and sched.n_running == 0
    pool_consistent(sched.pool)


# ------------------------------------------------------------------ exhaustion and preemption

def test_an_exhausted_pool_queues_requests_instead_of_failing():
    """A pool of 4 blocks (64 tokens) and 4 requests whose answers need 3 blocks each: they wait
    for blocks (not slots: there are 4), the pool runs dry mid-answer and preempts; every one
    completes with its solo text, none errs."""
    llm = load(LLAMA, parallel=4, ctx_size=64)
    try:
        sched = llm.scheduler
        sched.fixed_chunk = 8
        rng = np.random.default_rng(21)
        reqs = [(prompt_ids(llm, rng, 8 + 3 * i), sampled(100 + i, temperature=0.0 if i == 2 else 0.9,
                                                           max_tokens=32 - 3 * i))
                for i in range(4)]
        alone = []
        for ids, p in reqs:
            r = Run(llm, tokens=ids, params=p).start()
            alone.append(r.result())
        steps_alone = sched.metrics.steps
        runs = together(llm, [Run(llm, tokens=ids, params=p) for ids, p in reqs])
        results = [r.result() for r in runs]         # raises if any erred
        for (tk, text, stats), (tk0, text0, _) in zip(results, alone):
            assert (tk, text) == (tk0, text0)
            assert stats.finish_reason == "length"
        assert max(r.running_seen for r in runs) < 4, "no request waited for blocks"
        assert sched.metrics.preemptions > 0
        assert sched.metrics.steps - steps_alone < sum(len(tk) for tk, _, _ in results)
        assert sched.n_waiting == 0 and sched.n_running == 0
    finally:
        llm.close()


@pytest.mark.parametrize("prefix_cache", [True, False], ids=["cache", "no-cache"])
def test_a_preempted_request_is_recomputed_bit_for_bit(llm, prefix_cache):
    """Two requests whose answers do not both fit a 5-block pool: the later one is preempted when
    the pool runs dry mid-answer, resumes (from its cached blocks, or from scratch without the
    prefix cache) and still gives exactly its solo tokens, as does the other."""
    rng = np.random.default_rng(77)
    reqs = [(prompt_ids(llm, rng, 14), sampled(7, max_tokens=50)),
            (prompt_ids(llm, rng, 19), sampled(8, max_tokens=45))]
    alone = [solo(llm, lambda ids=ids, p=p: Run(llm, tokens=ids, params=p), n_tokens=80,
                  prefix_cache=prefix_cache) for ids, p in reqs]
    sched = fresh(llm, n_tokens=80, prefix_cache=prefix_cache)
    runs = together(llm, [Run(llm, tokens=ids, params=p) for ids, p in reqs])
    results = [r.result() for r in runs]
    assert sched.metrics.preemptions >= 1
    for got, want in zip(results, alone):
        assert got[:2] == want[:2]
        assert got[2].completion_tokens == want[2].completion_tokens
    sched.close()
    pool_consistent(sched.pool)


# ------------------------------------------------------------------------ context length

CONTEXTS = {"general": "Be brief and kind", "sql": "Write SQL only"}


def test_a_prompt_that_can_never_fit_the_pool_is_a_context_length_error(llm):
    """With context prompts pinned, a prompt within the model's context may still exceed what the
    pool can ever hold beside them: the sink gets ContextLengthError (the server's 400) at once,
    not a wait forever; the scheduler goes on serving."""
    small = load(LLAMA if llm.family == "llama" else PHI2, parallel=2, ctx_size=128,
                 contexts=CONTEXTS)
    try:
        small.prewarm()
        pool = small.scheduler.pool
        assert pool.pinned_blocks() > 0
        room = pool.max_sequence_tokens()
        assert room < small.n_ctx
        rng = np.random.default_rng(3)
        too_long = Run(small, tokens=prompt_ids(small, rng, room), params=sampled(1, max_tokens=4))
        too_long.start().wait()
        assert isinstance(too_long.g.error, ContextLengthError)
        assert "--ctx-size" in str(too_long.g.error)
        fits = Run(small, tokens=prompt_ids(small, rng, room - 1), params=sampled(1, max_tokens=1))
        tokens, _, stats = fits.start().result()
        assert len(tokens) == 1 and stats.finish_reason == "length"
        assert small.scheduler.n_waiting == 0
    finally:
        small.close()


def test_a_prompt_that_fits_thanks_to_its_pinned_prefix_is_served():
    """A prompt that starts with a pinned context prompt needs blocks only after the shared ones:
    it fits even when it is longer than what is left beside the pins."""
    small = load(LLAMA, parallel=2, ctx_size=128, contexts=CONTEXTS)
    try:
        small.prewarm(["general"])
        pool = small.scheduler.pool
        prefix = small.context_prefixes()["general"][0]
        room = pool.max_sequence_tokens()
        shared_full = len(prefix) // pool.block_size * pool.block_size
        assert shared_full > 0
        rng = np.random.default_rng(4)
        ids = prefix + prompt_ids(small, rng, room + shared_full - len(prefix) - 2)
        assert room < len(ids) < small.n_ctx
        run = Run(small, tokens=ids, params=sampled(1, max_tokens=1)).start()
        tokens, _, stats = run.result()
        assert stats.cached_tokens >= shared_full and len(tokens) == 1
    finally:
        small.close()


# --------------------------------------------------------------------- prefix cache, eviction

def test_eviction_spares_running_sequences_and_pinned_context_prompts(llm):
    """A small pool with pinned context prompts; a long request runs while many distinct short
    ones come and go (one submitted at each piece of the long one), their cached prompts
    evicting each other. The running request's output is still its solo output, early prompts were
    really evicted, and the pinned prefixes are still cached (a later request of that context type
    reuses them)."""
    small = load(LLAMA if llm.family == "llama" else PHI2, parallel=4, ctx_size=256,
                 contexts=CONTEXTS)
    try:
        rng = np.random.default_rng(12)
        long_ids = prompt_ids(small, rng, 40)        # its full prompt blocks are cached while it runs
        long_p = sampled(31, max_tokens=70)
        want = Run(small, tokens=long_ids, params=long_p).start().result()
        sched = fresh(small, n_tokens=256, parallel=4, prefix_cache=True)
        small.prewarm()
        pool = sched.pool
        pinned = pool.pinned_blocks()
        assert 0 < pinned < 8
        shorts = [Run(small, tokens=prompt_ids(small, rng, 24), params=sampled(2, max_tokens=3))
                  for _ in range(14)]                 # 14 x 2 blocks: far more than the pool
        queue = list(shorts)

        def submit_shorts(run, kind, value):          # on the scheduler thread
            if queue:
                queue.pop(0).start()

        long_run = Run(small, tokens=long_ids, params=long_p, on_call=submit_shorts).start()
        got = long_run.result()
        assert not queue, "the long request ended before every short one was submitted"
        for r in shorts:
            r.result()
        assert got[:2] == want[:2]
        assert long_run.running_seen == 4             # it ran beside three short ones at times
        probe = shorts[0].g.ids + [7]
        again = Run(small, tokens=probe, params=sampled(2, max_tokens=1)).start().result()
        assert again[2].cached_tokens == 0, "nothing was evicted: the test did not fill the pool"
        assert pool.pinned_blocks() == pinned
        for name in CONTEXTS:
            prefix = small.context_prefixes()[name][0]
            stats = Run(small, "Hi there", sampled(1, max_tokens=2),
                        context_type=name).start().result()[2]
            assert stats.cached_tokens >= len(prefix)
        sched.close()
        pool_consistent(pool)
    finally:
        small.close()


def test_a_shared_context_prompt_is_reused_and_gives_the_uncached_answer(llm):
    """A second request of the same context type reuses the first one's prompt blocks (by
    reference and copy-on-write) and answers exactly as without the prefix cache; so do two
    requests of that type running together on the pre-warmed prefix."""
    params = [sampled(s, max_tokens=12) for s in (4, 5, 6)]
    questions = ["What is the capital of France?", "Name three colors", "Why is the sky blue?"]
    want = []
    for q, p in zip(questions, params):
        want.append(solo(llm, lambda q=q, p=p: Run(llm, q, p, context_type="general"),
                         prefix_cache=False)[:2])
    fresh(llm, prefix_cache=True)
    first = Run(llm, questions[0], params[0], context_type="general").start().result()
    assert first[2].cached_tokens == 0 and first[:2] == want[0]
    second = Run(llm, questions[1], params[1], context_type="general").start().result()
    assert second[2].cached_tokens > 0 and second[:2] == want[1]
    assert llm.scheduler.pool.hits >= 1
    # pre-warmed: concurrent requests of that context start from the pinned prefix
    sched = fresh(llm, prefix_cache=True)
    llm.prewarm(["general"])
    n_prefix = len(llm.context_prefixes()["general"][0])
    runs = together(llm, [Run(llm, q, p, context_type="general") for q, p in zip(questions, params)])
    for r, w in zip(runs, want):
        tokens, text, stats = r.result()
        assert (tokens, text) == w
        assert stats.cached_tokens >= n_prefix
    sched.close()
    pool_consistent(sched.pool)


def test_a_request_submitted_after_close_is_refused_not_left_hanging(llm):
    """After the scheduler stopped (server shutdown), a new request hears NotReady at once: an
    iterating Generation raises instead of waiting forever; the counts stay at zero."""
    from llmstream.errors import NotReady
    sched = fresh(llm)
    sched.close()
    g = llm.generate("hello", params=sampled(1, max_tokens=3))
    with pytest.raises(NotReady, match="shutting down"):
        g.text()
    assert sched.n_waiting == 0 and sched.n_running == 0
    fresh(llm)          # the module's other tests get a running scheduler back
