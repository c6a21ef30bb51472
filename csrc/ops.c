/* ops.c — norms, RoPE, activations and attention, written to follow llama.cpp's CPU numerics
 * (f16 KV cache with f16 queries for Q·K, RoPE angles by repeated multiplication, GELU through
 * an f16 table), so that logits agree with llama.cpp's to within float rounding. */
#include <math.h>
#include <string.h>

#include "ops.h"
#include "quants.h"

/* x (n,), w (n,) -> y (n,) = x / sqrt(mean(x²) + eps) * w          (RMSNorm, llama) */
void ls_rmsnorm(const float *x, const float *w, float *y, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}

/* x (n,), w (n,), b (n,) -> y (n,) = (x - mean) / sqrt(var + eps) * w + b      (LayerNorm, phi-2) */
void ls_layernorm(const float *x, const float *w, const float *b, float *y, int n, float eps) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += x[i];
    const float mean = (float)(sum / n);
    double ss = 0.0;
    for (int i = 0; i < n; i++) {
        const float d = x[i] - mean;
        y[i] = d;
        ss += (double)d * d;
    }
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = y[i] * scale * w[i] + b[i];
}

/* x (n_head, head_dim) at position pos, rotated in place on its first n_rot dims:
 *   θ_i = freq_scale · pos · base^(-2i/n_rot) / freq_factors[i], i < n_rot/2
 *   interleaved (llama.cpp layout): pairs (x[2i], x[2i+1]);  neox / rotate-half: (x[i], x[i+n_rot/2])
 *   (a, b) -> (a cos θ - b sin θ, a sin θ + b cos θ); dims >= n_rot are left as they are.
 * freq_scale is 1 / the linear scaling factor (1 = none); freq_factors (n_rot/2,) are Llama 3's
 * per-dimension factors (the rope_freqs.weight tensor), NULL = all 1.
 * The angle is computed as ggml-cpu does (ggml_rope_cache_init + rope_yarn without YaRN): a running
 * product pos · base^(-2/n_rot) · ... in float, then divided by the factor, then times freq_scale.
 * In float the product's relative error grows to ~i·2^-24, so at position p the angle of pair i is
 * off by up to ~p · base^(-2i/n_rot) · i · 6e-8 rad from exact math — llama.cpp's angles carry the
 * same error, and matching them is what keeps our logits on llama.cpp's. */
static inline float rope_theta(float theta, int i, float freq_scale, const float *freq_factors) {
    const float ff = freq_factors ? freq_factors[i] : 1.0f;
    return freq_scale * (theta / ff);
}

void ls_rope(float *x, int n_head, int head_dim, int n_rot, int pos, float freq_base,
             float freq_scale, const float *freq_factors, int neox) {
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    const int half = n_rot / 2;
    /* the angles depend on i only: cos/sin once for all heads (up to 256 pairs on the stack) */
    float cs[256], sn[256];
    const int tab = half <= 256;
    if (tab) {
        float theta = (float)pos;
        for (int i = 0; i < half; i++) {
            const float th = rope_theta(theta, i, freq_scale, freq_factors);
            cs[i] = cosf(th);
            sn[i] = sinf(th);
            theta *= theta_scale;
        }
    }
    for (int h = 0; h < n_head; h++) {
        float *v = x + (size_t)h * head_dim;
        float theta = (float)pos;
        for (int i = 0; i < half; i++) {
            float c, s;
            if (tab) {
                c = cs[i];
                s = sn[i];
            } else {
                const float th = rope_theta(theta, i, freq_scale, freq_factors);
                c = cosf(th);
                s = sinf(th);
            }
            const int i0 = neox ? i : 2 * i;
            const int i1 = neox ? i + half : 2 * i + 1;
            const float a = v[i0], b = v[i1];
            v[i0] = a * c - b * s;
            v[i1] = a * s + b * c;
            theta *= theta_scale;
        }
    }
}

/* gate (n,), up (n,) -> gate = silu(gate) * up = gate / (1 + e^-gate) * up      (SwiGLU) */
void ls_swiglu(float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        /* skip libm's slow error paths where the result is known: expf(-g) overflows to inf for
         * g < -88.73 (silu = -0), and for g > 20 1 + expf(-g) rounds to 1 (silu = g) */
        const float sg = g < -88.75f ? -0.0f : (g > 20.0f ? g : g / (1.0f + expf(-g)));
        gate[i] = sg * up[i];
    }
}

/* x (n,) in place: GELU, tanh form: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).
 * llama.cpp evaluates it through a table indexed by the f16 value of x holding f16 results;
 * we do the same conversion so both round alike. */
static float gelu_f32(float x) {
    const float c = 0.79788456080286535587989211986876f;
    return 0.5f * x * (1.0f + tanhf(c * x * (1.0f + 0.044715f * x * x)));
}

void ls_gelu(float *x, int n) {
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        if (v <= -10.0f) { x[i] = 0.0f; continue; }
        if (v >= 10.0f) continue;
        uint16_t h;
        float r;
        ls_quantize_row(LS_TYPE_F16, &v, &h, 1);
        ls_dequantize_row(LS_TYPE_F16, &h, &r, 1);
        r = gelu_f32(r);
        ls_quantize_row(LS_TYPE_F16, &r, &h, 1);
        ls_dequantize_row(LS_TYPE_F16, &h, &x[i], 1);
    }
}

/* One query head against the cache:
 *   q (head_dim,) f32; k, v: f16 keys j = first_key .. n_keys-1 of one sequence, key j in the pool
 *   row ls_kv_row(blocks, block_size, j) at k + row*kv_stride (paged KV, see ops.h)
 *   s_j = scale · (f16(q) · k_j);  p = softmax(s);  out (head_dim,) = Σ_j p_j v_j
 * Scratch: scores (n_keys,), q16 (head_dim,), vrow (head_dim,). */
void ls_attn_head(const float *q, const uint16_t *k, const uint16_t *v, size_t kv_stride,
                  const int32_t *blocks, int block_size,
                  int first_key, int n_keys, int head_dim, float scale,
                  float *scores, uint16_t *q16, float *vrow, float *out) {
    if (ls_get_simd() >= LS_SIMD_AVX2 && head_dim % 8 == 0 && head_dim <= 256) {
        ls_attn_head_avx2(q, k, v, kv_stride, blocks, block_size, first_key, n_keys, head_dim,
                          scale, scores, out);
        return;
    }
    ls_quantize_row(LS_TYPE_F16, q, q16, head_dim);
    float mx = -INFINITY;
    for (int j = first_key; j < n_keys;) {           /* block by block: one table lookup each */
        const int b = j / block_size, end = ls_min_int((b + 1) * block_size, n_keys);
        const uint16_t *kb = k + ls_kv_row(blocks, block_size, b * block_size) * kv_stride;
        for (; j < end; j++) {
            const float s = scale * ls_vec_dot(LS_TYPE_F16, head_dim,
                                               kb + (size_t)(j - b * block_size) * kv_stride, q16);
            scores[j] = s;
            if (s > mx) mx = s;
        }
    }
    double sum = 0.0;
    for (int j = first_key; j < n_keys; j++) {
        /* below -87.3 expf is subnormal (< 2^-126, nothing next to the maximum's 1) and goes
         * through libm's slow underflow path: flush it to 0 */
        const float dlt = scores[j] - mx;
        const float e = dlt < -87.3f ? 0.0f : expf(dlt);
        scores[j] = e;
        sum += e;
    }
    const float inv = (float)(1.0 / sum);
    memset(out, 0, sizeof(float) * head_dim);
    for (int j = first_key; j < n_keys;) {
        const int b = j / block_size, end = ls_min_int((b + 1) * block_size, n_keys);
        const uint16_t *vb = v + ls_kv_row(blocks, block_size, b * block_size) * kv_stride;
        for (; j < end; j++) {
            const float p = scores[j] * inv;
            ls_dequantize_row(LS_TYPE_F16, vb + (size_t)(j - b * block_size) * kv_stride, vrow,
                              head_dim);
            for (int d = 0; d < head_dim; d++) out[d] += p * vrow[d];
        }
    }
}

// p (n,) uint64 -> sum, four independent chains (the loads, not the adds, set the pace)
uint64_t ls_sum_u64(const uint64_t *p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    for (; i < n; ++i) s0 += p[i];
    return s0 + s1 + s2 + s3;
}
