"""The engine: `Model.forward(pool, tokens, pos, seq, want) -> logits`, one batch of tokens of any
number of sequences, like llama.cpp's `llama_batch`.

Every token of a batch carries its own position and its sequence's slot in the KV pool (kv.py); the
rows whose logits are wanted are named. Prompt chunks of new sequences and the next token of every
decoding one go into the same forward. The engine keeps no sequence state: the pool holds the keys
and values, the caller (the scheduler, or a `Session` for one sequence) the positions.

Weights stay in the mmap'd GGUF in their quantized form (`Linear` holds a zero-copy view), except
where repacking pays: the matmul weights of the types the AVX2 kernels multiply in an "x8" layout
(Q4_K, Q5_K, Q6_K, ...) are rewritten once at load with 8 rows interleaved (csrc/formats.h
"Repacked layouts": the same numbers; the same results bit for bit where the file's layout has
row-per-lane kernels; <= 3 % more bytes), unless the AVX-512 kernels multiply that type;
LLMSTREAM_REPACK=0 keeps the file's layout. Every buffer a forward pass writes is made once per model (`Workspace`), so decoding
allocates nothing.
The per-family forward passes live in `models/`.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from . import _ops
from .errors import ContextFullError, ModelError
from .gguf import GGML_TYPES, GGUFFile
from .kv import KVPool
from .models import llama, phi2
from .models.config import ModelConfig, load_config

ARCHITECTURES = {"llama": llama, "phi2": phi2}
# Default KV capacity when no --ctx-size is given: a model trained on 32k tokens would otherwise
# reserve gigabytes of cache up front (llama.cpp defaults to 4096 too).
DEFAULT_MAX_CTX = 4096


def repack_by_default() -> bool:
    """Whether Model repacks its matmul weights (csrc/formats.h "x8" layouts) when not told:
    LLMSTREAM_REPACK=0/1 decides, else yes whenever the AVX2 kernels are in use. A type the
    AVX-512 kernels multiply (on CPUs that have them) keeps the file's layout even then: those
    kernels were measured on it (see Weights.linear)."""
    env = os.environ.get("LLMSTREAM_REPACK", "").strip().lower()
    if env:
        return env not in ("0", "off", "no", "false")
    return _ops.get_simd() != _ops.SIMD_SCALAR


class CoreWatch:
    """How many threads a forward pass should use now: at most `cap`, or fewer when other work
    holds cores. On a busy machine a thread whose core another process holds makes its peers wait
    at every barrier (2 cores, one busy loop at nice 0: 2 threads gave half the tokens/s of 1). But
    a runnable task holds a core only as far as the kernel's scheduler gives it one, which neither
    the run-queue length nor niceness tells: beside one busy loop at nice 19, 2-thread
    TinyLlama-shape Q4_K_M decode measured 14-21 tok/s in some minutes and 8.4 in others (1 thread
    about 11.5; quiet 21-24; Linux 6.18, 2 cores). What does tell is how long our own threads wait
    to run: the run delay of our slowest thread (/proc/self/task/*/schedstat) as a fraction of the
    pass measured a median of 0.43-0.48 where the other task hurt (nice 0; nice 19 at its worst)
    and 0.002-0.3 where 2 threads stayed well ahead of 1 (nice 19, 10, 5). So:

    - no other runnable task (/proc/loadavg's running count minus this process's own running
      threads): every thread — one read of /proc/loadavg per pass;
    - others runnable: every thread while the median of the last WINDOW such passes' fractions
      is under DELAY_LIMIT (each pass with every thread is timed that way), else the cores the
      others leave free (at least one), with a short pass (at most PROBE_MAX_TOKENS tokens)
      trying every thread again every PROBE_EVERY seconds; what it measures decides alone.

    Results do not depend on the thread count (tests/test_threads.py). Only where the process sees
    the whole machine (its CPU affinity is every online CPU: /proc/loadavg counts the whole
    machine's tasks); LLMSTREAM_ADAPTIVE_THREADS=0 turns it off."""

    LOADAVG = "/proc/loadavg"
    DELAY_LIMIT = 0.4        # of a pass's wall time, the longest one of our threads waited to run
    WINDOW = 5               # passes whose median decides (one pass can be unlucky)
    PROBE_EVERY = 4.0        # seconds between passes that try every thread while fewer are used
    PROBE_MAX_TOKENS = 16    # only short passes probe: one kept waiting costs little

    def __init__(self, cap: int):
        self.cap = max(1, cap)
        try:
            whole = len(os.sched_getaffinity(0)) == (os.cpu_count() or 0)
        except (AttributeError, OSError):
            whole = False
        self.enabled = (whole and self.cap > 1
                        and os.environ.get("LLMSTREAM_ADAPTIVE_THREADS", "1") != "0")
        self.n_cpus = os.cpu_count() or 1
        self._waits = deque(maxlen=self.WINDOW)   # fractions of the last passes our threads waited
        self._next_probe = 0.0     # while fewer threads are used: when to try every thread again
        self._timing = None        # (start, run delays) of the pass being timed
        self.clock, self.run_delays = time.monotonic, _run_delays   # (tests replace them)

    @property
    def waited(self) -> float:
        """Median fraction of the recent passes with every thread (while others were runnable)
        that our slowest thread spent waiting to run; 0 when there are none."""
        return statistics.median(self._waits) if self._waits else 0.0

    def threads(self, n_tokens: int = 1) -> int:
        """The threads for the next forward pass (of n_tokens tokens); call observe() after it."""
        self._timing = None
        if not self.enabled:
            return self.cap
        try:
            with open(self.LOADAVG) as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return self.cap
        others = max(0, running - _own_running_threads())
        if others == 0:
            return self.cap
        now = self.clock()
        full = self.waited < self.DELAY_LIMIT
        if full or (now >= self._next_probe and n_tokens <= self.PROBE_MAX_TOKENS):
            if not full:
                self._waits.clear()      # a probe: what it measures decides alone
            self._timing = (now, self.run_delays())
            return self.cap
        return max(1, min(self.cap, self.n_cpus - others))

    def observe(self):
        """After the forward pass threads() was asked for: when it ran every thread beside other
        runnable work, how long did our slowest thread wait to run?"""
        if self._timing is None:
            return
        (start, before), self._timing = self._timing, None
        now = self.clock()
        if now <= start:
            return
        after = self.run_delays()
        waited = max((after[t] - before[t] for t in after if t in before), default=0) / 1e9
        self._waits.append(waited / (now - start))
        if self.waited >= self.DELAY_LIMIT:
            self._next_probe = now + self.PROBE_EVERY


def _thread_files(name: str):
    """(thread id, text of /proc/self/task/<tid>/<name>) for each thread of this process that
    still has one; nothing where /proc/self/task cannot be listed."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/{name}") as f:
                yield tid, f.read()
        except OSError:
            pass


def _run_delays() -> dict:
    """Nanoseconds each thread of this process has waited on a run queue so far, by thread id
    (schedstat's second field; empty where the kernel keeps no schedstats)."""
    out = {}
    for tid, text in _thread_files("schedstat"):
        try:
            out[tid] = int(text.split()[1])
        except (IndexError, ValueError):
            pass
    return out


def _own_running_threads() -> int:
    """Threads of this process that are running now (the caller, and kernel threads still
    spinning after the previous pass): they are not other work."""
    n = 0
    for _, text in _thread_files("stat"):
        try:
            n += text.rsplit(")", 1)[1].split()[0] == "R"
        except IndexError:
            pass
    return max(1, n)


@dataclass(frozen=True)
class Linear:
    """y = x @ W.T (+ b): W (n_out, n_in) as raw rows of `type`, used in place from the mmap, or
    repacked (`packed()`: then `src` is the Linear it was made from)."""
    w: np.ndarray          # uint8 (n_out, row_bytes)
    type: int
    n_in: int
    n_out: int
    b: np.ndarray | None = None
    src: "Linear | None" = None

    def __call__(self, x: np.ndarray, y: np.ndarray, xq: np.ndarray) -> np.ndarray:
        _ops.matmul(self.w, self.type, x, y, xq)
        if self.b is not None:
            y += self.b
        return y

    def rows(self, start: int, stop: int, b: np.ndarray | None = None) -> "Linear":
        """Output rows start..stop as their own Linear (a view: splits a fused QKV for free; a
        repacked one is split on its 8-row groups, or repacked again from the file if it must)."""
        if self.src is not None and start % 8:
            return self.src.rows(start, stop, b).packed()
        return Linear(self.w[start:stop], self.type, self.n_in, stop - start,
                      None if b is None else b[start:stop],
                      None if self.src is None else self.src.rows(start, stop, b))

    def packed(self) -> "Linear":
        """This Linear with its weights repacked for the matmul kernels (csrc/formats.h "x8"
        layouts: the same results bit for bit), or itself when its type has no such layout."""
        if self.src is not None or _ops.repack_type(self.type) < 0:
            return self
        w, t = _ops.repack(self.w, self.type, self.n_in)
        return Linear(w, t, self.n_in, self.n_out, self.b, self)


class Weights:
    """The tensors of one model, fetched through its layout's name map."""

    def __init__(self, gf: GGUFFile, cfg: ModelConfig, repack: bool = False):
        self.gf, self.names, self.repack = gf, cfg.names, repack

    def name(self, key: str, layer: int | None = None) -> str:
        return self.names[key].format(i=layer)

    def has(self, key: str, layer: int | None = None) -> bool:
        return key in self.names and self.name(key, layer) in self.gf.tensors

    def vector(self, key: str, layer: int | None = None) -> np.ndarray | None:
        """A 1-D f32 tensor (norm weight or bias), or None when the file has none."""
        if not self.has(key, layer):
            return None
        name = self.name(key, layer)
        info = self.gf.tensors[name]
        if info.type_name == "F32":
            return self.gf.tensor(name).reshape(-1)
        buf = np.empty(info.shape[0], np.float32)  # tiny f16/bf16 vectors: converted once
        _ops.get_rows(self.gf.raw(name), info.type, np.zeros(1, np.int32), buf.reshape(1, -1))
        return buf

    def linear(self, key: str, layer: int | None = None, bias: str | None = None) -> Linear:
        name = self.name(key, layer)
        info = self.gf.tensors[name]
        if info.type not in GGML_TYPES or GGML_TYPES[info.type][0] in ("Q8_1", "Q8_K"):
            raise ModelError(f"{self.gf.path}: tensor '{name}' has type {info.type_name}, "
                             "which cannot hold weights")
        b = self.vector(bias, layer) if bias else None
        lin = Linear(self.gf.raw(name), info.type, info.shape[0], info.n_rows, b)
        # the token embedding is read by rows (get_rows), not multiplied: it keeps the file's layout
        if not self.repack or key == "tok_embd" or _ops.matmul_uses_avx512(info.type):
            return lin
        packed = lin.packed()
        if packed is not lin:
            self.gf.release(name)       # the copy is what is read: the file's pages need not stay
        return packed


class Workspace:
    """Every activation buffer of a forward pass over up to n_batch tokens, made once."""

    def __init__(self, cfg: ModelConfig, n_batch: int, n_logits: int, linears: list[Linear]):
        B, E, KV, F = n_batch, cfg.n_embd, cfg.n_embd_kv, cfg.n_ff
        z = lambda *shape: np.zeros(shape, np.float32)
        self.x, self.h, self.att, self.o = z(B, E), z(B, E), z(B, E), z(B, E)
        self.q, self.k, self.v = z(B, E), z(B, KV), z(B, KV)
        self.f1, self.f2 = z(B, F), z(B, F)
        self.rows = z(B, E)                    # the final rows whose logits are wanted
        self.logits = z(n_logits, cfg.n_vocab)
        # four regions: matmuls fed by the same activations but with different vec_dot types
        # (llama_layer: q/k/v; phi2_layer: q/k/v/fc1) each get their own converted copy
        xq_bytes = max(_ops.vec_dot_row_bytes(l.type, l.n_in) for l in linears) * B
        self.xq = np.zeros(4 * xq_bytes, np.uint8)


class Model:
    """A loaded model: evaluates batches of tokens of many sequences, returns logits."""

    def __init__(self, path: str | os.PathLike, config_path: str | None = None,
                 ctx_size: int | None = None, n_batch: int = 256, threads: int | None = None,
                 n_logits: int = 16, repack: bool | None = None):
        self.gguf = GGUFFile(path)
        try:
            self.config = cfg = load_config(self.gguf, config_path)
            if threads:
                _ops.set_threads(threads)
            self._threads = threads or 0      # what set_threads holds between forward passes
            self.cores = CoreWatch(_ops.effective_threads())
            # the longest sequence: --ctx-size, else what the model was trained on (at most 4096)
            self.n_ctx = int(ctx_size) if ctx_size else min(cfg.n_ctx_train, DEFAULT_MAX_CTX)
            if self.n_ctx <= 0:
                raise ModelError(f"context size must be positive, got {self.n_ctx}")
            self.n_batch = max(1, n_batch)
            self.repacked = repack_by_default() if repack is None else bool(repack)
            w = Weights(self.gguf, cfg, self.repacked)
            arch = ARCHITECTURES[cfg.arch]
            self.layers, self.top = arch.load(w, cfg)
            linears = [l for layer in self.layers for l in vars(layer).values()
                       if isinstance(l, Linear)] + [self.top.output]
            self.ws = Workspace(cfg, self.n_batch, max(1, n_logits), linears)
            self._forward = arch.forward
        except BaseException:
            self.gguf.close()
            raise

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    def new_pool(self, n_tokens: int | None = None, n_slots: int = 1, **kw) -> KVPool:
        """A KV pool for this model: n_tokens cached tokens (default n_ctx) over n_slots sequences."""
        return KVPool(self.config, n_tokens or self.n_ctx, n_slots,
                      threads=self.cores.cap, **kw)

    def forward(self, pool: KVPool, tokens, pos, seq, want=None, out: np.ndarray | None = None
                ) -> np.ndarray:
        """Evaluate one batch: token t (tokens[t]) of the sequence in pool slot seq[t] at position
        pos[t]; each sequence's earlier positions must be stored (or in this batch, before t).
        tokens, pos, seq (T,) int32 with T <= n_batch. want: indices of the rows whose logits are
        returned (default: the last). Returns logits (len(want), n_vocab): `out` if given, else
        the model's own buffer (valid until the next forward; copy it to keep it)."""
        ids = np.ascontiguousarray(tokens, dtype=np.int32)
        pos = np.ascontiguousarray(pos, dtype=np.int32)
        seq = np.ascontiguousarray(seq, dtype=np.int32)
        T = len(ids)
        if T == 0:
            raise ValueError("no tokens to evaluate")
        if T > self.n_batch:
            raise ValueError(f"a batch holds at most {self.n_batch} tokens, got {T}")
        if pos.shape != (T,) or seq.shape != (T,):
            raise ValueError("one position and one sequence per token")
        bad = (ids < 0) | (ids >= self.n_vocab)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary "
                             f"(0..{self.n_vocab - 1})")
        want = np.asarray([T - 1] if want is None else want, dtype=np.intp)
        if len(want) and (want.min() < 0 or want.max() >= T):
            raise ValueError("wanted logits rows must be rows of the batch")
        if out is None:
            if len(want) > self.ws.logits.shape[0]:
                raise ValueError(f"at most {self.ws.logits.shape[0]} logits rows per forward "
                                 "without an out buffer")
            out = self.ws.logits[:len(want)]
        elif out.shape != (len(want), self.n_vocab) or out.dtype != np.float32:
            raise ValueError("out must be float32 (len(want), n_vocab)")
        _ops.set_threads(self.cores.threads(T))
        try:
            self._forward(self, pool, ids, pos, seq, want, out)
        finally:
            self.cores.observe()
            _ops.set_threads(self._threads)      # the setting outside forward passes stays
        return out

    def close(self):
        self.gguf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Session:
    """One sequence on a pool of its own: `prefill(tokens) -> logits`, `decode_step(token) ->
    logits` — the single-stream way to drive a Model (CLI `logits`, the single-stream bench, tests).

        with Model(path) as m:
            s = Session(m)
            logits = s.prefill(prompt_ids)
            logits = s.decode_step(int(logits.argmax()))
    """

    def __init__(self, model: Model, n_ctx: int | None = None):
        self.model = model
        self.n_ctx = n_ctx or model.n_ctx
        self.pool = model.new_pool(self.n_ctx, 1, prefix_cache=False)
        self.seq = self.pool.open([], self.n_ctx)

    @property
    def n_past(self) -> int:
        return self.seq.n_past

    def reset(self):
        """Forget the sequence: the next prefill starts from position 0."""
        self.pool.close(self.seq, keep=False)
        self.seq = self.pool.open([], self.n_ctx)

    def rewind(self, n_past: int):
        """Keep only the first n_past tokens (their keys/values stay where they are)."""
        if not 0 <= n_past <= self.seq.n_past:
            raise ValueError(f"cannot rewind to {n_past} of {self.seq.n_past} tokens")
        del self.seq.tokens[n_past:]

    def prefill(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Evaluate tokens after the cached ones, in batches of the model's n_batch. Returns the
        last position's logits (n_vocab,) — the model's buffer, valid until the next call — or
        every position's (n_tokens, n_vocab) with all_logits."""
        ids = np.asarray(tokens, dtype=np.int32).reshape(-1)
        n, m = len(ids), self.model
        if n == 0:
            raise ValueError("no tokens to evaluate")
        if self.seq.n_past + n > self.n_ctx:
            raise ContextFullError(
                f"{self.seq.n_past} cached + {n} new tokens exceed the context of {self.n_ctx}")
        out = np.empty((n, m.n_vocab), np.float32) if all_logits else None
        last = None
        for s in range(0, n, m.n_batch):
            chunk = ids[s:s + m.n_batch]
            T = len(chunk)
            p0 = self.seq.n_past
            self.pool.reserve(self.seq, T)
            pos = np.arange(p0, p0 + T, dtype=np.int32)
            slots = np.full(T, self.seq.slot, np.int32)
            if all_logits:
                m.forward(self.pool, chunk, pos, slots, np.arange(T), out[s:s + T])
            else:
                last = m.forward(self.pool, chunk, pos, slots)
            self.pool.commit(self.seq, chunk)
        return out if all_logits else last[0]

    def decode_step(self, token: int) -> np.ndarray:
        """Evaluate one token; returns its logits (n_vocab,) (the model's buffer, see prefill)."""
        return self.prefill([token])
