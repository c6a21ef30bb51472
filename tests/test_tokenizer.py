"""Tokenizer tests: llama.cpp's test vectors for the Llama SentencePiece, GPT-2, Llama 3 (llama-bpe) and
StarCoder vocabularies (from the GGUF vocabularies in ../shared/vocab and, for the first two, from
tokenizer.json files built here), pre-tokenizer choice and add_bos/add_eos/add_space_prefix from the
metadata, special-token texts typed by users, tiny synthetic vocabularies that need no shared data, and
the errors."""
import json
import logging
from functools import lru_cache

import numpy as np
import pytest
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from llmstream.errors import LLMStreamError, TokenizerError
from llmstream.gguf import GGUFFile
from llmstream.tokenizer import PLAIN_MARK, StreamDecoder, Tokenizer

from conftest import shared_path

VOCABS = ["llama-spm", "gpt-2", "llama-bpe", "starcoder"]
JSON_VOCABS = ["llama-spm", "gpt-2"]  # those with a tokenizer.json built here
SEPARATOR = "\n__ggml_vocab_test__\n"


# ----------------------------------------------------------------------------- helpers

def gguf_metadata(path) -> dict:
    """The GGUF file's metadata as LLM.load hands it to Tokenizer.from_gguf_metadata."""
    with GGUFFile(path) as gf:
        return dict(gf.metadata)


def read_vectors(base) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors, parsed as tests/test-tokenizer-0.cpp does: the .inp file is split on
    "\\n__ggml_vocab_test__\\n" (so the newline before a separator line is not part of the string, and
    nothing follows the last separator), each .out line holds one string's ids, without BOS."""
    raw = base.with_name(base.name + ".inp").read_bytes().decode("utf-8")
    strings = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt < 0:
            strings.append(raw[pos:])
            break
        strings.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)
    lines = base.with_name(base.name + ".out").read_text(encoding="utf-8").splitlines()
    assert len(strings) == len(lines), "the .inp and .out files hold different numbers of tests"
    return [(s, [int(x) for x in line.split()]) for s, line in zip(strings, lines)]


@lru_cache(maxsize=None)
def vocab(name: str):
    """(metadata, tokenizer from GGUF, vectors) for one shared vocabulary, read once per session."""
    base = shared_path("vocab", f"ggml-vocab-{name}.gguf")
    metadata = gguf_metadata(base)
    return metadata, Tokenizer.from_gguf_metadata(metadata), read_vectors(base)


def hf_llama_tokenizer_json(metadata: dict) -> HFTokenizer:
    """A tokenizer.json for the SentencePiece vocabulary, built the way Hugging Face's LlamaConverter
    does (written independently of llmstream.tokenizer): BPE with merges from the scores, byte fallback,
    Prepend("▁")+Replace normalizer, Replace/ByteFallback/Fuse/Strip decoder, "<s> $A" template."""
    tokens, scores = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"]
    types = metadata["tokenizer.ggml.token_type"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, score in zip(tokens, scores):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        splits = [s for s in splits if s[0] in vocab and s[1] in vocab]
        merges += [(score, left, right) for left, right in sorted(splits, key=lambda s: (vocab[s[0]], vocab[s[1]]))]
    merges.sort(key=lambda m: m[0], reverse=True)
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], unk_token="<unk>",
                                fuse_unk=True, byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    from tokenizers.processors import TemplateProcessing
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty in (2, 3)])
    return tk


def hf_gpt2_tokenizer_json(metadata: dict) -> HFTokenizer:
    """GPT-2's tokenizer.json: byte-level BPE with the file's merges, <|endoftext|> special."""
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    tk = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tk


def stream(tok, ids, prompt_ids=None) -> list[str]:
    sd = StreamDecoder(tok, prompt_ids)
    return [sd.push(i) for i in ids] + [sd.flush()]


def assert_valid_pieces(pieces):
    for p in pieces:
        assert "\ufffd" not in p, f"piece {p!r} holds a replacement character"
        p.encode("utf-8")  # no lone surrogates: every piece is whole characters


# ----------------------------------------------------------------------------- llama.cpp's vectors

@pytest.mark.parametrize("name", VOCABS)
def test_vectors_match_llama_cpp(name):
    _, tok, vectors = vocab(name)
    assert len(vectors) == 46
    failures = [(s, ids, got) for s, ids in vectors
                if (got := tok.encode(s, add_bos=False, parse_special=False)) != ids]
    assert not failures, f"{len(vectors) - len(failures)}/{len(vectors)} vectors pass; first failures: {failures[:3]}"


@pytest.mark.parametrize("name", VOCABS)
def test_decode_gives_back_the_text(name):
    """Decoding llama.cpp's ids gives back the string exactly. For SentencePiece this rests on the
    leading-space convention: llama.cpp (add_space_prefix) prepends one "▁" to the text before
    tokenizing, and decoding drops exactly one leading space (as llama.cpp's detokenizer and Hugging
    Face's Strip decoder do), so " Hello" -> "▁▁Hello" -> " Hello" and "Hello" -> "▁Hello" -> "Hello"."""
    _, tok, vectors = vocab(name)
    for s, ids in vectors:
        assert tok.decode(ids) == s


def test_spm_adds_bos_and_parses_specials():
    _, tok, _ = vocab("llama-spm")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.kind) == (1, 2, True, "spm")
    assert tok.eos_ids == {2}
    assert tok.vocab_size == 32000
    hello = tok.encode("Hello", add_bos=False)
    assert tok.encode("Hello") == [1] + hello
    assert tok.encode("") == [1] and tok.encode("", add_bos=False) == []
    # special token texts become the tokens by default, text after them gets its "▁" as after BOS
    assert tok.encode("Hello</s>Hello") == [1] + hello + [2] + hello
    assert 2 not in tok.encode("Hello</s>", parse_special=False)
    # as in llama.cpp, the text after a special token gets its own "▁" prefix
    assert tok.encode("Hello</s>world", add_bos=False) == hello + [2] + tok.encode("world", add_bos=False)
    assert tok.decode(tok.encode("Hello</s>world")) == "Hello world"
    assert tok.decode([1, 2], skip_special=False) == "<s></s>"
    assert [tok.id_to_piece(i) for i in tok.encode("Hi 😶", add_bos=False)] == \
        ["▁Hi", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0xB6>"]
    assert tok.piece_to_id("▁Hello") == hello[0]
    with pytest.raises(TokenizerError):
        tok.id_to_piece(32000)


def test_gpt2_facts():
    _, tok, _ = vocab("gpt-2")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.kind) == (50256, 50256, False, "gpt2")
    assert tok.eos_ids == {50256}
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert 50256 not in tok.encode("a<|endoftext|>b", parse_special=False)
    assert tok.decode([64, 50256, 65]) == "ab"


# ----------------------------------------------------------------------------- BPE pre-tokenizers, metadata flags

def pieces(tok, text) -> list[str]:
    """How the tokenizer's pre-tokenizer splits ``text`` (byte-level pieces)."""
    return [p for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str(text)]


def test_llama_bpe_facts():
    """Llama 3: BOS added by default (llama.cpp's default for llama-bpe; the file has no add_bos_token),
    contractions in any case, digits in groups of up to 3, and a pre-token that is a vocabulary entry is
    that token without merging (ignore_merges; merging gives 3 tokens for this one)."""
    _, tok, _ = vocab("llama-bpe")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos, tok.kind) == (128000, 128001, True, False, "gpt2")
    assert {128001, 128009} <= tok.eos_ids  # <|end_of_text|>, <|eot_id|>
    assert tok.encode("Hello")[0] == 128000 and tok.encode("Hello", add_bos=False)[0] != 128000
    assert pieces(tok, "DON'T say 12345") == ["DON", "'T", "Ġsay", "Ġ", "123", "45"]
    assert tok.encode(" bulundu", add_bos=False) == [123416]


def test_starcoder_splits_digits_one_at_a_time():
    _, tok, _ = vocab("starcoder")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.kind) == (0, 0, False, "gpt2")
    assert pieces(tok, "DON'T say 12345") == ["DON", "'", "T", "Ġsay", "Ġ", "1", "2", "3", "4", "5"]
    assert len(tok.encode("2024")) == 4
    # smollm (SmolLM's files) splits the same way
    metadata, _, _ = vocab("starcoder")
    smollm = Tokenizer.from_gguf_metadata(dict(metadata, **{"tokenizer.ggml.pre": "smollm"}))
    assert pieces(smollm, "x = 12.5 + y's") == pieces(tok, "x = 12.5 + y's")


def tiny_bpe_metadata(**extra) -> dict:
    """A byte-level BPE vocabulary small enough to read: 'a', 'b', space, digits, quote."""
    tokens = ["<|endoftext|>", "<|im_start|>", "a", "b", "Ġ", "1", "2", "'", "s", "ab", "Ġa", "Ġab", "12", "'s"]
    merges = ["Ġ a", "Ġa b", "a b", "1 2", "' s"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3, 3] + [1] * (len(tokens) - 2), "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0}
    meta.update(extra)
    return meta


def test_pre_tokenizer_by_name():
    text = "DON'T  say 12345!\n\nHelloWorld"
    split = {name: pieces(Tokenizer.from_gguf_metadata(tiny_bpe_metadata(**{"tokenizer.ggml.pre": name})), text)
             for name in ["gpt-2", "phi-2", "default", "llama-bpe", "llama3", "llama-v3", "smollm", "starcoder",
                          "qwen2", "tekken"]}
    assert split["gpt-2"] == ["DON", "'", "T", "Ġ", "Ġsay", "Ġ12345", "!", "Ċ", "Ċ", "HelloWorld"]
    assert split["phi-2"] == split["default"] == split["gpt-2"]
    assert split["llama-bpe"] == ["DON", "'T", "Ġ", "Ġsay", "Ġ", "123", "45", "!ĊĊ", "HelloWorld"]
    assert split["llama3"] == split["llama-v3"] == split["llama-bpe"]
    assert split["starcoder"] == split["smollm"] == \
        ["DON", "'", "T", "Ġ", "Ġsay", "Ġ", "1", "2", "3", "4", "5", "!", "Ċ", "Ċ", "HelloWorld"]
    assert split["qwen2"] == ["DON", "'T", "Ġ", "Ġsay", "Ġ", "1", "2", "3", "4", "5", "!ĊĊ", "HelloWorld"]
    assert split["tekken"][-2:] == ["Hello", "World"]


def test_unknown_pre_tokenizer_warns_once_and_uses_gpt2(caplog):
    text = "it's 12  ab\tb"
    gpt2 = Tokenizer.from_gguf_metadata(tiny_bpe_metadata())
    with caplog.at_level(logging.WARNING, logger="llmstream.tokenizer"):
        tok = Tokenizer.from_gguf_metadata(tiny_bpe_metadata(**{"tokenizer.ggml.pre": "brand-new-bpe"}))
        for _ in range(3):
            assert tok.encode(text) == gpt2.encode(text)
            assert tok.encode(text, parse_special=False) == gpt2.encode(text, parse_special=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'brand-new-bpe'" in warnings[0] and "GPT-2" in warnings[0]
    assert pieces(tok, text) == pieces(gpt2, text)
    caplog.clear()
    meta = tiny_bpe_metadata()
    del meta["tokenizer.ggml.pre"]
    with caplog.at_level(logging.WARNING, logger="llmstream.tokenizer"):
        assert pieces(Tokenizer.from_gguf_metadata(meta), text) == pieces(gpt2, text)
    assert ["no tokenizer.ggml.pre" in r.getMessage() for r in caplog.records] == [True]


def test_add_bos_add_eos_from_metadata():
    tok = Tokenizer.from_gguf_metadata(tiny_bpe_metadata())
    ab = tok.piece_to_id("ab")
    assert (tok.add_bos, tok.add_eos) == (False, False) and tok.encode("ab") == [ab]
    tok = Tokenizer.from_gguf_metadata(tiny_bpe_metadata(**{"tokenizer.ggml.add_bos_token": True,
                                                            "tokenizer.ggml.add_eos_token": True}))
    assert tok.encode("ab") == [0, ab, 0]
    assert tok.encode("ab", add_bos=False, add_eos=False) == [ab]
    # llama-bpe adds BOS unless the file says otherwise
    assert Tokenizer.from_gguf_metadata(tiny_bpe_metadata(**{"tokenizer.ggml.pre": "llama-bpe"})).add_bos
    tok = Tokenizer.from_gguf_metadata(tiny_bpe_metadata(**{"tokenizer.ggml.pre": "llama-bpe",
                                                            "tokenizer.ggml.add_bos_token": False}))
    assert tok.encode("ab") == [ab]
    # SentencePiece: the file's add_bos_token=False and add_eos_token=True win over the defaults
    spm = Tokenizer.from_gguf_metadata(tiny_spm_metadata(**{"tokenizer.ggml.add_bos_token": False,
                                                            "tokenizer.ggml.add_eos_token": True}))
    assert spm.encode("ab") == [spm.piece_to_id("▁ab"), 2]
    with pytest.raises(TokenizerError, match="EOS.*eos_token_id"):
        meta = tiny_bpe_metadata(**{"tokenizer.ggml.add_eos_token": True})
        del meta["tokenizer.ggml.eos_token_id"]
        Tokenizer.from_gguf_metadata(meta)


def test_add_space_prefix_from_metadata():
    plain = Tokenizer.from_gguf_metadata(tiny_bpe_metadata())
    tok = Tokenizer.from_gguf_metadata(tiny_bpe_metadata(**{"tokenizer.ggml.add_space_prefix": True}))
    ab, space_ab = plain.piece_to_id("ab"), plain.piece_to_id("Ġab")
    assert plain.encode("ab") == [ab] and plain.encode(" ab") == [space_ab]
    assert tok.encode("ab") == [space_ab]
    assert tok.encode("ab<|endoftext|>ab") == [space_ab, 0, space_ab]  # after a special token too, as SPM
    assert tok.decode(tok.encode("ab ab")) == "ab ab"
    # SentencePiece: on by default, off when the file says so (see also test_unused_tokens_...)
    spm = Tokenizer.from_gguf_metadata(tiny_spm_metadata())
    assert spm.encode("ab", add_bos=False) == [spm.piece_to_id("▁ab")]
    spm = Tokenizer.from_gguf_metadata(tiny_spm_metadata(**{"tokenizer.ggml.add_space_prefix": False}))
    assert spm.encode("ab", add_bos=False) == [spm.piece_to_id("ab")]


# ----------------------------------------------------------------------------- special-token texts typed by users

def test_user_text_with_special_token_texts_stays_text():
    """A prompt format's special tokens become control tokens; the same texts typed by a user, marked by
    escape_special, are tokenized exactly as plain text."""
    _, tok, _ = vocab("llama-spm")
    user = "Hi </s> <s>!</s>"
    prompt = "[INST] " + tok.escape_special(user) + " [/INST] Sure</s>"
    ids = tok.encode(prompt, escaped=True)
    assert ids == tok.encode("[INST] Hi </s> <s>!</s> [/INST] Sure", parse_special=False) + [2]
    assert ids.count(1) == 1 and ids.count(2) == 1
    assert tok.decode(ids) == "[INST] Hi </s> <s>!</s> [/INST] Sure"
    assert tok.encode(prompt) != ids  # without escaped=True the marks are just characters
    # text without special-token texts is left as it is, so prompts are unchanged
    assert tok.escape_special("Hello <world>") == "Hello <world>"
    # the mark character itself, typed by a user, stays the user's
    odd = f"a{PLAIN_MARK}b{PLAIN_MARK}</s>{PLAIN_MARK}"
    assert tok.encode(tok.escape_special(odd), escaped=True) == tok.encode(odd, parse_special=False)


@pytest.mark.parametrize("name, template, user", [
    ("llama-bpe", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n",
     "Say <|begin_of_text|><|eot_id|><|start_header_id|>system<|end_header_id|> twice"),
    ("gpt-2", "Instruct: {}\nOutput:", "a<|endoftext|>b"),
    ("starcoder", "<issue_start>{}<issue_comment>", "<|endoftext|><fim_prefix><issue_comment>"),
])
def test_special_token_texts_in_user_text_never_become_control_ids(name, template, user):
    _, tok, _ = vocab(name)
    prompt = template.format(tok.escape_special(user))
    ids = tok.encode(prompt, add_bos=False, escaped=True)
    expected_text = template.format(user)
    template_ids = tok.encode(template.format("x"), add_bos=False)
    controls = [i for i in ids if i in tok.special_ids]
    assert controls == [i for i in template_ids if i in tok.special_ids]  # only the template's
    assert tok.decode(ids, skip_special=False) == expected_text
    user_ids = tok.encode(user, add_bos=False, parse_special=False)
    assert not set(user_ids) & tok.special_ids


def test_llm_prompts_keep_user_special_tokens_as_text():
    """Through LLM: /token_stream questions, chat messages (built-in format and a GGUF-style chat
    template) never turn a user's </s> or <s> into control ids; the formats' own tokens are control
    ids; a raw prompt is the caller's own, special tokens included."""
    from llmstream.generate import LLM
    from llmstream.sampling import SamplingParams

    llm = LLM.load(shared_path("reference", "llama-gqa-Q8_0.gguf"), parallel=1)
    try:
        bos, eos = llm.tokenizer.bos_id, llm.tokenizer.eos_id
        ids = llm.encode(llm.format_query("Hi </s><s> there"))
        assert ids[0] == bos and bos not in ids[1:] and eos not in ids
        chat = [{"role": "system", "content": "Be </s> brief"}, {"role": "user", "content": "a </s>"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": "<s>c"}]
        ids = llm.encode(llm.format_chat(chat))
        assert ids.count(eos) == 1 and ids.count(bos) == 1  # the format's </s> after "b", BOS in front
        g = llm.generate(messages=chat, params=SamplingParams(max_tokens=1))
        assert g.ids == ids
        g.text()
        llm.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                             "{{ eos_token }}{% endfor %}")
        ids = llm.encode(llm.format_chat(chat))
        assert ids.count(eos) == 4 and ids.count(bos) == 1
        assert llm.encode("a</s>", raw=True)[-1] == eos
        assert llm.generate("a</s>", raw=True, params=SamplingParams(max_tokens=1)).ids[-1] == eos
    finally:
        llm.close()


# ----------------------------------------------------------------------------- tokenizer.json path

@pytest.mark.parametrize("name", JSON_VOCABS)
def test_tokenizer_json_gives_the_same_ids(name, tmp_path):
    metadata, gguf_tok, vectors = vocab(name)
    build = hf_llama_tokenizer_json if name == "llama-spm" else hf_gpt2_tokenizer_json
    build(metadata).save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.kind) == \
        (gguf_tok.bos_id, gguf_tok.eos_id, gguf_tok.add_bos, gguf_tok.kind)
    assert tok.eos_ids == gguf_tok.eos_ids
    assert tok.special_ids == gguf_tok.special_ids
    same = 0
    for s, ids in vectors:
        got = tok.encode(s, add_bos=False)
        assert got == gguf_tok.encode(s, add_bos=False) == ids, s
        assert tok.decode(got) == s
        same += 1
    assert same == len(vectors)
    assert tok.encode("Hi") == gguf_tok.encode("Hi")
    # a directory holding tokenizer.json works too, and GGUF metadata overrides the names
    meta = dict(metadata, **{"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": 0})
    tok2 = Tokenizer.from_file(tmp_path, gguf_metadata=meta)
    assert (tok2.bos_id, tok2.add_bos) == (0, True)
    assert tok2.encode("Hi")[0] == 0


def test_tokenizer_config_beside_tokenizer_json(tmp_path):
    metadata, _, _ = vocab("gpt-2")
    hf_gpt2_tokenizer_json(metadata).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>", "add_bos_token": True,
        "chat_template": "{{ messages }}"}))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.chat_template) == (50256, 50256, True, "{{ messages }}")
    assert tok.encode("Hello world") == [50256, 15496, 995]


# ----------------------------------------------------------------------------- StreamDecoder

@pytest.mark.parametrize("name", VOCABS)
def test_stream_pieces_concatenate_to_decode(name):
    """Without a prompt the pieces join to decode(answer); after a prompt they join to
    decode(prompt + answer)[len(decode(prompt)):], the answer as it reads after the prompt."""
    _, tok, vectors = vocab(name)
    prompt = tok.encode("Q: repeat after me.\nA:")
    for s, ids in vectors:
        pieces = stream(tok, ids)
        assert_valid_pieces(pieces)
        assert "".join(pieces) == tok.decode(ids) == s
        pieces = stream(tok, ids, prompt)
        assert_valid_pieces(pieces)
        assert "".join(pieces) == tok.decode(prompt + ids)[len(tok.decode(prompt)):]


@pytest.mark.parametrize("name", VOCABS)
def test_stream_holds_multibyte_characters_until_whole(name):
    _, tok, _ = vocab(name)
    text = "😶‍🌫️ 🦙€ 我想在apple工作 កាន់តែ"
    ids = tok.encode(text, add_bos=False)
    pieces = stream(tok, ids)
    assert_valid_pieces(pieces)
    assert "".join(pieces) == text
    # the text really is split into byte tokens, and those held back yield "" until the character is whole
    assert "" in pieces[:-1]
    sd = StreamDecoder(tok)
    llama = tok.encode("🦙", add_bos=False)
    assert len(llama) >= 3
    out = [sd.push(i) for i in llama]
    assert out[:-1] == [""] * (len(llama) - 1) and out[-1] == "🦙"


def test_stream_spm_leading_space():
    _, tok, _ = vocab("llama-spm")
    answer = tok.encode("Hello world", add_bos=False)  # ▁Hello ▁world
    assert "".join(stream(tok, answer)) == "Hello world"                      # no prompt: decode(answer)
    assert "".join(stream(tok, answer, [tok.bos_id])) == "Hello world"        # prompt without text
    prompt = tok.encode("[INST] Hi [/INST]")
    assert stream(tok, answer, prompt)[0] == " Hello"                         # after text: its space
    assert "".join(stream(tok, answer, prompt)) == " Hello world"
    # special tokens at the end of the prompt do not hide the text before them
    prompt = tok.encode("Hi") + [tok.eos_id, tok.bos_id]
    assert tok.decode(prompt + answer)[len(tok.decode(prompt)):] == " Hello world"
    assert "".join(stream(tok, answer, prompt)) == " Hello world"


@pytest.mark.parametrize("name", VOCABS)
def test_stream_special_tokens_yield_nothing(name):
    _, tok, _ = vocab(name)
    a, b = tok.encode("A", add_bos=False), tok.encode(" B", add_bos=False)
    sd = StreamDecoder(tok)
    pieces = [sd.push(i) for i in a]
    assert sd.push(tok.eos_id) == "" and sd.push(tok.bos_id) == ""
    pieces += [sd.push(i) for i in b] + [sd.flush()]
    assert "".join(pieces) == tok.decode(a + [tok.eos_id, tok.bos_id] + b)
    assert StreamDecoder(tok).push(tok.eos_id) == ""
    assert StreamDecoder(tok).push(10**9) == ""  # ids beyond the vocabulary (padding rows) too


@pytest.mark.parametrize("name", VOCABS)
def test_stream_decodes_a_bounded_window(name):
    """O(1) per token: every decode call sees a handful of ids, however long the stream."""
    _, base, vectors = vocab(name)
    seen = []

    class Spy(Tokenizer):
        def decode(self, ids, **kw):
            ids = list(ids)
            seen.append(len(ids))
            return super().decode(ids, **kw)

    tok = Spy(base.hf, bos_id=base.bos_id, eos_id=base.eos_id, eos_ids=base.eos_ids,
              add_bos=base.add_bos, vocab_size=base.vocab_size, special_ids=base.special_ids, kind=base.kind)
    ids = [i for _ in range(20) for _, v in vectors for i in v]
    assert len(ids) > 5000
    prompt = base.encode("prompt")
    pieces = stream(tok, ids, prompt)
    assert max(seen) <= 12
    assert "".join(pieces) == base.decode(prompt + ids)[len(base.decode(prompt)):]


@pytest.mark.parametrize("name", VOCABS)
def test_stream_random_ids(name):
    """Random token sequences, with and without a prompt: GPT-2 ids of any kind (garbage bytes included);
    SentencePiece ids without raw byte tokens, plus byte tokens of whole characters spliced in."""
    import random

    _, tok, _ = vocab(name)
    rng = random.Random(1234)
    prompt = tok.encode("Say:")
    for trial in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 50))]
        if name == "llama-spm":
            ids = [i for i in ids if not tok.id_to_piece(i).startswith("<0x")]
            for _ in range(3):
                pos = rng.randrange(len(ids) + 1)
                ids[pos:pos] = tok.encode(rng.choice(["😶", "我", "ក", "€"]), add_bos=False)[1:]
        if trial % 2:
            expected = tok.decode(prompt + ids)[len(tok.decode(prompt)):]
            assert "".join(stream(tok, ids, prompt)) == expected, ids
        else:
            assert "".join(stream(tok, ids)) == tok.decode(ids), ids


def test_stream_incomplete_and_invalid_bytes():
    _, tok, _ = vocab("llama-spm")
    byte = lambda b: tok.piece_to_id(f"<0x{b:02X}>")  # noqa: E731
    # an unfinished character at the end comes out of flush() as U+FFFD, like decode()
    ids = tok.encode("ok", add_bos=False) + [byte(0xE2), byte(0x82)]
    pieces = stream(tok, ids)
    assert pieces[-1].endswith("\ufffd") and "".join(pieces) == tok.decode(ids)
    # invalid bytes never block the stream for long, and still join to decode()
    for n in (3, 100):
        ids = [byte(0x80)] * n + tok.encode("x y", add_bos=False)
        pieces = stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids)
        assert pieces[n] != ""


# ----------------------------------------------------------------------------- tiny synthetic vocabulary

def tiny_spm_metadata(**extra) -> dict:
    pieces = ["▁", "a", "b", "c", "ab", "▁a", "▁ab", "▁c", "<tool>"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 1) + [4]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, 0.0]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": np.array(scores, dtype=np.float32),
            "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
            "tokenizer.chat_template": "{{ x }}"}
    meta.update(extra)
    return meta


def test_tiny_spm_vocabulary():
    tok = Tokenizer.from_gguf_metadata(tiny_spm_metadata())
    ids = {p: tok.piece_to_id(p) for p in ["▁", "a", "b", "c", "ab", "▁a", "▁ab", "▁c", "<tool>"]}
    assert tok.encode("ab c") == [1, ids["▁ab"], ids["▁c"]]
    assert tok.encode("cab", add_bos=False) == [ids["▁c"], ids["ab"]]
    assert tok.encode(" a", add_bos=False) == [ids["▁"], ids["▁a"]]
    assert tok.encode("a<tool>b", add_bos=False) == [ids["▁a"], ids["<tool>"], ids["▁"], ids["b"]]
    assert tok.encode("é", add_bos=False) == [ids["▁"], 3 + 0xC3, 3 + 0xA9]  # byte fallback
    assert tok.decode(tok.encode("é ab<tool>")) == "é ab<tool>"
    assert tok.chat_template == "{{ x }}" and tok.special_ids == {0, 1, 2}
    assert stream(tok, tok.encode("a €b", add_bos=False)) == ["a", " ", "", "", "€", "b", ""]


def test_unused_tokens_and_eot_names_and_no_space_prefix():
    meta = tiny_spm_metadata(**{"tokenizer.ggml.add_space_prefix": False})
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + ["<|im_end|>", "[PAD]"]
    meta["tokenizer.ggml.token_type"] = list(meta["tokenizer.ggml.token_type"]) + [3, 5]
    meta["tokenizer.ggml.scores"] = list(meta["tokenizer.ggml.scores"]) + [0.0, 0.0]
    tok = Tokenizer.from_gguf_metadata(meta)
    im_end, pad = tok.vocab_size - 2, tok.vocab_size - 1
    assert tok.eos_ids == {2, im_end}
    assert tok.encode("ab", add_bos=False) == [tok.piece_to_id("ab")]   # no "▁" prepended
    assert tok.decode(tok.encode(" ab")) == " ab"
    assert tok.decode([tok.piece_to_id("a"), pad, im_end]) == "a"


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("change, words", [
    ({"tokenizer.ggml.model": "bert"}, ["'bert'", "tokenizer.json"]),
    ({"tokenizer.ggml.model": None}, ["tokenizer.ggml.model", "tokenizer.json"]),
    ({"tokenizer.ggml.tokens": None}, ["tokenizer.ggml.tokens", "tokenizer.json"]),
    ({"tokenizer.ggml.tokens": []}, ["tokenizer.ggml.tokens"]),
    ({"tokenizer.ggml.scores": [0.0] * 3}, ["tokenizer.ggml.scores", "3 entries"]),
    ({"tokenizer.ggml.bos_token_id": None, "tokenizer.ggml.add_bos_token": True}, None),
])
def test_bad_gguf_metadata(change, words):
    meta = tiny_spm_metadata()
    for key, value in change.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    if words is None:  # a missing bos id falls back to llama.cpp's default (1) for SentencePiece
        assert Tokenizer.from_gguf_metadata(meta).bos_id == 1
        return
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_gguf_metadata(meta)
    for w in words:
        assert w in str(err.value)
    assert isinstance(err.value, LLMStreamError)


def test_bad_gpt2_metadata():
    base = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.pre": "gpt-2"}
    assert Tokenizer.from_gguf_metadata(base).encode("abab") == [2, 2]
    with pytest.raises(TokenizerError, match="tokenizer.ggml.merges"):
        Tokenizer.from_gguf_metadata({k: v for k, v in base.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(TokenizerError, match="could not be built"):
        Tokenizer.from_gguf_metadata(dict(base, **{"tokenizer.ggml.merges": ["a c"]}))
    with pytest.raises(TokenizerError, match="BOS"):
        Tokenizer.from_gguf_metadata(dict(base, **{"tokenizer.ggml.add_bos_token": True}))


def test_bad_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid Hugging Face tokenizer.json"):
        Tokenizer.from_file(bad)
