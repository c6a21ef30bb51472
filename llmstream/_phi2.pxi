# One phi-2 layer step in one OpenMP parallel region; included by _ops.pyx after _llama.pxi (whose
# _Lin, _set_lin, _n_chunks, _lin_chunk and _quantize_for it uses).
#
# Attention and MLP read the same normed input, so q, k, v and fc1 share one converted activation
# (per vec_dot type) and one work list, and the output projection and fc2 share another: seven
# barriers per layer instead of ~14 fork/joins and Python calls. Biases are added per work item
# to the rows it computed, which is the same single f32 add as the per-op `y += b`.


cdef inline void _lin_bias_chunk(const _Lin *L, const float *b, int64_t c, int64_t T) noexcept nogil:
    """_lin_chunk(L, c, T), then y[t, r] += b[r] on its rows (b may be NULL)."""
    _lin_chunk(L, c, T)
    if b == NULL:
        return
    cdef int64_t ch = matmul_chunk(T, L.wstride)
    cdef int64_t r0 = c * ch
    cdef int64_t r1 = min(r0 + ch, L.n_out)
    cdef int64_t t, r
    cdef float *y
    for t in range(T):
        y = L.y + t * L.ldy
        for r in range(r0, r1):
            y[r] = y[r] + b[r]


cdef inline int64_t _lin_list_items(const _Lin **Ls, int n, int64_t T) noexcept nogil:
    cdef int64_t total = 0
    cdef int j
    for j in range(n):
        total += _n_chunks(Ls[j], T)
    return total


cdef inline void _lin_list_item(const _Lin **Ls, const float **bs, int n, int64_t item,
                                int64_t T) noexcept nogil:
    """Work item `item` of the concatenated work lists of Ls[0..n-1] (biases bs): the threads pull
    items in turn (dynamic schedule), so a thread that is descheduled holds up one item, not a
    share of the whole list."""
    cdef int j
    cdef int64_t nc
    for j in range(n):
        nc = _n_chunks(Ls[j], T)
        if item < nc:
            _lin_bias_chunk(Ls[j], bs[j], item, T)
            return
        item -= nc


cdef inline const float *_bias_ptr(const float[::1] b, int64_t n, str name) except? NULL:
    if b is None:
        return NULL
    _check(b.shape[0] == n, f"{name} bias shape mismatch")
    return &b[0]


def phi2_layer(float[:, ::1] x, const float[::1] norm_w, const float[::1] norm_b,
               const uint8_t[:, ::1] wq, int tq, const float[::1] bq,
               const uint8_t[:, ::1] wk, int tk, const float[::1] bk,
               const uint8_t[:, ::1] wv, int tv, const float[::1] bv,
               const uint8_t[:, ::1] wo, int to, const float[::1] bo,
               const uint8_t[:, ::1] wu, int tu, const float[::1] bu,
               const uint8_t[:, ::1] wd, int td, const float[::1] bd,
               uint16_t[:, ::1] kc, uint16_t[:, ::1] vc, const int32_t[::1] pos,
               const int32_t[::1] seq, const int32_t[:, ::1] tables, int block_size,
               int n_head, int n_head_kv, int head_dim, int n_rot, float rope_base,
               float rope_scale, float eps, int window,
               float[:, ::1] h, float[:, ::1] q, float[:, ::1] k, float[:, ::1] v,
               float[:, ::1] att, float[:, ::1] o, float[:, ::1] f1,
               uint8_t[::1] xq, float[:, ::1] scratch, uint16_t[:, ::1] q16):
    """One phi-2 layer on x (T, E) in place; token t belongs to sequence seq[t] at position pos[t]
    and its key/value go to that sequence's rows of the paged pool kc, vc (see _KV):

        h = LayerNorm(x) * norm_w + norm_b;  q, k, v = h Wq + bq, h Wk + bk, h Wv + bv;
        NeoX RoPE on the first n_rot dims of each head of q, k;  q *= 1/sqrt(head_dim);
        kc, vc[pos] = k, v (f16);  a = attention(q, kc, vc, scale 1) Wo + bo;
        m = gelu(h Wu + bu) Wd + bd;  x += a + m

    Weights are raw rows (n_out, row bytes) with their GGML type ids; biases (n_out,) f32 or None.
    kc, vc (n_ctx, KV) f16. Scratch: h, q, att, o (T, E); k, v (T, KV); f1 (T, F); xq >= 4 * T *
    the largest vec_dot row of any of the weights; scratch / q16 as for attention(). Bit-identical
    to layernorm, the Linear calls, rope, store_kv, attention and gelu of _ops applied one by one."""
    cdef int64_t T = x.shape[0], E = x.shape[1], F = f1.shape[1], KV = k.shape[1]
    _check(norm_w.shape[0] == E and norm_b.shape[0] == E, "norm shape mismatch")
    _check(h.shape[0] == T and q.shape[0] == T and k.shape[0] == T and v.shape[0] == T
           and att.shape[0] == T and o.shape[0] == T and f1.shape[0] == T,
           "scratch rows must equal the token count")
    _check(h.shape[1] == E and att.shape[1] == E and o.shape[1] == E and q.shape[1] == E
           and v.shape[1] == KV, "scratch width mismatch")
    _check(n_head % n_head_kv == 0 and n_head * head_dim == E and n_head_kv * head_dim == KV,
           "head shape mismatch")
    _check(0 < n_rot <= head_dim and n_rot % 2 == 0, "rope shape mismatch")
    _check(q16.shape[1] >= head_dim and q16.shape[0] == scratch.shape[0], "attention scratch too small")
    cdef _KV kv
    _set_kv(&kv, kc, vc, pos, seq, tables, block_size, T, KV, scratch, head_dim)
    if T == 0:
        return
    cdef size_t maxrs = 0
    for wt, n in ((tq, E), (tk, E), (tv, E), (to, E), (tu, E), (td, F)):
        _check(ls_vec_dot_type(wt) >= 0, f"unknown tensor type {wt}")
        maxrs = max(maxrs, ls_row_size(ls_vec_dot_type(wt), n))
    cdef size_t region = <size_t>T * maxrs
    cdef uint8_t *xq0 = &xq[0]
    # h converted once per distinct vec_dot type among q, k, v, fc1 (one region each)
    cdef int vdts[4]
    cdef int n_reg = 0, r, j
    cdef int reg[4]
    cdef int types[4]
    types[0] = tq; types[1] = tk; types[2] = tv; types[3] = tu
    for j in range(4):
        reg[j] = -1
        for r in range(n_reg):
            if vdts[r] == ls_vec_dot_type(types[j]):
                reg[j] = r
        if reg[j] < 0:
            vdts[n_reg] = ls_vec_dot_type(types[j])
            reg[j] = n_reg
            n_reg += 1
    _check(<size_t>xq.shape[0] >= max(n_reg, 2) * region, "activation scratch too small")
    cdef _Lin Lq, Lk, Lv, Lo, Lu, Ld
    _set_lin(&Lq, wq, tq, E, q, xq0 + reg[0] * region)
    _set_lin(&Lk, wk, tk, E, k, xq0 + reg[1] * region)
    _set_lin(&Lv, wv, tv, E, v, xq0 + reg[2] * region)
    _set_lin(&Lu, wu, tu, E, f1, xq0 + reg[3] * region)
    # after the first work list: att converted in region 0, gelu(f1) in region 1; fc2 -> att
    _set_lin(&Lo, wo, to, E, o, xq0)
    _set_lin(&Ld, wd, td, F, att, xq0 + region)
    _check(Lo.n_out == E and Ld.n_out == E and Lu.n_out == F
           and Lq.n_out == E and Lk.n_out == KV and Lv.n_out == KV, "weight shapes mismatch")
    cdef const _Lin *L1[4]
    cdef const float *b1[4]
    cdef const _Lin *L2[2]
    cdef const float *b2[2]
    L1[0] = &Lq; L1[1] = &Lk; L1[2] = &Lv; L1[3] = &Lu
    b1[0] = _bias_ptr(bq, E, "q"); b1[1] = _bias_ptr(bk, KV, "k")
    b1[2] = _bias_ptr(bv, KV, "v"); b1[3] = _bias_ptr(bu, F, "fc1")
    L2[0] = &Lo; L2[1] = &Ld
    b2[0] = _bias_ptr(bo, E, "output"); b2[1] = _bias_ptr(bd, E, "fc2")
    cdef bint conv_k = reg[1] > 0 and reg[1] != reg[0]
    cdef bint conv_v = reg[2] > 0 and reg[2] != reg[0] and reg[2] != reg[1]
    cdef bint conv_u = reg[3] > 0 and reg[3] != reg[0] and reg[3] != reg[1] and reg[3] != reg[2]
    cdef int64_t nc1 = _lin_list_items(L1, 4, T), nc2 = _lin_list_items(L2, 2, T)
    cdef int group = n_head // n_head_kv
    cdef float q_scale = 1.0 / sqrt(<double>head_dim)
    cdef double weight_bytes = (_bytes(&Lq) + _bytes(&Lk) + _bytes(&Lv) + _bytes(&Lo) + _bytes(&Lu)
                                + _bytes(&Ld))
    cdef int nt = min(team_size(weight_bytes * T, max(nc1, nc2, T)), <int>scratch.shape[0])
    cdef int64_t t, i, jj
    cdef int tid
    with nogil, parallel(num_threads=nt):
        for t in prange(T, schedule="dynamic"):
            ls_layernorm(&x[t, 0], &norm_w[0], &norm_b[0], &h[t, 0], <int>E, eps)
            _quantize_for(&Lq, &h[t, 0], t)
            if conv_k:
                _quantize_for(&Lk, &h[t, 0], t)
            if conv_v:
                _quantize_for(&Lv, &h[t, 0], t)
            if conv_u:
                _quantize_for(&Lu, &h[t, 0], t)
        for i in prange(nc1, schedule="dynamic"):
            _lin_list_item(L1, b1, 4, i, T)
        for t in prange(T, schedule="dynamic"):
            ls_rope(&q[t, 0], n_head, head_dim, n_rot, pos[t], rope_base, rope_scale, NULL, 1)
            ls_rope(&k[t, 0], n_head_kv, head_dim, n_rot, pos[t], rope_base, rope_scale, NULL, 1)
            for jj in range(E):
                q[t, jj] = q[t, jj] * q_scale
            _kv_store(&kv, t, &k[t, 0], &v[t, 0])
            ls_gelu(&f1[t, 0], <int>F)
            _quantize_for(&Ld, &f1[t, 0], t)
        for i in prange(T * n_head, schedule="dynamic"):
            tid = threadid()
            _attn_item(&kv, i, n_head, group, head_dim, 1.0, window, &q[0, 0], <size_t>E,
                       &att[0, 0], <size_t>E, &scratch[tid, 0], &q16[tid, 0])
        for t in prange(T, schedule="dynamic"):
            _quantize_for(&Lo, &att[t, 0], t)
        for i in prange(nc2, schedule="dynamic"):
            _lin_list_item(L2, b2, 2, i, T)
        for t in prange(T, schedule="dynamic"):
            for jj in range(E):
                x[t, jj] = x[t, jj] + (o[t, jj] + att[t, jj])
