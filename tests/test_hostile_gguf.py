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
