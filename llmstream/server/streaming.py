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
               head: bytes = b"", tail=lambda gen: b"", cut=None) -> None:
    """Run a prepared generation and write `head`, then `encode(piece)` for each text piece the
    moment it exists, then `tail(gen)` (after which `gen.stats` is set). The response is prepared
    at the first piece, so an error before it (queue full) still becomes a JSON error response.
    A client that goes away cancels the generation.

    An answer cut short after it started — the generation failed, or the server cancelled it
    (shutdown) — must not look complete: `cut(reason, message)` ("error" or "cancelled") writes
    the endpoint's own end of an interrupted answer (SSE: a finish_reason and an error event); with
    no `cut`, the connection is dropped without the chunked body's last chunk, so a client sees an
    incomplete transfer (curl exits 18), and the log says why.

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
        try:
            async with aclosing(state.stream(request, gen, cancel)) as pieces:
                async for piece in pieces:
                    await start()
                    await resp.write(encode(piece))
        except ConnectionResetError:
            raise
        except Exception as e:
            if not resp.prepared:
                raise
            log.exception("generation failed mid-stream")
            cancel.set()
            return await _cut_short(request, resp, cut, "error", f"generation failed: {e}")
        await start()
        if gen.stats is not None and gen.stats.finish_reason == "cancelled":
            log.warning("an answer was cut short: the server cancelled it (shutting down)")
            return await _cut_short(request, resp, cut, "cancelled",
                                    "the server stopped this answer before it was complete "
                                    "(it is shutting down); ask again")
        if end := tail(gen):
            await resp.write(end)
        await resp.write_eof()
    except ConnectionResetError:
        cancel.set()


async def _cut_short(request: web.Request, resp: web.StreamResponse, cut, reason: str,
                     message: str) -> None:
    try:
        if cut is not None:
            await resp.write(cut(reason, message))
            await resp.write_eof()
            return
        resp.force_close()
        if request.transport is not None:
            request.transport.abort()       # no last chunk: the transfer is visibly incomplete
    except ConnectionResetError:
        pass


async def collect(request: web.Request, gen, cancel) -> str:
    """Run a prepared generation to the end and return its whole text (non-streamed answers)."""
    async with aclosing(request.app[STATE].stream(request, gen, cancel)) as pieces:
        return "".join([piece async for piece in pieces])
