/* quants_avx512.c — AVX-512 (F, BW, VL, VNNI) matmul kernels for Q4_0, Q8_0, Q4_K and Q6_K weights.
 *
 * Only this file is compiled for AVX-512 (the pragma below); the kernels are the AVX-512 column of
 * the type table (types.c), the SIMD_AVX512 level, used when the CPU has AVX512F/BW/VL/VNNI (and
 * LLMSTREAM_AVX512 is not 0); every other kernel of that level is the AVX2 one. Two kinds, used
 * by ls_matmul_rows:
 *   gemm (4+ tokens): 16 rows at a time are rearranged so that each int32 lane is one output row;
 *     one vpdpbusd then does 64 multiply-adds for 16 rows and the float scaling is once per block
 *     for 16 rows;
 *   gemv (1-3 tokens): the same results bit for bit — the same integer block sums (exact) and the
 *     same float recurrence per row and block, in the same order — without rearranging the rows
 *     (except Q4_0), so that a token's logits do not depend on how it was batched.
 * The integer block sums are exactly those of the scalar kernels; only the order of the float
 * additions differs from them. Pinned to the scalar vec_dot (and gemm to gemv, bit for bit) by
 * tests/test_quants_simd.py.
 */
#ifdef LS_EMULATE_AVX512   /* test builds only: the same code on an AVX2 CPU (avx512_emulated.h) */
#pragma GCC target("avx2,fma,f16c")
#include "avx512_emulated.h"
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#include <immintrin.h>
#endif
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "quants_impl.h"

/* Index vector for vpermw: int16 lane i <- lane first + i / per (per lanes of each scale). */
static inline __m512i scale_index(int first, int per) {
    int16_t idx[32];
    for (int i = 0; i < 32; ++i) idx[i] = (int16_t)(first + i / per);
    return _mm512_loadu_si512(idx);
}

/* ---------------------------------------------------------------------------------------------
 * Q8_0 activations packed for the Q8_0 decode kernel (gemv_q8_0_q8_0_avx512): per pair of blocks
 * (64 elements) the 64 quants, the two fp16 scales as floats (each repeated over the int32 lanes of
 * its block) and the offset correction -128 * sum(q) of each block in that block's first lane.
 * vpdpbusd multiplies unsigned by signed bytes, so Q8_0 weights go in as q + 128:
 *   sum_k q_k x_k = vpdpbusd(q + 128, x) - 128 * sum_k x_k        (exact in int32). */

typedef struct {
    int8_t qs[64];        /* blocks 2p (bytes 0-31) and 2p+1 (32-63) */
    float d[16];          /* fp16(d) of block 2p in lanes 0-7, of 2p+1 in lanes 8-15 */
    int32_t corr[16];     /* lane 0: -128 * sum(qs of block 2p); lane 8: of 2p+1; else 0 */
} q8_0_pair_rec;
_Static_assert(sizeof(q8_0_pair_rec) == 192, "packed record must be 192 bytes");

static inline int block_sum_i8(const int8_t *q) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    h = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 1));
    return _mm_cvtsi128_si32(h);
}

// x (n,) in Q8_0 -> packed records (n/64 pairs)
static void pack_q8_0(int64_t n, const block_q8_0 *x, q8_0_pair_rec *o) {
    for (int64_t p = 0; p < n / 64; ++p, ++o) {
        const block_q8_0 *b0 = &x[2 * p], *b1 = &x[2 * p + 1];
        _mm256_storeu_si256((__m256i *)o->qs, _mm256_loadu_si256((const __m256i *)b0->qs));
        _mm256_storeu_si256((__m256i *)(o->qs + 32), _mm256_loadu_si256((const __m256i *)b1->qs));
        _mm256_storeu_ps(o->d, _mm256_set1_ps(ls_fp16_to_fp32_f16c(b0->d)));
        _mm256_storeu_ps(o->d + 8, _mm256_set1_ps(ls_fp16_to_fp32_f16c(b1->d)));
        _mm512_storeu_si512(o->corr, _mm512_setzero_si512());
        o->corr[0] = -(block_sum_i8(b0->qs) << 7);
        o->corr[8] = -(block_sum_i8(b1->qs) << 7);
    }
}

/* The 64 quants of Q8_0 blocks b, b+1 plus 128 (unsigned), natural order. */
static inline __m512i q8_0_pair_u8(const block_q8_0 *b) {
    return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs)),
                                               _mm256_loadu_si256((const __m256i *)b[1].qs), 1),
                            _mm512_set1_epi8((char)0x80));
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
static inline void transpose16x4_regs(const __m512i a[4], __m512i out[4]) {
    const __m512i t01l = _mm512_unpacklo_epi32(a[0], a[1]), t01h = _mm512_unpackhi_epi32(a[0], a[1]);
    const __m512i t23l = _mm512_unpacklo_epi32(a[2], a[3]), t23h = _mm512_unpackhi_epi32(a[2], a[3]);
    out[0] = _mm512_unpacklo_epi64(t01l, t23l);
    out[1] = _mm512_unpackhi_epi64(t01l, t23l);
    out[2] = _mm512_unpacklo_epi64(t01h, t23h);
    out[3] = _mm512_unpackhi_epi64(t01h, t23h);
}

/* transpose16x4_regs, stored to out[0..3] */
static inline void transpose16x4(const __m512i a[4], uint32_t out[4][16]) {
    __m512i o[4];
    transpose16x4_regs(a, o);
    for (int m = 0; m < 4; ++m) _mm512_storeu_si512(out[m], o[m]);
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

/* The lanes of a tile's result whose rows are among the group's first `rows`: lane p -> y[tile_row(p)]. */
static inline void store_tile_rows(float *y, __m512 acc, int rows) {
    float o[16];
    _mm512_storeu_ps(o, acc);
    for (int p = 0; p < 16; ++p)
        if (tile_row(p) < rows) y[tile_row(p)] = o[p];
}

/* acc[t] = vpdpbusd(acc[t], q[g], token t's 4 activations xq[t] + off + 4g on every lane) for the
 * element groups g = 0..ng-1 of a tile (16 rows' 4 unsigned quants in q[g]), tokens t = 0..nt-1. */
static inline __attribute__((always_inline)) void dpbusd_groups(
        const uint32_t (*q)[16], const int ng, const int8_t *const *xq, const int off, const int nt,
        __m512i acc[4]) {
    for (int g = 0; g < ng; ++g) {
        const __m512i qg = _mm512_loadu_si512(q[g]);
        for (int t = 0; t < nt; ++t) {
            int32_t xg;
            memcpy(&xg, xq[t] + off + 4 * g, 4);
            acc[t] = _mm512_dpbusd_epi32(acc[t], qg, _mm512_set1_epi32(xg));
        }
    }
}

/* isum[t] += sc * sum_g vpdpbusd(q[g], x_t,g) over the ng groups of one sub-block (sc: the 16 rows'
 * scales of that sub-block, xq[t] + off: its activations). */
static inline __attribute__((always_inline)) void gemm_subblock(
        const uint32_t (*q)[16], const int ng, const int8_t *const *xq, const int off,
        const int32_t *sc, const int nt, __m512i isum[4]) {
    __m512i si[4];
    for (int t = 0; t < nt; ++t) si[t] = _mm512_setzero_si512();
    dpbusd_groups(q, ng, xq, off, nt, si);
    const __m512i s = _mm512_loadu_si512(sc);
    for (int t = 0; t < nt; ++t) isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(si[t], s));
}

// W rows rp[0..15] (Q4_0), blocks 0..nb-1 -> tiles[nb]
static void tile_q4_0_rows16(int64_t nb, const uint8_t *const *rp, q4_0_tile16 *tiles) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
        __m512i a[4];   /* a[k]: rows 4k..4k+3, 16 quant bytes each, one 128-bit lane per row */
        for (int k = 0; k < 4; ++k) a[k] = load4rows(rp + 4 * k, (size_t)b * sizeof(block_q4_0) + offsetof(block_q4_0, qs));
        for (int half = 0; half < 2; ++half) {        /* low nibbles: groups 0-3; high: 4-7 */
            __m512i v[4];
            for (int k = 0; k < 4; ++k) v[k] = _mm512_and_si512(half ? _mm512_srli_epi16(a[k], 4) : a[k], low4);
            transpose16x4(v, &tiles[b].q[4 * half]);
        }
        for (int p = 0; p < 16; ++p)
            tiles[b].d[p] = ls_fp16_to_fp32_f16c(((const block_q4_0 *)rp[tile_row(p)])[b].d);
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
        const int8_t *xq[4];
        for (int t = 0; t < nt; ++t) {
            ai[t] = _mm512_set1_epi32(side[(t0 + t) * nb + b].corr);
            xq[t] = ((const block_q8_0 *)(x + (size_t)(t0 + t) * x_stride) + b)->qs;
        }
        dpbusd_groups(tl->q, 8, xq, 0, nt, ai);
        const __m512 dw = _mm512_loadu_ps(tl->d);
        for (int t = 0; t < nt; ++t)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[t]), _mm512_mul_ps(dw, _mm512_set1_ps(side[(t0 + t) * nb + b].d)), acc[t]);
    }
    for (int t = 0; t < nt; ++t) store_tile_rows(y + (size_t)(t0 + t) * ldy, acc[t], rows);
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
            tiles[b].d[p] = ls_fp16_to_fp32_f16c(((const block_q8_0 *)rp[tile_row(p)])[b].d);
    }
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
            tl->d[p] = ls_fp16_to_fp32_f16c(blk->d);
            tl->dmin[p] = ls_fp16_to_fp32_f16c(blk->dmin);
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
        for (int sb = 0; sb < 8; ++sb) gemm_subblock(&tl->q[8 * sb], 8, xq, 32 * sb, tl->sc[sb], nt, isum);
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
    for (int t = 0; t < nt; ++t) store_tile_rows(y + (size_t)(t0 + t) * ldy, acc[t], rows);
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
    uint8_t qs[16][QK_K];     /* the 16 rows' quants (0..63) in element order */
    for (int64_t b = 0; b < nb; ++b) {
        q6_K_tile16 *tl = &tiles[b];
        for (int r = 0; r < 16; ++r) {
            const block_q6_K *blk = (const block_q6_K *)rp[r] + b;
            for (int h = 0; h < 2; ++h) {
                __m256i q[4];
                ls_q6_K_quants_half_avx2(blk, h, q);
                for (int k = 0; k < 4; ++k) _mm256_storeu_si256((__m256i *)(qs[r] + 128 * h + 32 * k), q[k]);
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
            tl->d[p] = ls_fp16_to_fp32_f16c(blk->d);
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
        const int8_t *xq[4];
        __m512i isum[4], off[4];
        for (int t = 0; t < nt; ++t) {
            xb[t] = (const block_q8_K *)(x + (size_t)(t0 + t) * x_stride) + b;
            xq[t] = xb[t]->qs;
            isum[t] = _mm512_setzero_si512();
            off[t] = _mm512_setzero_si512();
        }
        for (int sb = 0; sb < 16; ++sb) gemm_subblock(&tl->q[4 * sb], 4, xq, 16 * sb, tl->sc[sb], nt, isum);
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
    for (int t = 0; t < nt; ++t) store_tile_rows(y + (size_t)(t0 + t) * ldy, acc[t], rows);
}

/* ---------------------------------------------------------------------------------------------
 * The batch kernels' entry points: per token and block the activations' side data, then one loop
 * for every weight type: each group of 16 rows from r0 is rearranged into tiles once and run against
 * the tokens 4 at a time, the rest one by one. */

enum gemm_kind { GEMM_Q4_0, GEMM_Q8_0, GEMM_Q4_K, GEMM_Q6_K };

/* kind's tile kernel (constant-folded: every caller passes a constant kind) */
static inline __attribute__((always_inline)) void gemm_tile(
        const enum gemm_kind kind, int64_t nb, const void *tiles, const uint8_t *x, size_t x_stride,
        const void *side, int64_t t0, const int nt, float *y, size_t ldy, int rows) {
    if (kind == GEMM_Q4_K) gemm_q4_K_tile(nb, tiles, x, x_stride, side, t0, nt, y, ldy, rows);
    else if (kind == GEMM_Q6_K) gemm_q6_K_tile(nb, tiles, x, x_stride, t0, nt, y, ldy, rows);
    else gemm_q4_0_tile(nb, tiles, x, x_stride, side, t0, nt, y, ldy, rows);
}

// W rows r0..r1-1 of `kind` @ x (T, n) -> y[t * ldy + r], the last group possibly partial; returns r1
static inline __attribute__((always_inline)) int64_t gemm_groups16(
        const enum gemm_kind kind, int64_t nb, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        void *tiles, const void *side, const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    for (int64_t r = r0; r < r1; r += 16) {
        const uint8_t *rp[16];
        const int rows = row_ptrs(w, w_stride, r, r1, rp, 1);
        switch (kind) {
        case GEMM_Q4_0: tile_q4_0_rows16(nb, rp, tiles); break;
        case GEMM_Q8_0: tile_q8_0_rows16(nb, rp, tiles); break;
        case GEMM_Q4_K: tile_q4_K_rows16(nb, rp, tiles); break;
        case GEMM_Q6_K: tile_q6_K_rows16(nb, rp, tiles); break;
        }
        int64_t t = 0;
        for (; t + 4 <= T; t += 4) gemm_tile(kind, nb, tiles, x, x_stride, side, t, 4, y + r, ldy, rows);
        for (; t < T; ++t) gemm_tile(kind, nb, tiles, x, x_stride, side, t, 1, y + r, ldy, rows);
    }
    return r1;
}

/* Q4_0 / Q8_0 weights @ x (T, n) Q8_0 -> y[t * ldy + r] for whole groups of 16 rows from r0; returns
 * the first row not done. Offset c = 1 << shift (8 for Q4_0's raw nibbles, 128 for Q8_0 + 128). */
static inline __attribute__((always_inline)) int64_t gemm_q32_q8_0(
        int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1, const void *x, size_t x_stride,
        int64_t T, float *y, size_t ldy, const enum gemm_kind kind, int shift) {
    const int64_t nb = n / 32;
    q4_0_tile16 *tiles = ls_thread_buffer((size_t)nb * sizeof(q4_0_tile16), 0);
    q8_0_side *side = ls_thread_buffer((size_t)(T * nb) * sizeof(q8_0_side), 1);
    if (!tiles || !side) return r0;
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_0 *xb = (const block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride);
        for (int64_t b = 0; b < nb; ++b) {
            side[t * nb + b].d = ls_fp16_to_fp32_f16c(xb[b].d);
            side[t * nb + b].corr = -(block_sum_i8(xb[b].qs) << shift);
        }
    }
    return gemm_groups16(kind, nb, w, w_stride, r0, r1, tiles, side, x, x_stride, T, y, ldy);
}

// W rows r0.. (Q4_0) @ x (T, n) Q8_0 -> y[t * ldy + r]: sum_b (dw*dx) * (vpdpbusd(q, x) - 8 * sum(x))
int64_t gemm_q4_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemm_q32_q8_0(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy, GEMM_Q4_0, 3);
}

// W rows r0.. (Q8_0) @ x (T, n) Q8_0 -> y[t * ldy + r]: sum_b (dw*dx) * (vpdpbusd(q + 128, x) - 128 * sum(x))
int64_t gemm_q8_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemm_q32_q8_0(n, w, w_stride, r0, r1, x, x_stride, T, y, ldy, GEMM_Q8_0, 7);
}

// W rows r0.. (Q4_K) @ x (T, n) Q8_K -> y[t * ldy + r], whole groups of 16 rows; returns the first
// row not done (r1: every row, the last group possibly partial)
int64_t gemm_q4_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    q4_K_tile16 *tiles = ls_thread_buffer((size_t)nb * sizeof(q4_K_tile16), 0);
    q8_K_side *side = ls_thread_buffer((size_t)(T * nb) * sizeof(q8_K_side), 1);
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
    return gemm_groups16(GEMM_Q4_K, nb, w, w_stride, r0, r1, tiles, side, x, x_stride, T, y, ldy);
}

// W rows r0.. (Q6_K) @ x (T, n) Q8_K -> y[t * ldy + r], whole groups of 16 rows; returns the first
// row not done (r1: every row, the last group possibly partial)
int64_t gemm_q6_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK_K;
    q6_K_tile16 *tiles = ls_thread_buffer((size_t)nb * sizeof(q6_K_tile16), 0);
    if (!tiles) return r0;
    return gemm_groups16(GEMM_Q6_K, nb, w, w_stride, r0, r1, tiles, NULL, x, x_stride, T, y, ldy);
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

/* The two block sums of one row's pair of blocks: (A, B) from the 16 int32 lanes of v (block A in
 * the low 256 bits). */
static inline void pair_sums(__m512i v, int32_t *a, int32_t *b) {
    const __m256i h = _mm256_hadd_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    const __m256i h2 = _mm256_hadd_epi32(h, h);                     /* [A0-3, B0-3, .. | A4-7, B4-7, ..] */
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1));
    *a = _mm_cvtsi128_si32(s);
    *b = _mm_extract_epi32(s, 1);
}

// W rows r0..r1-1 (Q8_0) · 1-3 tokens -> y: bit for bit gemm_q8_0_q8_0_avx512. Each row's block
// sums with the elements in the lanes, reduced to one int32 per row and block (scratch v), then the
// float steps for 16 rows at once.
int64_t gemv_q8_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t np = n / 64;
    q8_0_pair_rec *xp = ls_thread_buffer((size_t)np * sizeof(q8_0_pair_rec), 1);
    int32_t *v = ls_thread_buffer((size_t)np * 32 * sizeof(int32_t), 2);
    if (n % 64 || !xp || !v) return r0;
    for (int64_t t = 0; t < T; ++t) {
        pack_q8_0(n, (const block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride), xp);
        for (int64_t r = r0; r < r1; r += 16) {
            const uint8_t *rp[16];
            const int rows = row_ptrs(w, w_stride, r, r1, rp, 0);
            for (int i = 0; i < 16; ++i)      /* row by row: the weights stream in order */
                for (int64_t p = 0; p < np; ++p) {
                    const uint8_t *blk = rp[i] + (size_t)(2 * p) * sizeof(block_q8_0);
                    /* the hardware prefetchers do not keep up with this loop: 4 rows ahead */
                    _mm_prefetch((const char *)blk + 4 * w_stride, _MM_HINT_T0);
                    _mm_prefetch((const char *)blk + 4 * w_stride + 2 * sizeof(block_q8_0) - 1, _MM_HINT_T0);
                    if (i >= rows) {
                        v[p * 32 + i] = v[p * 32 + 16 + i] = 0;
                        continue;
                    }
                    pair_sums(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q8_0_pair_u8((const block_q8_0 *)blk),
                                                  _mm512_loadu_si512(xp[p].qs)),
                              &v[p * 32 + i], &v[p * 32 + 16 + i]);
                }
            __m512 acc = _mm512_setzero_ps();
            for (int64_t p = 0; p < np; ++p) {
                const __m512i A = _mm512_add_epi32(_mm512_loadu_si512(v + p * 32), _mm512_set1_epi32(xp[p].corr[0]));
                const __m512i B = _mm512_add_epi32(_mm512_loadu_si512(v + p * 32 + 16), _mm512_set1_epi32(xp[p].corr[8]));
                const __m512 dA = gather_fp16(rp, (size_t)(2 * p) * sizeof(block_q8_0));
                const __m512 dB = gather_fp16(rp, (size_t)(2 * p + 1) * sizeof(block_q8_0));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(A), _mm512_mul_ps(dA, _mm512_set1_ps(xp[p].d[0])), acc);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(B), _mm512_mul_ps(dB, _mm512_set1_ps(xp[p].d[15])), acc);
            }
            store_rows(y + (size_t)t * ldy + r, acc, rows);
        }
    }
    return r1;
}

// W rows r0..r1-1 (Q4_0) · 1-3 tokens -> y: bit for bit gemm_q4_0_q8_0_avx512. Q4_0 is rearranged
// on the fly (the 16-row transposition of tile_q4_0_rows16, without storing the tile): for its
// 18-byte blocks that costs less than reducing each row's sums as above.
int64_t gemv_q4_0_q8_0_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int64_t nb = n / QK4_0;
    q8_0_side *side = ls_thread_buffer((size_t)nb * sizeof(q8_0_side), 1);
    if (!side) return r0;
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int64_t t = 0; t < T; ++t) {
        const block_q8_0 *xb = (const block_q8_0 *)((const uint8_t *)x + (size_t)t * x_stride);
        for (int64_t b = 0; b < nb; ++b) {
            side[b].d = ls_fp16_to_fp32_f16c(xb[b].d);
            side[b].corr = -(block_sum_i8(xb[b].qs) << 3);
        }
        for (int64_t r = r0; r < r1; r += 16) {
            const uint8_t *rp[16];
            const int rows = row_ptrs(w, w_stride, r, r1, rp, 0);
            /* (past r1 too: prefetches never fault, and the next rows are usually this thread's
             * next work item) */
            const char *next = (const char *)w + (size_t)(r + 16) * w_stride;
            const size_t next_bytes = 16 * w_stride;
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
                /* transpose the raw bytes once (dword m: bytes 4m..4m+3 of each row), then split
                 * the nibbles: low = group m, high = group 4 + m (same lanes as tile_q4_0_rows16) */
                __m512i raw[4];
                transpose16x4_regs(a, raw);
                for (int m = 0; m < 4; ++m) {
                    g[m] = _mm512_and_si512(raw[m], low4);
                    g[4 + m] = _mm512_and_si512(_mm512_srli_epi16(raw[m], 4), low4);
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
            store_tile_rows(y + (size_t)t * ldy + r, acc, rows);
        }
    }
    return r1;
}

/* Q4_K block · Q8_K block, exactly (the integer sums of gemm_q4_K_tile for one row):
 * returns sum_s sc_s * (q·x)_s and sets *msum = sum_s m_s * bs_s. idx: scale_index(2k, 16). */
static inline __attribute__((always_inline)) int32_t q4_K_block_sums(const block_q4_K *blk, const block_q8_K *xb,
                                                                     const __m512i idx[4], int32_t *msum) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m256i scales_mins = ls_unpack_scales_mins_k4_avx2(blk->scales);
    const __m128i ms = _mm_madd_epi16(_mm256_extracti128_si256(scales_mins, 1), pairs);
    const __m128i ms2 = _mm_add_epi32(ms, _mm_unpackhi_epi64(ms, ms));
    *msum = _mm_cvtsi128_si32(_mm_add_epi32(ms2, _mm_shuffle_epi32(ms2, 1)));
    const __m512i sc = _mm512_broadcast_i32x4(_mm256_castsi256_si128(scales_mins));
    __m512i si = _mm512_setzero_si512();
    for (int k = 0; k < 4; ++k) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * k));
        const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(bits, low4)),
                                             _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4), 1);
        si = _mm512_dpwssd_epi32(si, _mm512_maddubs_epi16(q, _mm512_loadu_si512(xb->qs + 64 * k)),
                                 _mm512_permutexvar_epi16(idx[k], sc));
    }
    return _mm512_reduce_add_epi32(si);
}

/* Q6_K block · Q8_K block, exactly: sum_s sc_s * ((q·x)_s - 32 * bsum_s). idx: scale_index(4k, 8). */
static inline __attribute__((always_inline)) int32_t q6_K_block_sum(const block_q6_K *blk, const block_q8_K *xb,
                                                                    const __m512i idx[4]) {
    const __m256i bsums = _mm256_loadu_si256((const __m256i *)xb->bsums);
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
    const __m512i sc = _mm512_castsi256_si512(scales16);
    __m512i si = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(),
                     _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5)));
    for (int h = 0; h < 2; ++h) {
        __m256i q[4];
        ls_q6_K_quants_half_avx2(blk, h, q);
        const int8_t *q8 = xb->qs + 128 * h;
        si = _mm512_dpwssd_epi32(si, _mm512_maddubs_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(q[0]), q[1], 1),
                                 _mm512_loadu_si512(q8)), _mm512_permutexvar_epi16(idx[2 * h], sc));
        si = _mm512_dpwssd_epi32(si, _mm512_maddubs_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(q[2]), q[3], 1),
                                 _mm512_loadu_si512(q8 + 64)), _mm512_permutexvar_epi16(idx[2 * h + 1], sc));
    }
    return _mm512_reduce_add_epi32(si);
}

/* The K-quant decode loop (kind GEMM_Q4_K or GEMM_Q6_K, a constant): per token and group of 16 rows,
 * each row's block sums row by row (the weights stream in order) into v (Q4_K: the mins' sums into
 * m), then the float steps of gemm_q4_K_tile / gemm_q6_K_tile for the 16 rows at once. */
static inline __attribute__((always_inline)) int64_t gemv_q8_K_rows(
        const enum gemm_kind kind, int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
        const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    const int q6 = kind == GEMM_Q6_K;
    const size_t bsize = q6 ? sizeof(block_q6_K) : sizeof(block_q4_K);
    __m512i idx[4];
    for (int k = 0; k < 4; ++k) idx[k] = q6 ? scale_index(4 * k, 8) : scale_index(2 * k, 16);
    const int64_t nb = n / QK_K;
    int32_t *v = ls_thread_buffer((size_t)nb * (q6 ? 16 : 32) * sizeof(int32_t), 2);
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
                        v[b * 16 + i] = 0;
                        if (!q6) m[b * 16 + i] = 0;
                        continue;
                    }
                    const uint8_t *blk = rp[i] + (size_t)b * bsize;
                    for (size_t o = 0; o < bsize + 63; o += 64)   /* 4 rows ahead */
                        _mm_prefetch((const char *)blk + 4 * w_stride + o, _MM_HINT_T0);
                    v[b * 16 + i] = q6 ? q6_K_block_sum((const block_q6_K *)blk, &xb[b], idx)
                                       : q4_K_block_sums((const block_q4_K *)blk, &xb[b], idx, &m[b * 16 + i]);
                }
            __m512 acc = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; ++b) {
                const __m512 dx = _mm512_set1_ps(xb[b].d);
                const size_t off = (size_t)b * bsize;
                if (q6) {
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(v + b * 16)),
                                          _mm512_mul_ps(gather_fp16(rp, off + offsetof(block_q6_K, d)), dx), acc);
                } else {
                    const __m512i isum = _mm512_loadu_si512(v + b * 16), msum = _mm512_loadu_si512(m + b * 16);
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(gather_fp16(rp, off + offsetof(block_q4_K, d)), dx), acc);
                    acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(gather_fp16(rp, off + offsetof(block_q4_K, dmin)), dx), acc);
                }
            }
            store_rows(y + (size_t)t * ldy + r, acc, rows);
        }
    }
    return r1;
}

// W rows (Q4_K) · 1-3 tokens (Q8_K) -> y: bit for bit gemm_q4_K_q8_K_avx512
int64_t gemv_q4_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemv_q8_K_rows(GEMM_Q4_K, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
}

// W rows (Q6_K) · 1-3 tokens (Q8_K) -> y: bit for bit gemm_q6_K_q8_K_avx512
int64_t gemv_q6_K_q8_K_avx512(int64_t n, const void *w, size_t w_stride, int64_t r0, int64_t r1,
                                     const void *x, size_t x_stride, int64_t T, float *y, size_t ldy) {
    return gemv_q8_K_rows(GEMM_Q6_K, n, w, w_stride, r0, r1, x, x_stride, T, y, ldy);
}
