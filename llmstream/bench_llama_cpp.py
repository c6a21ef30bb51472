"""llama.cpp's own batched decoding, measured through llama-cpp-python's low-level API, for
`llmstream bench --concurrency`: the same GGUF file and thread count as ours, N sequences at once.

What one run does (the pattern of llama.cpp's `llama-batched-bench`, one prompt per sequence):

- prefill: ONE llama_decode of a batch holding all N prompts (n_prompt tokens each, every sequence
  its own seq_id and positions 0..n_prompt-1, logits kept only for each prompt's last token); each
  sequence's first token is the greedy argmax of its row. TTFT of a sequence = run start until its
  first token is picked, so all N share about the same TTFT (prefill end).
- decode: n_gen steps, each ONE llama_decode of a batch holding the last token of every sequence
  (N tokens), then a greedy argmax over each sequence's logits row (numpy on llama_get_logits_ith).
  The step's wall time is the inter-token latency of every sequence in it.
- agg_tok_s = N * n_gen / decode time (the n_gen steps, prefill excluded, like batched-bench's
  S_TG); per_stream_tok_s = n_gen / decode time. Each sequence thus gets n_gen + 1 tokens: the
  first from the prefill, then one per step.

Each sequence's prompt is different and deterministic: token ids drawn from a generator seeded by
the sequence's index (ids in [3, n_vocab)), so sequence 0 has the same prompt whatever N is.
Before the timed runs, one untimed warm-up run (pages the weights in, starts the thread pool); the
KV cache (llama_memory_clear) is cleared before every run. Medians and p95 are over all runs.

Run it as `python -m llmstream.bench_llama_cpp --model F --threads 2 --seqs 1,2,4,8`: one JSON line
per N, so the bench can measure llama.cpp in its own process.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

_MISSING = ("llama_cpp (llama-cpp-python) is not importable: install it with "
            "pip install 'llama-cpp-python>=0.3' (or pip install -e '.[bench]'; it builds from "
            "source, ~12 minutes on 2 cores)")


def _import_llama_cpp():
    try:
        import llama_cpp
    except Exception as e:  # ImportError, or OSError when the shared library fails to load
        raise ImportError(f"{_MISSING} ({type(e).__name__}: {e})") from e
    return llama_cpp


def _quiet(llama_cpp, verbose: bool):
    try:
        from llama_cpp import _logger
        _logger.set_verbose(verbose)
    except Exception:
        pass


def _n_vocab(lc, model) -> int:
    if hasattr(lc, "llama_model_get_vocab") and hasattr(lc, "llama_vocab_n_tokens"):
        return int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model)))
    return int(lc.llama_n_vocab(model))  # before the vocab split (older versions)


def _clear_kv(lc, ctx):
    """Empty the KV cache of every sequence, with whichever API the installed version has."""
    if hasattr(lc, "llama_get_memory") and hasattr(lc, "llama_memory_clear"):
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
    elif hasattr(lc, "llama_kv_self_clear"):
        lc.llama_kv_self_clear(ctx)
    elif hasattr(lc, "llama_kv_cache_clear"):
        lc.llama_kv_cache_clear(ctx)
    else:
        raise RuntimeError("this llama_cpp has no KV-cache clearing function known to llmstream")


def _load_model(lc, path: str):
    mparams = lc.llama_model_default_params()
    load = getattr(lc, "llama_model_load_from_file", None) or lc.llama_load_model_from_file
    model = load(str(path).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    return model


def _free_model(lc, model):
    (getattr(lc, "llama_model_free", None) or lc.llama_free_model)(model)


def prompts_for(n_seqs: int, n_prompt: int, n_vocab: int, seed: int = 0) -> list[list[int]]:
    """One deterministic prompt per sequence; sequence i's does not depend on n_seqs."""
    lo = 3 if n_vocab > 3 else 0
    return [[int(t) for t in np.random.default_rng([seed, i]).integers(lo, n_vocab, n_prompt)]
            for i in range(n_seqs)]


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def _run_on_model(lc, model, n_vocab: int, threads: int, n_seqs: int, n_prompt: int, n_gen: int,
                  runs: int, seed: int, return_tokens: bool) -> dict:
    n_tok_prefill = n_seqs * n_prompt
    cparams = lc.llama_context_default_params()
    # per sequence: prompt + n_gen fed tokens (+ slack); the default (non-unified) KV cache gives
    # each of the n_seq_max sequences n_ctx / n_seq_max cells
    cparams.n_ctx = n_seqs * (n_prompt + n_gen + 16)
    cparams.n_batch = max(512, n_tok_prefill)
    cparams.n_ubatch = 512
    cparams.n_seq_max = n_seqs
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    new_ctx = getattr(lc, "llama_init_from_model", None) or lc.llama_new_context_with_model
    ctx = new_ctx(model, cparams)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a context for {n_seqs} sequences")
    cap = max(n_tok_prefill, n_seqs)
    batch = lc.llama_batch_init(cap, 0, 1)
    try:
        tok = np.ctypeslib.as_array(batch.token, shape=(cap,))
        pos = np.ctypeslib.as_array(batch.pos, shape=(cap,))
        nsid = np.ctypeslib.as_array(batch.n_seq_id, shape=(cap,))
        outs = np.ctypeslib.as_array(batch.logits, shape=(cap,))
        nsid[:] = 1
        for i in range(cap):  # each token's one seq_id slot; set per batch below
            batch.seq_id[i][0] = 0
        seq_of = np.zeros(cap, dtype=np.int32)

        def set_seq(i, s):
            if seq_of[i] != s:
                batch.seq_id[i][0] = s
                seq_of[i] = s

        prompts = prompts_for(n_seqs, n_prompt, n_vocab, seed)

        def argmax_row(i: int) -> int:
            ptr = lc.llama_get_logits_ith(ctx, i)
            if not ptr:
                raise RuntimeError(f"llama_get_logits_ith({i}) returned NULL")
            return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

        def decode(n: int, what: str):
            batch.n_tokens = n
            rc = lc.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({what}, {n} tokens): {rc}")

        def one_run(n_steps: int):
            _clear_kv(lc, ctx)
            for s, p in enumerate(prompts):
                sl = slice(s * n_prompt, (s + 1) * n_prompt)
                tok[sl] = p
                pos[sl] = np.arange(n_prompt)
                outs[sl] = 0
                outs[(s + 1) * n_prompt - 1] = 1
                for i in range(sl.start, sl.stop):
                    set_seq(i, s)
            toks = [[] for _ in range(n_seqs)]
            ttft = []
            t0 = time.perf_counter()
            decode(n_tok_prefill, "prefill")
            for s in range(n_seqs):
                toks[s].append(argmax_row((s + 1) * n_prompt - 1))
                ttft.append(time.perf_counter() - t0)
            for s in range(n_seqs):
                set_seq(s, s)
            outs[:n_seqs] = 1
            itl = []
            t_dec = time.perf_counter()
            for k in range(n_steps):
                ts = time.perf_counter()
                for s in range(n_seqs):
                    tok[s] = toks[s][-1]
                    pos[s] = n_prompt + k
                decode(n_seqs, f"step {k}")
                for s in range(n_seqs):
                    toks[s].append(argmax_row(s))
                itl.append(time.perf_counter() - ts)
            return ttft, itl, time.perf_counter() - t_dec, toks

        one_run(min(n_gen, 4))  # warm-up, untimed
        ttft_all, itl_all, agg, per_stream = [], [], [], []
        toks = None
        for _ in range(runs):
            ttft, itl, t_decode, toks = one_run(n_gen)
            ttft_all += ttft
            itl_all += itl
            agg.append(n_seqs * n_gen / t_decode)
            per_stream.append(n_gen / t_decode)
        _clear_kv(lc, ctx)
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
    out = dict(agg_tok_s=float(np.median(agg)), per_stream_tok_s=float(np.median(per_stream)),
               ttft_ms_median=_pct(ttft_all, 50) * 1e3, ttft_ms_p95=_pct(ttft_all, 95) * 1e3,
               itl_ms_median=_pct(itl_all, 50) * 1e3, itl_ms_p95=_pct(itl_all, 95) * 1e3,
               n_seqs=n_seqs, threads=threads, n_prompt=n_prompt, n_gen=n_gen, runs=runs)
    if return_tokens:
        out["tokens"] = toks  # last run's greedy tokens per sequence (n_gen + 1 each)
    return out


def _check_args(threads, n_seqs, n_prompt, n_gen, runs):
    for name, v in dict(threads=threads, n_seqs=n_seqs, n_prompt=n_prompt, n_gen=n_gen,
                        runs=runs).items():
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


class _Session:
    """The llama.cpp backend and one loaded model, shared by several N in main()."""

    def __init__(self, path: str, verbose: bool = False):
        self.lc = _import_llama_cpp()
        _quiet(self.lc, verbose)
        self.lc.llama_backend_init()
        self.model = _load_model(self.lc, path)
        self.n_vocab = _n_vocab(self.lc, self.model)

    def run(self, threads, n_seqs, n_prompt, n_gen, runs=1, seed=0, return_tokens=False) -> dict:
        _check_args(threads, n_seqs, n_prompt, n_gen, runs)
        return _run_on_model(self.lc, self.model, self.n_vocab, int(threads), int(n_seqs),
                             int(n_prompt), int(n_gen), int(runs), seed, return_tokens)

    def close(self):
        if self.model:
            _free_model(self.lc, self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def batched_decode(path: str, threads: int, n_seqs: int, n_prompt: int, n_gen: int,
                   runs: int = 1, *, seed: int = 0, return_tokens: bool = False,
                   verbose: bool = False) -> dict:
    """Greedy decoding of n_seqs different prompts at once with llama.cpp (see the module doc).

    Returns agg_tok_s, per_stream_tok_s, ttft_ms_median, ttft_ms_p95, itl_ms_median, itl_ms_p95,
    n_seqs, threads (and n_prompt, n_gen, runs; with return_tokens, `tokens`: each sequence's
    n_gen + 1 greedy tokens from the last run). Raises ImportError when llama_cpp is missing."""
    _check_args(threads, n_seqs, n_prompt, n_gen, runs)
    with _Session(path, verbose=verbose) as s:
        return s.run(threads, n_seqs, n_prompt, n_gen, runs, seed=seed,
                     return_tokens=return_tokens)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmstream.bench_llama_cpp",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seqs", default="1,2,4,8", help="comma-separated numbers of sequences")
    p.add_argument("--n-prompt", type=int, default=16)
    p.add_argument("--n-gen", type=int, default=64)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="let llama.cpp log to stderr")
    args = p.parse_args(argv)
    try:
        seqs = [int(x) for x in args.seqs.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seqs must be comma-separated integers, got {args.seqs!r}")
    try:
        session = _Session(args.model, verbose=args.verbose)
    except ImportError as e:
        print(str(e), file=sys.stderr)
        return 2
    with session:
        for n in seqs:
            r = session.run(args.threads, n, args.n_prompt, args.n_gen, args.runs, seed=args.seed)
            r = {k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else v)
                 for k, v in r.items()}
            print(json.dumps(dict(model=args.model, **r)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
