"""The service's own routes: `POST /token_stream` (the original API), `GET /health`, and the web
page at `GET /` with its files under `/static/`."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import RequestError
from ..sampling import SamplingParams
from .errors import read_json
from .state import SETTINGS, STATE
from .streaming import context_type_of, pump, sampling_params

TOKEN_STREAM_KEYS = frozenset({"query", "context_type"}) | SamplingParams.keys()


async def token_stream(request: web.Request) -> web.StreamResponse:
    """POST /token_stream {"query": "...", optional context_type and sampling fields}
    -> 200 chunked text/plain: the answer's text pieces, each written as soon as it exists."""
    state, settings = request.app[STATE], request.app[SETTINGS]
    body = await read_json(request, settings.body_timeout)
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


async def health(request: web.Request) -> web.Response:
    """GET /health: 503 {"status": "loading"} while the model loads (with "loading": {"done",
    "total"} bytes of the file read once it is open; "warming" while the context
    prompts are evaluated), then 200 {"status": "ok", model, context types, context size, slots and
    KV pool use, queue}; 503 {"status": "error", "message"} if loading failed."""
    state, settings = request.app[STATE], request.app[SETTINGS]
    info: dict[str, Any] = {"status": state.status}
    if state.status == "ok":
        info.update(model=state.model_name, context_types=sorted(state.contexts),
                    default_context_type=settings.context_type, n_ctx=state.llm.n_ctx,
                    generating=state.generating, waiting=state.waiting,
                    **state.llm.scheduler.usage())
        return web.json_response(info)
    if state.status == "error":
        info["message"] = state.error
    elif state.status == "loading" and state.loading:
        info["loading"] = dict(state.loading)
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
