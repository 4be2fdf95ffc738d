/*
 * pca.h - internal: the KV transform (struct shadow_transform, public in shadow.h) that
 * SHADOW_QUANT_PCA frames are coded in.
 *
 * DESIGN
 * For each (layer, kind K/V, KV head) the transform holds a mean vector m[head_dim] and an
 * orthonormal basis B[head_dim][head_dim] in float32, row j being the j-th principal
 * component (eigenvector of the calibration covariance, by descending eigenvalue). A head
 * vector x is coded as coefficients y[j] = sum_d B[j][d] * (x[d] - m[d]) (encoder, scalar is
 * enough), quantized with ECSQ (one step per head per frame), and decoded as
 *
 *     acc[d] = m[d];  for j = 0 .. head_dim-1 with y[j] != 0:  acc[d] = fma(B[j][d], y[j], acc[d])
 *     out[d] = round_to_dtype(acc[d])
 *
 * with y[j] = zz(u[j]) * step in float. The accumulation order is fixed (j ascending, zero
 * coefficients skipped in every variant) and every step is a correctly rounded fused
 * multiply-add, so the scalar (fmaf), AVX2, AVX-512 and NEON kernels give identical bits.
 * Research (bench/research/kvquant_lab.c) measured this transform coding gain at 0.4-0.8 bit
 * per value for V and 0.4-1.1 for post-RoPE K on the shared dumps.
 */
#ifndef SHADOW_QUANT_PCA_H
#define SHADOW_QUANT_PCA_H

#include <stddef.h>
#include <stdint.h>

#include "core/common.h"
#include "quant/quant.h"

/* Mean and basis of (layer, kind, head): mean[head_dim], then basis[head_dim][head_dim]. */
const float *shadow__transform_mean(const struct shadow_transform *t, uint32_t layer,
				    uint32_t kind, uint32_t head) SHADOW_INTERNAL;
const float *shadow__transform_basis(const struct shadow_transform *t, uint32_t layer,
				     uint32_t kind, uint32_t head) SHADOW_INTERNAL;
/* The geometry's n_layers, n_kv_heads, head_dim it was made for. */
void shadow__transform_shape(const struct shadow_transform *t, uint32_t *n_layers,
			     uint32_t *n_kv_heads, uint32_t *head_dim) SHADOW_INTERNAL;

/*
 * Encoder: quantize frame (layer, kind) of the chunk whose first token is at first_position,
 * given in canonical float order ([token][head][d], n_tokens rows per head) into zigzag planes lo[n], hi[n] of the coefficients (canonical
 * order, coefficient j in place of channel j) and one step per head: steps[h] = bf16 of
 * step_mul * rms of that head's coefficients, rounded so the decoder's arithmetic is what
 * the encoder quantizes against. Symbols clamp to [-32767, 32767]. Returns 0 or -EINVAL.
 */
int shadow__pca_quantize_frame(const struct shadow_transform *t, uint32_t layer, uint32_t kind,
			       uint64_t first_position, uint32_t n_tokens, const float *x,
			       float step_mul, uint8_t *lo, uint8_t *hi, uint16_t *steps)
	SHADOW_INTERNAL;

/*
 * RoPE. A transform made with RoPE frequencies codes keys un-rotated (rotate-half, HF
 * convention): the encoder undoes the rotation of position first_position + token before the
 * transform, the decoder's kernel writes float32 rows and shadow__rope_apply_round() rotates
 * them back and rounds. Rotation at the decoder is plain multiplies and adds in a fixed order
 * (one implementation, so every machine gives the same bits for the same table).
 */
bool shadow__transform_has_rope(const struct shadow_transform *t) SHADOW_INTERNAL;
/* cos then sin (head_dim / 2 each) of every position first_position .. + n_tokens - 1:
 * n_tokens * head_dim floats into cs. */
void shadow__rope_table(const struct shadow_transform *t, uint64_t first_position,
			uint32_t n_tokens, float *cs) SHADOW_INTERNAL;
/* out[0..n) = round(rotate(x, cs)) for one head vector; cs = one position's table row. */
void shadow__rope_apply_round(const float *x, const float *cs, void *out, size_t n,
			      enum shadow__out_dtype dtype) SHADOW_INTERNAL;

/*
 * Decoder kernel: one head vector. out[0..n) = round(mean + sum_j zz(lo[j] | hi[j] << 8) *
 * step * basis[j][0..n)) as in the DESIGN comment; n = head_dim (any n >= 1).
 */
typedef void (*shadow__pca_row_fn)(const uint8_t *lo, const uint8_t *hi, float step,
				   const float *mean, const float *basis, void *out, size_t n,
				   enum shadow__out_dtype dtype);

struct shadow__pca_kernel {
	const char *isa;
	shadow__pca_row_fn row;
};

/* The best kernel for this CPU (SHADOW_FORCE_ISA honoured in test builds); chosen once. */
const struct shadow__pca_kernel *shadow__pca_kernel(void) SHADOW_INTERNAL;
/* Every runnable variant, scalar first; returns the count. */
size_t shadow__pca_kernel_variants(const struct shadow__pca_kernel **out, size_t max)
	SHADOW_INTERNAL;
#if defined(SHADOW_TESTING)
void shadow__pca_kernel_reset_for_testing(void) SHADOW_INTERNAL;
#endif

#endif /* SHADOW_QUANT_PCA_H */
