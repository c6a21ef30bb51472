/* quants.h — the quantized-tensor API the rest of llmstream calls.
 *
 * Type ids are GGML's (they are what GGUF files store). Block layouts live in formats.h, the type
 * table (one row per type: sizes, activation type, kernels per SIMD level) in types.c. Every entry
 * point dispatches at run time to the best kernel of the SIMD level in use — scalar (quants.c),
 * AVX2/FMA (quants_avx2.c) or AVX-512 VNNI (quants_avx512.c, AVX2 where it has none) — the best the
 * CPU has (cpu.c); ls_set_simd() sets another (tests, benchmarks).
 *
 * Matmul protocol (what llama.cpp does too): activations x (n,) are converted once per matmul
 * to the weight type's "vec_dot type" (Q8_0, Q8_1, Q8_K, F16, BF16 or F32) with
 * ls_quantize_row(), then each weight row is dotted with it by ls_vec_dot(). ls_matmul_rows()
 * does that for a range of rows and T tokens with the fastest kernels the level has:
 *   - on AVX-512 VNNI CPUs, for Q4_0 / Q8_0 / Q4_K / Q6_K: a batch kernel for 4+ tokens that
 *     rearranges 16 rows at a time (per call, in a per-thread buffer — the file stays as it is)
 *     so that each int32 lane is one output row, and for 1-3 tokens a kernel giving the same
 *     results bit for bit (quants_avx512.c);
 *   - on AVX2 CPUs (or LLMSTREAM_AVX512=0), for the same 4 types: the same scheme with 8 rows a
 *     register (quants_avx2.c), in the same float order as the AVX-512 kernels (so the same bits);
 *   - for weights repacked at load into an x8 layout (formats.h; ls_repack_rows below): one
 *     kernel for any T reading the 8 interleaved rows in place;
 *   - else 4 tokens at a time through ls_vec_dot_x4 (each weight block decoded once for the 4),
 *     the rest through ls_vec_dot — bit for bit the same as ls_vec_dot for every token.
 * The row-per-lane kernels add a row's block sums in another float order than ls_vec_dot (one FMA
 * per block; their scalar twin is ls_matmul_rows_lanes_ref in quants_impl.h), so for those types
 * ls_matmul_rows and ls_vec_dot agree to float rounding, not bit for bit; ls_matmul_rows with any T
 * agrees with itself bit for bit, which is what batch invariance needs.
 * So a token's results never depend on how many tokens were evaluated with it (batch invariance:
 * KV prefix reuse and seeded generation rely on it). All kernels compute each block's integer sum
 * exactly, as the scalar reference does, and differ from it only in the order of float additions.
 */
#ifndef LLMSTREAM_QUANTS_H
#define LLMSTREAM_QUANTS_H
#include <stddef.h>
#include <stdint.h>

enum ls_type {
    LS_TYPE_F32 = 0, LS_TYPE_F16 = 1,
    LS_TYPE_Q4_0 = 2, LS_TYPE_Q4_1 = 3, LS_TYPE_Q5_0 = 6, LS_TYPE_Q5_1 = 7,
    LS_TYPE_Q8_0 = 8, LS_TYPE_Q8_1 = 9,
    LS_TYPE_Q2_K = 10, LS_TYPE_Q3_K = 11, LS_TYPE_Q4_K = 12, LS_TYPE_Q5_K = 13,
    LS_TYPE_Q6_K = 14, LS_TYPE_Q8_K = 15,
    LS_TYPE_IQ4_NL = 20, LS_TYPE_IQ4_XS = 23,   /* i-quants: non-linear 4-bit levels (formats.h) */
    LS_TYPE_BF16 = 30,
    /* llmstream's repacked layouts (formats.h "x8"), never in files: made by ls_repack_rows */
    LS_TYPE_Q4_K_X8 = 64, LS_TYPE_Q6_K_X8 = 65, LS_TYPE_Q5_K_X8 = 70,
    LS_TYPE_Q2_K_X8 = 71, LS_TYPE_Q3_K_X8 = 72,
    LS_TYPE_Q4_0_X8 = 66, LS_TYPE_Q8_0_X8 = 67,
    LS_TYPE_IQ4_NL_X8 = 68, LS_TYPE_IQ4_XS_X8 = 69,
    LS_TYPE_Q4_1_X8 = 73, LS_TYPE_Q5_0_X8 = 74, LS_TYPE_Q5_1_X8 = 75,
};

enum ls_simd { LS_SIMD_SCALAR = 0, LS_SIMD_AVX2 = 1, LS_SIMD_AVX512 = 2 };

/* 1 when the type is one llmstream can read (weights or activations), else 0. */
int     ls_type_known(int type);
/* Elements per block (1 for F32/F16/BF16) and bytes per block. 0 for an unknown type. */
int64_t ls_blck_size(int type);
size_t  ls_type_size(int type);
/* Bytes of a row of n elements (n must be a multiple of the block size). */
size_t  ls_row_size(int type, int64_t n);
/* The type activations are converted to before ls_vec_dot with weights of `type`; -1 if unknown. */
int     ls_vec_dot_type(int type);

/* x (n,) f32 -> y: one row in `type`. Defined for the vec_dot types: F32, F16, BF16, Q8_0, Q8_1, Q8_K. */
void    ls_quantize_row(int type, const float *x, void *y, int64_t n);
/* x: one row of n elements in `type` -> y (n,) f32. Defined for every known type. */
void    ls_dequantize_row(int type, const void *x, float *y, int64_t n);
/* sum_i w[i] * x[i] over n elements: w one row in `type`, x one row in ls_vec_dot_type(type). */
float   ls_vec_dot(int type, int64_t n, const void *w, const void *x);

/* One weight row w (n,) in `type` against 4 activation rows x_t (each n elements in
 * ls_vec_dot_type(type), x_stride bytes apart) -> y[t] = w · x_t for t = 0..3. The weight blocks are
 * decoded once for the 4 rows (a dedicated kernel where the SIMD table has one, else 4 ls_vec_dot). */
void    ls_vec_dot_x4(int type, int64_t n, const void *w, const void *x, size_t x_stride, float *y);
/* Rows r0..r1-1 of W (n_out, n) in `type` (w_stride bytes apart) @ x (T, n) already converted to the
 * vec_dot type (x_stride bytes apart) -> y[t * ldy + r] for t < T, r0 <= r < r1. With the type's
 * row-per-lane kernels where the level has them (see above), else tokens 4 at a time through
 * ls_vec_dot_x4 (each weight block decoded once per 4 tokens), the rest one by one.
 * Single-threaded: callers split the rows between threads. */
void    ls_matmul_rows(int type, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                       const void *x, size_t x_stride, int64_t T, float *y, size_t ldy);

/* Repacking (formats.h, "Repacked layouts"): the x8 type weights of `type` can be rewritten to,
 * else -1. A tensor in an x8 type is used by ls_matmul_rows exactly as one in its source type (rows
 * r0..r1 with r0 a multiple of 8, w_stride = ls_row_size(x8 type, n)) and gives the same bits.
 * Types without row-per-lane kernels on the file's layout (Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS, Q4_1,
 * Q5_0, Q5_1): their
 * x8 kernels agree with ls_vec_dot to float rounding (the block sums added in another order). */
int     ls_repack_type(int type);
/* Bytes of a tensor of `rows` rows of n elements in the x8 type of `type` (rows rounded up to 8). */
size_t  ls_repack_size(int type, int64_t rows, int64_t n);
/* Groups g0..g1-1 (rows 8g .. 8g+7) of W (rows, n) in `type` (w_stride bytes apart) -> the same
 * groups of dst, laid out in ls_repack_type(type); rows >= `rows` are written as zeros. Returns 0
 * (writing nothing) for a type without an x8 layout. Groups are independent: split them freely. */
int     ls_repack_rows(int type, int64_t n, const void *w, size_t w_stride, int64_t rows,
                       int64_t g0, int64_t g1, void *dst);

/* GGML's name of a type id (also of the types llmstream does not compute, and llmstream's name of
 * an x8 layout), or NULL for an id that names no type. */
const char *ls_type_name(int type);
/* 1 for an x8 layout (formats.h "Repacked layouts"). */
int     ls_type_is_x8(int type);
/* 1 for an activation type: one ls_quantize_row produces (F32, F16, BF16, Q8_0, Q8_1, Q8_K). */
int     ls_type_quantizes(int type);

/* SIMD level in use (enum ls_simd); ls_set_simd returns the level actually set: the highest the CPU
 * has at or below `level` (AVX2 needs AVX2/FMA/F16C, AVX-512 also AVX512F/BW/VL/VNNI). At start-up:
 * the best the CPU has, LLMSTREAM_SIMD=scalar|avx2|avx512 to choose, LLMSTREAM_AVX512=0 for at
 * most AVX2. */
int     ls_get_simd(void);
int     ls_set_simd(int level);
int     ls_cpu_has_avx2(void);
int     ls_cpu_has_avx512(void);
int     ls_simd_emulated(void);   /* 1 in a test build whose AVX-512 kernels run through SIMDe */

#endif
