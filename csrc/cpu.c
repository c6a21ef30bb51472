/* cpu.c — run-time CPU detection and the choice of kernels.
 *
 * The SIMD levels are scalar, AVX2 (+ FMA, F16C) and AVX-512 (F, BW, VL, VNNI; AVX2 kernels where it
 * has none). At load time (a constructor) one dispatch table per level is resolved from the rows
 * of types.c — each slot the best kernel at or below the level, gemm and gemv always as a pair of
 * one level — and the level is the best the CPU has, unless LLMSTREAM_SIMD (scalar, avx2, avx512)
 * or LLMSTREAM_AVX512=0 (at most AVX2) say otherwise.
 *
 * Dispatch is one atomic pointer load per call (ls_kernels()), then an indexed function pointer:
 * cheap, and safe from any number of OpenMP threads. ls_set_simd() swaps the pointer atomically;
 * calls already running finish with the table they started with.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quants_impl.h"

static ls_kernel_table tables[LS_SIMD_LEVELS];   /* resolved from ls_types, built once */
static int max_level;                            /* the best level the CPU has */

static const ls_kernel_table *current = &tables[LS_SIMD_SCALAR];
static int current_level = LS_SIMD_SCALAR;

const ls_kernel_table *ls_kernels(void) { return __atomic_load_n(&current, __ATOMIC_ACQUIRE); }

int ls_cpu_has_avx2(void) {
    __builtin_cpu_init();   /* idempotent; needed when called before libgcc's own constructor */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

int ls_simd_emulated(void) {
#ifdef LS_EMULATE_AVX512
    return 1;
#else
    return 0;
#endif
}

int ls_cpu_has_avx512(void) {
    __builtin_cpu_init();
    if (ls_simd_emulated()) return ls_cpu_has_avx2();   /* test build: AVX-512 through SIMDe on AVX2 */
    return ls_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* The kernel of a slot at `level`: its own, else the best one below. */
#define BEST(T, slot, level) ({ T f_ = NULL;                                          \
                                for (int l_ = (level); l_ >= 0 && !f_; --l_) f_ = slot[l_]; \
                                f_; })

static void build_tables(void) {
    for (int level = 0; level < LS_SIMD_LEVELS; ++level) {
        ls_kernel_table *k = &tables[level];
        for (int t = 0; t < LS_TYPE_SLOTS; ++t) {
            const ls_type_traits *r = &ls_types[t];
            k->vec_dot[t] = BEST(ls_vec_dot_fn, r->vec_dot, level);
            k->quantize[t] = BEST(ls_quantize_fn, r->quantize, level);
            k->dequantize[t] = BEST(ls_dequantize_fn, r->dequantize, level);
            k->vec_dot_x4[t] = BEST(ls_vec_dot_x4_fn, r->vec_dot_x4, level);
            /* gemm and gemv agree bit for bit only within one level's pair */
            k->gemm[t] = k->gemv[t] = NULL;
            for (int l = level; l >= 0; --l)
                if (r->gemm[l] && r->gemv[l]) {
                    k->gemm[t] = r->gemm[l];
                    k->gemv[t] = r->gemv[l];
                    break;
                }
        }
    }
}

int ls_get_simd(void) { return __atomic_load_n(&current_level, __ATOMIC_ACQUIRE); }

int ls_set_simd(int level) {
    if (level < LS_SIMD_SCALAR) level = LS_SIMD_SCALAR;
    if (level > max_level) level = max_level;
    __atomic_store_n(&current, &tables[level], __ATOMIC_RELEASE);
    __atomic_store_n(&current_level, level, __ATOMIC_RELEASE);
    return level;
}

/* 1 when the AVX2 level has its own (non-fallback) kernel of that kind for `type`. */
int ls_simd_has_vec_dot(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_types[type].vec_dot[LS_SIMD_AVX2] != NULL;
}

int ls_simd_has_vec_dot_x4(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_types[type].vec_dot_x4[LS_SIMD_AVX2] != NULL;
}

int ls_simd_has_gemm(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_types[type].gemm[LS_SIMD_AVX2] && ls_types[type].gemv[LS_SIMD_AVX2];
}

int ls_simd_has_quantize(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_types[type].quantize[LS_SIMD_AVX2] != NULL;
}

int ls_matmul_uses_avx512(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_get_simd() == LS_SIMD_AVX512
        && ls_types[type].gemm[LS_SIMD_AVX512] && ls_types[type].gemv[LS_SIMD_AVX512];
}

static int env_is(const char *v, const char *a, const char *b) { return !strcasecmp(v, a) || !strcmp(v, b); }

__attribute__((constructor)) static void ls_cpu_init(void) {
    build_tables();
    max_level = ls_cpu_has_avx512() ? LS_SIMD_AVX512 : ls_cpu_has_avx2() ? LS_SIMD_AVX2 : LS_SIMD_SCALAR;
    int want = max_level;
    const char *env = getenv("LLMSTREAM_SIMD");
    if (env && *env) {
        if (env_is(env, "scalar", "0") || !strcasecmp(env, "none")) want = LS_SIMD_SCALAR;
        else if (env_is(env, "avx2", "1")) want = LS_SIMD_AVX2;
        else if (env_is(env, "avx512", "2")) want = LS_SIMD_AVX512;
        else if (strcasecmp(env, "auto"))
            fprintf(stderr, "llmstream: ignoring LLMSTREAM_SIMD=%s (expected scalar, avx2, avx512 or auto)\n", env);
    }
    const char *e512 = getenv("LLMSTREAM_AVX512");   /* a cap, whatever LLMSTREAM_SIMD asks */
    if (e512 && (env_is(e512, "off", "0") || !strcasecmp(e512, "no")) && want > LS_SIMD_AVX2) want = LS_SIMD_AVX2;
    ls_set_simd(want);
}
