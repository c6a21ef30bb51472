"""The command line, run as users run it (a subprocess)."""
import subprocess
import sys

import numpy as np

from conftest import shared_path


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "llmstream.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


def test_logits_command_matches_llama_cpp_reference(tmp_path):
    ref_dir = shared_path("reference")
    ref = np.load(ref_dir / "reference.npz")
    tokens = np.concatenate([ref["phi2-Q8_0/tokens"], ref["phi2-Q8_0/greedy"][:-1]])
    out = tmp_path / "logits.npy"
    r = run_cli("logits", "--model", ref_dir / "phi2-Q8_0.candle.gguf",
                "--config", ref_dir / "phi2.config.json",
                "--tokens", ",".join(map(str, tokens)), "--prefill", 37, "--out", out)
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    expected = ref["phi2-Q8_0/logits"]
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.sqrt(np.mean(((got - expected) / expected.std()) ** 2)) < 0.03


def test_logits_command_errors_are_one_line(tmp_path):
    r = run_cli("logits", "--model", tmp_path / "missing.gguf", "--tokens", "1,2", "--out",
                tmp_path / "x.npy")
    assert r.returncode == 2
    assert "cannot open the model file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    r = run_cli("logits", "--model", bad, "--tokens", "1", "--out", tmp_path / "x.npy")
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(bad) in r.stderr


def test_generate_streams_the_answer_and_reports_timings():
    model = shared_path("reference", "phi2-Q4_K_M.gguf")
    r = run_cli("generate", "--model", model, "--temperature", "0", "--max-tokens", "12",
                "--context-type", "sql", "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 0
    assert "generated 12 tokens" in r.stderr and "tok/s" in r.stderr
    # greedy is deterministic, and --seed makes sampling reproducible
    again = run_cli("generate", "--model", model, "--temperature", "0", "--max-tokens", "12",
                    "--context-type", "sql", "What is the capital of France?")
    assert again.stdout == r.stdout


def test_generate_errors_are_clear():
    model = shared_path("reference", "phi2-Q4_K_M.candle.gguf")
    r = run_cli("generate", "--model", model, "--config",
                shared_path("reference", "phi2.config.json"), "hi")
    assert r.returncode == 2 and "carries no vocabulary" in r.stderr and "--tokenizer" in r.stderr
    r = run_cli("generate", "--model", shared_path("reference", "phi2-Q4_K_M.gguf"),
                "--top-p", "7", "hi")
    assert r.returncode == 2 and "top_p" in r.stderr and "Traceback" not in r.stderr


def test_tokenize_prints_llama_cpp_ids():
    vocab = shared_path("vocab", "ggml-vocab-llama-spm.gguf")
    r = run_cli("tokenize", "--model", vocab, "--bos", "Hello world")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[1, 15043, 3186]"


def test_help_shows_every_default_and_every_option_has_a_text():
    """`serve --help` and `generate --help` show each option's default (the README says so)."""
    import argparse

    from llmstream.cli import build_parser
    top = build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("serve", "generate", "demo"):
        parser = subs[name]
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help text"
            if action.default not in (None, False, [], argparse.SUPPRESS):
                assert f"default: {action.default}" in text or "default" in action.help, \
                    f"{name} {action.option_strings[0]}: default {action.default!r} not shown"


def test_make_help_lists_every_target_and_variable():
    import re

    from conftest import ROOT
    text = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    for target in set(phony) - {"help", "venv", "smollm2"}:
        assert f"make {target}" in text, target
    for var in ("FEATURE", "HOST", "PORT", "CONTEXT_TYPE", "MODEL_REPO", "MODEL_FILE",
                "TOKENIZER_REPO", "MODEL_PATH", "THREADS", "PYTEST_ARGS"):
        assert f"{var}=" in text, var
