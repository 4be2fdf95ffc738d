/*
 * test_pca.c - the KV transform and SHADOW_QUANT_PCA (lib/quant/pca*.c): calibration gives an
 * orthonormal basis that diagonalizes the calibration covariance with descending variances
 * (correlated, degenerate, rank-1, NaN-holding and fp16 data); quantize -> decode round trip
 * within the bound the step implies; every kernel variant gives the scalar reference's bytes
 * (random symbols with zero runs, hostile steps, bf16 and fp16, unaligned and exactly sized
 * outputs, rows longer than one compaction batch) and that reference matches an independent
 * one; dispatch honours SHADOW_FORCE_ISA; save/load round trip; load rejects every truncation,
 * every bit flip, and each bad field even when re-sealed with a valid checksum.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>
#include <xxhash.h>

#include "core/cpu.h"
#include "unit/test_rng.h"
#include "quant/pca.h"

#define MAX_VARIANTS 8

/* ---- helpers ---- */


static float to_float(uint16_t h, uint32_t dtype)
{
	return dtype == SHADOW_DTYPE_BF16 ? shadow__bf16_to_float(h) : shadow__fp16_to_float(h);
}

static uint16_t from_float(float f, uint32_t dtype)
{
	return dtype == SHADOW_DTYPE_BF16 ? shadow__float_to_bf16(f) : shadow__float_to_fp16(f);
}

/* A cache of n_blocks blocks in an NHD layout, filled by a generator per (layer, kind, head). */
struct cache {
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout layout;
	uint8_t *region;
	uint32_t *ids;
	uint32_t n_blocks;
};

static void cache_init(struct cache *c, uint32_t n_layers, uint32_t n_heads, uint32_t head_dim,
		       uint32_t dtype, uint32_t n_blocks)
{
	uint64_t nbytes = 2ull * n_layers * n_blocks * 16u * n_heads * head_dim * 2u;

	memset(c, 0, sizeof(*c));
	c->geom = (struct shadow_kv_geometry){ .n_layers = n_layers, .n_kv_heads = n_heads,
					       .head_dim = head_dim, .dtype = dtype,
					       .block_tokens = 16, .chunk_tokens = 256 };
	assert_int_equal(shadow_geometry_validate(&c->geom), 0);
	assert_int_equal(shadow_layout_init(&c->layout, &c->geom, SHADOW_LAYOUT_NHD, n_blocks, 0,
					    nbytes),
			 0);
	c->region = calloc(1, nbytes);
	c->ids = malloc(n_blocks * sizeof(uint32_t));
	assert_non_null(c->region);
	assert_non_null(c->ids);
	for (uint32_t i = 0; i < n_blocks; i++)
		c->ids[i] = n_blocks - 1 - i; /* any order */
	c->n_blocks = n_blocks;
}

static void cache_free(struct cache *c)
{
	free(c->region);
	free(c->ids);
}

static uint8_t *cache_row(const struct cache *c, uint32_t layer, uint32_t kind, uint32_t token,
			  uint32_t head)
{
	int64_t off = shadow_layout_offset(&c->layout, &c->geom, layer, kind,
					   token / c->geom.block_tokens,
					   token % c->geom.block_tokens, head);

	assert_true(off >= 0);
	return c->region + off;
}

static void cache_set(struct cache *c, uint32_t layer, uint32_t kind, uint32_t token,
		      uint32_t head, const float *x)
{
	uint8_t *p = cache_row(c, layer, kind, token, head);

	for (uint32_t d = 0; d < c->geom.head_dim; d++) {
		uint16_t h = from_float(x[d], c->geom.dtype);

		memcpy(p + 2 * d, &h, 2);
	}
}

static void cache_get(const struct cache *c, uint32_t layer, uint32_t kind, uint32_t token,
		      uint32_t head, float *x)
{
	const uint8_t *p = cache_row(c, layer, kind, token, head);

	for (uint32_t d = 0; d < c->geom.head_dim; d++) {
		uint16_t h;

		memcpy(&h, p + 2 * d, 2);
		x[d] = to_float(h, c->geom.dtype);
	}
}

static uint32_t n_tokens_of(const struct cache *c)
{
	return c->n_blocks * c->geom.block_tokens;
}

/* x = mu + A z, z standard normal, A random with column scales falling off (a spread spectrum). */
static void fill_correlated(struct cache *c)
{
	uint32_t n = c->geom.head_dim;
	float *a = malloc((size_t)n * n * sizeof(float)), *mu = malloc(n * sizeof(float));
	float *z = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));

	for (uint32_t l = 0; l < c->geom.n_layers; l++)
		for (uint32_t k = 0; k < 2; k++)
			for (uint32_t h = 0; h < c->geom.n_kv_heads; h++) {
				for (uint32_t i = 0; i < n * n; i++)
					a[i] = rnd_normal() / (1.0f + (float)(i % n));
				for (uint32_t i = 0; i < n; i++)
					mu[i] = rnd_uniform(-2, 2);
				for (uint32_t t = 0; t < n_tokens_of(c); t++) {
					for (uint32_t i = 0; i < n; i++)
						z[i] = rnd_normal();
					for (uint32_t i = 0; i < n; i++) {
						float s = mu[i];

						for (uint32_t j = 0; j < n; j++)
							s += a[i * n + j] * z[j];
						x[i] = s;
					}
					cache_set(c, l, k, t, h, x);
				}
			}
	free(a);
	free(mu);
	free(z);
	free(x);
}

/* |B B^T - I| <= tol for one entry. */
static void check_orthonormal(const float *b, uint32_t n, double tol)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < n; j++) {
			double s = 0;

			for (uint32_t d = 0; d < n; d++)
				s += (double)b[i * n + d] * b[j * n + d];
			if (fabs(s - (i == j)) > tol)
				fail_msg("B B^T [%u][%u] = %.9f", i, j, s);
		}
}

/*
 * The projections of the cache's rows onto the basis: variances non-increasing, and the
 * covariance between components negligible (the basis diagonalizes the sample covariance).
 */
static void check_diagonalizes(const struct cache *c, const struct shadow_transform *t,
			       uint32_t l, uint32_t k, uint32_t h)
{
	uint32_t n = c->geom.head_dim, nt = n_tokens_of(c);
	const float *m = shadow__transform_mean(t, l, k, h), *b = shadow__transform_basis(t, l, k, h);
	double *cov = calloc((size_t)n * n, sizeof(double)), *y = malloc(n * sizeof(double));
	double *mean = calloc(n, sizeof(double));
	float *x = malloc(n * sizeof(float));

	for (uint32_t tok = 0; tok < nt; tok++) {
		cache_get(c, l, k, tok, h, x);
		for (uint32_t d = 0; d < n; d++)
			mean[d] += x[d];
	}
	for (uint32_t d = 0; d < n; d++) {
		mean[d] /= nt;
		assert_true(fabs(mean[d] - m[d]) <= 1e-6 * (1 + fabs(mean[d])));
	}
	for (uint32_t tok = 0; tok < nt; tok++) {
		cache_get(c, l, k, tok, h, x);
		for (uint32_t j = 0; j < n; j++) {
			double s = 0;

			for (uint32_t d = 0; d < n; d++)
				s += (double)b[j * n + d] * (x[d] - mean[d]);
			y[j] = s;
		}
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t j = 0; j < n; j++)
				cov[i * n + j] += y[i] * y[j];
	}
	for (uint32_t j = 0; j + 1 < n; j++)
		if (cov[(j + 1) * n + j + 1] > cov[j * n + j] * (1 + 1e-5) + 1e-9)
			fail_msg("variance %u: %g > %u: %g", j + 1, cov[(j + 1) * n + j + 1], j,
				 cov[j * n + j]);
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < i; j++) {
			double lim = 1e-5 * sqrt(cov[i * n + i] * cov[j * n + j]) +
				     1e-6 * cov[0] + 1e-12;

			if (fabs(cov[i * n + j]) > lim)
				fail_msg("cov[%u][%u] = %g (var %g %g)", i, j, cov[i * n + j],
					 cov[i * n + i], cov[j * n + j]);
		}
	free(cov);
	free(y);
	free(mean);
	free(x);
}

/* The deterministic sign: the first largest-magnitude component of each row is positive. */
static void check_signs(const float *b, uint32_t n)
{
	for (uint32_t j = 0; j < n; j++) {
		uint32_t imax = 0;

		for (uint32_t d = 1; d < n; d++)
			if (fabsf(b[j * n + d]) > fabsf(b[j * n + imax]))
				imax = d;
		assert_true(b[j * n + imax] > 0);
	}
}

/* ---- calibration ---- */

static void calibrate_and_check(uint32_t n_layers, uint32_t n_heads, uint32_t head_dim,
				uint32_t dtype, uint32_t n_blocks)
{
	struct cache c;
	struct shadow_transform *t = NULL, *t2 = NULL;

	cache_init(&c, n_layers, n_heads, head_dim, dtype, n_blocks);
	fill_correlated(&c);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, c.ids,
						    c.n_blocks, NULL, &t),
			 0);
	for (uint32_t l = 0; l < n_layers; l++)
		for (uint32_t k = 0; k < 2; k++)
			for (uint32_t h = 0; h < n_heads; h++) {
				check_orthonormal(shadow__transform_basis(t, l, k, h), head_dim,
						  1e-5);
				check_signs(shadow__transform_basis(t, l, k, h), head_dim);
				check_diagonalizes(&c, t, l, k, h);
			}
	/* deterministic: the same data give the same id */
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, c.ids,
						    c.n_blocks, NULL, &t2),
			 0);
	assert_true(shadow_transform_id(t) == shadow_transform_id(t2));
	shadow_transform_free(t);
	shadow_transform_free(t2);
	cache_free(&c);
}

static void test_calibrate_correlated(void **state)
{
	(void)state;
	calibrate_and_check(2, 2, 32, SHADOW_DTYPE_BF16, 32);
	calibrate_and_check(1, 1, 7, SHADOW_DTYPE_FP16, 4);
	calibrate_and_check(1, 1, 1, SHADOW_DTYPE_BF16, 1);
	calibrate_and_check(1, 1, 128, SHADOW_DTYPE_BF16, 64);
}

static void test_calibrate_degenerate(void **state)
{
	struct cache c;
	struct shadow_transform *t;
	uint32_t n = 24;
	float x[24];

	(void)state;
	/* all zero: mean 0 and an orthonormal basis (the identity, by the sign rule) */
	cache_init(&c, 1, 2, n, SHADOW_DTYPE_BF16, 2);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, c.ids, 2, NULL, &t),
			 0);
	for (uint32_t h = 0; h < 2; h++) {
		const float *b = shadow__transform_basis(t, 0, 1, h);

		check_orthonormal(b, n, 1e-6);
		for (uint32_t d = 0; d < n; d++)
			assert_true(shadow__transform_mean(t, 0, 1, h)[d] == 0.0f);
	}
	shadow_transform_free(t);

	/* constant rows, rank-1 rows, and rows holding NaN or infinity (left out) */
	for (uint32_t tok = 0; tok < n_tokens_of(&c); tok++) {
		float s = (float)(int)(rnd() % 7) - 3.0f; /* s * (d + 1) is exact in bf16 */

		for (uint32_t d = 0; d < n; d++)
			x[d] = 3.0f - (float)d;
		cache_set(&c, 0, 0, tok, 0, x);
		for (uint32_t d = 0; d < n; d++)
			x[d] = s * (float)(d + 1);
		if (tok % 5 == 3)
			x[tok % n] = tok % 2 ? NAN : -INFINITY;
		cache_set(&c, 0, 0, tok, 1, x);
	}
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, c.ids, 2, NULL, &t),
			 0);
	for (uint32_t h = 0; h < 2; h++) {
		const float *b = shadow__transform_basis(t, 0, 0, h);

		check_orthonormal(b, n, 1e-5);
		for (uint32_t d = 0; d < n; d++)
			assert_true(isfinite(shadow__transform_mean(t, 0, 0, h)[d]));
	}
	for (uint32_t d = 0; d < n; d++)
		assert_true(shadow__transform_mean(t, 0, 0, 0)[d] == 3.0f - (float)d);
	/* rank 1: the first component is the direction (1, 2, ..., n) / |.| */
	{
		const float *b = shadow__transform_basis(t, 0, 0, 1);
		double norm = sqrt((double)n * (n + 1) * (2 * n + 1) / 6);

		for (uint32_t d = 0; d < n; d++)
			assert_true(fabs(b[d] - (d + 1) / norm) < 1e-5);
	}
	shadow_transform_free(t);
	cache_free(&c);
}

static void test_calibrate_bad_args(void **state)
{
	struct cache c;
	struct shadow_transform *t = (void *)1;
	struct shadow_kv_geometry g;
	struct shadow_kv_layout lay;
	uint32_t bad_id = 2;

	(void)state;
	cache_init(&c, 1, 1, 8, SHADOW_DTYPE_BF16, 2);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, c.ids, 2, NULL, NULL),
			 -EINVAL);
	assert_int_equal(shadow_transform_calibrate(NULL, c.region, &c.layout, c.ids, 2, NULL, &t),
			 -EINVAL);
	assert_null(t);
	assert_int_equal(shadow_transform_calibrate(&c.geom, NULL, &c.layout, c.ids, 2, NULL, &t),
			 -EINVAL);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, NULL, c.ids, 2, NULL, &t),
			 -EINVAL);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, NULL, 2, NULL, &t),
			 -EINVAL);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, c.ids, 0, NULL, &t),
			 -EINVAL);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, &bad_id, 1, NULL, &t),
			 -EINVAL);
	g = c.geom;
	g.head_dim = 0;
	assert_int_equal(shadow_transform_calibrate(&g, c.region, &c.layout, c.ids, 2, NULL, &t),
			 SHADOW_EGEOMETRY);
	g = c.geom;
	g.dtype = SHADOW_DTYPE_FP32;
	assert_int_equal(shadow_transform_calibrate(&g, c.region, &c.layout, c.ids, 2, NULL, &t),
			 SHADOW_EUNSUPPORTED);
	g = c.geom;
	g.n_layers = 2; /* the layout is for one layer */
	assert_int_equal(shadow_transform_calibrate(&g, c.region, &c.layout, c.ids, 2, NULL, &t),
			 SHADOW_EGEOMETRY);
	lay = c.layout;
	lay.region_nbytes = 16; /* the cache does not fit */
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &lay, c.ids, 2, NULL, &t),
			 SHADOW_EGEOMETRY);
	assert_null(t);
	cache_free(&c);
}

/* ---- quantize -> decode ---- */

static int32_t unzz(uint8_t lo, uint8_t hi)
{
	uint32_t u = (uint32_t)lo | (uint32_t)hi << 8;

	return (int32_t)(u >> 1) ^ -(int32_t)(u & 1u);
}

static void test_roundtrip(void **state)
{
	struct cache c;
	struct shadow_transform *t;
	const struct shadow__pca_kernel *k = shadow__pca_kernel();
	uint32_t n = 64, nh = 2, nt = 256, row = nh * n;
	size_t fr = (size_t)nt * row;
	float *x = malloc(fr * sizeof(float));
	uint8_t *lo = malloc(fr), *hi = malloc(fr);
	uint16_t steps[2], out[64];
	const float muls[] = { 0.05f, 0.3f, 1.0f, 4.0f };

	(void)state;
	cache_init(&c, 2, nh, n, SHADOW_DTYPE_BF16, 32);
	fill_correlated(&c);
	assert_int_equal(shadow_transform_calibrate(&c.geom, c.region, &c.layout, c.ids,
						    c.n_blocks, NULL, &t),
			 0);
	/* the frame: layer 1 V, tokens 0..255, as the codec would give it */
	for (uint32_t tok = 0; tok < nt; tok++)
		for (uint32_t h = 0; h < nh; h++)
			cache_get(&c, 1, 1, tok, h, x + (size_t)tok * row + h * n);

	for (size_t mi = 0; mi < SHADOW_ARRAY_SIZE(muls); mi++) {
		assert_int_equal(shadow__pca_quantize_frame(t, 1, 1, 0, nt, x, muls[mi], lo, hi,
							    steps),
				 0);
		for (uint32_t h = 0; h < nh; h++) {
			const float *m = shadow__transform_mean(t, 1, 1, h);
			const float *b = shadow__transform_basis(t, 1, 1, h);
			float step = shadow__bf16_to_float(steps[h]);
			double sum2 = 0;

			assert_true(step > 0);
			for (uint32_t tok = 0; tok < nt; tok++) {
				const float *xr = x + (size_t)tok * row + h * n;
				size_t base = (size_t)tok * row + h * n;
				double err2 = 0, x2 = 0, bound;

				/* coefficient space: every symbol within step / 2 of y */
				for (uint32_t j = 0; j < n; j++) {
					double y = 0;

					for (uint32_t d = 0; d < n; d++)
						y += (double)b[j * n + d] * ((double)xr[d] - m[d]);
					sum2 += y * y;
					assert_true(fabs(y - (double)unzz(lo[base + j], hi[base + j]) *
								    step) <=
						    step * 0.5 * (1 + 1e-9));
				}
				k->row(lo + base, hi + base, step, m, b, out, n, SHADOW_OUT_BF16);
				for (uint32_t d = 0; d < n; d++) {
					double e = (double)shadow__bf16_to_float(out[d]) - xr[d];

					err2 += e * e;
					x2 += (double)xr[d] * xr[d];
				}
				/* sqrt(n) step / 2, plus bf16 output rounding and float slack */
				bound = sqrt((double)n) * step / 2 + sqrt(x2) * (0x1p-8 + 1e-5);
				if (sqrt(err2) > bound)
					fail_msg("token %u head %u: error %g > bound %g (step %g)", tok,
						 h, sqrt(err2), bound, step);
			}
			/* the step is step_mul * rms rounded to bf16 */
			{
				double want = muls[mi] * sqrt(sum2 / ((double)nt * n));

				assert_true(fabs(step - want) <= want * 0x1p-8);
			}
		}
	}

	/* a tiny step saturates symbols at +-32767 */
	assert_int_equal(shadow__pca_quantize_frame(t, 1, 1, 0, nt, x, 1e-7f, lo, hi, steps), 0);
	{
		int saturated = 0;

		for (size_t i = 0; i < fr; i++) {
			int32_t q = unzz(lo[i], hi[i]);

			assert_true(q >= -32767 && q <= 32767);
			saturated += q == 32767 || q == -32767;
		}
		assert_true(saturated > 0);
	}

	/* rows equal to the mean: rms 0, step 0, symbols 0; a non-finite row: symbols 0 */
	for (uint32_t tok = 0; tok < nt; tok++)
		for (uint32_t h = 0; h < nh; h++)
			memcpy(x + (size_t)tok * row + h * n, shadow__transform_mean(t, 0, 0, h),
			       n * sizeof(float));
	x[5 * row + 3] = NAN;
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, 0.5f, lo, hi, steps), 0);
	assert_int_equal(steps[0], 0);
	assert_int_equal(steps[1], 0);
	for (size_t i = 0; i < fr; i++)
		assert_true(lo[i] == 0 && hi[i] == 0);
	/* one row far away, the rest at the mean; the NaN row still gets zeros */
	x[7 * row + n + 1] += 100.0f;
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, 0.5f, lo, hi, steps), 0);
	assert_true(steps[1] != 0);
	for (size_t j = 0; j < n; j++)
		assert_true(lo[5 * row + j] == 0 && hi[5 * row + j] == 0);

	/* bad arguments */
	assert_int_equal(shadow__pca_quantize_frame(NULL, 0, 0, 0, nt, x, 0.5f, lo, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 2, 0, 0, nt, x, 0.5f, lo, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 2, 0, nt, x, 0.5f, lo, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, 0, x, 0.5f, lo, hi, steps), -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, NULL, 0.5f, lo, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, 0.5f, NULL, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, 0.5f, lo, NULL, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, 0.5f, lo, hi, NULL),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, 0.0f, lo, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, -1.0f, lo, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, NAN, lo, hi, steps),
			 -EINVAL);
	assert_int_equal(shadow__pca_quantize_frame(t, 0, 0, 0, nt, x, INFINITY, lo, hi, steps),
			 -EINVAL);
	shadow_transform_free(t);
	cache_free(&c);
	free(x);
	free(lo);
	free(hi);
}

/* ---- kernels ---- */

/* The DESIGN comment of pca.h, written independently of the kernels. */
static void reference_row(const uint8_t *lo, const uint8_t *hi, float step, const float *mean,
			  const float *basis, uint8_t *out, size_t n, enum shadow__out_dtype dt)
{
	for (size_t d = 0; d < n; d++) {
		float acc = mean[d];
		uint16_t v;

		for (size_t j = 0; j < n; j++) {
			float c = (float)unzz(lo[j], hi[j]) * step;

			if (c != 0.0f)
				acc = fmaf(basis[j * n + d], c, acc);
		}
		if (acc != acc)
			v = dt == SHADOW_OUT_BF16 ? SHADOW_BF16_QNAN : SHADOW_FP16_QNAN;
		else
			v = dt == SHADOW_OUT_BF16 ? shadow__float_to_bf16(acc) :
						    shadow__float_to_fp16(acc);
		memcpy(out + 2 * d, &v, 2);
	}
}

static float hostile_step(unsigned i)
{
	static const uint32_t bits[] = {
		0x3c800000u, /* 1/64 */
		0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u,
		0x00000001u, /* smallest subnormal */
		0x00400000u, /* subnormal */
		0x7f7fffffu, /* FLT_MAX */
		0xbf800000u, /* -1 */
		0x477fe000u, /* 65504: fp16 overflow territory */
	};

	return f32(bits[i % SHADOW_ARRAY_SIZE(bits)]);
}

static void fill_symbols(uint8_t *lo, uint8_t *hi, size_t n, unsigned mode)
{
	for (size_t j = 0; j < n; j++) {
		uint32_t u;

		switch (mode % 4) {
		case 0: /* ~50% zeros, in runs */
			u = (j / 3) % 2 || rnd() % 4 == 0 ? 0 : (uint32_t)(rnd() % 64);
			break;
		case 1: /* no zeros, small */
			u = 1 + (uint32_t)(rnd() % 30);
			break;
		case 2: /* full range */
			u = (uint32_t)(rnd() & 0xffff);
			break;
		default: /* mostly zero */
			u = rnd() % 16 == 0 ? (uint32_t)(rnd() % 8) : 0;
			break;
		}
		lo[j] = (uint8_t)u;
		hi[j] = (uint8_t)(u >> 8);
	}
}

static void test_kernels_identical(void **state)
{
	const struct shadow__pca_kernel *v[MAX_VARIANTS];
	size_t nv = shadow__pca_kernel_variants(v, MAX_VARIANTS);
	static const size_t sizes[] = { 1,  2,  3,   7,   8,   15,  16,  17,  31,  33,  48,  63,
					64, 65, 100, 127, 128, 129, 192, 200, 255, 256, 257, 300,
					520 };

	(void)state;
	assert_true(nv >= 1 && nv <= MAX_VARIANTS);
	assert_string_equal(v[0]->isa, "scalar");
	print_message("pca kernel variants:");
	for (size_t i = 0; i < nv; i++)
		print_message(" %s", v[i]->isa);
	print_message("\n");

	for (size_t si = 0; si < SHADOW_ARRAY_SIZE(sizes); si++) {
		size_t n = sizes[si];
		float *mean = malloc(n * sizeof(float)), *basis = malloc(n * n * sizeof(float));
		uint8_t *lo = malloc(n), *hi = malloc(n), *want = malloc(2 * n);

		for (unsigned trial = 0; trial < 24; trial++) {
			float step = trial < 12 ? hostile_step(trial) : rnd_uniform(1e-3f, 0.5f);
			float scale = trial % 5 == 4 ? 3e4f : 1.0f; /* drives fp16 to overflow */

			for (size_t i = 0; i < n; i++)
				mean[i] = rnd_normal() * scale;
			for (size_t i = 0; i < n * n; i++)
				basis[i] = rnd_normal() * 0.3f;
			if (trial % 7 == 6) /* subnormal and signed-zero operands */
				for (size_t i = 0; i < n * n; i += 3)
					basis[i] = i % 2 ? -0.0f : f32(0x00000100u);
			fill_symbols(lo, hi, n, trial);
			for (int dt = 0; dt < 2; dt++) {
				enum shadow__out_dtype d = dt ? SHADOW_OUT_FP16 : SHADOW_OUT_BF16;

				reference_row(lo, hi, step, mean, basis, want, n, d);
				for (size_t vi = 0; vi < nv; vi++) {
					/* exactly sized and odd-aligned: ASan sees any overrun */
					uint8_t *buf = malloc(2 * n + 1), *out = buf + 1;

					v[vi]->row(lo, hi, step, mean, basis, out, n, d);
					if (memcmp(out, want, 2 * n) != 0)
						fail_msg("%s n=%zu trial=%u dtype=%d differs from the "
							 "reference",
							 v[vi]->isa, n, trial, dt);
					free(buf);
				}
			}
		}
		free(mean);
		free(basis);
		free(lo);
		free(hi);
		free(want);
	}
}

static void test_kernel_dispatch(void **state)
{
	static const char *const isas[] = { "scalar", "avx2", "avx512", "neon" };
	const struct shadow__pca_kernel *all[MAX_VARIANTS];
	size_t n_all;

	(void)state;
	unsetenv("SHADOW_FORCE_ISA");
	shadow__cpu_features_reset_for_testing();
	shadow__pca_kernel_reset_for_testing();
	n_all = shadow__pca_kernel_variants(all, MAX_VARIANTS);
	assert_ptr_equal(shadow__pca_kernel(), all[n_all - 1]);
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(isas); i++) {
		const struct shadow__pca_kernel *v[MAX_VARIANTS];
		size_t nv;

		setenv("SHADOW_FORCE_ISA", isas[i], 1);
		shadow__cpu_features_reset_for_testing();
		shadow__pca_kernel_reset_for_testing();
		nv = shadow__pca_kernel_variants(v, MAX_VARIANTS);
		assert_ptr_equal(shadow__pca_kernel(), v[nv - 1]);
		if (i == 0)
			assert_string_equal(shadow__pca_kernel()->isa, "scalar");
		for (size_t j = 0; j < n_all; j++) /* a forced ISA that exists is the one chosen */
			if (strcmp(all[j]->isa, isas[i]) == 0)
				assert_string_equal(shadow__pca_kernel()->isa, isas[i]);
	}
	unsetenv("SHADOW_FORCE_ISA");
	shadow__cpu_features_reset_for_testing();
	shadow__pca_kernel_reset_for_testing();
}

/* ---- save / load ---- */

static struct shadow_transform *small_transform(uint32_t nl, uint32_t nh, uint32_t n,
						struct cache *c)
{
	struct shadow_transform *t;

	cache_init(c, nl, nh, n, SHADOW_DTYPE_BF16, 2);
	fill_correlated(c);
	assert_int_equal(shadow_transform_calibrate(&c->geom, c->region, &c->layout, c->ids, 2, NULL,
						    &t),
			 0);
	return t;
}

static void *save(const struct shadow_transform *t, size_t *nbytes)
{
	void *buf;

	assert_int_equal(shadow_transform_save(t, NULL, 0, nbytes), -ENOBUFS);
	buf = malloc(*nbytes);
	assert_non_null(buf);
	if (*nbytes > 0)
		assert_int_equal(shadow_transform_save(t, buf, *nbytes - 1, nbytes), -ENOBUFS);
	assert_int_equal(shadow_transform_save(t, buf, *nbytes, nbytes), 0);
	return buf;
}

static void reseal(uint8_t *buf, size_t nbytes)
{
	uint64_t h = XXH3_64bits(buf, nbytes - 8);

	for (int i = 0; i < 8; i++)
		buf[nbytes - 8 + i] = (uint8_t)(h >> (8 * i));
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void test_save_load(void **state)
{
	struct cache c;
	struct shadow_transform *t = small_transform(3, 2, 16, &c), *u;
	size_t nbytes, nbytes2;
	uint8_t *buf, *buf2;
	uint64_t h;

	(void)state;
	buf = save(t, &nbytes);
	assert_int_equal(nbytes, 24 + 3 * 2 * 2 * (16 + 256) * 4 + 8);
	assert_memory_equal(buf, "SHKT\x01\x00\x18\x00\x03\x00\x00\x00\x02\x00\x00\x00\x10\x00\x00\x00"
				 "\x00\x00\x00\x00",
			    24);
	h = 0;
	for (int i = 7; i >= 0; i--)
		h = h << 8 | buf[nbytes - 8 + i];
	assert_true(h == shadow_transform_id(t));
	assert_true(XXH3_64bits(buf, nbytes - 8) == shadow_transform_id(t));

	assert_int_equal(shadow_transform_load(buf, nbytes, NULL, &u), 0);
	assert_true(shadow_transform_id(u) == shadow_transform_id(t));
	{
		uint32_t a, b, d;

		shadow__transform_shape(u, &a, &b, &d);
		assert_true(a == 3 && b == 2 && d == 16);
	}
	for (uint32_t l = 0; l < 3; l++)
		for (uint32_t k = 0; k < 2; k++)
			for (uint32_t hh = 0; hh < 2; hh++) {
				assert_memory_equal(shadow__transform_mean(t, l, k, hh),
						    shadow__transform_mean(u, l, k, hh), 16 * 4);
				assert_memory_equal(shadow__transform_basis(t, l, k, hh),
						    shadow__transform_basis(u, l, k, hh), 256 * 4);
				/* 64-byte aligned, as the kernels like */
				assert_int_equal(
					(uintptr_t)shadow__transform_basis(u, l, k, hh) % 64, 0);
				assert_int_equal(
					(uintptr_t)shadow__transform_mean(u, l, k, hh) % 64, 0);
			}
	buf2 = save(u, &nbytes2);
	assert_int_equal(nbytes2, nbytes);
	assert_memory_equal(buf, buf2, nbytes);
	free(buf2);
	shadow_transform_free(u);

	/* with a geometry */
	assert_int_equal(shadow_transform_load(buf, nbytes, &c.geom, &u), 0);
	shadow_transform_free(u);
	{
		struct shadow_kv_geometry g = c.geom;

		g.n_layers = 4;
		assert_int_equal(shadow_transform_load(buf, nbytes, &g, &u), SHADOW_EGEOMETRY);
		assert_null(u);
		g = c.geom;
		g.head_dim = 32;
		assert_int_equal(shadow_transform_load(buf, nbytes, &g, &u), SHADOW_EGEOMETRY);
		g = c.geom;
		g.n_kv_heads = 1;
		assert_int_equal(shadow_transform_load(buf, nbytes, &g, &u), SHADOW_EGEOMETRY);
		g = c.geom;
		g.block_tokens = 0; /* invalid geometry */
		assert_int_equal(shadow_transform_load(buf, nbytes, &g, &u), SHADOW_EGEOMETRY);
	}
	assert_int_equal(shadow_transform_load(buf, nbytes, NULL, NULL), -EINVAL);
	assert_int_equal(shadow_transform_load(NULL, 5, NULL, &u), -EINVAL);
	assert_int_equal(shadow_transform_load(NULL, 0, NULL, &u), SHADOW_ETRUNCATED);
	assert_int_equal(shadow_transform_save(NULL, buf, nbytes, &nbytes2), -EINVAL);
	assert_int_equal(shadow_transform_save(t, buf, nbytes, NULL), -EINVAL);
	shadow_transform_free(NULL);

	/* every truncation, from a copy exactly that long (ASan sees any overread) */
	for (size_t len = 0; len < nbytes; len++) {
		uint8_t *p = malloc(len ? len : 1);
		int err;

		memcpy(p, buf, len);
		err = shadow_transform_load(p, len, NULL, &u);
		if (err != SHADOW_ETRUNCATED)
			fail_msg("truncated at %zu: %d", len, err);
		assert_null(u);
		free(p);
	}
	/* one extra byte */
	{
		uint8_t *p = malloc(nbytes + 1);

		memcpy(p, buf, nbytes);
		p[nbytes] = 0;
		assert_int_equal(shadow_transform_load(p, nbytes + 1, NULL, &u), SHADOW_ECORRUPT);
		free(p);
	}
	/* every bit flip */
	for (size_t i = 0; i < nbytes * 8; i++) {
		int err;

		buf[i / 8] ^= (uint8_t)(1u << (i % 8));
		err = shadow_transform_load(buf, nbytes, NULL, &u);
		buf[i / 8] ^= (uint8_t)(1u << (i % 8));
		if (err == 0)
			fail_msg("bit %zu flipped: accepted", i);
		assert_null(u);
	}
	assert_int_equal(shadow_transform_load(buf, nbytes, NULL, &u), 0);
	shadow_transform_free(u);

	/* bad fields under a valid checksum */
	{
		uint8_t *p = malloc(nbytes);
		struct {
			size_t off;
			uint32_t val; /* written as u32 (or u16 at 4 and 6) */
			int want;
		} cases[] = {
			{ 0, 0x544b4853u /* "SHKT" */ ^ 1u, SHADOW_ECORRUPT },
			{ 4, 2, SHADOW_EVERSION },
			{ 4, 0, SHADOW_EVERSION },
			{ 6, 20, SHADOW_ECORRUPT },
			{ 6, 16, SHADOW_ECORRUPT },
			{ 8, 0, SHADOW_ECORRUPT },
			{ 8, SHADOW_MAX_LAYERS + 1, SHADOW_ECORRUPT },
			{ 8, 2, SHADOW_ECORRUPT },     /* too long for 2 layers */
			{ 8, 4, SHADOW_ETRUNCATED },   /* too short for 4 */
			{ 12, 0, SHADOW_ECORRUPT },
			{ 12, SHADOW_MAX_KV_HEADS + 1, SHADOW_ECORRUPT },
			{ 12, 0xffffffffu, SHADOW_ECORRUPT },
			{ 16, 0, SHADOW_ECORRUPT },
			{ 16, SHADOW_MAX_HEAD_DIM + 1, SHADOW_ECORRUPT },
			{ 16, 17, SHADOW_ETRUNCATED },
			{ 20, 2, SHADOW_ECORRUPT },    /* unknown RoPE */
			{ 20, 1, SHADOW_ETRUNCATED },  /* RoPE frequencies missing */
		};

		for (size_t i = 0; i < SHADOW_ARRAY_SIZE(cases); i++) {
			memcpy(p, buf, nbytes);
			if (cases[i].off == 4 || cases[i].off == 6) {
				p[cases[i].off] = (uint8_t)cases[i].val;
				p[cases[i].off + 1] = (uint8_t)(cases[i].val >> 8);
			} else {
				put32(p + cases[i].off, cases[i].val);
			}
			reseal(p, nbytes);
			assert_int_equal(shadow_transform_load(p, nbytes, NULL, &u), cases[i].want);
			assert_null(u);
		}

		/* values: mean NaN / inf; basis NaN, > 1, a row not of unit norm */
		const struct {
			size_t off; /* bytes after the header */
			uint32_t bits;
		} vals[] = {
			{ 0, 0x7fc00000u },
			{ 4 * 15, 0xff800000u },
			{ 4 * 16, 0x7fc00001u },
			{ 4 * 20, 0x40000000u },             /* 2.0 */
			{ 4 * (272 + 16 + 255), 0x3f000000u }, /* 0.5: entry 1's last row's norm */
		};

		for (size_t i = 0; i < SHADOW_ARRAY_SIZE(vals); i++) {
			memcpy(p, buf, nbytes);
			put32(p + 24 + vals[i].off, vals[i].bits);
			reseal(p, nbytes);
			assert_int_equal(shadow_transform_load(p, nbytes, NULL, &u),
					 SHADOW_ECORRUPT);
			assert_null(u);
		}
		/* a clean re-seal is accepted (the test's sealing is right) */
		memcpy(p, buf, nbytes);
		reseal(p, nbytes);
		assert_int_equal(shadow_transform_load(p, nbytes, NULL, &u), 0);
		shadow_transform_free(u);
		free(p);
	}
	free(buf);
	shadow_transform_free(t);
	cache_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_calibrate_correlated),
		cmocka_unit_test(test_calibrate_degenerate),
		cmocka_unit_test(test_calibrate_bad_args),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_kernels_identical),
		cmocka_unit_test(test_kernel_dispatch),
		cmocka_unit_test(test_save_load),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
