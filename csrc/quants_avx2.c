/* quants_avx2.c — AVX2 + FMA (+ F16C) twins of the scalar kernels in quants.c.
 *
 * Only this file is compiled for AVX2 (the pragma below); the kernels are the AVX2 column of the
 * type table (types.c), used at the AVX2 and AVX-512 levels when the CPU has AVX2, FMA and F16C. Each kernel computes the same per-block integer sums as
 * its scalar twin — unsigned x signed byte products with _mm256_maddubs_epi16, then pairs of
 * int16 into int32 with _mm256_madd_epi16 (which also applies the sub-block scales) — so only the
 * order in which the float-scaled block sums are added differs. A type without an AVX2 kernel of a
 * kind uses its scalar one.
 *
 * Overflow: maddubs saturates int16 pairs; every use below stays below 32767 for activations made
 * by the quantizers here (|q8| <= 127): at most 2*63*127 = 16002 (Q6_K) or 128*127 + 127*127
 * (Q8_0 weights holding -128 under the sign trick).
 */
#pragma GCC target("avx2,fma,f16c")

#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "quants_impl.h"

/* ---------------------------------------------------------------------------------------------
 * Helpers */


/* Sum of the 4 float lanes. */
static inline float hsum_ps128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Shuffle masks that broadcast int16 lane s (of 8, in each 128-bit half) to a whole 128-bit half:
 * bytes {2s, 2s+1} repeated. */
static inline __m256i bcast16_mask(int s) {
    return _mm256_set1_epi16((short)((2 * s) | ((2 * s + 1) << 8)));
}

/* sum_s mins[s] * (bsums[2s] + bsums[2s+1]) of a Q8_K block, as 4 int32 lanes. */
static inline __m128i mins_dot_bsums(__m256i scales_mins, const int16_t *bsums) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    return _mm_madd_epi16(_mm256_extracti128_si256(scales_mins, 1), pairs);
}

/* 32 nibbles (16 bytes) -> 32 bytes in 0..15: element j = low nibble of byte j (j < 16), element
 * j + 16 = high nibble of byte j — the element order of Q4_0 / Q4_1 / Q5_0 / Q5_1. */
static inline __m256i nibbles_to_bytes(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0f));
}

/* The 32 bits of the little-endian uint32 at p -> 32 bytes: byte k = 0xff if bit k is set, else 0. */
static inline __m256i bits_to_bytes(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v),
        _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

/* 32 signed bytes a·b in 8 int32 lanes of pair sums (via |a| * sign(b, a), exact for |b| <= 127). */
static inline __m256i dot_i8_i32(__m256i a, __m256i b) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* 32 unsigned bytes a (<= 127) times 32 signed bytes b, in 8 int32 lanes of pair sums. */
static inline __m256i dot_u8_i8_i32(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

/* ---------------------------------------------------------------------------------------------
 * K-quants · Q8_K */

// w (n,) in Q4_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s sc_s*(q·qx)_s - (dx*dmin) * sum_s m_s*bsum_s
float vec_dot_q4_K_q8_K_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q4_K *w = vw;
    const block_q8_K *x = vx;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = x[b].d * ls_fp16_to_fp32_f16c(w[b].d);
        const float dmin = x[b].d * ls_fp16_to_fp32_f16c(w[b].dmin);
        const __m256i scales_mins = ls_unpack_scales_mins_k4_avx2(w[b].scales);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(-dmin), _mm_cvtepi32_ps(mins_dot_bsums(scales_mins, x[b].bsums)), acc_m);

        const __m128i sc128 = _mm256_castsi256_si128(scales_mins);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        const uint8_t *q4 = w[b].qs;
        const int8_t *q8 = x[b].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int g = 0; g < 4; ++g, q4 += 32, q8 += 64) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)q4);
            const __m256i lo = _mm256_and_si256(bits, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
            const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
            const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            const __m256i s_lo = _mm256_shuffle_epi8(scales, bcast16_mask(2 * g));
            const __m256i s_hi = _mm256_shuffle_epi8(scales, bcast16_mask(2 * g + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(p_lo, s_lo), _mm256_madd_epi16(p_hi, s_hi)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return ls_hsum_ps(acc) + hsum_ps128(acc_m);
}

// w (n,) in Q5_K · x (n,) in Q8_K -> float: as Q4_K with 5-bit quants (high bit s of qh[l])
float vec_dot_q5_K_q8_K_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q5_K *w = vw;
    const block_q8_K *x = vx;
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = x[b].d * ls_fp16_to_fp32_f16c(w[b].d);
        const float dmin = x[b].d * ls_fp16_to_fp32_f16c(w[b].dmin);
        const __m256i scales_mins = ls_unpack_scales_mins_k4_avx2(w[b].scales);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(-dmin), _mm_cvtepi32_ps(mins_dot_bsums(scales_mins, x[b].bsums)), acc_m);

        const __m128i sc128 = _mm256_castsi256_si128(scales_mins);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)w[b].qh);
        const uint8_t *q5 = w[b].qs;
        const int8_t *q8 = x[b].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int g = 0; g < 4; ++g, q5 += 32, q8 += 64) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)q5);
            const __m256i h_lo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * g), one), 4);
            const __m256i h_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * g + 1), one), 4);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(bits, low4), h_lo);
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), low4), h_hi);
            const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
            const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            const __m256i s_lo = _mm256_shuffle_epi8(scales, bcast16_mask(2 * g));
            const __m256i s_hi = _mm256_shuffle_epi8(scales, bcast16_mask(2 * g + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(p_lo, s_lo), _mm256_madd_epi16(p_hi, s_hi)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return ls_hsum_ps(acc) + hsum_ps128(acc_m);
}

/* Shuffle mask for 16 int8 scales: bytes 0-7 <- scale 2c, bytes 8-15 <- scale 2c+1. */
static inline __m128i pair_bcast8_mask(int c) {
    return _mm_set_epi64x(0x0101010101010101LL * (2 * c + 1), 0x0101010101010101LL * (2 * c));
}

// w (n,) in Q6_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s scale_s * ((q-32)·qx)_s
float vec_dot_q6_K_q8_K_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q6_K *w = vw;
    const block_q8_K *x = vx;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = x[b].d * ls_fp16_to_fp32_f16c(w[b].d);
        const __m128i scales8 = _mm_loadu_si128((const __m128i *)w[b].scales);
        /* the -32 offset: sum_s scale_s * 32 * bsum_s, subtracted once per block */
        const __m256i bsums = _mm256_loadu_si256((const __m256i *)x[b].bsums);
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, _mm256_cvtepi8_epi16(scales8)), 5);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];   /* the four 32-element chunks j of this half: 6-bit quants in 0..63 */
            ls_q6_K_quants_half_avx2(&w[b], h, q);
            for (int j = 0; j < 4; ++j) {
                const int c = 4 * h + j;   /* chunk: sub-blocks 2c (low 16 bytes), 2c+1 (high 16) */
                const __m256i q8 = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * c));
                const __m256i p = _mm256_maddubs_epi16(q[j], q8);
                const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pair_bcast8_mask(c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
            }
        }
        sumi = _mm256_sub_epi32(sumi, offset);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return ls_hsum_ps(acc);
}

// w (n,) in Q2_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s sc_s*(q·qx)_s - (dx*dmin) * sum_s m_s*bsum_s
float vec_dot_q2_K_q8_K_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q2_K *w = vw;
    const block_q8_K *x = vx;
    const __m256i two = _mm256_set1_epi8(3);
    const __m128i low4 = _mm_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = x[b].d * ls_fp16_to_fp32_f16c(w[b].d);
        const float dmin = x[b].d * ls_fp16_to_fp32_f16c(w[b].dmin);
        const __m128i packed = _mm_loadu_si128((const __m128i *)w[b].scales);
        const __m128i scales8 = _mm_and_si128(packed, low4);
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4));
        const __m256i msum = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)x[b].bsums));
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(-dmin), _mm256_cvtepi32_ps(msum), acc_m);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * h));
            for (int j = 0; j < 4; ++j) {
                const int c = 4 * h + j;   /* chunk of 32: sub-blocks 2c and 2c+1 */
                const __m256i q8 = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * c));
                const __m256i q2 = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), two);
                const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pair_bcast8_mask(c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q2, q8), sc));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return ls_hsum_ps(_mm256_add_ps(acc, acc_m));
}

// w (n,) in Q3_K · x (n,) in Q8_K -> float: sum_b (dx*d) * sum_s (sc_s-32) * (q·qx)_s
// q = low2 - 4*(high bit clear): computed as low2·qx - 4·[clear]·qx, both unsigned maddubs.
float vec_dot_q3_K_q8_K_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q3_K *w = vw;
    const block_q8_K *x = vx;
    const __m256i two = _mm256_set1_epi8(3);
    const uint32_t k4 = 0x0f0f0f0f, k2 = 0x03030303;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = x[b].d * ls_fp16_to_fp32_f16c(w[b].d);
        /* the sixteen 6-bit scales (ls_unpack_scales_q3k, four at a time), minus 32 */
        uint32_t a[3];
        memcpy(a, w[b].scales, 12);
        const __m128i scales8 = _mm_sub_epi8(
            _mm_set_epi32((int)(((a[1] >> 4) & k4) | (((a[2] >> 6) & k2) << 4)),
                          (int)(((a[0] >> 4) & k4) | (((a[2] >> 4) & k2) << 4)),
                          (int)((a[1] & k4) | (((a[2] >> 2) & k2) << 4)),
                          (int)((a[0] & k4) | ((a[2] & k2) << 4))),
            _mm_set1_epi8(32));
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)w[b].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * h));
            for (int j = 0; j < 4; ++j) {
                const int c = 4 * h + j;   /* chunk of 32: sub-blocks 2c and 2c+1, high bit c */
                const __m256i q8 = _mm256_loadu_si256((const __m256i *)(x[b].qs + 32 * c));
                const __m256i low2 = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), two);
                const __m256i clear = _mm256_andnot_si256(hbits, _mm256_set1_epi8((char)(1 << c)));
                const __m256i four = _mm256_slli_epi16(_mm256_srli_epi16(clear, c), 2);
                const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(low2, q8), _mm256_maddubs_epi16(four, q8));
                const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pair_bcast8_mask(c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return ls_hsum_ps(acc);
}

/* ---------------------------------------------------------------------------------------------
 * 32-element blocks · Q8_0 / Q8_1. Two blocks per iteration into two accumulators (shorter FMA
 * dependency chains). */

// w (n,) in Q4_0 · x (n,) in Q8_0 -> float: sum_b (dw*dx) * sum_k (qw-8)*qx
// (qw-8)·qx is computed as qw·qx - 8·qx: two unsigned maddubs, cheaper than the sign trick.
float vec_dot_q4_0_q8_0_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q4_0 *w = vw;
    const block_q8_0 *x = vx;
    const int64_t nb = n / QK4_0;
    const __m256i eight = _mm256_set1_epi8(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)x[b + 1].qs);
        const __m256i p0 = _mm256_sub_epi16(_mm256_maddubs_epi16(nibbles_to_bytes(w[b].qs), x0), _mm256_maddubs_epi16(eight, x0));
        const __m256i p1 = _mm256_sub_epi16(_mm256_maddubs_epi16(nibbles_to_bytes(w[b + 1].qs), x1), _mm256_maddubs_epi16(eight, x1));
        const __m256i s0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(1));
        const __m256i s1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(1));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        const float d1 = ls_fp16_to_fp32_f16c(w[b + 1].d) * ls_fp16_to_fp32_f16c(x[b + 1].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; b < nb; ++b) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i p0 = _mm256_sub_epi16(_mm256_maddubs_epi16(nibbles_to_bytes(w[b].qs), x0), _mm256_maddubs_epi16(eight, x0));
        const __m256i s0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(1));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
    }
    return ls_hsum_ps(_mm256_add_ps(acc0, acc1));
}

// w (n,) in Q4_1 · x (n,) in Q8_1 -> float: sum_b (dw*dx) * sum_k qw*qx + mw * sx
float vec_dot_q4_1_q8_1_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q4_1 *w = vw;
    const block_q8_1 *x = vx;
    const int64_t nb = n / QK4_1;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summs = 0.0f;
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i s0 = dot_u8_i8_i32(nibbles_to_bytes(w[b].qs), _mm256_loadu_si256((const __m256i *)x[b].qs));
        const __m256i s1 = dot_u8_i8_i32(nibbles_to_bytes(w[b + 1].qs), _mm256_loadu_si256((const __m256i *)x[b + 1].qs));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        const float d1 = ls_fp16_to_fp32_f16c(w[b + 1].d) * ls_fp16_to_fp32_f16c(x[b + 1].d);
        summs += ls_fp16_to_fp32_f16c(w[b].m) * ls_fp16_to_fp32_f16c(x[b].s)
               + ls_fp16_to_fp32_f16c(w[b + 1].m) * ls_fp16_to_fp32_f16c(x[b + 1].s);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; b < nb; ++b) {
        const __m256i s0 = dot_u8_i8_i32(nibbles_to_bytes(w[b].qs), _mm256_loadu_si256((const __m256i *)x[b].qs));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        summs += ls_fp16_to_fp32_f16c(w[b].m) * ls_fp16_to_fp32_f16c(x[b].s);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
    }
    return ls_hsum_ps(_mm256_add_ps(acc0, acc1)) + summs;
}

/* The 5-bit quants (0..31) of a Q5_0 / Q5_1 block, in element order. */
static inline __m256i q5_bytes(const uint8_t *qs, const uint8_t *qh) {
    return _mm256_or_si256(nibbles_to_bytes(qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(16)));
}

// w (n,) in Q5_0 · x (n,) in Q8_0 -> float: sum_b (dw*dx) * sum_k (qw-16)*qx  (as qw·qx - 16·qx)
float vec_dot_q5_0_q8_0_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q5_0 *w = vw;
    const block_q8_0 *x = vx;
    const int64_t nb = n / QK5_0;
    const __m256i sixteen = _mm256_set1_epi8(16);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)x[b + 1].qs);
        const __m256i p0 = _mm256_sub_epi16(_mm256_maddubs_epi16(q5_bytes(w[b].qs, w[b].qh), x0), _mm256_maddubs_epi16(sixteen, x0));
        const __m256i p1 = _mm256_sub_epi16(_mm256_maddubs_epi16(q5_bytes(w[b + 1].qs, w[b + 1].qh), x1), _mm256_maddubs_epi16(sixteen, x1));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        const float d1 = ls_fp16_to_fp32_f16c(w[b + 1].d) * ls_fp16_to_fp32_f16c(x[b + 1].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(_mm256_madd_epi16(p0, _mm256_set1_epi16(1))), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(_mm256_madd_epi16(p1, _mm256_set1_epi16(1))), acc1);
    }
    for (; b < nb; ++b) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i p0 = _mm256_sub_epi16(_mm256_maddubs_epi16(q5_bytes(w[b].qs, w[b].qh), x0), _mm256_maddubs_epi16(sixteen, x0));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(_mm256_madd_epi16(p0, _mm256_set1_epi16(1))), acc0);
    }
    return ls_hsum_ps(_mm256_add_ps(acc0, acc1));
}

// w (n,) in Q5_1 · x (n,) in Q8_1 -> float: sum_b (dw*dx) * sum_k qw*qx + mw * sx
float vec_dot_q5_1_q8_1_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q5_1 *w = vw;
    const block_q8_1 *x = vx;
    const int64_t nb = n / QK5_1;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summs = 0.0f;
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i s0 = dot_u8_i8_i32(q5_bytes(w[b].qs, w[b].qh), _mm256_loadu_si256((const __m256i *)x[b].qs));
        const __m256i s1 = dot_u8_i8_i32(q5_bytes(w[b + 1].qs, w[b + 1].qh), _mm256_loadu_si256((const __m256i *)x[b + 1].qs));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        const float d1 = ls_fp16_to_fp32_f16c(w[b + 1].d) * ls_fp16_to_fp32_f16c(x[b + 1].d);
        summs += ls_fp16_to_fp32_f16c(w[b].m) * ls_fp16_to_fp32_f16c(x[b].s)
               + ls_fp16_to_fp32_f16c(w[b + 1].m) * ls_fp16_to_fp32_f16c(x[b + 1].s);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; b < nb; ++b) {
        const __m256i s0 = dot_u8_i8_i32(q5_bytes(w[b].qs, w[b].qh), _mm256_loadu_si256((const __m256i *)x[b].qs));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        summs += ls_fp16_to_fp32_f16c(w[b].m) * ls_fp16_to_fp32_f16c(x[b].s);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
    }
    return ls_hsum_ps(_mm256_add_ps(acc0, acc1)) + summs;
}

// w (n,) in Q8_0 · x (n,) in Q8_0 -> float: sum_b (dw*dx) * sum_k qw*qx
float vec_dot_q8_0_q8_0_avx2(int64_t n, const void *vw, const void *vx) {
    const block_q8_0 *w = vw;
    const block_q8_0 *x = vx;
    const int64_t nb = n / QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i s0 = dot_i8_i32(_mm256_loadu_si256((const __m256i *)w[b].qs),
                                      _mm256_loadu_si256((const __m256i *)x[b].qs));
        const __m256i s1 = dot_i8_i32(_mm256_loadu_si256((const __m256i *)w[b + 1].qs),
                                      _mm256_loadu_si256((const __m256i *)x[b + 1].qs));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        const float d1 = ls_fp16_to_fp32_f16c(w[b + 1].d) * ls_fp16_to_fp32_f16c(x[b + 1].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(s1), acc1);
    }
    for (; b < nb; ++b) {
        const __m256i s0 = dot_i8_i32(_mm256_loadu_si256((const __m256i *)w[b].qs),
                                      _mm256_loadu_si256((const __m256i *)x[b].qs));
        const float d0 = ls_fp16_to_fp32_f16c(w[b].d) * ls_fp16_to_fp32_f16c(x[b].d);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
    }
    return ls_hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* ---------------------------------------------------------------------------------------------
 * Float types: 4 x 8 lanes of float FMA per step, then 8 at a time, then a scalar tail. */

// w (n,) f16 · x (n,) f16 -> float: widen with F16C, 32 float accumulators
float vec_dot_f16_f16_avx2(int64_t n, const void *vw, const void *vx) {
    const ls_fp16_t *w = vw, *x = vx;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; ++k) {
            const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8 * k)));
            const __m256 c = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i + 8 * k)));
            acc[k] = _mm256_fmadd_ps(a, c, acc[k]);
        }
    for (; i + 8 <= n; i += 8) {
        const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i)));
        const __m256 c = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        acc[0] = _mm256_fmadd_ps(a, c, acc[0]);
    }
    double sum = ls_hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; ++i) sum += (double)(ls_fp16_to_fp32_f16c(w[i]) * ls_fp16_to_fp32_f16c(x[i]));
    return (float)sum;
}

/* 8 bfloat16 -> 8 floats (exact: the bf16 bits become the high half of each float). */
static inline __m256 bf16x8_to_ps(const ls_bf16_t *p) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

// w (n,) bf16 · x (n,) bf16 -> float: widen by shifting, 32 float accumulators
float vec_dot_bf16_bf16_avx2(int64_t n, const void *vw, const void *vx) {
    const ls_bf16_t *w = vw, *x = vx;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; ++k)
            acc[k] = _mm256_fmadd_ps(bf16x8_to_ps(w + i + 8 * k), bf16x8_to_ps(x + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(bf16x8_to_ps(w + i), bf16x8_to_ps(x + i), acc[0]);
    double sum = ls_hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; ++i) sum += (double)(ls_bf16_to_fp32(w[i]) * ls_bf16_to_fp32(x[i]));
    return (float)sum;
}

// w (n,) f32 · x (n,) f32 -> float: 32 float accumulators
float vec_dot_f32_f32_avx2(int64_t n, const void *vw, const void *vx) {
    const float *w = vw, *x = vx;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; ++k)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), acc[0]);
    double sum = ls_hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; ++i) sum += (double)(w[i] * x[i]);
    return (float)sum;
}

/* ---------------------------------------------------------------------------------------------
 * One weight row against 4 activation rows (prompt matmuls): each weight block is loaded and
 * decoded once and dotted with the same block of 4 tokens, so the decoding work and the weight
 * traffic are shared by 4 tokens. Per token the integer block sums are those of the single-row
 * kernels above; twins of 4 calls to the scalar vec_dot (tests/test_quants_simd.py). */

#define X4_ROWS(T, vx, xs) { (const T *)(vx), (const T *)((const char *)(vx) + (xs)), \
    (const T *)((const char *)(vx) + 2 * (xs)), (const T *)((const char *)(vx) + 3 * (xs)) }

/* The 32-element block types keep vec_dot's two accumulators (even / odd blocks) per token, so
 * that y[t] is bit for bit what vec_dot gives for x_t (a token's logits must not depend on
 * whether it was evaluated alone or in a batch). */

/* The body of both 32-element x4 kernels; q4 (a constant) picks how weight block b becomes 32 signed
 * bytes: Q8_0 as stored, Q4_0 as its nibbles minus 8. Per token the sign trick |w| * sign(x, w). */
_Static_assert(QK4_0 == QK8_0, "Q4_0 and Q8_0 blocks must cover the same elements");
static inline __attribute__((always_inline)) void vec_dot_q32_q8_0_x4(const int q4, int64_t n, const void *vw,
                                                                      const void *vx, size_t xs, float *y) {
    const block_q8_0 *x[4] = X4_ROWS(block_q8_0, vx, xs);
    const __m256i ones = _mm256_set1_epi16(1), eight = _mm256_set1_epi8(8);
    __m256 acc[2][4];
    for (int t = 0; t < 4; ++t) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    const int64_t nb = n / QK8_0;   /* = n / QK4_0 */
    for (int64_t b = 0; b < nb; ++b) {
        const int a = (b & 1) && b + 1 <= nb - (nb & 1) ? 1 : 0;   /* vec_dot: odd blocks of full pairs */
        const block_q4_0 *w4 = (const block_q4_0 *)vw + b;
        const block_q8_0 *w8 = (const block_q8_0 *)vw + b;
        const __m256i qw = q4 ? _mm256_sub_epi8(nibbles_to_bytes(w4->qs), eight)
                              : _mm256_loadu_si256((const __m256i *)w8->qs);
        const __m256i aw = _mm256_sign_epi8(qw, qw);
        const float dw = ls_fp16_to_fp32_f16c(q4 ? w4->d : w8->d);
        for (int t = 0; t < 4; ++t) {
            const __m256i qx = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[t][b].qs), qw);
            const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, qx), ones);
            acc[a][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * ls_fp16_to_fp32_f16c(x[t][b].d)), _mm256_cvtepi32_ps(s), acc[a][t]);
        }
    }
    for (int t = 0; t < 4; ++t) y[t] = ls_hsum_ps(_mm256_add_ps(acc[0][t], acc[1][t]));
}

// w (n,) in Q8_0 · x_t (n,) in Q8_0, t = 0..3 -> y[t] = sum_b (dw*dx_t) * sum_k qw*qx_t
void vec_dot_q8_0_q8_0_x4_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float *y) {
    vec_dot_q32_q8_0_x4(0, n, vw, vx, xs, y);
}

// w (n,) in Q4_0 · x_t (n,) in Q8_0, t = 0..3 -> y[t] = sum_b (dw*dx_t) * sum_k (qw-8)*qx_t
// (qw-8 decoded once to signed bytes; per token the sign trick |w| * sign(x, w): the same int16
// pair sums as vec_dot's qw·qx - 8·qx)
void vec_dot_q4_0_q8_0_x4_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float *y) {
    vec_dot_q32_q8_0_x4(1, n, vw, vx, xs, y);
}

// w (n,) in Q4_K · x_t (n,) in Q8_K, t = 0..3 -> y[t] as vec_dot_q4_K_q8_K for each x_t
void vec_dot_q4_K_q8_K_x4_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float *y) {
    const block_q4_K *w = vw;
    const block_q8_K *x[4] = X4_ROWS(block_q8_K, vx, xs);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m128 acc_m[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = ls_fp16_to_fp32_f16c(w[b].d), dmin = ls_fp16_to_fp32_f16c(w[b].dmin);
        const __m256i scales_mins = ls_unpack_scales_mins_k4_avx2(w[b].scales);
        for (int t = 0; t < 4; ++t)
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(-dmin * x[t][b].d),
                                    _mm_cvtepi32_ps(mins_dot_bsums(scales_mins, x[t][b].bsums)), acc_m[t]);
        const __m128i sc128 = _mm256_castsi256_si128(scales_mins);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        __m256i sumi[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int g = 0; g < 4; ++g) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * g));
            const __m256i lo = _mm256_and_si256(bits, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
            const __m256i s_lo = _mm256_shuffle_epi8(scales, bcast16_mask(2 * g));
            const __m256i s_hi = _mm256_shuffle_epi8(scales, bcast16_mask(2 * g + 1));
            for (int t = 0; t < 4; ++t) {
                const int8_t *q8 = x[t][b].qs + 64 * g;
                const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
                const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(_mm256_madd_epi16(p_lo, s_lo), _mm256_madd_epi16(p_hi, s_hi)));
            }
        }
        for (int t = 0; t < 4; ++t)
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[t][b].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
    for (int t = 0; t < 4; ++t) y[t] = ls_hsum_ps(acc[t]) + hsum_ps128(acc_m[t]);
}

// w (n,) in Q6_K · x_t (n,) in Q8_K, t = 0..3 -> y[t] as vec_dot_q6_K_q8_K for each x_t
void vec_dot_q6_K_q8_K_x4_avx2(int64_t n, const void *vw, const void *vx, size_t xs, float *y) {
    const block_q6_K *w = vw;
    const block_q8_K *x[4] = X4_ROWS(block_q8_K, vx, xs);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = ls_fp16_to_fp32_f16c(w[b].d);
        const __m128i scales8 = _mm_loadu_si128((const __m128i *)w[b].scales);
        const __m256i scales16 = _mm256_cvtepi8_epi16(scales8);
        __m256i sumi[4];
        for (int t = 0; t < 4; ++t)   /* the -32 offset: sum_s scale_s * 32 * bsum_s */
            sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(
                _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x[t][b].bsums), scales16), 5));
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];
            ls_q6_K_quants_half_avx2(&w[b], h, q);
            for (int j = 0; j < 4; ++j) {
                const int c = 4 * h + j;
                const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pair_bcast8_mask(c)));
                for (int t = 0; t < 4; ++t) {
                    const __m256i q8 = _mm256_loadu_si256((const __m256i *)(x[t][b].qs + 32 * c));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], q8), sc));
                }
            }
        }
        for (int t = 0; t < 4; ++t)
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[t][b].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
    for (int t = 0; t < 4; ++t) y[t] = ls_hsum_ps(acc[t]);
}

/* ---------------------------------------------------------------------------------------------
 * Matmuls with a row per lane (Q4_0 and Q8_0 weights, Q8_0 activations): the gemm (4+ tokens) and
 * gemv (1-3 tokens) slots, used by ls_matmul_rows instead of the kernels above.
 *
 * The kernels above put consecutive elements of one row in the lanes, so every block, row and token
 * needs its own int32 -> float conversion and its own FMA (and vec_dot_x4 only shares the weight
 * decoding between tokens). Here 8 rows are transposed so that int32 lane p is row p: for element
 * group g (elements 4g..4g+3 of a block) one register holds those 4 quants of each of the 8 rows,
 * and a token's 4 activations of group g are broadcast to every lane (vpbroadcastd). One
 * vpmaddubsw then does 32 multiply-adds for 8 rows, and the float work is once per block for 8
 * rows. Per row r, token t and block b (in order), the float recurrence is
 *     acc = fma(float(isum_rtb), d_rb * dx_tb, acc),   y[t, r] = acc   (acc starting at 0)
 * with isum the block's exact integer dot product — the same recurrence as the AVX-512 kernels
 * (quants_avx512.c) and the scalar reference matmul_rows_q32_q8_0_lanes (quants.c), so the three
 * give the same bits. gemm and gemv differ only in where the transposed quants come from:
 *   gemm: each group of 8 rows is transposed once per call into a per-thread buffer (a "tile" of
 *     288 bytes per block), then run against the tokens 4 at a time (each group register loaded
 *     once for 4 tokens, each broadcast activation reused by 8 rows), the rest 1-3 at a time;
 *   gemv (the 1-3 tokens of a decode step; the weights are read once): Q4_0 does the same
 *     transposition in registers, block by block, without storing it; Q8_0 computes each row's
 *     block sums with the elements in the lanes, as vec_dot does, row after row in file order, and
 *     then reduces 8 rows to a row per lane (vphaddd) — see "decode kernels" below.
 *
 * Integer sums, with x the token's int8 quants (|x| <= 127, as the Q8_0 quantizer makes them):
 *   Q4_0: q in 0..15 unsigned:  isum = sum_g maddubs(q_g, x_g) (int16: 8 groups x 2 x 15 x 127 =
 *         30480 fits) - 8 * sum(x)   (the -8 offset through the token's block sum, precomputed);
 *   Q8_0: q signed: per group maddubs(|q|, sign(x, q)) (<= 2 x 128 x 127 per int16), widened to
 *         int32 with vpmaddwd before the 8 groups are added. */

/* Per token and block of the activations: fp16(dx) as float, -c * sum(qx) (c = 8 for Q4_0, 16 for
 * Q5_0, else 0) and, for Q8_1 activations (Q4_1 / Q5_1 weights), fp16(sx) as float. */
typedef struct { float d; int32_t corr; float s; } q8_0_side;

/* 8 rows' quants of one block, transposed: q[g] holds elements 4g..4g+3 of row p in int32 lane p
 * (Q4_0 / Q4_1: unsigned 0..15; Q5_0 / Q5_1: 0..31; Q8_0: signed as stored), d[p] = fp16(d) of row p
 * (filled for the file's layout; x8 kernels read d from their blocks). */
typedef struct {
    __m256i q[8];
    float d[8];
} rows8_tile;
_Static_assert(sizeof(rows8_tile) == 288, "rows8_tile must be 288 bytes");

/* Pointers to rows r .. r+7 of W, those past r1 repeating the last row (their lanes are computed but
 * not stored: a partial group is computed lane for lane as a full one); returns the valid rows. */
static inline int rows8_ptrs(const void *w, size_t w_stride, int64_t r, int64_t r1, const uint8_t *rp[8]) {
    const int rows = r1 - r < 8 ? (int)(r1 - r) : 8;
    for (int i = 0; i < 8; ++i) rp[i] = (const uint8_t *)w + (size_t)(r + (i < rows ? i : rows - 1)) * w_stride;
    return rows;
}

static inline void store_rows8(float *y, __m256 acc, int rows) {
    if (rows == 8) {
        _mm256_storeu_ps(y, acc);
        return;
    }
    float o[8];
    _mm256_storeu_ps(o, acc);
    for (int i = 0; i < rows; ++i) y[i] = o[i];
}

/* The fp16 fields at byte offset off of rows rp[0..7] -> 8 floats (lane p: row rp[p]). */
static inline __m256 rows8_fp16(const uint8_t *const *rp, size_t off) {
    uint16_t h[8];
    for (int i = 0; i < 8; ++i) memcpy(&h[i], rp[i] + off, 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* The 128-bit pieces at offset off of rows rp[0..7] -> 4 registers, dword m of row p in lane p of
 * out[m] (a 4x4 dword transposition in each 128-bit half: rows 0-3 low, 4-7 high). */
static inline __attribute__((always_inline)) void rows8_transpose128(const uint8_t *const *rp, size_t off, __m256i out[4]) {
    __m256i a[4];
    for (int k = 0; k < 4; ++k)
        a[k] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(rp[k] + off))),
                                       _mm_loadu_si128((const __m128i *)(rp[k + 4] + off)), 1);
    const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* Block b of rows rp[0..7] (Q4_0 if q4, else Q8_0) -> the 8 group registers of a rows8_tile. */
static inline __attribute__((always_inline)) void rows8_block_groups(const int q4, const uint8_t *const *rp, int64_t b,
                                                                    __m256i g[8]) {
    if (q4) {
        const __m256i low4 = _mm256_set1_epi8(0x0f);
        __m256i raw[4];   /* dword m: bytes 4m..4m+3 = groups m (low nibbles) and 4 + m (high) */
        rows8_transpose128(rp, (size_t)b * sizeof(block_q4_0) + offsetof(block_q4_0, qs), raw);
        for (int m = 0; m < 4; ++m) {
            g[m] = _mm256_and_si256(raw[m], low4);
            g[4 + m] = _mm256_and_si256(_mm256_srli_epi16(raw[m], 4), low4);
        }
    } else {
        const size_t off = (size_t)b * sizeof(block_q8_0) + offsetof(block_q8_0, qs);
        rows8_transpose128(rp, off, g);
        rows8_transpose128(rp, off + 16, g + 4);
    }
}

/* An empty asm that "changes" v: the compiler cannot reassociate a chain of integer adds across it.
 * Without it GCC turns each token's 8-add chain into a tree that computes all 32 products of a
 * 4-token tile first, which needs more than the 16 ymm registers (spills: ~40 % more instructions). */
#define LS_KEEP_ORDER(v) __asm__("" : "+x"(v))

/* The 4 int8 activations at p on every int32 lane. */
static inline __m256i bcast_x4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Tokens 0..T-1 against one group of rows (any layout): GROUP(args..., t0, nt) 4 at a time, then
 * the last 1-3, every nt a constant (the always_inline group kernels specialize on it). */
#define TOKENS_BY_4(T, GROUP, ...)                                                                  \
    do {                                                                                            \
        int64_t t_ = 0;                                                                             \
        for (; t_ + 4 <= (T); t_ += 4) GROUP(__VA_ARGS__, t_, 4);                                   \
        switch ((T) - t_) {                                                                         \
        case 3: GROUP(__VA_ARGS__, t_, 3); break;                                                   \
        case 2: GROUP(__VA_ARGS__, t_, 2); break;                                                   \
        case 1: GROUP(__VA_ARGS__, t_, 1); break;                                                   \
        default: break;                                                                             \
        }                                                                                           \
    } while (0)

/* Q4_0: the exact integer block sums of 8 rows (lanes, quants g[8] in 0..15) · one token's block xq,
 * corr = -8 * sum(xq). */
static inline __attribute__((always_inline)) __m256i rows8_isum_q4_0(const __m256i *g, const int8_t *xq, int32_t corr) {
    __m256i s = _mm256_maddubs_epi16(g[0], bcast_x4(xq));
    for (int j = 1; j < 8; ++j) {
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(g[j], bcast_x4(xq + 4 * j)));
        LS_KEEP_ORDER(s);
    }
    return _mm256_add_epi32(_mm256_madd_epi16(s, _mm256_set1_epi16(1)), _mm256_set1_epi32(corr));
}

/* The 32-element types with a row-per-lane or x8 kernel here, by their (source) type id: Q4_0, Q8_0,
 * Q4_1, Q5_0, Q5_1 (a constant in the always_inline kernels below, which specialize on it). */
static inline int q32_has_m(const int type) { return type == LS_TYPE_Q4_1 || type == LS_TYPE_Q5_1; }
static inline int q32_q5(const int type) { return type == LS_TYPE_Q5_0 || type == LS_TYPE_Q5_1; }
/* log2 of the offset c the quants carry (q - c: Q4_0 8, Q5_0 16), -1 for none */
static inline int q32_c_shift(const int type) { return type == LS_TYPE_Q4_0 ? 3 : type == LS_TYPE_Q5_0 ? 4 : -1; }
/* the activations' block (Q8_1 for the types with a min, else Q8_0): bytes, and where its qs are */
static inline size_t q32_xsize(const int type) { return q32_has_m(type) ? sizeof(block_q8_1) : sizeof(block_q8_0); }
static inline size_t q32_xqs(const int type) { return q32_has_m(type) ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs); }

/* Per token and block of activations for weights of `type` (above): fp16(dx), -c * sum(qx), fp16(sx). */
static void q8_0_side_data(const int type, int64_t nb, const void *x, size_t x_stride, int64_t T, q8_0_side *side) {
    const int c_shift = q32_c_shift(type), q81 = q32_has_m(type);
    for (int64_t t = 0; t < T; ++t) {
        const uint8_t *xt = (const uint8_t *)x + (size_t)t * x_stride;
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t *xb = xt + (size_t)b * q32_xsize(type);
            side[t * nb + b].d = ls_fp16_to_fp32_f16c(q81 ? ((const block_q8_1 *)xb)->d : ((const block_q8_0 *)xb)->d);
            side[t * nb + b].s = q81 ? ls_fp16_to_fp32_f16c(((const block_q8_1 *)xb)->s) : 0.0f;
            if (c_shift < 0) {
                side[t * nb + b].corr = 0;
                continue;
            }
            const __m256i v = _mm256_loadu_si256((const __m256i *)(xb + q32_xqs(type)));
            const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
            __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            h = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
            h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 1));
            side[t * nb + b].corr = -(_mm_cvtsi128_si32(h) << c_shift);
        }
    }
}

/* The x8 layout of a 32-element type (formats.h): bytes of a block, and where its quant lines start
 * (after d[8], m[8] if the type has one, and the 32 bytes of 5th bits if it has them). */
static inline size_t q32_x8_size(const int type) {
    return type == LS_TYPE_Q8_0 ? sizeof(block_q8_0x8) : type == LS_TYPE_Q4_0 ? sizeof(block_q4_0x8)
         : type == LS_TYPE_Q4_1 ? sizeof(block_q4_1x8) : type == LS_TYPE_Q5_0 ? sizeof(block_q5_0x8) : sizeof(block_q5_1x8);
}
static inline size_t q32_x8_qs(const int type) { return 16 * (1 + q32_has_m(type)) + (q32_q5(type) ? 32 : 0); }

/* Group register j (elements 4j..4j+3 of each lane's row, as rows8_block_groups makes it) of an x8
 * block of `type` (formats.h): Q8_0's quants as stored; the nibbles unpacked (line j % 4, low
 * nibbles for j < 4, high for j >= 4), Q5_0 / Q5_1's 5th bits (bit j of their line) shifted to 16
 * and or-ed in: 0..15 or 0..31 unsigned. */
static inline __attribute__((always_inline)) __m256i rows8_group(const int type, const void *blk, const int j) {
    const uint8_t *qs = (const uint8_t *)blk + q32_x8_qs(type);
    if (type == LS_TYPE_Q8_0) return _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
    const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * (j & 3)));
    const __m256i q = _mm256_and_si256(j < 4 ? raw : _mm256_srli_epi16(raw, 4), _mm256_set1_epi8(0x0f));
    if (!q32_q5(type)) return q;
    const __m256i hq = _mm256_loadu_si256((const __m256i *)(qs - 32));
    const __m256i hb = j < 4 ? _mm256_slli_epi16(hq, 4 - j) : _mm256_srli_epi16(hq, j - 4);
    return _mm256_or_si256(q, _mm256_and_si256(hb, _mm256_set1_epi8(16)));
}

/* The fp16 fields at byte off of an x8 block (d at 0, m at 16): the 8 rows' values as floats. */
static inline __m256 rows8_x8_fp16(const void *blk, size_t off) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint8_t *)blk + off)));
}

/* x8 blocks are fetched this many bytes ahead of the one computed (past the group's end too: the
 * groups of a tensor are contiguous, and a prefetch never faults). Measured on 5632 x 2048 weights,
 * one token: 2-4 KB ahead ~25 % faster than 0.5 KB for Q8_0, no difference for Q4_0. */
#ifndef ROWS8_X8_AHEAD_BYTES
#define ROWS8_X8_AHEAD_BYTES 4096
#endif

/* nt tokens t0.. (a constant 1..4) against one group of 8 rows of `type` (q32_* above), nb blocks:
 * the quants from rows8_tiles (tiled) or decoded from the x8 blocks in place, d (and m) from the x8
 * blocks (x8) or the tiles (!x8: the file's layout, tiled): the same registers either way, so the
 * same bits. y[(t0 + t) * ldy + p] for p < rows. Unsigned quants: int16 sums of 8 groups for 4-bit
 * (<= 8 x 2 x 15 x 127 = 30480), of 4 groups at a time for 5-bit (4 x 2 x 31 x 127 = 31496), widened
 * by vpmaddwd; then + corr (-c * sum(x)). With a min: acc = fma(m, sx, acc) after the block's FMA. */
static inline __attribute__((always_inline)) void gemm_rows8_tile(
        const int type, const int x8, const int tiled, int64_t nb, const void *blocks, const rows8_tile *tiles,
        const uint8_t *x, size_t x_stride, const q8_0_side *side, float *y, size_t ldy, int rows,
        int64_t t0, const int nt) {
    const size_t bsz = q32_x8_size(type);
    const int span = q32_q5(type) ? 4 : 8;       /* groups summed in int16 before widening */
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const char *blk = x8 ? (const char *)blocks + (size_t)b * bsz : NULL;
        if (x8 && !tiled)
            for (size_t o = 0; o < bsz; o += 64) _mm_prefetch(blk + ROWS8_X8_AHEAD_BYTES + o, _MM_HINT_T0);
        const int8_t *xq[4];
        __m256i s[4], s32[4];         /* int16 sums of `span` groups, int32 sums (zeros folded away) */
        for (int t = 0; t < nt; ++t) {
            xq[t] = (const int8_t *)(x + (size_t)(t0 + t) * x_stride + (size_t)b * q32_xsize(type) + q32_xqs(type));
            s[t] = s32[t] = _mm256_setzero_si256();
        }
        for (int j = 0; j < 8; ++j) {
            const __m256i q = tiled ? _mm256_load_si256(&tiles[b].q[j]) : rows8_group(type, blk, j);
            if (type != LS_TYPE_Q8_0) {
                for (int t = 0; t < nt; ++t) {
                    const __m256i p = _mm256_maddubs_epi16(q, bcast_x4(xq[t] + 4 * j));
                    s[t] = _mm256_add_epi16(s[t], p);
                    LS_KEEP_ORDER(s[t]);
                    if (j % span == span - 1) {
                        s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(s[t], ones));
                        s[t] = _mm256_setzero_si256();
                    }
                }
            } else {
                const __m256i qa = _mm256_sign_epi8(q, q);
                for (int t = 0; t < nt; ++t) {
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, _mm256_sign_epi8(bcast_x4(xq[t] + 4 * j), q)), ones);
                    s32[t] = _mm256_add_epi32(s32[t], p);
                    LS_KEEP_ORDER(s32[t]);
                }
            }
        }
        const __m256 dw = x8 ? rows8_x8_fp16(blk, 0) : _mm256_load_ps(tiles[b].d);
        for (int t = 0; t < nt; ++t) {
            const q8_0_side *sd = &side[(t0 + t) * nb + b];
            const __m256i isum = q32_c_shift(type) >= 0 ? _mm256_add_epi32(s32[t], _mm256_set1_epi32(sd->corr)) : s32[t];
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(sd->d)), acc[t]);
            if (q32_has_m(type)) acc[t] = _mm256_fmadd_ps(rows8_x8_fp16(blk, 16), _mm256_set1_ps(sd->s), acc[t]);
        }
    }
    for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

/* All T tokens against one group of 8 rows (as gemm_rows8_tile), 4 at a time, then the rest. */
static inline __attribute__((always_inline)) void gemm_rows8_tokens(
        const int type, const int x8, const int tiled, int64_t nb, const void *blocks, const rows8_tile *tiles,
        const uint8_t *x, size_t x_stride, const q8_0_side *side, int64_t T, float *y, size_t ldy, int rows) {
    TOKENS_BY_4(T, gemm_rows8_tile, type, x8, tiled, nb, blocks, tiles, x, x_stride, side, y, ldy, rows);
}

/* Q4_0 (q4 = 1) / Q8_0 weights, rows r0..r1-1 @ x (T, n) Q8_0 -> y[t * ldy + r]; returns r1 (r0 when
 * out of memory). */
static inline __attribute__((always_inline)) int64_t gemm_q32_q8_0_avx2(
        const int q4, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK8_0;
    rows8_tile *tiles = ls_thread_buffer((size_t)nb * sizeof(rows8_tile), 0);
    q8_0_side *side = ls_thread_buffer((size_t)(T * nb) * sizeof(q8_0_side), 1);
    if (!tiles || !side) return r0;
    q8_0_side_data(q4 ? LS_TYPE_Q4_0 : LS_TYPE_Q8_0, nb, x, x_stride, T, side);
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *rp[8];
        const int rows = rows8_ptrs(w, w_stride, r, r1, rp);
        /* the tile reads its 8 rows side by side: fetch the next group's (contiguous) meanwhile */
        if (r + 8 < r1) {
            const char *next = (const char *)w + (size_t)(r + 8) * w_stride;
            const size_t bytes = (size_t)(r1 - r - 8 < 8 ? r1 - r - 8 : 8) * w_stride;
            for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
        }
        for (int64_t b = 0; b < nb; ++b) {
            rows8_block_groups(q4, rp, b, tiles[b].q);
            _mm256_store_ps(tiles[b].d, rows8_fp16(rp, (size_t)b * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0))));
        }
        gemm_rows8_tokens(q4 ? LS_TYPE_Q4_0 : LS_TYPE_Q8_0, 0, 1, nb, NULL, tiles, x, x_stride, side, T, y + r, ldy, rows);
    }
    return r1;
}

/* Q4_0 gemv: nt tokens (a constant 1..3) against rows r0..r1-1, transposing block by block in
 * registers (for the 18-byte blocks that costs less than reducing each row's sums as Q8_0 does). */
static inline __attribute__((always_inline)) void gemv_q4_0_rows(
        const int nt, int64_t nb, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const void *x, size_t x_stride, const q8_0_side *side, float *y, size_t ldy) {
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *rp[8];
        const int rows = rows8_ptrs(w, w_stride, r, r1, rp);
        /* the next group's rows (contiguous), spread over this group's blocks (past r1 too: prefetches
         * never fault, and the next rows are usually this thread's next work item) */
        const char *next = (const char *)w + (size_t)(r + 8) * w_stride;
        const size_t next_bytes = 8 * w_stride;
        const size_t per_block = (next_bytes / (size_t)nb + 63) / 64 * 64;
        __m256 acc[3];
        for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            for (size_t o = (size_t)b * per_block; o < (size_t)(b + 1) * per_block && o < next_bytes; o += 64)
                _mm_prefetch(next + o, _MM_HINT_T0);
            __m256i g[8];
            rows8_block_groups(1, rp, b, g);
            const __m256 dw = rows8_fp16(rp, (size_t)b * sizeof(block_q4_0));
            for (int t = 0; t < nt; ++t) {
                const q8_0_side *sd = &side[t * nb + b];
                const int8_t *xq = ((const block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride) + b)->qs;
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows8_isum_q4_0(g, xq, sd->corr)),
                                         _mm256_mul_ps(dw, _mm256_set1_ps(sd->d)), acc[t]);
            }
        }
        for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)t * ldy + r, acc[t], rows);
    }
}

/* v[0..7] (row i's lanes in v[i]) -> lane i = the sum of v[i]'s lanes (vphaddd). */
static inline __m256i reduce8_epi32(const __m256i *v) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* The decode kernels below (Q8_0, Q4_K, Q6_K) read the weights row by row, in file order (a decode
 * step is bound by memory bandwidth, and 8 rows read side by side block by block measured 3-5 %
 * slower tg than one row streaming after another): pass 1 computes each row's block sums with the
 * elements in the lanes into a per-thread scratch (v[b * 8 + i], 32 bytes per row and block, in L1),
 * pass 2 reduces them to a row per lane and runs the float steps for the 8 rows. */

/* Q8_0 gemv: each row's block sums with the elements in the lanes (no transposition), reduced to a
 * row per lane; nt tokens (a constant 1..3). */
static inline __attribute__((always_inline)) void gemv_q8_0_rows(
        const int nt, int64_t nb, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const void *x, size_t x_stride, const q8_0_side *side, float *y, size_t ldy, __m256i *v) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *rp[8];
        const int rows = rows8_ptrs(w, w_stride, r, r1, rp);
        for (int t = 0; t < nt; ++t) {
            const block_q8_0 *xb = (const block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride);
            for (int i = 0; i < 8; ++i) {
                const block_q8_0 *wb = (const block_q8_0 *)rp[i];
                for (int64_t b = 0; b < nb; ++b) {
                    const __m256i q = _mm256_loadu_si256((const __m256i *)wb[b].qs);
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)xb[b].qs);
                    v[b * 8 + i] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q)), ones);
                }
            }
            __m256 acc = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; ++b) {
                const __m256 dw = rows8_fp16(rp, (size_t)b * sizeof(block_q8_0));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8_epi32(v + b * 8)),
                                      _mm256_mul_ps(dw, _mm256_set1_ps(side[t * nb + b].d)), acc);
            }
            store_rows8(y + (size_t)t * ldy + r, acc, rows);
        }
    }
}

static inline __attribute__((always_inline)) int64_t gemv_q32_q8_0_avx2(
        const int q4, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK8_0;
    q8_0_side *side = ls_thread_buffer((size_t)(T * nb) * sizeof(q8_0_side), 1);
    __m256i *v = q4 ? NULL : ls_thread_buffer((size_t)nb * 8 * sizeof(__m256i), 0);
    if (!side || (!q4 && !v)) return r0;
    q8_0_side_data(q4 ? LS_TYPE_Q4_0 : LS_TYPE_Q8_0, nb, x, x_stride, T, side);
    /* 3 tokens at a time, then the rest (nt a constant in each call) */
    for (int64_t t = 0; t < T; t += 3) {
        const int nt = T - t < 3 ? (int)(T - t) : 3;
        const uint8_t *xt = (const uint8_t *)x + (size_t)t * x_stride;
        float *yt = y + (size_t)t * ldy;
        if (q4) {
            if (nt == 3) gemv_q4_0_rows(3, nb, w, w_stride, r0, r1, xt, x_stride, side + t * nb, yt, ldy);
            else if (nt == 2) gemv_q4_0_rows(2, nb, w, w_stride, r0, r1, xt, x_stride, side + t * nb, yt, ldy);
            else gemv_q4_0_rows(1, nb, w, w_stride, r0, r1, xt, x_stride, side + t * nb, yt, ldy);
        } else {
            gemv_q8_0_rows(nt, nb, w, w_stride, r0, r1, xt, x_stride, side + t * nb, yt, ldy, v);
        }
    }
    return r1;
}

// W rows r0..r1-1 (n_out, n) in Q4_0 @ x (T, n) in Q8_0, T >= 4 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k q_k x_k - 8 sum_k x_k), d_rb * dx_tb, acc)
int64_t gemm_q4_0_q8_0_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemm_q32_q8_0_avx2(1, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
}

// W rows r0..r1-1 (n_out, n) in Q4_0 @ x (T, n) in Q8_0, any T (decode: 1-3) -> y: bit for bit gemm_q4_0_q8_0_avx2
int64_t gemv_q4_0_q8_0_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemv_q32_q8_0_avx2(1, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
}

// W rows r0..r1-1 (n_out, n) in Q8_0 @ x (T, n) in Q8_0, T >= 4 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k q_k x_k), d_rb * dx_tb, acc)
int64_t gemm_q8_0_q8_0_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemm_q32_q8_0_avx2(0, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
}

// W rows r0..r1-1 (n_out, n) in Q8_0 @ x (T, n) in Q8_0, any T (decode: 1-3) -> y: bit for bit gemm_q8_0_q8_0_avx2
int64_t gemv_q8_0_q8_0_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemv_q32_q8_0_avx2(0, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
}

/* ---- Repacked (x8) 32-element weights: Q4_0 / Q8_0 (formats.h "Repacked layouts"), and Q4_1 / Q5_0 /
 * Q5_1, whose x8 blocks are Q4_0 x8's plus their m and transposed 5th bits. The 8 rows of a group
 * already sit in the lanes, so gemm_rows8_tile reads the x8 blocks in place — the registers the
 * transposition above makes, without it, for any T (decode too: no gemv of its own). For many
 * tokens a group's nibbles (and 5th bits) are first unpacked into rows8_tiles (once, not once per 4
 * tokens). Either way the integer sums are exact and the float fold is the scalar twins'
 * (matmul_rows_q4_0_x8_q8_0 & co., quants.c fold_q32_x8): per block acc = fma(isum, d * dx, acc), then
 * with a min (Q4_1, Q5_1) acc = fma(m, sx, acc). For Q4_0 / Q8_0 that is the fold of gemm_q4_0 /
 * gemm_q8_0 above: a repacked tensor gives its source's bits; Q4_1 / Q5_0 / Q5_1 have no row-per-lane
 * kernel on the file's layout (vec_dot adds the same terms in another order: rounding apart). */

/* Tokens from which an x8 group is first unpacked into rows8_tiles, per type. Measured for Q4_0
 * (5632 x 2048 and 2048 x 5632, one thread): in place 10-20 % faster up to 48 tokens, tiles 5-10 %
 * faster from 64 on. Q8_0's tiles would be a copy of its x8 blocks: they measured no faster at any
 * T, so none. 5632 x 2048, two threads, ms per token at 60 tokens in place / 64 tiled: Q5_0 0.28 /
 * 0.17, Q5_1 0.26 / 0.18 (the 5th bits cost more to decode than the nibbles: tiles from 64; fewer
 * tokens not measured), Q4_1 0.166 / 0.180, so none for Q4_1. */
#ifndef X8_Q4_0_TILE_MIN_T
#define X8_Q4_0_TILE_MIN_T 64
#endif
#ifndef X8_Q5_TILE_MIN_T
#define X8_Q5_TILE_MIN_T 64
#endif
static inline int64_t q32_x8_tile_min_t(const int type) {
    return type == LS_TYPE_Q4_0 ? X8_Q4_0_TILE_MIN_T : q32_q5(type) ? X8_Q5_TILE_MIN_T : INT64_MAX;
}

// group of nb x8 blocks B of `type` -> the quants of the rows8_tiles gemm_rows8_tile reads (d stays in B)
static inline __attribute__((always_inline)) void tile_q32_from_x8(const int type, int64_t nb, const void *B, rows8_tile *tiles) {
    for (int64_t b = 0; b < nb; ++b) {
        const char *blk = (const char *)B + (size_t)b * q32_x8_size(type);
        for (int j = 0; j < 8; ++j) _mm256_store_si256(&tiles[b].q[j], rows8_group(type, blk, j));
    }
}

/* x8 weights of `type` (Q4_0, Q8_0, Q4_1, Q5_0, Q5_1), rows r0..r1-1 (r0 % 8 == 0) @ x (T, n) in its
 * activation type -> y[t * ldy + r]; returns r1 (r0 when out of memory). */
static inline __attribute__((always_inline)) int64_t gemm_q32_x8_avx2(
        const int type, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK8_0;
    q8_0_side *side = ls_thread_buffer((size_t)(T * nb) * sizeof(q8_0_side), 1);
    rows8_tile *tiles = T >= q32_x8_tile_min_t(type) ? ls_thread_buffer((size_t)nb * sizeof(rows8_tile), 0) : NULL;
    if (!side) return r0;
    q8_0_side_data(type, nb, x, x_stride, T, side);
    for (int64_t r = r0; r < r1; r += 8) {
        const void *g = (const char *)w + (size_t)r * w_stride;
        const int rows = r1 - r < 8 ? (int)(r1 - r) : 8;
        if (tiles) {
            tile_q32_from_x8(type, nb, g, tiles);
            gemm_rows8_tokens(type, 1, 1, nb, g, tiles, x, x_stride, side, T, y + r, ldy, rows);
        } else {
            gemm_rows8_tokens(type, 1, 0, nb, g, NULL, x, x_stride, side, T, y + r, ldy, rows);
        }
    }
    return r1;
}

/* The kernels of the rows (types.c): the kernel signature over gemm_q32_x8_avx2 for one type. */
#define Q32_X8_KERNEL(name, type)                                                                    \
    int64_t name(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1, const void *x,    \
                 size_t x_stride, int64_t T, float *y, size_t ldy) {                                 \
        return gemm_q32_x8_avx2(type, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);                \
    }

// W rows r0..r1-1 (n_out, n) in Q4_0 x8 @ x (T, n) in Q8_0, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k q_k x_k - 8 sum_k x_k), d_rb * dx_tb, acc)
Q32_X8_KERNEL(gemm_q4_0_x8_q8_0_avx2, LS_TYPE_Q4_0)
// W rows r0..r1-1 (n_out, n) in Q8_0 x8 @ x (T, n) in Q8_0, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k q_k x_k), d_rb * dx_tb, acc)
Q32_X8_KERNEL(gemm_q8_0_x8_q8_0_avx2, LS_TYPE_Q8_0)
// W rows r0..r1-1 (n_out, n) in Q4_1 x8 @ x (T, n) in Q8_1, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k q_k x_k), d_rb * dx_tb, acc); acc = fma(m_rb, sx_tb, acc)
Q32_X8_KERNEL(gemm_q4_1_x8_q8_1_avx2, LS_TYPE_Q4_1)
// W rows r0..r1-1 (n_out, n) in Q5_0 x8 @ x (T, n) in Q8_0, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k q_k x_k - 16 sum_k x_k), d_rb * dx_tb, acc), q 5-bit
Q32_X8_KERNEL(gemm_q5_0_x8_q8_0_avx2, LS_TYPE_Q5_0)
// W rows r0..r1-1 (n_out, n) in Q5_1 x8 @ x (T, n) in Q8_1, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k q_k x_k), d_rb * dx_tb, acc); acc = fma(m_rb, sx_tb, acc), q 5-bit
Q32_X8_KERNEL(gemm_q5_1_x8_q8_1_avx2, LS_TYPE_Q5_1)

/* ---- Q4_K weights (Q8_K activations) with a row per lane, as Q4_0 above. Per row, token and
 * super-block (in order), with isum = sum_s sc_s * (q·x)_s and msum = sum_s m_s * bsum_s (exact):
 *     acc = fma(float(isum), d * dx, acc);  acc = fma(-float(msum), dmin * dx, acc)
 * — the float order of gemm_q4_K_q8_K_avx512 (fmadd, then fnmadd), and of the scalar twin.
 * gemm: per 8-row group a tile per super-block (2.5 KB: the 64 group registers of quants 0..15,
 * the scales and mins as int16 lanes), tokens 4 at a time; the 8 groups of a sub-block add in int16
 * (8 x 2 x 15 x 127 = 30480 fits), vpmaddwd applies the sub-block's scale per lane.
 * gemv: each row's sums as vec_dot_q4_K_q8_K_avx2 computes them (elements in the lanes), row after
 * row, then 8 rows reduced to a row per lane (as for Q8_0 above). */

typedef struct {
    __m256i q[8][8];    /* [s][j]: elements 32 s + 4 j .. +3 of lane p's row (0..15) */
    __m256i sc[8];      /* [s]: the sub-block's scale in both int16 halves of lane p */
    __m256i m[4];       /* [j]: mins of sub-blocks 2j (low int16) and 2j + 1 (high) */
    float d[8], dmin[8];
} q4_K_rows8_tile;

/* Per token and super-block of Q8_K activations: d, and the sub-block sums as int16 pairs. */
typedef struct { float d; int32_t bs[4]; } q8_K_side;

static void q8_K_side_data(int64_t nb, const void *x, size_t x_stride, int64_t T, q8_K_side *side) {
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
}

// W rows rp[0..7] (Q4_K), super-block b -> tile
static void tile_q4_K_rows8(const uint8_t *const *rp, int64_t b, q4_K_rows8_tile *tl) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const size_t base = (size_t)b * sizeof(block_q4_K);
    for (int k = 0; k < 4; ++k) {        /* qs chunk k: sub-blocks 2k (low nibbles), 2k + 1 (high) */
        __m256i raw[8];
        rows8_transpose128(rp, base + offsetof(block_q4_K, qs) + 32 * k, raw);
        rows8_transpose128(rp, base + offsetof(block_q4_K, qs) + 32 * k + 16, raw + 4);
        for (int j = 0; j < 8; ++j) {
            _mm256_store_si256(&tl->q[2 * k][j], _mm256_and_si256(raw[j], low4));
            _mm256_store_si256(&tl->q[2 * k + 1][j], _mm256_and_si256(_mm256_srli_epi16(raw[j], 4), low4));
        }
    }
    int32_t sc[8][8], m[4][8];
    float d[8], dmin[8];
    for (int p = 0; p < 8; ++p) {
        const block_q4_K *blk = (const block_q4_K *)(rp[p] + base);
        uint8_t s6[8], m6[8];
        ls_unpack_scales_k4(blk->scales, s6, m6);
        for (int s = 0; s < 8; ++s) sc[s][p] = (int32_t)s6[s] * 0x10001;
        for (int j = 0; j < 4; ++j) m[j][p] = (int32_t)m6[2 * j] | ((int32_t)m6[2 * j + 1] << 16);
        d[p] = ls_fp16_to_fp32_f16c(blk->d);
        dmin[p] = ls_fp16_to_fp32_f16c(blk->dmin);
    }
    for (int s = 0; s < 8; ++s) _mm256_store_si256(&tl->sc[s], _mm256_loadu_si256((const __m256i *)sc[s]));
    for (int j = 0; j < 4; ++j) _mm256_store_si256(&tl->m[j], _mm256_loadu_si256((const __m256i *)m[j]));
    memcpy(tl->d, d, sizeof d);
    memcpy(tl->dmin, dmin, sizeof dmin);
}

/* nt tokens t0.. (a constant 1..4) against the tiles of one 8-row group. */
static inline __attribute__((always_inline)) void gemm_q4_K_rows8_tile(
        int64_t nb, const q4_K_rows8_tile *tiles, const uint8_t *x, size_t x_stride, const q8_K_side *side,
        float *y, size_t ldy, int rows, int64_t t0, const int nt) {
    __m256 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const q4_K_rows8_tile *tl = &tiles[b];
        const int8_t *xq[4];
        __m256i isum[4];
        for (int t = 0; t < nt; ++t) {
            xq[t] = ((const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b)->qs;
            isum[t] = _mm256_setzero_si256();
        }
        for (int s = 0; s < 8; ++s) {
            __m256i s16[4];
            for (int j = 0; j < 8; ++j) {
                const __m256i q = _mm256_load_si256(&tl->q[s][j]);
                for (int t = 0; t < nt; ++t) {
                    const __m256i p = _mm256_maddubs_epi16(q, bcast_x4(xq[t] + 32 * s + 4 * j));
                    s16[t] = j ? _mm256_add_epi16(s16[t], p) : p;
                    LS_KEEP_ORDER(s16[t]);
                }
            }
            const __m256i sc = _mm256_load_si256(&tl->sc[s]);
            for (int t = 0; t < nt; ++t) {
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], sc));
                LS_KEEP_ORDER(isum[t]);
            }
        }
        const __m256 d = _mm256_load_ps(tl->d), dmin = _mm256_load_ps(tl->dmin);
        for (int t = 0; t < nt; ++t) {
            const q8_K_side *sd = &side[(t0 + t) * nb + b];
            __m256i msum = _mm256_madd_epi16(_mm256_load_si256(&tl->m[0]), _mm256_set1_epi32(sd->bs[0]));
            for (int j = 1; j < 4; ++j)
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(_mm256_load_si256(&tl->m[j]), _mm256_set1_epi32(sd->bs[j])));
            const __m256 dx = _mm256_set1_ps(sd->d);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dx), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, dx), acc[t]);
        }
    }
    for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

/* All T tokens against the tiles of one 8-row group, 4 at a time. */
static void q4_K_tiles_tokens(int64_t nb, const q4_K_rows8_tile *tiles, const uint8_t *x, size_t x_stride,
                              const q8_K_side *side, int64_t T, float *y, size_t ldy, int rows) {
    TOKENS_BY_4(T, gemm_q4_K_rows8_tile, nb, tiles, x, x_stride, side, y, ldy, rows);
}

// W rows r0..r1-1 (n_out, n) in Q4_K @ x (T, n) in Q8_K, T >= 4 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(isum_b, d_b * dx_b, acc); acc = fma(-msum_b, dmin_b * dx_b, acc)
int64_t gemm_q4_K_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    q4_K_rows8_tile *tiles = ls_thread_buffer((size_t)nb * sizeof(q4_K_rows8_tile), 0);
    q8_K_side *side = ls_thread_buffer((size_t)(T * nb) * sizeof(q8_K_side), 1);
    if (!tiles || !side) return r0;
    q8_K_side_data(nb, x, x_stride, T, side);
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *rp[8];
        const int rows = rows8_ptrs(w, w_stride, r, r1, rp);
        if (r + 8 < r1) {
            const char *next = (const char *)w + (size_t)(r + 8) * w_stride;
            const size_t bytes = (size_t)(r1 - r - 8 < 8 ? r1 - r - 8 : 8) * w_stride;
            for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
        }
        for (int64_t b = 0; b < nb; ++b) tile_q4_K_rows8(rp, b, &tiles[b]);
        q4_K_tiles_tokens(nb, tiles, x, x_stride, side, T, y + r, ldy, rows);
    }
    return r1;
}

/* Q4_K block · Q8_K block, exactly, with the elements in the lanes (vec_dot_q4_K_q8_K_avx2's integer
 * work): *isum = 8 int32 lanes adding up to sum_s sc_s * (q·x)_s, *msum = 4 lanes adding up to
 * sum_s m_s * bsum_s. */
static inline __attribute__((always_inline)) void q4_K_block_lanes(const block_q4_K *blk, const block_q8_K *xb,
                                                                  __m256i *isum, __m128i *msum) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i scales_mins = ls_unpack_scales_mins_k4_avx2(blk->scales);
    *msum = mins_dot_bsums(scales_mins, xb->bsums);
    const __m128i sc128 = _mm256_castsi256_si128(scales_mins);
    const __m256i scales = _mm256_set_m128i(sc128, sc128);
    __m256i sumi = _mm256_setzero_si256();
    for (int g = 0; g < 4; ++g) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * g));
        const __m256i lo = _mm256_and_si256(bits, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
        const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g)));
        const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * g + 32)));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(p_lo, _mm256_shuffle_epi8(scales, bcast16_mask(2 * g))),
                                                       _mm256_madd_epi16(p_hi, _mm256_shuffle_epi8(scales, bcast16_mask(2 * g + 1)))));
    }
    *isum = sumi;
}

/* 8 vectors of 4 int32 (v[i]: partial sums of row i) -> lane i = the sum of v[i]'s lanes. */
static inline __m256i reduce8_epi32_128(const __m128i *v) {
    const __m128i a = _mm_hadd_epi32(_mm_hadd_epi32(v[0], v[1]), _mm_hadd_epi32(v[2], v[3]));
    const __m128i b = _mm_hadd_epi32(_mm_hadd_epi32(v[4], v[5]), _mm_hadd_epi32(v[6], v[7]));
    return _mm256_set_m128i(b, a);
}

/* Q4_K gemv: token by token against rows r0..r1-1; v: scratch of nb * 8 vectors, m: nb * 8. */
static void gemv_q4_K_rows(int64_t T, int64_t nb, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                           const void *x, size_t x_stride, float *y, size_t ldy, __m256i *v, __m128i *m) {
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *rp[8];
        const int rows = rows8_ptrs(w, w_stride, r, r1, rp);
        for (int64_t t = 0; t < T; ++t) {
            const block_q8_K *xb = (const block_q8_K *)((const uint8_t *)x + (size_t)t * x_stride);
            for (int i = 0; i < 8; ++i)
                for (int64_t b = 0; b < nb; ++b)
                    q4_K_block_lanes((const block_q4_K *)rp[i] + b, &xb[b], &v[b * 8 + i], &m[b * 8 + i]);
            __m256 acc = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; ++b) {
                const size_t off = (size_t)b * sizeof(block_q4_K);
                const __m256 d = rows8_fp16(rp, off + offsetof(block_q4_K, d));
                const __m256 dmin = rows8_fp16(rp, off + offsetof(block_q4_K, dmin));
                const __m256 dx = _mm256_set1_ps(xb[b].d);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8_epi32(v + b * 8)), _mm256_mul_ps(d, dx), acc);
                acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(reduce8_epi32_128(m + b * 8)), _mm256_mul_ps(dmin, dx), acc);
            }
            store_rows8(y + (size_t)t * ldy + r, acc, rows);
        }
    }
}

// W rows r0..r1-1 (n_out, n) in Q4_K @ x (T, n) in Q8_K, any T (decode: 1-3) -> y: bit for bit gemm_q4_K_q8_K_avx2
int64_t gemv_q4_K_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    __m256i *v = ls_thread_buffer((size_t)nb * 8 * (sizeof(__m256i) + sizeof(__m128i)), 0);
    if (!v) return r0;
    gemv_q4_K_rows(T, nb, w, w_stride, r0, r1, x, x_stride, y, ldy, v, (__m128i *)(v + nb * 8));
    return r1;
}

/* ---- Q6_K weights (Q8_K activations) with a row per lane: quants q in 0..63 unsigned, the -32
 * offset through the activation sub-block sums. Per row, token and super-block (in order):
 *     acc = fma(float(sum_s sc_s * (q·x)_s - 32 * sum_s sc_s * bsum_s), d * dx, acc)
 * — the float order of gemm_q6_K_q8_K_avx512 and of the scalar twin. gemm: per 8-row group a tile
 * per super-block (2 KB of group registers, the 16 signed scales as int16 lanes); two groups add in
 * int16 (2 x 2 x 63 x 127 = 32004 fits) before vpmaddwd applies the scale. gemv: each row's sums as
 * vec_dot_q6_K_q8_K_avx2 computes them, 8 rows reduced to a row per lane. */

typedef struct {
    __m256i q[64];      /* [4 s + j]: elements 16 s + 4 j .. +3 of lane p's row (0..63) */
    __m256i sc[16];     /* [s]: the sub-block's scale in both int16 halves of lane p */
    __m256i scp[8];     /* [j]: scales of sub-blocks 2j (low int16) and 2j + 1 (high) */
    float d[8];
} q6_K_rows8_tile;

// W rows rp[0..7] (Q6_K), super-block b -> tile
static void tile_q6_K_rows8(const uint8_t *const *rp, int64_t b, q6_K_rows8_tile *tl) {
    uint8_t qs[8][QK_K] __attribute__((aligned(32)));   /* the 8 rows' quants in element order */
    const uint8_t *qp[8];
    for (int r = 0; r < 8; ++r) {
        const block_q6_K *blk = (const block_q6_K *)rp[r] + b;
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];
            ls_q6_K_quants_half_avx2(blk, h, q);
            for (int k = 0; k < 4; ++k) _mm256_store_si256((__m256i *)(qs[r] + 128 * h + 32 * k), q[k]);
        }
        qp[r] = qs[r];
    }
    for (int c = 0; c < 16; ++c)          /* 16-byte column c: groups 4c .. 4c+3 */
        rows8_transpose128(qp, (size_t)(16 * c), &tl->q[4 * c]);
    int32_t sc[16][8], scp[8][8];
    for (int p = 0; p < 8; ++p) {
        const block_q6_K *blk = (const block_q6_K *)rp[p] + b;
        for (int s = 0; s < 16; ++s) sc[s][p] = (int32_t)((uint32_t)(uint16_t)(int16_t)blk->scales[s] * 0x10001u);
        for (int j = 0; j < 8; ++j)
            scp[j][p] = (int32_t)(uint16_t)(int16_t)blk->scales[2 * j]
                      | (int32_t)((uint32_t)(uint16_t)(int16_t)blk->scales[2 * j + 1] << 16);
        tl->d[p] = ls_fp16_to_fp32_f16c(blk->d);
    }
    for (int s = 0; s < 16; ++s) _mm256_store_si256(&tl->sc[s], _mm256_loadu_si256((const __m256i *)sc[s]));
    for (int j = 0; j < 8; ++j) _mm256_store_si256(&tl->scp[j], _mm256_loadu_si256((const __m256i *)scp[j]));
}

static inline __attribute__((always_inline)) void gemm_q6_K_rows8_tile(
        int64_t nb, const q6_K_rows8_tile *tiles, const uint8_t *x, size_t x_stride,
        float *y, size_t ldy, int rows, int64_t t0, const int nt) {
    __m256 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const q6_K_rows8_tile *tl = &tiles[b];
        const block_q8_K *xb[4];
        __m256i isum[4];
        for (int t = 0; t < nt; ++t) {
            xb[t] = (const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b;
            isum[t] = _mm256_setzero_si256();
        }
        for (int s = 0; s < 16; ++s) {
            const __m256i sc = _mm256_load_si256(&tl->sc[s]);
            for (int half = 0; half < 2; ++half) {   /* groups 2 half, 2 half + 1 of sub-block s */
                const __m256i qa = _mm256_load_si256(&tl->q[4 * s + 2 * half]);
                const __m256i qb = _mm256_load_si256(&tl->q[4 * s + 2 * half + 1]);
                for (int t = 0; t < nt; ++t) {
                    const int8_t *xq = xb[t]->qs + 16 * s + 8 * half;
                    __m256i p = _mm256_maddubs_epi16(qa, bcast_x4(xq));
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(qb, bcast_x4(xq + 4)));
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, sc));
                    LS_KEEP_ORDER(isum[t]);
                }
            }
        }
        const __m256 d = _mm256_load_ps(tl->d);
        for (int t = 0; t < nt; ++t) {
            __m256i off = _mm256_setzero_si256();
            for (int j = 0; j < 8; ++j) {
                int32_t bp;
                memcpy(&bp, &xb[t]->bsums[2 * j], 4);
                off = _mm256_add_epi32(off, _mm256_madd_epi16(_mm256_load_si256(&tl->scp[j]), _mm256_set1_epi32(bp)));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[t], _mm256_slli_epi32(off, 5))),
                                     _mm256_mul_ps(d, _mm256_set1_ps(xb[t]->d)), acc[t]);
        }
    }
    for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

/* All T tokens against the tiles of one 8-row group, 4 at a time. */
static void q6_K_tiles_tokens(int64_t nb, const q6_K_rows8_tile *tiles, const uint8_t *x, size_t x_stride,
                              int64_t T, float *y, size_t ldy, int rows) {
    TOKENS_BY_4(T, gemm_q6_K_rows8_tile, nb, tiles, x, x_stride, y, ldy, rows);
}

// W rows r0..r1-1 (n_out, n) in Q6_K @ x (T, n) in Q8_K, T >= 4 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(sum_s sc_s * ((q - 32)·x)_s, d_b * dx_b, acc)
int64_t gemm_q6_K_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    q6_K_rows8_tile *tiles = ls_thread_buffer((size_t)nb * sizeof(q6_K_rows8_tile), 0);
    if (!tiles) return r0;
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *rp[8];
        const int rows = rows8_ptrs(w, w_stride, r, r1, rp);
        if (r + 8 < r1) {
            const char *next = (const char *)w + (size_t)(r + 8) * w_stride;
            const size_t bytes = (size_t)(r1 - r - 8 < 8 ? r1 - r - 8 : 8) * w_stride;
            for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
        }
        for (int64_t b = 0; b < nb; ++b) tile_q6_K_rows8(rp, b, &tiles[b]);
        q6_K_tiles_tokens(nb, tiles, x, x_stride, T, y + r, ldy, rows);
    }
    return r1;
}

/* Q6_K block · Q8_K block, exactly, with the elements in the lanes (vec_dot_q6_K_q8_K_avx2's
 * integer work): 8 int32 lanes adding up to sum_s sc_s * ((q - 32)·x)_s. */
static inline __attribute__((always_inline)) __m256i q6_K_block_lanes(const block_q6_K *blk, const block_q8_K *xb) {
    const __m128i scales8 = _mm_loadu_si128((const __m128i *)blk->scales);
    const __m256i bsums = _mm256_loadu_si256((const __m256i *)xb->bsums);
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, _mm256_cvtepi8_epi16(scales8)), 5);
    __m256i sumi = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
        __m256i q[4];
        ls_q6_K_quants_half_avx2(blk, h, q);
        for (int j = 0; j < 4; ++j) {
            const int c = 4 * h + j;
            const __m256i q8 = _mm256_loadu_si256((const __m256i *)(xb->qs + 32 * c));
            const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, pair_bcast8_mask(c)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], q8), sc));
        }
    }
    return _mm256_sub_epi32(sumi, offset);
}

/* Q6_K gemv: token by token against rows r0..r1-1; v: scratch of nb * 8 vectors. */
static void gemv_q6_K_rows(int64_t T, int64_t nb, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                           const void *x, size_t x_stride, float *y, size_t ldy, __m256i *v) {
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *rp[8];
        const int rows = rows8_ptrs(w, w_stride, r, r1, rp);
        for (int64_t t = 0; t < T; ++t) {
            const block_q8_K *xb = (const block_q8_K *)((const uint8_t *)x + (size_t)t * x_stride);
            for (int i = 0; i < 8; ++i)
                for (int64_t b = 0; b < nb; ++b) v[b * 8 + i] = q6_K_block_lanes((const block_q6_K *)rp[i] + b, &xb[b]);
            __m256 acc = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; ++b) {
                const __m256 d = rows8_fp16(rp, (size_t)b * sizeof(block_q6_K) + offsetof(block_q6_K, d));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8_epi32(v + b * 8)), _mm256_mul_ps(d, _mm256_set1_ps(xb[b].d)), acc);
            }
            store_rows8(y + (size_t)t * ldy + r, acc, rows);
        }
    }
}

// W rows r0..r1-1 (n_out, n) in Q6_K @ x (T, n) in Q8_K, any T (decode: 1-3) -> y: bit for bit gemm_q6_K_q8_K_avx2
int64_t gemv_q6_K_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                   const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    __m256i *v = ls_thread_buffer((size_t)nb * 8 * sizeof(__m256i), 0);
    if (!v) return r0;
    gemv_q6_K_rows(T, nb, w, w_stride, r0, r1, x, x_stride, y, ldy, v);
    return r1;
}

/* ---------------------------------------------------------------------------------------------
 * Repacked (x8) weights: the 8 rows of a group are already interleaved (formats.h "Repacked
 * layouts"), so these are the gemm tiles above without building tiles — one kernel for any T,
 * tokens 4 at a time, each weight byte read once per call. The integer sums are exact and the
 * float fold per row is the scalar twins' (matmul_rows_q4_K_x8_q8_K, matmul_rows_q6_K_x8_q8_K in
 * quants.c), which is that of gemm_q4_K / gemm_q6_K above: a repacked tensor gives the same bits. */

/* The x8 block this many blocks ahead is fetched while one is computed (the next ones in memory,
 * past the group's end too: the groups of a tensor are contiguous; a prefetch never faults). */
#ifndef X8_PREFETCH_AHEAD
#define X8_PREFETCH_AHEAD 2
#endif
static inline void x8_prefetch(const void *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + o, _MM_HINT_T0);
}

/* Group j = 2i + jj of half h of a Q6_K x8 block -> its quants (0..63), q[c]: quarter c. */
static inline __attribute__((always_inline)) void ls_q6_K_quants_x8_avx2(const block_q6_Kx8 *B, int h, int i, int jj,
                                                                        __m256i q[4]) {
    ls_q6_K_quants_avx2(_mm256_loadu_si256((const __m256i *)B->q[h][i].ql[0][jj]),
                        _mm256_loadu_si256((const __m256i *)B->q[h][i].ql[1][jj]),
                        _mm256_loadu_si256((const __m256i *)B->q[h][i].qh[jj]), q);
}

/* 8 bytes v[p] -> the int16 pair (v[p], v[p]) in int32 lane p. */
static inline __m256i x8_dup_u8(const uint8_t *v) {
    const __m128i b = _mm_loadl_epi64((const __m128i *)v);
    return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(b, b));
}

/* 8 int8 v[p] -> the int16 pair (v[p], v[p]) in int32 lane p. */
static inline __m256i x8_dup_i8(const int8_t *v) {
    const __m128i b = _mm_loadl_epi64((const __m128i *)v);
    return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(b, b));
}

/* 8 + 8 int8 a[p], b[p] -> the int16 pair (a[p], b[p]) in int32 lane p. */
static inline __m256i x8_pair_i8(const int8_t *a, const int8_t *b) {
    return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)a), _mm_loadl_epi64((const __m128i *)b)));
}

/* Sub-block s of a Q4_K x8 block (nibbles s % 2 of qs[s / 2]), or of a Q5_K x8 block (q5: with bit s
 * of qh as the 5th bit) · nt tokens' Q8_K blocks: isum[t] += per lane sc_s * (q · x)_s. Groups add in
 * int16 before vpmaddwd applies the scale: all 8 for Q4_K (8 x 2 x 15 x 127 = 30480 fits), 4 at a
 * time for Q5_K (4 x 2 x 31 x 127 = 31496 fits). */
static inline __attribute__((always_inline)) void k4_x8_sub(const int q5, const block_q4_Kx8 *B, const uint8_t (*qh)[32],
                                                           const int s, const block_q8_K *const *xb, const int nt,
                                                           __m256i *isum) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    const __m256i sc = x8_dup_u8(B->sc[s]);
    __m256i s16[4];
    for (int t = 0; t < nt; ++t) s16[t] = _mm256_setzero_si256();   /* (set below; silences -Wmaybe-uninitialized) */
    for (int j = 0; j < 8; ++j) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)B->qs[s / 2][j]);
        __m256i q = _mm256_and_si256(s & 1 ? _mm256_srli_epi16(raw, 4) : raw, low4);
        if (q5)
            q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(
                    _mm256_loadu_si256((const __m256i *)qh[j]), s), one), 4));
        for (int t = 0; t < nt; ++t) {
            const __m256i p = _mm256_maddubs_epi16(q, bcast_x4(xb[t]->qs + 32 * s + 4 * j));
            s16[t] = j % (q5 ? 4 : 8) ? _mm256_add_epi16(s16[t], p) : p;
            LS_KEEP_ORDER(s16[t]);
        }
        if (j % (q5 ? 4 : 8) == (q5 ? 3 : 7))
            for (int t = 0; t < nt; ++t) {
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], sc));
                LS_KEEP_ORDER(isum[t]);
            }
    }
}

/* nt tokens t0.. (a constant 1..4) against one group of Q4_K x8 (q5 = 0) or Q5_K x8 (q5 = 1) blocks,
 * bsize bytes each -> 8 rows of y. */
static inline __attribute__((always_inline)) void gemm_k4_x8_group(
        const int q5, const size_t bsize, int64_t nb, const uint8_t *restrict g, const uint8_t *x, size_t x_stride,
        float *y, size_t ldy, int rows, int64_t t0, const int nt) {
    __m256 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const block_q4_Kx8 *B = (const block_q4_Kx8 *)(g + (size_t)b * bsize);
        const uint8_t (*qh)[32] = q5 ? ((const block_q5_Kx8 *)B)->qh : NULL;
        x8_prefetch((const uint8_t *)B + X8_PREFETCH_AHEAD * bsize, bsize);
        const block_q8_K *xb[4];
        __m256i isum[4];
        for (int t = 0; t < nt; ++t) {
            xb[t] = (const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b;
            isum[t] = _mm256_setzero_si256();
        }
        k4_x8_sub(q5, B, qh, 0, xb, nt, isum); k4_x8_sub(q5, B, qh, 1, xb, nt, isum);
        k4_x8_sub(q5, B, qh, 2, xb, nt, isum); k4_x8_sub(q5, B, qh, 3, xb, nt, isum);
        k4_x8_sub(q5, B, qh, 4, xb, nt, isum); k4_x8_sub(q5, B, qh, 5, xb, nt, isum);
        k4_x8_sub(q5, B, qh, 6, xb, nt, isum); k4_x8_sub(q5, B, qh, 7, xb, nt, isum);
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B->d));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B->dmin));
        for (int t = 0; t < nt; ++t) {
            /* sub-block sums of x as int16 pairs: dword 0/1 of the low half = (S0,S1), (S2,S3), of
             * the high half (S4,S5), (S6,S7) */
            const __m256i S = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)xb[t]->bsums), _mm256_set1_epi16(1));
            const __m256i S16 = _mm256_packs_epi32(S, S);
            __m256i msum = _mm256_setzero_si256();
            for (int j = 0; j < 4; ++j) {
                const __m256i pair = _mm256_permutevar8x32_epi32(S16, _mm256_set1_epi32((j & 1) + 4 * (j >> 1)));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)B->m[j])), pair));
            }
            const __m256 dx = _mm256_set1_ps(xb[t]->d);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dx), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, dx), acc[t]);
        }
    }
    for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

/* Rows r0..r1-1 (r0 % 8 == 0) of a Q4_K x8 / Q5_K x8 tensor, all T tokens, 4 at a time. */
static inline __attribute__((always_inline)) void gemm_k4_x8_rows(
        const int q5, const size_t bsize, int64_t nb, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const uint8_t *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *g = (const uint8_t *)w + (size_t)r * w_stride;
        const int rows = r1 - r < 8 ? (int)(r1 - r) : 8;
        TOKENS_BY_4(T, gemm_k4_x8_group, q5, bsize, nb, g, x, x_stride, y + r, ldy, rows);
    }
}

// W rows r0..r1-1 (n_out, n) in Q5_K x8 @ x (T, n) in Q8_K, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(isum_b, d_b * dx_b, acc); acc = fma(-msum_b, dmin_b * dx_b, acc)
int64_t gemm_q5_K_x8_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                      const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    gemm_k4_x8_rows(1, sizeof(block_q5_Kx8), n / QK_K, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
    return r1;
}

/* Many tokens (a prompt): the group's quants are unpacked once into the tiles of gemm_q4_K_q8_K_avx2
 * (the same registers the tiling would make, without the transposition) and that kernel's tile loop
 * does the rest — cheaper per token than unpacking the nibbles for every 4 tokens. */
#define X8_TILE_MIN_T 8

// group of Q4_K x8 blocks B[0..nb-1] -> the tiles of gemm_q4_K_q8_K_avx2
static void tile_q4_K_from_x8(int64_t nb, const block_q4_Kx8 *B, q4_K_rows8_tile *tiles) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
        q4_K_rows8_tile *tl = &tiles[b];
        for (int k = 0; k < 4; ++k)
            for (int j = 0; j < 8; ++j) {
                const __m256i raw = _mm256_loadu_si256((const __m256i *)B[b].qs[k][j]);
                _mm256_store_si256(&tl->q[2 * k][j], _mm256_and_si256(raw, low4));
                _mm256_store_si256(&tl->q[2 * k + 1][j], _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4));
            }
        for (int s = 0; s < 8; ++s) _mm256_store_si256(&tl->sc[s], x8_dup_u8(B[b].sc[s]));
        for (int j = 0; j < 4; ++j) _mm256_store_si256(&tl->m[j], _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)B[b].m[j])));
        _mm256_storeu_ps(tl->d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B[b].d)));
        _mm256_storeu_ps(tl->dmin, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B[b].dmin)));
    }
}

// W rows r0..r1-1 (n_out, n) in Q4_K x8 @ x (T, n) in Q8_K, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(isum_b, d_b * dx_b, acc); acc = fma(-msum_b, dmin_b * dx_b, acc)
int64_t gemm_q4_K_x8_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                      const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    if (T >= X8_TILE_MIN_T) {
        q4_K_rows8_tile *tiles = ls_thread_buffer((size_t)nb * sizeof(q4_K_rows8_tile), 0);
        q8_K_side *side = ls_thread_buffer((size_t)(T * nb) * sizeof(q8_K_side), 1);
        if (tiles && side) {
            q8_K_side_data(nb, x, x_stride, T, side);
            for (int64_t r = r0; r < r1; r += 8) {
                tile_q4_K_from_x8(nb, (const block_q4_Kx8 *)((const char *)w + (size_t)r * w_stride), tiles);
                q4_K_tiles_tokens(nb, tiles, x, x_stride, side, T, y + r, ldy, r1 - r < 8 ? (int)(r1 - r) : 8);
            }
            return r1;
        }
    }
    gemm_k4_x8_rows(0, sizeof(block_q4_Kx8), nb, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
    return r1;
}

/* nt tokens t0.. (a constant 1..4) against one group of Q2_K x8 (q3 = 0) or Q3_K x8 (q3 = 1) blocks ->
 * 8 rows of y. Per half h, sub-block pair (j, hf) the 4 groups g = 4 hf .. add in int16 (Q2_K:
 * 4 x 2 x 3 x 127 = 3048; Q3_K with q + 4 in 0..7: 4 x 2 x 7 x 127 = 7112) before vpmaddwd applies
 * the scale. Q3_K's quants are taken as q + 4 (unsigned), the 4 x scale x bsum it adds is taken off
 * per token (as Q6_K's 32). */
static inline __attribute__((always_inline)) void gemm_k2_x8_group(
        const int q3, int64_t nb, const uint8_t *restrict g, const uint8_t *x, size_t x_stride,
        float *y, size_t ldy, int rows, int64_t t0, const int nt) {
    const size_t bsize = q3 ? sizeof(block_q3_Kx8) : sizeof(block_q2_Kx8);
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1), low4 = _mm256_set1_epi8(0x0f);
    __m256 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *B = g + (size_t)b * bsize;
        const block_q2_Kx8 *B2 = (const block_q2_Kx8 *)B;
        const block_q3_Kx8 *B3 = (const block_q3_Kx8 *)B;
        x8_prefetch(B + X8_PREFETCH_AHEAD * bsize, bsize);
        const block_q8_K *xb[4];
        __m256i isum[4];
        for (int t = 0; t < nt; ++t) {
            xb[t] = (const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b;
            isum[t] = _mm256_setzero_si256();
        }
        for (int h = 0; h < 2; ++h)
            for (int hf = 0; hf < 2; ++hf)
                for (int j = 0; j < 4; ++j) {
                    const int s = 8 * h + 2 * j + hf;
                    __m256i s16[4];
                    for (int t = 0; t < nt; ++t) s16[t] = _mm256_setzero_si256();   /* (set below) */
                    for (int gg = 0; gg < 4; ++gg) {
                        const int q = 4 * hf + gg;
                        const __m256i raw = _mm256_loadu_si256((const __m256i *)(q3 ? B3->qs[h][q] : B2->qs[h][q]));
                        __m256i v = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * j), three);
                        if (q3)
                            v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(
                                    _mm256_loadu_si256((const __m256i *)B3->hmask[q]), 4 * h + j), one), 2));
                        for (int t = 0; t < nt; ++t) {
                            const __m256i p = _mm256_maddubs_epi16(v, bcast_x4(xb[t]->qs + 128 * h + 32 * j + 16 * hf + 4 * gg));
                            s16[t] = gg ? _mm256_add_epi16(s16[t], p) : p;
                            LS_KEEP_ORDER(s16[t]);
                        }
                    }
                    const __m256i sc = q3 ? x8_dup_i8(B3->sc[s])
                                          : _mm256_and_si256(x8_dup_u8(B2->scales[s]), _mm256_set1_epi16(15));
                    for (int t = 0; t < nt; ++t) {
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], sc));
                        LS_KEEP_ORDER(isum[t]);
                    }
                }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(q3 ? B3->d : B2->d)));
        for (int t = 0; t < nt; ++t) {
            /* Q2_K: sum_s m_s * bsum_s; Q3_K: sum_s sc_s * bsum_s (times 4, taken off) */
            __m256i ms = _mm256_setzero_si256();
            for (int k = 0; k < 8; ++k) {
                int32_t bp;
                memcpy(&bp, &xb[t]->bsums[2 * k], 4);
                const __m256i pair = q3 ? x8_pair_i8(B3->sc[2 * k], B3->sc[2 * k + 1])
                    : _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(_mm_unpacklo_epi8(
                          _mm_loadl_epi64((const __m128i *)B2->scales[2 * k]),
                          _mm_loadl_epi64((const __m128i *)B2->scales[2 * k + 1])), 4), _mm256_castsi256_si128(low4)));
                ms = _mm256_add_epi32(ms, _mm256_madd_epi16(pair, _mm256_set1_epi32(bp)));
            }
            const __m256 dx = _mm256_set1_ps(xb[t]->d);
            if (q3) {
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[t], _mm256_slli_epi32(ms, 2))),
                                         _mm256_mul_ps(d, dx), acc[t]);
            } else {
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dx), acc[t]);
                const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B2->dmin));
                acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dmin, dx), acc[t]);
            }
        }
    }
    for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

static inline __attribute__((always_inline)) void gemm_k2_x8_rows(
        const int q3, int64_t nb, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const uint8_t *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *g = (const uint8_t *)w + (size_t)r * w_stride;
        const int rows = r1 - r < 8 ? (int)(r1 - r) : 8;
        TOKENS_BY_4(T, gemm_k2_x8_group, q3, nb, g, x, x_stride, y + r, ldy, rows);
    }
}

// W rows r0..r1-1 (n_out, n) in Q2_K x8 @ x (T, n) in Q8_K, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(isum_b, d_b * dx_b, acc); acc = fma(-msum_b, dmin_b * dx_b, acc)
int64_t gemm_q2_K_x8_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                      const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    gemm_k2_x8_rows(0, n / QK_K, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
    return r1;
}

// W rows r0..r1-1 (n_out, n) in Q3_K x8 @ x (T, n) in Q8_K, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(sum_s (sc_s - 32) * (q·x)_s, d_b * dx_b, acc)
int64_t gemm_q3_K_x8_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                      const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    gemm_k2_x8_rows(1, n / QK_K, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
    return r1;
}

/* nt tokens t0.. (a constant 1..4) against one group of Q6_K x8 blocks -> 8 rows of y. Per 128-half
 * h and pair of groups j = 2i, 2i + 1 (they share each quarter's sub-block, 8h + 2c + i / 2): two
 * groups add in int16 (2 x 2 x 63 x 127 = 32004 fits) before vpmaddwd applies the scale. */
static inline __attribute__((always_inline)) void gemm_q6_K_x8_group(
        int64_t nb, const block_q6_Kx8 *restrict g, const uint8_t *x, size_t x_stride,
        float *y, size_t ldy, int rows, int64_t t0, const int nt) {
    __m256 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const block_q6_Kx8 *B = &g[b];
        x8_prefetch(B + X8_PREFETCH_AHEAD, sizeof *B);
        const block_q8_K *xb[4];
        __m256i isum[4];
        for (int t = 0; t < nt; ++t) {
            xb[t] = (const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b;
            isum[t] = _mm256_setzero_si256();
        }
        __m256i scv[16];     /* the 16 scales as int16 pairs, expanded once per super-block */
        for (int k = 0; k < 16; ++k) scv[k] = x8_dup_i8(B->sc[k]);
        for (int h = 0; h < 2; ++h) {
            for (int i = 0; i < 4; ++i) {
                __m256i qa[4], qb[4];
                ls_q6_K_quants_x8_avx2(B, h, i, 0, qa);
                ls_q6_K_quants_x8_avx2(B, h, i, 1, qb);
                for (int c = 0; c < 4; ++c) {
                    const __m256i sc = _mm256_load_si256(&scv[8 * h + 2 * c + i / 2]);
                    for (int t = 0; t < nt; ++t) {
                        const int8_t *xq = xb[t]->qs + 128 * h + 32 * c + 8 * i;
                        __m256i p = _mm256_maddubs_epi16(qa[c], bcast_x4(xq));
                        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(qb[c], bcast_x4(xq + 4)));
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, sc));
                        LS_KEEP_ORDER(isum[t]);
                    }
                }
            }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B->d));
        for (int t = 0; t < nt; ++t) {
            __m256i off = _mm256_setzero_si256();
            for (int j = 0; j < 8; ++j) {
                int32_t bp;
                memcpy(&bp, &xb[t]->bsums[2 * j], 4);
                off = _mm256_add_epi32(off, _mm256_madd_epi16(x8_pair_i8(B->sc[2 * j], B->sc[2 * j + 1]), _mm256_set1_epi32(bp)));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[t], _mm256_slli_epi32(off, 5))),
                                     _mm256_mul_ps(d, _mm256_set1_ps(xb[t]->d)), acc[t]);
        }
    }
    for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

// group of Q6_K x8 blocks B[0..nb-1] -> the tiles of gemm_q6_K_q8_K_avx2 (tile q[4s + j]: elements
// 16s + 4j .. of each lane; x8 group jx of quarter c of half h is sub-block 8h + 2c + jx / 4, j = jx % 4)
static void tile_q6_K_from_x8(int64_t nb, const block_q6_Kx8 *B, q6_K_rows8_tile *tiles) {
    for (int64_t b = 0; b < nb; ++b) {
        q6_K_rows8_tile *tl = &tiles[b];
        for (int h = 0; h < 2; ++h)
            for (int jx = 0; jx < 8; ++jx) {
                __m256i q[4];
                ls_q6_K_quants_x8_avx2(&B[b], h, jx / 2, jx % 2, q);
                for (int c = 0; c < 4; ++c) _mm256_store_si256(&tl->q[4 * (8 * h + 2 * c + jx / 4) + jx % 4], q[c]);
            }
        for (int s = 0; s < 16; ++s) _mm256_store_si256(&tl->sc[s], x8_dup_i8(B[b].sc[s]));
        for (int j = 0; j < 8; ++j) _mm256_store_si256(&tl->scp[j], x8_pair_i8(B[b].sc[2 * j], B[b].sc[2 * j + 1]));
        _mm256_storeu_ps(tl->d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B[b].d)));
    }
}

// W rows r0..r1-1 (n_out, n) in Q6_K x8 @ x (T, n) in Q8_K, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(sum_s sc_s * ((q - 32)·x)_s, d_b * dx_b, acc)
int64_t gemm_q6_K_x8_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                      const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    if (T >= X8_TILE_MIN_T) {
        q6_K_rows8_tile *tiles = ls_thread_buffer((size_t)nb * sizeof(q6_K_rows8_tile), 0);
        if (tiles) {
            for (int64_t r = r0; r < r1; r += 8) {
                tile_q6_K_from_x8(nb, (const block_q6_Kx8 *)((const char *)w + (size_t)r * w_stride), tiles);
                q6_K_tiles_tokens(nb, tiles, x, x_stride, T, y + r, ldy, r1 - r < 8 ? (int)(r1 - r) : 8);
            }
            return r1;
        }
    }
    for (int64_t r = r0; r < r1; r += 8) {
        const block_q6_Kx8 *restrict g = (const block_q6_Kx8 *)((const char *)w + (size_t)r * w_stride);
        const int rows = r1 - r < 8 ? (int)(r1 - r) : 8;
        TOKENS_BY_4(T, gemm_q6_K_x8_group, nb, g, x, x_stride, y + r, ldy, rows);
    }
    return r1;
}

/* ---------------------------------------------------------------------------------------------
 * Activation quantizers: byte-identical to the scalar ones (the same float operations, vectorized;
 * the maximum of |x| does not depend on the order). Not defined for NaN input, as in llama.cpp. */

/* Largest |x| of 32 floats. */
static inline float amax32(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1));
    m = _mm256_max_ps(m, _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* C roundf (halves away from zero) of 8 floats, as int32: truncate, then step away from zero
 * when the (exact) remainder is at least one half. */
static inline __m256i roundf_epi32(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, t));
    const __m256 step = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
    const __m256 r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), step));
    return _mm256_cvtps_epi32(r);
}

/* 4 x 8 int32 (each in -128..127) -> 32 int8 in order. */
static inline __m256i pack_i32x32_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i abcd = _mm256_packs_epi16(ab, cd);   /* lanes interleaved: fix the order */
    return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* One Q8_0 / Q8_1 block of 32: the scale d (returned), the quants, and their sum. */
static inline float quantize_q8_block(const float *x, int8_t *qs, int *sum) {
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    const float d = amax32(v0, v1, v2, v3) / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    const __m256i i0 = roundf_epi32(_mm256_mul_ps(v0, id)), i1 = roundf_epi32(_mm256_mul_ps(v1, id));
    const __m256i i2 = roundf_epi32(_mm256_mul_ps(v2, id)), i3 = roundf_epi32(_mm256_mul_ps(v3, id));
    _mm256_storeu_si256((__m256i *)qs, pack_i32x32_i8(i0, i1, i2, i3));
    if (sum) {
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        h = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 1));
        *sum = _mm_cvtsi128_si32(h);
    }
    return d;
}

// x (n,) f32 -> y (n/32 blocks) Q8_0: d = max|x|/127, q = roundf(x/d)
void quantize_row_q8_0_avx2(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK8_0; ++i)
        y[i].d = ls_fp32_to_fp16(quantize_q8_block(x + i * QK8_0, y[i].qs, NULL));
}

// x (n,) f32 -> y (n/32 blocks) Q8_1: as Q8_0, plus s = fp16(d * sum(q))
void quantize_row_q8_1_avx2(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK8_1; ++i) {
        int sum;
        const float d = quantize_q8_block(x + i * QK8_1, y[i].qs, &sum);
        y[i].d = ls_fp32_to_fp16(d);
        y[i].s = ls_fp32_to_fp16((float)sum * d);
    }
}

// x (n,) f32 -> y (n/256 blocks) Q8_K: iscale = -127/max (max = first x of largest |x|),
// q = min(127, nearest_int(iscale*x)), d = 1/iscale, bsums = sums of q in 16s
void quantize_row_q8_K_avx2(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        /* the first element of largest magnitude gives the sign */
        int first = 0;
        const __m256 va = _mm256_set1_ps(amax);
        for (int k = 0; k < QK_K; k += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)), va, _CMP_EQ_OQ));
            if (hit) { first = k + __builtin_ctz((unsigned)hit); break; }
        }
        const float iscale = -127.0f / x[first];
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i top = _mm256_set1_epi32(127);
        for (int k = 0; k < QK_K; k += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; ++j) {
                const __m256 v = _mm256_mul_ps(vs, _mm256_loadu_ps(x + k + 8 * j));
                q[j] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)), top);
            }
            const __m256i q8 = pack_i32x32_i8(q[0], q[1], q[2], q[3]);
            _mm256_storeu_si256((__m256i *)(y[i].qs + k), q8);
            /* two bsums: sums of 16 int8 via 16-bit pair sums, then 32-bit, then across */
            const __m256i p16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q8);
            __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));       /* 8 sums of 4 */
            p32 = _mm256_hadd_epi32(p32, p32);                                  /* sums of 8 */
            p32 = _mm256_hadd_epi32(p32, p32);                                  /* sums of 16 */
            y[i].bsums[k / 16] = (int16_t)_mm256_extract_epi32(p32, 0);
            y[i].bsums[k / 16 + 1] = (int16_t)_mm256_extract_epi32(p32, 4);
        }
        y[i].d = 1.0f / iscale;
    }
}

// x (n,) f32 -> y (n,) f16, round to nearest even (F16C; chunks holding a NaN go the scalar way,
// which writes ggml's canonical quiet NaN)
void quantize_row_f16_avx2(const float *x, void *vy, int64_t n) {
    ls_fp16_t *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
            for (int k = 0; k < 8; ++k) y[i + k] = ls_fp32_to_fp16(x[i + k]);
        } else {
            _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
    }
    for (; i < n; ++i) y[i] = ls_fp32_to_fp16(x[i]);
}

// x (n,) f32 -> y (n,) bf16, round to nearest even (NaN kept, quieted)
void quantize_row_bf16_avx2(const float *x, void *vy, int64_t n) {
    ls_bf16_t *y = vy;
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), quiet = _mm256_set1_epi32(0x40);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int j = 0; j < 2; ++j) {
            const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i + 8 * j));
            const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
            const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
            const __m256i quieted = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
            r[j] = _mm256_blendv_epi8(rounded, quieted, nan);
        }
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xd8);
        _mm256_storeu_si256((__m256i *)(y + i), packed);
    }
    for (; i < n; ++i) y[i] = ls_fp32_to_bf16(x[i]);
}

/* ---------------------------------------------------------------------------------------------
 * Dequantizers (exact widenings, identical to the scalar ones) */

// x (n,) f16 -> y (n,) f32: F16C, 8 at a time; chunks holding a NaN go the scalar way (F16C would
// quiet signaling NaNs; the scalar widening keeps the payload bits)
void dequantize_row_f16_avx2(const void *vx, float *y, int64_t n) {
    const ls_fp16_t *x = vx;
    const __m128i exp_mask = _mm_set1_epi16(0x7c00);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128((const __m128i *)(x + i));
        if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, exp_mask), exp_mask))) {
            for (int k = 0; k < 8; ++k) y[i + k] = ls_fp16_to_fp32(x[i + k]);
        } else {
            _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
        }
    }
    for (; i < n; ++i) y[i] = ls_fp16_to_fp32_f16c(x[i]);
}

/* ---------------------------------------------------------------------------------------------
 * IQ4 i-quants · Q8_0 / Q8_K: one vpshufb turns 32 4-bit indices into their int8 levels
 * T[index] (the table ls_kvalues_iq4nl in both 128-bit lanes), then signed x signed byte products
 * by the sign trick: maddubs(|T|, sign(x, T)), pairs below 2*127*127 (no int16 saturation). */

static inline __m256i iq4_table_avx2(void) {
    const __m128i t = _mm_loadu_si128((const __m128i *)ls_kvalues_iq4nl);
    return _mm256_set_m128i(t, t);
}

/* 16 bytes of IQ4 indices (Q4_0's element order) · 32 int8 activations -> 16 int16 pair sums. */
static inline __m256i iq4_dot_pairs16(const uint8_t *qs, const int8_t *q8, __m256i table) {
    const __m256i lv = _mm256_shuffle_epi8(table, nibbles_to_bytes(qs));
    return _mm256_maddubs_epi16(_mm256_sign_epi8(lv, lv), _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q8), lv));
}

/* acc + (dw*dx) * (the 8 int32 lanes of IQ4_NL block w · Q8_0 block x) */
static inline __m256 iq4_nl_block_fma(const block_iq4_nl *w, const block_q8_0 *x, __m256i table, __m256 acc) {
    const __m256i s = _mm256_madd_epi16(iq4_dot_pairs16(w->qs, x->qs, table), _mm256_set1_epi16(1));
    const float d = ls_fp16_to_fp32_f16c(w->d) * ls_fp16_to_fp32_f16c(x->d);
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc);
}

// w (n,) IQ4_NL · x (n,) Q8_0 -> float: sum_b (dw*dx) * sum_k T[qw]*qx
// (two accumulators, even / odd blocks of full pairs, as the Q4_0 kernel)
float vec_dot_iq4_nl_q8_0_avx2(int64_t n, const void *vw, const void *vx) {
    const block_iq4_nl *w = vw;
    const block_q8_0 *x = vx;
    const int64_t nb = n / QK4_NL;
    const __m256i table = iq4_table_avx2();
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        acc0 = iq4_nl_block_fma(&w[b], &x[b], table, acc0);
        acc1 = iq4_nl_block_fma(&w[b + 1], &x[b + 1], table, acc1);
    }
    if (b < nb) acc0 = iq4_nl_block_fma(&w[b], &x[b], table, acc0);
    return ls_hsum_ps(_mm256_add_ps(acc0, acc1));
}

// w (n,) IQ4_XS · x (n,) Q8_K -> float: sum_b (dx*d) * sum_s (ls_s-32) * (T[q]·qx)_s
// (per super-block the exact integer sum in 8 int32 lanes: the pair sums of sub-block s times its
// signed scale by one madd; even and odd sub-blocks in two chains)
float vec_dot_iq4_xs_q8_K_avx2(int64_t n, const void *vw, const void *vx) {
    const block_iq4_xs *w = vw;
    const block_q8_K *x = vx;
    const __m256i table = iq4_table_avx2();
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; ++b) {
        __m256i sumi0 = _mm256_setzero_si256(), sumi1 = _mm256_setzero_si256();
        for (int s = 0; s < QK_K / 32; s += 2) {
            const __m256i p0 = iq4_dot_pairs16(w[b].qs + 16 * s, x[b].qs + 32 * s, table);
            const __m256i p1 = iq4_dot_pairs16(w[b].qs + 16 * s + 16, x[b].qs + 32 * s + 32, table);
            sumi0 = _mm256_add_epi32(sumi0, _mm256_madd_epi16(p0, _mm256_set1_epi16((short)ls_iq4_xs_scale(&w[b], s))));
            sumi1 = _mm256_add_epi32(sumi1, _mm256_madd_epi16(p1, _mm256_set1_epi16((short)ls_iq4_xs_scale(&w[b], s + 1))));
        }
        const float d = x[b].d * ls_fp16_to_fp32_f16c(w[b].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sumi0, sumi1)), acc);
    }
    return ls_hsum_ps(acc);
}

/* ---------------------------------------------------------------------------------------------
 * Repacked IQ4_NL / IQ4_XS (x8) weights: as the Q4_K x8 kernels above (int32 lane p is row p of the
 * group, a token's 4 activations broadcast to every lane, tokens 4 at a time, one kernel for any T,
 * each block read once per 4 tokens in memory order), with the levels T[q] signed (-127..113):
 * a line of 32 index bytes becomes two registers of levels by vpshufb through the table (low and
 * high nibbles: elements 4j+e and 16+4j+e of each lane's row), their magnitudes |T| once per line
 * (vpabsb), then per token maddubs(|T|, sign(x, T)) = the exact int16 pair sums T*x + T*x, each at
 * most 2 * 127 * 127 = 32258 (|x| <= 127 as the Q8_0 / Q8_K quantizers make them; T is never 0, so
 * the sign trick loses no product). Two such pairs could reach 64516, past int16: every one is
 * widened to int32 by vpmaddwd before it is added (IQ4_NL: with ones; IQ4_XS: with the sub-block's
 * scale ls - 32 as an int16 pair: at most 2 * 32258 * 32 per lane and half-line, 64 half-lines a
 * block: 1.3e8 < 2^31). The float fold per row is the scalar twin's (fold_iq4_x8 in quants.c):
 * per block b, acc = fma(float(isum_b), d_b * dx_b, acc). */

/* The IQ4_NL x8 block this many blocks ahead is fetched while one is computed (144-byte blocks:
 * ~2.3 KB ahead, as X8_PREFETCH_AHEAD blocks of the 256-element layouts). */
#ifndef IQ4_NL_X8_PREFETCH_AHEAD
#define IQ4_NL_X8_PREFETCH_AHEAD 16
#endif

/* The levels of half a line (the low or the high nibbles of 32 index bytes: 8 lanes x 4 elements)
 * and their magnitudes. For a prompt (T >= X8_TILE_MIN_T) a group's are decoded once into a per-thread
 * buffer, in the order the kernels read them (IQ4_XS, 64 tokens, one thread: 3-9 % faster than
 * decoding them for every 4 tokens; the results are the same). */
typedef struct { __m256i lv, av; } iq4_x8_half;

/* Nibbles hi (0: low, 1: high) of a 32-byte line of IQ4 x8 indices -> their levels and |levels|. */
static inline __attribute__((always_inline)) iq4_x8_half iq4_x8_levels(__m256i raw, const int hi, __m256i table) {
    const __m256i idx = _mm256_and_si256(hi ? _mm256_srli_epi16(raw, 4) : raw, _mm256_set1_epi8(0x0f));
    iq4_x8_half h;
    h.lv = _mm256_shuffle_epi8(table, idx);
    h.av = _mm256_abs_epi8(h.lv);
    return h;
}

/* Half-line hi of the line at q: from the tile (*tl, advanced) when there is one, else decoded. */
static inline __attribute__((always_inline)) iq4_x8_half iq4_x8_half_at(const uint8_t *q, const int hi, __m256i table,
                                                                       const iq4_x8_half **tl) {
    if (*tl) return *(*tl)++;
    return iq4_x8_levels(_mm256_loadu_si256((const __m256i *)q), hi, table);
}

// nb blocks of bsize bytes at g, each with `lines` index lines from byte qoff -> tl[b * 2 * lines + 2l + hi]
static void iq4_x8_tile(int64_t nb, const uint8_t *g, size_t bsize, size_t qoff, int lines, iq4_x8_half *tl) {
    const __m256i table = iq4_table_avx2();
    for (int64_t b = 0; b < nb; ++b)
        for (int l = 0; l < lines; ++l) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(g + (size_t)b * bsize + qoff + 32 * l));
            *tl++ = iq4_x8_levels(raw, 0, table);
            *tl++ = iq4_x8_levels(raw, 1, table);
        }
}

/* Levels h (8 lanes x 4 elements) · the 4 int8 activations at xq (on every lane) -> the int16 pair
 * sums (exact, |.| <= 32258). */
static inline __m256i iq4_x8_pairs(iq4_x8_half h, const int8_t *xq) {
    return _mm256_maddubs_epi16(h.av, _mm256_sign_epi8(bcast_x4(xq), h.lv));
}

/* nt tokens t0.. (a constant 1..4) against one group of IQ4_NL x8 blocks (xs = 0; Q8_0 activations)
 * or IQ4_XS x8 blocks (xs = 1; Q8_K), levels from the tile tl when not NULL -> 8 rows of y. */
static inline __attribute__((always_inline)) void gemm_iq4_x8_group(
        const int xs, int64_t nb, const void *restrict g, const iq4_x8_half *tl, const uint8_t *x, size_t x_stride,
        float *y, size_t ldy, int rows, int64_t t0, const int nt) {
    const size_t bsize = xs ? sizeof(block_iq4_xsx8) : sizeof(block_iq4_nlx8);
    const size_t qoff = xs ? offsetof(block_iq4_xsx8, qs) : offsetof(block_iq4_nlx8, qs);
    const size_t xsize = xs ? sizeof(block_q8_K) : sizeof(block_q8_0);
    const __m256i table = iq4_table_avx2(), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *B = (const uint8_t *)g + (size_t)b * bsize;     /* d[8] first in both layouts */
        if (!tl) x8_prefetch(B + (xs ? X8_PREFETCH_AHEAD : IQ4_NL_X8_PREFETCH_AHEAD) * bsize, bsize);
        const int8_t *xq[4];
        float dx[4];
        __m256i isum[4];
        for (int t = 0; t < nt; ++t) {
            const uint8_t *xt = x + (size_t)(t0 + t) * x_stride + (size_t)b * xsize;
            xq[t] = xs ? ((const block_q8_K *)xt)->qs : ((const block_q8_0 *)xt)->qs;
            dx[t] = xs ? ((const block_q8_K *)xt)->d : ls_fp16_to_fp32_f16c(((const block_q8_0 *)xt)->d);
        }
        for (int s = 0; s < (xs ? 8 : 1); ++s) {
            /* per lane: IQ4_XS the sub-block's scale as an int16 pair, IQ4_NL ones */
            const __m256i m = xs ? x8_dup_i8(((const block_iq4_xsx8 *)B)->sc[s]) : ones;
            for (int j = 0; j < 4; ++j)
                for (int hi = 0; hi < 2; ++hi) {
                    const iq4_x8_half h = iq4_x8_half_at(B + qoff + 128 * s + 32 * j, hi, table, &tl);
                    for (int t = 0; t < nt; ++t) {
                        const __m256i p = _mm256_madd_epi16(iq4_x8_pairs(h, xq[t] + 32 * s + 16 * hi + 4 * j), m);
                        isum[t] = s || j || hi ? _mm256_add_epi32(isum[t], p) : p;
                        LS_KEEP_ORDER(isum[t]);
                    }
                }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)B));
        for (int t = 0; t < nt; ++t)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, _mm256_set1_ps(dx[t])), acc[t]);
    }
    for (int t = 0; t < nt; ++t) store_rows8(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

/* Rows r0..r1-1 (r0 % 8 == 0) of an IQ4 x8 tensor (xs: as gemm_iq4_x8_group), group after group
 * against the T tokens, the group's levels decoded into a tile first when T >= X8_TILE_MIN_T (and
 * the buffer can be had). */
static inline __attribute__((always_inline)) void gemm_iq4_x8_rows(
        const int xs, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / (xs ? QK_K : QK4_NL);
    const int lines = xs ? 32 : 4;
    iq4_x8_half *tl = T >= X8_TILE_MIN_T ? ls_thread_buffer((size_t)nb * 2 * lines * sizeof(iq4_x8_half), 0) : NULL;
    for (int64_t r = r0; r < r1; r += 8) {
        const uint8_t *g = (const uint8_t *)w + (size_t)r * w_stride;
        const int rows = r1 - r < 8 ? (int)(r1 - r) : 8;
        if (tl) {
            iq4_x8_tile(nb, g, xs ? sizeof(block_iq4_xsx8) : sizeof(block_iq4_nlx8),
                        xs ? offsetof(block_iq4_xsx8, qs) : offsetof(block_iq4_nlx8, qs), lines, tl);
            TOKENS_BY_4(T, gemm_iq4_x8_group, xs, nb, g, tl, x, x_stride, y + r, ldy, rows);
        } else {
            TOKENS_BY_4(T, gemm_iq4_x8_group, xs, nb, g, NULL, x, x_stride, y + r, ldy, rows);
        }
    }
}

// W rows r0..r1-1 (n_out, n) in IQ4_NL x8 @ x (T, n) in Q8_0, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over blocks b: acc = fma(float(sum_k T[q_k] x_k), d_b * dx_b, acc)
int64_t gemm_iq4_nl_x8_q8_0_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                 const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    gemm_iq4_x8_rows(0, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
    return r1;
}

// W rows r0..r1-1 (n_out, n) in IQ4_XS x8 @ x (T, n) in Q8_K, any T, r0 % 8 == 0 -> y[t * ldy + r]
//   = fold over super-blocks b: acc = fma(float(sum_s (ls_s - 32) * (T[q]·x)_s), d_b * dx_b, acc)
int64_t gemm_iq4_xs_x8_q8_K_avx2(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                 const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    gemm_iq4_x8_rows(1, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
    return r1;
}
