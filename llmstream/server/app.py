"""The aiohttp application: `create_app(settings) -> web.Application`.

The model loads once, in the background, when the app starts (`GET /health` answers 503
"loading" until it is ready); the scheduler thread runs every generation in batched forwards
(llmstream/scheduler.py; state.py submits and cancels) and each piece is streamed the moment it
exists (streaming.py). The modules import one way:
app -> routes, openai -> errors, streaming -> state -> llmstream (errors, generate, ...);
app -> metrics -> state.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import weakref

from aiohttp import web

from ..errors import LLMStreamError, TooManyConnections
from . import access, errors, metrics, openai, routes
from .state import LOAD_FAILED, SETTINGS, STATE, ModelState, Settings

log = logging.getLogger("llmstream.server")


async def _model_ctx(app: web.Application):
    """cleanup_ctx: load the model in the background at start-up, close it at shutdown."""
    state = app[STATE]
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()

    async def load():
        try:
            state.llm = await loop.run_in_executor(state.executor, state.load)
            state.status = "warming"
            await loop.run_in_executor(state.executor, state.prewarm)
            state.status, state.loaded_at = "ok", time.time()
            sched = state.llm.scheduler
            log.info("model %s ready in %.2f s (%d sequences at once, KV pool of %d tokens, each "
                     "sequence up to %d; %d context-prompt tokens cached)", state.model_name,
                     time.perf_counter() - t0, sched.parallel, sched.pool.n_tokens,
                     state.llm.n_ctx, state.warm_tokens)
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
    """Graceful stop (SIGTERM, Ctrl+C): aiohttp has stopped listening; new requests on open
    connections get 503; running answers may finish for up to --shutdown-timeout seconds, then
    the rest are cancelled (and say so: see streaming.pump). A second SIGTERM / Ctrl+C exits at
    once."""
    state = app[STATE]
    state.closing = True
    loop = asyncio.get_running_loop()
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _exit_now, sig)
    except (NotImplementedError, RuntimeError):   # not the main thread / platform
        pass
    deadline = loop.time() + max(0.0, app[SETTINGS].shutdown_timeout)
    while state.active and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if state.active:
        log.warning("shutting down: cancelling %d unfinished answer(s)", len(state.active))
    state.shut_down()


def _exit_now(sig):
    print("llmstream: stopped at once (second signal)", file=sys.stderr, flush=True)
    os._exit(128 + sig)


def limit_client_connections(limit: int):
    """Middleware: at most `limit` open connections per client address (0: no limit). A connection
    counts from its first request until it closes (idle keep-alive ones too); a request on one more
    gets 429 and that connection is closed. (Connections that never finish sending a request are
    closed by the keep-alive timeout; bodies that do not arrive, by Settings.body_timeout.)"""
    by_peer: dict[str, weakref.WeakSet] = {}

    @web.middleware
    async def client_connections(request: web.Request, handler):
        transport, peer = request.transport, request.remote
        if limit <= 0 or transport is None or not peer:
            return await handler(request)
        conns = by_peer.get(peer)
        if conns is None:
            if len(by_peer) >= 1024:       # forget addresses whose connections have all gone
                for k in [k for k, v in by_peer.items() if not any(not t.is_closing() for t in v)]:
                    del by_peer[k]
            conns = by_peer[peer] = weakref.WeakSet()
        if transport not in conns:
            n = sum(1 for t in conns if not t.is_closing())
            if n >= limit:
                raise TooManyConnections(
                    f"too many open connections from {peer}: {n} are open and the limit is {limit} "
                    "per client address (--max-client-connections); reuse a connection or close "
                    "idle ones")
            conns.add(transport)
        return await handler(request)
    return client_connections


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[errors.error_middleware,
                                       limit_client_connections(settings.max_client_connections)])
    app[SETTINGS] = settings
    app[STATE] = ModelState(settings)
    app.cleanup_ctx.append(_model_ctx)
    app.on_shutdown.append(_on_shutdown)
    routes.setup(app)
    openai.setup(app)
    metrics.setup(app)   # GET /metrics and the middleware counting requests
    access.setup(app)    # --api-key, --cors-origin
    return app
