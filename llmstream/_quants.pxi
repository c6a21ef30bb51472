# Wrappers over csrc/quants.h (dequantize, quantize, vec_dot, SIMD level); included by _ops.pyx.
#
# Every function validates type ids and buffer sizes and raises ValueError before calling C, so the
# kernels never read or write out of bounds. Rows are 1-D C-contiguous buffers of raw GGML blocks
# (uint8) or float32 values.
from libc.stdint cimport uint8_t, int64_t

import numpy as np

cdef extern from "quants.h" nogil:
    int ls_type_known(int type)
    int64_t ls_blck_size(int type)
    size_t ls_type_size(int type)
    size_t ls_row_size(int type, int64_t n)
    int ls_vec_dot_type(int type)
    void ls_quantize_row(int type, const float *x, void *y, int64_t n)
    void ls_dequantize_row(int type, const void *x, float *y, int64_t n)
    float ls_vec_dot(int type, int64_t n, const void *w, const void *x)
    void ls_vec_dot_x4(int type, int64_t n, const void *w, const void *x, size_t x_stride, float *y)
    int ls_get_simd()
    int ls_set_simd(int level)
    int ls_cpu_has_avx2()
    int ls_cpu_has_avx512()
    int ls_simd_emulated()
    const char *ls_type_name(int type)
    int ls_type_is_x8(int type)
    int ls_type_quantizes(int type)
    int ls_repack_type(int type)
    size_t ls_repack_size(int type, int64_t rows, int64_t n)
    int ls_repack_rows(int type, int64_t n, const void *w, size_t w_stride, int64_t rows,
                       int64_t g0, int64_t g1, void *dst)

cdef extern from "quants_impl.h" nogil:
    int ls_simd_has_vec_dot(int type)
    int ls_simd_has_quantize(int type)
    int ls_simd_has_vec_dot_x4(int type)
    int ls_simd_has_gemm(int type)
    int ls_matmul_uses_avx512(int type)
    int ls_matmul_rows_lanes_ref(int type, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                 const void *x, size_t x_stride, int64_t T, float *y, size_t ldy)

def _rows():
    """(id, name, elements per block, bytes per block, vec_dot type id, x8) of every row of
    csrc/types.c (blck 0: a GGML type named but not computed; x8 1: a repacked layout)."""
    out = []
    for t in range(256):
        name = ls_type_name(t)
        if name != NULL:
            out.append((t, name.decode(), int(ls_blck_size(t)), int(ls_type_size(t)),
                        int(ls_vec_dot_type(t)), bool(ls_type_is_x8(t))))
    return out


_ROWS = _rows()     # the table is compiled in: read it once


def type_table():
    """{type id: (name, elements per block, bytes per block, vec_dot type id)} of every GGML type
    llmstream computes, from the rows of csrc/types.c (the one place types are declared)."""
    return {t: (name, blck, size, vdt) for t, name, blck, size, vdt, x8 in _ROWS if blck and not x8}


def ggml_type_names():
    """{type id: GGML's name} of every GGML type csrc/types.c names, computed or not."""
    return {t: name for t, name, blck, size, vdt, x8 in _ROWS if not x8}


# {id: name} of the GGML types llmstream computes, and TYPE_<name> = id for each of them and for
# the repacked layouts (TYPE_Q4_K_X8, ...): derived from csrc/types.c, not restated here
TYPE_NAMES = {t: v[0] for t, v in type_table().items()}
TYPE_IDS = {name: t for t, name in TYPE_NAMES.items()}
globals().update({f"TYPE_{name}": t for t, name, blck, size, vdt, x8 in _ROWS if blck})

# Activation types ls_quantize_row can produce (the "vec_dot types"): the rows with a quantizer.
ACTIVATION_TYPES = tuple(t for t in TYPE_NAMES if ls_type_quantizes(t))

# SIMD levels (csrc/quants.h enum ls_simd)
SIMD_SCALAR = 0
SIMD_AVX2 = 1
SIMD_AVX512 = 2


cdef int _check_type(int type) except -1:
    if not ls_type_known(type):
        raise ValueError(f"unknown GGML type id {type}; known ids: "
                         + ", ".join(f"{k} ({v})" for k, v in TYPE_NAMES.items()))
    return 0


cdef int _check_n(int type, int64_t n) except -1:
    cdef int64_t blck = ls_blck_size(type)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n % blck != 0:
        raise ValueError(f"n={n} is not a multiple of the {TYPE_NAMES[type]} block size {blck}")
    return 0


def type_info(int type):
    """(elements per block, bytes per block, vec_dot type id) of GGML type `type`.

    The vec_dot type is what activations are converted to (quantize_row) before vec_dot with weights
    of this type. Raises ValueError for a type id llmstream does not know.
    """
    _check_type(type)
    return (int(ls_blck_size(type)), int(ls_type_size(type)), int(ls_vec_dot_type(type)))


def row_size(int type, int64_t n):
    """Bytes of one row of n elements of `type` (n a multiple of the block size)."""
    _check_type(type)
    _check_n(type, n)
    return int(ls_row_size(type, n))


def dequantize_row(int type, const uint8_t[::1] data, int64_t n):
    """Dequantize one row: `data` (row_size(type, n),) uint8 raw blocks -> (n,) float32.

    Raises ValueError for an unknown type, an n that is not a whole number of blocks, or a buffer
    whose length is not exactly the row size.
    """
    _check_type(type)
    _check_n(type, n)
    cdef size_t need = ls_row_size(type, n)
    if <size_t>data.shape[0] != need:
        raise ValueError(f"{TYPE_NAMES[type]} row of {n} elements needs {need} bytes, got {data.shape[0]}")
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] o = out
    if n > 0:
        with nogil:
            ls_dequantize_row(type, &data[0], &o[0], n)
    return out


def quantize_row(int type, const float[::1] x):
    """Convert activations `x` (n,) float32 to one row of `type` -> (row_size(type, n),) uint8.

    `type` must be an activation (vec_dot) type: F32, F16, BF16, Q8_0, Q8_1 or Q8_K; rounding is
    exactly that of llama.cpp's reference quantizers. n must be a multiple of the block size.
    """
    _check_type(type)
    if type not in ACTIVATION_TYPES:
        raise ValueError(f"quantize_row converts activations only; {TYPE_NAMES[type]} is not one of "
                         + ", ".join(TYPE_NAMES[t] for t in ACTIVATION_TYPES))
    cdef int64_t n = x.shape[0]
    _check_n(type, n)
    out = np.empty(ls_row_size(type, n), dtype=np.uint8)
    cdef uint8_t[::1] o = out
    if n > 0:
        with nogil:
            ls_quantize_row(type, &x[0], &o[0], n)
    return out


def vec_dot(int type, int64_t n, const uint8_t[::1] w, const uint8_t[::1] xq):
    """sum_i w[i] * x[i] over n elements -> float.

    `w` is one row of weights of `type` (row_size(type, n) bytes); `xq` is the activations already
    converted with quantize_row(type_info(type)[2], x) (row_size of the vec_dot type, n elements).
    """
    _check_type(type)
    _check_n(type, n)
    cdef int xt = ls_vec_dot_type(type)
    cdef size_t need_w = ls_row_size(type, n)
    cdef size_t need_x = ls_row_size(xt, n)
    if <size_t>w.shape[0] != need_w:
        raise ValueError(f"{TYPE_NAMES[type]} weight row of {n} elements needs {need_w} bytes, "
                         f"got {w.shape[0]}")
    if <size_t>xq.shape[0] != need_x:
        raise ValueError(f"{TYPE_NAMES[xt]} activation row of {n} elements needs {need_x} bytes, "
                         f"got {xq.shape[0]}")
    cdef float r = 0.0
    if n > 0:
        with nogil:
            r = ls_vec_dot(type, n, &w[0], &xq[0])
    return r


def vec_dot_x4(int type, int64_t n, const uint8_t[::1] w, const uint8_t[:, ::1] xq):
    """[vec_dot(type, n, w, xq[t]) for t in 0..3] computed by the 4-token kernel -> (4,) float32.

    `xq` holds 4 activation rows, each converted as for vec_dot (shape (4, row bytes))."""
    _check_type(type)
    _check_n(type, n)
    if n == 0:
        raise ValueError("vec_dot_x4 needs n > 0")
    cdef int xt = ls_vec_dot_type(type)
    cdef size_t need_w = ls_row_size(type, n)
    cdef size_t need_x = ls_row_size(xt, n)
    if <size_t>w.shape[0] != need_w:
        raise ValueError(f"{TYPE_NAMES[type]} weight row of {n} elements needs {need_w} bytes, "
                         f"got {w.shape[0]}")
    if xq.shape[0] != 4 or <size_t>xq.shape[1] != need_x:
        raise ValueError(f"xq must be 4 {TYPE_NAMES[xt]} rows of {need_x} bytes, got {xq.shape}")
    out = np.empty(4, dtype=np.float32)
    cdef float[::1] o = out
    with nogil:
        ls_vec_dot_x4(type, n, &w[0], &xq[0, 0], need_x, &o[0])
    return out


def get_simd():
    """The SIMD level in use: SIMD_SCALAR (0, the reference kernels), SIMD_AVX2 (1, AVX2/FMA/F16C)
    or SIMD_AVX512 (2: AVX-512 VNNI matmul kernels where there are some, AVX2 for the rest)."""
    return ls_get_simd()


def set_simd(int level):
    """Use SIMD level `level` (0 scalar, 1 AVX2, 2 AVX-512); returns the level actually set: the
    highest the CPU has at or below it. Affects every thread; meant for tests and benchmarks
    (LLMSTREAM_SIMD / LLMSTREAM_AVX512=0 choose at start-up)."""
    if level not in (SIMD_SCALAR, SIMD_AVX2, SIMD_AVX512):
        raise ValueError(f"SIMD level must be 0 (scalar), 1 (AVX2) or 2 (AVX-512), got {level}")
    return ls_set_simd(level)


def cpu_has_avx2():
    """True when the CPU (and OS) support AVX2, FMA and F16C."""
    return bool(ls_cpu_has_avx2())


def simd_kernel_types():
    """Type ids whose vec_dot has a dedicated AVX2 kernel (the rest fall back to scalar)."""
    return [t for t in TYPE_NAMES if ls_simd_has_vec_dot(t)]


def cpu_has_avx512():
    """True when the CPU has AVX512F/BW/VL/VNNI (the SIMD_AVX512 level: the Q4_0 / Q8_0 / Q4_K /
    Q6_K matmuls)."""
    return bool(ls_cpu_has_avx512())


def simd_emulated():
    """True in a test build (LLMSTREAM_EMULATE_AVX512=1) whose AVX-512 kernels are emulated on AVX2
    through SIMDe: correct and slow; cpu_has_avx512() is then True on any AVX2 CPU."""
    return bool(ls_simd_emulated())


def simd_x4_types():
    """Type ids whose 4-token vec_dot has a dedicated AVX2 kernel (the rest run 4 vec_dots)."""
    return [t for t in TYPE_NAMES if ls_simd_has_vec_dot_x4(t)]


def simd_gemm_types():
    """Type ids with AVX2 matmul kernels that put a row in each lane (gemm for 4+ tokens, gemv for
    1-3, bit for bit the same), used by matmul instead of vec_dot_x4 / vec_dot."""
    return [t for t in TYPE_NAMES if ls_simd_has_gemm(t)]


def matmul_lanes_ref(int type, int64_t n, const uint8_t[:, ::1] w, const uint8_t[:, ::1] xq):
    """W (rows, n) @ xq (T, n) -> (T, rows) float32 by the scalar twin of the row-per-lane matmul
    kernels (same bits as matmul on AVX2 / AVX-512 for the types of simd_gemm_types()).

    `w` holds whole weight rows of `type` (rows, row bytes); `xq` the T activation rows already
    converted to the vec_dot type. Raises ValueError for a type without such kernels."""
    _check_type(type)
    _check_n(type, n)
    cdef int xt = ls_vec_dot_type(type)
    if <size_t>w.shape[1] != ls_row_size(type, n) or <size_t>xq.shape[1] != ls_row_size(xt, n):
        raise ValueError("row sizes do not match n")
    cdef int64_t rows = w.shape[0], T = xq.shape[0]
    out = np.zeros((T, rows), dtype=np.float32)
    cdef float[:, ::1] o = out
    cdef int ok
    if rows == 0 or T == 0:
        return out
    with nogil:
        ok = ls_matmul_rows_lanes_ref(type, n, &w[0, 0], <size_t>w.shape[1], 0, rows, &xq[0, 0],
                                      <size_t>xq.shape[1], T, &o[0, 0], <size_t>rows)
    if not ok:
        raise ValueError(f"no row-per-lane matmul reference for {TYPE_NAMES[type]}")
    return out


def simd_quantize_types():
    """Activation type ids whose quantize_row has a dedicated AVX2 kernel."""
    return [t for t in ACTIVATION_TYPES if ls_simd_has_quantize(t)]


def vec_dot_rows(int type, int64_t n, const uint8_t[::1] w, const uint8_t[::1] xq, int threads=1):
    """out[r] = vec_dot(type, n, row r of w, xq) for every row of `w` -> (rows,) float32.

    `w` holds rows of n elements of `type` back to back (rows * row_size(type, n) bytes); `xq` is
    one activation row as for vec_dot. The loop over rows runs in C, on `threads` OpenMP threads
    (0 = effective_threads()). A matrix-vector product for tests and benchmarks.
    """
    _check_type(type)
    _check_n(type, n)
    if n == 0:
        raise ValueError("vec_dot_rows needs n > 0")
    cdef int xt = ls_vec_dot_type(type)
    cdef size_t rb = ls_row_size(type, n)
    cdef size_t need_x = ls_row_size(xt, n)
    if <size_t>w.shape[0] % rb != 0:
        raise ValueError(f"{TYPE_NAMES[type]} weights of {w.shape[0]} bytes are not whole rows of "
                         f"{n} elements ({rb} bytes each)")
    if <size_t>xq.shape[0] != need_x:
        raise ValueError(f"{TYPE_NAMES[xt]} activation row of {n} elements needs {need_x} bytes, "
                         f"got {xq.shape[0]}")
    cdef Py_ssize_t rows = <Py_ssize_t>(<size_t>w.shape[0] // rb)
    out = np.empty(rows, dtype=np.float32)
    cdef float[::1] o = out
    cdef Py_ssize_t r
    cdef int nt = threads if threads > 0 else effective_threads()
    if rows == 0:
        return out
    with nogil:
        for r in prange(rows, num_threads=nt, schedule="static"):
            o[r] = ls_vec_dot(type, n, &w[r * rb], &xq[0])
    return out


def repack_type(int type):
    """The repacked ("x8", csrc/formats.h) type weights of GGML type `type` can be rewritten to,
    or -1 when it has none."""
    return ls_repack_type(type)


def matmul_uses_avx512(int type):
    """True when matmuls with weights of `type` run on the AVX-512 kernels now (the CPU has them,
    they are on, and quants_avx512.c has them for the type)."""
    return bool(ls_matmul_uses_avx512(type))


def repack(const uint8_t[:, ::1] w, int type, int64_t n_in, int threads=0):
    """W (rows, row bytes) raw rows of `type` -> (W8 (rows, x8 row bytes) uint8, x8 type).

    W8 holds the same weights with each group of 8 rows interleaved (csrc/formats.h "Repacked
    layouts"); matmul(W8, x8 type, ...) gives exactly matmul(W, type, ...). W8 is a view of the
    first `rows` rows of a buffer padded with zero rows to a multiple of 8 (the kernels read whole
    groups). The groups are converted on `threads` OpenMP threads (0 = effective_threads()).
    Raises ValueError for a type without an x8 layout or rows that are not n_in elements."""
    _check_type(type)
    cdef int x8 = ls_repack_type(type)
    if x8 < 0:
        raise ValueError(f"{TYPE_NAMES[type]} has no repacked layout")
    _check_n(type, n_in)
    cdef int64_t rows = w.shape[0]
    if <size_t>w.shape[1] != ls_row_size(type, n_in):
        raise ValueError(f"{TYPE_NAMES[type]} rows of {n_in} elements are {ls_row_size(type, n_in)} "
                         f"bytes, got {w.shape[1]}")
    cdef size_t rb = ls_row_size(x8, n_in)
    cdef int64_t groups = (rows + 7) // 8
    buf = np.empty((groups * 8, rb), dtype=np.uint8)
    cdef uint8_t[:, ::1] o = buf
    cdef int64_t g
    cdef int nt = threads if threads > 0 else effective_threads()
    if rows == 0 or rb == 0:
        return buf[:rows], x8
    with nogil:
        for g in prange(groups, num_threads=nt, schedule="dynamic"):
            ls_repack_rows(type, n_in, &w[0, 0], <size_t>w.shape[1], rows, g, g + 1, &o[0, 0])
    return buf[:rows], x8
