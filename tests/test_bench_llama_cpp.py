"""llmstream.bench_llama_cpp: llama.cpp's batched decoding as a reference for `llmstream bench
--concurrency` (not a benchmark: no speed is asserted). llama-cpp-python is an optional extra
(`.[bench]`), not installed in CI by default: the tests that need it skip, saying so."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path  # noqa: E402

from llmstream import bench_llama_cpp  # noqa: E402
from llmstream.bench_llama_cpp import batched_decode, prompts_for  # noqa: E402

FIELDS = ("agg_tok_s", "per_stream_tok_s", "ttft_ms_median", "ttft_ms_p95", "itl_ms_median",
          "itl_ms_p95")


def _need_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:
        pytest.skip(f"llama_cpp (llama-cpp-python, the optional '.[bench]' extra) is not "
                    f"importable here ({type(e).__name__}: {e}); install it to run this test")


def test_missing_llama_cpp_is_a_clear_error_and_exit_code_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(ImportError, match="llama-cpp-python"):
        batched_decode("unused.gguf", threads=1, n_seqs=1, n_prompt=4, n_gen=4)
    assert bench_llama_cpp.main(["--model", "unused.gguf"]) == 2
    assert "llama-cpp-python" in capsys.readouterr().err


def test_each_sequence_has_its_own_prompt_independent_of_the_count():
    a, b = prompts_for(3, 8, 1000), prompts_for(1, 8, 1000)
    assert a[0] == b[0] and len({tuple(p) for p in a}) == 3
    assert all(3 <= t < 1000 for p in a for t in p)


def test_batched_decode_figures_and_batched_output_equals_solo():
    _need_llama_cpp()
    path = str(shared_path("reference", "llama-gqa-Q4_0.gguf"))
    solo = batched_decode(path, threads=1, n_seqs=1, n_prompt=8, n_gen=8, return_tokens=True)
    many = batched_decode(path, threads=1, n_seqs=3, n_prompt=8, n_gen=8, return_tokens=True)
    for r, n in ((solo, 1), (many, 3)):
        assert r["n_seqs"] == n and r["threads"] == 1
        for f in FIELDS:
            assert math.isfinite(r[f]) and r[f] > 0, (n, f, r[f])
        assert r["agg_tok_s"] == pytest.approx(n * r["per_stream_tok_s"])
        assert len(r["tokens"]) == n and all(len(t) == 8 + 1 for t in r["tokens"])
    # A sequence's greedy continuation does not depend on what else is in the batch: llama.cpp
    # computes each row of a batch on its own (the KV cache keeps one stream per sequence).
    assert many["tokens"][0] == solo["tokens"][0]
    assert len({tuple(t) for t in many["tokens"]}) > 1  # different prompts, not one copied


def test_main_prints_one_json_line_per_sequence_count(capsys):
    _need_llama_cpp()
    path = str(shared_path("reference", "llama-gqa-Q4_0.gguf"))
    assert bench_llama_cpp.main(["--model", path, "--threads", "1", "--seqs", "1,2",
                                 "--n-prompt", "4", "--n-gen", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["n_seqs"] for r in rows] == [1, 2]
    for r in rows:
        assert r["model"] == path and r["threads"] == 1 and "tokens" not in r
        assert all(r[f] > 0 for f in FIELDS)
