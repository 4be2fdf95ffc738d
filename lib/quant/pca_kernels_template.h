/*
 * pca_kernels_template.h - the SHADOW_QUANT_PCA decode row (pca.h), written once and compiled
 * per ISA by pca_kernels.c (STYLE.md, "CPU dispatch").
 *
 * DESIGN
 * A row is out = round(mean + sum_j c_j * B[j]) with c_j = (float)zz(u_j) * step. Two phases:
 *
 *  1. compaction (scalar, every variant the same code): the coefficients with c_j != 0 (NaN
 *     included) go, in ascending j, into a list of (c_j, &B[j][0]) on the stack, branch-free;
 *  2. accumulation, per span of PK_TILE vectors of output columns: the accumulators start at
 *     the mean and take acc = fma(B[j][d], c_j, acc) for each listed j in list order, then are
 *     rounded and stored. Output column d sees the same sequence of correctly rounded fused
 *     multiply-adds in every variant and in every span shape, so all variants give the same
 *     bits; spans only decide which columns share registers.
 *
 * For head_dim 128 the AVX-512 span is the whole row (8 zmm accumulators), AVX2 takes two
 * spans of 64 (8 ymm: with the broadcast coefficient 16 would need 17 registers), NEON two of
 * 64 (16 q registers). Each listed j costs one broadcast and PK_TILE FMAs whose basis operand
 * comes straight from memory; PK_TILE independent accumulators cover the FMA latency. Columns
 * past the last whole vector go through the scalar fmaf path. Rows longer than PK_BATCH
 * coefficients are compacted in batches, again per span (rare: only head_dim > 256).
 *
 * The includer defines PK_SUFFIX, PK_ISA, PK_ATTR, PK_VW (floats per vector; 1 for the scalar
 * reference, whose "vector" is one float and whose fma is libm's fmaf), PK_TILE (vectors per
 * span), and, as macros naming its own PK_ATTR static inline functions (this file undefines
 * them all after use), the vector type pk_vf and the primitives
 *	pk_vf pk_load(const float *p)			unaligned
 *	pk_vf pk_splat(float x)
 *	pk_vf pk_fma(pk_vf b, pk_vf c, pk_vf acc)	b * c + acc, one rounding
 *	void pk_store_bf16(uint8_t *out, pk_vf x)	PK_VW bf16, NaN -> SHADOW_BF16_QNAN
 *	void pk_store_fp16(uint8_t *out, pk_vf x)	PK_VW fp16, NaN -> SHADOW_FP16_QNAN
 *	void pk_store_f32(uint8_t *out, pk_vf x)	PK_VW floats as they are (unaligned)
 */

/* ---- once: what every variant shares ---- */
#ifndef SHADOW_QUANT_PCA_KERNELS_TEMPLATE_COMMON
#define SHADOW_QUANT_PCA_KERNELS_TEMPLATE_COMMON

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant/pca.h"

#define PK_CAT2(a, b) a##_##b
#define PK_CAT(a, b) PK_CAT2(a, b)

/* Coefficients compacted per batch: covers head_dim <= 256 in one. */
#define PK_BATCH 256u

/* The scalar rounding every variant's vector store must match (quant.h's kernels' rule). */
static inline uint16_t pk_out_bf16(float x)
{
	return x != x ? SHADOW_BF16_QNAN : shadow__float_to_bf16(x);
}

static inline uint16_t pk_out_fp16(float x)
{
	return x != x ? SHADOW_FP16_QNAN : shadow__float_to_fp16(x);
}

static inline void pk_put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, sizeof(v));
}

#endif /* SHADOW_QUANT_PCA_KERNELS_TEMPLATE_COMMON */

/* ---- per variant ---- */
#if defined(PK_SUFFIX)
#if !defined(PK_ISA) || !defined(PK_ATTR)
#error "define PK_ISA and PK_ATTR with PK_SUFFIX before including pca_kernels_template.h"
#endif

#define PK_FN(name) PK_CAT(pk_##name, PK_SUFFIX)

/* Phase 1: the nonzero coefficients of j in [j0, j1), ascending; returns their count. */
PK_ATTR static inline size_t PK_FN(compact)(const uint8_t *lo, const uint8_t *hi, float step,
					    const float *basis, size_t n, size_t j0, size_t j1,
					    float *cf, const float **rows)
{
	size_t m = 0;

	for (size_t j = j0; j < j1; j++) {
		uint32_t u = (uint32_t)lo[j] | (uint32_t)hi[j] << 8;
		int32_t q = (int32_t)(u >> 1) ^ -(int32_t)(u & 1u);
		float c = (float)q * step;

		cf[m] = c;
		rows[m] = basis + j * n;
		m += c != 0.0f; /* NaN != 0: kept */
	}
	return m;
}

/* Scalar columns [d0, d1), each its own accumulator: the reference order. */
PK_ATTR static inline void PK_FN(cols_scalar)(const uint8_t *lo, const uint8_t *hi, float step,
					      const float *mean, const float *basis, uint8_t *o,
					      size_t n, enum shadow__out_dtype dtype, size_t d0,
					      size_t d1, bool whole, size_t m0, float *cf,
					      const float **rows)
{
	for (size_t d = d0; d < d1; d++) {
		float acc = mean[d];

		for (size_t j0 = 0; j0 < n; j0 += PK_BATCH) {
			size_t m = whole ? m0 :
					   PK_FN(compact)(lo, hi, step, basis, n, j0,
							  SHADOW_MIN(n, j0 + PK_BATCH), cf, rows);

			for (size_t k = 0; k < m; k++)
				acc = fmaf(rows[k][d], cf[k], acc);
			if (whole)
				break;
		}
		if (dtype == SHADOW_OUT_F32)
			memcpy(o + 4 * d, &acc, sizeof(acc));
		else
			pk_put16(o + 2 * d,
				 dtype == SHADOW_OUT_BF16 ? pk_out_bf16(acc) : pk_out_fp16(acc));
	}
}

#if defined(PK_VW)
/* Phase 2 for one span of T vectors at column d (T a constant after inlining). */
PK_ATTR static inline __attribute__((always_inline)) void
PK_FN(span)(size_t T, const uint8_t *lo, const uint8_t *hi, float step, const float *mean,
	    const float *basis, uint8_t *o, size_t n, enum shadow__out_dtype dtype, size_t d,
	    bool whole, size_t m0, float *cf, const float **rows)
{
	pk_vf acc[PK_TILE];

#pragma GCC unroll 16
	for (size_t t = 0; t < T; t++)
		acc[t] = pk_load(mean + d + t * PK_VW);
	for (size_t j0 = 0; j0 < n; j0 += PK_BATCH) {
		size_t m = whole ? m0 :
				   PK_FN(compact)(lo, hi, step, basis, n, j0,
						  SHADOW_MIN(n, j0 + PK_BATCH), cf, rows);

		for (size_t k = 0; k < m; k++) {
			const float *b = rows[k] + d;
			pk_vf c = pk_splat(cf[k]);

#pragma GCC unroll 16
			for (size_t t = 0; t < T; t++)
				acc[t] = pk_fma(pk_load(b + t * PK_VW), c, acc[t]);
		}
		if (whole)
			break;
	}
	if (dtype == SHADOW_OUT_BF16) {
#pragma GCC unroll 16
		for (size_t t = 0; t < T; t++)
			pk_store_bf16(o + 2 * (d + t * PK_VW), acc[t]);
	} else if (dtype == SHADOW_OUT_FP16) {
#pragma GCC unroll 16
		for (size_t t = 0; t < T; t++)
			pk_store_fp16(o + 2 * (d + t * PK_VW), acc[t]);
	} else {
#pragma GCC unroll 16
		for (size_t t = 0; t < T; t++)
			pk_store_f32(o + 4 * (d + t * PK_VW), acc[t]);
	}
}
#endif

PK_ATTR static void PK_FN(row)(const uint8_t *lo, const uint8_t *hi, float step,
			       const float *mean, const float *basis, void *out, size_t n,
			       enum shadow__out_dtype dtype)
{
	float cf[PK_BATCH];
	const float *rows[PK_BATCH];
	uint8_t *o = out;
	bool whole = n <= PK_BATCH; /* one compaction serves every span */
	size_t m0 = whole ? PK_FN(compact)(lo, hi, step, basis, n, 0, n, cf, rows) : 0;
	size_t d = 0;

	SHADOW_ASSERT(dtype == SHADOW_OUT_BF16 || dtype == SHADOW_OUT_FP16 || dtype == SHADOW_OUT_F32);
#if defined(PK_VW)
	for (; n - d >= (size_t)PK_TILE * PK_VW; d += (size_t)PK_TILE * PK_VW)
		PK_FN(span)(PK_TILE, lo, hi, step, mean, basis, o, n, dtype, d, whole, m0, cf,
			    rows);
	for (; n - d >= PK_VW; d += PK_VW)
		PK_FN(span)(1, lo, hi, step, mean, basis, o, n, dtype, d, whole, m0, cf, rows);
#endif
	PK_FN(cols_scalar)(lo, hi, step, mean, basis, o, n, dtype, d, n, whole, m0, cf, rows);
}

const struct shadow__pca_kernel PK_CAT(shadow__pca_kernel, PK_SUFFIX) = {
	.isa = PK_ISA,
	.row = PK_FN(row),
};

#undef PK_FN
#undef PK_SUFFIX
#undef PK_ISA
#undef PK_ATTR
#undef PK_VW
#undef PK_TILE
#undef pk_vf
#undef pk_load
#undef pk_splat
#undef pk_fma
#undef pk_store_bf16
#undef pk_store_fp16
#undef pk_store_f32
#endif /* PK_SUFFIX */
