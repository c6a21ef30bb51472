"""Every typed error has the HTTP status it deserves, decided in one place
(`llmstream.server.errors.status_of`), and llmstream.server imports one way (no model needed)."""
import subprocess
import sys

import pytest
from aiohttp import web

from llmstream import errors
from llmstream.hub import HubError
from llmstream.prompts import UnknownContextError
from llmstream.server.errors import error_middleware, status_of

RETRY = {"Retry-After": "2"}
# error -> (status, type, code, headers)
EXPECTED = {
    errors.LLMStreamError: (500, "server_error", None, None),
    errors.GGUFError: (500, "server_error", None, None),
    errors.ModelError: (500, "server_error", None, None),
    errors.TokenizerError: (500, "server_error", None, None),
    errors.ConfigError: (500, "server_error", None, None),
    errors.RequestError: (400, "invalid_request_error", None, None),
    errors.ContextLengthError: (400, "invalid_request_error", "context_length_exceeded", None),
    errors.RequestTimeout: (408, "invalid_request_error", "request_timeout", None),
    errors.TooManyConnections: (429, "rate_limit_error", "too_many_connections", {"Retry-After": "1"}),
    errors.ContextFullError: (503, "server_busy", "kv_cache_full", RETRY),
    errors.Busy: (503, "server_busy", "queue_full", RETRY),
    errors.Unauthorized: (401, "authentication_error", "invalid_api_key", {"WWW-Authenticate": "Bearer"}),
    errors.NotReady: (503, "server_not_ready", "model_not_ready", {"Retry-After": "1"}),
    # defined beside their code, outside llmstream.errors
    UnknownContextError: (400, "invalid_request_error", None, None),
    HubError: (500, "server_error", None, None),
}


def _error_types_in(module) -> set:
    return {v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, errors.LLMStreamError)}


def test_every_error_type_in_llmstream_errors_has_an_intended_status():
    assert _error_types_in(errors) <= set(EXPECTED), "add the new error type to EXPECTED"


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_status_of(cls):
    assert status_of(cls("why")) == EXPECTED[cls]


def test_a_gone_client_is_a_connection_reset_not_an_llmstream_error():
    assert issubclass(errors.ClientGone, ConnectionResetError)
    assert not issubclass(errors.ClientGone, errors.LLMStreamError)


@pytest.mark.parametrize("cls", [errors.ContextFullError, errors.Busy, errors.NotReady,
                                 errors.ContextLengthError, errors.ModelError,
                                 errors.RequestTimeout, errors.TooManyConnections],
                         ids=lambda c: c.__name__)
async def test_the_middleware_answers_with_status_of(aiohttp_client, cls):
    async def handler(request):
        raise cls("the message")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    r = await client.get("/")
    status, type_, code, headers = EXPECTED[cls]
    assert r.status == status
    assert await r.json() == {"error": {"message": "the message", "type": type_, "param": None,
                                        "code": code}}
    for k, v in (headers or {}).items():
        assert r.headers[k] == v


@pytest.mark.parametrize("module,not_loaded", [
    ("state", ["app", "routes", "openai", "errors", "streaming"]),
    ("streaming", ["app", "routes", "openai", "errors"]),
    ("errors", ["app", "routes", "openai", "streaming", "state"]),
    ("routes", ["app", "openai"]),
    ("openai", ["app", "routes"]),
])
def test_server_modules_import_one_way(module, not_loaded):
    code = (f"import sys, llmstream.server.{module}\n"
            f"print([m for m in {not_loaded!r} if 'llmstream.server.' + m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
