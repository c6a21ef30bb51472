"""The aiohttp application: `create_app(settings) -> web.Application`.

The model loads once, in the background, when the app starts (`GET /health` answers 503
"loading" until it is ready). Generation runs on one dedicated executor thread — one at a time,
because one model owns one KV cache; requests that arrive meanwhile wait their turn in a bounded
FIFO queue (full -> 503 with Retry-After). Text pieces cross from that thread to the event loop
through `loop.call_soon_threadsafe` into an `asyncio.Queue`, and each is written to the response
the moment it exists. A client that goes away sets the generation's cancel event, which the
generation loop checks between tokens.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from ..errors import LLMStreamError
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
    ctx_size: int | None = None            # KV cache capacity (None: model's, at most 4096)
    threads: int | None = None             # kernel threads (None: OMP_NUM_THREADS or all cores)
    context_type: str = "general"          # default context prompt for /token_stream and chat
    prompt_config: str | None = None       # config/prompt_config.toml override
    defaults: SamplingParams = field(default_factory=SamplingParams)  # per-request defaults
    max_body_bytes: int = 1 << 20          # larger request bodies -> 413
    max_queue: int = 16                    # requests allowed to wait while one generates
    token_delay_ms: float = 0.0            # pause after each piece (demos, UI tests)
    static_dir: Path = STATIC_DIR
    model_name: str | None = None          # the id /v1/models reports (default: the model's name)
    # for tests and embedding: builds the LLM instead of LLM.load(model_path, ...)
    loader: Callable[[], Any] | None = None


class Busy(LLMStreamError):
    """The wait queue is full."""


class NotReady(LLMStreamError):
    """The model is still loading, or failed to load."""


class ModelState:
    """The loaded model and the turn-taking around it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.status = "loading"            # loading | ok | error
        self.error: str | None = None
        self.llm = None
        self.loaded_at = 0.0
        self.contexts = load_contexts(settings.prompt_config)
        get_context(settings.context_type, self.contexts)   # unknown default -> error at start
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmstream-gen")
        self.turn = asyncio.Lock()         # FIFO: asyncio.Lock wakes waiters in arrival order
        self.waiting = 0
        self.generating = False
        self.finished: deque = deque(maxlen=32)   # GenerationStats of recent generations
        self.active_cancel: threading.Event | None = None
        self.closing = False

    def shut_down(self):
        """Stop the running generation and refuse the waiting ones (server shutdown)."""
        self.closing = True
        if self.active_cancel is not None:
            self.active_cancel.set()

    @property
    def model_name(self) -> str:
        return self.settings.model_name or (self.llm.model_name if self.llm else "")

    def ready_llm(self):
        if self.status == "ok":
            return self.llm
        if self.status == "loading":
            raise NotReady("the model is still loading; retry in a moment (GET /health says when it is ready)")
        raise NotReady(f"the model failed to load: {self.error}")

    def load(self):
        """Runs on the executor thread."""
        s = self.settings
        if s.loader is not None:
            return s.loader()
        from ..generate import LLM
        return LLM.load(s.model_path, tokenizer_path=s.tokenizer_path, config_path=s.config_path,
                        ctx_size=s.ctx_size, threads=s.threads, contexts=self.contexts)

    async def prepare(self, request: web.Request, **kwargs):
        """Validate and tokenize a request off the event loop: -> (Generation, cancel event).
        Errors (bad parameters, a prompt that does not fit) raise here, before any response."""
        llm = self.ready_llm()
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        gen = await loop.run_in_executor(None, lambda: llm.generate(cancel=cancel, **kwargs))
        return gen, cancel

    async def stream(self, request: web.Request, gen, cancel: threading.Event) -> AsyncIterator[str]:
        """Wait for the model's turn, then run the generation on the generation thread and yield
        its pieces as they come; its stats are `gen.stats` (and `self.finished[-1]`) afterwards.
        Leaving the iteration early (client gone, error) cancels the generation and waits until
        the model is free again. Use it under `contextlib.aclosing`."""
        if self.waiting >= self.settings.max_queue:
            raise Busy(f"{self.waiting} requests are already waiting for the model; retry in a "
                       "few seconds")
        self.waiting += 1
        try:
            await self.turn.acquire()
        finally:
            self.waiting -= 1
        if self.closing:
            self.turn.release()
            raise NotReady("the server is shutting down")
        if _gone(request):   # left while waiting: do not spend a prefill on nobody
            self.turn.release()
            raise ClientGone("the client disconnected while waiting for its turn")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        delay = self.settings.token_delay_ms / 1000.0
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)

        def work():
            try:
                for piece in gen:
                    put(("piece", piece))
                    if delay and not cancel.is_set():
                        cancel.wait(delay)
                put(("done", gen.stats))
            except BaseException as e:  # delivered to the handler
                put(("error", e))
            finally:
                gen.close()

        self.generating, self.active_cancel = True, cancel
        fut = loop.run_in_executor(self.executor, work)
        watcher = asyncio.ensure_future(_watch_disconnect(request, cancel))
        try:
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    if cancel.is_set():
                        break
                    yield value
                elif kind == "done":
                    self.finished.append(value)
                    return
                else:
                    raise value
        finally:
            cancel.set()
            watcher.cancel()
            # the model is free only once the thread has left the generation
            try:
                await asyncio.shield(fut)
            finally:
                while not queue.empty():
                    kind, value = queue.get_nowait()
                    if kind == "done":
                        self.finished.append(value)
                self.generating, self.active_cancel = False, None
                self.turn.release()


class ClientGone(ConnectionResetError):
    """The client closed its connection: there is nobody to answer."""


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


async def _model_ctx(app: web.Application):
    """cleanup_ctx: load the model in the background at start-up, close it at shutdown."""
    state = app[STATE]
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()

    async def load():
        try:
            state.llm = await loop.run_in_executor(state.executor, state.load)
            state.status, state.loaded_at = "ok", time.time()
            log.info("model %s ready in %.2f s (context %d tokens)", state.model_name,
                     time.perf_counter() - t0, state.llm.n_ctx)
        except LLMStreamError as e:
            state.status, state.error = "error", str(e)
        except Exception as e:  # an unexpected failure still leaves a server that says why
            state.status, state.error = "error", f"{type(e).__name__}: {e}"
            log.exception("loading the model failed")
        if state.status == "error":
            on_error = app.get(LOAD_FAILED)
            if on_error is not None:
                on_error(state.error)
            else:
                log.error("the model failed to load: %s", state.error)

    task = asyncio.ensure_future(load())
    yield
    state.shut_down()
    if not task.done():
        await asyncio.shield(task)
    await loop.run_in_executor(state.executor, lambda: state.llm and state.llm.close())
    state.executor.shutdown(wait=True)


async def _on_shutdown(app: web.Application):
    # before aiohttp waits for running handlers: a streaming answer must not hold shutdown up
    app[STATE].shut_down()


LOAD_FAILED = web.AppKey("load_failed", object)  # optional callback(message) for the CLI


def create_app(settings: Settings) -> web.Application:
    from . import errors, openai, routes

    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[errors.error_middleware])
    app[SETTINGS] = settings
    app[STATE] = ModelState(settings)
    app.cleanup_ctx.append(_model_ctx)
    app.on_shutdown.append(_on_shutdown)
    routes.setup(app)
    openai.setup(app)
    return app
