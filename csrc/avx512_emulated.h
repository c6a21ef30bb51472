/* avx512_emulated.h — test builds only: quants_avx512.c's AVX-512 intrinsics carried out on an AVX2
 * CPU, so that its kernels can be run and pinned to their scalar twins on machines without AVX-512.
 *
 * Built by `LLMSTREAM_EMULATE_AVX512=1 python setup.py build_ext` (tests/test_avx512_emulated.py
 * does it in a scratch directory), which defines LS_EMULATE_AVX512: quants_avx512.c is then
 * compiled for AVX2 with SIMDe (Debian's libsimde-dev, https://github.com/simd-everywhere/simde)
 * mapping each _mm512_* intrinsic and type to its portable implementation, and cpu.c reports the
 * AVX-512 level as present. The integer results are those of the instructions; the float ones too
 * (SIMDe splits a 512-bit fmadd into two AVX2 fmadds: one rounding each, as the instruction). Far
 * slower than the real thing: never a build to time or to serve with (_ops.simd_emulated() says
 * which build is loaded, and the bench refuses it).
 */
#ifndef LS_AVX512_EMULATED_H
#define LS_AVX512_EMULATED_H

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

/* Intrinsics this SIMDe release lacks, by their definition in Intel's guide. */
static inline simde__m512 ls_emu_mm512_cvtepi32_ps(simde__m512i a) {
    simde__m512i_private a_ = simde__m512i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; ++i) r.f32[i] = (float)a_.i32[i];
    return simde__m512_from_private(r);
}
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps ls_emu_mm512_cvtepi32_ps

static inline simde__m512 ls_emu_mm512_cvtph_ps(simde__m256i h) {   /* 16 fp16 -> 16 float (F16C) */
    simde__m256i_private h_ = simde__m256i_to_private(h);
    simde__m512_private r;
    for (int i = 0; i < 16; ++i) r.f32[i] = _cvtsh_ss(h_.u16[i]);
    return simde__m512_from_private(r);
}
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps ls_emu_mm512_cvtph_ps

static inline int ls_emu_mm512_reduce_add_epi32(simde__m512i a) {    /* wrapping int32 sum */
    simde__m512i_private a_ = simde__m512i_to_private(a);
    uint32_t s = 0;
    for (int i = 0; i < 16; ++i) s += (uint32_t)a_.i32[i];
    return (int)s;
}
#undef _mm512_reduce_add_epi32
#define _mm512_reduce_add_epi32 ls_emu_mm512_reduce_add_epi32

static inline simde__m512i ls_emu_mm512_zextsi256_si512(simde__m256i a) {   /* upper half zero */
    return simde_mm512_inserti64x4(simde_mm512_setzero_si512(), a, 0);
}
#undef _mm512_zextsi256_si512
#define _mm512_zextsi256_si512 ls_emu_mm512_zextsi256_si512

#endif
