"""The scheduler: one thread owns the model and advances every active sequence in one batched forward.

Each step it
  1. takes new requests (FIFO) while a sequence slot and KV blocks are free — admission waits for
     capacity, it never fails for lack of it — opening each on the longest cached prefix (kv.py);
  2. builds one batch: the next token of every decoding sequence, then prompt tokens of the
     sequences still prefilling, at most `chunk` of them while others decode (chunked prefill: a
     long prompt arriving does not freeze the running streams; alone, a prompt goes n_batch at a
     time);
  3. runs one forward (`Model.forward`), with logits only for the rows that end a sequence's input;
  4. samples each of those sequences with its own sampler (parameters and seed), pushes the token
     through its decoder and stop matcher, and hands the certain text to its sink;
  5. retires finished and cancelled sequences: their blocks stay in the prefix cache.

When the pool runs out of blocks mid-step, the most recently admitted sequence is preempted: its
blocks go to the cache and it waits at the head of the queue to be recomputed. Every kernel
computes a row alone, so logits do not depend on the batch, the chunking or a recomputation:
a seeded request produces the same text alone or beside any others.

A request talks to its caller only through `sink(kind, value)` ("piece", text), ("done",
GenerationStats), ("error", exception), called on the scheduler thread, and its cancel event.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import ContextFullError, ContextLengthError, NotReady
from .sampling import Sampler, SamplingParams
from .stops import StopMatcher
from .tokenizer import StreamDecoder

log = logging.getLogger("llmstream.scheduler")


@dataclass(frozen=True)
class GenerationStats:
    finish_reason: str        # "stop" (EOS or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    prompt_tok_s: float       # prompt tokens evaluated per second (cached prefix excluded)
    gen_tok_s: float          # generated tokens per second
    truncated_tokens: int = 0  # prompt tokens dropped from the left to fit the context
    cached_tokens: int = 0    # prompt tokens reused from the prefix cache
    queued_s: float = 0.0     # waiting for a slot / KV capacity
    ttft_s: float = 0.0       # submission to the first token


@dataclass(eq=False)
class Request:
    """One generation's state in the scheduler."""
    ids: list                         # prompt token ids
    params: SamplingParams
    max_new: int
    sink: Callable[[str, Any], None]
    cancel: threading.Event
    tokenizer: Any = None
    truncated: int = 0
    delay: float = 0.0                # pause after each piece (demos, UI tests)
    warm: bool = False                # a context prompt to evaluate and pin, no answer
    times: list | None = None         # when a list: each sampled token's time (benchmarks)
    # running state
    seq: Any = None
    feed: list = field(default_factory=list)     # tokens whose keys/values are not stored yet
    tokens: list = field(default_factory=list)   # generated tokens
    recent: list = field(default_factory=list)   # the repeat-penalty window
    sampler: Any = None
    decoder: Any = None
    stops: Any = None
    cached: int = 0
    not_before: float = 0.0
    t_submit: float = 0.0
    t_admit: float = 0.0
    t_first: float = 0.0
    t_last: float = 0.0
    t_prompt: float = 0.0             # prompt evaluation time (admission to first logits)
    done: bool = False
    started: bool = False             # the answer's first non-space character has been produced


class Scheduler:
    """Owns `model` and a KV pool of `n_tokens` over `parallel` sequences; `submit` requests."""

    def __init__(self, model, n_tokens: int | None = None, parallel: int = 4,
                 prefix_cache: bool = True, chunk: int | None = None, n_ctx: int | None = None):
        self.model = model
        self.parallel = max(1, int(parallel))
        self.pool = model.new_pool(n_tokens or model.n_ctx, self.parallel,
                                   prefix_cache=prefix_cache)
        # the longest one sequence may be: the model's context, at most the pool
        self.n_ctx = min(n_ctx or model.n_ctx, self.pool.n_tokens)
        self.n_batch = model.n_batch
        self.fixed_chunk = chunk
        if model.ws.logits.shape[0] < self.parallel:
            raise ValueError(f"the model's workspace holds {model.ws.logits.shape[0]} logits rows, "
                             f"fewer than --parallel {self.parallel}")
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = []
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()        # guards start/stop against submit
        self._count_lock = threading.Lock()
        # step-cost estimates for the prefill chunk (EMA, seconds)
        self._t_decode = None
        self._t_token = None
        self.metrics = SchedulerMetrics()

    # -- public (any thread) ---------------------------------------------------------------------
    def submit(self, req: Request):
        """Queue req; its sink hears from the scheduler thread (NotReady at once after close())."""
        req.t_submit = time.perf_counter()
        with self._lock:           # against close(): a request is either drained or refused
            if self._stop:
                req.done = True
                req.sink("error", NotReady("the model is shutting down"))
                return
            self._count_waiting(+1)
            self._inbox.put(req)
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llmstream-scheduler",
                                                daemon=True)
                self._thread.start()

    def _count_waiting(self, d: int):
        with self._count_lock:     # submit() counts on the caller's thread
            self.metrics.waiting += d

    @property
    def n_waiting(self) -> int:
        return self.metrics.waiting

    @property
    def n_running(self) -> int:
        return self.metrics.running

    def usage(self) -> dict:
        """Slots and KV pool use, as of the last step (any thread may read it)."""
        m = self.metrics
        n = max(1, self.pool.n_blocks)
        return {"slots_busy": m.running, "slots_total": self.parallel,
                "kv_used": round(m.kv_active_blocks / n, 4),
                "kv_cached": round((m.kv_used_blocks - m.kv_active_blocks) / n, 4),
                "kv_pool_tokens": self.pool.n_tokens}

    def close(self, timeout: float = 10.0):
        """Stop the thread: running and waiting requests end as cancelled."""
        with self._lock:
            self._stop = True
            self._wake.set()
            t = self._thread
        if t is not None:
            t.join(timeout)

    # -- the loop (scheduler thread) -------------------------------------------------------------
    def _loop(self):
        while True:
            self._wake.clear()
            self._take_inbox()
            if self._stop:
                for r in list(self._running) + list(self._waiting):
                    self._finish(r, "cancelled")
                self._waiting.clear()
                self._take_inbox(cancel_all=True)
                return
            try:
                worked = self.step()
            except BaseException as e:  # a failing step must not kill the thread silently
                log.exception("scheduler step failed")
                for r in list(self._running):
                    self._fail(r, e)
                worked = True
            self.metrics.snapshot_pool(self.pool)
            if not worked:
                self._wake.wait(self._idle_wait())

    def _take_inbox(self, cancel_all: bool = False):
        while True:
            try:
                r = self._inbox.get_nowait()
            except queue.Empty:
                return
            if cancel_all:
                self._finish(r, "cancelled")
            else:
                self._waiting.append(r)

    def _idle_wait(self) -> float | None:
        if not self._running:
            return None if not self._waiting else 0.05
        now = time.perf_counter()
        nb = min(r.not_before for r in self._running)
        return max(0.0, min(nb - now, 0.05))

    def step(self) -> bool:
        """One scheduling step; False when there was nothing to run."""
        self._drop_cancelled()
        self._admit()
        batch = self._build_batch()
        if not batch:
            return False
        t0 = time.perf_counter()
        tokens, pos, slots, want, wanted = [], [], [], [], []
        for r, n in batch:
            p0 = r.seq.n_past
            chunk = r.feed[:n]
            tokens += chunk
            pos += range(p0, p0 + n)
            slots += [r.seq.slot] * n
            if n == len(r.feed):
                want.append(len(tokens) - 1)
                wanted.append(r)
        logits = self.model.forward(self.pool, np.asarray(tokens, np.int32),
                                    np.asarray(pos, np.int32), np.asarray(slots, np.int32), want)
        for r, n in batch:
            self.pool.commit(r.seq, r.feed[:n])
            del r.feed[:n]
        now = time.perf_counter()
        self._learn_costs(now - t0, batch)
        for i, r in enumerate(wanted):
            try:
                self._after_logits(r, logits[i], now)
            except Exception as e:   # one request's sampling / decoding fails: only it ends
                log.exception("a generation failed after its forward pass")
                self._fail(r, e)
        self.metrics.steps += 1
        return True

    # -- admission -------------------------------------------------------------------------------
    def _drop_cancelled(self):
        for r in [r for r in self._waiting if r.cancel.is_set()]:
            self._finish(r, "cancelled")
        for r in [r for r in self._running if r.cancel.is_set()]:
            self._finish(r, "cancelled")

    def _admit(self):
        pool = self.pool
        while self._waiting and pool.free_slots:
            r = self._waiting[0]
            ids = r.ids + r.tokens if r.tokens else r.ids    # a preempted request resumes
            if not pool.can_ever_open(ids):
                self._waiting.popleft()
                self._fail(r, ContextLengthError(
                    f"the prompt is {len(ids)} tokens, more than the KV pool can ever hold "
                    f"({pool.max_sequence_tokens()} tokens beside the cached context prompts); "
                    "shorten it or start the server with a larger --ctx-size"))
                continue
            if not pool.can_open(ids):
                break
            self._waiting.popleft()
            limit = len(ids) if r.warm else min(self.n_ctx, len(r.ids) + r.max_new)
            r.seq = pool.open(ids, max(limit, len(ids)))
            r.feed = list(ids[r.seq.n_past:])
            if not r.t_admit:
                r.t_admit = time.perf_counter()
                r.cached = r.seq.n_past
                r.sampler = Sampler(r.params, self.model.n_vocab)
                r.stops = StopMatcher(r.params.stop)
                if r.tokenizer is not None:
                    r.decoder = StreamDecoder(r.tokenizer, r.ids)
                n = r.params.repeat_last_n
                r.recent = list(r.ids[-n:]) if n else []
            self._count_waiting(-1)
            self._running.append(r)
            self.metrics.running = len(self._running)

    def _preempt(self) -> Request | None:
        """Free the blocks of the most recently admitted running request (vLLM's order: the
        newest yields, so older streams are not stalled for a newcomer's prompt); it waits at the
        head of the queue and is recomputed later, bit for bit the same. Returns it."""
        if not self._running:
            return None
        r = self._running[-1]
        self.pool.close(r.seq, keep=True)
        r.seq, r.feed = None, []
        # what it has fed and the token it still has to feed come back at the next admission
        self._running.remove(r)
        self._waiting.appendleft(r)
        self._count_waiting(+1)
        self.metrics.running = len(self._running)
        self.metrics.preemptions += 1
        return r

    # -- the batch -------------------------------------------------------------------------------
    def _chunk(self, decoding: bool) -> int:
        if not decoding:
            return self.n_batch
        if self.fixed_chunk:
            return max(1, min(self.fixed_chunk, self.n_batch))
        if self._t_decode is None or self._t_token is None or self._t_token <= 0:
            return min(32, self.n_batch)
        # a mixed step should cost about 1.5 decode-only steps: the running streams' p95 gap stays
        # under 3x their median while a long prompt goes in (measured 3.3x when aiming at 2 steps,
        # once decode steps got faster than the prompt tokens)
        return int(max(4, min(self.n_batch, 0.5 * self._t_decode / self._t_token)))

    def _build_batch(self) -> list[tuple[Request, int]]:
        now = time.perf_counter()
        ready = [r for r in self._running if r.not_before <= now and r.feed]
        decoders = [r for r in ready if len(r.feed) == 1 and r.t_first]
        prefillers = [r for r in ready if not (len(r.feed) == 1 and r.t_first)]
        batch = [(r, 1) for r in decoders]
        budget = self.n_batch - len(batch)
        budget = min(budget, self._chunk(bool(decoders)))
        for r in prefillers:
            if budget <= 0:
                break
            n = min(len(r.feed), budget)
            batch.append((r, n))
            budget -= n
        # blocks for every token of the batch; preempt (latest admitted first) when the pool is dry
        out = []
        for r, n in batch:
            while r.seq is not None:     # None: preempted (for itself or an earlier member)
                try:
                    self.pool.reserve(r.seq, n)
                    out.append((r, n))
                    break
                except ContextFullError:
                    if len(self._running) == 1:
                        # alone and still out of blocks: the pool cannot hold this sequence longer
                        log.warning("the KV pool is full: a sequence ends at %d tokens",
                                    r.seq.n_past)
                        self._finish(r, "length")
                        break
                    self._preempt()
        return [(r, n) for r, n in out if r.seq is not None]

    def _learn_costs(self, dt: float, batch):
        n_prompt = sum(n for r, n in batch if n > 1 or not r.t_first)
        n_dec = len(batch) - sum(1 for r, n in batch if n > 1 or not r.t_first)
        a = 0.3
        if n_prompt == 0 and n_dec:
            self._t_decode = dt if self._t_decode is None else (1 - a) * self._t_decode + a * dt
        elif n_prompt:
            base = self._t_decode or 0.0
            per = max(dt - base, 0.0) / n_prompt
            self._t_token = per if self._t_token is None else (1 - a) * self._t_token + a * per

    # -- after the forward -----------------------------------------------------------------------
    def _after_logits(self, r: Request, logits: np.ndarray, now: float):
        m = self.metrics
        if not r.t_first:
            r.t_prompt = now - r.t_admit
            m.prompt_tokens += len(r.ids) - r.cached
            if self.pool.prefix_cache:
                self.pool.cache(r.seq)           # its prompt blocks, for concurrent requests
        if r.warm:            # a context prompt: cached, kept from eviction, no answer
            r.t_first = now
            self._finish(r, "stop")
            self.pool.pin(r.ids)
            return
        token = r.sampler.sample(logits, r.recent)
        if r.times is not None:
            r.times.append(now)
        first = not r.t_first
        if first:
            r.t_first = now
            m.observe_ttft(now - r.t_submit)
        else:
            m.observe_itl(now - r.t_last)
        r.t_last = now
        tok = r.tokenizer
        if tok is not None and tok.is_eos(token):
            self._finish(r, "stop")
            return
        r.tokens.append(token)
        m.tokens_predicted += 1
        n = r.params.repeat_last_n
        if n:
            r.recent.append(token)
            if len(r.recent) > n:
                del r.recent[0]
        text = _lead(r, r.decoder.push(token) if r.decoder is not None else "")
        emit, stopped = r.stops.push(text)
        if emit:
            r.sink("piece", emit)
        if stopped:
            self._finish(r, "stop")
            return
        if len(r.tokens) >= r.max_new or r.seq.n_past + 1 > r.seq.limit:
            self._finish(r, "length")
            return
        r.feed = [token]
        if r.delay:
            r.not_before = now + r.delay

    def _finish(self, r: Request, reason: str):
        if r.done:
            return
        if r.seq is not None:
            self.pool.close(r.seq, keep=True)
            r.seq = None
        if r in self._running:
            self._running.remove(r)
        else:                    # waiting: queued (new or preempted), or still in the inbox
            if r in self._waiting:
                self._waiting.remove(r)
            self._count_waiting(-1)
        self.metrics.running = len(self._running)
        r.done = True
        try:
            if reason != "cancelled" and not r.stops.stopped and r.decoder is not None:
                emit, stopped = r.stops.push(_lead(r, r.decoder.flush()))
                rest = emit + ("" if stopped else r.stops.flush())
                reason = "stop" if stopped else reason
                if rest:
                    r.sink("piece", rest)
            t_end = time.perf_counter()
            t_gen = t_end - r.t_first if r.t_first else 0.0
            n_prompt = len(r.ids) - r.cached
            stats = GenerationStats(
                finish_reason=reason, prompt_tokens=len(r.ids), completion_tokens=len(r.tokens),
                prompt_tok_s=n_prompt / r.t_prompt if r.t_prompt > 0 else 0.0,
                gen_tok_s=(len(r.tokens) - 1) / t_gen if t_gen > 0 and len(r.tokens) > 1 else 0.0,
                truncated_tokens=r.truncated, cached_tokens=r.cached,
                queued_s=(r.t_admit or t_end) - r.t_submit,
                ttft_s=r.t_first - r.t_submit if r.t_first and r.tokens else 0.0)
            if not r.warm:
                self.metrics.finished(reason)
            r.sink("done", stats)
        except BaseException as e:  # a sink that fails must not take the scheduler down
            log.exception("delivering the end of a generation failed")
            try:
                r.sink("error", e)
            except BaseException:
                pass

    def _fail(self, r: Request, e: BaseException):
        if r.done:
            return
        if r.seq is not None:
            self.pool.close(r.seq, keep=False)
            r.seq = None
        if r in self._running:
            self._running.remove(r)
        else:
            self._count_waiting(-1)
        self.metrics.running = len(self._running)
        r.done = True
        try:
            r.sink("error", e)
        except BaseException:
            log.exception("delivering an error failed")


def _lead(r: Request, text: str) -> str:
    """An answer starts at its first non-space character (models put a space or a newline after
    "Output:" or "[/INST]"), as chat APIs present answers; whitespace inside it stays."""
    if r.started or not text:
        return text
    text = text.lstrip()
    r.started = bool(text)
    return text


class SchedulerMetrics:
    """Counters and histograms the scheduler keeps (read by /metrics and /health)."""

    TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
    ITL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self):
        self.waiting = 0
        self.running = 0
        self.steps = 0
        self.preemptions = 0
        self.prompt_tokens = 0
        self.tokens_predicted = 0
        self.finish_reasons: collections.Counter = collections.Counter()
        self.ttft = Histogram(self.TTFT_BUCKETS)
        self.itl = Histogram(self.ITL_BUCKETS)
        self._t0 = time.perf_counter()
        self._marks: collections.deque = collections.deque()  # (t, prompt, predicted) after steps
        self._marks_lock = threading.Lock()

    RATE_WINDOW_S = 10.0      # tokens_per_second() averages over the last 10 s

    kv_used_blocks = 0        # held by sequences or the prefix cache
    kv_active_blocks = 0      # held by running sequences
    prefix_hits = 0
    prefix_hit_tokens = 0

    def snapshot_pool(self, pool):
        """Copy the pool's figures (on the scheduler thread) for readers on other threads."""
        self.kv_used_blocks = pool.used_blocks()
        self.kv_active_blocks = pool.active_blocks()
        self.prefix_hits, self.prefix_hit_tokens = pool.hits, pool.hit_tokens
        self._mark(time.perf_counter())

    def _mark(self, now: float):
        """Remember the token counts after a step (for the last RATE_WINDOW_S seconds, a mark
        closer than 0.25 s to the one before the last replaces the last)."""
        mark = (now, self.prompt_tokens, self.tokens_predicted)
        with self._marks_lock:
            marks = self._marks
            if marks and marks[-1][1:] == mark[1:]:
                return
            if len(marks) >= 2 and now - marks[-2][0] < 0.25:
                marks[-1] = mark
            else:
                marks.append(mark)
            while len(marks) > 1 and marks[1][0] <= now - self.RATE_WINDOW_S:
                marks.popleft()

    def tokens_per_second(self, now: float | None = None) -> tuple[float, float]:
        """(prompt, generated) tokens per second over the last RATE_WINDOW_S seconds, every
        sequence together (any thread; 0 when idle that long)."""
        now = time.perf_counter() if now is None else now
        span = min(self.RATE_WINDOW_S, now - self._t0)
        with self._marks_lock:
            marks = list(self._marks)
        base_p = base_g = 0
        for t, p, g in marks:
            if t > now - self.RATE_WINDOW_S:
                break
            base_p, base_g = p, g
        if span <= 0:
            return 0.0, 0.0
        return (self.prompt_tokens - base_p) / span, (self.tokens_predicted - base_g) / span

    def observe_ttft(self, s: float):
        self.ttft.observe(s)

    def observe_itl(self, s: float):
        self.itl.observe(s)

    def finished(self, reason: str):
        self.finish_reasons[reason] += 1


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics)."""

    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float):
        i = 0
        while i < len(self.buckets) and v > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.sum += v
        self.count += 1
