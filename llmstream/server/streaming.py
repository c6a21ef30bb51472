"""What both APIs (routes.py, openai.py) share between a request and its answer: reading the
generation fields of a body (`sampling_params`, `context_type_of`), and running a prepared
generation into a streamed response (`pump`) or into one string (`collect`). Each piece is
written to the response the moment it exists; a client that goes away cancels the generation."""
from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any, Mapping

from aiohttp import HttpVersion11, web

from ..errors import RequestError
from ..sampling import SamplingParams
from .state import STATE

log = logging.getLogger("llmstream.server")


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


async def pump(request: web.Request, resp: web.StreamResponse, gen, cancel, encode,
               head: bytes = b"", tail=lambda gen: b"", on_error=lambda e: b"") -> None:
    """Run a prepared generation and write `head`, then `encode(piece)` for each text piece the
    moment it exists, then `tail(gen)` (after which `gen.stats` is set). The response is prepared
    at the first piece, so an error before it (queue full) still becomes a JSON error response;
    an error after it is logged and `on_error(e)` is written. A client that goes away cancels
    the generation; the model is free again when this returns.

    HTTP/1.1 gets a chunked body; HTTP/1.0 has no chunked encoding, so there the body is streamed
    as is and ends when the server closes the connection (RFC 1945 7.2.2; aiohttp does so for a
    body without a length)."""
    state = request.app[STATE]
    if request.version >= HttpVersion11:
        resp.enable_chunked_encoding()
    else:
        resp.force_close()

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
