/* quants_impl.h — internal to quants.c / quants_avx2.c / quants_avx512.c / cpu.c: kernel prototypes
 * and the per-type dispatch table. Nothing outside those files should include it; use quants.h.
 *
 * Kernel conventions: n is the element count, a multiple of the type's block size (the ls_* entry
 * points and the Cython wrappers check that); w / x / y never alias.
 */
#ifndef LLMSTREAM_QUANTS_IMPL_H
#define LLMSTREAM_QUANTS_IMPL_H
#include <stdint.h>
#include "formats.h"
#include "quants.h"

#define LS_TYPE_SLOTS 76    /* type ids are < 76 (GGML's < 31, BF16 = 30; the x8 layouts 64..75) */

typedef float (*ls_vec_dot_fn)(int64_t n, const void *w, const void *x);
typedef void (*ls_quantize_fn)(const float *x, void *y, int64_t n);
typedef void (*ls_dequantize_fn)(const void *x, float *y, int64_t n);
/* One weight row against 4 activation rows (x_stride bytes apart): y[t] = w · x_t, t = 0..3. */
typedef void (*ls_vec_dot_x4_fn)(int64_t n, const void *w, const void *x, size_t x_stride, float *y);

/* A matmul on rows r0..r1-1 (the signature of ls_matmul_rows); returns r1, or r0 when it cannot
 * run (out of memory, unsupported n). */
typedef int64_t (*ls_matmul_rows_fn)(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy);

/* SIMD levels: quants.h's enum ls_simd (0 scalar, 1 AVX2/FMA/F16C, 2 AVX-512 F/BW/VL/VNNI). */
#define LS_SIMD_LEVELS 3

/* One row per type (types.c, ls_types[type id]), as ggml's type traits: what the type is, and its
 * kernels at each SIMD level ([0] scalar, [1] AVX2, [2] AVX-512; NULL where that level has none:
 * it then uses the best lower level's). Adding a type means its formats.h entry, its row and its
 * kernels; everything else (dispatch, the Python type tables, gguf's) is derived from the rows. */
typedef struct {
    const char *name;          /* GGML's name, or llmstream's for an x8 layout; NULL: no type */
    int64_t blck;              /* elements per block; 0: a GGML type llmstream does not compute */
    size_t size;               /* bytes per block (an x8 layout: per row, 1/8 of its 8-row block) */
    int vec_dot_type;          /* the activations' type for vec_dot / matmul with these weights */
    int x8;                    /* this type's repacked layout (formats.h), 0 if none; 1: it is one */
    ls_dequantize_fn dequantize[LS_SIMD_LEVELS];
    ls_quantize_fn quantize[LS_SIMD_LEVELS];      /* activation (vec_dot) types */
    ls_vec_dot_fn vec_dot[LS_SIMD_LEVELS];
    ls_vec_dot_x4_fn vec_dot_x4[LS_SIMD_LEVELS];  /* one weight row, 4 tokens; NULL: 4 vec_dots */
    ls_matmul_rows_fn gemm[LS_SIMD_LEVELS];       /* a row per lane, 4+ tokens (x8: any number) */
    ls_matmul_rows_fn gemv[LS_SIMD_LEVELS];       /* a row per lane, 1-3 tokens, gemm's bits */
} ls_type_traits;

extern const ls_type_traits ls_types[LS_TYPE_SLOTS];   /* types.c */

/* A level's kernels resolved from ls_types (cpu.c builds one per level at start-up): every slot
 * holds the best kernel at or below the level; gemm and gemv always come as a pair from one level. */
typedef struct {
    ls_vec_dot_fn vec_dot[LS_TYPE_SLOTS];       /* indexed by the weight type */
    ls_quantize_fn quantize[LS_TYPE_SLOTS];     /* indexed by the activation (vec_dot) type */
    ls_dequantize_fn dequantize[LS_TYPE_SLOTS];
    ls_vec_dot_x4_fn vec_dot_x4[LS_TYPE_SLOTS]; /* indexed by the weight type; NULL: 4 vec_dots */
    ls_matmul_rows_fn gemm[LS_TYPE_SLOTS];
    ls_matmul_rows_fn gemv[LS_TYPE_SLOTS];
} ls_kernel_table;

/* cpu.c: the table of the level in use (an atomic load; changed only by ls_set_simd). */
const ls_kernel_table *ls_kernels(void);
/* cpu.c: 1 when the AVX2 level has its own (non-fallback) kernel of that kind for `type`. */
int ls_simd_has_vec_dot(int type);
int ls_simd_has_quantize(int type);
int ls_simd_has_vec_dot_x4(int type);
/* cpu.c: 1 when the AVX2 level has its own gemm / gemv pair (a row per lane) for weights of `type`. */
int ls_simd_has_gemm(int type);
/* cpu.c: 1 when weights of `type` are multiplied by AVX-512 kernels at the level in use. */
int ls_matmul_uses_avx512(int type);

/* ---- the kernels of the rows (types.c), by file ---- */
typedef float ls_vec_dot_k(int64_t n, const void *w, const void *x);
typedef void ls_quantize_k(const float *x, void *y, int64_t n);
typedef void ls_dequantize_k(const void *x, float *y, int64_t n);
typedef void ls_vec_dot_x4_k(int64_t n, const void *w, const void *x, size_t x_stride, float *y);
typedef int64_t ls_matmul_rows_k(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                 const void *x, size_t x_stride, int64_t T, float *y, size_t ldy);
/* quants.c: the scalar twins of the x8 kernels */
ls_matmul_rows_k matmul_rows_q4_K_x8_q8_K, matmul_rows_q5_K_x8_q8_K, matmul_rows_q6_K_x8_q8_K,
                 matmul_rows_q2_K_x8_q8_K, matmul_rows_q3_K_x8_q8_K, matmul_rows_q4_0_x8_q8_0,
                 matmul_rows_q8_0_x8_q8_0, matmul_rows_iq4_nl_x8_q8_0, matmul_rows_iq4_xs_x8_q8_K,
                 matmul_rows_q4_1_x8_q8_1, matmul_rows_q5_0_x8_q8_0, matmul_rows_q5_1_x8_q8_1;
/* quants_avx2.c */
ls_vec_dot_k vec_dot_f32_f32_avx2, vec_dot_f16_f16_avx2, vec_dot_bf16_bf16_avx2, vec_dot_q4_0_q8_0_avx2,
             vec_dot_q4_1_q8_1_avx2, vec_dot_q5_0_q8_0_avx2, vec_dot_q5_1_q8_1_avx2, vec_dot_q8_0_q8_0_avx2,
             vec_dot_q2_K_q8_K_avx2, vec_dot_q3_K_q8_K_avx2, vec_dot_q4_K_q8_K_avx2, vec_dot_q5_K_q8_K_avx2,
             vec_dot_q6_K_q8_K_avx2, vec_dot_iq4_nl_q8_0_avx2, vec_dot_iq4_xs_q8_K_avx2;
ls_quantize_k quantize_row_f16_avx2, quantize_row_bf16_avx2, quantize_row_q8_0_avx2, quantize_row_q8_1_avx2,
              quantize_row_q8_K_avx2;
ls_dequantize_k dequantize_row_f16_avx2;
ls_vec_dot_x4_k vec_dot_q4_0_q8_0_x4_avx2, vec_dot_q8_0_q8_0_x4_avx2, vec_dot_q4_K_q8_K_x4_avx2,
                vec_dot_q6_K_q8_K_x4_avx2;
ls_matmul_rows_k gemm_q4_0_q8_0_avx2, gemv_q4_0_q8_0_avx2, gemm_q8_0_q8_0_avx2, gemv_q8_0_q8_0_avx2,
                 gemm_q4_K_q8_K_avx2, gemv_q4_K_q8_K_avx2, gemm_q6_K_q8_K_avx2, gemv_q6_K_q8_K_avx2,
                 gemm_q4_K_x8_q8_K_avx2, gemm_q5_K_x8_q8_K_avx2, gemm_q6_K_x8_q8_K_avx2,
                 gemm_q2_K_x8_q8_K_avx2, gemm_q3_K_x8_q8_K_avx2, gemm_q4_0_x8_q8_0_avx2,
                 gemm_q8_0_x8_q8_0_avx2, gemm_iq4_nl_x8_q8_0_avx2, gemm_iq4_xs_x8_q8_K_avx2,
                 gemm_q4_1_x8_q8_1_avx2, gemm_q5_0_x8_q8_0_avx2, gemm_q5_1_x8_q8_1_avx2;
/* quants_avx512.c */
ls_matmul_rows_k gemm_q4_0_q8_0_avx512, gemv_q4_0_q8_0_avx512, gemm_q8_0_q8_0_avx512, gemv_q8_0_q8_0_avx512,
                 gemm_q4_K_q8_K_avx512, gemv_q4_K_q8_K_avx512, gemm_q6_K_q8_K_avx512, gemv_q6_K_q8_K_avx512;

/* ---- scalar reference (quants.c) ---- */
/* The scalar twin of the row-per-lane matmul kernels (gemm / gemv slots) of `type`, same signature as
 * ls_matmul_rows and the same bits as those kernels; returns 0 (doing nothing) for types without one. */
int ls_matmul_rows_lanes_ref(int type, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                             const void *x, size_t x_stride, int64_t T, float *y, size_t ldy);

void dequantize_row_f32(const void *x, float *y, int64_t n);
void dequantize_row_f16(const void *x, float *y, int64_t n);
void dequantize_row_bf16(const void *x, float *y, int64_t n);
void dequantize_row_q4_0(const void *x, float *y, int64_t n);
void dequantize_row_q4_1(const void *x, float *y, int64_t n);
void dequantize_row_q5_0(const void *x, float *y, int64_t n);
void dequantize_row_q5_1(const void *x, float *y, int64_t n);
void dequantize_row_q8_0(const void *x, float *y, int64_t n);
void dequantize_row_q8_1(const void *x, float *y, int64_t n);
void dequantize_row_q2_K(const void *x, float *y, int64_t n);
void dequantize_row_q3_K(const void *x, float *y, int64_t n);
void dequantize_row_q4_K(const void *x, float *y, int64_t n);
void dequantize_row_q5_K(const void *x, float *y, int64_t n);
void dequantize_row_q6_K(const void *x, float *y, int64_t n);
void dequantize_row_q8_K(const void *x, float *y, int64_t n);

void quantize_row_f32(const float *x, void *y, int64_t n);
void quantize_row_f16(const float *x, void *y, int64_t n);
void quantize_row_bf16(const float *x, void *y, int64_t n);
void quantize_row_q8_0(const float *x, void *y, int64_t n);
void quantize_row_q8_1(const float *x, void *y, int64_t n);
void quantize_row_q8_K(const float *x, void *y, int64_t n);

float vec_dot_f32_f32(int64_t n, const void *w, const void *x);
float vec_dot_f16_f16(int64_t n, const void *w, const void *x);
float vec_dot_bf16_bf16(int64_t n, const void *w, const void *x);
float vec_dot_q4_0_q8_0(int64_t n, const void *w, const void *x);
float vec_dot_q4_1_q8_1(int64_t n, const void *w, const void *x);
float vec_dot_q5_0_q8_0(int64_t n, const void *w, const void *x);
float vec_dot_q5_1_q8_1(int64_t n, const void *w, const void *x);
float vec_dot_q8_0_q8_0(int64_t n, const void *w, const void *x);
float vec_dot_q2_K_q8_K(int64_t n, const void *w, const void *x);
float vec_dot_q3_K_q8_K(int64_t n, const void *w, const void *x);
float vec_dot_q4_K_q8_K(int64_t n, const void *w, const void *x);
float vec_dot_q5_K_q8_K(int64_t n, const void *w, const void *x);
float vec_dot_q6_K_q8_K(int64_t n, const void *w, const void *x);

/* IQ4_NL / IQ4_XS (quants.c, section "IQ4 i-quants") */
void dequantize_row_iq4_nl(const void *x, float *y, int64_t n);
void dequantize_row_iq4_xs(const void *x, float *y, int64_t n);
float vec_dot_iq4_nl_q8_0(int64_t n, const void *w, const void *x);
float vec_dot_iq4_xs_q8_K(int64_t n, const void *w, const void *x);

/* The signed 6-bit scale ls[s] - 32 (-32..31) of sub-block s (0..7) of an IQ4_XS block (formats.h). */
static inline int ls_iq4_xs_scale(const block_iq4_xs *b, int s) {
    return (((b->scales_l[s / 2] >> (4 * (s % 2))) & 15) | (((b->scales_h >> (2 * s)) & 3) << 4)) - 32;
}

/* Shared by the scalar and SIMD kernels: unpack the 12-byte 6-bit scales/mins of Q4_K / Q5_K into
 * sc[8] and m[8]; and the 12-byte 6-bit scales of Q3_K into sc[16] (still biased by +32). */
static inline void ls_unpack_scales_k4(const uint8_t *q, uint8_t sc[8], uint8_t m[8]) {
    for (int s = 0; s < 4; ++s) {
        sc[s] = q[s] & 63;
        m[s] = q[s + 4] & 63;
    }
    for (int s = 4; s < 8; ++s) {
        sc[s] = (uint8_t)((q[s + 4] & 15) | ((q[s - 4] >> 6) << 4));
        m[s] = (uint8_t)((q[s + 4] >> 4) | ((q[s] >> 6) << 4));
    }
}

static inline void ls_unpack_scales_q3k(const uint8_t *q, uint8_t sc[16]) {
    for (int s = 0; s < 16; ++s)
        sc[s] = (uint8_t)(((q[s % 8] >> (4 * (s / 8))) & 15) | (((q[8 + s % 4] >> (2 * (s / 4))) & 3) << 4));
}


/* ---- shared by the SIMD files (quants_avx2.c, quants_avx512.c), which are compiled for AVX2 and
 * F16C (their target pragmas come before this include); other files do not see these. ---- */
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

static inline float ls_fp16_to_fp32_f16c(ls_fp16_t h) { return _cvtsh_ss(h); }

/* A per-thread scratch buffer of at least `bytes` (64-byte aligned), one of 3 slots (`which`) per
 * thread and per file including this; kept and grown, never shrunk. NULL when out of memory (the
 * kernels then decline, see ls_matmul_rows). */
static inline void *ls_thread_buffer(size_t bytes, int which) {
    static __thread void *buf[3];
    static __thread size_t cap[3];
    if (bytes > cap[which]) {
        free(buf[which]);
        buf[which] = aligned_alloc(64, (bytes + 63) / 64 * 64);
        cap[which] = buf[which] ? bytes : 0;
    }
    return buf[which];
}

/* Sum of the 8 float lanes (a fixed order: high half onto low, then pairs). */
static inline float ls_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 12 packed 6-bit scales and mins of Q4_K / Q5_K as 16 int16: lanes 0-7 the scales, 8-15 the
 * mins (same unpacking as ls_unpack_scales_k4, four bytes at a time). */
static inline __m256i ls_unpack_scales_mins_k4_avx2(const uint8_t *q) {
    uint32_t w[3];
    memcpy(w, q, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const uint32_t sc_lo = w[0] & m6;
    const uint32_t sc_hi = (w[2] & m4) | (((w[0] >> 6) & m2) << 4);
    const uint32_t mn_lo = w[1] & m6;
    const uint32_t mn_hi = ((w[2] >> 4) & m4) | (((w[1] >> 6) & m2) << 4);
    return _mm256_cvtepu8_epi16(_mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo));
}

/* Q6_K quants (0..63) from 32 bytes each of ql (l0 = L[l], l1 = L[l + 32]) and qh (hb = H[l]), in
 * Q6_K's order (formats.h): q[c] holds the elements of quarter c (l, 32 + l, 64 + l, 96 + l). */
static inline __attribute__((always_inline)) void ls_q6_K_quants_avx2(__m256i l0, __m256i l1, __m256i hb, __m256i q[4]) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(0x03);
    q[0] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(hb, two), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), two), 4));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), two), 4));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), two), 4));
}

/* The quants (0..63) of elements 128h .. 128h+127 of a Q6_K block, 32 a register, in element order. */
static inline __attribute__((always_inline)) void ls_q6_K_quants_half_avx2(const block_q6_K *blk, int h, __m256i q[4]) {
    ls_q6_K_quants_avx2(_mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h)),
                        _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h + 32)),
                        _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h)), q);
}
#endif

#endif
