/*
 * dequant_avx2.c - the decode kernels for AVX2 + F16C (x86-64): the primitives of
 * dequant_template.h, then the template.
 *
 * The target is "avx2,f16c" without "fma", so the compiler cannot fuse the multiply and the
 * add even if asked to (the scalar reference never fuses). Symbols widen with vpmovzxbd and
 * vcvtdq2ps (exact); bf16 rounds in integer registers (+0x7fff + lsb, shift), fp16 with
 * vcvtps2ph in round-to-nearest-even; NaN is blended to the canonical quiet NaN first.
 * unpack_bits gathers each symbol's two bytes into a 16-bit lane with vpshufb and shifts it by
 * a per-lane amount with a multiply (AVX2 has no 16-bit variable shift): (v << (8 - s)) >> 8
 * in 16 bits is (v >> s) & 0xff.
 */
#if defined(__x86_64__)
#include <immintrin.h>

#include "quant/dequant_template.h" /* the shared part */
#include "quant/round_simd.h"

#define DQ_ATTR __attribute__((target("avx2,f16c")))

/* ---- row_vec, row_scalar: 8 elements per step ---- */
#define DQ_VW 8
typedef __m256 dq_vf;

DQ_ATTR static inline dq_vf dq_cvt_u8(const uint8_t *q)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadu_si64(q)));
}

/*
 * ECSQ: interleave the planes into 16-bit codes (punpcklbw), undo the zigzag in 16 bits,
 * (u >> 1) ^ -(u & 1) with -(u & 1) = (u << 15) >> 15 arithmetic, then sign-extend and convert.
 */
DQ_ATTR static inline dq_vf dq_cvt_zz(const uint8_t *lo, const uint8_t *hi)
{
	__m128i u = _mm_unpacklo_epi8(_mm_loadu_si64(lo), _mm_loadu_si64(hi));
	__m128i z = _mm_xor_si128(_mm_srli_epi16(u, 1), _mm_srai_epi16(_mm_slli_epi16(u, 15), 15));

	return _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(z));
}

DQ_ATTR static inline dq_vf dq_loadf(const float *p)
{
	return _mm256_loadu_ps(p);
}

DQ_ATTR static inline dq_vf dq_splat(float x)
{
	return _mm256_set1_ps(x);
}

DQ_ATTR static inline dq_vf dq_muladd(dq_vf q, dq_vf s, dq_vf b)
{
	return _mm256_add_ps(_mm256_mul_ps(q, s), b);
}


DQ_ATTR static inline void dq_store_bf16(uint8_t *out, dq_vf x)
{
	shadow__store_bf16_256(out, x);
}

DQ_ATTR static inline void dq_store_fp16(uint8_t *out, dq_vf x)
{
	shadow__store_fp16_256(out, x);
}

/* ---- merge_planes: 16 elements per step ---- */
#define DQ_MERGE_W 16

DQ_ATTR static inline void dq_merge_step(const uint8_t *hi, const uint8_t *lo, uint8_t *out)
{
	__m256i h = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)hi));
	__m256i l = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)lo));

	_mm256_storeu_si256((__m256i *)(void *)out, _mm256_or_si256(_mm256_slli_epi16(h, 8), l));
}

/* ---- unpack_bits: 32 symbols (4 groups of 8, 4 * bits bytes) per step ---- */
#define DQ_UNPACK_W 32
/* The 16-byte load of the last group starts at 3 * bits. */
#define DQ_UNPACK_READ(b) (3u * (b) + 16u)
#define DQ_UNPACK_READ_MAX (3u * 7u + 16u)

struct dq_unpack_ctx {
	__m256i shuf, mul, mask;
	size_t bits;
};

DQ_ATTR static inline void dq_unpack_setup(unsigned bits, struct dq_unpack_ctx *c)
{
	static const uint8_t shuf[9][16] = DQ_UNPACK_SHUF_TABLE;
	static const uint16_t shift[9][8] = DQ_UNPACK_SHIFT_TABLE;
	uint16_t mul[8];

	for (int k = 0; k < 8; k++)
		mul[k] = (uint16_t)(1u << (8u - shift[bits][k]));
	c->shuf = _mm256_broadcastsi128_si256(
		_mm_loadu_si128((const __m128i *)(const void *)shuf[bits]));
	c->mul = _mm256_broadcastsi128_si256(
		_mm_loadu_si128((const __m128i *)(const void *)mul));
	c->mask = _mm256_set1_epi8((char)((1u << bits) - 1u));
	c->bits = bits;
}

/* 16 symbols in 16-bit lanes: groups of 8 at p (low lane) and p2 (high lane). */
DQ_ATTR static inline __m256i dq_unpack_16(const uint8_t *p, const uint8_t *p2,
					   const struct dq_unpack_ctx *c)
{
	__m256i v = _mm256_inserti128_si256(
		_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p)),
		_mm_loadu_si128((const __m128i *)(const void *)p2), 1);

	v = _mm256_shuffle_epi8(v, c->shuf);
	return _mm256_srli_epi16(_mm256_mullo_epi16(v, c->mul), 8);
}

DQ_ATTR static inline void dq_unpack_step(const uint8_t *p, const struct dq_unpack_ctx *c,
					  uint8_t *q)
{
	size_t b = c->bits;
	/* packus interleaves per 128-bit lane: lane 0 gets groups 0, 1 and lane 1 groups 2, 3. */
	__m256i a = dq_unpack_16(p, p + 2 * b, c), d = dq_unpack_16(p + b, p + 3 * b, c);

	_mm256_storeu_si256((__m256i *)(void *)q,
			    _mm256_and_si256(_mm256_packus_epi16(a, d), c->mask));
}

#define DQ_SUFFIX avx2
#define DQ_ISA "avx2"
#include "quant/dequant_template.h"

#endif /* __x86_64__ */
