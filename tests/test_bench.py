"""The bench tool itself (not a benchmark: no timings are asserted)."""
import json
import subprocess
import sys

from llmstream.bench import build_model
from llmstream.engine import Model, Session
from llmstream.gguf import GGUFFile


def test_generated_models_have_llama_cpp_type_mixes_and_load(tmp_path):
    for ftype, expect in [("Q4_K_M", {"Q4_K", "Q6_K", "F32"}), ("Q4_0", {"Q4_0", "Q6_K", "F32"}),
                          ("Q8_0", {"Q8_0", "F32"}), ("IQ4_XS", {"IQ4_XS", "Q6_K", "F32"}),
                          ("IQ4_NL", {"IQ4_NL", "Q6_K", "F32"})]:
        path = tmp_path / f"tiny-{ftype}.gguf"
        build_model(path, "tiny", ftype)
        with GGUFFile(path) as g:
            assert {t.type_name for t in g.tensors.values()} == expect
        with Model(path) as m:
            logits = Session(m).prefill([1, 5, 9])
            assert logits.shape == (1000,) and abs(logits).sum() > 0


def test_iq4_xs_mix_of_a_tinyllama_shape_is_llama_cpps():
    """What llama.cpp's quantizer gave (LLAMA_FTYPE_MOSTLY_IQ4_XS, no imatrix) for a 22-layer model with
    GQA 8: output Q6_K, every attn_v Q5_K, ffn_down Q5_K in layers 0-1, the rest IQ4_XS."""
    from llmstream.bench import SHAPES, _tensor_types
    hp = SHAPES["tinyllama"]
    gqa = hp["n_head"] // hp["n_head_kv"]
    mix = {(name, i): _tensor_types("IQ4_XS", name, i, hp["n_layer"], gqa)
           for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
           for i in range(hp["n_layer"])}
    q5 = {k for k, v in mix.items() if v == "Q5_K"}
    assert q5 == {("attn_v", i) for i in range(22)} | {("ffn_down", 0), ("ffn_down", 1)}
    assert {v for k, v in mix.items() if k not in q5} == {"IQ4_XS"}
    assert _tensor_types("IQ4_XS", "output", 0, 22, gqa) == "Q6_K"


def test_bench_refuses_an_unknown_type(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmstream.cli", "bench", "--types", "Q4_0,IQ2_XS",
                        "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unknown IQ2_XS" in r.stderr and "IQ4_XS" in r.stderr


def test_generated_phi2_models_carry_a_usable_bpe_vocabulary(tmp_path):
    """llama.cpp refuses a gpt2 vocabulary without merges: the phi2 shapes write some, and the
    file loads and tokenizes here too."""
    from llmstream.tokenizer import Tokenizer

    path = tmp_path / "tiny-phi2-Q4_0.gguf"
    build_model(path, "tiny-phi2", "Q4_0")
    with GGUFFile(path) as g:
        assert g.metadata["tokenizer.ggml.merges"]
        tok = Tokenizer.from_gguf_metadata(g.metadata)
    assert tok.encode("t1 t2", add_bos=False)
    with Model(path) as m:
        assert m.config.arch == "phi2" and abs(Session(m).prefill([1, 5, 9])).sum() > 0


def test_bench_command_prints_a_json_row_per_type(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmstream.cli", "bench", "--shape", "tiny",
                        "--types", "Q4_0,Q8_0", "--pp", "8", "--tg", "4", "--runs", "1",
                        "--threads", "1", "--no-llama-cpp", "--cache-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert [row["type"] for row in rows] == ["Q4_0", "Q8_0"]
    for row in rows:
        assert row["pp_tok_s"] > 0 and row["tg_tok_s"] > 0 and row["rss_mb"] > 0
        assert row["pp_ratio"] is None  # no llama.cpp measured
        assert row["read_gb_s"] > 0
        # tg x file size / bandwidth, from the row's own figures
        size = (tmp_path / f"tiny-{row['type']}.gguf").stat().st_size
        assert abs(row["tg_roofline"] - row["tg_tok_s"] * size / (row["read_gb_s"] * 1e9)) < 0.01
    assert "tiny-Q4_0" in r.stdout and "ratio" in r.stdout and "tg BW%" in r.stdout
    assert "GB/s streaming read" in r.stderr


def test_the_bandwidth_probe_reads_the_whole_buffer_on_any_thread_count():
    from llmstream import _ops
    for threads in (1, 2, 3):
        gb_s = _ops.read_bandwidth(nbytes=(8 << 20) + 24, repeats=1, threads=threads)
        assert 0.1 < gb_s < 10_000


def _bench(tmp_path, *args):
    r = subprocess.run([sys.executable, "-m", "llmstream.cli", "bench", "--shape", "tiny",
                        "--types", "Q4_0", "--runs", "1", "--threads", "1", "--no-llama-cpp",
                        "--cache-dir", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r, [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def test_bench_concurrency_prints_a_row_per_stream_count(tmp_path):
    r, rows = _bench(tmp_path, "--concurrency", "1,3", "--tg", "6", "--contention", "1")
    assert [row["n_seqs"] for row in rows] == [1, 3]
    assert rows[0]["agg_ratio_vs_1"] == 1.0
    for row in rows:
        assert row["agg_tok_s"] > 0 and row["per_stream_tok_s"] > 0
        assert 0 < row["ttft_ms_median"] <= row["ttft_ms_p95"]
        assert 0 < row["itl_ms_median"] <= row["itl_ms_p95"]
        assert row["llama_cpp_agg_tok_s"] is None       # not measured here
    assert "SIMD:" in r.stderr and "1 busy-loop" in r.stderr


def test_bench_latency_measures_prewarmed_ttft_and_itl_beside_a_long_prefill(tmp_path):
    _, rows = _bench(tmp_path, "--latency", "--long-prompt", "120")
    (row,) = rows
    assert row["prewarmed_tokens"] > 0 and row["cached_tokens"] > 0
    assert row["cached_tokens"] < row["prompt_tokens"]
    assert row["ttft_ms_prewarmed"] > 0 and row["ttft_ms_no_prefix_cache"] > 0
    assert row["prefill_s"] > 0 and row["itl_p95_during_over_median"] > 0


def test_busy_loops_run_at_the_niceness_asked_and_stop():
    """--contention K --contention-nice N: K busy processes at nice N beside the engines, gone after."""
    import os

    from llmstream.bench import busy_loops
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with busy_loops(2, 19) as b:
        assert len(b.procs) == 2
        assert all(os.getpriority(os.PRIO_PROCESS, p.pid) == min(19, base + 19) for p in b.procs)
        assert all(p.poll() is None for p in b.procs)
    assert all(p.poll() is not None for p in b.procs)
    with busy_loops(1) as b:
        assert os.getpriority(os.PRIO_PROCESS, b.procs[0].pid) == base
