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
