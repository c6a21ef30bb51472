/* types.c — the type table: one row per type id, as ggml's type traits.
 *
 * A row says what the type is (GGML's name, block size and bytes, the activation type its dot
 * products take, its repacked "x8" layout) and lists its kernels at each SIMD level, [scalar, AVX2,
 * AVX-512] (quants_impl.h, ls_type_traits); a NULL kernel means the level uses the best one below
 * it. Everything else derives from these rows: cpu.c's per-level dispatch tables, quants.c's
 * type properties, the Python type tables (llmstream/_quants.pxi type_table(), gguf.GGML_TYPES)
 * and the message naming the supported types. GGML ids llmstream does not compute have a row with
 * their name only, so a file using one is refused with that name.
 */
#include "quants_impl.h"

#define NAMED(n) {.name = n}   /* a GGML type llmstream does not compute */

const ls_type_traits ls_types[LS_TYPE_SLOTS] = {
    [LS_TYPE_F32] = {"F32", 1, 4, LS_TYPE_F32, 0,
        .dequantize = {dequantize_row_f32}, .quantize = {quantize_row_f32},
        .vec_dot = {vec_dot_f32_f32, vec_dot_f32_f32_avx2}},
    [LS_TYPE_F16] = {"F16", 1, 2, LS_TYPE_F16, 0,
        .dequantize = {dequantize_row_f16, dequantize_row_f16_avx2},
        .quantize = {quantize_row_f16, quantize_row_f16_avx2},
        .vec_dot = {vec_dot_f16_f16, vec_dot_f16_f16_avx2}},
    [LS_TYPE_BF16] = {"BF16", 1, 2, LS_TYPE_BF16, 0,
        .dequantize = {dequantize_row_bf16}, .quantize = {quantize_row_bf16, quantize_row_bf16_avx2},
        .vec_dot = {vec_dot_bf16_bf16, vec_dot_bf16_bf16_avx2}},
    [LS_TYPE_Q4_0] = {"Q4_0", QK4_0, sizeof(block_q4_0), LS_TYPE_Q8_0, 0,
        .dequantize = {dequantize_row_q4_0},
        .vec_dot = {vec_dot_q4_0_q8_0, vec_dot_q4_0_q8_0_avx2},
        .vec_dot_x4 = {NULL, vec_dot_q4_0_q8_0_x4_avx2},
        .gemm = {NULL, gemm_q4_0_q8_0_avx2, gemm_q4_0_q8_0_avx512},
        .gemv = {NULL, gemv_q4_0_q8_0_avx2, gemv_q4_0_q8_0_avx512}},
    [LS_TYPE_Q4_1] = {"Q4_1", QK4_1, sizeof(block_q4_1), LS_TYPE_Q8_1, 0,
        .dequantize = {dequantize_row_q4_1},
        .vec_dot = {vec_dot_q4_1_q8_1, vec_dot_q4_1_q8_1_avx2}},
    [LS_TYPE_Q5_0] = {"Q5_0", QK5_0, sizeof(block_q5_0), LS_TYPE_Q8_0, 0,
        .dequantize = {dequantize_row_q5_0},
        .vec_dot = {vec_dot_q5_0_q8_0, vec_dot_q5_0_q8_0_avx2}},
    [LS_TYPE_Q5_1] = {"Q5_1", QK5_1, sizeof(block_q5_1), LS_TYPE_Q8_1, 0,
        .dequantize = {dequantize_row_q5_1},
        .vec_dot = {vec_dot_q5_1_q8_1, vec_dot_q5_1_q8_1_avx2}},
    [LS_TYPE_Q8_0] = {"Q8_0", QK8_0, sizeof(block_q8_0), LS_TYPE_Q8_0, 0,
        .dequantize = {dequantize_row_q8_0}, .quantize = {quantize_row_q8_0, quantize_row_q8_0_avx2},
        .vec_dot = {vec_dot_q8_0_q8_0, vec_dot_q8_0_q8_0_avx2},
        .vec_dot_x4 = {NULL, vec_dot_q8_0_q8_0_x4_avx2},
        .gemm = {NULL, gemm_q8_0_q8_0_avx2, gemm_q8_0_q8_0_avx512},
        .gemv = {NULL, gemv_q8_0_q8_0_avx2, gemv_q8_0_q8_0_avx512}},
    [LS_TYPE_Q8_1] = {"Q8_1", QK8_1, sizeof(block_q8_1), LS_TYPE_Q8_1, 0,
        .dequantize = {dequantize_row_q8_1}, .quantize = {quantize_row_q8_1, quantize_row_q8_1_avx2}},
    [LS_TYPE_Q2_K] = {"Q2_K", QK_K, sizeof(block_q2_K), LS_TYPE_Q8_K, LS_TYPE_Q2_K_X8,
        .dequantize = {dequantize_row_q2_K},
        .vec_dot = {vec_dot_q2_K_q8_K, vec_dot_q2_K_q8_K_avx2}},
    [LS_TYPE_Q3_K] = {"Q3_K", QK_K, sizeof(block_q3_K), LS_TYPE_Q8_K, LS_TYPE_Q3_K_X8,
        .dequantize = {dequantize_row_q3_K},
        .vec_dot = {vec_dot_q3_K_q8_K, vec_dot_q3_K_q8_K_avx2}},
    [LS_TYPE_Q4_K] = {"Q4_K", QK_K, sizeof(block_q4_K), LS_TYPE_Q8_K, LS_TYPE_Q4_K_X8,
        .dequantize = {dequantize_row_q4_K},
        .vec_dot = {vec_dot_q4_K_q8_K, vec_dot_q4_K_q8_K_avx2},
        .vec_dot_x4 = {NULL, vec_dot_q4_K_q8_K_x4_avx2},
        .gemm = {NULL, gemm_q4_K_q8_K_avx2, gemm_q4_K_q8_K_avx512},
        .gemv = {NULL, gemv_q4_K_q8_K_avx2, gemv_q4_K_q8_K_avx512}},
    [LS_TYPE_Q5_K] = {"Q5_K", QK_K, sizeof(block_q5_K), LS_TYPE_Q8_K, LS_TYPE_Q5_K_X8,
        .dequantize = {dequantize_row_q5_K},
        .vec_dot = {vec_dot_q5_K_q8_K, vec_dot_q5_K_q8_K_avx2}},
    [LS_TYPE_Q6_K] = {"Q6_K", QK_K, sizeof(block_q6_K), LS_TYPE_Q8_K, LS_TYPE_Q6_K_X8,
        .dequantize = {dequantize_row_q6_K},
        .vec_dot = {vec_dot_q6_K_q8_K, vec_dot_q6_K_q8_K_avx2},
        .vec_dot_x4 = {NULL, vec_dot_q6_K_q8_K_x4_avx2},
        .gemm = {NULL, gemm_q6_K_q8_K_avx2, gemm_q6_K_q8_K_avx512},
        .gemv = {NULL, gemv_q6_K_q8_K_avx2, gemv_q6_K_q8_K_avx512}},
    [LS_TYPE_Q8_K] = {"Q8_K", QK_K, sizeof(block_q8_K), LS_TYPE_Q8_K, 0,
        .dequantize = {dequantize_row_q8_K}, .quantize = {quantize_row_q8_K, quantize_row_q8_K_avx2}},
    [LS_TYPE_IQ4_NL] = {"IQ4_NL", QK4_NL, sizeof(block_iq4_nl), LS_TYPE_Q8_0, 0,
        .dequantize = {dequantize_row_iq4_nl},
        .vec_dot = {vec_dot_iq4_nl_q8_0, vec_dot_iq4_nl_q8_0_avx2}},
    [LS_TYPE_IQ4_XS] = {"IQ4_XS", QK_K, sizeof(block_iq4_xs), LS_TYPE_Q8_K, 0,
        .dequantize = {dequantize_row_iq4_xs},
        .vec_dot = {vec_dot_iq4_xs_q8_K, vec_dot_iq4_xs_q8_K_avx2}},

    /* the repacked layouts (formats.h "Repacked layouts"): only ls_matmul_rows takes them; one
     * kernel for any number of tokens, in both matmul slots */
    [LS_TYPE_Q4_K_X8] = {"Q4_K_X8", QK_K, sizeof(block_q4_Kx8) / 8, LS_TYPE_Q8_K, 1,
        .gemm = {matmul_rows_q4_K_x8_q8_K, gemm_q4_K_x8_q8_K_avx2},
        .gemv = {matmul_rows_q4_K_x8_q8_K, gemm_q4_K_x8_q8_K_avx2}},
    [LS_TYPE_Q5_K_X8] = {"Q5_K_X8", QK_K, sizeof(block_q5_Kx8) / 8, LS_TYPE_Q8_K, 1,
        .gemm = {matmul_rows_q5_K_x8_q8_K, gemm_q5_K_x8_q8_K_avx2},
        .gemv = {matmul_rows_q5_K_x8_q8_K, gemm_q5_K_x8_q8_K_avx2}},
    [LS_TYPE_Q6_K_X8] = {"Q6_K_X8", QK_K, sizeof(block_q6_Kx8) / 8, LS_TYPE_Q8_K, 1,
        .gemm = {matmul_rows_q6_K_x8_q8_K, gemm_q6_K_x8_q8_K_avx2},
        .gemv = {matmul_rows_q6_K_x8_q8_K, gemm_q6_K_x8_q8_K_avx2}},
    [LS_TYPE_Q2_K_X8] = {"Q2_K_X8", QK_K, sizeof(block_q2_Kx8) / 8, LS_TYPE_Q8_K, 1,
        .gemm = {matmul_rows_q2_K_x8_q8_K, gemm_q2_K_x8_q8_K_avx2},
        .gemv = {matmul_rows_q2_K_x8_q8_K, gemm_q2_K_x8_q8_K_avx2}},
    [LS_TYPE_Q3_K_X8] = {"Q3_K_X8", QK_K, sizeof(block_q3_Kx8) / 8, LS_TYPE_Q8_K, 1,
        .gemm = {matmul_rows_q3_K_x8_q8_K, gemm_q3_K_x8_q8_K_avx2},
        .gemv = {matmul_rows_q3_K_x8_q8_K, gemm_q3_K_x8_q8_K_avx2}},

    /* GGML ids of types llmstream does not compute (ggml.h): named in the refusal of a file */
    [4] = NAMED("Q4_2"), [5] = NAMED("Q4_3"), [16] = NAMED("IQ2_XXS"), [17] = NAMED("IQ2_XS"),
    [18] = NAMED("IQ3_XXS"), [19] = NAMED("IQ1_S"), [21] = NAMED("IQ3_S"), [22] = NAMED("IQ2_S"),
    [24] = NAMED("I8"), [25] = NAMED("I16"), [26] = NAMED("I32"), [27] = NAMED("I64"),
    [28] = NAMED("F64"), [29] = NAMED("IQ1_M"), [34] = NAMED("TQ1_0"), [35] = NAMED("TQ2_0"),
    [39] = NAMED("MXFP4"), [40] = NAMED("NVFP4"), [41] = NAMED("Q1_0"),
};
