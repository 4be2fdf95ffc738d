/*
 * dequant_avx512.c - the decode kernels for AVX-512 F/BW/VL (x86-64): the primitives of
 * dequant_template.h, then the template.
 *
 * 16 floats per zmm register; bf16 rounds in integer registers and narrows with vpmovdw, fp16
 * converts with vcvtps2ph in round-to-nearest-even, NaN is replaced under a compare mask first.
 * unpack_bits works on ymm registers as in the AVX2 variant but shifts each 16-bit lane with
 * vpsrlvw (AVX512BW+VL) instead of a multiply.
 */
#if defined(__x86_64__)
#include <immintrin.h>

#include "quant/dequant_template.h" /* the shared part */
#include "quant/round_simd.h"

#if defined(SHADOW_DQ_AVX512_BF16)
/* dequant_avx512bf16.c: the same kernels, bf16 stored with vcvtneps2bf16 (tame parameters) */
#define DQ_ATTR __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define DQ_ATTR __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl")))
#endif

/* ---- row_vec, row_scalar: 16 elements per step ---- */
#define DQ_VW 16
typedef __m512 dq_vf;

DQ_ATTR static inline dq_vf dq_cvt_u8(const uint8_t *q)
{
	return _mm512_cvtepi32_ps(
		_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)q)));
}

/*
 * ECSQ: interleave the planes into 16 16-bit codes (punpck[lh]bw), undo the zigzag in 16 bits
 * in a ymm register, (u >> 1) ^ -(u & 1) with -(u & 1) = (u << 15) >> 15 arithmetic, then
 * sign-extend to 32 bits and convert.
 */
DQ_ATTR static inline dq_vf dq_cvt_zz(const uint8_t *lo, const uint8_t *hi)
{
	__m128i l = _mm_loadu_si128((const __m128i *)(const void *)lo);
	__m128i h = _mm_loadu_si128((const __m128i *)(const void *)hi);
	__m256i u = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(l, h)),
					    _mm_unpackhi_epi8(l, h), 1);
	__m256i z = _mm256_xor_si256(_mm256_srli_epi16(u, 1),
				     _mm256_srai_epi16(_mm256_slli_epi16(u, 15), 15));

	return _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(z));
}

DQ_ATTR static inline dq_vf dq_loadf(const float *p)
{
	return _mm512_loadu_ps(p);
}

DQ_ATTR static inline dq_vf dq_splat(float x)
{
	return _mm512_set1_ps(x);
}

DQ_ATTR static inline dq_vf dq_muladd(dq_vf q, dq_vf s, dq_vf b)
{
	return _mm512_add_ps(_mm512_mul_ps(q, s), b);
}


#if defined(SHADOW_DQ_AVX512_BF16)
/*
 * Round to nearest even in one instruction. vcvtneps2bf16 reads subnormal inputs as zero and
 * keeps a NaN's payload, so this equals the reference only for results that are neither: what
 * tame parameters guarantee (quant.h, shadow__dequant_kernels_tame()). Faster than the integer
 * rounding (bench_kernels on dev: rows_vec 56 vs 25 GB/s, row_scalar 49 vs 24).
 */
DQ_ATTR static inline void dq_store_bf16(uint8_t *out, dq_vf x)
{
	_mm256_storeu_si256((__m256i *)(void *)out, (__m256i)_mm512_cvtneps_pbh(x));
}
#else
DQ_ATTR static inline void dq_store_bf16(uint8_t *out, dq_vf x)
{
	shadow__store_bf16_512(out, x);
}
#endif

DQ_ATTR static inline void dq_store_fp16(uint8_t *out, dq_vf x)
{
	shadow__store_fp16_512(out, x);
}

/* ---- merge_planes: 32 elements per step ---- */
#define DQ_MERGE_W 32

DQ_ATTR static inline void dq_merge_step(const uint8_t *hi, const uint8_t *lo, uint8_t *out)
{
	__m512i h = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)hi));
	__m512i l = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)lo));

	_mm512_storeu_si512(out, _mm512_or_si512(_mm512_slli_epi16(h, 8), l));
}

/* ---- unpack_bits: 32 symbols (4 groups of 8, 4 * bits bytes) per step ---- */
#define DQ_UNPACK_W 32
#define DQ_UNPACK_READ(b) (3u * (b) + 16u)
#define DQ_UNPACK_READ_MAX (3u * 7u + 16u)

struct dq_unpack_ctx {
	__m256i shuf, shift, mask;
	size_t bits;
};

DQ_ATTR static inline void dq_unpack_setup(unsigned bits, struct dq_unpack_ctx *c)
{
	static const uint8_t shuf[9][16] = DQ_UNPACK_SHUF_TABLE;
	static const uint16_t shift[9][8] = DQ_UNPACK_SHIFT_TABLE;

	c->shuf = _mm256_broadcastsi128_si256(
		_mm_loadu_si128((const __m128i *)(const void *)shuf[bits]));
	c->shift = _mm256_broadcastsi128_si256(
		_mm_loadu_si128((const __m128i *)(const void *)shift[bits]));
	c->mask = _mm256_set1_epi16((short)((1u << bits) - 1u));
	c->bits = bits;
}

/* 16 symbols in 16-bit lanes, masked to `bits`: groups of 8 at p (low lane) and p2 (high). */
DQ_ATTR static inline __m256i dq_unpack_16(const uint8_t *p, const uint8_t *p2,
					   const struct dq_unpack_ctx *c)
{
	__m256i v = _mm256_inserti128_si256(
		_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p)),
		_mm_loadu_si128((const __m128i *)(const void *)p2), 1);

	v = _mm256_shuffle_epi8(v, c->shuf);
	return _mm256_and_si256(_mm256_srlv_epi16(v, c->shift), c->mask);
}

DQ_ATTR static inline void dq_unpack_step(const uint8_t *p, const struct dq_unpack_ctx *c,
					  uint8_t *q)
{
	size_t b = c->bits;
	/* packus interleaves per 128-bit lane: lane 0 gets groups 0, 1 and lane 1 groups 2, 3. */
	__m256i a = dq_unpack_16(p, p + 2 * b, c), d = dq_unpack_16(p + b, p + 3 * b, c);

	_mm256_storeu_si256((__m256i *)(void *)q, _mm256_packus_epi16(a, d));
}

#if defined(SHADOW_DQ_AVX512_BF16)
#define DQ_SUFFIX avx512bf16
#define DQ_ISA "avx512bf16"
#else
#define DQ_SUFFIX avx512
#define DQ_ISA "avx512"
#endif
#include "quant/dequant_template.h"

#endif /* __x86_64__ */
