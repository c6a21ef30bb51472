"""Text generation over a loaded model: prompt -> tokens -> the scheduler -> text pieces, streamed
as soon as they are certain (UTF-8 whole, never part of a stop string).

    llm = LLM.load("model.gguf")
    g = llm.generate("What is the capital of France?", context_type="general", params=SamplingParams())
    for piece in g:
        print(piece, end="", flush=True)
    print(g.stats)

One LLM owns one model and one scheduler (scheduler.py): a thread that advances every running
generation in one batched forward over a shared, paged KV pool. Any number of generations may be
iterated at once, from any threads; requests beyond `parallel` wait for a slot. A new prompt reuses
the longest prefix it shares with cached sequences (the context prompts are evaluated once, at
`prewarm`); results are identical to a fresh evaluation, alone or beside others, because every row
of every kernel is computed alone.
"""
from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .engine import DEFAULT_MAX_CTX, Model, Session
from .errors import ContextLengthError, ModelError, RequestError, TokenizerError
from .gguf import GGUFFile
from .prompts import format_messages, format_prompt, get_context, load_contexts, normalize_messages
from .sampling import SamplingParams
from .scheduler import GenerationStats, Request, Scheduler
from .tokenizer import Tokenizer

__all__ = ["LLM", "Generation", "GenerationStats", "load_tokenizer"]


class Generation:
    """A prepared request. Iterate it for the text pieces (it is submitted to the scheduler at the
    first `next`), or `start(sink)` it to receive ("piece", text), ("done", GenerationStats) and
    ("error", exception) records on the scheduler thread. `stats` is set once it has ended;
    `tokens` are the generated token ids."""

    def __init__(self, llm: "LLM", ids: list[int], params: SamplingParams, max_new: int,
                 cancel: threading.Event | None, truncated: int, delay: float = 0.0):
        self.llm, self.ids, self.params, self.max_new = llm, ids, params, max_new
        self.cancel = cancel if cancel is not None else threading.Event()
        self.truncated = truncated
        self.stats: GenerationStats | None = None
        self.error: BaseException | None = None
        self._req = Request(ids=ids, params=params, max_new=max_new, sink=self._record,
                            cancel=self.cancel, tokenizer=llm.tokenizer, truncated=truncated,
                            delay=delay)
        self._sink: Callable[[str, Any], None] | None = None
        self._it: Iterator[str] | None = None

    @property
    def tokens(self) -> list[int]:
        return self._req.tokens

    def _record(self, kind: str, value):
        if kind == "done":
            self.stats = value
        elif kind == "error":
            self.error = value
        self._sink(kind, value)

    def start(self, sink: Callable[[str, Any], None]) -> "Generation":
        """Submit to the scheduler; sink(kind, value) is called on the scheduler thread."""
        if self._sink is not None:
            raise RuntimeError("a generation runs once")
        self._sink = sink
        self.llm.scheduler.submit(self._req)
        return self

    def __iter__(self) -> Iterator[str]:
        if self._it is None:
            self._it = self._pieces()
        return self._it

    def __next__(self) -> str:
        return next(iter(self))

    def close(self):
        """Stop early: the scheduler drops the request at its next step."""
        if self._it is not None:
            self._it.close()
        else:
            self.cancel.set()

    def text(self) -> str:
        """Run to the end and return the whole answer."""
        return "".join(self)

    def _pieces(self) -> Iterator[str]:
        q: queue.SimpleQueue = queue.SimpleQueue()
        self.start(lambda kind, value: q.put((kind, value)))
        try:
            while True:
                kind, value = q.get()
                if kind == "piece":
                    yield value
                elif kind == "done":
                    return
                else:
                    raise value
        finally:
            if self.stats is None and self.error is None:
                self.cancel.set()
                while True:     # the scheduler answers a cancelled request at its next step
                    kind, _ = q.get()
                    if kind != "piece":
                        break


class LLM:
    """A model, its tokenizer, its prompt formats and the scheduler that runs its generations.

    parallel: sequences decoded together; kv_tokens: the KV pool all of them share (default 4096
    tokens); one sequence holds at most the model's trained context (and the pool)."""

    def __init__(self, model: Model, tokenizer: Tokenizer, contexts: Mapping[str, str] | None = None,
                 parallel: int = 4, kv_tokens: int | None = None, prefix_cache: bool = True):
        if tokenizer.vocab_size > model.n_vocab:
            raise ModelError(
                f"{model.gguf.path}: the vocabulary has {tokenizer.vocab_size} tokens but the "
                f"model's embedding only {model.n_vocab} rows: the tokenizer does not belong to "
                "this model (give the model's own tokenizer.json, or none to use the file's)")
        self.model, self.tokenizer = model, tokenizer
        self.contexts = dict(contexts if contexts is not None else load_contexts())
        self.family = model.config.arch
        self.chat_template = tokenizer.chat_template
        self.model_name = model.config.name or Path(model.gguf.path).stem
        self.scheduler = Scheduler(model, n_tokens=kv_tokens or max(model.n_ctx, DEFAULT_MAX_CTX),
                                   parallel=parallel, prefix_cache=prefix_cache,
                                   n_ctx=min(model.n_ctx, model.config.n_ctx_train or model.n_ctx))

    @classmethod
    def load(cls, model_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
             config_path: str | None = None, ctx_size: int | None = None,
             threads: int | None = None, contexts: Mapping[str, str] | None = None,
             parallel: int = 4, prefix_cache: bool = True, progress=None) -> "LLM":
        """Open a GGUF model; the tokenizer comes from tokenizer_path, else a tokenizer.json beside
        the model, else the vocabulary embedded in the GGUF. ctx_size: the KV pool's tokens.
        progress(done, total): bytes of the file read so far (it is read once at load)."""
        model = Model(model_path, config_path=config_path, ctx_size=ctx_size, threads=threads,
                      n_logits=max(16, parallel))
        try:
            model.gguf.page_in(progress)
            check_numbers(model)
            return cls(model, load_tokenizer(model.gguf, tokenizer_path), contexts,
                       parallel=parallel, kv_tokens=ctx_size, prefix_cache=prefix_cache)
        except BaseException:
            model.close()
            raise

    @property
    def n_ctx(self) -> int:
        """The most tokens (prompt + answer) one sequence may hold."""
        return self.scheduler.n_ctx

    def close(self):
        self.scheduler.close()
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
        """The prompt for a plain question with a context prompt (what /token_stream sends). Special
        token texts in the question and context are marked as text (Tokenizer.escape_special)."""
        if not isinstance(query, str):
            raise RequestError("query must be a string")
        context = get_context(context_type or "general", self.contexts)
        bos, eos = self._special()
        esc = self.tokenizer.escape_special
        return format_prompt(self.family, esc(query), esc(context), self.chat_template, bos, eos)

    def format_chat(self, messages: Sequence[Mapping[str, Any]], context_type: str | None = None) -> str:
        """The prompt for OpenAI-style messages; the context prompt `context_type` (default
        general) is the system prompt when the messages carry none. Special token texts in the
        messages are marked as text (Tokenizer.escape_special)."""
        context = get_context(context_type or "general", self.contexts)
        bos, eos = self._special()
        esc = self.tokenizer.escape_special
        messages = [dict(m, content=esc(m["content"])) for m in normalize_messages(messages)]
        return format_messages(self.family, messages, self.chat_template, bos, eos, context=esc(context))

    def encode(self, text: str, raw: bool = False) -> list[int]:
        """Token ids of a prompt from format_query/format_chat: special token texts the user typed stay
        text, those of the prompt format are control tokens. raw: text of the caller's own (no marks),
        every special token text in it a control token."""
        return self.tokenizer.encode(text, escaped=not raw)

    # -- generation ------------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, *, messages: Sequence[Mapping] | None = None,
                 tokens: Sequence[int] | None = None, raw: bool = False, context_type: str | None = None,
                 params: SamplingParams | None = None, cancel: threading.Event | None = None,
                 truncate: bool = False, clamp_max_tokens: bool = False,
                 delay: float = 0.0) -> Generation:
        """Validate and tokenize now (errors raise here, before any token); iterate the result
        for text pieces. `raw` sends prompt verbatim (no context/format). When prompt tokens +
        max_tokens exceed the context: ContextLengthError, unless `clamp_max_tokens` (max_tokens
        shrinks to what fits) or `truncate` (the prompt loses tokens from the left). `delay`:
        seconds to pause after each piece (demos, UI tests)."""
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
            ids = self.encode(text, raw=raw and messages is None)
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
        return Generation(self, ids, params, max_new, cancel, truncated, delay)

    # -- pre-warmed context prompts ---------------------------------------------------------
    def context_prefixes(self) -> dict[str, list[list[int]]]:
        """For every context type, the token prefixes its prompts start with whatever the question
        (the /token_stream format and the chat format): the longest common prefix of the prompts
        of a few different questions (tokenizers may merge across the boundary, so the formatted
        text before the question is not enough)."""
        probes = ("x", "Hello, world?", "1 + 1", "Écris un poème.")
        out = {}
        for name in self.contexts:
            prefixes = []
            for fmt in (lambda q: self.format_query(q, name),
                        lambda q: self.format_chat([{"role": "user", "content": q}], name)):
                seqs = [self.encode(fmt(q)) for q in probes]
                n = 0
                while all(len(t) > n and t[n] == seqs[0][n] for t in seqs):
                    n += 1
                if n > 0 and seqs[0][:n] not in prefixes:
                    prefixes.append(seqs[0][:n])
            out[name] = prefixes
        return out

    def prewarm(self, context_types: Sequence[str] | None = None) -> int:
        """Evaluate the prefixes of the context prompts once and pin them in the KV pool, so every
        request of those context types starts from them; returns how many tokens were cached."""
        names = list(self.contexts) if context_types is None else list(context_types)
        prefixes = self.context_prefixes()
        done, total = [], 0
        for name in names:
            for ids in prefixes.get(name, []):
                if len(ids) + 1 > self.n_ctx:
                    continue
                ev = threading.Event()
                req = Request(ids=list(ids), params=SamplingParams(), max_new=0,
                              sink=lambda kind, value, ev=ev: ev.set() if kind != "piece" else None,
                              cancel=threading.Event(), warm=True)
                self.scheduler.submit(req)
                done.append(ev)
                total += len(ids)
        for ev in done:
            ev.wait()
        return total


def check_numbers(model: Model) -> None:
    """One forward pass of one token at load time: a model whose numbers are broken (NaN or
    infinite weights, a NaN RoPE base...) is refused now, with the reason, instead of answering
    every request with an error later."""
    logits = Session(model, n_ctx=16).prefill([min(1, model.n_vocab - 1)])
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).sum())
        raise ModelError(f"{model.gguf.path}: the model's first forward pass gives {bad} of "
                         f"{logits.size} logits that are NaN or infinite: its weights or "
                         "hyper-parameters are broken (a damaged or wrongly converted file); "
                         "use another copy of the model")


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
