"""Who may use the server: an optional API key (`--api-key` / LLMSTREAM_API_KEY, sent as
`Authorization: Bearer <key>`, compared in constant time; 401 JSON otherwise) and optional CORS
for the origins named with `--cors-origin` (none by default: browsers then only allow the
server's own page). `GET /`, the page's static files and `/health` stay public, so the page loads
and a load balancer can probe without the key."""
from __future__ import annotations

import hmac

from aiohttp import web

from ..errors import Unauthorized
from .state import SETTINGS

PUBLIC_PATHS = frozenset({"/", "/health"})
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _key_of(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-Api-Key")


@web.middleware
async def api_key_middleware(request: web.Request, handler):
    """401 for a missing or wrong key on every non-public path (CORS preflights pass: browsers
    send them without credentials)."""
    expected = request.app[SETTINGS].api_key
    if expected and request.method != "OPTIONS" and not is_public(request.path):
        given = _key_of(request)
        if given is None:
            raise Unauthorized("this server needs an API key: send the header "
                               "'Authorization: Bearer <key>' (the key it was started with, "
                               "--api-key or LLMSTREAM_API_KEY)")
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                   expected.encode("utf-8", "surrogatepass")):
            raise Unauthorized("the API key is wrong: send the key the server was started with "
                               "as 'Authorization: Bearer <key>'")
    return await handler(request)


CORS_METHODS = "GET, POST, OPTIONS"
CORS_ORIGIN = web.RequestKey("cors_origin", str)
CORS_HEADERS = "Authorization, Content-Type, X-Api-Key"


@web.middleware
async def cors_middleware(request: web.Request, handler):
    """CORS for the configured origins only ('*' allows any): answers preflights and adds the
    Access-Control-Allow-Origin header to responses, streamed ones included."""
    origins = request.app[SETTINGS].cors_origins
    origin = request.headers.get("Origin")
    allowed = bool(origins) and origin is not None and ("*" in origins or origin in origins)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not allowed:
            raise web.HTTPForbidden(text="this origin may not use the server (--cors-origin)")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": "600"})
    if allowed:
        request[CORS_ORIGIN] = origin
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse):
    """on_response_prepare: the header goes on every response to an allowed origin, before its
    first byte (streams too)."""
    origin = request.get(CORS_ORIGIN)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


def setup(app: web.Application) -> None:
    app.middlewares.append(cors_middleware)
    app.middlewares.append(api_key_middleware)
    app.on_response_prepare.append(add_cors_headers)
