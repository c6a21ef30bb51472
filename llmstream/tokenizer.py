"""Tokenizers for llama/mistral (SentencePiece) and phi-2 (GPT-2 byte-level BPE) models.

Both sources end up as one object, a :class:`Tokenizer` around a ``tokenizers.Tokenizer`` (the Hugging Face
Rust library), so encoding and decoding follow one code path whatever the vocabulary came from:

* ``Tokenizer.from_file(path)`` loads a Hugging Face ``tokenizer.json``;
* ``Tokenizer.from_gguf_metadata(metadata)`` rebuilds the vocabulary a GGUF file embeds, with the library's
  own models, the way Hugging Face's converters do:

  - ``tokenizer.ggml.model == "llama"`` (SentencePiece): ``models.BPE`` whose merges are derived from the
    piece scores (every split of a piece into two pieces that are both in the vocabulary is a merge,
    ranked by the score of the merged piece), ``byte_fallback=True`` for ``<0xXX>`` tokens, a normalizer
    that prepends ``▁`` and turns spaces into ``▁``, and the decoder that undoes it (dropping the one
    leading space that was prepended). This is what ``LlamaTokenizerFast`` does and what llama.cpp does
    with ``add_space_prefix``.
  - ``tokenizer.ggml.model == "gpt2"``: ``models.BPE`` with the file's merges, and the pre-tokenizer
    that ``tokenizer.ggml.pre`` names (:data:`PRE_TOKENIZERS`): llama.cpp's regexes (``src/llama-vocab.cpp``)
    as ``Split`` steps, then ``ByteLevel``; the ByteLevel decoder. Llama 3 (``llama-bpe``) also looks a
    whole pre-token up in the vocabulary before merging (``ignore_merges``) and adds BOS by default.
    An unknown or missing value gets GPT-2's regex, with a warning naming it.

  ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` / ``add_space_prefix`` are honoured when present.

  Control and unknown tokens become added *special* tokens (they decode to nothing), user-defined
  tokens become added normal tokens (they decode to their text); both are matched in the input text
  before the model runs, as llama.cpp does.

Special-token texts typed by a user (``</s>``, ``<|eot_id|>``...) must stay text, while the prompt format
around them needs real control tokens: :meth:`Tokenizer.escape_special` marks them in the user's text
before it goes into a prompt, and ``encode(prompt, escaped=True)`` tokenizes what is marked as plain text.

:class:`StreamDecoder` turns generated ids into text pieces as they come (UTF-8 safe, O(1) per token).
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import TokenizerError

log = logging.getLogger(__name__)

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space
REPLACEMENT_CHAR = "\ufffd"
# Brackets special-token texts that must stay plain text (escape_special); a private-use character,
# doubled where the text itself holds one.
PLAIN_MARK = "\ue000"
_MARKED = re.compile(f"{PLAIN_MARK}([^{PLAIN_MARK}]*){PLAIN_MARK}")

# Texts llama.cpp recognises as end-of-turn tokens (llama-vocab.cpp); any that the vocabulary holds
# ends generation along with the EOS token.
EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "<|eom_id|>",
)


class PreTokenizer(NamedTuple):
    """How a byte-level BPE vocabulary splits text before merging (llama.cpp's per-``tokenizer.ggml.pre``
    settings): ``regexes`` applied one after another, each splitting the pieces the previous one left
    (keeping the matches and the text between them); ``ignore_merges``: a piece that is a vocabulary
    entry is that token, without merging; ``add_bos``: the default of ``tokenizer.ggml.add_bos_token``."""
    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False


# llama.cpp's regexes (src/llama-vocab.cpp, llm_tokenizer_bpe); its adapted forms, where it rewrote
# "(?i:'s|...)" as explicit character classes.
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS_RE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3_RE = (_CONTRACTIONS_RE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one at a time
_TEKKEN_RE = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
              r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
              r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_GPT2 = PreTokenizer((_GPT2_RE,))
_LLAMA3 = PreTokenizer((_LLAMA3_RE,), ignore_merges=True, add_bos=True)
_STARCODER = PreTokenizer((r"\p{N}", _GPT2_RE))  # digits one at a time, then GPT-2's regex
_QWEN2 = PreTokenizer((_QWEN2_RE,))

#: ``tokenizer.ggml.pre`` values llmstream builds, with llama.cpp's settings for each.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    # "default" is GPT-2's regex here, as for unknown values (llama.cpp's own "default" isolates
    # punctuation runs first)
    **dict.fromkeys(["gpt-2", "phi-2", "default", "mpt", "olmo", "jais"], _GPT2),
    **dict.fromkeys(["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"], _LLAMA3),
    **dict.fromkeys(["dbrx", "smaug-bpe"], PreTokenizer((_LLAMA3_RE,))),
    **dict.fromkeys(["starcoder", "smollm", "refact", "codeshell"], _STARCODER),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], _QWEN2),
    "tekken": PreTokenizer((_TEKKEN_RE,), ignore_merges=True, add_bos=True),
}

_HOW_TO_FIX = "pass the model's Hugging Face tokenizer.json instead (--tokenizer PATH)"


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special-token facts generation needs.

    Attributes: ``hf`` (the wrapped ``tokenizers.Tokenizer``), ``bos_id``, ``eos_id`` (``None`` when the
    vocabulary has none), ``eos_ids`` (every id that ends generation: EOS, EOT/EOM and the well-known
    end-of-turn tokens present), ``add_bos``/``add_eos`` (what :meth:`encode` adds by default),
    ``special_ids`` (ids that decode to no text), ``kind`` (``"spm"``, ``"gpt2"`` or ``"other"``),
    ``chat_template`` (``str`` or ``None``).
    """

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        bos_id: int | None,
        eos_id: int | None,
        eos_ids: Iterable[int] = (),
        add_bos: bool = False,
        add_eos: bool = False,
        vocab_size: int | None = None,
        special_ids: Iterable[int] = (),
        kind: str = "other",
        chat_template: str | None = None,
    ):
        self.hf = hf
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eos_ids = frozenset(int(i) for i in eos_ids) | ({eos_id} if eos_id is not None else set())
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.kind = kind
        self.chat_template = chat_template
        self._vocab_size = int(vocab_size if vocab_size is not None else hf.get_vocab_size(with_added_tokens=True))
        self.special_ids = frozenset(int(i) for i in special_ids)
        if self.add_bos and self.bos_id is None:
            raise TokenizerError("the tokenizer asks for a BOS token (add_bos) but has no BOS token id; "
                                 "set tokenizer.ggml.bos_token_id or " + _HOW_TO_FIX)
        if self.add_eos and self.eos_id is None:
            raise TokenizerError("the tokenizer asks for an EOS token (add_eos) but has no EOS token id; "
                                 "set tokenizer.ggml.eos_token_id or " + _HOW_TO_FIX)
        self._hf_plain: HFTokenizer | None = None  # copy that does not parse special tokens, made on demand
        self._lock = threading.Lock()
        # special tokens by text, and a regex finding them (longest first, so leftmost-longest as in
        # tokenizers and llama.cpp), for escape_special and encode(escaped=True)
        self._special_by_text = {t.content: i for i, t in sorted(hf.get_added_tokens_decoder().items())
                                 if t.special and t.content and PLAIN_MARK not in t.content}
        texts = sorted(self._special_by_text, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._escape_re = re.compile("|".join(map(re.escape, texts + [PLAIN_MARK])))

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_file(cls, path: str | Path, gguf_metadata: Mapping[str, Any] | None = None) -> "Tokenizer":
        """Load a Hugging Face ``tokenizer.json`` (or a directory holding one).

        Special tokens are the file's ``added_tokens`` marked special. BOS/EOS ids and ``add_bos`` come
        from ``gguf_metadata`` when it is given, else from a ``tokenizer_config.json`` beside the file,
        else from the well-known names ``<s>``, ``</s>`` and ``<|endoftext|>`` (GPT-2's BOS and EOS).
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} does not exist; give the path of a Hugging Face "
                                 "tokenizer.json, or leave it out to use the vocabulary inside the GGUF file")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises plain Exceptions
            raise TokenizerError(f"{path} is not a valid Hugging Face tokenizer.json ({e}); "
                                 "use the tokenizer.json from the model's repository") from e
        spec = json.loads(hf.to_str())
        kind = _kind_of_spec(spec)
        added = hf.get_added_tokens_decoder()
        special_ids = {i for i, t in added.items() if t.special}

        config = _read_tokenizer_config(path.parent / "tokenizer_config.json")

        def first_id(*texts: str | None) -> int | None:
            ids = (hf.token_to_id(t) for t in texts if t)
            return next((i for i in ids if i is not None), None)

        if gguf_metadata is not None:
            facts = _special_facts_from_gguf(gguf_metadata, hf.get_vocab_size(with_added_tokens=True), kind)
        else:
            bos_id = first_id(config.get("bos_token"), "<s>", "<|endoftext|>")  # GPT-2: one token for both
            eos_id = first_id(config.get("eos_token"), "</s>", "<|endoftext|>")
            add_bos = config.get("add_bos_token")
            if add_bos is None:
                add_bos = _template_adds_bos(spec, bos_id, hf)
            if add_bos is None:
                add_bos = kind == "spm" and bos_id is not None
            facts = dict(bos_id=bos_id, eos_id=eos_id, add_bos=bool(add_bos),
                         add_eos=bool(config.get("add_eos_token")), eot_ids=set())
        eos_ids = facts["eot_ids"] | {i for t in EOT_TEXTS if (i := hf.token_to_id(t)) is not None}
        template = (gguf_metadata or {}).get("tokenizer.chat_template") or config.get("chat_template")
        if template is not None and not isinstance(template, str):
            template = None  # tokenizer_config.json may hold a list of named templates; not handled here
        return cls(hf, bos_id=facts["bos_id"], eos_id=facts["eos_id"], eos_ids=eos_ids,
                   add_bos=facts["add_bos"], add_eos=facts["add_eos"], special_ids=special_ids,
                   kind=kind, chat_template=template)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> "Tokenizer":
        """Build the tokenizer from the vocabulary embedded in a GGUF file's metadata.

        ``metadata`` maps GGUF keys to Python values (strings, lists of strings, lists or numpy arrays of
        numbers, scalars).
        """
        model_name = metadata.get("tokenizer.ggml.model")
        if model_name is None:
            raise TokenizerError("the GGUF metadata has no 'tokenizer.ggml.model' key, so the file carries "
                                 "no vocabulary to build a tokenizer from; " + _HOW_TO_FIX)
        model_name = _as_str(model_name)
        if model_name not in ("llama", "gpt2"):
            raise TokenizerError(
                f"unsupported GGUF tokenizer model tokenizer.ggml.model={model_name!r}: llmstream builds "
                "'llama' (SentencePiece) and 'gpt2' (byte-level BPE) vocabularies; " + _HOW_TO_FIX)
        raw_tokens = _list(metadata, "tokenizer.ggml.tokens")
        if raw_tokens is None or len(raw_tokens) == 0:
            raise TokenizerError(f"the GGUF metadata says tokenizer.ggml.model={model_name!r} but has no "
                                 "'tokenizer.ggml.tokens' list, so there is no vocabulary; " + _HOW_TO_FIX)
        tokens = [_as_str(t) for t in raw_tokens]
        n = len(tokens)
        longest = max(range(n), key=lambda i: len(tokens[i]))
        if len(tokens[longest]) > MAX_TOKEN_CHARS:
            raise TokenizerError(
                f"token {longest} of the GGUF vocabulary is {len(tokens[longest])} characters long; "
                f"llmstream accepts tokens of at most {MAX_TOKEN_CHARS} (real vocabularies stay "
                "under a few hundred): the file is damaged or hostile; " + _HOW_TO_FIX)
        types = _numbers(metadata, "tokenizer.ggml.token_type", n, TOKEN_NORMAL, int)

        # text -> id; on duplicate texts the last id wins, as in llama.cpp
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != n:
            log.warning("GGUF vocabulary has %d duplicate token texts; the earlier ids of each decode to "
                        "nothing", n - len(vocab))

        if model_name == "llama":
            kind = "spm"
            scores = _numbers(metadata, "tokenizer.ggml.scores", n, 0.0, float)
            unk_id = _opt_id(metadata, "tokenizer.ggml.unknown_token_id", n, 0)
            add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
            bpe = _build(lambda: models.BPE(
                vocab=vocab, merges=spm_merges(tokens, scores, vocab),
                unk_token=tokens[unk_id] if unk_id is not None else None,
                fuse_unk=True, byte_fallback=True))
            hf = HFTokenizer(bpe)
            replace = normalizers.Replace(" ", SPM_SPACE)
            hf.normalizer = (normalizers.Sequence([normalizers.Prepend(SPM_SPACE), replace])
                             if add_space_prefix else replace)
            steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
            if add_space_prefix:
                steps.append(decoders.Strip(" ", 1, 0))
            hf.decoder = decoders.Sequence(steps)
        else:
            kind = "gpt2"
            pre = _pre_tokenizer(metadata, warn=True)
            raw_merges = _list(metadata, "tokenizer.ggml.merges")
            if raw_merges is None or len(raw_merges) == 0:
                raise TokenizerError("the GGUF metadata has a 'gpt2' vocabulary without "
                                     "'tokenizer.ggml.merges'; " + _HOW_TO_FIX)
            merges = [_split_merge(_as_str(m)) for m in raw_merges]
            hf = HFTokenizer(_build(lambda: models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                                                       byte_fallback=False, ignore_merges=pre.ignore_merges)))
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
                + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            hf.decoder = decoders.ByteLevel()
            # llama.cpp reads add_space_prefix for SentencePiece only; a BPE file that sets it gets one space
            # before its text (and after each special token), as SentencePiece does
            if bool(metadata.get("tokenizer.ggml.add_space_prefix", False)):
                hf.normalizer = normalizers.Prepend(" ")
                hf.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])

        # Added tokens, matched in the raw text before the model (llama.cpp does the same for control,
        # unknown and user-defined tokens). Their texts are in the model vocabulary, so they keep their ids.
        special_ids = set()
        specials, users = [], []
        for i, (text, ty) in enumerate(zip(tokens, types)):
            if vocab[text] != i:
                continue
            if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN):
                special_ids.add(i)
                if text:
                    specials.append(AddedToken(text, special=True, normalized=False))
            elif ty == TOKEN_USER_DEFINED and text:
                users.append(AddedToken(text, special=False, normalized=False))
            elif ty == TOKEN_UNUSED:
                special_ids.add(i)  # llama.cpp renders unused tokens as nothing
        if specials:
            hf.add_special_tokens(specials)
        if users:
            hf.add_tokens(users)

        facts = _special_facts_from_gguf(metadata, n, kind)
        eos_ids = facts["eot_ids"] | {vocab[t] for t in EOT_TEXTS if t in vocab}
        template = metadata.get("tokenizer.chat_template")
        return cls(hf, bos_id=facts["bos_id"], eos_id=facts["eos_id"], eos_ids=eos_ids,
                   add_bos=facts["add_bos"], add_eos=facts["add_eos"], vocab_size=n,
                   special_ids=special_ids, kind=kind,
                   chat_template=_as_str(template) if template is not None else None)

    # ---------------------------------------------------------------- use

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str, add_bos: bool | None = None, *, add_eos: bool | None = None,
               parse_special: bool = True, escaped: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_bos``/``add_eos`` default to the tokenizer's own setting.

        With ``parse_special`` (the default) texts of special tokens such as ``</s>`` or ``<|endoftext|>``
        in ``text`` become those tokens (chat templates need this); without it they are tokenized as
        plain text (use it for untrusted user text). User-defined tokens are matched either way.

        ``escaped``: ``text`` is a prompt whose user parts went through :meth:`escape_special`; the
        special-token texts marked there are plain text, the others (the prompt format's) are tokens.
        """
        if escaped and PLAIN_MARK in text:
            ids = self._encode_escaped(text, parse_special)
        else:
            hf = self.hf if parse_special else self._plain()
            ids = hf.encode(text, add_special_tokens=False).ids
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos was asked for but this tokenizer has no BOS token")
            ids.insert(0, self.bos_id)
        if self.add_eos if add_eos is None else add_eos:
            if self.eos_id is None:
                raise TokenizerError("add_eos was asked for but this tokenizer has no EOS token")
            ids.append(self.eos_id)
        return ids

    def escape_special(self, text: str) -> str:
        """``text`` (a user's) with each special-token text in it bracketed by :data:`PLAIN_MARK` (and
        any mark character doubled), for putting into a prompt: ``encode(prompt, escaped=True)`` then
        tokenizes those texts as plain text wherever the prompt format placed them. Text without special
        token texts comes back unchanged."""
        return self._escape_re.sub(lambda m: 2 * PLAIN_MARK if m.group() == PLAIN_MARK
                                   else PLAIN_MARK + m.group() + PLAIN_MARK, text)

    def _encode_escaped(self, text: str, parse_special: bool) -> list[int]:
        """encode() of a prompt holding marks from :meth:`escape_special`: the marks are removed, the
        special-token texts found outside what they bracketed become tokens, the text between them is
        tokenized without special tokens (each stretch on its own, as tokenizers and llama.cpp do)."""
        clean, plain_spans, pos = "", [], 0
        for m in _MARKED.finditer(text):
            inner = m.group(1) or PLAIN_MARK  # an empty pair is a doubled mark
            clean += text[pos:m.start()]
            plain_spans.append((len(clean), len(clean) + len(inner)))
            clean += inner
            pos = m.end()
        clean += text[pos:]
        plain = self._plain()
        if not parse_special or self._special_re is None:
            return plain.encode(clean, add_special_tokens=False).ids
        ids, start = [], 0
        for m in self._special_re.finditer(clean):
            if any(a < m.end() and m.start() < b for a, b in plain_spans):
                continue  # typed by the user
            ids += plain.encode(clean[start:m.start()], add_special_tokens=False).ids
            ids.append(self._special_by_text[m.group()])
            start = m.end()
        return ids + plain.encode(clean[start:], add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``. Special, control and unused tokens and ids outside the vocabulary produce no
        text (with ``skip_special=False`` the texts of special tokens are kept). For SentencePiece the one
        leading space that encoding prepends is dropped, so ``decode(encode(s)) == s`` for text without
        special tokens in it."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if not self.is_silent(i)]
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def is_silent(self, token_id: int) -> bool:
        """True for ids that decode to no text: special, control and unused tokens, ids outside the vocabulary."""
        return token_id in self.special_ids or not 0 <= token_id < self._vocab_size

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry of ``token_id`` as stored (``"▁Hello"``, ``"ĠHello"``, ``"<0x0A>"``,
        ``"</s>"``); raises TokenizerError for an id outside the vocabulary."""
        piece = self.hf.id_to_token(int(token_id))
        if piece is None:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (size {self._vocab_size})")
        return piece

    def piece_to_id(self, piece: str) -> int | None:
        """The id of a vocabulary entry, or None."""
        return self.hf.token_to_id(piece)

    def is_eos(self, token_id: int) -> bool:
        return token_id in self.eos_ids

    def _plain(self) -> HFTokenizer:
        """A copy of the wrapped tokenizer that does not split special tokens out of the text (a copy, so
        that a shared tokenizer is never switched back and forth between threads)."""
        with self._lock:
            if self._hf_plain is None:
                plain = HFTokenizer.from_str(self.hf.to_str())
                plain.encode_special_tokens = True
                self._hf_plain = plain
            return self._hf_plain

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self._vocab_size}, bos_id={self.bos_id}, "
                f"eos_ids={sorted(self.eos_ids)}, add_bos={self.add_bos})")


class StreamDecoder:
    """Turns generated token ids into text as they come.

    ``push(id)`` returns the text that became certain with that token (possibly ``""``); ``flush()``
    returns whatever is left at the end. Guarantees:

    * the pieces never hold part of a UTF-8 character: byte tokens (``<0xE2><0x82><0xAC>``, or GPT-2
      byte-level pieces) are held until the character is whole;
    * ``"".join(pieces) == decode(prompt_ids + answer)[len(decode(prompt_ids)):]`` — the answer's text
      as it reads after the prompt. So a SentencePiece answer that starts with ``▁Hello`` streams
      ``" Hello"`` after a prompt with text, and ``"Hello"`` without a prompt (``prompt_ids=None``,
      where the definition is ``decode(answer)``), exactly like the reference tokenizers;
    * special/control tokens produce no text;
    * O(1) amortised work per token: only a small window of ids is decoded, never the history.

    Invalid UTF-8 (byte tokens that never form a character) comes out as U+FFFD; how many U+FFFD a
    SentencePiece run of invalid bytes shows may then differ from ``decode`` of the whole, whose byte
    fallback replaces every byte of a run that holds an invalid one. Valid text is always exact.

    The window holds the tokens of the previous piece (``window[:read]``) and those pushed since; the new
    piece is ``decode(window)[len(decode(window[:read])):]``, the classic incremental detokenization. Both
    decodes start at the same token, so decoder rules for the first token (SentencePiece's dropped
    leading space) apply to both alike and cancel out. Silent tokens are left out of the window.
    """

    # prompt tokens kept as decoding context; enough for the longest UTF-8 character in byte tokens
    PROMPT_CONTEXT = 4
    # a window that grew this long without yielding text is emitted as it decodes (U+FFFD included)
    # so that garbage runs of byte tokens cannot make a token cost more than O(1)
    MAX_PENDING = 32

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] | None = None):
        self._tok = tokenizer
        window: list[int] = []
        if prompt_ids is not None and len(prompt_ids):
            prompt = [i for i in map(int, prompt_ids) if not tokenizer.is_silent(i)]
            start = max(0, len(prompt) - self.PROMPT_CONTEXT)
            # widen the context back to a character boundary with some text in it (a few tokens at most
            # for real text; bounded for garbage)
            while start > 0 and len(prompt) - start < 4 * self.PROMPT_CONTEXT:
                text = tokenizer.decode(prompt[start:])
                if text and not text.startswith(REPLACEMENT_CHAR):
                    break
                start -= 1
            window = prompt[start:]
        self._ids = window              # the decoding window
        self._read = len(window)        # ids[:read] produced the text already returned
        self._prefix_text = tokenizer.decode(window)

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        if self._tok.is_silent(token_id):
            return ""  # decodes to nothing, so leaving it out of the window changes no text
        self._ids.append(token_id)
        text = self._tok.decode(self._ids)
        if len(text) > len(self._prefix_text) and (
                not text.endswith(REPLACEMENT_CHAR) or len(self._ids) - self._read > self.MAX_PENDING):
            piece = text[len(self._prefix_text):]
            del self._ids[:self._read]    # the tokens of this piece become the next window's prefix
            self._read = len(self._ids)
            self._prefix_text = self._tok.decode(self._ids)
            return piece
        return ""

    def flush(self) -> str:
        """The text still held (an unfinished UTF-8 character comes out as U+FFFD)."""
        text = self._tok.decode(self._ids)
        piece = text[len(self._prefix_text):]
        self._read = len(self._ids)
        self._prefix_text = text
        return piece


# -------------------------------------------------------------------- helpers

# The longest token text a vocabulary may hold (characters). Real ones stay under 256 (StarCoder);
# the bound keeps loading linear in the file size whatever a file claims.
MAX_TOKEN_CHARS = 1024


def spm_merges(tokens: Sequence[str], scores: Sequence[float], vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-driven merging (as Hugging Face's converter derives
    them): every split of a piece into two pieces that are both in the vocabulary, ranked by the merged
    piece's score, highest first; ties keep vocabulary order, then the ids of the halves."""
    ranked = []
    lengths = sorted({len(t) for t in vocab})     # a half must have the length of some piece
    for piece_id, piece in enumerate(tokens):
        if len(piece) < 2 or vocab.get(piece) != piece_id:
            continue
        local = []
        for k in lengths:
            if k >= len(piece):
                break
            left, right = piece[:k], piece[k:]
            li, ri = vocab.get(left), vocab.get(right)
            if li is not None and ri is not None:
                local.append((li, ri, left, right))
        local.sort()
        score = -float(scores[piece_id])
        ranked.extend((score, left, right) for _, _, left, right in local)
    ranked.sort(key=lambda m: m[0])  # stable
    return [(left, right) for _, left, right in ranked]


def _pre_tokenizer(metadata: Mapping[str, Any], warn: bool = False) -> PreTokenizer:
    """The :class:`PreTokenizer` that ``tokenizer.ggml.pre`` names; GPT-2's for a missing or unknown value
    (with a warning naming it when ``warn``)."""
    name = metadata.get("tokenizer.ggml.pre")
    name = _as_str(name) if name is not None else None
    pre = PRE_TOKENIZERS.get(name)
    if pre is None:
        pre = _GPT2
        if warn:
            what = f"tokenizer.ggml.pre={name!r}, unknown to llmstream" if name else "no tokenizer.ggml.pre"
            log.warning("the GGUF vocabulary has %s; splitting text with GPT-2's pre-tokenizer, so its tokens "
                        "may differ from the model's own; if they do, %s", what, _HOW_TO_FIX)
    return pre


def _special_facts_from_gguf(metadata: Mapping[str, Any], n: int, kind: str) -> dict:
    spm = kind == "spm"
    bos_id = _opt_id(metadata, "tokenizer.ggml.bos_token_id", n, 1 if spm else None)
    eos_id = _opt_id(metadata, "tokenizer.ggml.eos_token_id", n, 2 if spm else None)
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:  # llama.cpp's defaults: SentencePiece and some BPE pre-tokenizers (Llama 3) add BOS
        add_bos = spm or (kind == "gpt2" and _pre_tokenizer(metadata).add_bos)
    add_bos = bool(add_bos)
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    eot_ids = {i for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
               if (i := _opt_id(metadata, key, n, None)) is not None}
    return dict(bos_id=bos_id, eos_id=eos_id, add_bos=add_bos, add_eos=add_eos, eot_ids=eot_ids)


def _opt_id(metadata: Mapping[str, Any], key: str, n: int, default: int | None) -> int | None:
    value = metadata.get(key, default)
    if value is None:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:   # numpy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenizerError(f"GGUF metadata {key} should be a token id (a whole number), got "
                             f"{type(value).__name__} {str(value)[:40]!r}; the file is damaged — "
                             + _HOW_TO_FIX)
    if not 0 <= value < n:
        log.warning("%s = %d is outside the vocabulary (size %d); ignoring it", key, value, n)
        return None
    return value


def _list(metadata: Mapping[str, Any], key: str):
    """The list (or array) under key, None when absent; anything else is a damaged file."""
    values = metadata.get(key)
    if values is None or isinstance(values, (list, tuple)) or (
            hasattr(values, "tolist") and getattr(values, "ndim", 0) == 1):
        return values
    raise TokenizerError(f"GGUF metadata {key} should be a list, got {type(values).__name__}; the "
                         "file is damaged — " + _HOW_TO_FIX)


def _numbers(metadata: Mapping[str, Any], key: str, n: int, default, cast) -> list:
    values = _list(metadata, key)
    if values is None:
        return [default] * n
    if len(values) != n:
        raise TokenizerError(f"GGUF metadata {key} has {len(values)} entries for {n} tokens; the file is "
                             "damaged or inconsistent — " + _HOW_TO_FIX)
    if hasattr(values, "tolist"):  # numpy array
        values = values.tolist()
    try:
        out = [cast(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        out = None
    if out is None or any(isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v))
                          for v in values):
        raise TokenizerError(f"GGUF metadata {key} should hold numbers, one per token; the file "
                             "is damaged — " + _HOW_TO_FIX)
    return out


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if hasattr(value, "tobytes"):  # numpy uint8 array
        return value.tobytes().decode("utf-8", errors="replace")
    raise TokenizerError(f"expected a string in the GGUF tokenizer metadata, found {type(value).__name__}")


def _split_merge(merge: str) -> tuple[str, str]:
    pos = merge.find(" ", 1)  # as llama.cpp: the first space after the first character
    if pos < 0:
        raise TokenizerError(f"malformed GGUF merge {merge!r} (expected 'left right'); " + _HOW_TO_FIX)
    return merge[:pos], merge[pos + 1:]


def _build(make):
    try:
        return make()
    except Exception as e:  # the Rust library reports bad vocabularies/merges as plain Exceptions
        raise TokenizerError(f"the GGUF vocabulary could not be built into a tokenizer ({e}); "
                             + _HOW_TO_FIX) from e


def _kind_of_spec(spec: dict) -> str:
    """'spm', 'gpt2' or 'other', from the component types of a tokenizer.json."""
    types = set()

    def collect(node):
        if isinstance(node, dict):
            types.add(node.get("type"))
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    collect([spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("decoder")])
    if "ByteLevel" in types:
        return "gpt2"
    if (spec.get("model") or {}).get("byte_fallback") or types & {"Metaspace", "ByteFallback"}:
        return "spm"
    return "other"


def _template_adds_bos(spec: dict, bos_id: int | None, hf: HFTokenizer) -> bool | None:
    """Whether the tokenizer.json's TemplateProcessing post-processor starts with the BOS token."""
    post = spec.get("post_processor") or {}
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in procs:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            first = single[0] if single else {}
            if "SpecialToken" in first:
                return bos_id is not None and hf.token_to_id(first["SpecialToken"]["id"]) == bos_id
            return False
    return None


def _read_tokenizer_config(path: Path) -> dict:
    """bos_token, eos_token, add_bos_token, add_eos_token and chat_template from a tokenizer_config.json
    (the token entries as plain strings)."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({e}); fix or remove it") from e
    config = {}
    for key in ("bos_token", "eos_token"):
        value = raw.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            config[key] = value
    for key in ("add_bos_token", "add_eos_token", "chat_template"):
        if raw.get(key) is not None:
            config[key] = raw[key]
    return config
