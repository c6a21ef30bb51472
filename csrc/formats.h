/* formats.h — every GGUF tensor block format llmstream reads, declared once.
 *
 * The layouts are GGML's (what GGUF files store, little-endian). For each format: the byte layout,
 * the dequantization formula, the struct and a _Static_assert pinning its size. Notation:
 *   fp16(h)  the IEEE half h widened to float;  y[k]  the k-th dequantized element of the block.
 * Scales are applied exactly in the order written (float arithmetic): e.g. "(d*sc)*q - dmin*m".
 *
 * Also here: scalar fp16 / bf16 <-> fp32 conversions (round-to-nearest-even, like ggml).
 */
#ifndef LLMSTREAM_FORMATS_H
#define LLMSTREAM_FORMATS_H
#include <stdint.h>
#include <string.h>

typedef uint16_t ls_fp16_t;   /* IEEE 754 binary16 bits */
typedef uint16_t ls_bf16_t;   /* bfloat16 bits: the top half of a binary32 */

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256          /* super-block size of the K-quants */
#define K_SCALE_SIZE 12   /* packed 6-bit scales + mins of Q4_K / Q5_K */

/* ---------------------------------------------------------------------------------------------
 * Q4_0 — 32 elements in 18 bytes (4.5 bits/weight).
 *   bytes 0-1   d      fp16 scale
 *   bytes 2-17  qs[16] nibbles: element j (0..15) = low nibble of qs[j], element j+16 = high nibble
 *   y[j] = d * ((qs[j] & 15) - 8),  y[j+16] = d * ((qs[j] >> 4) - 8)
 */
typedef struct {
    ls_fp16_t d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 must be 18 bytes");

/* Q4_1 — 32 elements in 20 bytes (5 bits/weight).
 *   bytes 0-1 d fp16 scale;  bytes 2-3 m fp16 offset (the block minimum)
 *   bytes 4-19  qs[16] nibbles, same element order as Q4_0
 *   y[j] = d * (qs[j] & 15) + m,  y[j+16] = d * (qs[j] >> 4) + m
 */
typedef struct {
    ls_fp16_t d;
    ls_fp16_t m;
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "block_q4_1 must be 20 bytes");

/* Q5_0 — 32 elements in 22 bytes (5.5 bits/weight).
 *   bytes 0-1   d      fp16 scale
 *   bytes 2-5   qh[4]  little-endian uint32: bit k is the 5th (high) bit of element k
 *   bytes 6-21  qs[16] low nibbles, same element order as Q4_0
 *   q[j] = (qs[j] & 15) | (bit j of qh) << 4,  q[j+16] = (qs[j] >> 4) | (bit j+16 of qh) << 4
 *   y[k] = d * (q[k] - 16)
 */
typedef struct {
    ls_fp16_t d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 2 + 4 + QK5_0 / 2, "block_q5_0 must be 22 bytes");

/* Q5_1 — 32 elements in 24 bytes (6 bits/weight).
 *   bytes 0-1 d fp16;  bytes 2-3 m fp16;  bytes 4-7 qh (as Q5_0);  bytes 8-23 qs[16] (as Q5_0)
 *   y[k] = d * q[k] + m      (q[k] in 0..31 built as in Q5_0, no offset)
 */
typedef struct {
    ls_fp16_t d;
    ls_fp16_t m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 4 + 4 + QK5_1 / 2, "block_q5_1 must be 24 bytes");

/* Q8_0 — 32 elements in 34 bytes (8.5 bits/weight); also the activation format for Q4_0/Q5_0/Q8_0.
 *   bytes 0-1 d fp16;  bytes 2-33 qs[32] int8
 *   y[k] = d * qs[k]
 *   Quantization (llama.cpp's quantize_row_q8_0_ref): amax = max|x|, d = amax/127,
 *   id = d ? 1/d : 0, qs[k] = roundf(x[k]*id) (halves away from zero), d stored as fp16(d).
 */
typedef struct {
    ls_fp16_t d;
    int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 must be 34 bytes");

/* Q8_1 — 32 elements in 36 bytes; the activation format for Q4_1/Q5_1.
 *   bytes 0-1 d fp16;  bytes 2-3 s fp16 = fp16(d * sum_k qs[k]);  bytes 4-35 qs[32] int8
 *   y[k] = d * qs[k]      (s is only a cached sum used by the dot products with Q4_1/Q5_1)
 *   Quantization as Q8_0 (quantize_row_q8_1_ref), then s = fp16((float)sum(qs) * d).
 */
typedef struct {
    ls_fp16_t d;
    ls_fp16_t s;
    int8_t qs[QK8_1];
} block_q8_1;
_Static_assert(sizeof(block_q8_1) == 4 + QK8_1, "block_q8_1 must be 36 bytes");

/* ---------------------------------------------------------------------------------------------
 * K-quants: super-blocks of 256 elements. Where a formula says "group (h, j, l)", element
 * k = 128*h + 32*j + l  (h = 0..1, j = 0..3, l = 0..31) unless stated otherwise.
 *
 * Q2_K — 256 elements in 84 bytes (2.625 bits/weight), 16 sub-blocks of 16.
 *   bytes 0-15   scales[16]  sub-block s: scale = scales[s] & 15, min = scales[s] >> 4
 *   bytes 16-79  qs[64]      2-bit quants: element (h, j, l) = (qs[32*h + l] >> 2*j) & 3
 *   bytes 80-81  d  fp16 super-scale of the scales;  bytes 82-83  dmin fp16 super-scale of the mins
 *   with s = 8*h + 2*j + l/16:  y[k] = (d * (scales[s] & 15)) * q - dmin * (scales[s] >> 4)
 */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    ls_fp16_t d;
    ls_fp16_t dmin;
} block_q2_K;
_Static_assert(sizeof(block_q2_K) == QK_K / 16 + QK_K / 4 + 4, "block_q2_K must be 84 bytes");

/* Q3_K — 256 elements in 110 bytes (3.4375 bits/weight), 16 sub-blocks of 16.
 *   bytes 0-31    hmask[32]  high bits: element (h, j, l) has bit (4*h + j) of hmask[l]
 *   bytes 32-95   qs[64]     low 2 bits: element (h, j, l) = (qs[32*h + l] >> 2*j) & 3
 *   bytes 96-107  scales[12] sixteen 6-bit scales: for s = 0..15,
 *                 sc[s] = ((scales[s % 8] >> 4*(s / 8)) & 15) | (((scales[8 + s % 4] >> 2*(s / 4)) & 3) << 4)
 *   bytes 108-109 d fp16 super-scale
 *   q = low2 - (high bit set ? 0 : 4)  (in -4..3);  with s = 8*h + 2*j + l/16:
 *   y[k] = (d * (sc[s] - 32)) * q
 */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    ls_fp16_t d;
} block_q3_K;
_Static_assert(sizeof(block_q3_K) == QK_K / 8 + QK_K / 4 + 12 + 2, "block_q3_K must be 110 bytes");

/* Q4_K — 256 elements in 144 bytes (4.5 bits/weight), 8 sub-blocks of 32.
 *   bytes 0-1 d fp16 super-scale of the scales;  bytes 2-3 dmin fp16 super-scale of the mins
 *   bytes 4-15    scales[12]: eight 6-bit scales sc[s] and eight 6-bit mins m[s]:
 *                 s < 4:  sc = scales[s] & 63,   m = scales[s+4] & 63
 *                 s >= 4: sc = (scales[s+4] & 15) | ((scales[s-4] >> 6) << 4),
 *                         m  = (scales[s+4] >> 4) | ((scales[s]   >> 6) << 4)
 *   bytes 16-143  qs[128] nibbles: for g = 0..3, l = 0..31:
 *                 element 64*g + l      = qs[32*g + l] & 15  (sub-block s = 2*g)
 *                 element 64*g + 32 + l = qs[32*g + l] >> 4  (sub-block s = 2*g + 1)
 *   y[k] = (d * sc[s]) * q - dmin * m[s]
 */
typedef struct {
    ls_fp16_t d;
    ls_fp16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K must be 144 bytes");

/* Q5_K — 256 elements in 176 bytes (5.5 bits/weight), 8 sub-blocks of 32.
 *   bytes 0-1 d fp16;  bytes 2-3 dmin fp16;  bytes 4-15 scales[12] (packed exactly as Q4_K)
 *   bytes 16-47   qh[32]   high bits: element 32*s + l has bit s of qh[l]  (s = 0..7)
 *   bytes 48-175  qs[128]  low nibbles, same order as Q4_K
 *   q = low4 | (high bit << 4) (in 0..31);  y[k] = (d * sc[s]) * q - dmin * m[s]
 */
typedef struct {
    ls_fp16_t d;
    ls_fp16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K must be 176 bytes");

/* Q6_K — 256 elements in 210 bytes (6.5625 bits/weight), 16 sub-blocks of 16.
 *   bytes 0-127    ql[128]    low nibbles;  bytes 128-191 qh[64] high 2-bit pairs
 *   bytes 192-207  scales[16] int8 sub-block scales;  bytes 208-209 d fp16 super-scale
 *   For half h = 0..1 and l = 0..31, with L = ql + 64*h, H = qh + 32*h:
 *     element 128*h +      l = (L[l]      & 15) | ((H[l] >> 0) & 3) << 4
 *     element 128*h + 32 + l = (L[l + 32] & 15) | ((H[l] >> 2) & 3) << 4
 *     element 128*h + 64 + l = (L[l]      >> 4) | ((H[l] >> 4) & 3) << 4
 *     element 128*h + 96 + l = (L[l + 32] >> 4) | ((H[l] >> 6) & 3) << 4
 *   sub-block s = k / 16;  y[k] = (d * scales[s]) * (q - 32)
 */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    ls_fp16_t d;
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K must be 210 bytes");

/* Q8_K — 256 elements in 292 bytes; the activation format of every K-quant (never stored in files).
 *   bytes 0-3 d float32;  bytes 4-259 qs[256] int8;  bytes 260-291 bsums[16] int16 = sums of qs in 16s
 *   y[k] = d * qs[k]
 *   Quantization (quantize_row_q8_K_ref): max = the first x[k] of largest |x[k]|; if it is 0 the
 *   block is all zero; else iscale = -127/max, qs[k] = min(127, nearest_int(iscale*x[k]))
 *   (nearest_int rounds halves to even), d = 1/iscale.
 */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
_Static_assert(sizeof(block_q8_K) == 4 + QK_K + 2 * (QK_K / 16), "block_q8_K must be 292 bytes");

/* ---------------------------------------------------------------------------------------------
 * Repacked layouts: llmstream's own, never in files. At load, on CPUs where it pays (AVX2 without
 * the AVX-512 kernels), the weights of a matmul are rewritten once into these "x8" layouts: 8 rows
 * interleaved per super-block, so that a SIMD kernel finds each int32 lane's row already in place
 * (instead of transposing 8 rows on every call). Values and formulas are exactly those of the
 * source format; only the byte order changes (a group of 8 rows r = 8g .. 8g+7, super-block b, is
 * block g * nb + b; rows past the tensor's end are zero). "Lane p" is row 8g + p.
 *
 * Q4_K x8 — 8 rows x 256 elements in 1184 bytes (148 a row, the 144 of Q4_K + 4 unpacked scales).
 *   bytes 0-15     d[8]     fp16 d of row p;  bytes 16-31 dmin[8] fp16 dmin of row p
 *   bytes 32-95    sc[8][8] sc[s][p] = 6-bit scale of sub-block s of row p (unpacked, formats.h Q4_K)
 *   bytes 96-159   m[4][8][2] m[j][p][i] = 6-bit min of sub-block 2j + i of row p
 *   bytes 160-1183 qs[4][8][32] qs[g][j][4p + e] = row p's Q4_K qs[32g + 4j + e]: low nibble element
 *                  64g + 4j + e (sub-block 2g), high nibble element 64g + 32 + 4j + e (sub-block 2g+1)
 *   y = (d * sc[s]) * q - dmin * m[s], as Q4_K.
 */
typedef struct {
    ls_fp16_t d[8];
    ls_fp16_t dmin[8];
    uint8_t sc[8][8];
    uint8_t m[4][8][2];
    uint8_t qs[4][8][32];
} block_q4_Kx8;
_Static_assert(sizeof(block_q4_Kx8) == 8 * (sizeof(block_q4_K) + 4), "block_q4_Kx8 must be 1184 bytes");

/* Q5_K x8 — 8 rows x 256 elements in 1440 bytes (180 a row, the 176 of Q5_K + 4 unpacked scales).
 *   bytes 0-1183     k4         the Q4_K x8 block of the low 4 bits: d, dmin, sc, m and qs as there
 *                               (Q5_K packs its scales, mins and low nibbles exactly as Q4_K)
 *   bytes 1184-1439  qh[8][32]  qh[j][4p + e] = row p's qh[4j + e]: bit s = the 5th bit of element
 *                               32s + 4j + e
 *   q = low4 | (high bit << 4) (0..31);  y = (d * sc[s]) * q - dmin * m[s], as Q5_K.
 */
typedef struct {
    block_q4_Kx8 k4;
    uint8_t qh[8][32];
} block_q5_Kx8;
_Static_assert(sizeof(block_q5_Kx8) == 8 * (sizeof(block_q5_K) + 4), "block_q5_Kx8 must be 1440 bytes");

/* Q2_K x8 — 8 rows x 256 elements in 672 bytes (84 a row, as Q2_K).
 *   bytes 0-15     d[8]          fp16 d of row p;  bytes 16-31 dmin[8] fp16 dmin of row p
 *   bytes 32-159   scales[16][8] scales[s][p] = row p's scales[s] (scale low nibble, min high)
 *   bytes 160-671  qs[2][8][32]  qs[h][g][4p + e] = row p's qs[32h + 4g + e]: bits 2j, 2j+1 = the
 *                                quant of element 128h + 32j + 4g + e (sub-block 8h + 2j + g / 4)
 *   y = (d * (scales[s] & 15)) * q - dmin * (scales[s] >> 4), as Q2_K.
 */
typedef struct {
    ls_fp16_t d[8];
    ls_fp16_t dmin[8];
    uint8_t scales[16][8];
    uint8_t qs[2][8][32];
} block_q2_Kx8;
_Static_assert(sizeof(block_q2_Kx8) == 8 * sizeof(block_q2_K), "block_q2_Kx8 must be 672 bytes");

/* Q3_K x8 — 8 rows x 256 elements in 912 bytes (114 a row, the 110 of Q3_K + 4 unpacked scales).
 *   bytes 0-15     d[8]          fp16 d of row p
 *   bytes 16-143   sc[16][8]     sc[s][p] = the 6-bit scale of sub-block s of row p minus 32 (int8)
 *   bytes 144-399  hmask[8][32]  hmask[g][4p + e] = row p's hmask[4g + e]: bit 4h + j = the high bit
 *                                of element 128h + 32j + 4g + e
 *   bytes 400-911  qs[2][8][32]  the low 2 bits, as Q2_K x8
 *   q = low2 - (high bit set ? 0 : 4);  y = (d * sc[s]) * q, as Q3_K.
 */
typedef struct {
    ls_fp16_t d[8];
    int8_t sc[16][8];
    uint8_t hmask[8][32];
    uint8_t qs[2][8][32];
} block_q3_Kx8;
_Static_assert(sizeof(block_q3_Kx8) == 8 * (sizeof(block_q3_K) + 4), "block_q3_Kx8 must be 912 bytes");

/* Q6_K x8 — 8 rows x 256 elements in 1680 bytes (210 a row, as Q6_K).
 *   bytes 0-15      d[8]       fp16 d of row p
 *   bytes 16-143    sc[16][8]  sc[s][p] = int8 scale of sub-block s (16 elements) of row p
 *   bytes 144-1679  q[2][4]    for half h and pair i (groups j = 2i + jj, jj = 0, 1), 192 bytes in
 *                   the order a kernel reads them:
 *                     ql[c][jj][4p + e] = row p's ql[64h + 32c + 4j + e]  (c = 0, 1)
 *                     qh[jj][4p + e]    = row p's qh[32h + 4j + e]
 *   so the 4 bytes of lane p decode as Q6_K's L[l], L[l + 32], H[l] for l = 4j + e (see Q6_K);
 *   y = (d * sc[s]) * (q - 32).
 */
typedef struct {
    ls_fp16_t d[8];
    int8_t sc[16][8];
    struct {
        uint8_t ql[2][2][32];
        uint8_t qh[2][32];
    } q[2][4];
} block_q6_Kx8;
_Static_assert(sizeof(block_q6_Kx8) == 8 * sizeof(block_q6_K), "block_q6_Kx8 must be 1680 bytes");

/* Q4_0 x8 — 8 rows x 32 elements (one block plays the super-block's part) in 144 bytes (18 a row, as
 * Q4_0), in the order a kernel reads them.
 *   bytes 0-15    d[8]      fp16 d of row p
 *   bytes 16-143  qs[4][32] qs[m][4p + e] = row p's Q4_0 qs[4m + e]: low nibble element 4m + e,
 *                 high nibble element 16 + 4m + e (one 32-byte load = groups m and 4 + m of 8 rows)
 *   y = d * (q - 8), as Q4_0.
 */
typedef struct {
    ls_fp16_t d[8];
    uint8_t qs[4][32];
} block_q4_0x8;
_Static_assert(sizeof(block_q4_0x8) == 8 * sizeof(block_q4_0), "block_q4_0x8 must be 144 bytes");

/* Q8_0 x8 — 8 rows x 32 elements in 272 bytes (34 a row, as Q8_0), in the order a kernel reads them.
 *   bytes 0-15    d[8]      fp16 d of row p
 *   bytes 16-271  qs[8][32] qs[j][4p + e] = row p's Q8_0 qs[4j + e] (element 4j + e, int8)
 *   y = d * q, as Q8_0.
 */
typedef struct {
    ls_fp16_t d[8];
    int8_t qs[8][32];
} block_q8_0x8;
_Static_assert(sizeof(block_q8_0x8) == 8 * sizeof(block_q8_0), "block_q8_0x8 must be 272 bytes");

/* Q4_1 x8 / Q5_0 x8 / Q5_1 x8 — the Q4_0 x8 block with the other fields of their source beside d:
 * the 8 rows' m (Q4_1, Q5_1) and 5th bits (Q5_0, Q5_1). The nibbles are laid out as Q4_0 x8's: a
 * kernel takes group j (elements 4j..4j+3 of every lane's row, j = 0..7) from line qs[j % 4], low
 * nibbles for j < 4, high for j >= 4. The 5th bits are transposed so that group j's sit at bit j of
 * one 32-byte line: qh[4p + e] bit j = the 5th bit of element 4j + e of row p (that row's qh bit
 * 4j + e), so group j's bits come to value 16 by one shift (left by 4 - j, or right by j - 4).
 *
 * Q4_1 x8 — 8 rows x 32 elements in 160 bytes (20 a row, as Q4_1).
 *   bytes 0-15    d[8]      fp16 d of row p;  bytes 16-31 m[8] fp16 m of row p
 *   bytes 32-159  qs[4][32] as Q4_0 x8: qs[j][4p + e] = row p's qs[4j + e]
 *   y = d * q + m, as Q4_1.
 */
typedef struct {
    ls_fp16_t d[8];
    ls_fp16_t m[8];
    uint8_t qs[4][32];
} block_q4_1x8;
_Static_assert(sizeof(block_q4_1x8) == 8 * sizeof(block_q4_1), "block_q4_1x8 must be 160 bytes");

/* Q5_0 x8 — 8 rows x 32 elements in 176 bytes (22 a row, as Q5_0).
 *   bytes 0-15    d[8]      fp16 d of row p
 *   bytes 16-47   qh[32]    qh[4p + e] bit j = the 5th bit of element 4j + e of row p (above)
 *   bytes 48-175  qs[4][32] the low nibbles, as Q4_0 x8
 *   q = low4 | (5th bit << 4) (0..31);  y = d * (q - 16), as Q5_0.
 */
typedef struct {
    ls_fp16_t d[8];
    uint8_t qh[32];
    uint8_t qs[4][32];
} block_q5_0x8;
_Static_assert(sizeof(block_q5_0x8) == 8 * sizeof(block_q5_0), "block_q5_0x8 must be 176 bytes");

/* Q5_1 x8 — 8 rows x 32 elements in 192 bytes (24 a row, as Q5_1).
 *   bytes 0-15 d[8];  bytes 16-31 m[8];  bytes 32-63 qh[32] (as Q5_0 x8);  bytes 64-191 qs[4][32]
 *   q as Q5_0 x8;  y = d * q + m, as Q5_1.
 */
typedef struct {
    ls_fp16_t d[8];
    ls_fp16_t m[8];
    uint8_t qh[32];
    uint8_t qs[4][32];
} block_q5_1x8;
_Static_assert(sizeof(block_q5_1x8) == 8 * sizeof(block_q5_1), "block_q5_1x8 must be 192 bytes");

/* F32 / F16 / BF16: one element per "block" of 4 / 2 / 2 bytes. */
_Static_assert(sizeof(float) == 4, "float must be IEEE binary32");
_Static_assert(sizeof(ls_fp16_t) == 2 && sizeof(ls_bf16_t) == 2, "half types must be 2 bytes");

/* ---------------------------------------------------------------------------------------------
 * Scalar conversions. All exact except fp32 -> fp16 / bf16, which round to nearest, ties to even. */

static inline uint32_t ls_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float ls_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* binary16 -> binary32 (exact; NaN payloads are kept). */
static inline float ls_fp16_to_fp32(ls_fp16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return ls_bits_f32(sign | 0x7f800000u | (man << 13));    /* inf, nan */
    if (exp != 0) return ls_bits_f32(sign | ((exp + 112u) << 23) | (man << 13)); /* normal */
    /* zero or subnormal: man * 2^-24, computed from normal floats only (safe under DAZ) */
    const float mag = (float)man * 0x1p-24f;
    return ls_bits_f32(sign | ls_f32_bits(mag));
}

/* binary32 -> binary16, round to nearest even; overflow gives inf, NaN gives the quiet NaN 0x7e00
 * with the sign kept (ggml_compute_fp32_to_fp16's choice). */
static inline ls_fp16_t ls_fp32_to_fp16(float f) {
    const uint32_t u = ls_f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;             /* nan */
    if (a >= 0x47800000u) return sign | 0x7c00u;            /* >= 65536 (or inf): inf */
    if (a >= 0x38800000u) {                                 /* normal half range (>= 2^-14) */
        uint32_t h = (a - 0x38000000u) >> 13;               /* rebias exponent 127 -> 15 */
        const uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  /* may carry into inf: correct */
        return sign | (uint16_t)h;
    }
    /* subnormal half (or zero): units of 2^-24 */
    const int e = (int)(a >> 23);                           /* biased fp32 exponent, 0..112 */
    if (e < 102) return sign;                               /* < 2^-25: rounds to zero */
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;         /* e >= 102, so normal in fp32 */
    const int shift = 126 - e;                              /* 14..24 */
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

/* bfloat16 -> binary32 (exact). */
static inline float ls_bf16_to_fp32(ls_bf16_t h) { return ls_bits_f32((uint32_t)h << 16); }

/* binary32 -> bfloat16 as ggml_compute_fp32_to_bf16: NaN is kept and forced quiet, everything else
 * rounds to nearest even (overflow gives inf). */
static inline ls_bf16_t ls_fp32_to_bf16(float f) {
    const uint32_t u = ls_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (ls_bf16_t)((u >> 16) | 0x40u);
    return (ls_bf16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* ---------------------------------------------------------------------------------------------
 * IQ4 i-quants: 4-bit indices into one fixed non-linear table of 16 int8 levels (ggml's
 * kvalues_iq4nl; denser near zero, where most weights are):
 *   T = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
 *
 * IQ4_NL — 32 elements in 18 bytes (4.5 bits/weight); activations in Q8_0.
 *   bytes 0-1   d      fp16 scale
 *   bytes 2-17  qs[16] 4-bit indices, in Q4_0's element order: element j (0..15) = low nibble of
 *               qs[j], element j+16 = high nibble
 *   y[j] = d * T[qs[j] & 15],  y[j+16] = d * T[qs[j] >> 4]
 */
#define QK4_NL 32
static const int8_t ls_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1, 13, 25, 38, 53, 69, 89, 113};

typedef struct {
    ls_fp16_t d;
    uint8_t qs[QK4_NL / 2];
} block_iq4_nl;
_Static_assert(sizeof(block_iq4_nl) == 2 + QK4_NL / 2, "block_iq4_nl must be 18 bytes");

/* IQ4_XS — 256 elements in 136 bytes (4.25 bits/weight), 8 sub-blocks of 32; activations in Q8_K.
 *   bytes 0-1    d            fp16 super-scale
 *   bytes 2-3    scales_h     little-endian uint16: bits 2s, 2s+1 = the high 2 bits of sub-block s's scale
 *   bytes 4-7    scales_l[4]  the low 4 bits: sub-block s in nibble s % 2 of scales_l[s / 2] (low first)
 *   bytes 8-135  qs[128]      4-bit indices: sub-block s (s = 0..7) has qs[16s .. 16s+15], in Q4_0's
 *                             order: element 32s + j = low nibble of qs[16s + j] (j < 16),
 *                             element 32s + 16 + j = its high nibble
 *   ls[s] = ((scales_l[s / 2] >> 4*(s % 2)) & 15) | (((scales_h >> 2*s) & 3) << 4)   (0..63)
 *   y[32s + k] = (d * (ls[s] - 32)) * T[index of element 32s + k]
 */
typedef struct {
    ls_fp16_t d;
    uint16_t scales_h;
    uint8_t scales_l[QK_K / 64];
    uint8_t qs[QK_K / 2];
} block_iq4_xs;
_Static_assert(sizeof(block_iq4_xs) == 2 + 2 + QK_K / 64 + QK_K / 2, "block_iq4_xs must be 136 bytes");

/* ---------------------------------------------------------------------------------------------
 * Repacked IQ4 layouts (see "Repacked layouts" above: 8 rows interleaved, group g of rows 8g..8g+7,
 * block b is block g * nb + b, rows past the tensor's end are zero, lane p is row 8g + p). The
 * indices keep their nibbles; each 32-byte line holds 4 bytes of every row, lane p at bytes 4p..4p+3,
 * and the lines come in the order the kernels read them (tokens 4 at a time, one pass over a block).
 *
 * IQ4_NL x8 — 8 rows x 32 elements in 144 bytes (18 a row, as IQ4_NL).
 *   bytes 0-15     d[8]      fp16 d of row p
 *   bytes 16-143   qs[4][32] qs[j][4p + e] = row p's IQ4_NL qs[4j + e]: low nibble element 4j + e,
 *                  high nibble element 16 + 4j + e
 *   y = d * T[q], as IQ4_NL.
 */
typedef struct {
    ls_fp16_t d[8];
    uint8_t qs[4][32];
} block_iq4_nlx8;
_Static_assert(sizeof(block_iq4_nlx8) == 8 * sizeof(block_iq4_nl), "block_iq4_nlx8 must be 144 bytes");

/* IQ4_XS x8 — 8 rows x 256 elements in 1104 bytes (138 a row: the 136 of IQ4_XS, its 6 bytes of
 * packed scales as 8 unpacked).
 *   bytes 0-15     d[8]         fp16 d of row p
 *   bytes 16-79    sc[8][8]     sc[s][p] = ls[s] - 32 (int8, -32..31) of sub-block s of row p
 *   bytes 80-1103  qs[8][4][32] qs[s][j][4p + e] = row p's IQ4_XS qs[16s + 4j + e]: low nibble
 *                  element 32s + 4j + e, high nibble element 32s + 16 + 4j + e (sub-block s)
 *   y = (d * sc[s]) * T[q], as IQ4_XS.
 */
typedef struct {
    ls_fp16_t d[8];
    int8_t sc[8][8];
    uint8_t qs[8][4][32];
} block_iq4_xsx8;
_Static_assert(sizeof(block_iq4_xsx8) == 8 * (sizeof(block_iq4_xs) + 2), "block_iq4_xsx8 must be 1104 bytes");

#endif
