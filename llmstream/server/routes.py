"""The service's own routes: `POST /token_stream` (the original API), `GET /health`, and the web
page at `GET /` with its files under `/static/`."""
from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any, Mapping

from aiohttp import web

from ..errors import RequestError
from ..sampling import SamplingParams
from .app import SETTINGS, STATE
from .errors import read_json

log = logging.getLogger("llmstream.server")

TOKEN_STREAM_KEYS = frozenset({"query", "context_type"}) | SamplingParams.keys()


def sampling_params(body: Mapping[str, Any], base: SamplingParams,
                    rename: Mapping[str, str] | None = None) -> tuple[SamplingParams, bool]:
    """SamplingParams from the sampling fields of a request body (others are ignored here), and
    whether max_tokens was given explicitly (otherwise it may shrink to what the context holds)."""
    rename = rename or {}
    fields = {}
    for key, value in body.items():
        name = rename.get(key, key)
        if name in SamplingParams.keys() and value is not None:
            fields[name] = value
    return SamplingParams.from_dict(fields, base), "max_tokens" in fields


def context_type_of(body: Mapping[str, Any], default: str) -> str:
    ct = body.get("context_type")
    if ct is None:
        return default
    if not isinstance(ct, str):
        raise RequestError(f"context_type must be a string, got {type(ct).__name__}")
    return ct


async def token_stream(request: web.Request) -> web.StreamResponse:
    """POST /token_stream {"query": "...", optional context_type and sampling fields}
    -> 200 chunked text/plain: the answer's text pieces, each written as soon as it exists."""
    state, settings = request.app[STATE], request.app[SETTINGS]
    body = await read_json(request)
    unknown = sorted(set(body) - TOKEN_STREAM_KEYS)
    if unknown:
        raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(map(repr, unknown))} (accepted: "
                           f"{', '.join(sorted(TOKEN_STREAM_KEYS))})")
    query = body.get("query")
    if query is None:
        raise RequestError('the request needs a "query" field, e.g. {"query": "What is 2+2?"}')
    if not isinstance(query, str):
        raise RequestError(f'"query" must be a string, got {type(query).__name__}')
    params, explicit_max = sampling_params(body, settings.defaults)
    gen, cancel = await state.prepare(
        request, prompt=query, context_type=context_type_of(body, settings.context_type),
        params=params, clamp_max_tokens=not explicit_max)

    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await pump(request, resp, gen, cancel, lambda piece: piece.encode("utf-8"))
    return resp


async def pump(request: web.Request, resp: web.StreamResponse, gen, cancel, encode,
               head: bytes = b"", tail=lambda gen: b"", on_error=lambda e: b"") -> None:
    """Run a prepared generation and write `head`, then `encode(piece)` for each text piece the
    moment it exists, then `tail(gen)` (after which `gen.stats` is set). The response is prepared
    at the first piece, so an error before it (queue full) still becomes a JSON error response;
    an error after it is logged and `on_error(e)` is written. A client that goes away cancels
    the generation; the model is free again when this returns."""
    state = request.app[STATE]
    resp.enable_chunked_encoding()

    async def start():
        if not resp.prepared:
            await resp.prepare(request)
            if head:
                await resp.write(head)

    try:
        async with aclosing(state.stream(request, gen, cancel)) as pieces:
            async for piece in pieces:
                await start()
                await resp.write(encode(piece))
        await start()
        if end := tail(gen):
            await resp.write(end)
        await resp.write_eof()
    except ConnectionResetError:
        cancel.set()
    except Exception as e:
        if not resp.prepared:
            raise
        log.exception("generation failed mid-stream")
        cancel.set()
        try:
            if msg := on_error(e):
                await resp.write(msg)
            await resp.write_eof()
        except ConnectionResetError:
            pass


async def collect(request: web.Request, gen, cancel) -> str:
    """Run a prepared generation to the end and return its whole text (non-streamed answers)."""
    async with aclosing(request.app[STATE].stream(request, gen, cancel)) as pieces:
        return "".join([piece async for piece in pieces])


async def health(request: web.Request) -> web.Response:
    """GET /health: 503 {"status": "loading"} until the model is ready, then 200 {"status": "ok",
    model, context types, context size, queue}; 503 {"status": "error", "message"} if loading
    failed."""
    state, settings = request.app[STATE], request.app[SETTINGS]
    info: dict[str, Any] = {"status": state.status}
    if state.status == "ok":
        info.update(model=state.model_name, context_types=sorted(state.contexts),
                    default_context_type=settings.context_type, n_ctx=state.llm.n_ctx,
                    generating=state.generating, waiting=state.waiting)
        return web.json_response(info)
    if state.status == "error":
        info["message"] = state.error
    return web.json_response(info, status=503, headers={"Retry-After": "1"})


async def index(request: web.Request) -> web.StreamResponse:
    page = request.app[SETTINGS].static_dir / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound(text=f"the web page is missing ({page}); the API still works")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_post("/token_stream", token_stream)
    static = app[SETTINGS].static_dir
    if static.is_dir():
        app.router.add_static("/static/", static)
