/* quants_avx512.c — AVX-512 (BW, VL, VNNI) 4-token kernels for prompt matmuls.
 * (Q4_K, Q6_K: vec_dot_x4 on the Q8_K rows as they are; Q4_0, Q8_0: the 4 Q8_0 rows are first
 * packed, see below.)
 *
 * Only this file is compiled for AVX-512 (the pragma below); cpu.c puts its kernels into the
 * AVX2 table's vec_dot_x4 slots when the CPU has AVX512F/BW/VL/VNNI (and LLMSTREAM_AVX512 is not
 * 0), so the SIMD levels stay scalar / AVX2. On such CPUs a 512-bit register holds 64 weights:
 * one maddubs (u8 x s8 -> int16 pairs) and one vpdpwssd (int16 pairs x sub-block scales, added
 * to int32 accumulators) per 64 multiply-adds and token. The integer block sums are exactly those
 * of the scalar kernels (same saturation-free ranges as quants_avx2.c); only the order of the
 * float additions differs. Pinned to the scalar vec_dot by tests/test_quants_simd.py.
 */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")

#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "quants_impl.h"

static inline float f16c_to_f32(ls_fp16_t h) { return _cvtsh_ss(h); }

static inline float hsum_ps128_(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Q4_K / Q5_K packed 6-bit scales and mins -> 16 int16 (lanes 0-7 scales, 8-15 mins); as in
 * quants_avx2.c (unpack_scales_mins_k4). */
static inline __m256i unpack_scales_mins_k4_(const uint8_t *q) {
    uint32_t w[3];
    memcpy(w, q, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const uint32_t sc_lo = w[0] & m6;
    const uint32_t sc_hi = (w[2] & m4) | (((w[0] >> 6) & m2) << 4);
    const uint32_t mn_lo = w[1] & m6;
    const uint32_t mn_hi = ((w[2] >> 4) & m4) | (((w[1] >> 6) & m2) << 4);
    return _mm256_cvtepu8_epi16(_mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo));
}

/* Index vector for vpermw: int16 lane i <- lane first + i / per (per lanes of each scale). */
static inline __m512i scale_index(int first, int per) {
    int16_t idx[32];
    for (int i = 0; i < 32; ++i) idx[i] = (int16_t)(first + i / per);
    return _mm512_loadu_si512(idx);
}

#define X4_ROWS(T, vx, xs) { (const T *)(vx), (const T *)((const char *)(vx) + (xs)), \
    (const T *)((const char *)(vx) + 2 * (xs)), (const T *)((const char *)(vx) + 3 * (xs)) }

// w (n,) in Q4_K · x_t (n,) in Q8_K, t = 0..3 -> y[t] = sum_b (dx*d) * sum_s sc_s*(q·qx)_s - (dx*dmin) * sum_s m_s*bsum_s
// Register k (0..3) holds elements 64k..64k+63: the low nibbles of qs[32k..] (sub-block 2k) then
// the high nibbles (sub-block 2k+1) — the order of the Q8_K activations.
static void vec_dot_q4_K_q8_K_x4_avx512(int64_t n, const void *vw, const void *vx, size_t xs, float *y) {
    const block_q4_K *w = vw;
    const block_q8_K *x[4] = X4_ROWS(block_q8_K, vx, xs);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) idx[k] = scale_index(2 * k, 16);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    __m128 acc_m[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = f16c_to_f32(w[b].d), dmin = f16c_to_f32(w[b].dmin);
        const __m256i scales_mins = unpack_scales_mins_k4_(w[b].scales);
        const __m256i mins = _mm256_permute2x128_si256(scales_mins, scales_mins, 0x11);
        for (int t = 0; t < 4; ++t) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)x[t][b].bsums);
            const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128i msum = _mm_madd_epi16(_mm256_castsi256_si128(mins), pairs);
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(-dmin * x[t][b].d), _mm_cvtepi32_ps(msum), acc_m[t]);
        }
        const __m512i sc = _mm512_broadcast_i32x4(_mm256_castsi256_si128(scales_mins));
        __m512i sumi[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
        for (int k = 0; k < 4; ++k) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * k));
            const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(bits, low4)),
                                                 _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4), 1);
            const __m512i s = _mm512_permutexvar_epi16(idx[k], sc);
            for (int t = 0; t < 4; ++t) {
                const __m512i p = _mm512_maddubs_epi16(q, _mm512_loadu_si512(x[t][b].qs + 64 * k));
                sumi[t] = _mm512_dpwssd_epi32(sumi[t], p, s);
            }
        }
        for (int t = 0; t < 4; ++t)
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * x[t][b].d), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
    }
    for (int t = 0; t < 4; ++t) y[t] = _mm512_reduce_add_ps(acc[t]) + hsum_ps128_(acc_m[t]);
}

// w (n,) in Q6_K · x_t (n,) in Q8_K, t = 0..3 -> y[t] = sum_b (dx*d) * sum_s scale_s * ((q-32)·qx)_s
// Register k = 2h + m holds elements 128h + 64m .. +63: 6-bit chunks j = 2m and 2m+1 of half h.
static void vec_dot_q6_K_q8_K_x4_avx512(int64_t n, const void *vw, const void *vx, size_t xs, float *y) {
    const block_q6_K *w = vw;
    const block_q8_K *x[4] = X4_ROWS(block_q8_K, vx, xs);
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(0x03);
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) idx[k] = scale_index(4 * k, 8);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = f16c_to_f32(w[b].d);
        const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[b].scales));
        const __m512i sc = _mm512_castsi256_si512(scales16);
        __m512i sumi[4];
        for (int t = 0; t < 4; ++t)   /* the -32 offset: sum_s scale_s * 32 * bsum_s */
            sumi[t] = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(
                _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x[t][b].bsums), scales16), 5)));
        for (int h = 0; h < 2; ++h) {
            const uint8_t *L = w[b].ql + 64 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)L);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(L + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(w[b].qh + 32 * h));
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(hb, two), 4));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, low4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), two), 4));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), two), 4));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), two), 4));
            const __m512i qa = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
            const __m512i qb = _mm512_inserti64x4(_mm512_castsi256_si512(q2), q3, 1);
            const __m512i sa = _mm512_permutexvar_epi16(idx[2 * h], sc);
            const __m512i sb = _mm512_permutexvar_epi16(idx[2 * h + 1], sc);
            for (int t = 0; t < 4; ++t) {
                const int8_t *q8 = x[t][b].qs + 128 * h;
                sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(qa, _mm512_loadu_si512(q8)), sa);
                sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(qb, _mm512_loadu_si512(q8 + 64)), sb);
            }
        }
        for (int t = 0; t < 4; ++t)
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * x[t][b].d), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
    }
    for (int t = 0; t < 4; ++t) y[t] = _mm512_reduce_add_ps(acc[t]);
}

// w (n,) in Q4_K · x (n,) in Q8_K -> float (decode): as vec_dot_q4_K_q8_K_x4_avx512 for one token
static float vec_dot_q4_K_q8_K_avx512(int64_t n, const void *vw, const void *vx) {
    const block_q4_K *w = vw;
    const block_q8_K *x = vx;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) idx[k] = scale_index(2 * k, 16);
    __m512 acc = _mm512_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = f16c_to_f32(w[b].d) * x[b].d, dmin = f16c_to_f32(w[b].dmin) * x[b].d;
        const __m256i scales_mins = unpack_scales_mins_k4_(w[b].scales);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)x[b].bsums);
        const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        const __m128i msum = _mm_madd_epi16(_mm256_extracti128_si256(scales_mins, 1), pairs);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(-dmin), _mm_cvtepi32_ps(msum), acc_m);
        const __m512i sc = _mm512_broadcast_i32x4(_mm256_castsi256_si128(scales_mins));
        __m512i sumi0 = _mm512_setzero_si512(), sumi1 = _mm512_setzero_si512();
        for (int k = 0; k < 4; k += 2) {
            const __m256i b0 = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * k));
            const __m256i b1 = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * k + 32));
            const __m512i q0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b0, low4)),
                                                  _mm256_and_si256(_mm256_srli_epi16(b0, 4), low4), 1);
            const __m512i q1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b1, low4)),
                                                  _mm256_and_si256(_mm256_srli_epi16(b1, 4), low4), 1);
            sumi0 = _mm512_dpwssd_epi32(sumi0, _mm512_maddubs_epi16(q0, _mm512_loadu_si512(x[b].qs + 64 * k)),
                                        _mm512_permutexvar_epi16(idx[k], sc));
            sumi1 = _mm512_dpwssd_epi32(sumi1, _mm512_maddubs_epi16(q1, _mm512_loadu_si512(x[b].qs + 64 * k + 64)),
                                        _mm512_permutexvar_epi16(idx[k + 1], sc));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(_mm512_add_epi32(sumi0, sumi1)), acc);
    }
    return _mm512_reduce_add_ps(acc) + hsum_ps128_(acc_m);
}

// w (n,) in Q6_K · x (n,) in Q8_K -> float (decode): as vec_dot_q6_K_q8_K_x4_avx512 for one token
static float vec_dot_q6_K_q8_K_avx512(int64_t n, const void *vw, const void *vx) {
    const block_q6_K *w = vw;
    const block_q8_K *x = vx;
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(0x03);
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) idx[k] = scale_index(4 * k, 8);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = f16c_to_f32(w[b].d) * x[b].d;
        const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[b].scales));
        const __m512i sc = _mm512_castsi256_si512(scales16);
        __m512i sumi0 = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(
            _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x[b].bsums), scales16), 5)));
        __m512i sumi1 = _mm512_setzero_si512();
        for (int h = 0; h < 2; ++h) {
            const uint8_t *L = w[b].ql + 64 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)L);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(L + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(w[b].qh + 32 * h));
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(hb, two), 4));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, low4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), two), 4));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), two), 4));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), two), 4));
            const int8_t *q8 = x[b].qs + 128 * h;
            sumi0 = _mm512_dpwssd_epi32(sumi0, _mm512_maddubs_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1),
                                        _mm512_loadu_si512(q8)), _mm512_permutexvar_epi16(idx[2 * h], sc));
            sumi1 = _mm512_dpwssd_epi32(sumi1, _mm512_maddubs_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(q2), q3, 1),
                                        _mm512_loadu_si512(q8 + 64)), _mm512_permutexvar_epi16(idx[2 * h + 1], sc));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(_mm512_add_epi32(sumi0, sumi1)), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* ---------------------------------------------------------------------------------------------
 * 32-element blocks (Q4_0, Q8_0 weights; Q8_0 activations): the tokens are packed once per matmul
 * work item (ls_matmul_rows) and every weight row then meets them in this form.
 *
 * Per token and pair of blocks (64 elements) the packed record holds what the inner loop needs in
 * the shape it needs it, so each token costs one vpdpbusd, one conversion and two float ops per 64
 * weights: the 64 quants; the two fp16 scales as floats, each repeated over the int32 lanes of its
 * block; and the offset correction -c * sum(q) of each block in one lane of that block. vpdpbusd
 * multiplies unsigned by signed bytes, so weights go in unsigned with a known offset c: Q4_0 as its
 * raw nibbles q in 0..15 (value q - 8: c = 8), Q8_0 as q + 128 (c = 128); then
 *   sum_k (q_k - c) x_k = vpdpbusd(q, x) - c * sum_k x_k        (exact in int32).
 * Element order within a record: Q8_0 natural (block 2p in bytes 0-31, 2p+1 in 32-63); Q4_0 the
 * order its nibbles unpack cheapest: 16-byte quarters [2p: 0-15 | 2p+1: 0-15 | 2p: 16-31 | 2p+1:
 * 16-31] (low nibbles of both blocks, then high nibbles). Records: pair p, then token t. */

typedef struct {
    int8_t qs[64];
    float d[16];          /* fp16(d) of the block each int32 lane of qs belongs to */
    int32_t corr[16];     /* -c * sum(qs of a block) in that block's first lane, else 0 */
} q8_0_pair_rec;
_Static_assert(sizeof(q8_0_pair_rec) == 192, "packed record must be 192 bytes (ls_pack_bytes)");

static inline int block_sum_i8(const int8_t *q) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    h = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 1));
    return _mm_cvtsi128_si32(h);
}

// x_t (n,) in Q8_0, t < nt (x_stride bytes apart) -> packed records (n/64 pairs x nt tokens)
static inline void pack_q8_0(int64_t n, const void *vx, size_t xs, int nt, void *out, int q4_order) {
    q8_0_pair_rec *o = out;
    const int shift = q4_order ? 3 : 7;          /* c = 8 (Q4_0) or 128 (Q8_0) */
    for (int64_t p = 0; p < n / 64; ++p)
        for (int t = 0; t < nt; ++t, ++o) {
            const block_q8_0 *x = (const block_q8_0 *)((const char *)vx + (size_t)t * xs);
            const block_q8_0 *b0 = &x[2 * p], *b1 = &x[2 * p + 1];
            const __m256i q0 = _mm256_loadu_si256((const __m256i *)b0->qs);
            const __m256i q1 = _mm256_loadu_si256((const __m256i *)b1->qs);
            const __m256 d0 = _mm256_set1_ps(f16c_to_f32(b0->d)), d1 = _mm256_set1_ps(f16c_to_f32(b1->d));
            _mm512_storeu_si512(o->corr, _mm512_setzero_si512());
            if (q4_order) {
                _mm256_storeu_si256((__m256i *)o->qs, _mm256_permute2x128_si256(q0, q1, 0x20));
                _mm256_storeu_si256((__m256i *)(o->qs + 32), _mm256_permute2x128_si256(q0, q1, 0x31));
                _mm256_storeu_ps(o->d, _mm256_blend_ps(d0, d1, 0xf0));
                _mm256_storeu_ps(o->d + 8, _mm256_blend_ps(d0, d1, 0xf0));
                o->corr[0] = -(block_sum_i8(b0->qs) << shift);
                o->corr[4] = -(block_sum_i8(b1->qs) << shift);
            } else {
                _mm256_storeu_si256((__m256i *)o->qs, q0);
                _mm256_storeu_si256((__m256i *)(o->qs + 32), q1);
                _mm256_storeu_ps(o->d, d0);
                _mm256_storeu_ps(o->d + 8, d1);
                o->corr[0] = -(block_sum_i8(b0->qs) << shift);
                o->corr[8] = -(block_sum_i8(b1->qs) << shift);
            }
        }
}

static void pack_for_q4_0(int64_t n, const void *x, size_t xs, int nt, void *out) { pack_q8_0(n, x, xs, nt, out, 1); }
static void pack_for_q8_0(int64_t n, const void *x, size_t xs, int nt, void *out) { pack_q8_0(n, x, xs, nt, out, 0); }

/* The 64 unsigned quants (0..15) of Q4_0 blocks b, b+1 in the packed Q4_0 order. */
static inline __m512i q4_0_pair(const block_q4_0 *b) {
    const __m256i r = _mm256_loadu2_m128i((const __m128i *)b[1].qs, (const __m128i *)b[0].qs);
    return _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(r), _mm256_srli_epi16(r, 4), 1),
                            _mm512_set1_epi8(0x0f));
}

/* The fp16 scales of blocks b, b+1 (at byte offsets 0 and `stride`) as 16 floats: lanes of block b
 * where `lanes_b1` has a 0 bit, else of block b+1. */
static inline __m512 pair_scales(const void *b, size_t stride, __mmask16 lanes_b1) {
    const ls_fp16_t h0 = *(const ls_fp16_t *)b, h1 = *(const ls_fp16_t *)((const char *)b + stride);
    return _mm512_mask_blend_ps(lanes_b1, _mm512_set1_ps(f16c_to_f32(h0)), _mm512_set1_ps(f16c_to_f32(h1)));
}

// w (n,) in Q4_0 · 4 packed Q8_0 tokens -> y[t] = sum_b (dw*dx_t) * sum_k (qw-8)*qx_t
static void vec_dot_q4_0_q8_0_x4p_avx512(int64_t n, const void *vw, const void *packed, float *y) {
    const block_q4_0 *w = vw;
    const q8_0_pair_rec *xp = packed;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t p = 0; p < n / 64; ++p, xp += 4) {
        const __m512i q = q4_0_pair(&w[2 * p]);
        const __m512 dw = pair_scales(&w[2 * p], sizeof(block_q4_0), 0xf0f0);
        for (int t = 0; t < 4; ++t) {
            const __m512i s = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[t].corr), q, _mm512_loadu_si512(xp[t].qs));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_loadu_ps(xp[t].d)), acc[t]);
        }
    }
    for (int t = 0; t < 4; ++t) y[t] = _mm512_reduce_add_ps(acc[t]);
}

// w (n,) in Q4_0 · 1 packed Q8_0 token -> sum_b (dw*dx) * sum_k (qw-8)*qx   (decode: two pairs per step)
static float vec_dot_q4_0_q8_0_x1p_avx512(int64_t n, const void *vw, const void *packed) {
    const block_q4_0 *w = vw;
    const q8_0_pair_rec *xp = packed;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + 1 < n / 64; p += 2) {
        const __m512i s0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[p].corr), q4_0_pair(&w[2 * p]), _mm512_loadu_si512(xp[p].qs));
        const __m512i s1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[p + 1].corr), q4_0_pair(&w[2 * p + 2]), _mm512_loadu_si512(xp[p + 1].qs));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(pair_scales(&w[2 * p], sizeof(block_q4_0), 0xf0f0), _mm512_loadu_ps(xp[p].d)), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(pair_scales(&w[2 * p + 2], sizeof(block_q4_0), 0xf0f0), _mm512_loadu_ps(xp[p + 1].d)), acc1);
    }
    for (; p < n / 64; ++p) {
        const __m512i s0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[p].corr), q4_0_pair(&w[2 * p]), _mm512_loadu_si512(xp[p].qs));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(pair_scales(&w[2 * p], sizeof(block_q4_0), 0xf0f0), _mm512_loadu_ps(xp[p].d)), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* The 64 quants of Q8_0 blocks b, b+1 plus 128 (unsigned), natural order. */
static inline __m512i q8_0_pair_u8(const block_q8_0 *b) {
    return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs)),
                                               _mm256_loadu_si256((const __m256i *)b[1].qs), 1),
                            _mm512_set1_epi8((char)0x80));
}

// w (n,) in Q8_0 · 4 packed Q8_0 tokens -> y[t] = sum_b (dw*dx_t) * sum_k qw*qx_t   (qw + 128 unsigned)
static void vec_dot_q8_0_q8_0_x4p_avx512(int64_t n, const void *vw, const void *packed, float *y) {
    const block_q8_0 *w = vw;
    const q8_0_pair_rec *xp = packed;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t p = 0; p < n / 64; ++p, xp += 4) {
        const __m512i q = q8_0_pair_u8(&w[2 * p]);
        const __m512 dw = pair_scales(&w[2 * p], sizeof(block_q8_0), 0xff00);
        for (int t = 0; t < 4; ++t) {
            const __m512i s = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[t].corr), q, _mm512_loadu_si512(xp[t].qs));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_loadu_ps(xp[t].d)), acc[t]);
        }
    }
    for (int t = 0; t < 4; ++t) y[t] = _mm512_reduce_add_ps(acc[t]);
}

// w (n,) in Q8_0 · 1 packed Q8_0 token -> sum_b (dw*dx) * sum_k qw*qx   (decode: two pairs per step)
static float vec_dot_q8_0_q8_0_x1p_avx512(int64_t n, const void *vw, const void *packed) {
    const block_q8_0 *w = vw;
    const q8_0_pair_rec *xp = packed;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t p = 0;
    for (; p + 1 < n / 64; p += 2) {
        const __m512i s0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[p].corr), q8_0_pair_u8(&w[2 * p]), _mm512_loadu_si512(xp[p].qs));
        const __m512i s1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[p + 1].corr), q8_0_pair_u8(&w[2 * p + 2]), _mm512_loadu_si512(xp[p + 1].qs));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(pair_scales(&w[2 * p], sizeof(block_q8_0), 0xff00), _mm512_loadu_ps(xp[p].d)), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(pair_scales(&w[2 * p + 2], sizeof(block_q8_0), 0xff00), _mm512_loadu_ps(xp[p + 1].d)), acc1);
    }
    for (; p < n / 64; ++p) {
        const __m512i s0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp[p].corr), q8_0_pair_u8(&w[2 * p]), _mm512_loadu_si512(xp[p].qs));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(pair_scales(&w[2 * p], sizeof(block_q8_0), 0xff00), _mm512_loadu_ps(xp[p].d)), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* ---------------------------------------------------------------------------------------------
 * Batch matmul for Q4_0 weights with the int32 lanes as output rows.
 *
 * The kernels above put consecutive elements of one row in the lanes, so every 64 weights and token
 * need their own conversion and float scaling. Here each group of 16 rows is first rearranged
 * (in a per-thread buffer, once per call, then reused by every token): for block b and element
 * group g (elements 4g..4g+3), one register holds those 4 unsigned quants of each of the 16 rows.
 * A token's 4 activations of group g are broadcast to all lanes, so one vpdpbusd does 64 multiply-
 * adds for 16 rows, and the float work (convert, scale, accumulate) is once per block for 16 rows:
 *   acc_r += (d_r * dx) * (sum_g vpdpbusd(q_r,g, x_g) - 8 * sum(x))     for the 16 rows r at once.
 * Lane p of a tile holds row 4 * (p % 4) + p / 4 of the group (the order the transposition leaves). */

/* Four 128-bit pieces (at p, p + stride, p + 2 stride, p + 3 stride) in one register. */
static inline __m512i load4x128(const uint8_t *p, size_t stride) {
    return _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(
        _mm_loadu_si128((const __m128i *)p)), _mm_loadu_si128((const __m128i *)(p + stride)), 1),
        _mm_loadu_si128((const __m128i *)(p + 2 * stride)), 2), _mm_loadu_si128((const __m128i *)(p + 3 * stride)), 3);
}

/* The 128-bit pieces at byte offset off of rows rp[0..3], in one register. */
static inline __m512i load4rows(const uint8_t *const *rp, size_t off) {
    return _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(
        _mm_loadu_si128((const __m128i *)(rp[0] + off))), _mm_loadu_si128((const __m128i *)(rp[1] + off)), 1),
        _mm_loadu_si128((const __m128i *)(rp[2] + off)), 2), _mm_loadu_si128((const __m128i *)(rp[3] + off)), 3);
}

/* a[k] = dword m of 128-bit lane i holds group m of row 4k + i -> out[m], lane 4i + k: row 4k + i
 * ... i.e. lane p of out[m] is row tile_row(p). */
static inline void transpose16x4(const __m512i a[4], uint32_t out[4][16]) {
    const __m512i t01l = _mm512_unpacklo_epi32(a[0], a[1]), t01h = _mm512_unpackhi_epi32(a[0], a[1]);
    const __m512i t23l = _mm512_unpacklo_epi32(a[2], a[3]), t23h = _mm512_unpackhi_epi32(a[2], a[3]);
    _mm512_storeu_si512(out[0], _mm512_unpacklo_epi64(t01l, t23l));
    _mm512_storeu_si512(out[1], _mm512_unpackhi_epi64(t01l, t23l));
    _mm512_storeu_si512(out[2], _mm512_unpacklo_epi64(t01h, t23h));
    _mm512_storeu_si512(out[3], _mm512_unpackhi_epi64(t01h, t23h));
}

/* Pointers to rows r .. r+15 of W, the ones past r1 repeating the last row (their lanes are
 * computed but not stored): a partial group is computed lane for lane as a full one. */
static inline int row_ptrs(const void *w, size_t w_stride, int64_t r, int64_t r1, const uint8_t *rp[16],
                           int prefetch) {
    const int rows = r1 - r < 16 ? (int)(r1 - r) : 16;
    for (int i = 0; i < 16; ++i) rp[i] = (const uint8_t *)w + (size_t)(r + (i < rows ? i : rows - 1)) * w_stride;
    /* the batch kernels read the group's 16 rows side by side, which the hardware prefetchers do
     * not follow: fetch the next group's rows (contiguous) while this one is computed */
    if (prefetch && r + 16 < r1) {
        const char *next = (const char *)w + (size_t)(r + 16) * w_stride;
        const size_t bytes = (size_t)(r1 - r - 16 < 16 ? r1 - r - 16 : 16) * w_stride;
        for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
    }
    return rows;
}

typedef struct {
    uint32_t q[8][16];    /* [g][lane]: the 4 quants of elements 4g..4g+3 of the lane's row */
    float d[16];          /* fp16(d) of the lane's row */
} q4_0_tile16;            /* one block of 16 rows */

static inline int tile_row(int p) { return 4 * (p % 4) + p / 4; }

// W rows rp[0..15] (Q4_0), blocks 0..nb-1 -> tiles[nb]
static void tile_q4_0_rows16(int64_t nb, const uint8_t *const *rp, q4_0_tile16 *tiles) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
        __m512i a[4];   /* a[k]: rows 4k..4k+3, 16 quant bytes each, one 128-bit lane per row */
        for (int k = 0; k < 4; ++k) a[k] = load4rows(rp + 4 * k, (size_t)b * sizeof(block_q4_0) + offsetof(block_q4_0, qs));
        for (int half = 0; half < 2; ++half) {        /* low nibbles: groups 0-3; high: 4-7 */
            __m512i v[4];
            for (int k = 0; k < 4; ++k) v[k] = _mm512_and_si512(half ? _mm512_srli_epi16(a[k], 4) : a[k], low4);
            const __m512i t01l = _mm512_unpacklo_epi32(v[0], v[1]), t01h = _mm512_unpackhi_epi32(v[0], v[1]);
            const __m512i t23l = _mm512_unpacklo_epi32(v[2], v[3]), t23h = _mm512_unpackhi_epi32(v[2], v[3]);
            /* lane p = 4*i + m of the results: row 4*m + i (i = 128-bit lane, m = dword within it) */
            _mm512_storeu_si512(tiles[b].q[4 * half + 0], _mm512_unpacklo_epi64(t01l, t23l));
            _mm512_storeu_si512(tiles[b].q[4 * half + 1], _mm512_unpackhi_epi64(t01l, t23l));
            _mm512_storeu_si512(tiles[b].q[4 * half + 2], _mm512_unpacklo_epi64(t01h, t23h));
            _mm512_storeu_si512(tiles[b].q[4 * half + 3], _mm512_unpackhi_epi64(t01h, t23h));
        }
        for (int p = 0; p < 16; ++p)
            tiles[b].d[p] = f16c_to_f32(((const block_q4_0 *)rp[tile_row(p)])[b].d);
    }
}

/* Per token and block of the activations: fp16(dx) as float and -8 * sum(qx). */
typedef struct { float d; int32_t corr; } q8_0_side;

static inline __attribute__((always_inline)) void gemm_q4_0_tile(
        int64_t nb, const q4_0_tile16 *tiles, const uint8_t *x, size_t x_stride, const q8_0_side *side,
        int64_t t0, const int nt, float *y, size_t ldy, int rows) {
    __m512 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const q4_0_tile16 *tl = &tiles[b];
        __m512i ai[4];
        for (int t = 0; t < nt; ++t) ai[t] = _mm512_set1_epi32(side[(t0 + t) * nb + b].corr);
        for (int g = 0; g < 8; ++g) {
            const __m512i q = _mm512_loadu_si512(tl->q[g]);
            for (int t = 0; t < nt; ++t) {
                const block_q8_0 *xb = (const block_q8_0 *)(x + (size_t)(t0 + t) * x_stride) + b;
                int32_t xg;
                memcpy(&xg, xb->qs + 4 * g, 4);
                ai[t] = _mm512_dpbusd_epi32(ai[t], q, _mm512_set1_epi32(xg));
            }
        }
        const __m512 dw = _mm512_loadu_ps(tl->d);
        for (int t = 0; t < nt; ++t)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[t]), _mm512_mul_ps(dw, _mm512_set1_ps(side[(t0 + t) * nb + b].d)), acc[t]);
    }
    for (int t = 0; t < nt; ++t) {
        float o[16];
        _mm512_storeu_ps(o, acc[t]);
        for (int p = 0; p < 16; ++p)
            if (tile_row(p) < rows) y[(size_t)(t0 + t) * ldy + tile_row(p)] = o[p];
    }
}

static inline void *thread_buffer(size_t bytes, int which) {
    static __thread void *buf[3];
    static __thread size_t cap[3];
    if (bytes > cap[which]) {
        free(buf[which]);
        buf[which] = aligned_alloc(64, (bytes + 63) / 64 * 64);
        cap[which] = buf[which] ? bytes : 0;
    }
    return buf[which];
}

// W rows rp[0..15] (Q8_0), blocks 0..nb-1 -> tiles[nb], quants + 128 (unsigned)
static void tile_q8_0_rows16(int64_t nb, const uint8_t *const *rp, q4_0_tile16 *tiles) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    for (int64_t b = 0; b < nb; ++b) {
        const size_t base = (size_t)b * sizeof(block_q8_0) + offsetof(block_q8_0, qs);
        for (int half = 0; half < 2; ++half) {        /* bytes 0-15: groups 0-3; 16-31: 4-7 */
            __m512i v[4];
            for (int k = 0; k < 4; ++k) v[k] = _mm512_xor_si512(load4rows(rp + 4 * k, base + 16 * half), bias);
            transpose16x4(v, &tiles[b].q[4 * half]);
        }
        for (int p = 0; p < 16; ++p)
            tiles[b].d[p] = f16c_to_f32(((const block_q8_0 *)rp[tile_row(p)])[b].d);
    }
}

/* Q4_0 / Q8_0 weights @ x (T, n) Q8_0 -> y[t * ldy + r] for whole groups of 16 rows from r0; returns
 * the first row not done. Offset c = 1 << shift (8 for Q4_0's raw nibbles, 128 for Q8_0 + 128). */
static int64_t gemm_q32_q8_0(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                             const void *x, size_t x_stride, int64_t T, float *y, size_t ldy,
                             void (*tile)(int64_t, const uint8_t *const *, q4_0_tile16 *), int shift) {
    const int64_t nb = n / 32;
    q4_0_tile16 *tiles = thread_buffer((size_t)nb * sizeof(q4_0_tile16), 0);
    q8_0_side *side = thread_buffer((size_t)(T * nb) * sizeof(q8_0_side), 1);
    if (!tiles || !side) return r0;
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_0 *xb = (const block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride);
        for (int64_t b = 0; b < nb; ++b) {
            side[t * nb + b].d = f16c_to_f32(xb[b].d);
            side[t * nb + b].corr = -(block_sum_i8(xb[b].qs) << shift);
        }
    }
    int64_t r = r0;
    for (; r < r1; r += 16) {
        const uint8_t *rp[16];
        const int rows = row_ptrs(w, w_stride, r, r1, rp, 1);
        tile(nb, rp, tiles);
        int64_t t = 0;
        for (; t + 4 <= T; t += 4) gemm_q4_0_tile(nb, tiles, x, x_stride, side, t, 4, y + r, ldy, rows);
        for (; t < T; ++t) gemm_q4_0_tile(nb, tiles, x, x_stride, side, t, 1, y + r, ldy, rows);
    }
    return r1;
}

// W rows r0.. (Q4_0) @ x (T, n) Q8_0 -> y[t * ldy + r]: sum_b (dw*dx) * (vpdpbusd(q, x) - 8 * sum(x))
static int64_t gemm_q4_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemm_q32_q8_0(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy, tile_q4_0_rows16, 3);
}

// W rows r0.. (Q8_0) @ x (T, n) Q8_0 -> y[t * ldy + r]: sum_b (dw*dx) * (vpdpbusd(q + 128, x) - 128 * sum(x))
static int64_t gemm_q8_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemm_q32_q8_0(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy, tile_q8_0_rows16, 7);
}

/* ---------------------------------------------------------------------------------------------
 * Batch matmul for Q4_K weights with the int32 lanes as output rows (as for Q4_0 above).
 *
 * Tile of 16 rows per super-block: for each sub-block s and element group j (elements
 * 32s + 4j .. +3), one register of the 16 rows' 4 quants; the rows' 6-bit scales and mins as
 * int32 lanes; d and dmin as floats. Per token and super-block, with x_g the token's 4 activations
 * of group g broadcast to every lane and bs_s the sum of its sub-block s (from bsums):
 *   isum_r = sum_s sc_r,s * sum_j vpdpbusd(q_r,s,j, x_s,j)     (vpmulld applies the scale)
 *   msum_r = sum_s m_r,s * bs_s                                  (vpdpwssd on pairs of sub-blocks)
 *   acc_r += (d_r * dx) * isum_r - (dmin_r * dx) * msum_r          for the 16 rows at once. */

typedef struct {
    uint32_t q[64][16];   /* [8 s + j][lane] */
    int32_t sc[8][16];    /* [s][lane] */
    int32_t m[4][16];     /* [pair][lane]: m of sub-blocks 2 pair (low int16) and 2 pair + 1 (high) */
    float d[16], dmin[16];
} q4_K_tile16;

// W rows rp[0..15] (Q4_K), super-blocks 0..nb-1 -> tiles[nb]
static void tile_q4_K_rows16(int64_t nb, const uint8_t *const *rp, q4_K_tile16 *tiles) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
        q4_K_tile16 *tl = &tiles[b];
        const size_t base = (size_t)b * sizeof(block_q4_K);
        for (int k = 0; k < 4; ++k)              /* qs chunk k: sub-blocks 2k (low), 2k+1 (high) */
            for (int half = 0; half < 2; ++half) {   /* bytes 0-15 (groups 0-3), 16-31 (4-7) */
                __m512i raw[4], lo[4], hi[4];
                for (int kk = 0; kk < 4; ++kk)
                    raw[kk] = load4rows(rp + 4 * kk, base + offsetof(block_q4_K, qs) + 32 * k + 16 * half);
                for (int kk = 0; kk < 4; ++kk) {
                    lo[kk] = _mm512_and_si512(raw[kk], low4);
                    hi[kk] = _mm512_and_si512(_mm512_srli_epi16(raw[kk], 4), low4);
                }
                transpose16x4(lo, &tl->q[8 * (2 * k) + 4 * half]);
                transpose16x4(hi, &tl->q[8 * (2 * k + 1) + 4 * half]);
            }
        for (int p = 0; p < 16; ++p) {
            const block_q4_K *blk = (const block_q4_K *)rp[tile_row(p)] + b;
            uint8_t sc[8], m[8];
            ls_unpack_scales_k4(blk->scales, sc, m);
            for (int s = 0; s < 8; ++s) tl->sc[s][p] = sc[s];
            for (int j = 0; j < 4; ++j) tl->m[j][p] = (int32_t)m[2 * j] | ((int32_t)m[2 * j + 1] << 16);
            tl->d[p] = f16c_to_f32(blk->d);
            tl->dmin[p] = f16c_to_f32(blk->dmin);
        }
    }
}

/* Per token and super-block of Q8_K activations: d, and the sub-block sums as int16 pairs. */
typedef struct { float d; int32_t bs[4]; } q8_K_side;

static inline __attribute__((always_inline)) void gemm_q4_K_tile(
        int64_t nb, const q4_K_tile16 *tiles, const uint8_t *x, size_t x_stride, const q8_K_side *side,
        int64_t t0, const int nt, float *y, size_t ldy, int rows) {
    __m512 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const q4_K_tile16 *tl = &tiles[b];
        const int8_t *xq[4];
        __m512i isum[4], msum[4];
        for (int t = 0; t < nt; ++t) {
            xq[t] = ((const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b)->qs;
            isum[t] = _mm512_setzero_si512();
            msum[t] = _mm512_setzero_si512();
        }
        for (int sb = 0; sb < 8; ++sb) {
            __m512i si[4];
            for (int t = 0; t < nt; ++t) si[t] = _mm512_setzero_si512();
            for (int j = 0; j < 8; ++j) {
                const __m512i q = _mm512_loadu_si512(tl->q[8 * sb + j]);
                for (int t = 0; t < nt; ++t) {
                    int32_t xg;
                    memcpy(&xg, xq[t] + 32 * sb + 4 * j, 4);
                    si[t] = _mm512_dpbusd_epi32(si[t], q, _mm512_set1_epi32(xg));
                }
            }
            const __m512i sc = _mm512_loadu_si512(tl->sc[sb]);
            for (int t = 0; t < nt; ++t) isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(si[t], sc));
        }
        for (int j = 0; j < 4; ++j) {
            const __m512i m = _mm512_loadu_si512(tl->m[j]);
            for (int t = 0; t < nt; ++t)
                msum[t] = _mm512_dpwssd_epi32(msum[t], m, _mm512_set1_epi32(side[(t0 + t) * nb + b].bs[j]));
        }
        const __m512 d = _mm512_loadu_ps(tl->d), dmin = _mm512_loadu_ps(tl->dmin);
        for (int t = 0; t < nt; ++t) {
            const __m512 dx = _mm512_set1_ps(side[(t0 + t) * nb + b].d);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, dx), acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[t]), _mm512_mul_ps(dmin, dx), acc[t]);
        }
    }
    for (int t = 0; t < nt; ++t) {
        float o[16];
        _mm512_storeu_ps(o, acc[t]);
        for (int p = 0; p < 16; ++p)
            if (tile_row(p) < rows) y[(size_t)(t0 + t) * ldy + tile_row(p)] = o[p];
    }
}

// W rows r0.. (Q4_K) @ x (T, n) Q8_K -> y[t * ldy + r], whole groups of 16 rows; returns the first
// row not done (r1: every row, the last group possibly partial)
static int64_t gemm_q4_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    q4_K_tile16 *tiles = thread_buffer((size_t)nb * sizeof(q4_K_tile16), 0);
    q8_K_side *side = thread_buffer((size_t)(T * nb) * sizeof(q8_K_side), 1);
    if (!tiles || !side) return r0;
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_K *xb = (const block_q8_K *)((const uint8_t *)x + (size_t)t * x_stride);
        for (int64_t b = 0; b < nb; ++b) {
            side[t * nb + b].d = xb[b].d;
            for (int j = 0; j < 4; ++j) {
                const int lo = xb[b].bsums[4 * j] + xb[b].bsums[4 * j + 1];
                const int hi = xb[b].bsums[4 * j + 2] + xb[b].bsums[4 * j + 3];
                side[t * nb + b].bs[j] = (int32_t)(uint16_t)(int16_t)lo | (int32_t)((uint32_t)(uint16_t)(int16_t)hi << 16);
            }
        }
    }
    int64_t r = r0;
    for (; r < r1; r += 16) {
        const uint8_t *rp[16];
        const int rows = row_ptrs(w, w_stride, r, r1, rp, 1);
        tile_q4_K_rows16(nb, rp, tiles);
        int64_t t = 0;
        for (; t + 4 <= T; t += 4) gemm_q4_K_tile(nb, tiles, x, x_stride, side, t, 4, y + r, ldy, rows);
        for (; t < T; ++t) gemm_q4_K_tile(nb, tiles, x, x_stride, side, t, 1, y + r, ldy, rows);
    }
    return r1;
}

/* ---------------------------------------------------------------------------------------------
 * Batch matmul for Q6_K weights with the int32 lanes as output rows (as for Q4_K above): the 6-bit
 * quants q go in unsigned (0..63), the -32 offset comes back through the activation block sums:
 *   isum_r = sum_s sc_r,s * (sum_j vpdpbusd(q_r,s,j, x_s,j) - 32 * bsum_s)    (16 sub-blocks of 16) */

typedef struct {
    uint32_t q[64][16];   /* [4 s + j][lane]: elements 16 s + 4 j .. +3 */
    int32_t sc[16][16];   /* [s][lane] */
    int32_t scp[8][16];   /* [pair][lane]: scales of sub-blocks 2 pair (low int16), 2 pair + 1 (high) */
    float d[16];
} q6_K_tile16;

// W rows rp[0..15] (Q6_K), super-blocks 0..nb-1 -> tiles[nb]
static void tile_q6_K_rows16(int64_t nb, const uint8_t *const *rp, q6_K_tile16 *tiles) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(0x03);
    uint8_t qs[16][QK_K];     /* the 16 rows' quants (0..63) in element order */
    for (int64_t b = 0; b < nb; ++b) {
        q6_K_tile16 *tl = &tiles[b];
        for (int r = 0; r < 16; ++r) {
            const block_q6_K *blk = (const block_q6_K *)rp[r] + b;
            for (int h = 0; h < 2; ++h) {
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h));
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h + 32));
                const __m256i hb = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h));
                uint8_t *o = qs[r] + 128 * h;
                _mm256_storeu_si256((__m256i *)o, _mm256_or_si256(_mm256_and_si256(l0, low4),
                                    _mm256_slli_epi16(_mm256_and_si256(hb, two), 4)));
                _mm256_storeu_si256((__m256i *)(o + 32), _mm256_or_si256(_mm256_and_si256(l1, low4),
                                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), two), 4)));
                _mm256_storeu_si256((__m256i *)(o + 64), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), two), 4)));
                _mm256_storeu_si256((__m256i *)(o + 96), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), two), 4)));
            }
        }
        for (int c = 0; c < 16; ++c) {           /* 16-byte column c: groups 4c .. 4c+3 */
            __m512i v[4];
            for (int k = 0; k < 4; ++k) v[k] = load4x128(qs[4 * k] + 16 * c, QK_K);
            transpose16x4(v, &tl->q[4 * c]);
        }
        for (int p = 0; p < 16; ++p) {
            const block_q6_K *blk = (const block_q6_K *)rp[tile_row(p)] + b;
            for (int sb = 0; sb < 16; ++sb) tl->sc[sb][p] = blk->scales[sb];
            for (int j = 0; j < 8; ++j)
                tl->scp[j][p] = (int32_t)(uint16_t)(int16_t)blk->scales[2 * j]
                              | (int32_t)((uint32_t)(uint16_t)(int16_t)blk->scales[2 * j + 1] << 16);
            tl->d[p] = f16c_to_f32(blk->d);
        }
    }
}

static inline __attribute__((always_inline)) void gemm_q6_K_tile(
        int64_t nb, const q6_K_tile16 *tiles, const uint8_t *x, size_t x_stride,
        int64_t t0, const int nt, float *y, size_t ldy, int rows) {
    __m512 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const q6_K_tile16 *tl = &tiles[b];
        const block_q8_K *xb[4];
        __m512i isum[4], off[4];
        for (int t = 0; t < nt; ++t) {
            xb[t] = (const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b;
            isum[t] = _mm512_setzero_si512();
            off[t] = _mm512_setzero_si512();
        }
        for (int sb = 0; sb < 16; ++sb) {
            __m512i si[4];
            for (int t = 0; t < nt; ++t) si[t] = _mm512_setzero_si512();
            for (int j = 0; j < 4; ++j) {
                const __m512i q = _mm512_loadu_si512(tl->q[4 * sb + j]);
                for (int t = 0; t < nt; ++t) {
                    int32_t xg;
                    memcpy(&xg, xb[t]->qs + 16 * sb + 4 * j, 4);
                    si[t] = _mm512_dpbusd_epi32(si[t], q, _mm512_set1_epi32(xg));
                }
            }
            const __m512i sc = _mm512_loadu_si512(tl->sc[sb]);
            for (int t = 0; t < nt; ++t) isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(si[t], sc));
        }
        for (int j = 0; j < 8; ++j) {
            const __m512i scp = _mm512_loadu_si512(tl->scp[j]);
            for (int t = 0; t < nt; ++t) {
                int32_t bp;
                memcpy(&bp, &xb[t]->bsums[2 * j], 4);
                off[t] = _mm512_dpwssd_epi32(off[t], scp, _mm512_set1_epi32(bp));
            }
        }
        const __m512 d = _mm512_loadu_ps(tl->d);
        for (int t = 0; t < nt; ++t)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(isum[t], _mm512_slli_epi32(off[t], 5))),
                                     _mm512_mul_ps(d, _mm512_set1_ps(xb[t]->d)), acc[t]);
    }
    for (int t = 0; t < nt; ++t) {
        float o[16];
        _mm512_storeu_ps(o, acc[t]);
        for (int p = 0; p < 16; ++p)
            if (tile_row(p) < rows) y[(size_t)(t0 + t) * ldy + tile_row(p)] = o[p];
    }
}

// W rows r0.. (Q6_K) @ x (T, n) Q8_K -> y[t * ldy + r], whole groups of 16 rows; returns the first
// row not done (r1: every row, the last group possibly partial)
static int64_t gemm_q6_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    q6_K_tile16 *tiles = thread_buffer((size_t)nb * sizeof(q6_K_tile16), 0);
    if (!tiles) return r0;
    int64_t r = r0;
    for (; r < r1; r += 16) {
        const uint8_t *rp[16];
        const int rows = row_ptrs(w, w_stride, r, r1, rp, 1);
        tile_q6_K_rows16(nb, rp, tiles);
        int64_t t = 0;
        for (; t + 4 <= T; t += 4) gemm_q6_K_tile(nb, tiles, x, x_stride, t, 4, y + r, ldy, rows);
        for (; t < T; ++t) gemm_q6_K_tile(nb, tiles, x, x_stride, t, 1, y + r, ldy, rows);
    }
    return r1;
}

/* ---------------------------------------------------------------------------------------------
 * Decode (1-3 tokens): the batch kernels' results, bit for bit, without rearranging the rows.
 *
 * A token's outputs must not depend on how it was batched, so a row's result is the same float
 * recurrence as in the batch kernels above (per block, in order: acc = fma(float(isum_b),
 * d_r * dx_b, acc), ...). Here each row's exact integer block sums are computed with the elements in
 * the lanes (as the single-row kernels do, rows read in order), reduced to one int32 per row and
 * block, and then the float steps run on 16 rows at once, a row per lane. */

/* fp16 fields at byte offset off of rows rp[0..15] -> 16 floats (lane i: row rp[i]). */
static inline __m512 gather_fp16(const uint8_t *const *rp, size_t off) {
    uint16_t h[16];
    for (int i = 0; i < 16; ++i) memcpy(&h[i], rp[i] + off, 2);
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
}

static inline void store_rows(float *y, __m512 acc, int rows) {
    float o[16];
    _mm512_storeu_ps(o, acc);
    for (int i = 0; i < rows; ++i) y[i] = o[i];
}

/* The two block sums of one row's pair of blocks: (A, B) from the 16 int32 lanes of v, block A in
 * 128-bit lanes 0, 1 (q4_order: 0, 2). */
static inline void pair_sums(__m512i v, int q4_order, int32_t *a, int32_t *b) {
    if (q4_order) v = _mm512_shuffle_i64x2(v, v, 0xd8);            /* lanes 0, 2, 1, 3 */
    const __m256i h = _mm256_hadd_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    const __m256i h2 = _mm256_hadd_epi32(h, h);                     /* [A0-3, B0-3, .. | A4-7, B4-7, ..] */
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1));
    *a = _mm_cvtsi128_si32(s);
    *b = _mm_extract_epi32(s, 1);
}

// W rows r0..r1-1 (Q4_0 / Q8_0) · 1 token (packed, see pack_q8_0) -> y[r]; as gemm_q32_q8_0.
// v: int32 scratch of n/64 * 2 * 16 (each row's block sums, then read with a row per lane).
static void gemv_q32_rows(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                          const q8_0_pair_rec *xp, float *y, int q4, int32_t *v) {
    const size_t bsz = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const int64_t np = n / 64;
    for (int64_t r = r0; r < r1; r += 16) {
        const uint8_t *rp[16];
        const int rows = row_ptrs(w, w_stride, r, r1, rp, 0);
        for (int i = 0; i < 16; ++i)          /* row by row: the weights stream in order */
            for (int64_t p = 0; p < np; ++p) {
                const uint8_t *blk = rp[i] + (size_t)(2 * p) * bsz;
                /* the hardware prefetchers do not keep up with this loop: 4 rows ahead */
                _mm_prefetch((const char *)blk + 4 * w_stride, _MM_HINT_T0);
                _mm_prefetch((const char *)blk + 4 * w_stride + 2 * bsz - 1, _MM_HINT_T0);
                if (i >= rows) {
                    v[p * 32 + i] = v[p * 32 + 16 + i] = 0;
                    continue;
                }
                pair_sums(_mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                              q4 ? q4_0_pair((const block_q4_0 *)blk) : q8_0_pair_u8((const block_q8_0 *)blk),
                                              _mm512_loadu_si512(xp[p].qs)),
                          q4, &v[p * 32 + i], &v[p * 32 + 16 + i]);
            }
        __m512 acc = _mm512_setzero_ps();
        for (int64_t p = 0; p < np; ++p) {
            const __m512i A = _mm512_add_epi32(_mm512_loadu_si512(v + p * 32), _mm512_set1_epi32(xp[p].corr[0]));
            const __m512i B = _mm512_add_epi32(_mm512_loadu_si512(v + p * 32 + 16), _mm512_set1_epi32(xp[p].corr[q4 ? 4 : 8]));
            const __m512 dA = gather_fp16(rp, (size_t)(2 * p) * bsz), dB = gather_fp16(rp, (size_t)(2 * p + 1) * bsz);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(A), _mm512_mul_ps(dA, _mm512_set1_ps(xp[p].d[0])), acc);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(B), _mm512_mul_ps(dB, _mm512_set1_ps(xp[p].d[15])), acc);
        }
        store_rows(y + r, acc, rows);
    }
}

static void gemv_q32(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy, int q4) {
    q8_0_pair_rec *xp = thread_buffer(ls_pack_bytes(n), 1);
    int32_t *v = thread_buffer((size_t)(n / 64) * 32 * sizeof(int32_t), 2);
    if (!xp || !v) return;
    for (int64_t t = 0; t < T; ++t) {
        pack_q8_0(n, (const uint8_t *)x + (size_t)t * x_stride, x_stride, 1, xp, q4);
        gemv_q32_rows(n, w, w_stride, r0, r1, xp, y + (size_t)t * ldy, q4, v);
    }
}

// W rows (Q4_0) · 1-3 tokens -> y: bit for bit gemm_q4_0_q8_0_avx512
// (Q4_0 is rearranged on the fly instead: its 18-byte blocks make the per-row reduction above cost
// more than the 16-row transposition of gemm_q4_0_tile, which runs here without storing the tile.)
static int64_t gemv_q4_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK4_0;
    q8_0_side *side = thread_buffer((size_t)nb * sizeof(q8_0_side), 1);
    if (!side) return r0;
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_0 *xb = (const block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride);
        for (int64_t b = 0; b < nb; ++b) {
            side[b].d = f16c_to_f32(xb[b].d);
            side[b].corr = -(block_sum_i8(xb[b].qs) << 3);
        }
        for (int64_t r = r0; r < r1; r += 16) {
            const uint8_t *rp[16];
            const int rows = row_ptrs(w, w_stride, r, r1, rp, 0);
            const char *next = (const char *)w + (size_t)(r + 16) * w_stride;
            const int64_t next_rows = r1 - r - 16 < 16 ? r1 - r - 16 : 16;
            const size_t next_bytes = next_rows > 0 ? (size_t)next_rows * w_stride : 0;
            const size_t per_block = (next_bytes / (size_t)nb + 63) / 64 * 64;
            uint16_t dh[16];
            __m512 acc = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; ++b) {
                /* the next group's rows (contiguous), spread over this group's blocks */
                for (size_t o = (size_t)b * per_block; o < (size_t)(b + 1) * per_block && o < next_bytes; o += 64)
                    _mm_prefetch(next + o, _MM_HINT_T0);
                const size_t off = (size_t)b * sizeof(block_q4_0);
                __m512i a[4], g[8];
                for (int k = 0; k < 4; ++k) a[k] = load4rows(rp + 4 * k, off + offsetof(block_q4_0, qs));
                for (int half = 0; half < 2; ++half) {
                    __m512i v[4];
                    for (int k = 0; k < 4; ++k) v[k] = _mm512_and_si512(half ? _mm512_srli_epi16(a[k], 4) : a[k], low4);
                    const __m512i t01l = _mm512_unpacklo_epi32(v[0], v[1]), t01h = _mm512_unpackhi_epi32(v[0], v[1]);
                    const __m512i t23l = _mm512_unpacklo_epi32(v[2], v[3]), t23h = _mm512_unpackhi_epi32(v[2], v[3]);
                    g[4 * half + 0] = _mm512_unpacklo_epi64(t01l, t23l);
                    g[4 * half + 1] = _mm512_unpackhi_epi64(t01l, t23l);
                    g[4 * half + 2] = _mm512_unpacklo_epi64(t01h, t23h);
                    g[4 * half + 3] = _mm512_unpackhi_epi64(t01h, t23h);
                }
                __m512i ai = _mm512_set1_epi32(side[b].corr);
                for (int j = 0; j < 8; ++j) {
                    int32_t xg;
                    memcpy(&xg, xb[b].qs + 4 * j, 4);
                    ai = _mm512_dpbusd_epi32(ai, g[j], _mm512_set1_epi32(xg));
                }
                for (int p = 0; p < 16; ++p) memcpy(&dh[p], rp[tile_row(p)] + off, 2);
                const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)dh));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), _mm512_mul_ps(dw, _mm512_set1_ps(side[b].d)), acc);
            }
            float o[16];
            _mm512_storeu_ps(o, acc);
            for (int p = 0; p < 16; ++p)
                if (tile_row(p) < rows) y[(size_t)t * ldy + r + tile_row(p)] = o[p];
        }
    }
    return r1;
}

// W rows (Q8_0) · 1-3 tokens -> y: bit for bit gemm_q8_0_q8_0_avx512
static int64_t gemv_q8_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    if (n % 64 || !thread_buffer(ls_pack_bytes(n), 1) || !thread_buffer((size_t)(n / 64) * 32 * sizeof(int32_t), 2)) return r0;
    gemv_q32(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy, 0);
    return r1;
}

// W rows (Q4_K) · 1-3 tokens (Q8_K) -> y: bit for bit gemm_q4_K_q8_K_avx512
static int64_t gemv_q4_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) idx[k] = scale_index(2 * k, 16);
    const int64_t nb = n / QK_K;
    int32_t *v = thread_buffer((size_t)nb * 32 * sizeof(int32_t), 2);
    if (!v) return r0;
    int32_t *m = v + nb * 16;       /* each row's block sums, then read with a row per lane */
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_K *xb = (const block_q8_K *)((const uint8_t *)x + (size_t)t * x_stride);
        for (int64_t r = r0; r < r1; r += 16) {
            const uint8_t *rp[16];
            const int rows = row_ptrs(w, w_stride, r, r1, rp, 0);
            for (int i = 0; i < 16; ++i)      /* row by row: the weights stream in order */
                for (int64_t b = 0; b < nb; ++b) {
                    if (i >= rows) {
                        v[b * 16 + i] = m[b * 16 + i] = 0;
                        continue;
                    }
                    const block_q4_K *blk = (const block_q4_K *)rp[i] + b;
                    for (size_t o = 0; o < sizeof(block_q4_K) + 63; o += 64)   /* 4 rows ahead */
                        _mm_prefetch((const char *)blk + 4 * w_stride + o, _MM_HINT_T0);
                    const __m256i bs = _mm256_loadu_si256((const __m256i *)xb[b].bsums);
                    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                    const __m256i scales_mins = unpack_scales_mins_k4_(blk->scales);
                    const __m128i ms = _mm_madd_epi16(_mm256_extracti128_si256(scales_mins, 1), pairs);
                    const __m128i ms2 = _mm_add_epi32(ms, _mm_unpackhi_epi64(ms, ms));
                    m[b * 16 + i] = _mm_cvtsi128_si32(_mm_add_epi32(ms2, _mm_shuffle_epi32(ms2, 1)));
                    const __m512i sc = _mm512_broadcast_i32x4(_mm256_castsi256_si128(scales_mins));
                    __m512i si = _mm512_setzero_si512();
                    for (int k = 0; k < 4; ++k) {
                        const __m256i bits = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * k));
                        const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(bits, low4)),
                                                             _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4), 1);
                        si = _mm512_dpwssd_epi32(si, _mm512_maddubs_epi16(q, _mm512_loadu_si512(xb[b].qs + 64 * k)),
                                                 _mm512_permutexvar_epi16(idx[k], sc));
                    }
                    v[b * 16 + i] = _mm512_reduce_add_epi32(si);
                }
            __m512 acc = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; ++b) {
                const __m512i isum = _mm512_loadu_si512(v + b * 16), msum = _mm512_loadu_si512(m + b * 16);
                const __m512 dx = _mm512_set1_ps(xb[b].d);
                const size_t off = (size_t)b * sizeof(block_q4_K);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(gather_fp16(rp, off + offsetof(block_q4_K, d)), dx), acc);
                acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(gather_fp16(rp, off + offsetof(block_q4_K, dmin)), dx), acc);
            }
            store_rows(y + (size_t)t * ldy + r, acc, rows);
        }
    }
    return r1;
}

// W rows (Q6_K) · 1-3 tokens (Q8_K) -> y: bit for bit gemm_q6_K_q8_K_avx512
static int64_t gemv_q6_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(0x03);
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) idx[k] = scale_index(4 * k, 8);
    const int64_t nb = n / QK_K;
    int32_t *v = thread_buffer((size_t)nb * 16 * sizeof(int32_t), 2);   /* rows' block sums */
    if (!v) return r0;
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_K *xb = (const block_q8_K *)((const uint8_t *)x + (size_t)t * x_stride);
        for (int64_t r = r0; r < r1; r += 16) {
            const uint8_t *rp[16];
            const int rows = row_ptrs(w, w_stride, r, r1, rp, 0);
            for (int i = 0; i < 16; ++i)      /* row by row: the weights stream in order */
                for (int64_t b = 0; b < nb; ++b) {
                    if (i >= rows) {
                        v[b * 16 + i] = 0;
                        continue;
                    }
                    const block_q6_K *blk = (const block_q6_K *)rp[i] + b;
                    for (size_t o = 0; o < sizeof(block_q6_K) + 63; o += 64)   /* 4 rows ahead */
                        _mm_prefetch((const char *)blk + 4 * w_stride + o, _MM_HINT_T0);
                    const __m256i bsums = _mm256_loadu_si256((const __m256i *)xb[b].bsums);
                    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
                    const __m512i sc = _mm512_castsi256_si512(scales16);
                    __m512i si = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(),
                                     _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5)));
                    for (int h = 0; h < 2; ++h) {
                        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h));
                        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h + 32));
                        const __m256i hb = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h));
                        const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(hb, two), 4));
                        const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, low4),
                                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), two), 4));
                        const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), two), 4));
                        const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), two), 4));
                        const int8_t *q8 = xb[b].qs + 128 * h;
                        si = _mm512_dpwssd_epi32(si, _mm512_maddubs_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1),
                                                 _mm512_loadu_si512(q8)), _mm512_permutexvar_epi16(idx[2 * h], sc));
                        si = _mm512_dpwssd_epi32(si, _mm512_maddubs_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(q2), q3, 1),
                                                 _mm512_loadu_si512(q8 + 64)), _mm512_permutexvar_epi16(idx[2 * h + 1], sc));
                    }
                    v[b * 16 + i] = _mm512_reduce_add_epi32(si);
                }
            __m512 acc = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; ++b)
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(v + b * 16)),
                                      _mm512_mul_ps(gather_fp16(rp, (size_t)b * sizeof(block_q6_K) + offsetof(block_q6_K, d)),
                                                    _mm512_set1_ps(xb[b].d)), acc);
            store_rows(y + (size_t)t * ldy + r, acc, rows);
        }
    }
    return r1;
}

/* cpu.c copies the non-NULL slots into the AVX2 table (ls_set_avx512). */
const ls_kernel_table ls_kernels_avx512 = {
    .vec_dot = {
        [LS_TYPE_Q4_K] = vec_dot_q4_K_q8_K_avx512,
        [LS_TYPE_Q6_K] = vec_dot_q6_K_q8_K_avx512,
    },
    .vec_dot_x4 = {
        [LS_TYPE_Q4_K] = vec_dot_q4_K_q8_K_x4_avx512,
        [LS_TYPE_Q6_K] = vec_dot_q6_K_q8_K_x4_avx512,
    },
    .pack = {
        [LS_TYPE_Q4_0] = pack_for_q4_0,
        [LS_TYPE_Q8_0] = pack_for_q8_0,
    },
    .vec_dot_x4p = {
        [LS_TYPE_Q4_0] = vec_dot_q4_0_q8_0_x4p_avx512,
        [LS_TYPE_Q8_0] = vec_dot_q8_0_q8_0_x4p_avx512,
    },
    .gemv = {
        [LS_TYPE_Q4_0] = gemv_q4_0_q8_0_avx512,
        [LS_TYPE_Q8_0] = gemv_q8_0_q8_0_avx512,
        [LS_TYPE_Q4_K] = gemv_q4_K_q8_K_avx512,
        [LS_TYPE_Q6_K] = gemv_q6_K_q8_K_avx512,
    },
    .gemm = {
        [LS_TYPE_Q4_0] = gemm_q4_0_q8_0_avx512,
        [LS_TYPE_Q4_K] = gemm_q4_K_q8_K_avx512,
        [LS_TYPE_Q8_0] = gemm_q8_0_q8_0_avx512,
        [LS_TYPE_Q6_K] = gemm_q6_K_q8_K_avx512,
    },
    .vec_dot_x1p = {
        [LS_TYPE_Q4_0] = vec_dot_q4_0_q8_0_x1p_avx512,
        [LS_TYPE_Q8_0] = vec_dot_q8_0_q8_0_x1p_avx512,
    },
};
