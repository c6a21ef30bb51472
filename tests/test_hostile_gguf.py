"""Hostile or damaged GGUF files get one clear error, fast, never a hang or a traceback."""
import pytest

from llmstream.errors import TokenizerError
from llmstream.tokenizer import MAX_TOKEN_CHARS, Tokenizer


def _spm_metadata(extra_tokens):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "a", "b"]
    tokens += extra_tokens
    n = len(tokens)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * n,
            "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * (n - 259),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}


def test_a_megabyte_token_is_refused_at_once():
    """One 1 MB token used to make loading quadratic (it never ended): now a clear error."""
    with pytest.raises(TokenizerError, match=f"at most {MAX_TOKEN_CHARS}"):
        Tokenizer.from_gguf_metadata(_spm_metadata(["a" * (1 << 20)]))


def test_long_tokens_within_the_bound_load_and_work():
    """Tokens up to the bound, of every length (the worst case for deriving SentencePiece merges),
    still load; a long token is found by the tokenizer."""
    longs = ["a" * k for k in range(2, 200)] + ["ab" * (MAX_TOKEN_CHARS // 2)]
    tok = Tokenizer.from_gguf_metadata(_spm_metadata(longs))
    ids = tok.encode("a" * 150, add_bos=False)
    assert len(ids) <= 2 and tok.decode(ids).strip() == "a" * 150


# ---------------------------------------------------------------------- chat templates from the file

MSGS = [{"role": "user", "content": "Hi"}]
HOSTILE_TEMPLATES = {
    "nested loops that output nothing":
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
    "loops over a prepared list":
        "{% set r = range(99999)|list %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}x",
    "a huge constant repetition": "{{ 'x' * 10**9 }}",
    "a huge power": "{{ 7 ** 100000000 }}",
    "a string doubled by ~": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                             "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "a list grown by +": "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}"
                         "{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_templates_that_break_a_bound_fall_back_to_the_builtin_format(name, caplog):
    """Bounded by time (checked inside loops), by value size (before a value is built) and by
    output: each falls back to the built-in format with a warning, within seconds and without
    allocating the huge value."""
    import time
    import tracemalloc

    from llmstream.prompts import format_messages
    expected = format_messages("llama", MSGS, None, "<s>", "</s>")
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        got = format_messages("llama", MSGS, HOSTILE_TEMPLATES[name], "<s>", "</s>")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == expected
    assert peak < 100 << 20, f"{peak >> 20} MB allocated"
    assert time.monotonic() - t0 < 60            # a bound for a hang, not a speed claim
    assert "falling back" in caplog.text


def test_a_normal_template_still_renders_under_the_bounds():
    from llmstream.prompts import format_messages
    tmpl = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content ~ '!' }}{{ '-' * 3 }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert format_messages("llama", MSGS, tmpl, "<s>", "</s>") == "<|user|>Hi!---<|assistant|>"


# ---------------------------------------------------------------------- metadata of the wrong type

def _config_with(key_suffix, value, name="llama-gqa-Q4_0.gguf"):
    from types import SimpleNamespace

    from conftest import shared_path
    from llmstream.gguf import GGUFFile
    from llmstream.models.config import config_from_gguf
    with GGUFFile(shared_path("reference", name)) as gf:
        arch = gf.metadata["general.architecture"]
        meta = dict(gf.metadata)
        if value is None:
            meta.pop(f"{arch}.{key_suffix}", None)
        else:
            meta[f"{arch}.{key_suffix}"] = value
        return config_from_gguf(SimpleNamespace(metadata=meta, tensors=gf.tensors, path=gf.path))


@pytest.mark.parametrize("key, value, message", [
    ("block_count", -2, "n_layer = -2 is invalid"),
    ("block_count", "2", "should be a number, got str"),
    ("embedding_length", 256.5, "should be a whole number"),
    ("attention.head_count_kv", [2, 2, 4], "list of different values"),
    ("rope.freq_base", float("nan"), "not a finite number"),
    ("rope.freq_base", 0.0, "freq_base. = 0.0 is invalid"),
    ("attention.layer_norm_rms_epsilon", float("inf"), "not a finite number"),
    ("attention.layer_norm_rms_epsilon", 0, "norm_eps = 0.0 is invalid"),
    ("context_length", True, "should be a number, got bool"),
    ("feed_forward_length", None, "is missing"),
])
def test_hyper_parameters_of_the_wrong_type_or_range_get_one_clear_error(key, value, message):
    from llmstream.errors import ModelError
    with pytest.raises(ModelError, match=message):
        _config_with(key, value)


def test_a_per_layer_head_count_kv_with_equal_entries_is_that_value():
    """Some real files store head_count_kv per layer: all equal is the value itself."""
    assert _config_with("attention.head_count_kv", [2, 2]).n_head_kv == 2


@pytest.mark.parametrize("key, value, message", [
    ("tokenizer.ggml.tokens", 7, "should be a list"),
    ("tokenizer.ggml.tokens", [1, 2, 3], "expected a string"),
    ("tokenizer.ggml.bos_token_id", "1", "should be a token id"),
    ("tokenizer.ggml.eos_token_id", [2], "should be a token id"),
    ("tokenizer.ggml.scores", [0.5], "entries for"),
    ("tokenizer.ggml.token_type", "x" * 1000, "should be a list"),
])
def test_vocabulary_metadata_of_the_wrong_type_gets_one_clear_error(key, value, message):
    from conftest import shared_path
    from llmstream.gguf import GGUFFile
    with GGUFFile(shared_path("reference", "llama-gqa-Q4_0.gguf")) as gf:
        meta = dict(gf.metadata)
    meta[key] = value
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_gguf_metadata(meta)


def test_a_vocabulary_larger_than_the_embedding_is_refused():
    """A tokenizer that does not belong to the model (more tokens than embedding rows) would send
    ids the model cannot embed: refused at load with the reason."""
    from conftest import shared_path
    from llmstream.errors import ModelError
    from llmstream.generate import LLM
    with pytest.raises(ModelError, match="does not belong to this model"):
        LLM.load(shared_path("reference", "phi2-Q8_0.gguf"),
                 tokenizer_path=_big_tokenizer_json())


def _big_tokenizer_json():
    import json
    import tempfile
    vocab = {f"t{i}": i for i in range(5000)}
    spec = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
            "pre_tokenizer": {"type": "Whitespace"}}
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(spec, f)
    f.close()
    return f.name


def test_a_tensor_type_llmstream_does_not_compute_is_named_with_the_supported_ones(tmp_path):
    """An IQ3_S tensor (ggml type 21): the error names the type and the types supported."""
    import shutil

    from conftest import shared_path
    from llmstream.errors import GGUFError
    from llmstream.gguf import GGUFFile
    src = shared_path("reference", "llama-gqa-Q4_0.gguf")
    dst = tmp_path / "iq.gguf"
    shutil.copyfile(src, dst)
    data = bytearray(dst.read_bytes())
    name = b"blk.0.attn_q.weight"
    i = data.index(name) + len(name)            # then u32 n_dims, n_dims x u64, u32 type
    n_dims = int.from_bytes(data[i:i + 4], "little")
    t = i + 4 + 8 * n_dims
    assert int.from_bytes(data[t:t + 4], "little") == 2            # Q4_0 today
    data[t:t + 4] = (21).to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"type IQ3_S \(ggml type id 21\).*supports F32.*Q4_K.*IQ4_NL, IQ4_XS"):
        GGUFFile(dst)
