/*
 * dequant_template.h - the decode kernels of quant.h, written once and compiled per ISA
 * (STYLE.md, "CPU dispatch"; the pattern of libdeflate's decompress_template.h).
 *
 * DESIGN
 * Each kernel is a loop of whole vector steps followed by a tail. The scalar loop below is the
 * reference: a variant that defines no primitives is the scalar variant, and the vector variants
 * finish row_vec, row_scalar, their ECSQ forms row_vec_zz and row_scalar_zz, and merge_planes
 * with the same scalar code (unpack_bits pads its last step instead, below). A vector step must
 * give the bytes the scalar loop gives for the same elements, which holds because both compute
 *
 *	q = the uint8 symbol, or (ECSQ) zz(lo | hi << 8), an int in [-32768, 32767]: exact in float
 *	x = (float)q * scale, rounded to float;  x = x + bias, rounded to float
 *	if x is NaN: out = canonical quiet NaN   (SHADOW_BF16_QNAN / SHADOW_FP16_QNAN)
 *	else:        out = x rounded to bf16 or fp16, to nearest even
 *
 * under the default floating-point environment (round to nearest, no flush to zero). Products
 * are never fused with the add: the files that include this one are built with
 * -ffp-contract=off, and the AVX2 variant is not even compiled for FMA. NaN is canonicalized
 * because its payload and sign depend on operand order and on the ISA (x86's default NaN is
 * negative, ARM's positive); it can only arise from non-finite parameters (hostile input),
 * never from symbols times finite parameters.
 *
 * The includer defines
 *	DQ_SUFFIX	the variant's name suffix (scalar, avx2, avx512, neon)
 *	DQ_ISA		its name as text
 *	DQ_ATTR		function attributes, e.g. __attribute__((target("avx2,f16c")))
 * and, for each kernel it vectorizes, primitives (static inline, marked DQ_ATTR):
 *	DQ_VW		floats per step of row_vec / row_scalar (and their _zz forms), with
 *	  dq_vf				a vector of DQ_VW floats (may be a struct of registers)
 *	  dq_vf dq_cvt_u8(const uint8_t *q)	q[0 .. DQ_VW) as floats
 *	  dq_vf dq_cvt_zz(const uint8_t *lo, const uint8_t *hi)
 *					zz(lo[i] | hi[i] << 8), i < DQ_VW, as floats
 *	  dq_vf dq_loadf(const float *p)	p[0 .. DQ_VW), unaligned
 *	  dq_vf dq_splat(float x)
 *	  dq_vf dq_muladd(dq_vf q, dq_vf s, dq_vf b)	q * s + b, two roundings
 *	  void dq_store_bf16(uint8_t *out, dq_vf x)	DQ_VW bf16 as above, out unaligned
 *	  void dq_store_fp16(uint8_t *out, dq_vf x)	DQ_VW fp16 as above, out unaligned
 *	DQ_MERGE_W	elements per step of merge_planes, with
 *	  void dq_merge_step(const uint8_t *hi, const uint8_t *lo, uint8_t *out)
 *	DQ_UNPACK_W	symbols per step of unpack_bits (a multiple of 8), with
 *	  DQ_UNPACK_READ(b)		bytes a step may read for b bits (>= DQ_UNPACK_W * b / 8,
 *					at most DQ_UNPACK_READ_MAX)
 *	  struct dq_unpack_ctx		per-call constants
 *	  void dq_unpack_setup(unsigned bits, struct dq_unpack_ctx *c)	for 1 <= bits <= 7
 *	  void dq_unpack_step(const uint8_t *p, const struct dq_unpack_ctx *c, uint8_t *q)
 * then includes this file, which defines the variant's table, shadow__dequant_<DQ_SUFFIX>, and
 * undefines the macros above. Included first without DQ_SUFFIX, it gives only the shared part
 * (the scalar conversions and the unpack tables) for the primitives to use.
 *
 * unpack_bits never reads past the packed bytes of its n symbols, ceil(n * bits / 8): a step
 * whose reads would cross that end runs on a zero-padded copy, and a step past n writes to a
 * bounce buffer. The codec calls it per (token, head) row of head_dim symbols, so the end is
 * met on every row and the padded step keeps it vectorized.
 *
 * Measured (one core of an AMD EPYC with AVX-512, 64 Ki symbols per call or in rows of 128,
 * bf16 out, L2-resident): row_vec / row_scalar scalar 1.6, AVX2 11, AVX-512 23 GB/s; fp16 out
 * AVX2 17-21, AVX-512 33-38 GB/s; memcpy of the same output 80 GB/s.
 * row_vec_zz / row_scalar_zz (same setup, /tmp bench): bf16 out scalar 1.2, AVX2 8.0, AVX-512
 * 14.4-15.3 GB/s; fp16 out AVX2 12.5, AVX-512 19-21 GB/s; memcpy 109 GB/s in the same run.
 */

/* ---- once per translation unit: what every variant shares ---- */
#ifndef SHADOW_QUANT_DEQUANT_TEMPLATE_COMMON
#define SHADOW_QUANT_DEQUANT_TEMPLATE_COMMON

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant/quant.h"

/* The variants' tables; each is defined by one inclusion of this template. */
extern const struct shadow__dequant_kernels shadow__dequant_scalar SHADOW_INTERNAL;
#if defined(__x86_64__)
extern const struct shadow__dequant_kernels shadow__dequant_avx2 SHADOW_INTERNAL;
extern const struct shadow__dequant_kernels shadow__dequant_avx512 SHADOW_INTERNAL;
extern const struct shadow__dequant_kernels shadow__dequant_avx512bf16 SHADOW_INTERNAL;
#endif
#if defined(__aarch64__)
extern const struct shadow__dequant_kernels shadow__dequant_neon SHADOW_INTERNAL;
#endif

#define DQ_CAT2(a, b) a##_##b
#define DQ_CAT(a, b) DQ_CAT2(a, b)

/* The float a NaN result is replaced by; it rounds to SHADOW_BF16_QNAN and SHADOW_FP16_QNAN. */
#define DQ_QNAN_F32_BITS 0x7fc00000u

/* float -> fp16, round to nearest even; NaN keeps its sign and top payload bits, made quiet. */
static inline uint16_t dq_float_to_fp16(float f)
{
	uint32_t u, a, sign;

	memcpy(&u, &f, sizeof(u));
	sign = (u >> 16) & 0x8000u;
	a = u & 0x7fffffffu;
	if (a > 0x7f800000u) /* NaN */
		return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
	if (a >= 0x477ff000u) /* >= 65520, halfway from 65504 to 2^16: overflows, as does inf */
		return (uint16_t)(sign | 0x7c00u);
	if (a >= 0x38800000u) { /* >= 2^-14: normal fp16 */
		uint32_t h = (a >> 13) - (112u << 10), rem = a & 0x1fffu;

		if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
			h++; /* a carry into the exponent is right, up to 0x7bff + 1 = inf */
		return (uint16_t)(sign | h);
	}
	/* Subnormal fp16 (units of 2^-24) or zero: the value is m * 2^(e - 150). */
	uint32_t e = a >> 23, shift = 126u - e;

	if (e == 0 || shift > 24u) /* below 2^-25: rounds to zero (2^-25 itself is a tie to 0) */
		return (uint16_t)sign;
	uint32_t m = (a & 0x7fffffu) | 0x800000u, h = m >> shift;
	uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);

	if (rem > half || (rem == half && (h & 1u)))
		h++;
	return (uint16_t)(sign | h);
}

static inline uint16_t dq_out_bf16(float x)
{
	return x != x ? SHADOW_BF16_QNAN : shadow__float_to_bf16(x);
}

static inline uint16_t dq_out_fp16(float x)
{
	return x != x ? SHADOW_FP16_QNAN : dq_float_to_fp16(x);
}

static inline void dq_put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, sizeof(v));
}

/* ECSQ: the signed symbol of zigzag code u = lo | hi << 8 (0, 1, 2, 3, ... -> 0, -1, 1, -2, ...) */
static inline int32_t dq_zz(uint8_t lo, uint8_t hi)
{
	uint32_t u = (uint32_t)lo | (uint32_t)hi << 8;

	return (int32_t)(u >> 1) ^ -(int32_t)(u & 1u);
}

/*
 * unpack_bits: for b bits, the 16-bit lane k (k < 8) of a group of 8 symbols takes packed
 * bytes (k * b) / 8 and the next, and shifts right by (k * b) % 8. Both tables are indexed by
 * b (1..8); a variant instantiates the ones it needs.
 */
#define DQ_UB(b, k) (uint8_t)((k) * (b) / 8), (uint8_t)((k) * (b) / 8 + 1)
#define DQ_UROW(b)                                                                          \
	{ DQ_UB(b, 0), DQ_UB(b, 1), DQ_UB(b, 2), DQ_UB(b, 3), DQ_UB(b, 4), DQ_UB(b, 5), \
	  DQ_UB(b, 6), DQ_UB(b, 7) }
#define DQ_UNPACK_SHUF_TABLE                                                                 \
	{ { 0 },      DQ_UROW(1), DQ_UROW(2), DQ_UROW(3), DQ_UROW(4), DQ_UROW(5), DQ_UROW(6), \
	  DQ_UROW(7), DQ_UROW(8) }
#define DQ_US(b, k) (uint16_t)((k) * (b) % 8)
#define DQ_USROW(b)                                                                         \
	{ DQ_US(b, 0), DQ_US(b, 1), DQ_US(b, 2), DQ_US(b, 3), DQ_US(b, 4), DQ_US(b, 5), \
	  DQ_US(b, 6), DQ_US(b, 7) }
#define DQ_UNPACK_SHIFT_TABLE                                                               \
	{ { 0 },       DQ_USROW(1), DQ_USROW(2), DQ_USROW(3), DQ_USROW(4), DQ_USROW(5), \
	  DQ_USROW(6), DQ_USROW(7), DQ_USROW(8) }

#endif /* SHADOW_QUANT_DEQUANT_TEMPLATE_COMMON */

/* ---- per variant (an inclusion without DQ_SUFFIX gets only the shared part above) ---- */
#if defined(DQ_SUFFIX)
#if !defined(DQ_ISA) || !defined(DQ_ATTR)
#error "define DQ_ISA and DQ_ATTR with DQ_SUFFIX before including dequant_template.h"
#endif

#define DQ_FN(name) DQ_CAT(dq_##name, DQ_SUFFIX)

DQ_ATTR static void DQ_FN(row_vec)(const uint8_t *q, const float *scale, const float *bias,
				   void *out, size_t n, enum shadow__out_dtype dtype)
{
	uint8_t *o = out;
	size_t i = 0;

	SHADOW_ASSERT(dtype == SHADOW_OUT_BF16 || dtype == SHADOW_OUT_FP16);
	if (dtype == SHADOW_OUT_BF16) {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_bf16(o + 2 * i, dq_muladd(dq_cvt_u8(q + i), dq_loadf(scale + i),
							   dq_loadf(bias + i)));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i, dq_out_bf16((float)q[i] * scale[i] + bias[i]));
	} else {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_fp16(o + 2 * i, dq_muladd(dq_cvt_u8(q + i), dq_loadf(scale + i),
							   dq_loadf(bias + i)));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i, dq_out_fp16((float)q[i] * scale[i] + bias[i]));
	}
}

/*
 * rows_vec: n_rows consecutive rows of n elements (row r at q + r * n, out + 2 * r * n), all
 * with the same per-element parameters: the rows of one key token group in a token-major
 * staging image. Each column block's parameters stay in registers across the rows, which row_vec
 * called per row reloads; every element is computed exactly as row_vec computes it.
 */
#ifndef DQ_ROWS_COLS
#define DQ_ROWS_COLS 4 /* vectors of columns per block: 8 parameter registers */
#endif

DQ_ATTR static void DQ_FN(rows_vec)(const uint8_t *q, const float *scale, const float *bias,
				    void *out, size_t n_rows, size_t n,
				    enum shadow__out_dtype dtype)
{
	uint8_t *o = out;
	size_t c = 0;

	SHADOW_ASSERT(dtype == SHADOW_OUT_BF16 || dtype == SHADOW_OUT_FP16);
#if defined(DQ_VW)
	for (; n - c >= DQ_ROWS_COLS * DQ_VW; c += DQ_ROWS_COLS * DQ_VW) {
		dq_vf s[DQ_ROWS_COLS], b[DQ_ROWS_COLS];

		for (size_t k = 0; k < DQ_ROWS_COLS; k++) {
			s[k] = dq_loadf(scale + c + k * DQ_VW);
			b[k] = dq_loadf(bias + c + k * DQ_VW);
		}
		for (size_t r = 0; r < n_rows; r++) {
			const uint8_t *qr = q + r * n + c;
			uint8_t *or_ = o + 2 * (r * n + c);

			if (dtype == SHADOW_OUT_BF16) {
				for (size_t k = 0; k < DQ_ROWS_COLS; k++)
					dq_store_bf16(or_ + 2 * k * DQ_VW,
						      dq_muladd(dq_cvt_u8(qr + k * DQ_VW), s[k], b[k]));
			} else {
				for (size_t k = 0; k < DQ_ROWS_COLS; k++)
					dq_store_fp16(or_ + 2 * k * DQ_VW,
						      dq_muladd(dq_cvt_u8(qr + k * DQ_VW), s[k], b[k]));
			}
		}
	}
#endif
	/* The columns past the last whole block, row by row. */
	if (c < n)
		for (size_t r = 0; r < n_rows; r++)
			DQ_FN(row_vec)(q + r * n + c, scale + c, bias + c, o + 2 * (r * n + c), n - c,
				       dtype);
}

DQ_ATTR static void DQ_FN(row_scalar)(const uint8_t *q, float scale, float bias, void *out,
				      size_t n, enum shadow__out_dtype dtype)
{
	uint8_t *o = out;
	size_t i = 0;

	SHADOW_ASSERT(dtype == SHADOW_OUT_BF16 || dtype == SHADOW_OUT_FP16);
#if defined(DQ_VW)
	dq_vf vs = dq_splat(scale), vb = dq_splat(bias);
#endif
	if (dtype == SHADOW_OUT_BF16) {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_bf16(o + 2 * i, dq_muladd(dq_cvt_u8(q + i), vs, vb));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i, dq_out_bf16((float)q[i] * scale + bias));
	} else {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_fp16(o + 2 * i, dq_muladd(dq_cvt_u8(q + i), vs, vb));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i, dq_out_fp16((float)q[i] * scale + bias));
	}
}

/*
 * rows_scalar: n_rows consecutive rows of n elements (row r at q + r * n, out + 2 * r * n), row
 * r with its own scale and bias, read as little-endian bf16 from scale_bf16 + 2 r and
 * bias_bf16 + 2 r (a value frame's parameter block, one group per token and head, as the
 * container stores it). Each row is exactly row_scalar's.
 */
DQ_ATTR static void DQ_FN(rows_scalar)(const uint8_t *q, const uint8_t *scale_bf16,
				       const uint8_t *bias_bf16, void *out, size_t n_rows, size_t n,
				       enum shadow__out_dtype dtype)
{
	uint8_t *o = out;

	for (size_t r = 0; r < n_rows; r++) {
		const uint8_t *sp = scale_bf16 + 2 * r, *bp = bias_bf16 + 2 * r;
		uint16_t sh = (uint16_t)(sp[0] | sp[1] << 8), bh = (uint16_t)(bp[0] | bp[1] << 8);

		DQ_FN(row_scalar)(q + r * n, shadow__bf16_to_float(sh), shadow__bf16_to_float(bh),
				  o + 2 * r * n, n, dtype);
	}
}

DQ_ATTR static void DQ_FN(row_vec_zz)(const uint8_t *lo, const uint8_t *hi, const float *scale,
				      const float *bias, void *out, size_t n,
				      enum shadow__out_dtype dtype)
{
	uint8_t *o = out;
	size_t i = 0;

	SHADOW_ASSERT(dtype == SHADOW_OUT_BF16 || dtype == SHADOW_OUT_FP16);
	if (dtype == SHADOW_OUT_BF16) {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_bf16(o + 2 * i,
				      dq_muladd(dq_cvt_zz(lo + i, hi + i), dq_loadf(scale + i),
						dq_loadf(bias + i)));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i,
				 dq_out_bf16((float)dq_zz(lo[i], hi[i]) * scale[i] + bias[i]));
	} else {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_fp16(o + 2 * i,
				      dq_muladd(dq_cvt_zz(lo + i, hi + i), dq_loadf(scale + i),
						dq_loadf(bias + i)));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i,
				 dq_out_fp16((float)dq_zz(lo[i], hi[i]) * scale[i] + bias[i]));
	}
}

DQ_ATTR static void DQ_FN(row_scalar_zz)(const uint8_t *lo, const uint8_t *hi, float scale,
					 float bias, void *out, size_t n,
					 enum shadow__out_dtype dtype)
{
	uint8_t *o = out;
	size_t i = 0;

	SHADOW_ASSERT(dtype == SHADOW_OUT_BF16 || dtype == SHADOW_OUT_FP16);
#if defined(DQ_VW)
	dq_vf vs = dq_splat(scale), vb = dq_splat(bias);
#endif
	if (dtype == SHADOW_OUT_BF16) {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_bf16(o + 2 * i, dq_muladd(dq_cvt_zz(lo + i, hi + i), vs, vb));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i, dq_out_bf16((float)dq_zz(lo[i], hi[i]) * scale + bias));
	} else {
#if defined(DQ_VW)
		for (; n - i >= DQ_VW; i += DQ_VW)
			dq_store_fp16(o + 2 * i, dq_muladd(dq_cvt_zz(lo + i, hi + i), vs, vb));
#endif
		for (; i < n; i++)
			dq_put16(o + 2 * i, dq_out_fp16((float)dq_zz(lo[i], hi[i]) * scale + bias));
	}
}

DQ_ATTR static void DQ_FN(merge_planes)(const uint8_t *hi, const uint8_t *lo, void *out, size_t n)
{
	uint8_t *o = out;
	size_t i = 0;

#if defined(DQ_MERGE_W)
	for (; n - i >= DQ_MERGE_W; i += DQ_MERGE_W)
		dq_merge_step(hi + i, lo + i, o + 2 * i);
#endif
	for (; i < n; i++)
		dq_put16(o + 2 * i, (uint16_t)(hi[i] << 8 | lo[i]));
}

DQ_ATTR static void DQ_FN(unpack_bits)(const uint8_t *packed, unsigned bits, uint8_t *q, size_t n)
{
	size_t i = 0;

	SHADOW_ASSERT(bits >= 2 && bits <= 8);
	if (shadow_unlikely(bits < 1 || bits > 8)) { /* outside the contract: defined, not UB */
		memset(q, 0, n);
		return;
	}
	if (bits == 8) {
		memcpy(q, packed, n);
		return;
	}
#if defined(DQ_UNPACK_W)
	{
		size_t in_nbytes = (n * bits + 7) / 8;
		struct dq_unpack_ctx c;
		uint8_t pad_in[DQ_UNPACK_READ_MAX], pad_out[DQ_UNPACK_W];

		dq_unpack_setup(bits, &c);
		for (; i < n; i += DQ_UNPACK_W) {
			size_t off = i / 8 * bits; /* i is a multiple of 8: a byte boundary */
			const uint8_t *src = packed + off;

			if (in_nbytes - off < DQ_UNPACK_READ(bits)) {
				memset(pad_in, 0, sizeof(pad_in));
				memcpy(pad_in, src, in_nbytes - off);
				src = pad_in;
			}
			if (n - i >= DQ_UNPACK_W) {
				dq_unpack_step(src, &c, q + i);
			} else {
				dq_unpack_step(src, &c, pad_out);
				memcpy(q + i, pad_out, n - i);
			}
		}
	}
#else
	/* The reference: an LSB-first bit buffer that reads a byte only when it needs one. */
	{
		const uint8_t *p = packed + i / 8 * bits;
		uint32_t acc = 0, mask = (1u << bits) - 1u;
		unsigned have = 0;

		for (; i < n; i++) {
			if (have < bits) {
				acc |= (uint32_t)*p++ << have;
				have += 8;
			}
			q[i] = (uint8_t)(acc & mask);
			acc >>= bits;
			have -= bits;
		}
	}
#endif
}

const struct shadow__dequant_kernels DQ_CAT(shadow__dequant, DQ_SUFFIX) = {
	.isa = DQ_ISA,
	.row_vec = DQ_FN(row_vec),
	.rows_vec = DQ_FN(rows_vec),
	.rows_scalar = DQ_FN(rows_scalar),
	.row_scalar = DQ_FN(row_scalar),
	.merge_planes = DQ_FN(merge_planes),
	.unpack_bits = DQ_FN(unpack_bits),
	.row_vec_zz = DQ_FN(row_vec_zz),
	.row_scalar_zz = DQ_FN(row_scalar_zz),
};

#undef DQ_FN
#undef DQ_SUFFIX
#undef DQ_ISA
#undef DQ_ATTR
#undef DQ_VW
#undef DQ_MERGE_W
#undef DQ_UNPACK_W
#undef DQ_UNPACK_READ
#undef DQ_UNPACK_READ_MAX

#endif /* DQ_SUFFIX */
