/*
 * round_simd.h - the vector forms of the reference rounding (quant.h): float32 to bf16 or
 * fp16, nearest even, a NaN written as the canonical quiet NaN. Every decode kernel family
 * (dequant_*.c, pca_kernels.c) stores through these, so there is one copy of the rule per ISA
 * that every variant must match bit for bit.
 *
 * Each function carries the smallest target attribute it needs; GCC and clang inline it into
 * callers whose targets include that one (the kernels add fma, avx512bf16, ...).
 */
#ifndef SHADOW_QUANT_ROUND_SIMD_H
#define SHADOW_QUANT_ROUND_SIMD_H

#include <stdint.h>

#define SHADOW_QNAN_F32_BITS 0x7fc00000

#if defined(__x86_64__)
#include <immintrin.h>

#define SHADOW_ROUND_AVX2 __attribute__((target("avx2,f16c")))
#define SHADOW_ROUND_AVX512 __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl")))

SHADOW_ROUND_AVX2 static inline __m256 shadow__canon_nan_256(__m256 x)
{
	__m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);

	return _mm256_blendv_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(SHADOW_QNAN_F32_BITS)),
				nan);
}

SHADOW_ROUND_AVX2 static inline void shadow__store_bf16_256(uint8_t *out, __m256 x)
{
	__m256i u = _mm256_castps_si256(shadow__canon_nan_256(x));
	__m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));

	u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
	u = _mm256_srli_epi32(u, 16); /* 0..0xffff: packus is exact */
	_mm_storeu_si128((__m128i *)(void *)out,
			 _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1)));
}

SHADOW_ROUND_AVX2 static inline void shadow__store_fp16_256(uint8_t *out, __m256 x)
{
	_mm_storeu_si128((__m128i *)(void *)out,
			 _mm256_cvtps_ph(shadow__canon_nan_256(x), _MM_FROUND_TO_NEAREST_INT));
}

SHADOW_ROUND_AVX512 static inline __m512 shadow__canon_nan_512(__m512 x)
{
	__mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);

	return _mm512_mask_mov_ps(x, nan,
				  _mm512_castsi512_ps(_mm512_set1_epi32(SHADOW_QNAN_F32_BITS)));
}

SHADOW_ROUND_AVX512 static inline void shadow__store_bf16_512(uint8_t *out, __m512 x)
{
	__m512i u = _mm512_castps_si512(shadow__canon_nan_512(x));
	__m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));

	u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
	_mm256_storeu_si256((__m256i *)(void *)out,
			    _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}

SHADOW_ROUND_AVX512 static inline void shadow__store_fp16_512(uint8_t *out, __m512 x)
{
	_mm256_storeu_si256((__m256i *)(void *)out,
			    _mm512_cvtps_ph(shadow__canon_nan_512(x), _MM_FROUND_TO_NEAREST_INT));
}
#endif /* __x86_64__ */

#if defined(__aarch64__)
#include <arm_neon.h>

static inline float32x4_t shadow__canon_nan_f32x4(float32x4_t x)
{
	uint32x4_t ok = vceqq_f32(x, x); /* false only for NaN */

	return vbslq_f32(ok, x, vreinterpretq_f32_u32(vdupq_n_u32(SHADOW_QNAN_F32_BITS)));
}

static inline uint16x4_t shadow__bf16x4(float32x4_t x)
{
	uint32x4_t u = vreinterpretq_u32_f32(shadow__canon_nan_f32x4(x));
	uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));

	u = vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff)));
	return vshrn_n_u32(u, 16);
}

static inline uint16x4_t shadow__fp16x4(float32x4_t x)
{
	return vreinterpret_u16_f16(vcvt_f16_f32(shadow__canon_nan_f32x4(x)));
}
#endif /* __aarch64__ */

#endif /* SHADOW_QUANT_ROUND_SIMD_H */
