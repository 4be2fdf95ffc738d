/*
 * dequant_avx512bf16.c - the AVX-512 kernels again, storing bf16 with AVX512-BF16's
 * vcvtneps2bf16: valid only for frames with tame parameters (quant.h), chosen through
 * shadow__dequant_kernels_tame(). Everything but the bf16 store is dequant_avx512.c's.
 */
#define SHADOW_DQ_AVX512_BF16 1
#include "dequant_avx512.c"
