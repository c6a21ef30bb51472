"""llmstream.demo: the locally built demo model (random weights, embedded byte-level BPE vocabulary)."""
import os

import pytest

from llmstream import demo
from llmstream.generate import LLM
from llmstream.sampling import SamplingParams

ENGLISH = ("The quick brown fox jumps over the lazy dog. Streaming servers send each word as soon "
           "as it is ready!\n  Numbers: 3.14, 42; quotes \"like this\" and it's fine.")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo-phi2.gguf"
    assert demo.build_demo_model(path) == path
    return path


@pytest.fixture(scope="module")
def llm(built):
    m = LLM.load(built, threads=1)   # one thread: fast and immune to a busy machine
    yield m
    m.close()


def test_build_writes_a_valid_file_once_and_then_reuses_it(built):
    assert demo.is_demo_model(built)
    assert [p.name for p in built.parent.iterdir()] == [built.name]   # no temporary file left
    before = built.stat().st_mtime_ns
    assert demo.build_demo_model(built) == built
    assert built.stat().st_mtime_ns == before


def test_build_is_deterministic_and_replaces_a_damaged_file(built, tmp_path):
    other = tmp_path / "demo.gguf"
    other.write_bytes(built.read_bytes()[:1000])     # truncated: not a valid demo model
    assert not demo.is_demo_model(other)
    demo.build_demo_model(other)
    assert other.read_bytes() == built.read_bytes()


def test_default_location_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo.default_demo_path() == tmp_path / "llmstream" / "demo" / "demo-phi2.gguf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo.default_demo_path() == \
        demo.Path(os.path.expanduser("~")) / ".cache" / "llmstream" / "demo" / "demo-phi2.gguf"


def test_the_model_is_a_small_phi2_with_an_embedded_gpt2_vocabulary(llm):
    c = llm.model.config
    assert (c.arch, c.layout, c.n_layer) == ("phi2", "llama.cpp", demo.HPARAMS["n_layer"])
    assert c.n_ctx_train == 2048 and c.n_rot < c.head_dim
    tok = llm.tokenizer
    assert tok.kind == "gpt2" and 1000 <= tok.vocab_size <= demo.HPARAMS["vocab_size"]
    eot = tok.piece_to_id("<|endoftext|>")
    assert eot == tok.eos_id == tok.bos_id and tok.is_silent(eot) and not tok.add_bos


def test_tokenizer_round_trips_english(llm):
    tok = llm.tokenizer
    for text in (ENGLISH, demo.CORPUS[:500], "naïve café — ünïcödé ✓ 日本語"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # the merges were learnt: corpus words are single tokens, English text needs far fewer tokens than bytes
    assert len(tok.encode(" river")) == 1
    assert len(tok.encode(ENGLISH)) < len(ENGLISH.encode()) / 2


def test_greedy_generation_is_repeatable_and_not_empty(llm):
    params = SamplingParams(temperature=0.0, max_tokens=20)
    runs = []
    for _ in range(2):
        g = llm.generate("What is the capital of France?", params=params)
        runs.append(("".join(g), list(g.tokens)))
        assert g.stats.completion_tokens > 0
    assert runs[0] == runs[1]
    text = runs[0][0]
    assert text.strip() and "\ufffd" not in text
