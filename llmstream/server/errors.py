"""The one place where errors become HTTP responses: `{"error": {"message", "type"}}` with the
status the error deserves. No traceback ever reaches a client, and no request can take the server
down: anything unexpected is logged and answered with a 500."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from typing import Any

from aiohttp import web

from ..errors import (Busy, ContextFullError, ContextLengthError, LLMStreamError, NotReady,
                      RequestError, RequestTimeout, TooManyConnections, Unauthorized)

log = logging.getLogger("llmstream.server")


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   code: str | None = None, headers: dict | None = None) -> web.Response:
    return web.json_response(error_body(message, type_, code), status=status, headers=headers)


def status_of(e: BaseException) -> tuple[int, str, str | None, dict | None]:
    """(HTTP status, error type, code, extra headers) for an error raised while serving: the one
    table from llmstream.errors to HTTP. Errors not named here (a broken model file, ...) are the
    server's fault: 500."""
    if isinstance(e, Busy):
        return 503, "server_busy", "queue_full", {"Retry-After": "2"}
    if isinstance(e, ContextFullError):  # out of KV capacity for now: another turn will free it
        return 503, "server_busy", "kv_cache_full", {"Retry-After": "2"}
    if isinstance(e, NotReady):
        return 503, "server_not_ready", "model_not_ready", {"Retry-After": "1"}
    if isinstance(e, Unauthorized):
        return 401, "authentication_error", "invalid_api_key", {"WWW-Authenticate": "Bearer"}
    if isinstance(e, TooManyConnections):
        return 429, "rate_limit_error", "too_many_connections", {"Retry-After": "1"}
    if isinstance(e, RequestTimeout):
        return 408, "invalid_request_error", "request_timeout", None
    if isinstance(e, ContextLengthError):
        return 400, "invalid_request_error", "context_length_exceeded", None
    if isinstance(e, RequestError):
        return 400, "invalid_request_error", None, None
    return 500, "server_error", None, None


def response_for(e: BaseException) -> web.Response:
    status, type_, code, headers = status_of(e)
    return error_response(status, str(e), type_, code, headers)


_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"the request body is larger than the limit of "
                                   f"{request.client_max_size} bytes; "
                                   "send a shorter prompt", code="body_too_large")
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        message = e.text if e.text and e.text != e.reason and not e.text.startswith(f"{e.status}:") \
            else _default_message(request, e)
        return error_response(e.status, message, _HTTP_TYPES.get(e.status, "invalid_request_error"),
                              headers={k: v for k, v in e.headers.items() if k == "Allow"})
    except LLMStreamError as e:
        resp = response_for(e)
        if isinstance(e, (RequestTimeout, TooManyConnections)):
            resp.force_close()     # a slow or excess connection is not kept for another request
        if request.content.exception() is not None:
            # the body could not be read (bad gzip, ...): the connection cannot carry another
            # request; say so, and stop aiohttp from draining a stream that only raises
            resp.force_close()
            request.content.feed_eof()
        return resp
    except ConnectionResetError:
        return web.Response(status=499)  # the client has gone: nobody reads this
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(500, "internal server error (see the server log)", "server_error")


def _default_message(request: web.Request, e: web.HTTPException) -> str:
    if e.status == 404:
        return (f"no route for {request.method} {request.path}; see README.md for the API "
                "(POST /token_stream, POST /v1/chat/completions, POST /v1/completions, GET /v1/models)")
    if e.status == 405:
        return f"{request.method} is not allowed on {request.path} (allowed: {e.headers.get('Allow', '?')})"
    return e.reason


#: how deeply a request body may nest arrays and objects (OpenAI bodies need 5 or so)
MAX_JSON_DEPTH = 32
#: most digits a JSON integer may have: every integer a request takes fits in 64 bits (20 digits)
MAX_INT_DIGITS = 20
#: Content-Encodings a request body may have (aiohttp decodes them)
BODY_ENCODINGS = ("identity", "gzip", "deflate")


async def read_json(request: web.Request, timeout: float | None = None) -> dict:
    """The request body as a JSON object, or RequestError saying what is wrong with it: every body
    goes through here, so every check of its bytes and its JSON is made once, here (size,
    Content-Encoding, UTF-8, JSON syntax, nesting depth, integer size, number range, lone
    surrogates). `timeout`: seconds the whole body may take to arrive (then RequestTimeout: a
    client that trickles its body, or stops sending it, does not hold a connection for ever)."""
    limit = request.client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if encoding not in BODY_ENCODINGS:
        raise RequestError(f"Content-Encoding {_clip(encoding)!r} is not supported; send the body "
                           f"as is or with one of {', '.join(BODY_ENCODINGS[1:])}")
    try:
        raw = await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s; send the "
                             "whole body at once") from None
    except web.RequestPayloadError as e:
        cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
        if encoding != "identity":
            raise RequestError(f"the request body is not valid {encoding} data "
                               f"(Content-Encoding: {encoding})") from None
        raise RequestError(f"the request body is incomplete or malformed ({_reason(cause)})") from None
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON object such as "
                           "{\"query\": \"...\"}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    try:
        body = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                          parse_constant=_parse_constant)
    except json.JSONDecodeError as e:
        raise RequestError(f"the request body is not valid JSON ({e.msg} at line {e.lineno} "
                           f"column {e.colno})") from None
    except RecursionError:
        raise RequestError(f"the request body nests arrays or objects too deeply (at most "
                           f"{MAX_JSON_DEPTH} levels)") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_json_type(body)}")
    _check_tree(body)
    return body


def _parse_int(s: str) -> int:
    digits = len(s) - s.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise RequestError(f"the request body holds an integer of {digits} digits ({_clip(s, 12)}); "
                           f"integers may have at most {MAX_INT_DIGITS} digits")
    return int(s)


def _parse_float(s: str) -> float:
    v = float(s)
    if math.isinf(v):
        raise RequestError(f"the request body holds the number {_clip(s, 24)}, which is too large "
                           "for a double-precision float (at most about 1.8e308)")
    return v


def _parse_constant(s: str):
    raise RequestError(f"the request body is not valid JSON ({s} is not a JSON value; "
                       "numbers must be finite)")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_tree(body: dict) -> None:
    """Every string (keys too) is valid Unicode (no lone UTF-16 surrogate, which JSON's \\uXXXX
    escapes can produce but no UTF-8 encoder or tokenizer accepts), and arrays and objects nest at
    most MAX_JSON_DEPTH deep. Iterative: a body cannot exhaust the stack here."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise RequestError(f"the request body nests arrays or objects too deeply (at most "
                                   f"{MAX_JSON_DEPTH} levels)")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(k, str):
                    _check_text(k, path, key=True)
                    sub = f"{path}.{_clip(k)}" if path else _clip(k)
                else:
                    sub = f"{path}[{k}]"
                stack.append((v, sub, depth + 1))
        elif isinstance(node, str):
            _check_text(node, path)


def _check_text(s: str, path: str, key: bool = False) -> None:
    m = _SURROGATE.search(s)
    if m:
        where = f"the key {_clip(s)!r}" if key else f"the field {path}"
        raise RequestError(f"{where} holds a lone UTF-16 surrogate (\\u{ord(m.group()):04x} at "
                           f"character {m.start()}), which is not valid Unicode text; escape "
                           "characters outside the BMP as a surrogate pair or send them as UTF-8")


def _clip(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _reason(e: BaseException) -> str:
    return getattr(e, "message", None) or str(e) or type(e).__name__


def _json_type(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(v), type(v).__name__)
