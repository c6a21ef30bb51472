"""What the server holds: its `Settings`, the `ModelState` (the loaded model, its scheduler and
the bounded wait queue in front of it), and the app keys they live under (`SETTINGS`, `STATE`,
`LOAD_FAILED`). A leaf of llmstream.server: it imports none of the other server modules.

Generation runs on the scheduler's thread (llmstream/scheduler.py), which advances every running
request in one batched forward; the server only submits, streams and cancels. Text pieces cross
from that thread to the event loop through `loop.call_soon_threadsafe` into an `asyncio.Queue`.
A client that goes away sets its request's cancel event; the scheduler drops it at its next step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from ..errors import Busy, ClientGone, NotReady
from ..prompts import get_context, load_contexts
from ..sampling import SamplingParams

log = logging.getLogger("llmstream.server")

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with (the CLI fills it from flags)."""
    model_path: str | None = None          # GGUF file (resolved from the hub by the CLI)
    tokenizer_path: str | None = None      # tokenizer.json (None: beside the model, else the GGUF's)
    config_path: str | None = None         # HF config.json for candle-layout files
    ctx_size: int | None = None            # KV pool: tokens cached for all sequences (None: 4096)
    threads: int | None = None             # kernel threads (None: OMP_NUM_THREADS or all cores)
    context_type: str = "general"          # default context prompt for /token_stream and chat
    prompt_config: str | None = None       # config/prompt_config.toml override
    defaults: SamplingParams = field(default_factory=SamplingParams)  # per-request defaults
    max_body_bytes: int = 1 << 20          # larger request bodies -> 413
    body_timeout: float = 30.0             # seconds a request body may take to arrive -> 408
    shutdown_timeout: float = 10.0         # on SIGTERM: seconds running answers may take to finish
    api_key: str | None = None             # Bearer key every non-public request must carry
    cors_origins: tuple = ()               # origins allowed cross-origin ("*": any)
    max_client_connections: int = 16       # open connections per client address (0: no limit) -> 429
    max_queue: int = 16                    # requests allowed to wait for a free slot
    parallel: int = 4                      # sequences decoded together
    prefix_cache: bool = True              # reuse cached prompt prefixes (--no-prefix-cache: off)
    prewarm: bool = True                   # evaluate the context prompts once at start-up
    token_delay_ms: float = 0.0            # pause after each piece (demos, UI tests)
    static_dir: Path = STATIC_DIR
    model_name: str | None = None          # the id /v1/models reports (default: the model's name)
    # for tests and embedding: builds the LLM instead of LLM.load(model_path, ...)
    loader: Callable[[], Any] | None = None


class ModelState:
    """The loaded model, the recent generations and the admission in front of the scheduler."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.status = "loading"            # loading | warming | ok | error
        self.error: str | None = None
        self.llm = None
        self.loaded_at = 0.0
        self.contexts = load_contexts(settings.prompt_config)
        get_context(settings.context_type, self.contexts)   # unknown default -> error at start
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmstream-load")
        self.finished: deque = deque(maxlen=64)   # GenerationStats of recent generations
        self.active: set[threading.Event] = set()  # cancel events of the requests in flight
        self.closing = False
        self.warm_tokens = 0
        self.loading: dict | None = None          # {"done": bytes, "total": bytes} while loading
        self.requests: Counter = Counter()        # (endpoint, status) -> count, for /metrics

    def shut_down(self):
        """Stop every running and waiting generation (server shutdown)."""
        self.closing = True
        for cancel in list(self.active):
            cancel.set()

    @property
    def model_name(self) -> str:
        return self.settings.model_name or (self.llm.model_name if self.llm else "")

    @property
    def scheduler(self):
        return self.llm.scheduler if self.llm is not None else None

    @property
    def waiting(self) -> int:
        """Requests submitted and waiting for a slot or KV capacity."""
        return self.scheduler.n_waiting if self.llm is not None else 0

    @property
    def running(self) -> int:
        """Requests being generated (their sequences hold slots)."""
        return self.scheduler.n_running if self.llm is not None else 0

    @property
    def generating(self) -> bool:
        return self.running > 0

    def ready_llm(self):
        if self.closing:
            raise NotReady("the server is shutting down")
        if self.status == "ok":
            return self.llm
        if self.status in ("loading", "warming"):
            raise NotReady("the model is still loading; retry in a moment (GET /health says when it is ready)")
        raise NotReady(f"the model failed to load: {self.error}")

    def load(self):
        """Runs on the loader thread."""
        s = self.settings
        if s.loader is not None:
            return s.loader()
        from ..generate import LLM
        return LLM.load(s.model_path, tokenizer_path=s.tokenizer_path, config_path=s.config_path,
                        ctx_size=s.ctx_size, threads=s.threads, contexts=self.contexts,
                        parallel=s.parallel, prefix_cache=s.prefix_cache, progress=self._progress)

    def _progress(self, done: int, total: int):
        """Loading progress (on the loader thread): /health reports it, the console every 10 %."""
        step = self.loading["done"] * 10 // max(1, total) if self.loading else -1
        self.loading = {"done": done, "total": total}
        if done * 10 // max(1, total) != step and total >= 256 << 20:
            log.info("loading the model: %d of %d MB (%d %%)", done >> 20, total >> 20,
                     100 * done // total)

    def prewarm(self):
        """Runs on the loader thread: the context prompts, evaluated once and kept."""
        if self.settings.prefix_cache and self.settings.prewarm and self.llm.scheduler.pool.prefix_cache:
            self.warm_tokens = self.llm.prewarm()

    async def prepare(self, request: web.Request, **kwargs):
        """Validate and tokenize a request off the event loop: -> (Generation, cancel event).
        Errors (bad parameters, a prompt that does not fit) raise here, before any response."""
        llm = self.ready_llm()
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        delay = self.settings.token_delay_ms / 1000.0
        gen = await loop.run_in_executor(
            None, lambda: llm.generate(cancel=cancel, delay=delay, **kwargs))
        return gen, cancel

    async def stream(self, request: web.Request, gen, cancel: threading.Event) -> AsyncIterator[str]:
        """Submit the generation to the scheduler and yield its pieces as they come; its stats are
        `gen.stats` (and `self.finished[-1]`) afterwards. Leaving the iteration early (client gone,
        error) cancels the generation. Use it under `contextlib.aclosing`."""
        if self.waiting >= self.settings.max_queue:
            raise Busy(f"{self.waiting} requests are already waiting for the model; retry in a "
                       "few seconds")
        self.ready_llm()
        if _gone(request):   # left before it started: do not spend a prefill on nobody
            raise ClientGone("the client disconnected before its generation started")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(kind, value):          # on the scheduler thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:        # the event loop is gone (shutdown)
                cancel.set()

        self.active.add(cancel)
        gen.start(sink)
        watcher = asyncio.ensure_future(_watch_disconnect(request, cancel))
        ended = False
        try:
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    if cancel.is_set():
                        break
                    yield value
                elif kind == "done":
                    ended = True
                    self.finished.append(value)
                    return
                else:
                    ended = True
                    raise value
        finally:
            cancel.set()
            watcher.cancel()
            self.active.discard(cancel)
            if not ended:     # the scheduler answers a cancelled request at its next step
                try:
                    while True:
                        kind, value = await asyncio.wait_for(queue.get(), 30)
                        if kind == "done":
                            self.finished.append(value)
                        if kind != "piece":
                            break
                except asyncio.TimeoutError:
                    pass


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _watch_disconnect(request: web.Request, cancel: threading.Event, every: float = 0.02):
    """Set `cancel` as soon as the client's connection is gone (checked every 20 ms, so a
    generation stops within a token even when no piece is being written)."""
    while not cancel.is_set():
        if _gone(request):
            cancel.set()
            return
        await asyncio.sleep(every)


STATE = web.AppKey("state", ModelState)
SETTINGS = web.AppKey("settings", Settings)
LOAD_FAILED = web.AppKey("load_failed", object)  # optional callback(message) for the CLI
