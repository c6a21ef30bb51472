"""Text generation over a loaded model: prompt -> tokens -> prefill -> sample/decode loop -> text
pieces, streamed as soon as they are certain (UTF-8 whole, never part of a stop string).

    llm = LLM.load("model.gguf")
    g = llm.generate("What is the capital of France?", context_type="general", params=SamplingParams())
    for piece in g:
        print(piece, end="", flush=True)
    print(g.stats)

One LLM owns one KV cache, so one generation runs at a time (a lock serialises them). Consecutive
generations reuse the cached prefix they share (a repeated context prompt is not evaluated twice);
results are identical to a fresh evaluation because every row of every kernel is computed alone.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .engine import Model
from .gguf import GGUFFile
from .errors import ContextLengthError, RequestError, TokenizerError
from .prompts import format_messages, format_prompt, get_context, load_contexts
from .sampling import Sampler, SamplingParams
from .stops import StopMatcher
from .tokenizer import StreamDecoder, Tokenizer


@dataclass(frozen=True)
class GenerationStats:
    finish_reason: str        # "stop" (EOS or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    prompt_tok_s: float       # prompt tokens evaluated per second (cached prefix excluded)
    gen_tok_s: float          # generated tokens per second
    truncated_tokens: int = 0  # prompt tokens dropped from the left to fit the context
    cached_tokens: int = 0    # prompt tokens reused from the previous generation's cache


class Generation:
    """Iterate for the text pieces; `stats` is set once the iteration ends (or is closed)."""

    def __init__(self, llm: "LLM", ids: list[int], params: SamplingParams, max_new: int,
                 cancel: threading.Event | None, truncated: int):
        self.llm, self.ids, self.params, self.max_new = llm, ids, params, max_new
        self.cancel, self.truncated = cancel, truncated
        self.stats: GenerationStats | None = None
        self.tokens: list[int] = []
        self._it = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._it

    def __next__(self) -> str:
        return next(self._it)

    def close(self):
        self._it.close()

    def text(self) -> str:
        """Run to the end and return the whole answer."""
        return "".join(self)

    def _run(self) -> Iterator[str]:
        llm, p = self.llm, self.params
        model, tok = llm.model, llm.tokenizer
        sampler = Sampler(p, model.n_vocab)
        decoder = StreamDecoder(tok, self.ids)
        stops = StopMatcher(p.stop)
        reason, n_gen, cached = "length", 0, 0
        t_prompt = t_gen = 0.0
        with llm._lock:
            try:
                t0 = time.perf_counter()
                cached = llm._reuse_prefix(self.ids)
                logits = model.prefill(self.ids[cached:])
                t_prompt = time.perf_counter() - t0
                recent = list(self.ids[-p.repeat_last_n:]) if p.repeat_last_n else []
                t1 = time.perf_counter()
                while True:
                    if self.cancel is not None and self.cancel.is_set():
                        reason = "cancelled"
                        break
                    token = sampler.sample(logits, recent)
                    if tok.is_eos(token):
                        reason = "stop"
                        break
                    n_gen += 1
                    self.tokens.append(token)
                    if p.repeat_last_n:
                        recent.append(token)
                        if len(recent) > p.repeat_last_n:
                            del recent[0]
                    emit, stopped = stops.push(decoder.push(token))
                    if emit:
                        yield emit
                    if stopped:
                        reason = "stop"
                        break
                    if n_gen >= self.max_new or model.cache.n_past >= model.n_ctx:
                        reason = "length"
                        break
                    logits = model.decode_step(token)
                t_gen = time.perf_counter() - t1
                if reason != "cancelled" and not stops.stopped:
                    emit, stopped = stops.push(decoder.flush())
                    rest = emit + ("" if stopped else stops.flush())
                    reason = "stop" if stopped else reason
                    if rest:
                        yield rest
            finally:
                # what the cache now holds, for the next generation's prefix reuse
                llm._cached = (self.ids + self.tokens)[:model.cache.n_past]
                n_prompt = len(self.ids) - cached
                self.stats = GenerationStats(
                    finish_reason=reason, prompt_tokens=len(self.ids), completion_tokens=n_gen,
                    prompt_tok_s=n_prompt / t_prompt if t_prompt > 0 else 0.0,
                    gen_tok_s=n_gen / t_gen if t_gen > 0 and n_gen else 0.0,
                    truncated_tokens=self.truncated, cached_tokens=cached)


class LLM:
    """A model, its tokenizer and its prompt formats."""

    def __init__(self, model: Model, tokenizer: Tokenizer, contexts: Mapping[str, str] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.contexts = dict(contexts if contexts is not None else load_contexts())
        self.family = model.config.arch
        self.chat_template = tokenizer.chat_template
        self.model_name = model.config.name or Path(model.gguf.path).stem
        self._lock = threading.Lock()
        self._cached: list[int] = []

    @classmethod
    def load(cls, model_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
             config_path: str | None = None, ctx_size: int | None = None,
             threads: int | None = None, contexts: Mapping[str, str] | None = None) -> "LLM":
        """Open a GGUF model; the tokenizer comes from tokenizer_path, else a tokenizer.json beside
        the model, else the vocabulary embedded in the GGUF."""
        model = Model(model_path, config_path=config_path, ctx_size=ctx_size, threads=threads)
        try:
            return cls(model, load_tokenizer(model.gguf, tokenizer_path), contexts)
        except BaseException:
            model.close()
            raise

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def close(self):
        self.model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- prompts ---------------------------------------------------------------------------------
    def _special(self) -> tuple[str, str]:
        tok = self.tokenizer
        bos = tok.id_to_piece(tok.bos_id) if tok.bos_id is not None and not tok.add_bos else ""
        eos = tok.id_to_piece(tok.eos_id) if tok.eos_id is not None else ""
        return bos, eos

    def format_query(self, query: str, context_type: str | None = None) -> str:
        """The prompt for a plain question with a context prompt (what /token_stream sends)."""
        if not isinstance(query, str):
            raise RequestError("query must be a string")
        context = get_context(context_type or "general", self.contexts)
        bos, eos = self._special()
        return format_prompt(self.family, query, context, self.chat_template, bos, eos)

    def format_chat(self, messages: Sequence[Mapping[str, Any]], context_type: str | None = None) -> str:
        """The prompt for OpenAI-style messages; the context prompt `context_type` (default
        general) is the system prompt when the messages carry none."""
        context = get_context(context_type or "general", self.contexts)
        bos, eos = self._special()
        return format_messages(self.family, messages, self.chat_template, bos, eos, context=context)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    # -- generation ------------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, *, messages: Sequence[Mapping] | None = None,
                 tokens: Sequence[int] | None = None, raw: bool = False, context_type: str | None = None,
                 params: SamplingParams | None = None, cancel: threading.Event | None = None,
                 truncate: bool = False, clamp_max_tokens: bool = False) -> Generation:
        """Validate and tokenize now (errors raise here, before any token); iterate the result
        for text pieces. `raw` sends prompt verbatim (no context/format). When prompt tokens +
        max_tokens exceed the context: ContextLengthError, unless `clamp_max_tokens` (max_tokens
        shrinks to what fits) or `truncate` (the prompt loses tokens from the left)."""
        params = params or SamplingParams()
        if sum(x is not None for x in (prompt, messages, tokens)) != 1:
            raise RequestError("give exactly one of a prompt, chat messages or prompt tokens")
        if tokens is not None:
            ids = [int(t) for t in tokens]
            bad = [t for t in ids if not 0 <= t < self.model.n_vocab]
            if bad:
                raise RequestError(f"token id {bad[0]} is outside the vocabulary "
                                   f"(0..{self.model.n_vocab - 1})")
        else:
            if messages is not None:
                text = self.format_chat(messages, context_type)
            elif not isinstance(prompt, str):
                raise RequestError("the prompt must be a string")
            else:
                text = prompt if raw else self.format_query(prompt, context_type)
            ids = self.encode(text)
        if not ids:
            raise RequestError("the prompt is empty")
        n_ctx, max_new, truncated = self.n_ctx, params.max_tokens, 0
        excess = len(ids) + max_new - n_ctx
        if excess > 0:
            if clamp_max_tokens and len(ids) < n_ctx:
                max_new = n_ctx - len(ids)
            elif truncate:
                keep = max(1, min(len(ids), n_ctx - max_new))
                truncated = len(ids) - keep
                bos = [ids[0]] if self.tokenizer.add_bos and ids[0] == self.tokenizer.bos_id else []
                ids = bos + ids[len(ids) - keep + len(bos):]
                max_new = min(max_new, n_ctx - len(ids))
            else:
                raise ContextLengthError(
                    f"the prompt is {len(ids)} tokens and max_tokens is {max_new}: together "
                    f"{len(ids) + max_new}, which exceeds the context of {n_ctx} tokens by {excess}; "
                    "shorten the prompt, lower max_tokens or allow truncation")
        return Generation(self, ids, params, max_new, cancel, truncated)

    def _reuse_prefix(self, ids: list[int]) -> int:
        """Keep the cached tokens this prompt starts with (at least one token is evaluated
        anew, for its logits); returns how many are reused."""
        cached, n = self._cached, 0
        limit = min(len(cached), len(ids) - 1)
        while n < limit and cached[n] == ids[n]:
            n += 1
        self.model.cache.n_past = n
        return n


def load_tokenizer(gf: GGUFFile, tokenizer_path: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer for a GGUF file: tokenizer_path, else a tokenizer.json beside the file, else
    the vocabulary embedded in the file."""
    meta = gf.metadata
    if tokenizer_path is None:
        beside = Path(gf.path).with_name("tokenizer.json")
        if beside.exists():
            tokenizer_path = beside
    if tokenizer_path is not None:
        return Tokenizer.from_file(tokenizer_path, meta or None)
    if "tokenizer.ggml.model" not in meta:
        raise TokenizerError(
            f"{gf.path} carries no vocabulary (candle tensor-tools files have none); "
            "give the model's tokenizer.json with --tokenizer (or TOKENIZER_PATH=), or put it "
            "beside the model file")
    return Tokenizer.from_gguf_metadata(meta)
