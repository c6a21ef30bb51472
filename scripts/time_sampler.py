"""Rough per-call timing of Sampler.sample (prints microseconds; not a test)."""
import time

import numpy as np

from llmstream.sampling import Sampler, SamplingParams

rng = np.random.default_rng(0)
recent = list(rng.integers(0, 32000, 200))
cases = {
    "defaults (T=0.1 top_p=0.3)": SamplingParams(),
    "greedy": SamplingParams(temperature=0),
    "T=0.8 top_p=0.95": SamplingParams(temperature=0.8, top_p=0.95),
    "T=0.8 top_k=40 top_p=0.95": SamplingParams(temperature=0.8, top_k=40, top_p=0.95),
    "T=0.8 min_p=0.05": SamplingParams(temperature=0.8, top_p=1.0, min_p=0.05),
    "T=1 top_p=0.9 min_p=0.05": SamplingParams(temperature=1.0, top_p=0.9, min_p=0.05),
    "T=1 untruncated": SamplingParams(temperature=1.0, top_p=1.0),
    "T=1 top_p=0.9": SamplingParams(temperature=1.0, top_p=0.9),
    "T=1.5 top_p=0.99 (worst case)": SamplingParams(temperature=1.5, top_p=0.99),
}
for n_vocab in (32000, 51200):
    # LM-like logits: mostly noise, a few strong candidates
    logits = (rng.standard_normal(n_vocab) * 2.5).astype(np.float32)
    logits[rng.integers(0, n_vocab, 20)] += 8
    for name, params in cases.items():
        s = Sampler(params, n_vocab)
        for _ in range(20):
            s.sample(logits, recent)
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            s.sample(logits, recent)
        print(f"n_vocab={n_vocab:6d} {name:32s} {(time.perf_counter() - t0) / n * 1e6:8.1f} us")
