#!/usr/bin/env python3
"""Micro-benchmark of the vec_dot kernels: GB/s of weight bytes read, scalar vs AVX2.

For every weight type: a 2048 x 2048 matrix of random (valid) blocks, one activation row quantized
to the type's vec_dot type, and the matrix-vector product (vec_dot over every row, the loop in C)
timed on one thread at each SIMD level. Also times the activation quantizers. Prints figures only.

    .venv/bin/python scripts/bench_kernels.py [--rows 2048] [--cols 2048] [--threads 1] [--min-time 0.3]
"""
import argparse
import time

import numpy as np

from llmstream import _ops

F32, F16, BF16 = _ops.TYPE_F32, _ops.TYPE_F16, _ops.TYPE_BF16
# ids from the type table (csrc/types.c): every weight type, then every activation type
WEIGHTS = [(name, _ops.TYPE_IDS[name]) for name in
           ("Q4_K", "Q6_K", "Q4_0", "Q8_0", "F16", "Q5_K", "Q3_K", "Q2_K", "Q4_1", "Q5_0", "Q5_1",
            "IQ4_NL", "IQ4_XS", "BF16", "F32")]
ACTS = [(_ops.TYPE_NAMES[t], t) for t in _ops.ACTIVATION_TYPES]
ACT_NAME = {t: name for name, t in ACTS}
# byte offsets of the fp16 scale fields of a block (set to sane values; the rest is random bits)
FP16_FIELDS = {_ops.TYPE_IDS[name]: offs for name, offs in
               {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
                "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_NL": [0],
                "IQ4_XS": [0]}.items()}


def random_matrix(t, rows, cols, rng):
    blck, size, _ = _ops.type_info(t)
    if t == F32:
        return rng.standard_normal(rows * cols).astype(np.float32).view(np.uint8)
    if t in (F16, BF16):
        x = rng.standard_normal(rows * cols).astype(np.float32)
        return _ops.quantize_row(t, x)
    nb = rows * cols // blck
    blocks = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    for off in FP16_FIELDS[t]:
        blocks[:, off:off + 2] = rng.uniform(0.001, 0.02, nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return blocks.reshape(-1)


def timeit(fn, min_time):
    fn()
    best = float("inf")
    total, reps = 0.0, 0
    while total < min_time or reps < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        total += dt
        reps += 1
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    have_avx2 = _ops.cpu_has_avx2()
    simd_types = set(_ops.simd_kernel_types())
    before = _ops.get_simd()
    print(f"vec_dot over a {a.rows} x {a.cols} matrix, {a.threads} thread(s); "
          f"AVX2 {'available' if have_avx2 else 'NOT available'}")
    print(f"{'weights':8} {'acts':5} {'MB':>7} {'scalar GB/s':>12} {'avx2 GB/s':>10} {'speedup':>8}")
    x = rng.standard_normal(a.cols).astype(np.float32)
    for name, t in WEIGHTS:
        w = random_matrix(t, a.rows, a.cols, rng)
        xt = _ops.type_info(t)[2]
        xq = _ops.quantize_row(xt, x)
        res = []
        for level in (0, 1):
            if level == 1 and not have_avx2:
                res.append(None)
                continue
            _ops.set_simd(level)
            dt = timeit(lambda: _ops.vec_dot_rows(t, a.cols, w, xq, a.threads), a.min_time)
            res.append(w.nbytes / dt / 1e9)
        tag = "" if t in simd_types else "  (no AVX2 kernel: scalar fallback)"
        avx = f"{res[1]:10.2f} {res[1] / res[0]:7.1f}x" if res[1] else f"{'-':>10} {'-':>8}"
        print(f"{name:8} {ACT_NAME[xt]:5} {w.nbytes / 1e6:7.2f} "
              f"{res[0]:12.2f} {avx}{tag}")
    print()
    print(f"activation quantizers, x of {a.cols * 16} floats")
    print(f"{'type':8} {'scalar GB/s':>12} {'avx2 GB/s':>10} {'speedup':>8}   (GB/s of float32 input)")
    xs = rng.standard_normal(a.cols * 16).astype(np.float32)
    qtypes = set(_ops.simd_quantize_types())
    for name, t in ACTS:
        res = []
        for level in (0, 1):
            if level == 1 and not have_avx2:
                res.append(None)
                continue
            _ops.set_simd(level)
            dt = timeit(lambda: _ops.quantize_row(t, xs), a.min_time / 3)
            res.append(xs.nbytes / dt / 1e9)
        tag = "" if t in qtypes else "  (no AVX2 quantizer: scalar fallback)"
        avx = f"{res[1]:10.2f} {res[1] / res[0]:7.1f}x" if res[1] else f"{'-':>10} {'-':>8}"
        print(f"{name:8} {res[0]:12.2f} {avx}{tag}")
    _ops.set_simd(before)


if __name__ == "__main__":
    main()
