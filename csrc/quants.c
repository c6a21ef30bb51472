/* quants.c — scalar reference kernels (plain x86-64, no SIMD intrinsics) and the dispatching ls_*
 * entry points of quants.h (the type table they read is types.c).
 *
 * The dequantizers follow the formulas of formats.h in the same float operation order as
 * ggml-quants.c (so they agree bit for bit with gguf-py's numpy reference). The activation
 * quantizers reproduce llama.cpp's *_ref quantizers exactly. The dot products compute each block's
 * integer sum exactly and accumulate the scaled block sums in float (like ggml's generic C), F32 /
 * F16 / BF16 sum float products in double (like ggml_vec_dot_f16).
 */
#include <math.h>
#include <string.h>

#include "quants_impl.h"

/* ---------------------------------------------------------------------------------------------
 * Type properties, from the rows of types.c */

/* Any type the traits know: GGML's and the x8 layouts (which only ls_matmul_rows takes). */
static int traits_ok(int type) { return type >= 0 && type < LS_TYPE_SLOTS && ls_types[type].blck != 0; }

/* GGML types only: what files hold and what the row-by-row entry points take. */
int ls_type_known(int type) { return traits_ok(type) && ls_types[type].x8 != 1; }

int64_t ls_blck_size(int type) { return traits_ok(type) ? ls_types[type].blck : 0; }

size_t ls_type_size(int type) { return traits_ok(type) ? ls_types[type].size : 0; }

size_t ls_row_size(int type, int64_t n) {
    if (!traits_ok(type) || n < 0) return 0;
    return (size_t)(n / ls_types[type].blck) * ls_types[type].size;
}

int ls_vec_dot_type(int type) { return traits_ok(type) ? ls_types[type].vec_dot_type : -1; }

const char *ls_type_name(int type) { return type >= 0 && type < LS_TYPE_SLOTS ? ls_types[type].name : NULL; }

int ls_type_is_x8(int type) { return traits_ok(type) && ls_types[type].x8 == 1; }

int ls_type_quantizes(int type) { return ls_type_known(type) && ls_types[type].quantize[LS_SIMD_SCALAR] != NULL; }

static int ls_row_ok(int type, int64_t n) {
    return ls_type_known(type) && n >= 0 && n % ls_types[type].blck == 0;
}

/* Dispatch: the table of the current SIMD level (cpu.c), which falls back to the scalar kernel
 * for slots without a SIMD twin. Invalid arguments make quantize / dequantize a no-op and
 * ls_vec_dot return NaN; the Python wrappers reject them before they get here. */
void ls_quantize_row(int type, const float *x, void *y, int64_t n) {
    if (!ls_row_ok(type, n)) return;
    const ls_quantize_fn f = ls_kernels()->quantize[type];
    if (f) f(x, y, n);
}

void ls_dequantize_row(int type, const void *x, float *y, int64_t n) {
    if (!ls_row_ok(type, n)) return;
    const ls_dequantize_fn f = ls_kernels()->dequantize[type];
    if (f) f(x, y, n);
}

float ls_vec_dot(int type, int64_t n, const void *w, const void *x) {
    if (!ls_row_ok(type, n)) return NAN;
    const ls_vec_dot_fn f = ls_kernels()->vec_dot[type];
    return f ? f(n, w, x) : NAN;
}

void ls_vec_dot_x4(int type, int64_t n, const void *w, const void *x, size_t x_stride, float *y) {
    if (!ls_row_ok(type, n)) {
        for (int t = 0; t < 4; ++t) y[t] = NAN;
        return;
    }
    const ls_kernel_table *k = ls_kernels();
    if (k->vec_dot_x4[type]) {
        k->vec_dot_x4[type](n, w, x, x_stride, y);
        return;
    }
    const ls_vec_dot_fn f = k->vec_dot[type];
    for (int t = 0; t < 4; ++t) y[t] = f ? f(n, w, (const char *)x + (size_t)t * x_stride) : NAN;
}

// W rows r0..r1-1 (n_out, n) @ x (T, n) -> y (T, ldy): y[t, r] = w_r · x_t
void ls_matmul_rows(int type, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                    const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    if (traits_ok(type) && ls_types[type].x8 == 1) {
        /* an x8 layout: one kernel for any T; one that declines (out of memory for its buffers)
         * leaves the rows to the scalar twin, which gives the same bits */
        if (n < 0 || n % ls_types[type].blck || r0 % 8) return;
        if (ls_kernels()->gemm[type](n, w, w_stride, r0, r1, x, x_stride, T, y, ldy) < r1)
            ls_types[type].gemm[LS_SIMD_SCALAR](n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
        return;
    }
    if (!ls_row_ok(type, n)) return;
    const ls_kernel_table *k = ls_kernels();
    /* batch (gemm) and decode (gemv) kernels give bit-identical rows: a token's result does not
     * depend on the batch it came in (see quants.h) */
    const ls_matmul_rows_fn gemm = __atomic_load_n(&k->gemm[type], __ATOMIC_ACQUIRE);
    const ls_matmul_rows_fn gemv = __atomic_load_n(&k->gemv[type], __ATOMIC_ACQUIRE);
    if (gemm && gemv) {
        if ((T >= 4 ? gemm : gemv)(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy) >= r1) return;
        if (gemm(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy) >= r1) return;   /* gemv declined */
        /* out of memory: the kernels below (not bit-identical to the batch kernels) */
    }
    const ls_vec_dot_fn f = k->vec_dot[type];
    const ls_vec_dot_x4_fn f4 = k->vec_dot_x4[type];
    const char *wb = w, *xb = x;
    int64_t t = 0;
    if (f4) {
        for (; t + 4 <= T; t += 4) {
            const char *xt = xb + (size_t)t * x_stride;
            for (int64_t r = r0; r < r1; ++r) {
                float o[4];
                f4(n, wb + (size_t)r * w_stride, xt, x_stride, o);
                for (int j = 0; j < 4; ++j) y[(size_t)(t + j) * ldy + r] = o[j];
            }
        }
    }
    for (; t < T; ++t)
        for (int64_t r = r0; r < r1; ++r)
            y[(size_t)t * ldy + r] = f(n, wb + (size_t)r * w_stride, xb + (size_t)t * x_stride);
}

/* ---------------------------------------------------------------------------------------------
 * Scalar twins of the matmul kernels with a row per lane (the gemm / gemv slots of quants_avx2.c and
 * quants_avx512.c). Those add a row's scaled block sums in another float order than vec_dot above:
 * per block, in order, one fused multiply-add, acc = fma(float(isum_b), d_b * dx_b, acc). These
 * give the same bits (fmaf rounds once, as the SIMD FMA does); tests pin the SIMD kernels to them. */

// W rows r0..r1-1 (n_out, n) in Q4_0 (q4) or Q8_0 @ x (T, n) in Q8_0 -> y[t * ldy + r] = fold over the
// blocks b: acc = fmaf((float)sum_k qw_k * qx_k, dw_b * dx_b, acc), qw = nibble - 8 (Q4_0) or as stored
static void matmul_rows_q32_q8_0_lanes(int q4, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                       const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_0 *xb = (const block_q8_0 *)((const char *)x + (size_t)t * x_stride);
        for (int64_t r = r0; r < r1; ++r) {
            const char *row = (const char *)w + (size_t)r * w_stride;
            float acc = 0.0f;
            for (int64_t b = 0; b < n / QK8_0; ++b) {
                int isum = 0;
                float dw;
                if (q4) {
                    const block_q4_0 *wb = (const block_q4_0 *)row + b;
                    for (int j = 0; j < 16; ++j)
                        isum += ((wb->qs[j] & 15) - 8) * xb[b].qs[j] + ((wb->qs[j] >> 4) - 8) * xb[b].qs[j + 16];
                    dw = ls_fp16_to_fp32(wb->d);
                } else {
                    const block_q8_0 *wb = (const block_q8_0 *)row + b;
                    for (int j = 0; j < QK8_0; ++j) isum += wb->qs[j] * xb[b].qs[j];
                    dw = ls_fp16_to_fp32(wb->d);
                }
                acc = fmaf((float)isum, dw * ls_fp16_to_fp32(xb[b].d), acc);
            }
            y[(size_t)t * ldy + r] = acc;
        }
    }
}

// W rows r0..r1-1 (n_out, n) in Q4_K @ x (T, n) in Q8_K -> y[t * ldy + r] = fold over the super-blocks b:
// acc = fmaf((float)isum, d * dx, acc); acc = fmaf(-(float)msum, dmin * dx, acc), with
// isum = sum_s sc_s * sum_k q_k x_k over sub-block s, msum = sum_s m_s * (sum of x over sub-block s)
static void matmul_rows_q4_K_q8_K_lanes(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_K *xb = (const block_q8_K *)((const char *)x + (size_t)t * x_stride);
        for (int64_t r = r0; r < r1; ++r) {
            const block_q4_K *wb = (const block_q4_K *)((const char *)w + (size_t)r * w_stride);
            float acc = 0.0f;
            for (int64_t b = 0; b < n / QK_K; ++b) {
                uint8_t sc[8], m[8];
                ls_unpack_scales_k4(wb[b].scales, sc, m);
                int isum = 0, msum = 0;
                for (int s = 0; s < 8; ++s) {
                    msum += m[s] * (xb[b].bsums[2 * s] + xb[b].bsums[2 * s + 1]);
                    const uint8_t *q = wb[b].qs + 32 * (s / 2);
                    int dot = 0;
                    for (int l = 0; l < 32; ++l) dot += (s % 2 ? q[l] >> 4 : q[l] & 15) * xb[b].qs[32 * s + l];
                    isum += sc[s] * dot;
                }
                acc = fmaf((float)isum, ls_fp16_to_fp32(wb[b].d) * xb[b].d, acc);
                acc = fmaf(-(float)msum, ls_fp16_to_fp32(wb[b].dmin) * xb[b].d, acc);
            }
            y[(size_t)t * ldy + r] = acc;
        }
    }
}

// W rows r0..r1-1 (n_out, n) in Q6_K @ x (T, n) in Q8_K -> y[t * ldy + r] = fold over the super-blocks b:
// acc = fmaf((float)sum_s sc_s * sum_k (q_k - 32) x_k over sub-block s, d * dx, acc)
static void matmul_rows_q6_K_q8_K_lanes(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_K *xb = (const block_q8_K *)((const char *)x + (size_t)t * x_stride);
        for (int64_t r = r0; r < r1; ++r) {
            const block_q6_K *wb = (const block_q6_K *)((const char *)w + (size_t)r * w_stride);
            float acc = 0.0f;
            for (int64_t b = 0; b < n / QK_K; ++b) {
                int isum = 0;
                for (int k = 0; k < QK_K; ++k) {    /* element k's quant from ql / qh (formats.h) */
                    const int h = k / 128, l = k % 32, c = (k % 128) / 32;
                    const uint8_t *ql = wb[b].ql + 64 * h, *qh = wb[b].qh + 32 * h;
                    const int lo = c == 0 ? ql[l] & 15 : c == 1 ? ql[l + 32] & 15 : c == 2 ? ql[l] >> 4 : ql[l + 32] >> 4;
                    const int qv = lo | (((qh[l] >> (2 * c)) & 3) << 4);
                    isum += wb[b].scales[k / 16] * ((qv - 32) * xb[b].qs[k]);
                }
                acc = fmaf((float)isum, ls_fp16_to_fp32(wb[b].d) * xb[b].d, acc);
            }
            y[(size_t)t * ldy + r] = acc;
        }
    }
}

int ls_matmul_rows_lanes_ref(int type, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                             const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    if (!ls_row_ok(type, n)) return 0;
    switch (type) {
    case LS_TYPE_Q4_0: matmul_rows_q32_q8_0_lanes(1, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy); return 1;
    case LS_TYPE_Q8_0: matmul_rows_q32_q8_0_lanes(0, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy); return 1;
    case LS_TYPE_Q4_K: matmul_rows_q4_K_q8_K_lanes(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy); return 1;
    case LS_TYPE_Q6_K: matmul_rows_q6_K_q8_K_lanes(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy); return 1;
    default: return 0;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Repacking into the x8 layouts (formats.h) and their scalar matmul kernels. The kernels compute
 * each row exactly as matmul_rows_q4_K_q8_K_lanes / _q6_K_ above (same integers, same float
 * fold), so a repacked tensor gives the bits of its source, at every SIMD level. */

int ls_repack_type(int type) {
    return traits_ok(type) && ls_types[type].x8 > 1 ? ls_types[type].x8 : -1;
}

size_t ls_repack_size(int type, int64_t rows, int64_t n) {
    const int x8 = ls_repack_type(type);
    if (x8 < 0 || rows < 0 || n < 0 || n % ls_types[type].blck) return 0;
    return (size_t)((rows + 7) / 8 * 8) * ls_row_size(x8, n);
}

// one Q4_K / Q5_K super-block of row p (scales, mins and low nibbles packed alike) -> lane p of o
static void repack_k4_lane(const uint8_t *scales, const uint8_t *qs, ls_fp16_t d, ls_fp16_t dmin, int p,
                           block_q4_Kx8 *o) {
    uint8_t sc[8], m[8];
    ls_unpack_scales_k4(scales, sc, m);
    o->d[p] = d;
    o->dmin[p] = dmin;
    for (int s = 0; s < 8; ++s) {
        o->sc[s][p] = sc[s];
        o->m[s / 2][p][s % 2] = m[s];
    }
    for (int k = 0; k < 4; ++k)
        for (int j = 0; j < 8; ++j) memcpy(&o->qs[k][j][4 * p], qs + 32 * k + 4 * j, 4);
}

// rows 8g..8g+7 of W (Q4_K) -> group g in Q4_K x8 (missing rows: zeros)
static void repack_q4_K_group(int64_t nb, const void *w, size_t w_stride, int64_t rows, int64_t g,
                              block_q4_Kx8 *dst) {
    memset(dst, 0, (size_t)nb * sizeof *dst);
    for (int p = 0; p < 8 && 8 * g + p < rows; ++p) {
        const block_q4_K *src = (const block_q4_K *)((const char *)w + (size_t)(8 * g + p) * w_stride);
        for (int64_t b = 0; b < nb; ++b) repack_k4_lane(src[b].scales, src[b].qs, src[b].d, src[b].dmin, p, &dst[b]);
    }
}

// rows 8g..8g+7 of W (Q5_K) -> group g in Q5_K x8 (missing rows: zeros)
static void repack_q5_K_group(int64_t nb, const void *w, size_t w_stride, int64_t rows, int64_t g,
                              block_q5_Kx8 *dst) {
    memset(dst, 0, (size_t)nb * sizeof *dst);
    for (int p = 0; p < 8 && 8 * g + p < rows; ++p) {
        const block_q5_K *src = (const block_q5_K *)((const char *)w + (size_t)(8 * g + p) * w_stride);
        for (int64_t b = 0; b < nb; ++b) {
            repack_k4_lane(src[b].scales, src[b].qs, src[b].d, src[b].dmin, p, &dst[b].k4);
            for (int j = 0; j < 8; ++j) memcpy(&dst[b].qh[j][4 * p], src[b].qh + 4 * j, 4);
        }
    }
}

// rows 8g..8g+7 of W (Q6_K) -> group g in Q6_K x8 (missing rows: zeros)
static void repack_q6_K_group(int64_t nb, const void *w, size_t w_stride, int64_t rows, int64_t g,
                              block_q6_Kx8 *dst) {
    memset(dst, 0, (size_t)nb * sizeof *dst);
    for (int p = 0; p < 8 && 8 * g + p < rows; ++p) {
        const block_q6_K *src = (const block_q6_K *)((const char *)w + (size_t)(8 * g + p) * w_stride);
        for (int64_t b = 0; b < nb; ++b) {
            block_q6_Kx8 *o = &dst[b];
            o->d[p] = src[b].d;
            for (int s = 0; s < 16; ++s) o->sc[s][p] = src[b].scales[s];
            for (int h = 0; h < 2; ++h)
                for (int j = 0; j < 8; ++j) {
                    for (int c = 0; c < 2; ++c) memcpy(&o->q[h][j / 2].ql[c][j % 2][4 * p], src[b].ql + 64 * h + 32 * c + 4 * j, 4);
                    memcpy(&o->q[h][j / 2].qh[j % 2][4 * p], src[b].qh + 32 * h + 4 * j, 4);
                }
        }
    }
}

// rows 8g..8g+7 of W (32-element blocks of `bsz` bytes: nh fp16 fields (d; Q4_1 / Q5_1 also m), then
// if q5 the 4 bytes qh, then the quant bytes) -> group g in Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 x8: each
// fp16 field's 8 values, the 5th bits transposed (formats.h: qh[4p + e] bit j = bit 4j + e of row p's
// qh), then each 4 quant bytes of row p at 4p of their 32 (missing rows: zeros)
static void repack_q32_group(int64_t nb, size_t bsz, int nh, int q5, const void *w, size_t w_stride, int64_t rows,
                             int64_t g, void *dst) {
    const size_t hb = sizeof(ls_fp16_t) * nh + (q5 ? 4 : 0);   /* header bytes a row */
    const size_t qoff = 8 * hb, xb = 8 * bsz;                   /* x8: quant lines' offset, block bytes */
    memset(dst, 0, (size_t)nb * xb);
    for (int p = 0; p < 8 && 8 * g + p < rows; ++p) {
        const uint8_t *src = (const uint8_t *)w + (size_t)(8 * g + p) * w_stride;
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t *o = (uint8_t *)dst + (size_t)b * xb;
            const uint8_t *sb = src + (size_t)b * bsz;
            for (int f = 0; f < nh; ++f) memcpy(o + 16 * f + sizeof(ls_fp16_t) * p, sb + sizeof(ls_fp16_t) * f, sizeof(ls_fp16_t));
            if (q5) {
                uint32_t qh;
                memcpy(&qh, sb + sizeof(ls_fp16_t) * nh, 4);
                for (int e = 0; e < 4; ++e) {
                    uint8_t v = 0;
                    for (int j = 0; j < 8; ++j) v |= (uint8_t)(((qh >> (4 * j + e)) & 1u) << j);
                    o[16 * nh + 4 * p + e] = v;
                }
            }
            for (size_t j = 0; j < (bsz - hb) / 4; ++j) memcpy(o + qoff + 32 * j + 4 * p, sb + hb + 4 * j, 4);
        }
    }
}

// rows 8g..8g+7 of W (Q2_K) -> group g in Q2_K x8 (missing rows: zeros)
static void repack_q2_K_group(int64_t nb, const void *w, size_t w_stride, int64_t rows, int64_t g,
                              block_q2_Kx8 *dst) {
    memset(dst, 0, (size_t)nb * sizeof *dst);
    for (int p = 0; p < 8 && 8 * g + p < rows; ++p) {
        const block_q2_K *src = (const block_q2_K *)((const char *)w + (size_t)(8 * g + p) * w_stride);
        for (int64_t b = 0; b < nb; ++b) {
            dst[b].d[p] = src[b].d;
            dst[b].dmin[p] = src[b].dmin;
            for (int s = 0; s < 16; ++s) dst[b].scales[s][p] = src[b].scales[s];
            for (int h = 0; h < 2; ++h)
                for (int q = 0; q < 8; ++q) memcpy(&dst[b].qs[h][q][4 * p], src[b].qs + 32 * h + 4 * q, 4);
        }
    }
}

// rows 8g..8g+7 of W (Q3_K) -> group g in Q3_K x8 (missing rows: zeros)
static void repack_q3_K_group(int64_t nb, const void *w, size_t w_stride, int64_t rows, int64_t g,
                              block_q3_Kx8 *dst) {
    memset(dst, 0, (size_t)nb * sizeof *dst);
    for (int p = 0; p < 8 && 8 * g + p < rows; ++p) {
        const block_q3_K *src = (const block_q3_K *)((const char *)w + (size_t)(8 * g + p) * w_stride);
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t sc[16];
            ls_unpack_scales_q3k(src[b].scales, sc);
            dst[b].d[p] = src[b].d;
            for (int s = 0; s < 16; ++s) dst[b].sc[s][p] = (int8_t)(sc[s] - 32);
            for (int q = 0; q < 8; ++q) memcpy(&dst[b].hmask[q][4 * p], src[b].hmask + 4 * q, 4);
            for (int h = 0; h < 2; ++h)
                for (int q = 0; q < 8; ++q) memcpy(&dst[b].qs[h][q][4 * p], src[b].qs + 32 * h + 4 * q, 4);
        }
    }
}

/* ---- Repacked IQ4_NL / IQ4_XS (x8, formats.h): repacking, and the folds of the scalar twins of their
 * AVX2 kernels (gemm_iq4_nl_x8_q8_0_avx2, gemm_iq4_xs_x8_q8_K_avx2; the twins are X8_SCALAR_TWIN
 * lines below). IQ4 has no row-per-lane kernel on its file layout, so these define the float fold:
 * per row and block b, in order,
 *     acc = fmaf((float)isum_b, d_b * dx_b, acc),   y = acc   (acc starting at 0)
 * with isum_b exact: IQ4_NL sum_k T[q_k] x_k; IQ4_XS sum_s (ls_s - 32) * (T[q]·x)_s. vec_dot adds
 * the same block sums in another float order (sum += isum * (dw * dx)): results agree to float
 * rounding; the AVX2 kernels give these bits (tests/test_repack.py). */

// rows 8g..8g+7 of W (IQ4_NL, or IQ4_XS if xs) -> group g in its x8 layout (missing rows: zeros)
static void repack_iq4_group(const int xs, int64_t nb, const void *w, size_t w_stride, int64_t rows, int64_t g,
                             void *dst) {
    memset(dst, 0, (size_t)nb * (xs ? sizeof(block_iq4_xsx8) : sizeof(block_iq4_nlx8)));
    for (int p = 0; p < 8 && 8 * g + p < rows; ++p) {
        const char *src = (const char *)w + (size_t)(8 * g + p) * w_stride;
        for (int64_t b = 0; b < nb; ++b) {
            if (xs) {
                const block_iq4_xs *sb = (const block_iq4_xs *)src + b;
                block_iq4_xsx8 *o = (block_iq4_xsx8 *)dst + b;
                o->d[p] = sb->d;
                for (int s = 0; s < 8; ++s) {
                    o->sc[s][p] = (int8_t)ls_iq4_xs_scale(sb, s);
                    for (int j = 0; j < 4; ++j) memcpy(&o->qs[s][j][4 * p], sb->qs + 16 * s + 4 * j, 4);
                }
            } else {
                const block_iq4_nl *sb = (const block_iq4_nl *)src + b;
                block_iq4_nlx8 *o = (block_iq4_nlx8 *)dst + b;
                o->d[p] = sb->d;
                for (int j = 0; j < 4; ++j) memcpy(&o->qs[j][4 * p], sb->qs + 4 * j, 4);
            }
        }
    }
}

/* sum_k T[q_k] * q8[k] over the 32 elements of lane p in 4 interleaved lines qs[j][4p + e] (exact). */
static inline int iq4_x8_dot32(const uint8_t (*qs)[32], int p, const int8_t *q8) {
    int sum = 0;
    for (int j = 0; j < 4; ++j)
        for (int e = 0; e < 4; ++e) {
            const uint8_t q = qs[j][4 * p + e];
            sum += ls_kvalues_iq4nl[q & 15] * q8[4 * j + e] + ls_kvalues_iq4nl[q >> 4] * q8[16 + 4 * j + e];
        }
    return sum;
}

// IQ4_NL x8 (xs = 0; Q8_0 block) / IQ4_XS x8 (xs = 1; Q8_K block) lane p -> acc = fmaf((float)isum,
// d * dx, acc), isum = sum_k T[q_k] x_k (IQ4_NL), sum_s (ls_s - 32) * (T[q]·x)_s (IQ4_XS)
static inline float fold_iq4_x8(const int xs, const void *vB, int p, const void *vx, float acc) {
    int isum = 0;    /* IQ4_XS: |isum| <= 256 * 32 * 127 * 127 < 2^31 */
    float dw, dx;
    if (xs) {
        const block_iq4_xsx8 *B = vB;
        const block_q8_K *xb = vx;
        for (int s = 0; s < 8; ++s) isum += B->sc[s][p] * iq4_x8_dot32(B->qs[s], p, xb->qs + 32 * s);
        dw = ls_fp16_to_fp32(B->d[p]);
        dx = xb->d;
    } else {
        const block_iq4_nlx8 *B = vB;
        const block_q8_0 *xb = vx;
        isum = iq4_x8_dot32(B->qs, p, xb->qs);
        dw = ls_fp16_to_fp32(B->d[p]);
        dx = ls_fp16_to_fp32(xb->d);
    }
    return fmaf((float)isum, dw * dx, acc);
}
static float fold_iq4_nl_x8(const void *B, int p, const void *xb, float acc) { return fold_iq4_x8(0, B, p, xb, acc); }
static float fold_iq4_xs_x8(const void *B, int p, const void *xb, float acc) { return fold_iq4_x8(1, B, p, xb, acc); }

int ls_repack_rows(int type, int64_t n, const void *w, size_t w_stride, int64_t rows,
                   int64_t g0, int64_t g1, void *dst) {
    const int x8 = ls_repack_type(type);
    if (x8 < 0 || n < 0 || n % ls_types[type].blck || rows < 0) return 0;
    const int64_t nb = n / ls_types[type].blck;
    const size_t group = 8 * ls_row_size(x8, n);
    for (int64_t g = g0; g < g1; ++g) {
        void *o = (char *)dst + (size_t)g * group;
        switch (type) {
        case LS_TYPE_Q4_K: repack_q4_K_group(nb, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q5_K: repack_q5_K_group(nb, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q2_K: repack_q2_K_group(nb, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q3_K: repack_q3_K_group(nb, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q6_K: repack_q6_K_group(nb, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q4_0: repack_q32_group(nb, sizeof(block_q4_0), 1, 0, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q8_0: repack_q32_group(nb, sizeof(block_q8_0), 1, 0, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q4_1: repack_q32_group(nb, sizeof(block_q4_1), 2, 0, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q5_0: repack_q32_group(nb, sizeof(block_q5_0), 1, 1, w, w_stride, rows, g, o); break;
        case LS_TYPE_Q5_1: repack_q32_group(nb, sizeof(block_q5_1), 2, 1, w, w_stride, rows, g, o); break;
        case LS_TYPE_IQ4_NL: repack_iq4_group(0, nb, w, w_stride, rows, g, o); break;
        case LS_TYPE_IQ4_XS: repack_iq4_group(1, nb, w, w_stride, rows, g, o); break;
        default: break;
        }
    }
    return 1;
}

/* The scalar twins of the x8 kernels share one loop: every row r (lane p = r % 8 of its group) and
 * token, its blocks in order, each folded into the row's float accumulator by the type's `fold`
 * (the float order the SIMD kernel reproduces bit for bit). */
typedef float (*x8_fold_fn)(const void *B, int p, const void *xb, float acc);

// W rows r0..r1-1 (n_out, n) in an x8 layout (r0 a multiple of 8) @ x (T, n) -> y[t * ldy + r]
//   = fold over the blocks b of acc = fold(block b of r's group, lane p, token t's block b, acc)
static void x8_rows_scalar(x8_fold_fn fold, size_t bsize, size_t xbsize, int64_t blck, int64_t n,
                           const void *w, size_t w_stride, int64_t r0, int64_t r1, const void *x,
                           size_t x_stride, int64_t T, float *y, size_t ldy) {
    for (int64_t t = 0; t < T; ++t) {
        const char *xt = (const char *)x + (size_t)t * x_stride;
        for (int64_t r = r0; r < r1; ++r) {
            const char *grp = (const char *)w + (size_t)(r / 8 * 8) * w_stride;
            float acc = 0.0f;
            for (int64_t b = 0; b < n / blck; ++b)
                acc = fold(grp + (size_t)b * bsize, (int)(r % 8), xt + (size_t)b * xbsize, acc);
            y[(size_t)t * ldy + r] = acc;
        }
    }
}

// Q4_K x8 (q5 = 0) / Q5_K x8 (q5 = 1) lane p · a Q8_K block -> acc = fmaf(isum, d * dx, acc);
// acc = fmaf(-msum, dmin * dx, acc): the fold of matmul_rows_q4_K_q8_K_lanes
static inline float fold_k4_x8(int q5, const void *vB, int p, const void *vx, float acc) {
    const block_q4_Kx8 *B = vB;
    const block_q8_K *xb = vx;
    const uint8_t (*qh)[32] = q5 ? ((const block_q5_Kx8 *)vB)->qh : NULL;
    int isum = 0, msum = 0;
    for (int s = 0; s < 8; ++s) {
        msum += B->m[s / 2][p][s % 2] * (xb->bsums[2 * s] + xb->bsums[2 * s + 1]);
        int dot = 0;
        for (int l = 0; l < 32; ++l) {
            const uint8_t q = B->qs[s / 2][l / 4][4 * p + l % 4];
            const int hb = qh ? ((qh[l / 4][4 * p + l % 4] >> s) & 1) << 4 : 0;
            dot += ((s % 2 ? q >> 4 : q & 15) | hb) * xb->qs[32 * s + l];
        }
        isum += B->sc[s][p] * dot;
    }
    acc = fmaf((float)isum, ls_fp16_to_fp32(B->d[p]) * xb->d, acc);
    return fmaf(-(float)msum, ls_fp16_to_fp32(B->dmin[p]) * xb->d, acc);
}
static float fold_q4_K_x8(const void *B, int p, const void *xb, float acc) { return fold_k4_x8(0, B, p, xb, acc); }
static float fold_q5_K_x8(const void *B, int p, const void *xb, float acc) { return fold_k4_x8(1, B, p, xb, acc); }

// Q2_K x8 (q3 = 0) / Q3_K x8 (q3 = 1) lane p · a Q8_K block, with isum = sum_s sc_s * (q · x)_s:
//   Q2_K: acc = fmaf(isum, d * dx, acc); acc = fmaf(-msum, dmin * dx, acc), msum = sum_s m_s * bsum_s
//   Q3_K: acc = fmaf(isum, d * dx, acc)  (sc_s = scale - 32, q = low2 - 4 * !high bit)
static inline float fold_k2_x8(int q3, const void *B, int p, const void *vx, float acc) {
    const block_q2_Kx8 *B2 = B;
    const block_q3_Kx8 *B3 = B;
    const block_q8_K *xb = vx;
    int isum = 0, msum = 0;
    for (int k = 0; k < QK_K; ++k) {
        const int h = k / 128, j = (k % 128) / 32, l = k % 32, s = k / 16;
        const uint8_t raw = q3 ? B3->qs[h][l / 4][4 * p + l % 4] : B2->qs[h][l / 4][4 * p + l % 4];
        int q = (raw >> (2 * j)) & 3;
        if (q3) q -= (B3->hmask[l / 4][4 * p + l % 4] >> (4 * h + j)) & 1 ? 0 : 4;
        isum += (q3 ? B3->sc[s][p] : B2->scales[s][p] & 15) * (q * xb->qs[k]);
    }
    if (!q3)
        for (int s = 0; s < 16; ++s) msum += (B2->scales[s][p] >> 4) * xb->bsums[s];
    acc = fmaf((float)isum, ls_fp16_to_fp32(q3 ? B3->d[p] : B2->d[p]) * xb->d, acc);
    return q3 ? acc : fmaf(-(float)msum, ls_fp16_to_fp32(B2->dmin[p]) * xb->d, acc);
}
static float fold_q2_K_x8(const void *B, int p, const void *xb, float acc) { return fold_k2_x8(0, B, p, xb, acc); }
static float fold_q3_K_x8(const void *B, int p, const void *xb, float acc) { return fold_k2_x8(1, B, p, xb, acc); }

// Q6_K x8 lane p · a Q8_K block -> acc = fmaf(sum_s sc_s * ((q - 32) · x)_s, d * dx, acc): the fold of
// matmul_rows_q6_K_q8_K_lanes
static float fold_q6_K_x8(const void *vB, int p, const void *vx, float acc) {
    const block_q6_Kx8 *B = vB;
    const block_q8_K *xb = vx;
    int isum = 0;
    for (int k = 0; k < QK_K; ++k) {
        const int h = k / 128, c = (k % 128) / 32, l = k % 32;
        const uint8_t L = B->q[h][l / 8].ql[c % 2][l / 4 % 2][4 * p + l % 4];
        const uint8_t H = B->q[h][l / 8].qh[l / 4 % 2][4 * p + l % 4];
        const int qv = (c < 2 ? L & 15 : L >> 4) | (((H >> (2 * c)) & 3) << 4);
        isum += B->sc[k / 16][p] * ((qv - 32) * xb->qs[k]);
    }
    return fmaf((float)isum, ls_fp16_to_fp32(B->d[p]) * xb->d, acc);
}

// The 32-element x8 layouts (`type` the source's: Q4_0, Q8_0, Q4_1, Q5_0, Q5_1) lane p · a Q8_0 block
// (Q8_1 for Q4_1 / Q5_1) -> acc = fmaf((float)isum, d * dx, acc), then for Q4_1 / Q5_1
// acc = fmaf(m, sx, acc) (sx = the Q8_1 block's s), with isum = sum_k (q_k - c) x_k exact: q the nibble
// (| 5th bit << 4 for Q5_0 / Q5_1) or Q8_0's int8, c = 8 (Q4_0), 16 (Q5_0), else 0. Q4_0 / Q8_0: the fold
// of matmul_rows_q32_q8_0_lanes; Q4_1 / Q5_0 / Q5_1 (whose source runs through vec_dot, which adds
// the same block terms in another float order) define it for gemm_q4_1_x8_q8_1_avx2 & co.
static inline float fold_q32_x8(const int type, const void *vB, int p, const void *vx, float acc) {
    const uint8_t *B = vB;                                      /* d[8] first in every layout */
    const int q5 = type == LS_TYPE_Q5_0 || type == LS_TYPE_Q5_1;
    const int has_m = type == LS_TYPE_Q4_1 || type == LS_TYPE_Q5_1;
    const int c = type == LS_TYPE_Q4_0 ? 8 : type == LS_TYPE_Q5_0 ? 16 : 0;
    const uint8_t *qh = B + 16 * (1 + has_m);                   /* Q5_0 / Q5_1: the transposed 5th bits */
    const uint8_t (*qs)[32] = (const uint8_t (*)[32])(qh + (q5 ? 32 : 0));
    const int8_t *xq = has_m ? ((const block_q8_1 *)vx)->qs : ((const block_q8_0 *)vx)->qs;
    int isum = 0;
    for (int k = 0; k < 32; ++k) {
        const int j = k / 4, e = k % 4;                         /* group j, byte e of lane p */
        int q;
        if (type == LS_TYPE_Q8_0) {
            q = ((const int8_t (*)[32])qs)[j][4 * p + e];
        } else {
            const uint8_t raw = qs[j % 4][4 * p + e];
            q = j < 4 ? raw & 15 : raw >> 4;
            if (q5) q |= ((qh[4 * p + e] >> j) & 1) << 4;
        }
        isum += (q - c) * xq[k];
    }
    ls_fp16_t d, m = 0;
    memcpy(&d, B + 2 * p, 2);
    if (has_m) memcpy(&m, B + 16 + 2 * p, 2);
    acc = fmaf((float)isum, ls_fp16_to_fp32(d) * ls_fp16_to_fp32(((const block_q8_0 *)vx)->d), acc);
    return has_m ? fmaf(ls_fp16_to_fp32(m), ls_fp16_to_fp32(((const block_q8_1 *)vx)->s), acc) : acc;
}
static float fold_q4_0_x8(const void *B, int p, const void *xb, float acc) { return fold_q32_x8(LS_TYPE_Q4_0, B, p, xb, acc); }
static float fold_q8_0_x8(const void *B, int p, const void *xb, float acc) { return fold_q32_x8(LS_TYPE_Q8_0, B, p, xb, acc); }
static float fold_q4_1_x8(const void *B, int p, const void *xb, float acc) { return fold_q32_x8(LS_TYPE_Q4_1, B, p, xb, acc); }
static float fold_q5_0_x8(const void *B, int p, const void *xb, float acc) { return fold_q32_x8(LS_TYPE_Q5_0, B, p, xb, acc); }
static float fold_q5_1_x8(const void *B, int p, const void *xb, float acc) { return fold_q32_x8(LS_TYPE_Q5_1, B, p, xb, acc); }

/* The twins themselves: the kernel signature (quants_impl.h ls_matmul_rows_k) over x8_rows_scalar. */
#define X8_SCALAR_TWIN(name, fold, block, xblock, blck)                                              \
    int64_t name(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1, const void *x,    \
                 size_t x_stride, int64_t T, float *y, size_t ldy) {                                 \
        x8_rows_scalar(fold, sizeof(block), sizeof(xblock), blck, n, w, w_stride, r0, r1, x, x_stride, \
                       T, y, ldy);                                                                   \
        return r1;                                                                                   \
    }
X8_SCALAR_TWIN(matmul_rows_q4_K_x8_q8_K, fold_q4_K_x8, block_q4_Kx8, block_q8_K, QK_K)
X8_SCALAR_TWIN(matmul_rows_q5_K_x8_q8_K, fold_q5_K_x8, block_q5_Kx8, block_q8_K, QK_K)
X8_SCALAR_TWIN(matmul_rows_q6_K_x8_q8_K, fold_q6_K_x8, block_q6_Kx8, block_q8_K, QK_K)
X8_SCALAR_TWIN(matmul_rows_q2_K_x8_q8_K, fold_q2_K_x8, block_q2_Kx8, block_q8_K, QK_K)
X8_SCALAR_TWIN(matmul_rows_q3_K_x8_q8_K, fold_q3_K_x8, block_q3_Kx8, block_q8_K, QK_K)
X8_SCALAR_TWIN(matmul_rows_q4_0_x8_q8_0, fold_q4_0_x8, block_q4_0x8, block_q8_0, QK8_0)
X8_SCALAR_TWIN(matmul_rows_q8_0_x8_q8_0, fold_q8_0_x8, block_q8_0x8, block_q8_0, QK8_0)
X8_SCALAR_TWIN(matmul_rows_iq4_nl_x8_q8_0, fold_iq4_nl_x8, block_iq4_nlx8, block_q8_0, QK4_NL)
X8_SCALAR_TWIN(matmul_rows_iq4_xs_x8_q8_K, fold_iq4_xs_x8, block_iq4_xsx8, block_q8_K, QK_K)
X8_SCALAR_TWIN(matmul_rows_q4_1_x8_q8_1, fold_q4_1_x8, block_q4_1x8, block_q8_1, QK4_1)
X8_SCALAR_TWIN(matmul_rows_q5_0_x8_q8_0, fold_q5_0_x8, block_q5_0x8, block_q8_0, QK5_0)
X8_SCALAR_TWIN(matmul_rows_q5_1_x8_q8_1, fold_q5_1_x8, block_q5_1x8, block_q8_1, QK5_1)

/* ---------------------------------------------------------------------------------------------
 * Dequantizers: one row x of n elements -> y (n,) f32 */

// x (n,) f32 -> y (n,) f32: a copy
void dequantize_row_f32(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

// x (n,) f16 -> y (n,) f32: exact widening
void dequantize_row_f16(const void *x, float *y, int64_t n) {
    const ls_fp16_t *h = x;
    for (int64_t i = 0; i < n; ++i) y[i] = ls_fp16_to_fp32(h[i]);
}

// x (n,) bf16 -> y (n,) f32: exact widening
void dequantize_row_bf16(const void *x, float *y, int64_t n) {
    const ls_bf16_t *h = x;
    for (int64_t i = 0; i < n; ++i) y[i] = ls_bf16_to_fp32(h[i]);
}

// x (n/32 blocks) Q4_0 -> y (n,): y = d * (q - 8)
void dequantize_row_q4_0(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / QK4_0; ++i, y += QK4_0) {
        const float d = ls_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = ((x[i].qs[j] & 15) - 8) * d;
            y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

// x (n/32 blocks) Q4_1 -> y (n,): y = d * q + m
void dequantize_row_q4_1(const void *vx, float *y, int64_t n) {
    const block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / QK4_1; ++i, y += QK4_1) {
        const float d = ls_fp16_to_fp32(x[i].d), m = ls_fp16_to_fp32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j] = (x[i].qs[j] & 15) * d + m;
            y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

/* The 5-bit quant k of a Q5_0 / Q5_1 block (0..31). */
static inline int q5_quant(const uint8_t *qs, uint32_t qh, int k) {
    const int lo = k < 16 ? (qs[k] & 15) : (qs[k - 16] >> 4);
    return lo | (int)(((qh >> k) & 1u) << 4);
}

// x (n/32 blocks) Q5_0 -> y (n,): y = d * (q - 16)
void dequantize_row_q5_0(const void *vx, float *y, int64_t n) {
    const block_q5_0 *x = vx;
    for (int64_t i = 0; i < n / QK5_0; ++i, y += QK5_0) {
        const float d = ls_fp16_to_fp32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int k = 0; k < QK5_0; ++k) y[k] = (q5_quant(x[i].qs, qh, k) - 16) * d;
    }
}

// x (n/32 blocks) Q5_1 -> y (n,): y = d * q + m
void dequantize_row_q5_1(const void *vx, float *y, int64_t n) {
    const block_q5_1 *x = vx;
    for (int64_t i = 0; i < n / QK5_1; ++i, y += QK5_1) {
        const float d = ls_fp16_to_fp32(x[i].d), m = ls_fp16_to_fp32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        for (int k = 0; k < QK5_1; ++k) y[k] = q5_quant(x[i].qs, qh, k) * d + m;
    }
}

// x (n/32 blocks) Q8_0 -> y (n,): y = d * q
void dequantize_row_q8_0(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
        const float d = ls_fp16_to_fp32(x[i].d);
        for (int k = 0; k < QK8_0; ++k) y[k] = x[i].qs[k] * d;
    }
}

// x (n/32 blocks) Q8_1 -> y (n,): y = d * q  (s is not needed)
void dequantize_row_q8_1(const void *vx, float *y, int64_t n) {
    const block_q8_1 *x = vx;
    for (int64_t i = 0; i < n / QK8_1; ++i, y += QK8_1) {
        const float d = ls_fp16_to_fp32(x[i].d);
        for (int k = 0; k < QK8_1; ++k) y[k] = x[i].qs[k] * d;
    }
}

// x (n/256 blocks) Q2_K -> y (n,): y = (d*scale) * q - dmin*min, per 16-element sub-block
void dequantize_row_q2_K(const void *vx, float *y, int64_t n) {
    const block_q2_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = ls_fp16_to_fp32(x[i].d), dmin = ls_fp16_to_fp32(x[i].dmin);
        for (int h = 0; h < 2; ++h) {
            const uint8_t *q = x[i].qs + 32 * h;
            for (int j = 0; j < 4; ++j) {
                for (int half = 0; half < 2; ++half) {
                    const uint8_t sc = x[i].scales[8 * h + 2 * j + half];
                    const float dl = d * (sc & 15), ml = dmin * (sc >> 4);
                    for (int l = 16 * half; l < 16 * half + 16; ++l) *y++ = dl * ((q[l] >> (2 * j)) & 3) - ml;
                }
            }
        }
    }
}

// x (n/256 blocks) Q3_K -> y (n,): y = (d*(scale-32)) * (low2 - (high ? 0 : 4)), per 16 elements
void dequantize_row_q3_K(const void *vx, float *y, int64_t n) {
    const block_q3_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = ls_fp16_to_fp32(x[i].d);
        uint8_t sc[16];
        ls_unpack_scales_q3k(x[i].scales, sc);
        for (int h = 0; h < 2; ++h) {
            const uint8_t *q = x[i].qs + 32 * h;
            for (int j = 0; j < 4; ++j) {
                const uint8_t bit = (uint8_t)(1u << (4 * h + j));
                for (int half = 0; half < 2; ++half) {
                    const float dl = d * (sc[8 * h + 2 * j + half] - 32);
                    for (int l = 16 * half; l < 16 * half + 16; ++l) {
                        const int v = ((q[l] >> (2 * j)) & 3) - ((x[i].hmask[l] & bit) ? 0 : 4);
                        *y++ = dl * v;
                    }
                }
            }
        }
    }
}

// x (n/256 blocks) Q4_K -> y (n,): y = (d*sc) * q - dmin*m, per 32-element sub-block
void dequantize_row_q4_K(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = ls_fp16_to_fp32(x[i].d), dmin = ls_fp16_to_fp32(x[i].dmin);
        uint8_t sc[8], m[8];
        ls_unpack_scales_k4(x[i].scales, sc, m);
        for (int g = 0; g < 4; ++g) {
            const uint8_t *q = x[i].qs + 32 * g;
            const float d1 = d * sc[2 * g], m1 = dmin * m[2 * g];
            const float d2 = d * sc[2 * g + 1], m2 = dmin * m[2 * g + 1];
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 15) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

// x (n/256 blocks) Q5_K -> y (n,): y = (d*sc) * (low4 | high<<4) - dmin*m, per 32 elements
void dequantize_row_q5_K(const void *vx, float *y, int64_t n) {
    const block_q5_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = ls_fp16_to_fp32(x[i].d), dmin = ls_fp16_to_fp32(x[i].dmin);
        uint8_t sc[8], m[8];
        ls_unpack_scales_k4(x[i].scales, sc, m);
        for (int g = 0; g < 4; ++g) {
            const uint8_t *q = x[i].qs + 32 * g;
            const int s1 = 2 * g, s2 = 2 * g + 1;
            const float d1 = d * sc[s1], m1 = dmin * m[s1];
            const float d2 = d * sc[s2], m2 = dmin * m[s2];
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((q[l] & 15) | (((x[i].qh[l] >> s1) & 1) << 4)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((q[l] >> 4) | (((x[i].qh[l] >> s2) & 1) << 4)) - m2;
        }
    }
}

/* The 6-bit quant (0..63) of element 128*h + 32*j + l of a Q6_K block. */
static inline int q6_quant(const block_q6_K *b, int h, int j, int l) {
    const uint8_t *L = b->ql + 64 * h, *H = b->qh + 32 * h;
    const int lo = (j & 1) ? L[l + 32] : L[l];
    return ((j < 2 ? lo & 15 : lo >> 4) | (((H[l] >> (2 * j)) & 3) << 4));
}

// x (n/256 blocks) Q6_K -> y (n,): y = (d*scale) * (q - 32), per 16-element sub-block
void dequantize_row_q6_K(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        const float d = ls_fp16_to_fp32(x[i].d);
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int l = 0; l < 32; ++l) {
                    const int k = 128 * h + 32 * j + l;
                    y[k] = d * x[i].scales[k / 16] * (q6_quant(&x[i], h, j, l) - 32);
                }
    }
}

// x (n/256 blocks) Q8_K -> y (n,): y = d * q
void dequantize_row_q8_K(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K)
        for (int k = 0; k < QK_K; ++k) y[k] = x[i].d * x[i].qs[k];
}

/* ---------------------------------------------------------------------------------------------
 * Activation quantizers: x (n,) f32 -> one row y */

// x (n,) f32 -> y (n,) f32: a copy
void quantize_row_f32(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

// x (n,) f32 -> y (n,) f16, round to nearest even
void quantize_row_f16(const float *x, void *vy, int64_t n) {
    ls_fp16_t *y = vy;
    for (int64_t i = 0; i < n; ++i) y[i] = ls_fp32_to_fp16(x[i]);
}

// x (n,) f32 -> y (n,) bf16, round to nearest even (NaN kept, quieted)
void quantize_row_bf16(const float *x, void *vy, int64_t n) {
    ls_bf16_t *y = vy;
    for (int64_t i = 0; i < n; ++i) y[i] = ls_fp32_to_bf16(x[i]);
}

/* amax / 127 and its inverse, as quantize_row_q8_0_ref computes them. */
static inline float q8_block_scale(const float *x, float *id) {
    float amax = 0.0f;
    for (int k = 0; k < 32; ++k) {
        const float a = fabsf(x[k]);
        amax = amax > a ? amax : a;
    }
    const float d = amax / 127.0f;
    *id = d != 0.0f ? 1.0f / d : 0.0f;
    return d;
}

// x (n,) f32 -> y (n/32 blocks) Q8_0: d = max|x|/127, q = roundf(x/d)
void quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        float id;
        const float d = q8_block_scale(x, &id);
        y[i].d = ls_fp32_to_fp16(d);
        for (int k = 0; k < QK8_0; ++k) y[i].qs[k] = (int8_t)roundf(x[k] * id);
    }
}

// x (n,) f32 -> y (n/32 blocks) Q8_1: as Q8_0, plus s = fp16(d * sum(q))
void quantize_row_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK8_1; ++i, x += QK8_1) {
        float id;
        const float d = q8_block_scale(x, &id);
        y[i].d = ls_fp32_to_fp16(d);
        int sum = 0;
        for (int k = 0; k < QK8_1; ++k) {
            y[i].qs[k] = (int8_t)roundf(x[k] * id);
            sum += y[i].qs[k];
        }
        y[i].s = ls_fp32_to_fp16((float)sum * d);
    }
}

/* Round to nearest, ties to even (ggml's nearest_int), for |v| < 2^22: adding 1.5*2^23 leaves the
 * rounded integer in the low mantissa bits. */
static inline int ls_nearest_int(float v) {
    const float big = v + 12582912.0f;
    return (int)(ls_f32_bits(big) & 0x007fffffu) - 0x00400000;
}

// x (n,) f32 -> y (n/256 blocks) Q8_K: iscale = -127/max (max = first x of largest |x|),
// q = min(127, nearest_int(iscale*x)), d = 1/iscale, bsums = sums of q in 16s
void quantize_row_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int k = 0; k < QK_K; ++k) {
            const float a = fabsf(x[k]);
            if (a > amax) { amax = a; max = x[k]; }
        }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int k = 0; k < QK_K; ++k) {
            const int v = ls_nearest_int(iscale * x[k]);
            y[i].qs[k] = (int8_t)(v < 127 ? v : 127);
        }
        for (int s = 0; s < QK_K / 16; ++s) {
            int sum = 0;
            for (int k = 0; k < 16; ++k) sum += y[i].qs[16 * s + k];
            y[i].bsums[s] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Dot products: w one row of weights, x one row of activations in the vec_dot type */

// w (n,) f32 · x (n,) f32 -> float: float products summed in double
float vec_dot_f32_f32(int64_t n, const void *vw, const void *vx) {
    const float *w = vw, *x = vx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += (double)(w[i] * x[i]);
    return (float)sum;
}

// w (n,) f16 · x (n,) f16 -> float: float products summed in double
float vec_dot_f16_f16(int64_t n, const void *vw, const void *vx) {
    const ls_fp16_t *w = vw, *x = vx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += (double)(ls_fp16_to_fp32(w[i]) * ls_fp16_to_fp32(x[i]));
    return (float)sum;
}

// w (n,) bf16 · x (n,) bf16 -> float: float products summed in double
float vec_dot_bf16_bf16(int64_t n, const void *vw, const void *vx) {
    const ls_bf16_t *w = vw, *x = vx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += (double)(ls_bf16_to_fp32(w[i]) * ls_bf16_to_fp32(x[i]));
    return (float)sum;
}

// w (n,) in Q4_0 · x (n,) in Q8_0 -> float: sum_b (dw*dx) * sum_k (qw-8)*qx
float vec_dot_q4_0_q8_0(int64_t n, const void *vw, const void *vx) {
    const block_q4_0 *w = vw;
    const block_q8_0 *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK4_0; ++b) {
        int isum = 0;
        for (int j = 0; j < 16; ++j)
            isum += ((w[b].qs[j] & 15) - 8) * x[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
        sum += isum * (ls_fp16_to_fp32(w[b].d) * ls_fp16_to_fp32(x[b].d));
    }
    return sum;
}

// w (n,) in Q4_1 · x (n,) in Q8_1 -> float: sum_b (dw*dx) * sum_k qw*qx + mw * sx
float vec_dot_q4_1_q8_1(int64_t n, const void *vw, const void *vx) {
    const block_q4_1 *w = vw;
    const block_q8_1 *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK4_1; ++b) {
        int isum = 0;
        for (int j = 0; j < 16; ++j)
            isum += (w[b].qs[j] & 15) * x[b].qs[j] + (w[b].qs[j] >> 4) * x[b].qs[j + 16];
        sum += (ls_fp16_to_fp32(w[b].d) * ls_fp16_to_fp32(x[b].d)) * isum
             + ls_fp16_to_fp32(w[b].m) * ls_fp16_to_fp32(x[b].s);
    }
    return sum;
}

// w (n,) in Q5_0 · x (n,) in Q8_0 -> float: sum_b (dw*dx) * sum_k (qw-16)*qx
float vec_dot_q5_0_q8_0(int64_t n, const void *vw, const void *vx) {
    const block_q5_0 *w = vw;
    const block_q8_0 *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK5_0; ++b) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int isum = 0;
        for (int k = 0; k < 32; ++k) isum += (q5_quant(w[b].qs, qh, k) - 16) * x[b].qs[k];
        sum += isum * (ls_fp16_to_fp32(w[b].d) * ls_fp16_to_fp32(x[b].d));
    }
    return sum;
}

// w (n,) in Q5_1 · x (n,) in Q8_1 -> float: sum_b (dw*dx) * sum_k qw*qx + mw * sx
float vec_dot_q5_1_q8_1(int64_t n, const void *vw, const void *vx) {
    const block_q5_1 *w = vw;
    const block_q8_1 *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK5_1; ++b) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int isum = 0;
        for (int k = 0; k < 32; ++k) isum += q5_quant(w[b].qs, qh, k) * x[b].qs[k];
        sum += (ls_fp16_to_fp32(w[b].d) * ls_fp16_to_fp32(x[b].d)) * isum
             + ls_fp16_to_fp32(w[b].m) * ls_fp16_to_fp32(x[b].s);
    }
    return sum;
}

// w (n,) in Q8_0 · x (n,) in Q8_0 -> float: sum_b (dw*dx) * sum_k qw*qx
float vec_dot_q8_0_q8_0(int64_t n, const void *vw, const void *vx) {
    const block_q8_0 *w = vw;
    const block_q8_0 *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        int isum = 0;
        for (int k = 0; k < 32; ++k) isum += w[b].qs[k] * x[b].qs[k];
        sum += isum * (ls_fp16_to_fp32(w[b].d) * ls_fp16_to_fp32(x[b].d));
    }
    return sum;
}

// w (n,) in Q2_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s sc_s*(q·qx)_s - (dx*dmin) * sum_s m_s*bsum_s
float vec_dot_q2_K_q8_K(int64_t n, const void *vw, const void *vx) {
    const block_q2_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        int isum = 0, msum = 0;
        for (int s = 0; s < 16; ++s) msum += (w[b].scales[s] >> 4) * x[b].bsums[s];
        const int8_t *q8 = x[b].qs;
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int half = 0; half < 2; ++half, q8 += 16) {
                    const uint8_t *q = w[b].qs + 32 * h + 16 * half;
                    int acc = 0;
                    for (int l = 0; l < 16; ++l) acc += ((q[l] >> (2 * j)) & 3) * q8[l];
                    isum += (w[b].scales[8 * h + 2 * j + half] & 15) * acc;
                }
        const float dall = x[b].d * ls_fp16_to_fp32(w[b].d);
        const float dmin = x[b].d * ls_fp16_to_fp32(w[b].dmin);
        sum += dall * isum - dmin * msum;
    }
    return sum;
}

// w (n,) in Q3_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s (sc_s-32) * (q·qx)_s
float vec_dot_q3_K_q8_K(int64_t n, const void *vw, const void *vx) {
    const block_q3_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        uint8_t sc[16];
        ls_unpack_scales_q3k(w[b].scales, sc);
        int isum = 0;
        const int8_t *q8 = x[b].qs;
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j) {
                const uint8_t bit = (uint8_t)(1u << (4 * h + j));
                for (int half = 0; half < 2; ++half, q8 += 16) {
                    int acc = 0;
                    for (int l = 16 * half; l < 16 * half + 16; ++l) {
                        const int v = ((w[b].qs[32 * h + l] >> (2 * j)) & 3) - ((w[b].hmask[l] & bit) ? 0 : 4);
                        acc += v * q8[l - 16 * half];
                    }
                    isum += (sc[8 * h + 2 * j + half] - 32) * acc;
                }
            }
        sum += (x[b].d * ls_fp16_to_fp32(w[b].d)) * isum;
    }
    return sum;
}

// w (n,) in Q4_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s sc_s*(q·qx)_s - (dx*dmin) * sum_s m_s*bsum_s
float vec_dot_q4_K_q8_K(int64_t n, const void *vw, const void *vx) {
    const block_q4_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        uint8_t sc[8], m[8];
        ls_unpack_scales_k4(w[b].scales, sc, m);
        int isum = 0, msum = 0;
        for (int s = 0; s < 8; ++s) msum += m[s] * (x[b].bsums[2 * s] + x[b].bsums[2 * s + 1]);
        const int8_t *q8 = x[b].qs;
        for (int g = 0; g < 4; ++g, q8 += 64) {
            const uint8_t *q = w[b].qs + 32 * g;
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; ++l) {
                lo += (q[l] & 15) * q8[l];
                hi += (q[l] >> 4) * q8[l + 32];
            }
            isum += sc[2 * g] * lo + sc[2 * g + 1] * hi;
        }
        const float d = x[b].d * ls_fp16_to_fp32(w[b].d);
        const float dmin = x[b].d * ls_fp16_to_fp32(w[b].dmin);
        sum += d * isum - dmin * msum;
    }
    return sum;
}

// w (n,) in Q5_K · x (n,) in Q8_K -> float: as Q4_K with 5-bit quants
float vec_dot_q5_K_q8_K(int64_t n, const void *vw, const void *vx) {
    const block_q5_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        uint8_t sc[8], m[8];
        ls_unpack_scales_k4(w[b].scales, sc, m);
        int isum = 0, msum = 0;
        for (int s = 0; s < 8; ++s) msum += m[s] * (x[b].bsums[2 * s] + x[b].bsums[2 * s + 1]);
        const int8_t *q8 = x[b].qs;
        for (int g = 0; g < 4; ++g, q8 += 64) {
            const uint8_t *q = w[b].qs + 32 * g;
            const int s1 = 2 * g, s2 = 2 * g + 1;
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; ++l) {
                lo += ((q[l] & 15) | (((w[b].qh[l] >> s1) & 1) << 4)) * q8[l];
                hi += ((q[l] >> 4) | (((w[b].qh[l] >> s2) & 1) << 4)) * q8[l + 32];
            }
            isum += sc[s1] * lo + sc[s2] * hi;
        }
        const float d = x[b].d * ls_fp16_to_fp32(w[b].d);
        const float dmin = x[b].d * ls_fp16_to_fp32(w[b].dmin);
        sum += d * isum - dmin * msum;
    }
    return sum;
}

// w (n,) in Q6_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s scale_s * ((q-32)·qx)_s
float vec_dot_q6_K_q8_K(int64_t n, const void *vw, const void *vx) {
    const block_q6_K *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int h = 0; h < 2; ++h)
            for (int j = 0; j < 4; ++j)
                for (int half = 0; half < 2; ++half) {
                    int acc = 0;
                    for (int l = 16 * half; l < 16 * half + 16; ++l)
                        acc += (q6_quant(&w[b], h, j, l) - 32) * x[b].qs[128 * h + 32 * j + l];
                    isum += w[b].scales[8 * h + 2 * j + half] * acc;
                }
        sum += (x[b].d * ls_fp16_to_fp32(w[b].d)) * isum;
    }
    return sum;
}

/* ---------------------------------------------------------------------------------------------
 * IQ4 i-quants (IQ4_NL, IQ4_XS): 4-bit indices into the non-linear levels ls_kvalues_iq4nl
 * (formats.h). Both store 32 elements per 16 bytes of indices in Q4_0's element order. */

/* 16 bytes of indices -> the 32 elements d * T[index] (ggml's float order: d times the level). */
static inline void iq4_dequant32(const uint8_t *qs, float d, float *y) {
    for (int j = 0; j < 16; ++j) {
        y[j] = d * ls_kvalues_iq4nl[qs[j] & 15];
        y[j + 16] = d * ls_kvalues_iq4nl[qs[j] >> 4];
    }
}

/* sum_k T[index_k] * q8[k] over the 32 elements of 16 bytes of indices (exact). */
static inline int iq4_dot32(const uint8_t *qs, const int8_t *q8) {
    int sum = 0;
    for (int j = 0; j < 16; ++j)
        sum += ls_kvalues_iq4nl[qs[j] & 15] * q8[j] + ls_kvalues_iq4nl[qs[j] >> 4] * q8[j + 16];
    return sum;
}

// x (n/32 blocks) IQ4_NL -> y (n,): y = d * T[q]
void dequantize_row_iq4_nl(const void *vx, float *y, int64_t n) {
    const block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / QK4_NL; ++i, y += QK4_NL) iq4_dequant32(x[i].qs, ls_fp16_to_fp32(x[i].d), y);
}

// x (n/256 blocks) IQ4_XS -> y (n,): y = (d * (ls - 32)) * T[q], per 32-element sub-block
void dequantize_row_iq4_xs(const void *vx, float *y, int64_t n) {
    const block_iq4_xs *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = ls_fp16_to_fp32(x[i].d);
        for (int s = 0; s < QK_K / 32; ++s, y += 32) iq4_dequant32(x[i].qs + 16 * s, d * ls_iq4_xs_scale(&x[i], s), y);
    }
}

// w (n,) in IQ4_NL · x (n,) in Q8_0 -> float: sum_b (dw*dx) * sum_k T[qw]*qx
float vec_dot_iq4_nl_q8_0(int64_t n, const void *vw, const void *vx) {
    const block_iq4_nl *w = vw;
    const block_q8_0 *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK4_NL; ++b)
        sum += iq4_dot32(w[b].qs, x[b].qs) * (ls_fp16_to_fp32(w[b].d) * ls_fp16_to_fp32(x[b].d));
    return sum;
}

// w (n,) in IQ4_XS · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s (ls_s-32) * (T[q]·qx)_s
float vec_dot_iq4_xs_q8_K(int64_t n, const void *vw, const void *vx) {
    const block_iq4_xs *w = vw;
    const block_q8_K *x = vx;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        int isum = 0;    /* |isum| <= 8 * 32 * 32*127*127 < 2^31 */
        for (int s = 0; s < QK_K / 32; ++s) isum += ls_iq4_xs_scale(&w[b], s) * iq4_dot32(w[b].qs + 16 * s, x[b].qs + 32 * s);
        sum += (x[b].d * ls_fp16_to_fp32(w[b].d)) * isum;
    }
    return sum;
}
