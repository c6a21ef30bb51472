# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Native core of llmstream: thin nogil wrappers over csrc/, parallelised with OpenMP prange.

Every function takes C-contiguous numpy arrays and documents their shapes; outputs are written into
caller-owned buffers so the decode loop allocates nothing. Python above this module orchestrates per
layer; anything per element or per row happens here or in C.
"""
import os

from cython.parallel cimport prange, parallel, threadid
from libc.math cimport sqrt
from libc.stdint cimport uint8_t, uint16_t, int32_t, int64_t, uint64_t

cdef extern from *:
    """
    #ifndef LS_OPENMP
    #define LS_OPENMP 0
    #endif
    """
    int LS_OPENMP

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
    void ls_matmul_rows(int type, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy)
    int ls_get_simd()
    int ls_set_simd(int level)
    int ls_cpu_has_avx2()

cdef extern from "ops.h" nogil:
    void ls_rmsnorm(const float *x, const float *w, float *y, int n, float eps)
    void ls_layernorm(const float *x, const float *w, const float *b, float *y, int n, float eps)
    void ls_rope(float *x, int n_head, int head_dim, int n_rot, int pos, float freq_base,
                 float freq_scale, const float *freq_factors, int neox)
    void ls_swiglu(float *gate, const float *up, int n)
    void ls_gelu(float *x, int n)
    void ls_attn_head(const float *q, const uint16_t *k, const uint16_t *v, size_t kv_stride,
                      const int32_t *blocks, int block_size,
                      int first_key, int n_keys, int head_dim, float scale,
                      float *scores, uint16_t *q16, float *vrow, float *out)
    size_t ls_kv_row(const int32_t *blocks, int block_size, int pos)
    uint64_t ls_sum_u64(const uint64_t *p, size_t n)

cdef int _threads = 0


def openmp_enabled():
    """True when the extension was built with OpenMP."""
    return bool(LS_OPENMP)


def physical_cores():
    """Physical cores this process may run on: CPUs of its affinity set, SMT siblings counted once
    (Linux sysfs topology); the CPU count where that is unknown."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/physical_package_id") as f:
                pkg = f.read().strip()
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/core_id") as f:
                cores.add((pkg, f.read().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    return max(1, len(cores))


_PHYSICAL_CORES = physical_cores()


def effective_threads():
    """Threads the kernels use: set_threads() if called, else OMP_NUM_THREADS, else one per
    physical core (hyper-threads share a core's vector units: more threads only add barriers)."""
    if _threads > 0:
        return _threads
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return _PHYSICAL_CORES


def set_threads(int n):
    """Use n threads (n <= 0 goes back to the default of effective_threads())."""
    global _threads
    _threads = n if n > 0 else 0


# Below this many bytes of work (weights read, or activations touched), a parallel region costs
# more than it saves: waking the team and its barriers take microseconds, and far longer when
# another process holds a core (a spinning thread waits for a descheduled one). Such work runs on
# the calling thread. The results do not depend on the thread count (rows are computed alone).
cdef enum:
    SMALL_WORK_BYTES = 1 << 20


cpdef int team_size(double work_bytes, int64_t items) except -1:
    """Threads for a parallel region over `items` independent work items touching `work_bytes`:
    effective_threads(), but 1 for small work and never more than there are items."""
    if work_bytes < SMALL_WORK_BYTES or items <= 1:
        return 1
    return <int>min(<int64_t>effective_threads(), items)


cdef inline void _check(bint ok, str msg) except *:
    if not ok:
        raise ValueError(msg)


def read_bandwidth(size_t nbytes=1 << 29, int repeats=3, int threads=0):
    """The machine's streaming read bandwidth in GB/s (1e9 bytes/s): `threads` OpenMP threads
    (0 = effective_threads()) summing a buffer of nbytes (default 512 MiB, far past the caches) in
    1 MiB pieces pulled in turn; the best of `repeats` passes. What a decode step that reads every
    weight once is bound by (the bench prints tg x file size as a fraction of it)."""
    import time
    cdef size_t words = max(nbytes // 8, <size_t>(1 << 17))
    cdef size_t piece = 1 << 17                     # 1 MiB of uint64
    cdef Py_ssize_t n_pieces = <Py_ssize_t>((words + piece - 1) // piece)
    buf = np.ones(words, dtype=np.uint64)            # pages touched (written) before timing
    sums = np.zeros(n_pieces, dtype=np.uint64)
    cdef const uint64_t[::1] b = buf
    cdef uint64_t[::1] s = sums
    cdef Py_ssize_t i
    cdef size_t lo
    cdef int nt = threads if threads > 0 else effective_threads()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        with nogil:
            for i in prange(n_pieces, num_threads=nt, schedule="dynamic"):
                lo = <size_t>i * piece
                s[i] = ls_sum_u64(&b[lo], min(piece, words - lo))
        best = min(best, time.perf_counter() - t0)
    if int(sums.sum()) != words:
        raise RuntimeError("bandwidth probe: wrong sum")
    return words * 8 / best / 1e9


def vec_dot_row_bytes(int wtype, int64_t n_in):
    """Bytes of one activation row of n_in elements converted for weights of type wtype."""
    cdef int vdt = ls_vec_dot_type(wtype)
    _check(vdt >= 0, f"unknown tensor type {wtype}")
    return ls_row_size(vdt, n_in)


cdef inline int64_t matmul_chunk(int64_t T, size_t row_bytes) noexcept nogil:
    """Output rows per work item of a matmul over T tokens. 1-3 tokens: ~144 KB of weights (128
    rows of a 2048-wide Q4_K), a multiple of 16 rows — equal bytes, so the threads of a fused
    work list over tensors of different types finish together; what is prepared once per work
    item (packed activations) costs ~1 %. A batch: 256 rows (<= ~1.2 MB of weights, in L2)."""
    cdef int64_t rows
    if T >= 4:
        return 256
    rows = <int64_t>(147456 // max(row_bytes, <size_t>1)) // 16 * 16
    return rows if rows >= 16 else 16


def matmul(const uint8_t[:, ::1] w, int wtype, const float[:, ::1] x, float[:, ::1] y,
           uint8_t[::1] xq):
    """W (n_out, n_in) @ x (T, n_in) -> y (T, n_out).

    w: raw rows of the weight tensor in wtype (n_out, row_bytes); x is converted once to the
    type's vec_dot format in xq (scratch, >= T * vec_dot_row_bytes(wtype, n_in) bytes). Threads
    pull work items of matmul_chunk(T, row bytes) output rows in turn (dynamic schedule: a thread
    another process keeps off its core delays one item, not a static share), each done by
    ls_matmul_rows (batch kernels for 4+ tokens, see csrc/quants.h). Each row is computed alone,
    so the result does not depend on which thread computes it."""
    cdef int64_t T = x.shape[0], n_in = x.shape[1], n_out = w.shape[0]
    cdef int vdt = ls_vec_dot_type(wtype)
    _check(vdt >= 0, f"unknown tensor type {wtype}")
    cdef size_t rs = ls_row_size(vdt, n_in)
    _check(<size_t>w.shape[1] == ls_row_size(wtype, n_in),
           f"weight rows are {w.shape[1]} bytes, expected {ls_row_size(wtype, n_in)} for {n_in} inputs")
    _check(y.shape[0] == T and y.shape[1] == n_out, "output shape mismatch")
    _check(<size_t>xq.shape[0] >= T * rs, "activation scratch too small")
    cdef int64_t t, c, r0, r1
    cdef int64_t chunk = matmul_chunk(T, <size_t>w.shape[1])
    cdef int64_t n_chunks = (n_out + chunk - 1) // chunk
    cdef int nt = team_size(<double>n_out * w.shape[1] * T, max(n_chunks, T))
    if T == 0 or n_out == 0:
        return
    with nogil, parallel(num_threads=nt):
        for t in prange(T, schedule="dynamic"):
            ls_quantize_row(vdt, &x[t, 0], &xq[t * rs], n_in)
        for c in prange(n_chunks, schedule="dynamic"):
            r0 = c * chunk
            r1 = min(r0 + chunk, n_out)
            ls_matmul_rows(wtype, n_in, &w[0, 0], <size_t>w.shape[1], r0, r1, &xq[0], rs, T,
                           &y[0, 0], <size_t>n_out)


def get_rows(const uint8_t[:, ::1] w, int wtype, const int32_t[::1] ids, float[:, ::1] out):
    """Embedding lookup: rows ids (T,) of W (n_rows, n) in wtype -> out (T, n) f32."""
    cdef int64_t T = ids.shape[0], n = out.shape[1], i
    _check(out.shape[0] >= T, "output too small")
    _check(<size_t>w.shape[1] == ls_row_size(wtype, n), "row size mismatch")
    for i in range(T):
        if ids[i] < 0 or ids[i] >= w.shape[0]:
            raise ValueError(f"token id {ids[i]} is out of range for a vocabulary of {w.shape[0]}")
    with nogil:
        for i in range(T):
            ls_dequantize_row(wtype, &w[ids[i], 0], &out[i, 0], n)


def rmsnorm(const float[:, ::1] x, const float[::1] w, float[:, ::1] y, float eps):
    """x (T, n) -> y (T, n) = x / sqrt(mean(x²) + eps) * w."""
    cdef int64_t T = x.shape[0], t
    cdef int n = <int>x.shape[1]
    _check(w.shape[0] == n and y.shape[1] == n and y.shape[0] >= T, "rmsnorm shape mismatch")
    cdef int nt = team_size(<double>T * x.shape[1] * 4, T)
    for t in prange(T, nogil=True, schedule="dynamic", num_threads=nt):
        ls_rmsnorm(&x[t, 0], &w[0], &y[t, 0], n, eps)


def layernorm(const float[:, ::1] x, const float[::1] w, const float[::1] b, float[:, ::1] y,
              float eps):
    """x (T, n) -> y (T, n) = (x - mean) / sqrt(var + eps) * w + b."""
    cdef int64_t T = x.shape[0], t
    cdef int n = <int>x.shape[1]
    _check(w.shape[0] == n and b.shape[0] == n and y.shape[1] == n and y.shape[0] >= T,
           "layernorm shape mismatch")
    cdef int nt = team_size(<double>T * x.shape[1] * 4, T)
    for t in prange(T, nogil=True, schedule="dynamic", num_threads=nt):
        ls_layernorm(&x[t, 0], &w[0], &b[0], &y[t, 0], n, eps)


cdef const float *_rope_factors(const float[::1] freq_factors, int n_rot) except? NULL:
    """Pointer to the (n_rot/2,) per-pair factors, or NULL for none."""
    if freq_factors is None:
        return NULL
    _check(freq_factors.shape[0] == n_rot // 2, "rope freq_factors must hold n_rot/2 values")
    return &freq_factors[0]


def rope(float[:, ::1] x, int n_head, int head_dim, int n_rot, const int32_t[::1] pos,
         float freq_base, bint neox, float freq_scale=1.0, const float[::1] freq_factors=None):
    """x (T, n_head*head_dim) in place: token t is at position pos[t] (pos (T,) int32).
    Angle of pair i: freq_scale * pos * freq_base^(-2i/n_rot) / freq_factors[i] (see ls_rope)."""
    cdef int64_t T = x.shape[0], t
    _check(x.shape[1] >= n_head * head_dim and 0 < n_rot <= head_dim and n_rot % 2 == 0,
           "rope shape mismatch")
    _check(pos.shape[0] == T, "rope needs one position per token")
    cdef const float *ff = _rope_factors(freq_factors, n_rot)
    cdef int nt = team_size(<double>T * x.shape[1] * 4, T)
    for t in prange(T, nogil=True, schedule="dynamic", num_threads=nt):
        ls_rope(&x[t, 0], n_head, head_dim, n_rot, pos[t], freq_base, freq_scale, ff, neox)


def swiglu(float[:, ::1] gate, const float[:, ::1] up):
    """gate (T, n) = silu(gate) * up (T, n)."""
    cdef int64_t T = gate.shape[0], t
    cdef int n = <int>gate.shape[1]
    _check(up.shape[0] == T and up.shape[1] == n, "swiglu shape mismatch")
    cdef int nt = team_size(<double>T * gate.shape[1] * 8, T)
    for t in prange(T, nogil=True, schedule="dynamic", num_threads=nt):
        ls_swiglu(&gate[t, 0], &up[t, 0], n)


def gelu(float[:, ::1] x):
    """x (T, n) in place: tanh-form GELU."""
    cdef int64_t T = x.shape[0], t
    cdef int n = <int>x.shape[1]
    cdef int nt = team_size(<double>T * x.shape[1] * 4, T)
    for t in prange(T, nogil=True, schedule="dynamic", num_threads=nt):
        ls_gelu(&x[t, 0], n)


# -- the paged KV pool ------------------------------------------------------------------------------
# Every sequence's keys and values live in fixed-size blocks of one pool per layer (kc, vc: (n_blocks
# * block_size, n_kv*head_dim) f16). Token t of a batch belongs to sequence seq[t] and sits at position
# pos[t]; that sequence's block table is tables[seq[t]] (block ids, in position order), so position p
# is pool row tables[seq[t], p // block_size] * block_size + p % block_size (ls_kv_row).

cdef struct _KV:
    uint16_t *kc                # pool rows (n_rows, stride) f16
    uint16_t *vc
    size_t stride               # n_kv * head_dim
    const int32_t *pos          # (T,)
    const int32_t *seq          # (T,)
    const int32_t *tables       # (n_seqs, tstride)
    int64_t tstride
    int block_size
    int64_t n_scores            # scratch floats per thread for the scores of one head


cdef inline const int32_t *_kv_blocks(const _KV *kv, int64_t t) noexcept nogil:
    return kv.tables + kv.seq[t] * kv.tstride


cdef inline void _kv_store(const _KV *kv, int64_t t, const float *k, const float *v) noexcept nogil:
    """Keys/values of token t (KV,) f32 -> its sequence's pool row at pos[t] (f16)."""
    cdef size_t row = ls_kv_row(_kv_blocks(kv, t), kv.block_size, kv.pos[t])
    ls_quantize_row(1, k, kv.kc + row * kv.stride, <int64_t>kv.stride)
    ls_quantize_row(1, v, kv.vc + row * kv.stride, <int64_t>kv.stride)


cdef inline void _attn_item(const _KV *kv, int64_t i, int n_head, int group, int head_dim,
                            float scale, int window, const float *q, size_t q_stride, float *out,
                            size_t out_stride, float *scratch, uint16_t *q16) noexcept nogil:
    """Work item i = t * n_head + h of attention: query head h of token t over its sequence's keys
    0 .. pos[t] (from pos[t] - window + 1 with a sliding window); scratch holds n_scores + 2 *
    head_dim floats. The one attention loop body of attention(), llama_layer and phi2_layer."""
    cdef int64_t t = i // n_head
    cdef int h = <int>(i % n_head)
    cdef int p = kv.pos[t]
    cdef int first = 0
    if window > 0 and p - window + 1 > 0:
        first = p - window + 1
    cdef size_t col = <size_t>(h // group) * head_dim
    ls_attn_head(q + t * q_stride + h * head_dim, kv.kc + col, kv.vc + col, kv.stride,
                 _kv_blocks(kv, t), kv.block_size, first, p + 1, head_dim, scale,
                 scratch, q16, scratch + kv.n_scores, out + t * out_stride + h * head_dim)


cdef int _set_kv(_KV *kv, uint16_t[:, ::1] kc, uint16_t[:, ::1] vc, const int32_t[::1] pos,
                 const int32_t[::1] seq, const int32_t[:, ::1] tables, int block_size, int64_t T,
                 int64_t width, float[:, ::1] scratch, int head_dim) except -1:
    """Fill kv, checking that every pool row token t's attention reads or writes exists."""
    cdef int64_t t, b, n_blocks, n_rows = kc.shape[0]
    cdef int32_t blk
    _check(kc.shape[1] == width and vc.shape[1] == width and vc.shape[0] == n_rows,
           "kv pool shape mismatch")
    _check(block_size > 0 and n_rows % block_size == 0, "kv pool rows must be whole blocks")
    _check(pos.shape[0] == T and seq.shape[0] == T, "one position and one sequence per token")
    _check(tables.shape[0] > 0 and tables.shape[1] > 0, "empty block tables")
    for t in range(T):
        if seq[t] < 0 or seq[t] >= tables.shape[0]:
            raise ValueError(f"token {t}: sequence {seq[t]} has no block table")
        if pos[t] < 0 or pos[t] // block_size >= tables.shape[1]:
            raise ValueError(f"token {t}: position {pos[t]} is outside its block table")
        if pos[t] + 1 + 2 * head_dim > scratch.shape[1]:
            raise ValueError(f"token {t}: position {pos[t]} exceeds the attention scratch")
        for b in range(pos[t] // block_size + 1):
            blk = tables[seq[t], b]
            if blk < 0 or <int64_t>blk * block_size >= n_rows:
                raise ValueError(f"token {t}: block {blk} is outside the KV pool")
    kv.kc = &kc[0, 0]
    kv.vc = &vc[0, 0]
    kv.stride = <size_t>width
    kv.pos = &pos[0] if T > 0 else NULL
    kv.seq = &seq[0] if T > 0 else NULL
    kv.tables = &tables[0, 0]
    kv.tstride = tables.shape[1]
    kv.block_size = block_size
    kv.n_scores = scratch.shape[1] - 2 * head_dim
    return 0


cdef inline int _max_pos(const int32_t[::1] pos) noexcept nogil:
    cdef int64_t t
    cdef int m = 0
    for t in range(pos.shape[0]):
        if pos[t] > m:
            m = pos[t]
    return m


def store_kv(const float[:, ::1] k, const float[:, ::1] v, uint16_t[:, ::1] kc, uint16_t[:, ::1] vc,
             const int32_t[::1] pos, const int32_t[::1] seq, const int32_t[:, ::1] tables,
             int block_size, float[:, ::1] scratch, int head_dim):
    """k, v (T, KV) f32 -> the pool rows of each token's (seq[t], pos[t]) in kc, vc (f16)."""
    cdef int64_t T = k.shape[0], t
    _check(v.shape[0] == T and v.shape[1] == k.shape[1], "k/v shape mismatch")
    cdef _KV kv
    _set_kv(&kv, kc, vc, pos, seq, tables, block_size, T, k.shape[1], scratch, head_dim)
    with nogil:
        for t in range(T):
            _kv_store(&kv, t, &k[t, 0], &v[t, 0])


def attention(const float[:, ::1] q, uint16_t[:, ::1] kc, uint16_t[:, ::1] vc,
              float[:, ::1] out, const int32_t[::1] pos, const int32_t[::1] seq,
              const int32_t[:, ::1] tables, int block_size, int n_head, int n_head_kv, int head_dim,
              float scale, int window, float[:, ::1] scratch, uint16_t[:, ::1] q16):
    """Causal attention of T query tokens over their sequences' keys in the paged pool.

    q (T, n_head*head_dim); kc, vc (n_rows, n_head_kv*head_dim) f16; out (T, n_head*head_dim);
    token t (sequence seq[t], position pos[t]) sees its sequence's keys max(0, pos - window + 1) ..
    pos (window <= 0: no sliding window), which must already be stored. Query head h reads KV head
    h // (n_head / n_head_kv) (grouped-query attention). Per-thread scratch: scratch (threads,
    >= max(pos) + 1 + 2*head_dim) f32, q16 (threads, head_dim)."""
    cdef int64_t T = q.shape[0], i
    _check(n_head_kv > 0 and n_head % n_head_kv == 0, "n_head must be a multiple of n_head_kv")
    cdef int group = n_head // n_head_kv
    _check(q.shape[1] == n_head * head_dim and out.shape[1] == n_head * head_dim and out.shape[0] >= T,
           "attention q/out shape mismatch")
    _check(q16.shape[1] >= head_dim and q16.shape[0] == scratch.shape[0], "attention scratch too small")
    cdef _KV kv
    _set_kv(&kv, kc, vc, pos, seq, tables, block_size, T, n_head_kv * head_dim, scratch, head_dim)
    if T == 0:
        return
    cdef int nt = min(team_size(<double>T * n_head * (_max_pos(pos) + 1) * head_dim * 4, T * n_head),
                     <int>scratch.shape[0])
    cdef int tid
    for i in prange(T * n_head, nogil=True, schedule="dynamic", num_threads=nt):
        tid = threadid()
        _attn_item(&kv, i, n_head, group, head_dim, scale, window, &q[0, 0], q.shape[1],
                   &out[0, 0], out.shape[1], &scratch[tid, 0], &q16[tid, 0])


include "_quants.pxi"
include "_llama.pxi"
include "_phi2.pxi"
