/* ops.h — the non-matmul hot path: norms, RoPE, activations, attention over the f16 KV cache.
 * All functions are pure C, thread-safe, allocation-free; parallelism is the caller's (Cython prange). */
#ifndef LLMSTREAM_OPS_H
#define LLMSTREAM_OPS_H
#include <stddef.h>
#include <stdint.h>

void ls_rmsnorm(const float *x, const float *w, float *y, int n, float eps);
void ls_layernorm(const float *x, const float *w, const float *b, float *y, int n, float eps);
/* freq_scale: 1 / linear scaling factor (1 = none); freq_factors: (n_rot/2,) per-pair divisors of the
 * angle (Llama 3's rope_freqs.weight) or NULL. */
void ls_rope(float *x, int n_head, int head_dim, int n_rot, int pos, float freq_base,
             float freq_scale, const float *freq_factors, int neox);
void ls_swiglu(float *gate, const float *up, int n);
void ls_gelu(float *x, int n);
/* Keys and values are paged: the sequence's key j lives in row blocks[j / block_size] * block_size
 * + j % block_size of the KV pool (k, v point at the head's first column of row 0). */
void ls_attn_head(const float *q, const uint16_t *k, const uint16_t *v, size_t kv_stride,
                  const int32_t *blocks, int block_size,
                  int first_key, int n_keys, int head_dim, float scale,
                  float *scores, uint16_t *q16, float *vrow, float *out);
/* AVX2 twin of ls_attn_head (ops_avx2.c), for head_dim % 8 == 0 and head_dim <= 256; ls_attn_head
 * calls it when the AVX2 level is in use. */
void ls_attn_head_avx2(const float *q, const uint16_t *k, const uint16_t *v, size_t kv_stride,
                       const int32_t *blocks, int block_size, int first_key, int n_keys, int head_dim, float scale,
                       float *scores, float *out);
/* The sum of p (n,) as uint64 words, read once in order: the bench's streaming-read bandwidth probe. */
uint64_t ls_sum_u64(const uint64_t *p, size_t n);
static inline int ls_min_int(int a, int b) { return a < b ? a : b; }
/* Row of the KV pool that holds position pos of a sequence with block table `blocks`. */
static inline size_t ls_kv_row(const int32_t *blocks, int block_size, int pos) {
    return (size_t)blocks[pos / block_size] * (size_t)block_size + (size_t)(pos % block_size);
}
#endif
