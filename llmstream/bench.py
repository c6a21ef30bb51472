"""`llmstream bench`: prompt processing (pp) and generation (tg) speed, peak RSS and load time on a
random-weight model of a real shape, side by side with llama.cpp (llama-cpp-python) on the very same
files with the same thread count, in the same run, when `llama_cpp` is importable.

The models are generated once and cached outside the repository (default ~/.cache/llmstream/bench).
Random weights are written directly as valid quantized blocks (random quants, small finite scales):
speed does not depend on the values, and no float model of 1-3 GB has to be quantized first. The
tensor-type mixes follow llama.cpp's quantizer (Q4_K_M: Q6_K for output, half the attn_v/ffn_down;
IQ4_XS / IQ4_NL: Q6_K output, Q5_K attn_v under GQA and ffn_down in the first eighth of the layers).

Each engine is measured in its own subprocess, so peak RSS is its own.

`--concurrency 1,2,4,8` measures many streams at once instead: for each N, N requests with
different prompts submitted together to llmstream's scheduler (the server's generation layer: one
batched forward per step over the paged KV pool; prefix cache off), each generating tg + 1 greedy
tokens; beside it llama.cpp's own batched decoding of N sequences on the same file and thread count
(bench_llama_cpp.py: one llama_decode per step). Figures: aggregate generated tok/s, per-stream
tok/s, median / p95 time to first token and inter-token latency, and the ratios to N = 1 and to
llama.cpp.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {
    "tinyllama": dict(arch="llama", n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632,
                      n_vocab=32000, n_ctx=2048),
    # a small shape for smoke tests of the tool itself
    "tiny": dict(arch="llama", n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512,
                 n_vocab=1000, n_ctx=256),
    # big enough that every matmul, decode included, runs on several threads (tests/test_threads.py)
    "small": dict(arch="llama", n_embd=1024, n_layer=2, n_head=8, n_head_kv=2, n_ff=2816,
                  n_vocab=2000, n_ctx=512),
    "small-phi2": dict(arch="phi2", n_embd=1024, n_layer=2, n_head=8, n_head_kv=8, n_ff=4096,
                       n_vocab=2000, n_ctx=512, n_rot=32),
    "tiny-phi2": dict(arch="phi2", n_embd=256, n_layer=2, n_head=4, n_head_kv=4, n_ff=512,
                      n_vocab=1000, n_ctx=256, n_rot=32),
    "phi2": dict(arch="phi2", n_embd=2560, n_layer=32, n_head=32, n_head_kv=32, n_ff=10240,
                 n_vocab=51200, n_ctx=2048, n_rot=32),
}
# the byte offsets of the fp16 scale fields inside one block of the types the bench writes (ids
# and block sizes come from the type table, csrc/types.c)
SCALE_OFFSETS = {"F32": (), "F16": (), "Q4_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,),
                 "Q5_K": (0, 2), "IQ4_NL": (0,), "IQ4_XS": (0,)}
# the --types (llama.cpp file types) build_model can write
FTYPES = ("Q4_K_M", "Q4_0", "Q8_0", "IQ4_XS", "IQ4_NL")


def _tensor_types(ftype: str, name: str, layer: int, n_layer: int, n_gqa: int = 1) -> str:
    if ftype == "Q8_0":
        return "Q8_0"
    if ftype == "Q4_0":
        return "Q6_K" if name == "output" else "Q4_0"
    if ftype in ("IQ4_XS", "IQ4_NL"):
        # llama.cpp without an imatrix: output Q6_K; attn_v Q5_K with GQA >= 4, ffn_down Q5_K in
        # the first eighth of the layers; the rest (token_embd too) the file type
        if name == "output":
            return "Q6_K"
        if (name == "attn_v" and n_gqa >= 4) or (name == "ffn_down" and layer < n_layer // 8):
            return "Q5_K"
        return ftype
    # Q4_K_M (llama.cpp): output Q6_K; attn_v and ffn_down Q6_K on "more bits" layers
    if name == "output":
        return "Q6_K"
    if name in ("attn_v", "ffn_down"):
        more = layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2
        return "Q6_K" if more else "Q4_K"
    return "Q4_K"


def _random_blocks(rng, type_name: str, n_rows: int, n_in: int) -> np.ndarray:
    from . import _ops
    blck, size, _ = _ops.type_info(_ops.TYPE_IDS[type_name])
    scale_offsets = SCALE_OFFSETS[type_name]
    if type_name == "F32":
        return (rng.standard_normal((n_rows, n_in), dtype=np.float32) * 0.02)
    nb = n_in // blck
    data = rng.integers(0, 256, size=(n_rows, nb, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    for off in scale_offsets:
        data[:, :, off:off + 2] = scale
    return data.reshape(n_rows, nb * size)


def add_hparams(w, hp: dict):
    """The architecture keys of a random-weight model (bench shapes, the demo model) on a GGUFWriter."""
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp.get("n_head_kv", hp["n_head"]))
    w.add_rope_dimension_count(hp.get("n_rot", hp["n_embd"] // hp["n_head"]))
    w.add_rope_freq_base(10000.0)


def build_model(path: Path, shape: str, ftype: str, seed: int = 0):
    """Write a random-weight GGUF (llama.cpp layout, with a placeholder SentencePiece vocab)."""
    import gguf

    hp = SHAPES[shape]
    rng = np.random.default_rng(seed)
    arch, E, L, F, V = hp["arch"], hp["n_embd"], hp["n_layer"], hp["n_ff"], hp["n_vocab"]
    hd = E // hp["n_head"]
    KV = hd * hp["n_head_kv"]
    tmp = path.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(f"random-{shape}-{ftype}")
    add_hparams(w, hp)
    if arch == "llama":
        w.add_layer_norm_rms_eps(1e-5)
        w.add_tokenizer_model("llama")
        toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
        toks += [f"▁t{i}" for i in range(V - len(toks))]
        w.add_token_list(toks)
        w.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(V - 259)])
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    else:
        w.add_layer_norm_eps(1e-5)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        byte_chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + \
            [chr(c) for c in range(174, 256)]
        extra = [chr(256 + i) for i in range(256 - len(byte_chars))]
        toks = byte_chars + extra
        toks += [f"t{i}" for i in range(V - len(toks))]
        w.add_token_list(toks)
        w.add_token_types([1] * V)
        w.add_token_merges([f"t {i}" for i in range(10)])   # llama.cpp refuses a BPE vocab without merges
        w.add_bos_token_id(V - 1)
        w.add_eos_token_id(V - 1)

    def add(name, type_name, n_rows, n_in):
        data = _random_blocks(rng, type_name, n_rows, n_in)
        if type_name == "F32":
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data,
                         raw_dtype=gguf.GGMLQuantizationType[type_name])

    ones = lambda n: np.ones(n, np.float32)
    emb_type = ftype if ftype in ("Q8_0", "Q4_0", "IQ4_XS", "IQ4_NL") else "Q4_K"
    n_gqa = hp["n_head"] // hp["n_head_kv"]
    add("token_embd.weight", emb_type, V, E)
    w.add_tensor("output_norm.weight", ones(E))
    if arch == "phi2":
        w.add_tensor("output_norm.bias", np.zeros(E, np.float32))
        w.add_tensor("output.bias", np.zeros(V, np.float32))
    add("output.weight", _tensor_types(ftype, "output", 0, L, n_gqa), V, E)
    for i in range(L):
        p = f"blk.{i}."
        t = lambda n: _tensor_types(ftype, n, i, L, n_gqa)
        w.add_tensor(p + "attn_norm.weight", ones(E))
        if arch == "llama":
            add(p + "attn_q.weight", t("attn_q"), E, E)
            add(p + "attn_k.weight", t("attn_k"), KV, E)
            add(p + "attn_v.weight", t("attn_v"), KV, E)
            add(p + "attn_output.weight", t("attn_output"), E, E)
            w.add_tensor(p + "ffn_norm.weight", ones(E))
            add(p + "ffn_gate.weight", t("ffn_gate"), F, E)
            add(p + "ffn_up.weight", t("ffn_up"), F, E)
        else:
            w.add_tensor(p + "attn_norm.bias", np.zeros(E, np.float32))
            add(p + "attn_qkv.weight", t("attn_q"), E + 2 * KV, E)
            w.add_tensor(p + "attn_qkv.bias", np.zeros(E + 2 * KV, np.float32))
            add(p + "attn_output.weight", t("attn_output"), E, E)
            w.add_tensor(p + "attn_output.bias", np.zeros(E, np.float32))
            add(p + "ffn_up.weight", t("ffn_up"), F, E)
            w.add_tensor(p + "ffn_up.bias", np.zeros(F, np.float32))
            w.add_tensor(p + "ffn_down.bias", np.zeros(E, np.float32))
        add(p + "ffn_down.weight", t("ffn_down"), E, F)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def model_path(cache: Path, shape: str, ftype: str) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    # "-v2": phi2-architecture files written before their vocabulary had merges (which llama.cpp
    # refuses to load) are not reused
    p = cache / f"{shape}-{ftype}{'' if SHAPES[shape]['arch'] == 'llama' else '-v2'}.gguf"
    if not p.exists():
        print(f"generating {p} (once) ...", file=sys.stderr, flush=True)
        build_model(p, shape, ftype)
    return p


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_runs(reset, prefill, decode, prompt, n_tg: int, runs: int) -> tuple[float, float]:
    """Median pp and tg tok/s: reset, evaluate the prompt in one batch, then n_tg single tokens
    (the same token every step, for both engines)."""
    pp, tg = [], []
    prefill(prompt[:8])  # warm-up: page the weights in, start the thread pool
    for _ in range(runs):
        reset()
        t0 = time.perf_counter()
        prefill(prompt)
        pp.append(len(prompt) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(n_tg):
            decode(5)
        tg.append(n_tg / (time.perf_counter() - t0))
    return statistics.median(pp), statistics.median(tg)


def worker_ours(path: str, threads: int, n_pp: int, n_tg: int, runs: int) -> dict:
    from .engine import Model, Session

    t0 = time.perf_counter()
    m = Model(path, ctx_size=n_pp + n_tg + 8, threads=threads)
    s = Session(m)
    load_s = time.perf_counter() - t0
    prompt = np.random.default_rng(0).integers(3, m.n_vocab, n_pp).astype(np.int32)
    pp, tg = _timed_runs(s.reset, s.prefill, s.decode_step, prompt, n_tg, runs)
    return dict(pp_tok_s=pp, tg_tok_s=tg, rss_mb=_peak_rss_mb(), load_s=load_s)


def worker_concurrency(path: str, threads: int, seqs: list[int], n_prompt: int, n_gen: int,
                       runs: int) -> list[dict]:
    """N streams at once through the scheduler, for each N in seqs (see the module doc): N prompts
    of n_prompt tokens submitted together, n_gen + 1 greedy tokens each (the first from the prompt,
    then n_gen decode steps, as bench_llama_cpp counts them)."""
    import threading

    from .bench_llama_cpp import _pct, prompts_for
    from .engine import Model
    from .sampling import SamplingParams
    from .scheduler import Request, Scheduler

    n_max = max(seqs)
    m = Model(path, ctx_size=n_prompt + n_gen + 16, threads=threads, n_logits=max(16, n_max))
    sched = Scheduler(m, n_tokens=n_max * (n_prompt + n_gen + 16), parallel=n_max,
                      prefix_cache=False)
    params = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=n_gen + 1)

    def one_run(n: int, n_tokens: int):
        done = threading.Semaphore(0)
        sink = lambda kind, value: done.release() if kind != "piece" else None
        reqs = [Request(ids=p, params=params, max_new=n_tokens, sink=sink,
                        cancel=threading.Event(), times=[])
                for p in prompts_for(n, n_prompt, m.n_vocab)]
        t0 = time.perf_counter()
        for r in reqs:
            sched.submit(r)
        for _ in reqs:
            done.acquire()
        ttft = [r.times[0] - t0 for r in reqs]
        itl = [b - a for r in reqs for a, b in zip(r.times, r.times[1:])]
        first, last = min(r.times[0] for r in reqs), max(r.times[-1] for r in reqs)
        agg = sum(len(r.times) - 1 for r in reqs) / (last - first)
        per = statistics.median((len(r.times) - 1) / (r.times[-1] - r.times[0]) for r in reqs)
        return ttft, itl, agg, per

    try:
        one_run(1, 4)      # warm-up: page the weights in, start the thread pool
        out = []
        for n in seqs:
            ttft_all, itl_all, agg, per = [], [], [], []
            for _ in range(runs):
                t, i, a, p = one_run(n, n_gen + 1)
                ttft_all += t
                itl_all += i
                agg.append(a)
                per.append(p)
            out.append(dict(n_seqs=n, agg_tok_s=statistics.median(agg),
                            per_stream_tok_s=statistics.median(per),
                            ttft_ms_median=_pct(ttft_all, 50) * 1e3,
                            ttft_ms_p95=_pct(ttft_all, 95) * 1e3,
                            itl_ms_median=_pct(itl_all, 50) * 1e3,
                            itl_ms_p95=_pct(itl_all, 95) * 1e3))
        return out
    finally:
        sched.close()
        m.close()


def worker_latency(path: str, threads: int, runs: int, n_long: int = 1000) -> dict:
    """Two latency figures of the server's generation layer (see main's --latency):
    - TTFT of short questions with the context prompt pre-warmed, and with the prefix cache off;
    - the inter-token latency of 3 running streams while an n_long-token prompt is prefilled beside
      them: p95 during the prefill against the streams' median without it (16 tokens before and
      16 after)."""
    import threading

    from .bench_llama_cpp import _pct, prompts_for
    from .generate import LLM
    from .sampling import SamplingParams
    from .scheduler import Request

    out = {}
    ttft = {}
    for cache in (True, False):
        llm = LLM.load(path, threads=threads, parallel=4, prefix_cache=cache)
        try:
            warm = llm.prewarm(["general"]) if cache else 0
            llm.generate("Hi", params=SamplingParams(max_tokens=2)).text()   # warm-up
            times = []
            for i in range(max(3, runs)):
                g = llm.generate(f"Question {i}: where is Paris?", context_type="general",
                                 params=SamplingParams(temperature=0, max_tokens=1))
                g.text()
                times.append(g.stats.ttft_s)
            ttft[cache] = statistics.median(times)
            if cache:
                out["prewarmed_tokens"] = warm
                out["prompt_tokens"] = g.stats.prompt_tokens
                out["cached_tokens"] = g.stats.cached_tokens
        finally:
            llm.close()
    out.update(ttft_ms_prewarmed=ttft[True] * 1e3, ttft_ms_no_prefix_cache=ttft[False] * 1e3,
               ttft_ratio=ttft[True] / ttft[False])

    llm = LLM.load(path, threads=threads, parallel=4, prefix_cache=False, ctx_size=4096)
    try:
        sched, n_vocab = llm.scheduler, llm.model.n_vocab
        greedy = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=10 ** 6)
        done = threading.Semaphore(0)
        sink = lambda kind, value: done.release() if kind != "piece" else None
        streams = [Request(ids=p, params=greedy, max_new=llm.n_ctx - 16, sink=sink,
                           cancel=threading.Event(), times=[])
                   for p in prompts_for(3, 16, n_vocab)]
        for r in streams:
            sched.submit(r)
        while min(len(r.times) for r in streams) < 17:
            time.sleep(0.01)
        long_done = threading.Event()
        long = Request(ids=prompts_for(1, n_long, n_vocab, seed=1)[0], params=greedy, max_new=1,
                       sink=lambda kind, value: long_done.set() if kind != "piece" else None,
                       cancel=threading.Event(), times=[])
        t_submit = time.perf_counter()
        sched.submit(long)
        long_done.wait()
        t_end = long.times[0]
        target = max(len(r.times) for r in streams) + 16    # as many steps after the prefill
        while min(len(r.times) for r in streams) < target:
            time.sleep(0.01)
        for r in streams:
            r.cancel.set()
        for _ in streams:
            done.acquire()
        gaps = [(b, b - a) for r in streams for a, b in zip(r.times, r.times[1:])]
        during = [g for t, g in gaps if t_submit < t <= t_end + 1e-9]
        alone = [g for t, g in gaps if t <= t_submit or t > t_end + 1e-9]
        out.update(prefill_s=t_end - t_submit, itl_ms_median=_pct(alone, 50) * 1e3,
                   itl_ms_median_during_prefill=_pct(during, 50) * 1e3,
                   itl_ms_p95_during_prefill=_pct(during, 95) * 1e3,
                   itl_p95_during_over_median=_pct(during, 95) / _pct(alone, 50))
    finally:
        llm.close()
    return out


def worker_llama_cpp(path: str, threads: int, n_pp: int, n_tg: int, runs: int) -> dict:
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_pp + n_tg + 8, n_batch=512, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - t0
    prompt = [int(t) for t in np.random.default_rng(0).integers(3, llm.n_vocab(), n_pp)]
    pp, tg = _timed_runs(llm.reset, llm.eval, lambda t: llm.eval([t]), prompt, n_tg, runs)
    return dict(pp_tok_s=pp, tg_tok_s=tg, rss_mb=_peak_rss_mb(), load_s=load_s)


def _run_worker(engine: str, path: Path, args) -> dict | list | None:
    if engine == "llama_cpp_batched":
        cmd = [sys.executable, "-m", "llmstream.bench_llama_cpp", "--model", str(path),
               "--threads", str(args.threads), "--seqs", args.concurrency,
               "--n-prompt", str(args.conc_prompt), "--n-gen", str(args.tg), "--runs", str(args.runs)]
    else:
        cmd = [sys.executable, "-m", "llmstream.bench", "--worker", engine, "--worker-model",
               str(path), "--threads", str(args.threads), "--pp", str(args.pp), "--tg", str(args.tg),
               "--runs", str(args.runs), "--concurrency", args.concurrency or "",
               "--conc-prompt", str(args.conc_prompt), "--long-prompt", str(args.long_prompt)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with busy_loops(args.contention, args.contention_nice):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(f"{engine} failed on {path.name}:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    lines = [json.loads(line) for line in r.stdout.strip().splitlines() if line[:1] in "{["]
    return lines if engine == "llama_cpp_batched" else lines[-1]


class busy_loops:
    """Context manager: k processes that each keep a core busy (a pure-Python loop), started and
    stopped by the bench, to measure both engines on a machine that is not theirs alone."""

    def __init__(self, k: int, nice: int = 0):
        self.k, self.nice, self.procs = max(0, int(k or 0)), int(nice or 0), []

    def __enter__(self):
        lower = (lambda: os.nice(self.nice)) if self.nice else None
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lower)
                      for _ in range(self.k)]
        if self.procs:
            time.sleep(0.2)          # let them start spinning
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def simd_report() -> str:
    """The CPU's SIMD level and the kernels llmstream chose for it."""
    from . import _ops
    from .engine import repack_by_default
    if _ops.get_simd() == _ops.SIMD_SCALAR:
        return ("SIMD: scalar kernels (" + ("LLMSTREAM_SIMD=scalar" if _ops.cpu_has_avx2() else
                                            "the CPU lacks AVX2/FMA/F16C") + ")")
    if _ops.get_simd() == _ops.SIMD_AVX512:
        level = ("SIMD: AVX-512 VNNI (batch and decode matmuls of Q4_0/Q8_0/Q4_K/Q6_K on the AVX-512 "
                 "kernels, AVX2 for the rest; LLMSTREAM_AVX512=0 for AVX2 only)")
    else:
        level = "SIMD: AVX2/FMA kernels (" + ("LLMSTREAM_AVX512=0" if _ops.cpu_has_avx512() else
                                              "the CPU has no AVX-512 VNNI") + ")"
    x8 = " / ".join(name for t, name in sorted(_ops.TYPE_NAMES.items())
                    if _ops.repack_type(t) >= 0 and not _ops.matmul_uses_avx512(t))
    packed = (f"; {x8} weights repacked at load, 8 rows interleaved (LLMSTREAM_REPACK=0 keeps "
              "the file's layout)" if repack_by_default() else "; weights in the file's layout")
    return level + packed


def have_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
        return True
    except Exception:
        return False


def physical_cores() -> int:
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        return max(1, len(cores)) if cores else os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="llmstream bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama")
    p.add_argument("--types", default="Q4_K_M,Q4_0,Q8_0",
                   help=f"llama.cpp file types, comma-separated, of: {', '.join(FTYPES)}")
    p.add_argument("--threads", type=int, default=physical_cores())
    p.add_argument("--pp", type=int, default=128, help="prompt tokens evaluated in one batch")
    p.add_argument("--tg", type=int, default=64, help="tokens generated one at a time")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache",
                                                       "llmstream", "bench"))
    p.add_argument("--no-llama-cpp", action="store_true", help="measure llmstream only")
    p.add_argument("--contention", type=int, default=0, metavar="K",
                   help="run K busy-loop processes beside each engine while it is measured")
    p.add_argument("--contention-nice", type=int, default=0, metavar="N",
                   help="run the --contention processes at nice N (e.g. 19: background jobs)")
    p.add_argument("--concurrency", metavar="N,N,...",
                   help="measure N streams at once for each N (e.g. 1,2,4,8) instead of pp/tg; "
                        "--tg is each stream's answer length")
    p.add_argument("--conc-prompt", type=int, default=16,
                   help="prompt tokens of each stream with --concurrency (default 16)")
    p.add_argument("--latency", action="store_true",
                   help="measure the time to first token with a pre-warmed context prompt against "
                        "--no-prefix-cache, and the streams' inter-token latency while a "
                        "long prompt (--long-prompt tokens) is prefilled beside them")
    p.add_argument("--long-prompt", type=int, default=1000,
                   help="tokens of the long prompt with --latency (default 1000)")
    p.add_argument("--worker", choices=["ours", "llama_cpp", "ours_concurrency", "ours_latency"],
                   help=argparse.SUPPRESS)
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from . import _ops
    if _ops.simd_emulated():
        p.error("this build's AVX-512 kernels are emulated (built with LLMSTREAM_EMULATE_AVX512=1, "
                "for tests only) and far slower than real ones: rebuild with `make build` to measure")
    unknown = [t for t in args.types.split(",") if t.strip() and t.strip() not in FTYPES]
    if unknown:
        p.error(f"--types: unknown {', '.join(unknown)}; choose from {', '.join(FTYPES)}")

    seqs = None
    if args.concurrency:
        try:
            seqs = [int(x) for x in args.concurrency.split(",") if x.strip()]
        except ValueError:
            seqs = []
        if not seqs or min(seqs) < 1:
            p.error(f"--concurrency takes positive numbers separated by commas, got {args.concurrency!r}")
    if args.worker == "ours_latency":
        print(json.dumps(worker_latency(args.worker_model, args.threads, args.runs,
                                        args.long_prompt)))
        return 0
    if args.worker == "ours_concurrency":
        print(json.dumps(worker_concurrency(args.worker_model, args.threads, seqs, args.conc_prompt,
                                            args.tg, args.runs)))
        return 0
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_llama_cpp
        print(json.dumps(fn(args.worker_model, args.threads, args.pp, args.tg, args.runs)))
        return 0

    print(simd_report() + (f"; {args.contention} busy-loop process(es)"
                           + (f" at nice {args.contention_nice}" if args.contention_nice else "")
                           + " beside each engine" if args.contention else ""), file=sys.stderr, flush=True)
    compare = not args.no_llama_cpp and have_llama_cpp()
    if not compare and not args.no_llama_cpp:
        print("llama_cpp is not installed: printing llmstream's figures only. For the side-by-side "
              "comparison: .venv/bin/pip install -e '.[bench]' (builds llama-cpp-python from "
              "source, ~12 minutes on 2 cores)", file=sys.stderr)
    if args.latency:
        for ftype, path in _model_files(args):
            r = _run_worker("ours_latency", path, args)
            if r is not None:
                print(json.dumps(dict(shape=args.shape, type=ftype, threads=args.threads,
                                      **{k: round(v, 3) for k, v in r.items()})), flush=True)
        return 0
    if seqs:
        return _concurrency_main(args, seqs, compare)
    from . import _ops
    bw = _ops.read_bandwidth(threads=args.threads)
    print(f"memory: {bw:.1f} GB/s streaming read with {args.threads} threads (the roofline of a "
          "decode step that reads every weight once)", file=sys.stderr, flush=True)
    rows = []
    for ftype, path in _model_files(args):
        ours = _run_worker("ours", path, args)
        if ours is None:
            continue
        ref = _run_worker("llama_cpp", path, args) if compare else None
        row = dict(shape=args.shape, type=ftype, threads=args.threads,
                   file_mb=round(path.stat().st_size / 2 ** 20, 1),
                   pp_tok_s=round(ours["pp_tok_s"], 2), tg_tok_s=round(ours["tg_tok_s"], 2),
                   rss_mb=round(ours["rss_mb"], 1), load_s=round(ours["load_s"], 3),
                   read_gb_s=round(bw, 2),
                   tg_roofline=round(ours["tg_tok_s"] * path.stat().st_size / (bw * 1e9), 3),
                   llama_cpp_pp_tok_s=None, llama_cpp_tg_tok_s=None, pp_ratio=None, tg_ratio=None)
        if ref:
            row.update(llama_cpp_pp_tok_s=round(ref["pp_tok_s"], 2),
                       llama_cpp_tg_tok_s=round(ref["tg_tok_s"], 2),
                       llama_cpp_rss_mb=round(ref["rss_mb"], 1),
                       llama_cpp_tg_roofline=round(ref["tg_tok_s"] * path.stat().st_size / (bw * 1e9), 3),
                       pp_ratio=round(ours["pp_tok_s"] / ref["pp_tok_s"], 3),
                       tg_ratio=round(ours["tg_tok_s"] / ref["tg_tok_s"], 3))
        rows.append(row)
        print(json.dumps(row), flush=True)

    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)
    print(f"\n{'model':<18} {'file MB':>8} {'pp tok/s':>9} {'llama.cpp':>9} {'ratio':>6} "
          f"{'tg tok/s':>9} {'llama.cpp':>9} {'ratio':>6} {'tg BW%':>6} {'RSS MB':>7} {'load s':>7}")
    for r in rows:
        print(f"{r['shape'] + '-' + r['type']:<18} {r['file_mb']:>8.1f} {r['pp_tok_s']:>9.2f} "
              f"{fmt(r['llama_cpp_pp_tok_s']):>9} {fmt(r['pp_ratio']):>6} {r['tg_tok_s']:>9.2f} "
              f"{fmt(r['llama_cpp_tg_tok_s']):>9} {fmt(r['tg_ratio']):>6} "
              f"{100 * r['tg_roofline']:>6.0f} {r['rss_mb']:>7.1f} {r['load_s']:>7.3f}")
    print(f"threads: {args.threads}; pp = {args.pp}-token prompt in one batch, tg = {args.tg} tokens "
          f"one at a time, median of {args.runs} runs; tg BW% = tg x file size / the {bw:.1f} GB/s "
          "streaming read measured here")
    return 0


def _model_files(args):
    """(type, path) of the bench model of each of --types (generated once, then cached)."""
    for ftype in [t.strip() for t in args.types.split(",") if t.strip()]:
        yield ftype, model_path(Path(args.cache_dir), args.shape, ftype)


def _concurrency_main(args, seqs: list[int], compare: bool) -> int:
    """--concurrency: one JSON line per type and N, then a table."""
    rows = []
    for ftype, path in _model_files(args):
        ours = _run_worker("ours_concurrency", path, args)
        if ours is None:
            continue
        ref = {r["n_seqs"]: r for r in (_run_worker("llama_cpp_batched", path, args) or [])} \
            if compare else {}
        base = next((o["agg_tok_s"] for o in ours if o["n_seqs"] == 1), None)
        ref_base = ref.get(1, {}).get("agg_tok_s")
        for o in ours:
            n, r = o["n_seqs"], ref.get(o["n_seqs"])
            row = dict(shape=args.shape, type=ftype, threads=args.threads, n_seqs=n,
                       **{k: round(v, 3) for k, v in o.items() if k != "n_seqs"},
                       agg_ratio_vs_1=round(o["agg_tok_s"] / base, 3) if base else None,
                       llama_cpp_agg_tok_s=round(r["agg_tok_s"], 3) if r else None,
                       llama_cpp_agg_ratio_vs_1=(round(r["agg_tok_s"] / ref_base, 3)
                                                 if r and ref_base else None),
                       llama_cpp_ttft_ms_median=round(r["ttft_ms_median"], 3) if r else None,
                       llama_cpp_itl_ms_median=round(r["itl_ms_median"], 3) if r else None,
                       agg_ratio_vs_llama_cpp=round(o["agg_tok_s"] / r["agg_tok_s"], 3) if r else None)
            rows.append(row)
            print(json.dumps(row), flush=True)
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)
    print(f"\n{'model':<18} {'N':>3} {'agg tok/s':>9} {'vs N=1':>6} {'per-stream':>10} "
          f"{'TTFT ms':>8} {'p95':>7} {'ITL ms':>7} {'p95':>7} {'llama.cpp':>9} {'vs N=1':>6} "
          f"{'ratio':>6}")
    for r in rows:
        print(f"{r['shape'] + '-' + r['type']:<18} {r['n_seqs']:>3} {r['agg_tok_s']:>9.2f} "
              f"{fmt(r['agg_ratio_vs_1']):>6} {r['per_stream_tok_s']:>10.2f} "
              f"{r['ttft_ms_median']:>8.1f} {r['ttft_ms_p95']:>7.1f} {r['itl_ms_median']:>7.1f} "
              f"{r['itl_ms_p95']:>7.1f} {fmt(r['llama_cpp_agg_tok_s']):>9} "
              f"{fmt(r['llama_cpp_agg_ratio_vs_1']):>6} {fmt(r['agg_ratio_vs_llama_cpp']):>6}")
    print(f"threads: {args.threads}; N streams at once, each a different {args.conc_prompt}-token "
          f"prompt and {args.tg} + 1 greedy tokens; median of {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
