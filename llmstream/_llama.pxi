# One llama layer step in one OpenMP parallel region; included by _ops.pyx.
#
# The per-op functions of _ops.pyx each open (and join) their own parallel region: a decode step of
# a 22-layer model made ~350 of them, each a fork, a barrier and a join of the thread team, plus a
# Python call. llama_layer does a whole layer with one region and ten barriers (the implicit one at
# the end of each prange), and shares each activation quantization between the matmuls that read it
# (q/k/v; gate/up).

cdef struct _Lin:
    const uint8_t *w        # raw weight rows (n_out, wstride bytes)
    size_t wstride
    int type
    int64_t n_in, n_out
    const uint8_t *xq       # the T activation rows, converted to the type's vec_dot type
    size_t xrs              # bytes per activation row
    float *y                # output (T, ldy)
    size_t ldy


cdef inline int64_t _n_chunks(const _Lin *L, int64_t T) noexcept nogil:
    cdef int64_t ch = matmul_chunk(T, L.wstride)
    return (L.n_out + ch - 1) // ch


cdef inline void _lin_chunk(const _Lin *L, int64_t c, int64_t T) noexcept nogil:
    """Rows c*matmul_chunk(T, row bytes) .. of L for all T tokens."""
    cdef int64_t ch = matmul_chunk(T, L.wstride)
    cdef int64_t r0 = c * ch
    cdef int64_t r1 = min(r0 + ch, L.n_out)
    ls_matmul_rows(L.type, L.n_in, L.w, L.wstride, r0, r1, L.xq, L.xrs, T, L.y, L.ldy)


cdef inline void _lin3_chunk(const _Lin *a, const _Lin *b, const _Lin *c, int64_t i,
                             int64_t T) noexcept nogil:
    """Chunk i of the rows of a, then b, then c (b, c may be NULL): one work list for fused matmuls."""
    cdef int64_t na = _n_chunks(a, T), nb = 0
    if i < na:
        _lin_chunk(a, i, T)
        return
    i -= na
    if b != NULL:
        nb = _n_chunks(b, T)
        if i < nb:
            _lin_chunk(b, i, T)
            return
        i -= nb
    if c != NULL:
        _lin_chunk(c, i, T)


cdef inline double _bytes(const _Lin *L) noexcept nogil:
    return <double>L.n_out * L.wstride


cdef int _set_lin(_Lin *L, const uint8_t[:, ::1] w, int wtype, int64_t n_in, float[:, ::1] y,
                  uint8_t *xq) except -1:
    cdef int vdt = ls_vec_dot_type(wtype)
    _check(vdt >= 0, f"unknown tensor type {wtype}")
    _check(<size_t>w.shape[1] == ls_row_size(wtype, n_in),
           f"weight rows are {w.shape[1]} bytes, expected {ls_row_size(wtype, n_in)} for {n_in} inputs")
    _check(y.shape[1] == w.shape[0], "output shape mismatch")
    L.w = &w[0, 0]
    L.wstride = <size_t>w.shape[1]
    L.type = wtype
    L.n_in = n_in
    L.n_out = w.shape[0]
    L.xq = xq
    L.xrs = ls_row_size(vdt, n_in)
    L.y = &y[0, 0]
    L.ldy = <size_t>y.shape[1]
    return 0


cdef inline void _quantize_for(const _Lin *L, const float *x, int64_t t) noexcept nogil:
    ls_quantize_row(ls_vec_dot_type(L.type), x, <void *>(L.xq + t * L.xrs), L.n_in)


def llama_layer(float[:, ::1] x, const float[::1] attn_norm, const float[::1] ffn_norm,
                const uint8_t[:, ::1] wq, int tq, const uint8_t[:, ::1] wk, int tk,
                const uint8_t[:, ::1] wv, int tv, const uint8_t[:, ::1] wo, int to,
                const uint8_t[:, ::1] wg, int tg, const uint8_t[:, ::1] wu, int tu,
                const uint8_t[:, ::1] wd, int td,
                uint16_t[:, ::1] kc, uint16_t[:, ::1] vc, const int32_t[::1] pos,
                const int32_t[::1] seq, const int32_t[:, ::1] tables, int block_size,
                int n_head, int n_head_kv, int head_dim, int n_rot, float rope_base, bint neox,
                float rope_scale, const float[::1] rope_freqs, float eps, int window,
                float[:, ::1] h, float[:, ::1] q, float[:, ::1] k, float[:, ::1] v,
                float[:, ::1] att, float[:, ::1] o, float[:, ::1] f1, float[:, ::1] f2,
                uint8_t[::1] xq, float[:, ::1] scratch, uint16_t[:, ::1] q16):
    """One llama layer on x (T, E) in place; token t belongs to sequence seq[t] at position pos[t]
    and its key/value go to that sequence's rows of the paged pool kc, vc (see _KV):

        h = RMSNorm(x) * attn_norm;  q, k, v = h Wq, h Wk, h Wv;  RoPE(q, k);  kc, vc[pos] = k, v
        x += attention(q, kc, vc) Wo;  h = RMSNorm(x) * ffn_norm;  x += (silu(h Wg) * h Wu) Wd

    Weights are raw rows (n_out, row bytes) with their GGML type ids. Scratch: h, q, att, o (T, E);
    k, v (T, KV); f1, f2 (T, F); xq >= 3 * T * the largest vec_dot row of any of the weights;
    scratch / q16 as for attention(). RoPE: rope_scale = 1 / linear scaling factor, rope_freqs
    (n_rot/2,) Llama 3 frequency factors or None (see rope()). Bit-identical to the per-op
    reference (models/llama.py forward_ops)."""
    cdef int64_t T = x.shape[0], E = x.shape[1], F = f1.shape[1], KV = k.shape[1]
    _check(attn_norm.shape[0] == E and ffn_norm.shape[0] == E, "norm shape mismatch")
    _check(h.shape[0] == T and q.shape[0] == T and k.shape[0] == T and v.shape[0] == T
           and att.shape[0] == T and o.shape[0] == T and f1.shape[0] == T and f2.shape[0] == T,
           "scratch rows must equal the token count")
    _check(h.shape[1] == E and att.shape[1] == E and o.shape[1] == E and q.shape[1] == E
           and v.shape[1] == KV and f2.shape[1] == F, "scratch width mismatch")
    _check(n_head % n_head_kv == 0 and n_head * head_dim == E and n_head_kv * head_dim == KV,
           "head shape mismatch")
    _check(0 < n_rot <= head_dim and n_rot % 2 == 0, "rope shape mismatch")
    cdef const float *ff = _rope_factors(rope_freqs, n_rot)
    _check(q16.shape[1] >= head_dim and q16.shape[0] == scratch.shape[0], "attention scratch too small")
    cdef _KV kv
    _set_kv(&kv, kc, vc, pos, seq, tables, block_size, T, KV, scratch, head_dim)
    if T == 0:
        return
    cdef size_t maxrs = 0
    for wt, n in ((tq, E), (tk, E), (tv, E), (to, E), (tg, E), (tu, E), (td, F)):
        _check(ls_vec_dot_type(wt) >= 0, f"unknown tensor type {wt}")
        maxrs = max(maxrs, ls_row_size(ls_vec_dot_type(wt), n))
    cdef size_t region = <size_t>T * maxrs
    _check(<size_t>xq.shape[0] >= 3 * region, "activation scratch too small")
    cdef uint8_t *xq0 = &xq[0]
    cdef _Lin Lq, Lk, Lv, Lo, Lg, Lu, Ld
    # q/k/v share one converted h when their vec_dot types agree (the usual case), else own regions
    _set_lin(&Lq, wq, tq, E, q, xq0)
    _set_lin(&Lk, wk, tk, E, k, xq0 if ls_vec_dot_type(tk) == ls_vec_dot_type(tq) else xq0 + region)
    _set_lin(&Lv, wv, tv, E, v,
             xq0 if ls_vec_dot_type(tv) == ls_vec_dot_type(tq) else
             (xq0 + region if ls_vec_dot_type(tv) == ls_vec_dot_type(tk) else xq0 + 2 * region))
    _set_lin(&Lo, wo, to, E, o, xq0)
    _set_lin(&Lg, wg, tg, E, f1, xq0)
    _set_lin(&Lu, wu, tu, E, f2, xq0 if ls_vec_dot_type(tu) == ls_vec_dot_type(tg) else xq0 + region)
    _set_lin(&Ld, wd, td, F, o, xq0)
    _check(Lo.n_out == E and Ld.n_out == E and Lg.n_out == F and Lu.n_out == F
           and Lq.n_out == E and Lk.n_out == KV and Lv.n_out == KV, "weight shapes mismatch")
    cdef bint k_own = Lk.xq != Lq.xq, v_own = Lv.xq != Lq.xq and Lv.xq != Lk.xq
    cdef bint u_own = Lu.xq != Lg.xq
    cdef int64_t nc_qkv = _n_chunks(&Lq, T) + _n_chunks(&Lk, T) + _n_chunks(&Lv, T)
    cdef int64_t nc_o = _n_chunks(&Lo, T), nc_gu = _n_chunks(&Lg, T) + _n_chunks(&Lu, T)
    cdef int64_t nc_d = _n_chunks(&Ld, T)
    cdef int group = n_head // n_head_kv
    cdef float scale = 1.0 / sqrt(<double>head_dim)
    cdef double weight_bytes = (_bytes(&Lq) + _bytes(&Lk) + _bytes(&Lv) + _bytes(&Lo) + _bytes(&Lg)
                                + _bytes(&Lu) + _bytes(&Ld))
    cdef int nt = min(team_size(weight_bytes * T, max(nc_qkv, nc_gu, T)), <int>scratch.shape[0])
    cdef int64_t t, c, i, j
    cdef int tid
    with nogil, parallel(num_threads=nt):
        # attention block
        for t in prange(T, schedule="dynamic"):
            ls_rmsnorm(&x[t, 0], &attn_norm[0], &h[t, 0], <int>E, eps)
            _quantize_for(&Lq, &h[t, 0], t)
            if k_own:
                _quantize_for(&Lk, &h[t, 0], t)
            if v_own:
                _quantize_for(&Lv, &h[t, 0], t)
        for c in prange(nc_qkv, schedule="dynamic"):
            _lin3_chunk(&Lq, &Lk, &Lv, c, T)
        for t in prange(T, schedule="dynamic"):
            ls_rope(&q[t, 0], n_head, head_dim, n_rot, pos[t], rope_base, rope_scale, ff, neox)
            ls_rope(&k[t, 0], n_head_kv, head_dim, n_rot, pos[t], rope_base, rope_scale, ff, neox)
            _kv_store(&kv, t, &k[t, 0], &v[t, 0])
        for i in prange(T * n_head, schedule="dynamic"):
            tid = threadid()
            _attn_item(&kv, i, n_head, group, head_dim, scale, window, &q[0, 0], <size_t>E,
                       &att[0, 0], <size_t>E, &scratch[tid, 0], &q16[tid, 0])
        for t in prange(T, schedule="dynamic"):
            _quantize_for(&Lo, &att[t, 0], t)
        for c in prange(nc_o, schedule="dynamic"):
            _lin_chunk(&Lo, c, T)
        # feed-forward block
        for t in prange(T, schedule="dynamic"):
            for j in range(E):
                x[t, j] = x[t, j] + o[t, j]
            ls_rmsnorm(&x[t, 0], &ffn_norm[0], &h[t, 0], <int>E, eps)
            _quantize_for(&Lg, &h[t, 0], t)
            if u_own:
                _quantize_for(&Lu, &h[t, 0], t)
        for c in prange(nc_gu, schedule="dynamic"):
            _lin3_chunk(&Lg, &Lu, NULL, c, T)
        for t in prange(T, schedule="dynamic"):
            ls_swiglu(&f1[t, 0], &f2[t, 0], <int>F)
            _quantize_for(&Ld, &f1[t, 0], t)
        for c in prange(nc_d, schedule="dynamic"):
            _lin_chunk(&Ld, c, T)
        for t in prange(T, schedule="dynamic"):
            for j in range(E):
                x[t, j] = x[t, j] + o[t, j]
