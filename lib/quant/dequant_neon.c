/*
 * dequant_neon.c - the decode kernels for Advanced SIMD (AArch64, where it is always present):
 * the primitives of dequant_template.h, then the template.
 *
 * 8 floats per step in two q registers. bf16 rounds in integer registers (+0x7fff + lsb, narrowing
 * shift), fp16 converts with fcvtn, which rounds as FPCR says (nearest even by default). NaN is
 * replaced with a bit-select first. merge_planes is one interleaving store (st2); unpack_bits
 * gathers each symbol's two bytes with tbl and shifts each 16-bit lane right with ushl by a
 * negative amount. Stores go through uint8_t pointers because `out` may be odd.
 */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "quant/dequant_template.h" /* the shared part */
#include "quant/round_simd.h"

#define DQ_ATTR

/* ---- row_vec, row_scalar: 8 elements per step ---- */
#define DQ_VW 8
typedef float32x4x2_t dq_vf;

static inline dq_vf dq_cvt_u8(const uint8_t *q)
{
	uint16x8_t w = vmovl_u8(vld1_u8(q));
	dq_vf r = { { vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))),
		      vcvtq_f32_u32(vmovl_high_u16(w)) } };

	return r;
}

/*
 * ECSQ: widen and merge the planes into 16-bit codes (ushll, ushll #8, orr), undo the zigzag
 * in 16 bits, (u >> 1) ^ -(u & 1) with -(u & 1) = (u << 15) >> 15 arithmetic, then
 * sign-extend to 32 bits and convert.
 */
static inline dq_vf dq_cvt_zz(const uint8_t *lo, const uint8_t *hi)
{
	uint16x8_t u = vorrq_u16(vmovl_u8(vld1_u8(lo)), vshll_n_u8(vld1_u8(hi), 8));
	int16x8_t s = vreinterpretq_s16_u16(u);
	int16x8_t z = veorq_s16(vreinterpretq_s16_u16(vshrq_n_u16(u, 1)),
				vshrq_n_s16(vshlq_n_s16(s, 15), 15));
	dq_vf r = { { vcvtq_f32_s32(vmovl_s16(vget_low_s16(z))),
		      vcvtq_f32_s32(vmovl_high_s16(z)) } };

	return r;
}

static inline dq_vf dq_loadf(const float *p)
{
	dq_vf r = { { vld1q_f32(p), vld1q_f32(p + 4) } };

	return r;
}

static inline dq_vf dq_splat(float x)
{
	dq_vf r = { { vdupq_n_f32(x), vdupq_n_f32(x) } };

	return r;
}

static inline dq_vf dq_muladd(dq_vf q, dq_vf s, dq_vf b)
{
	dq_vf r = { { vaddq_f32(vmulq_f32(q.val[0], s.val[0]), b.val[0]),
		      vaddq_f32(vmulq_f32(q.val[1], s.val[1]), b.val[1]) } };

	return r;
}



static inline void dq_store_bf16(uint8_t *out, dq_vf x)
{
	uint16x8_t h = vcombine_u16(shadow__bf16x4(x.val[0]), shadow__bf16x4(x.val[1]));

	vst1q_u8(out, vreinterpretq_u8_u16(h));
}

static inline void dq_store_fp16(uint8_t *out, dq_vf x)
{
	uint16x8_t h = vcombine_u16(shadow__fp16x4(x.val[0]), shadow__fp16x4(x.val[1]));

	vst1q_u8(out, vreinterpretq_u8_u16(h));
}

/* ---- merge_planes: 16 elements per step ---- */
#define DQ_MERGE_W 16

static inline void dq_merge_step(const uint8_t *hi, const uint8_t *lo, uint8_t *out)
{
	uint8x16x2_t z = { { vld1q_u8(lo), vld1q_u8(hi) } }; /* little-endian: low byte first */

	vst2q_u8(out, z);
}

/* ---- unpack_bits: 16 symbols (2 groups of 8, 2 * bits bytes) per step ---- */
#define DQ_UNPACK_W 16
#define DQ_UNPACK_READ(b) ((b) + 16u)
#define DQ_UNPACK_READ_MAX (7u + 16u)

struct dq_unpack_ctx {
	uint8x16_t shuf;
	int16x8_t shift; /* negative: ushl shifts right */
	uint8x16_t mask;
	size_t bits;
};

static inline void dq_unpack_setup(unsigned bits, struct dq_unpack_ctx *c)
{
	static const uint8_t shuf[9][16] = DQ_UNPACK_SHUF_TABLE;
	static const uint16_t shift[9][8] = DQ_UNPACK_SHIFT_TABLE;

	c->shuf = vld1q_u8(shuf[bits]);
	c->shift = vnegq_s16(vreinterpretq_s16_u16(vld1q_u16(shift[bits])));
	c->mask = vdupq_n_u8((uint8_t)((1u << bits) - 1u));
	c->bits = bits;
}

static inline uint8x8_t dq_unpack_8(const uint8_t *p, const struct dq_unpack_ctx *c)
{
	uint16x8_t v = vreinterpretq_u16_u8(vqtbl1q_u8(vld1q_u8(p), c->shuf));

	return vmovn_u16(vshlq_u16(v, c->shift));
}

static inline void dq_unpack_step(const uint8_t *p, const struct dq_unpack_ctx *c, uint8_t *q)
{
	uint8x16_t r = vcombine_u8(dq_unpack_8(p, c), dq_unpack_8(p + c->bits, c));

	vst1q_u8(q, vandq_u8(r, c->mask));
}

#define DQ_SUFFIX neon
#define DQ_ISA "neon"
#include "quant/dequant_template.h"

#endif /* __aarch64__ */
