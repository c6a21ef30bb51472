/* ops_avx2.c — AVX2 + FMA + F16C twin of ls_attn_head (ops.c), chosen by ls_attn_head at run time
 * when the AVX2 level is in use (ls_get_simd()). Same math and the same f16 rounding of q; the
 * float sums are added in a different order (8 lanes). Pinned to the scalar one by
 * tests/test_ops_simd.py. */
#pragma GCC target("avx2,fma,f16c")

#include <immintrin.h>
#include <math.h>

#include "ops.h"
#include "quants_impl.h"

// q (head_dim,) f32; k, v f16 keys j = first_key .. n_keys-1 (key j in pool row
// ls_kv_row(blocks, block_size, j), at + row*kv_stride) -> out (head_dim,)
//   s_j = scale · (f16(q) · k_j);  p = softmax(s);  out = Σ_j p_j v_j        (head_dim % 8 == 0)
void ls_attn_head_avx2(const float *q, const uint16_t *k, const uint16_t *v, size_t kv_stride,
                       const int32_t *blocks, int block_size, int first_key, int n_keys, int head_dim, float scale,
                       float *scores, float *out) {
    const int nv = head_dim / 8;
    __m256 qr[32];                       /* q rounded to f16 and back, as the scalar path's q16 */
    for (int d = 0; d < nv; d++)
        qr[d] = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(q + 8 * d), _MM_FROUND_TO_NEAREST_INT));
    float mx = -INFINITY;
    for (int j = first_key; j < n_keys;) {           /* block by block: one table lookup each */
        const int b = j / block_size, end = ls_min_int((b + 1) * block_size, n_keys);
        const uint16_t *kb = k + ls_kv_row(blocks, block_size, b * block_size) * kv_stride;
        for (; j < end; j++) {
            const uint16_t *kj = kb + (size_t)(j - b * block_size) * kv_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            int d = 0;
            for (; d + 2 <= nv; d += 2) {
                a0 = _mm256_fmadd_ps(qr[d], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + 8 * d))), a0);
                a1 = _mm256_fmadd_ps(qr[d + 1], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + 8 * d + 8))), a1);
            }
            for (; d < nv; d++)
                a0 = _mm256_fmadd_ps(qr[d], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + 8 * d))), a0);
            const float s = scale * ls_hsum_ps(_mm256_add_ps(a0, a1));
            scores[j] = s;
            if (s > mx) mx = s;
        }
    }
    double sum = 0.0;
    for (int j = first_key; j < n_keys; j++) {
        const float dlt = scores[j] - mx;
        const float e = dlt < -87.3f ? 0.0f : expf(dlt);
        scores[j] = e;
        sum += e;
    }
    const float inv = (float)(1.0 / sum);
    __m256 acc[32];                      /* head_dim <= 256 */
    for (int d = 0; d < nv; d++) acc[d] = _mm256_setzero_ps();
    for (int j = first_key; j < n_keys;) {
        const int b = j / block_size, end = ls_min_int((b + 1) * block_size, n_keys);
        const uint16_t *vb = v + ls_kv_row(blocks, block_size, b * block_size) * kv_stride;
        for (; j < end; j++) {
            const __m256 p = _mm256_set1_ps(scores[j] * inv);
            const uint16_t *vj = vb + (size_t)(j - b * block_size) * kv_stride;
            for (int d = 0; d < nv; d++)
                acc[d] = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * d))), acc[d]);
        }
    }
    for (int d = 0; d < nv; d++) _mm256_storeu_ps(out + 8 * d, acc[d]);
}
