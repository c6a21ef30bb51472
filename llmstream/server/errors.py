"""The one place where errors become HTTP responses: `{"error": {"message", "type"}}` with the
status the error deserves. No traceback ever reaches a client, and no request can take the server
down: anything unexpected is logged and answered with a 500."""
from __future__ import annotations

import json
import logging

from aiohttp import web

from ..errors import (Busy, ContextFullError, ContextLengthError, LLMStreamError, NotReady,
                      RequestError)

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
        return response_for(e)
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


async def read_json(request: web.Request) -> dict:
    """The request body as a JSON object, or RequestError saying what is wrong with it."""
    limit = request.client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON object such as "
                           "{\"query\": \"...\"}")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RequestError(f"the request body is not valid JSON ({e.msg} at line {e.lineno} "
                           f"column {e.colno})") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_json_type(body)}")
    return body


def _json_type(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(v), type(v).__name__)
