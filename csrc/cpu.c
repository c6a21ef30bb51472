/* cpu.c — run-time CPU detection and the choice of kernel table.
 *
 * At load time (a constructor) the CPU is probed for AVX2 + FMA + F16C and the AVX2 table is
 * completed with the scalar kernels for any slot it leaves empty; the level is then the best the
 * CPU has, unless the environment variable LLMSTREAM_SIMD=scalar forces the scalar path.
 * On CPUs that also have AVX512F/BW/VL/VNNI the AVX2 level takes the few AVX-512 kernels of
 * quants_avx512.c into its table (ls_set_avx512; LLMSTREAM_AVX512=0 keeps it AVX2-only).
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

static ls_kernel_table avx2_complete;    /* ls_kernels_avx2 with scalar fallbacks, built once */
static int avx2_ready;                   /* 1 once avx2_complete is built and the CPU has AVX2 */

static const ls_kernel_table *current = &ls_kernels_scalar;
static int current_level = LS_SIMD_SCALAR;

const ls_kernel_table *ls_kernels(void) { return __atomic_load_n(&current, __ATOMIC_ACQUIRE); }

int ls_cpu_has_avx2(void) {
    __builtin_cpu_init();   /* idempotent; needed when called before libgcc's own constructor */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

static int avx512_used;                  /* 1 while the AVX-512 4-token kernels fill avx2_complete */

static void build_avx2_table(void) {
    avx2_complete = ls_kernels_avx2;
    for (int t = 0; t < LS_TYPE_SLOTS; ++t) {
        if (!avx2_complete.vec_dot[t]) avx2_complete.vec_dot[t] = ls_kernels_scalar.vec_dot[t];
        if (!avx2_complete.quantize[t]) avx2_complete.quantize[t] = ls_kernels_scalar.quantize[t];
        if (!avx2_complete.dequantize[t]) avx2_complete.dequantize[t] = ls_kernels_scalar.dequantize[t];
    }
}

int ls_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return ls_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* The AVX-512 matmul kernels (gemm / gemv slots) join the AVX2 table, slot by slot, atomically (a
 * matmul running meanwhile may use either kind; tests and benchmarks switch, not servers); off, the
 * slots hold the AVX2 table's own gemm / gemv (quants_avx2.c). */
int ls_set_avx512(int on) {
    if (!__atomic_load_n(&avx2_ready, __ATOMIC_ACQUIRE)) return 0;
    const int use = on && ls_cpu_has_avx512();
    for (int t = 0; t < LS_TYPE_SLOTS; ++t) {
        /* a type's gemm and gemv come as a pair from one table (they agree bit for bit); without
         * AVX-512 the AVX2 table's own pair, if it has one */
        const ls_kernel_table *src = use && ls_kernels_avx512.gemm[t] && ls_kernels_avx512.gemv[t]
                                     ? &ls_kernels_avx512 : &ls_kernels_avx2;
        __atomic_store_n(&avx2_complete.gemm[t], src->gemm[t], __ATOMIC_RELEASE);
        __atomic_store_n(&avx2_complete.gemv[t], src->gemv[t], __ATOMIC_RELEASE);
    }
    __atomic_store_n(&avx512_used, use, __ATOMIC_RELEASE);
    return use;
}

int ls_get_avx512(void) { return __atomic_load_n(&avx512_used, __ATOMIC_ACQUIRE); }

int ls_get_simd(void) { return __atomic_load_n(&current_level, __ATOMIC_ACQUIRE); }

int ls_set_simd(int level) {
    const int use_avx2 = level >= LS_SIMD_AVX2 && __atomic_load_n(&avx2_ready, __ATOMIC_ACQUIRE);
    __atomic_store_n(&current, use_avx2 ? (const ls_kernel_table *)&avx2_complete : &ls_kernels_scalar,
                     __ATOMIC_RELEASE);
    __atomic_store_n(&current_level, use_avx2 ? LS_SIMD_AVX2 : LS_SIMD_SCALAR, __ATOMIC_RELEASE);
    return use_avx2 ? LS_SIMD_AVX2 : LS_SIMD_SCALAR;
}

/* 1 when the AVX2 table has its own kernel for vec_dot with weights of `type` (not a fallback). */
int ls_simd_has_vec_dot(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_kernels_avx2.vec_dot[type] != NULL;
}

/* 1 when the AVX2 table has a 4-token vec_dot for weights of `type`. */
int ls_simd_has_vec_dot_x4(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_kernels_avx2.vec_dot_x4[type] != NULL;
}

/* 1 when the AVX2 table has its own matmul kernels with a row per lane (gemm and gemv) for `type`. */
int ls_simd_has_gemm(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_kernels_avx2.gemm[type] && ls_kernels_avx2.gemv[type];
}

/* 1 when weights of `type` are multiplied by the AVX-512 kernels now (ls_set_avx512 on, and
 * quants_avx512.c has a gemm / gemv pair for the type). */
int ls_matmul_uses_avx512(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && __atomic_load_n(&avx512_used, __ATOMIC_ACQUIRE)
        && ls_kernels_avx512.gemm[type] && ls_kernels_avx512.gemv[type];
}

/* 1 when the AVX2 table has its own quantizer for the activation type `type`. */
int ls_simd_has_quantize(int type) {
    return type >= 0 && type < LS_TYPE_SLOTS && ls_kernels_avx2.quantize[type] != NULL;
}

__attribute__((constructor)) static void ls_cpu_init(void) {
    if (ls_cpu_has_avx2()) {
        build_avx2_table();
        __atomic_store_n(&avx2_ready, 1, __ATOMIC_RELEASE);
        const char *e512 = getenv("LLMSTREAM_AVX512");
        ls_set_avx512(!(e512 && (!strcmp(e512, "0") || !strcasecmp(e512, "off") || !strcasecmp(e512, "no"))));
    }
    const char *env = getenv("LLMSTREAM_SIMD");
    int want = LS_SIMD_AVX2;
    if (env && *env) {
        if (!strcasecmp(env, "scalar") || !strcmp(env, "0") || !strcasecmp(env, "none")) {
            want = LS_SIMD_SCALAR;
        } else if (strcasecmp(env, "avx2") && strcmp(env, "1") && strcasecmp(env, "auto")) {
            fprintf(stderr, "llmstream: ignoring LLMSTREAM_SIMD=%s (expected scalar, avx2 or auto)\n", env);
        }
    }
    ls_set_simd(want);
}
