"""Numpy references for the quantized-tensor tests: llama.cpp's reference activation quantizers
re-implemented in numpy, random (but valid) weight rows of every type, and the real tensors of the
../shared/reference GGUF files and of the llama.cpp-quantized fixtures under tests/data."""
from functools import lru_cache
from pathlib import Path

import numpy as np

from conftest import shared_path

# GGML type ids (csrc/quants.h).
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 0, 1, 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, BF16 = 10, 11, 12, 13, 14, 15, 30
IQ4_NL, IQ4_XS = 20, 23

NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0",
         Q5_1: "Q5_1", Q8_0: "Q8_0", Q8_1: "Q8_1", Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K",
         Q5_K: "Q5_K", Q6_K: "Q6_K", Q8_K: "Q8_K", IQ4_NL: "IQ4_NL", IQ4_XS: "IQ4_XS"}
ALL_TYPES = list(NAMES)
WEIGHT_TYPES = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
                IQ4_XS]
ACTIVATION_TYPES = [F32, F16, BF16, Q8_0, Q8_1, Q8_K]
# llama.cpp's CPU backend: weights type -> activations type of its vec_dot.
VEC_DOT_TYPE = {F32: F32, F16: F16, BF16: BF16, Q4_0: Q8_0, Q5_0: Q8_0, Q8_0: Q8_0,
                Q4_1: Q8_1, Q5_1: Q8_1, Q2_K: Q8_K, Q3_K: Q8_K, Q4_K: Q8_K, Q5_K: Q8_K, Q6_K: Q8_K,
                IQ4_NL: Q8_0, IQ4_XS: Q8_K, Q8_1: Q8_1, Q8_K: Q8_K}

# (elements, bytes) per block, and the byte offsets of the fp16 scale fields inside a block.
BLOCK = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22),
         Q5_1: (32, 24), Q8_0: (32, 34), Q8_1: (32, 36), Q2_K: (256, 84), Q3_K: (256, 110),
         Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210), Q8_K: (256, 292), IQ4_NL: (32, 18),
         IQ4_XS: (256, 136)}
FP16_FIELDS = {Q4_0: [0], Q4_1: [0, 2], Q5_0: [0], Q5_1: [0, 2], Q8_0: [0], Q2_K: [80, 82],
               Q3_K: [108], Q4_K: [0, 2], Q5_K: [0, 2], Q6_K: [208], IQ4_NL: [0], IQ4_XS: [0]}

REFERENCE_TYPES = ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M",
                   "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K"]
# llama.cpp-quantized files committed under tests/data (scripts/make_iq4_fixtures.py): the real
# tensors of the types the ../shared reference files do not have
DATA = Path(__file__).parent / "data"
DATA_FILES = ["iq4/llama-iq4_nl.gguf", "iq4/llama-iq4_xs.gguf"]
REFERENCE_FILES = [f"{model}-{t}.gguf" for model in ("llama-gqa", "phi2") for t in REFERENCE_TYPES] \
    + DATA_FILES


def row_bytes(t, n):
    be, bb = BLOCK[t]
    assert n % be == 0
    return n // be * bb


# ---- llama.cpp's reference activation quantizers, in numpy ------------------------------------

def roundf(v):
    """C roundf: halves away from zero."""
    a = np.abs(v)
    r = np.floor(a)
    r = r + (a - r >= 0.5)
    return np.copysign(r, v)


def ref_q8_0(x, with_sum=False):
    """quantize_row_q8_0_ref / quantize_row_q8_1_ref (with_sum) on float32 x."""
    blocks = np.asarray(x, np.float32).reshape(-1, 32)
    out = []
    for b in blocks:
        amax = np.float32(np.max(np.abs(b)))
        d = np.float32(amax / np.float32(127))
        idv = np.float32(1) / d if d != 0 else np.float32(0)
        q = roundf((b * idv).astype(np.float32)).astype(np.int8)
        head = [np.array([d], np.float16).view(np.uint8)]
        if with_sum:
            s = np.float32(np.float32(int(q.astype(np.int32).sum())) * d)
            with np.errstate(over="ignore"):    # s = d*sum(q) may overflow fp16, as in C
                head.append(np.array([s], np.float16).view(np.uint8))
        out.append(np.concatenate(head + [q.view(np.uint8)]))
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def ref_q8_K(x):
    """quantize_row_q8_K_ref on float32 x (an all-zero block is all zero bytes)."""
    blocks = np.asarray(x, np.float32).reshape(-1, 256)
    out = []
    for b in blocks:
        i = int(np.argmax(np.abs(b)))          # first index of the largest |x|
        mx = b[i]
        if np.abs(mx) == 0:
            out.append(np.zeros(292, np.uint8))
            continue
        iscale = np.float32(np.float32(-127) / mx)
        q = np.minimum(np.rint((iscale * b).astype(np.float32)), 127).astype(np.int8)
        bsums = q.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        d = np.float32(np.float32(1) / iscale)
        out.append(np.concatenate([np.array([d], np.float32).view(np.uint8), q.view(np.uint8),
                                   bsums.view(np.uint8)]))
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def ref_f16(x):
    with np.errstate(over="ignore"):            # overflow to inf is the expected rounding
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint8)


def ref_bf16(x):
    """ggml_compute_fp32_to_bf16: NaN forced quiet, else round to nearest even."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, (u >> 16) | 64, (u + 0x7FFF + ((u >> 16) & 1)) >> 16)
    return r.astype(np.uint16).view(np.uint8)


def ref_quantize(t, x):
    x = np.asarray(x, np.float32)
    if t == F32:
        return x.view(np.uint8).copy()
    if t == F16:
        return ref_f16(x)
    if t == BF16:
        return ref_bf16(x)
    if t == Q8_0:
        return ref_q8_0(x)
    if t == Q8_1:
        return ref_q8_0(x, with_sum=True)
    if t == Q8_K:
        return ref_q8_K(x)
    raise ValueError(t)


def ref_dequantize_act(t, data):
    """Dequantize an activation row in numpy (gguf has no Q8_1 / Q8_K dequantizer)."""
    data = np.asarray(data, np.uint8)
    if t == F32:
        return data.view(np.float32).copy()
    if t == F16:
        return data.view(np.float16).astype(np.float32)
    if t == BF16:
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if t in (Q8_0, Q8_1):
        head = 2 if t == Q8_0 else 4
        b = data.reshape(-1, head + 32)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        return (b[:, head:].copy().view(np.int8).astype(np.float32) * d).reshape(-1)
    if t == Q8_K:
        b = data.reshape(-1, 292)
        d = b[:, :4].copy().view(np.float32)
        return (d * b[:, 4:260].copy().view(np.int8).astype(np.float32)).reshape(-1)
    raise ValueError(t)


# ---- random rows -------------------------------------------------------------------------------

def random_weights(t, n, rng):
    """A valid random row of n elements of weight type t: random quant bits, sane fp16 scales."""
    if t == F32:
        return rng.standard_normal(n).astype(np.float32).view(np.uint8)
    if t == F16:
        return rng.standard_normal(n).astype(np.float16).view(np.uint8)
    if t == BF16:
        return ref_bf16(rng.standard_normal(n).astype(np.float32))
    be, bb = BLOCK[t]
    nb = n // be
    blocks = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    for off in FP16_FIELDS[t]:
        scale = (rng.uniform(0.002, 0.05, nb) * rng.choice([-1, 1], nb)).astype(np.float16)
        if off == 2 and t in (Q4_1, Q5_1):          # the block minimum: any sign, larger
            scale = (rng.uniform(-0.5, 0.5, nb)).astype(np.float16)
        blocks[:, off:off + 2] = scale.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(-1)


def extreme_q32_quants(t, blocks):
    """Q4_0 / Q8_0 blocks (rows, blocks, bytes), in place: the quants of rows 0-3 at one end of their
    range and of rows 4-7 at the other (the int16 sums of the row-per-lane kernels at their bounds)."""
    lo, hi = {Q4_0: (0xff, 0x00), Q8_0: (0x80, 0x7f)}[t]    # Q4_0: +7, -8; Q8_0: -128, +127
    blocks[:4, :, 2:] = lo
    blocks[4:8, :, 2:] = hi


def random_activations(n, rng, scale=1.0):
    x = rng.standard_normal(n).astype(np.float32) * np.float32(scale)
    # a few outliers, as real activations have
    idx = rng.integers(0, n, size=max(1, n // 200))
    x[idx] *= np.float32(8)
    return x


# ---- real tensors ------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def reference_tensors(filename):
    """[(name, type id, flat uint8 data, n_elements, row length)] of a ../shared/reference GGUF
    (or of one of DATA_FILES)."""
    import gguf
    path = DATA / filename if filename in DATA_FILES else shared_path("reference", filename)
    reader = gguf.GGUFReader(str(path))
    out = []
    for t in reader.tensors:
        data = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
        out.append((t.name, int(t.tensor_type), data, int(t.n_elements), int(t.shape[0])))
    return out


def tensors_of_type(t, max_files=None):
    """Real tensors of type t from every reference file that has some."""
    found = []
    for f in REFERENCE_FILES:
        for name, tt, data, n_el, ne0 in reference_tensors(f):
            if tt == t:
                found.append((f, name, data, n_el, ne0))
    return found
