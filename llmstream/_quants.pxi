# Wrappers over csrc/quants.h (dequantize, quantize, vec_dot, SIMD level); included by _ops.pyx.
