"""Prompt building: context prompts, built-in per-family formats and sandboxed GGUF chat templates.

Context prompts
    ``config/prompt_config.toml`` holds ``context_<name> = "text"`` keys (see its header comment).
    :func:`load_contexts` reads it (path argument > ``$LLMSTREAM_PROMPT_CONFIG`` > the repository's
    file) and returns ``{"<name>": "text"}``; :func:`get_context` looks one up by name.

Built-in formats (used when the model has no usable chat template)
    phi-2           ``Context: {context}.\\nInstruct: {query}.\\nOutput:``
                    (the period is not doubled when the text already ends in ``. ! ? : ;``;
                    without a context the ``Context:`` line is left out)
    llama, mistral  ``[INST] {context}\\n\\n{query} [/INST]``
                    (without a context: ``[INST] {query} [/INST]``)

    Multi-turn chats (:func:`format_messages`):
    phi-2           ``Context: {system}.\\nInstruct: {u1}.\\nOutput: {a1}\\nInstruct: {u2}.\\nOutput:``
    llama, mistral  ``[INST] {system}\\n\\n{u1} [/INST] {a1}</s>[INST] {u2} [/INST]`` -- the system
                    prompt is folded into the first user turn; ``</s>`` is ``eos_token`` when given.

    Message and context texts are stripped of surrounding whitespace. The BOS token is *not* part of
    the text: the tokenizer adds it when encoding the prompt. ``bos_token`` defaults to "" and is
    prepended verbatim when given (only pass it for a tokenizer that does not add BOS itself, or the
    prompt gets two).

Chat templates
    When a GGUF carries ``tokenizer.chat_template``, pass it as ``chat_template``: it is rendered the way
    HF transformers does (jinja2 ``ImmutableSandboxedEnvironment``, ``trim_blocks``/``lstrip_blocks``,
    loop controls, ``messages``, ``add_generation_prompt=True``, ``bos_token``, ``eos_token``,
    ``raise_exception()``, a ``tojson`` filter and ``strftime_now()``). Any access to an unsafe
    attribute (``__class__``, ``__globals__`` ...) raises ``SecurityError`` instead of quietly rendering
    nothing. Many templates (Mistral-Instruct, Gemma) reject the ``system`` role via
    ``raise_exception``; such a template is rendered again with the system prompt folded into the
    first user message. A template that fails to parse, raises, reaches for Python internals, renders
    nothing or runs away (too much output or time) is not used: a warning is logged once per template
    and the built-in format is returned instead.

Message validation
    ``messages`` is a list of ``{"role": "system"|"user"|"assistant", "content": str}`` (content may
    also be a list of ``{"type": "text", "text": str}`` parts, joined with newlines; other keys are
    ignored). System messages must come first (several are joined by a blank line); consecutive
    messages of the same role are joined by a blank line; the conversation must start and end with
    a user message. Anything else raises :class:`RequestError`.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import ConfigError, RequestError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ENV_PROMPT_CONFIG", "DEFAULT_PROMPT_CONFIG", "FAMILIES", "Contexts", "UnknownContextError",
    "prompt_config_path", "load_contexts", "get_context", "normalize_family", "normalize_messages",
    "format_prompt", "format_messages",
]

log = logging.getLogger(__name__)

#: environment variable naming the prompt config file
ENV_PROMPT_CONFIG = "LLMSTREAM_PROMPT_CONFIG"
#: the repository's prompt config, located relative to the package
DEFAULT_PROMPT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "prompt_config.toml"
CONTEXT_PREFIX = "context_"
_CONTEXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

#: canonical family names
FAMILIES = ("phi-2", "llama", "mistral")
_FAMILY_ALIASES = {
    "phi-2": "phi-2", "phi2": "phi-2", "phi": "phi-2",
    "llama": "llama", "llama2": "llama", "llama-2": "llama",
    "mistral": "mistral",
}
ROLES = ("system", "user", "assistant")


# ============================================================================ context prompts

class Contexts(dict):
    """``{name: text}`` as loaded from ``source`` (a plain dict with the file path attached)."""

    def __init__(self, data: Mapping[str, str], source: Path | None = None):
        super().__init__(data)
        self.source = source


class UnknownContextError(ConfigError, RequestError):
    """The requested context type is not configured. Both a ConfigError (a server started with
    ``--context-type pirate``) and a RequestError (a request asking for it -> HTTP 400)."""


def prompt_config_path(path: str | os.PathLike | None = None) -> Path:
    """The prompt config file to use: ``path`` if given, else ``$LLMSTREAM_PROMPT_CONFIG`` if set and
    non-empty, else :data:`DEFAULT_PROMPT_CONFIG`."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_PROMPT_CONFIG, "").strip()
    return Path(env) if env else DEFAULT_PROMPT_CONFIG


def load_contexts(path: str | os.PathLike | None = None) -> Contexts:
    """Read the context prompts: ``{"general": "...", "sql": "...", ...}`` (names without the
    ``context_`` prefix). Raises :class:`ConfigError` naming the file and key on any problem."""
    p = prompt_config_path(path)
    how = (f"pass another file or set {ENV_PROMPT_CONFIG}; the format is described at the top of "
           f"{DEFAULT_PROMPT_CONFIG}")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"prompt config {p} does not exist: create it or {how}") from None
    except OSError as e:
        raise ConfigError(f"cannot read prompt config {p}: {e.strerror or e}; fix its permissions or {how}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"prompt config {p} is not UTF-8 text ({e}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"prompt config {p} is not valid TOML: {e}. Each context is one line like "
            f'context_general = "text" (quote the text; use \\" for a quote inside it)') from None
    out: dict[str, str] = {}
    for key, value in data.items():
        if not key.startswith(CONTEXT_PREFIX):
            raise ConfigError(
                f"prompt config {p}: unknown key {key!r}; context prompts must be top-level keys named "
                f"context_<name>, e.g. context_{_suggest_name(key)} = \"...\"")
        name = key[len(CONTEXT_PREFIX):]
        if not _CONTEXT_NAME.fullmatch(name):
            raise ConfigError(
                f"prompt config {p}: key {key!r} has an invalid context name {name!r}; use letters, "
                f"digits, '_' and '-' after 'context_'")
        if not isinstance(value, str):
            raise ConfigError(
                f"prompt config {p}: {key} must be a string, got a TOML {type(value).__name__}; "
                f'write it as {key} = "text"')
        if not value.strip():
            raise ConfigError(f"prompt config {p}: {key} is empty; give it some text or remove the key")
        out[name] = value
    if not out:
        raise ConfigError(f'prompt config {p} defines no contexts; add a line like context_general = "text"')
    return Contexts(out, p)


def _suggest_name(key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", key).strip("_-")
    return name or "name"


def get_context(name: str, contexts: Mapping[str, str] | None = None,
                path: str | os.PathLike | None = None) -> str:
    """The context prompt called ``name`` (``"sql"``; ``"context_sql"`` is accepted too).

    ``contexts`` defaults to :func:`load_contexts` ``(path)``. An unknown name raises
    :class:`UnknownContextError` listing the known ones and the file to add it to.
    """
    if contexts is None:
        contexts = load_contexts(path)
    if not isinstance(name, str):
        raise RequestError(f"context type must be a string, got {type(name).__name__}")
    key = name[len(CONTEXT_PREFIX):] if name.startswith(CONTEXT_PREFIX) else name
    try:
        return contexts[key]
    except KeyError:
        source = getattr(contexts, "source", None) or prompt_config_path(path)
        known = ", ".join(sorted(contexts)) or "none"
        # the file's name only: this message reaches HTTP clients, the server's paths stay private
        raise UnknownContextError(
            f"unknown context type {name!r} (known: {known}); the server's operator can add "
            f"context_{key} = \"...\" to its {Path(source).name}") from None


# ============================================================================ messages

def normalize_family(family: str) -> str:
    """Canonical family name (``phi-2``, ``llama`` or ``mistral``); accepts ``phi2``/``phi``,
    ``llama2``/``llama-2``, any case. Unknown -> :class:`ConfigError`."""
    fam = _FAMILY_ALIASES.get(family.strip().lower()) if isinstance(family, str) else None
    if fam is None:
        raise ConfigError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return fam


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Validate OpenAI-style messages; return new ``{"role", "content": str}`` dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise RequestError("messages must be a list of {\"role\", \"content\"} objects")
    if not messages:
        raise RequestError("messages must not be empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}")
        out.append({"role": role, "content": _content_text(m.get("content"), i)})
    return out


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(
                    f"messages[{i}].content[{j}] must be a text part {{\"type\": \"text\", \"text\": \"...\"}}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError(
        f"messages[{i}].content must be a string or a list of text parts, got "
        f"{'null' if content is None else type(content).__name__}")


def _structure(msgs: list[dict[str, str]], context: str | None) -> tuple[str | None, list[list[str]]]:
    """Split validated messages into (system prompt or None, [[role, text], ...] alternating turns
    starting and ending with "user")."""
    i = 0
    while i < len(msgs) and msgs[i]["role"] == "system":
        i += 1
    system = "\n\n".join(m["content"] for m in msgs[:i]) if i else context
    turns: list[list[str]] = []
    for j in range(i, len(msgs)):
        role, text = msgs[j]["role"], msgs[j]["content"]
        if role == "system":
            raise RequestError(f"messages[{j}]: system messages must come before all user and assistant messages")
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[0][0] != "user":
        raise RequestError("the conversation must start with a user message (after any system messages)")
    if turns[-1][0] != "user":
        raise RequestError("the last message must be a user message")
    return (system if system and system.strip() else None), turns


# ============================================================================ public formatting

def format_prompt(family: str, query: str, context: str | None, chat_template: str | None = None,
                  bos_token: str = "", eos_token: str = "") -> str:
    """Prompt text for one query with an optional context (system) prompt; see the module docstring."""
    if not isinstance(query, str):
        raise RequestError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise RequestError("query must not be empty")
    if context is not None and not isinstance(context, str):
        raise RequestError(f"context must be a string, got {type(context).__name__}")
    messages = [{"role": "system", "content": context}] if context and context.strip() else []
    messages.append({"role": "user", "content": query})
    return format_messages(family, messages, chat_template, bos_token, eos_token)


def format_messages(family: str, messages: Sequence[Mapping[str, Any]], chat_template: str | None = None,
                    bos_token: str = "", eos_token: str = "", *, context: str | None = None) -> str:
    """Prompt text for an OpenAI-style chat. ``context`` is used as the system prompt when the
    messages contain no system message. See the module docstring for formats and rules."""
    fam = normalize_family(family)
    system, turns = _structure(normalize_messages(messages), context)
    if chat_template:
        text = _render_chat_template(chat_template, system, turns, bos_token, eos_token, fam)
        if text is not None:
            return text
    if fam == "phi-2":
        return bos_token + _phi2(system, turns)
    return bos_token + _inst(system, turns, eos_token or "</s>")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?", ":", ";")) else text + "."


def _phi2(system: str | None, turns: list[list[str]]) -> str:
    lines = [f"Context: {_sentence(system)}"] if system else []
    for role, text in turns:
        if role == "user":
            lines.append(f"Instruct: {_sentence(text)}")
        else:
            lines.append(f"Output: {text.strip()}")
    lines.append("Output:")
    return "\n".join(lines)


def _inst(system: str | None, turns: list[list[str]], eos: str) -> str:
    out = []
    for k, (role, text) in enumerate(turns):
        text = text.strip()
        if role == "user":
            if k == 0 and system:
                text = f"{system.strip()}\n\n{text}"
            out.append(f"[INST] {text} [/INST]")
        else:
            out.append(f" {text}{eos}")
    return "".join(out)


# ============================================================================ chat templates

class _TemplateRaised(jinja2.TemplateError):
    """The template called raise_exception()."""


class _RenderLimit(Exception):
    """The template produced too much output or took too long."""


def _raise_exception(message: Any = "") -> None:
    raise _TemplateRaised(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return _dt.datetime.now().strftime(fmt)


#: no value a template computes (a string, a list, a number's digits) may exceed this size
_MAX_VALUE_SIZE = 1_000_000


def _size(v: Any) -> int:
    if isinstance(v, (str, list, tuple, dict)):
        return len(v)
    if isinstance(v, int):
        return v.bit_length() // 3        # ~ decimal digits
    return 1


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` into a size-checked join (jinja2's own is a plain str join)."""

    def visit_Concat(self, node: Any, frame: Any) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, bounded: no constant folding at compile time (`'x' * 10**9`
    would be computed by the compiler), and `*`, `**`, `+` and `~` refuse results larger than
    _MAX_VALUE_SIZE before computing them. Time is bounded while rendering (_render)."""
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+"])

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # The stock sandbox returns an Undefined that prints as "" -- fail loudly instead, so a
        # template probing Python internals is rejected rather than half-rendered.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(left) > 1 and right * max(math.log2(abs(left)), 1) > 4 * _MAX_VALUE_SIZE:
                raise _RenderLimit(f"{left} ** {right} is too large")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                        and _size(seq) * n > _MAX_VALUE_SIZE:
                    raise _RenderLimit(f"a value of {_size(seq)} x {n} items is too large")
        elif operator == "+" and _size(left) + _size(right) > _MAX_VALUE_SIZE:
            raise _RenderLimit("a sum of values is too large")
        return super().call_binop(context, operator, left, right)

    def bounded_concat(self, parts: Any) -> str:
        strs = [str(p) for p in parts]
        if sum(map(len, strs)) > _MAX_VALUE_SIZE:
            raise _RenderLimit(f"a joined string exceeds {_MAX_VALUE_SIZE} characters")
        return "".join(strs)


_ENV = _SandboxEnvironment(trim_blocks=True, lstrip_blocks=True, optimized=False,
                           extensions=["jinja2.ext.loopcontrols"])
_ENV.filters["tojson"] = _tojson
_ENV.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)

#: rendering stops once output exceeds this many characters beyond twice the input size ...
_MAX_EXTRA_CHARS = 200_000
#: ... or once it has taken this many seconds (checked whenever the template emits text)
_MAX_RENDER_SECONDS = 2.0

_warned: set[str] = set()
_warned_lock = threading.Lock()


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> tuple[jinja2.Template | None, str | None]:
    try:
        return _ENV.from_string(source), None
    except Exception as e:  # TemplateSyntaxError and anything else the parser may raise
        return None, f"{type(e).__name__}: {e}"


def _template_id(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _warn_once(source: str, reason: str, family: str) -> None:
    tid = _template_id(source)
    with _warned_lock:
        if tid in _warned:
            return
        _warned.add(tid)
    log.warning("chat template %s is not used (%s); falling back to the built-in %s prompt format",
                tid, reason, family)


def _render(tmpl: jinja2.Template, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    """Render, bounded in output size and in time. The time is checked inside the template's own
    code (a trace function on this thread, every 256 lines it runs), so loops that output nothing
    are bounded too; values are bounded in size by the environment."""
    limit = 2 * sum(len(m["content"]) for m in messages) + _MAX_EXTRA_CHARS
    deadline = time.monotonic() + _MAX_RENDER_SECONDS
    lines = 0

    def local(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
            if not lines & 255 and time.monotonic() > deadline:
                raise _RenderLimit(f"rendering takes longer than {_MAX_RENDER_SECONDS} s")
        return local

    def tracer(frame, event, arg):    # trace only the template's compiled code
        return local if frame.f_code.co_filename == "<template>" else None

    chunks, size = [], 0
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        for chunk in tmpl.generate(messages=messages, add_generation_prompt=True, bos_token=bos,
                                   eos_token=eos):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _RenderLimit(f"output exceeds {limit} characters")
            if time.monotonic() > deadline:
                raise _RenderLimit(f"rendering takes longer than {_MAX_RENDER_SECONDS} s")
    finally:
        sys.settrace(previous)
    return "".join(chunks)


def _render_chat_template(source: str, system: str | None, turns: list[list[str]],
                          bos: str, eos: str, family: str) -> str | None:
    """Rendered template text, or None (after a one-time warning) when it cannot be used."""
    if not isinstance(source, str):
        raise TypeError(f"chat_template must be a string, got {type(source).__name__}")
    tmpl, error = _compile(source)
    if tmpl is None:
        _warn_once(source, f"it does not parse: {error}", family)
        return None
    msgs = [{"role": r, "content": t} for r, t in turns]
    attempts = [([{"role": "system", "content": system}] if system else []) + msgs]
    if system:  # templates without a system role: fold it into the first user message
        attempts.append([{"role": "user", "content": f"{system}\n\n{msgs[0]['content']}"}] + msgs[1:])
    reason = ""
    for n, messages in enumerate(attempts):
        try:
            text = _render(tmpl, messages, bos, eos)
        except _TemplateRaised as e:
            reason = f"it raised: {e}"
            if n + 1 < len(attempts):
                log.debug("chat template %s rejected the system role (%s); folding it into the first "
                          "user message", _template_id(source), e)
            continue
        except SecurityError as e:
            reason = f"it tried an unsafe operation: {e}"
            break
        except Exception as e:  # noqa: BLE001 - any failure inside a foreign template means "unusable"
            reason = f"rendering failed: {type(e).__name__}: {e}"
            break
        if text.strip():
            return text
        reason = "it rendered no text"
        break
    _warn_once(source, reason, family)
    return None
