"""OpenAI-compatible endpoints: `POST /v1/chat/completions`, `POST /v1/completions`,
`GET /v1/models`. With `"stream": true` the answer comes as server-sent events (`data: {chunk}`,
the first chat delta carrying the role, the last choice chunk the finish_reason, an optional usage
chunk with `stream_options.include_usage`, then `data: [DONE]`); otherwise as one JSON object.

Extensions beyond OpenAI's fields: `top_k`, `min_p`, `repeat_penalty`, `repeat_last_n` (sampling),
`context_type` (the context prompt: the system prompt of a chat without one; for /v1/completions
it formats the prompt as /token_stream does instead of sending it verbatim), and a `timings`
object (`prompt_tok_s`, `gen_tok_s`) beside `usage`.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Mapping

from aiohttp import web

from ..errors import NotReady, RequestError
from .errors import error_body, read_json
from .state import SETTINGS, STATE
from .streaming import collect, context_type_of, pump, sampling_params

RENAME = {"max_completion_tokens": "max_tokens"}
EXTENSIONS = {"top_k", "min_p", "repeat_penalty", "repeat_last_n", "context_type"}
COMMON = ({"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
           "top_p", "stop", "seed", "n", "presence_penalty", "frequency_penalty", "logprobs",
           "logit_bias", "user"} | EXTENSIONS)
CHAT_KEYS = COMMON | {"messages", "top_logprobs", "response_format", "tools", "tool_choice",
                      "functions", "function_call", "parallel_tool_calls", "metadata", "store"}
COMPLETION_KEYS = COMMON | {"prompt", "suffix", "echo", "best_of"}


def _check_supported(body: Mapping[str, Any], allowed: set) -> None:
    """Reject fields we do not know, and known ones whose requested behaviour we cannot give
    (silently ignoring them would return something other than what was asked for)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(f"unrecognized request argument{'s' if len(unknown) > 1 else ''}: "
                           f"{', '.join(unknown)}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string")
    if body.get("n") not in (None, 1):
        raise RequestError("only n = 1 is supported: send one request per completion")
    if body.get("best_of") not in (None, 1):
        raise RequestError("only best_of = 1 is supported")
    for key in ("presence_penalty", "frequency_penalty"):
        v = body.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise RequestError(f"{key} must be a number")
        if v:
            raise RequestError(f"{key} is not supported; use repeat_penalty (e.g. 1.1) instead")
    if body.get("logprobs") not in (None, False, 0):
        raise RequestError("logprobs are not supported")
    if body.get("logit_bias"):
        raise RequestError("logit_bias is not supported")
    if body.get("echo"):
        raise RequestError("echo is not supported")
    if body.get("suffix"):
        raise RequestError("suffix (insertion) is not supported")
    for key in ("tools", "functions"):
        if body.get(key):
            raise RequestError(f"{key} (function calling) is not supported")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, Mapping) and rf.get("type") == "text"):
        raise RequestError('only response_format {"type": "text"} is supported')
    if not isinstance(body.get("stream", False), bool):
        raise RequestError("stream must be true or false")
    so = body.get("stream_options")
    if so is not None and not (isinstance(so, Mapping)
                               and isinstance(so.get("include_usage", False), bool)):
        raise RequestError('stream_options must be an object like {"include_usage": true}')


def _usage(gen) -> dict:
    s = gen.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens}


def _timings(gen) -> dict:
    s = gen.stats
    return {"prompt_tok_s": round(s.prompt_tok_s, 2), "gen_tok_s": round(s.gen_tok_s, 2),
            "cached_tokens": s.cached_tokens}


def _finish(gen) -> str:
    r = gen.stats.finish_reason
    return r if r in ("length", "cancelled") else "stop"


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _complete(request: web.Request, chat: bool) -> web.StreamResponse:
    state, settings = request.app[STATE], request.app[SETTINGS]
    body = await read_json(request, settings.body_timeout)
    _check_supported(body, CHAT_KEYS if chat else COMPLETION_KEYS)
    params, explicit_max = sampling_params(body, settings.defaults, RENAME)
    context_type = context_type_of(body, settings.context_type)
    if chat:
        messages = body.get("messages")
        if messages is None:
            raise RequestError('the request needs "messages": [{"role": "user", "content": "..."}]')
        kwargs = dict(messages=messages, context_type=context_type)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if prompt is None:
            raise RequestError('the request needs "prompt": "..."')
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string (one prompt per request)")
        # verbatim, as OpenAI does, unless a context type asks for the service's prompt format
        kwargs = dict(prompt=prompt, raw="context_type" not in body, context_type=context_type)
    gen, cancel = await state.prepare(request, params=params, clamp_max_tokens=not explicit_max,
                                      **kwargs)

    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created, model = int(time.time()), state.model_name
    obj = "chat.completion" if chat else "text_completion"
    if not body.get("stream"):
        text = await collect(request, gen, cancel)
        return _whole(rid, created, model, obj, chat, text, gen)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": created, "model": model}

    def chunk(content: str | None, finish: str | None, role: bool = False) -> bytes:
        if chat:
            delta = ({"role": "assistant", "content": ""} if role else
                     {} if content is None else {"content": content})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    def tail(g) -> bytes:
        out = chunk(None, _finish(g))
        if include_usage:
            out += _sse({**base, "choices": [], "usage": _usage(g), "timings": _timings(g)})
        return out + b"data: [DONE]\n\n"

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    def cut(reason: str, message: str) -> bytes:    # an interrupted answer says so
        return (chunk(None, reason) + _sse(error_body(message, "server_error"))
                + b"data: [DONE]\n\n")

    await pump(request, resp, gen, cancel, lambda p: chunk(p, None),
               head=chunk(None, None, role=True) if chat else b"", tail=tail, cut=cut)
    return resp


def _whole(rid, created, model, obj, chat, text, gen) -> web.StreamResponse:
    if gen.stats is None:  # the client went away: nobody is listening
        return web.Response(status=499)
    if gen.stats.finish_reason == "cancelled":   # the server stopped it: not an answer
        raise NotReady("the server stopped this answer before it was complete (it is shutting "
                       "down); ask again")
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": _finish(gen)}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": _finish(gen)}
    return web.json_response({"id": rid, "object": obj, "created": created, "model": model,
                              "choices": [choice], "usage": _usage(gen), "timings": _timings(gen)})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=False)


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.ready_llm()
    return web.json_response({"object": "list", "data": [
        {"id": state.model_name, "object": "model", "created": int(state.loaded_at),
         "owned_by": "llmstream"}]})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
