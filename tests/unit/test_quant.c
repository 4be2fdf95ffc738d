/*
 * test_quant.c - quantization (lib/quant): every decode variant gives the scalar reference's
 * bytes (random and hostile inputs, lengths 1..300, unaligned pointers, exactly sized buffers
 * so that ASan sees any overrun), for uniform and ECSQ (zigzag) symbols; dispatch honours
 * SHADOW_FORCE_ISA; quantize -> dequantize error bounds for key-like, value-like, 2D and
 * whole-frame tiles and both scale rules, and for ECSQ (zigzag codes, clamping, std 0);
 * bf16/fp16 conversions against known values; bit packing; bad parameters.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/cpu.h"
#include "unit/test_rng.h"
#include "quant/quant.h"

#define MAX_VARIANTS 8
#define MAX_N 300

/* ---- helpers ---- */


static uint32_t u32(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static uint16_t get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* A float parameter: mostly ordinary, sometimes any bit pattern (inf, NaN, subnormal). */
static float rnd_param(bool hostile, float lo, float hi)
{
	if (hostile && (rnd() & 7) == 0) {
		switch (rnd() & 3) {
		case 0:
			return f32((uint32_t)rnd());
		case 1:
			return f32((rnd() & 1 ? 0xff800000u : 0x7f800000u) |
				   (uint32_t)(rnd() & (rnd() & 1 ? 0x7fffffu : 0)));
		case 2:
			return f32((uint32_t)rnd() & 0x807fffffu); /* subnormal */
		default:
			return (rnd() & 1) ? 3.0e38f : -3.0e38f;
		}
	}
	return rnd_uniform(lo, hi);
}

/*
 * A tame parameter (quant.h) from the corners of the definition: a signed zero, ordinary
 * values, the smallest tame exponents (2^-100 ..), and values near bf16's maximum, whose
 * products overflow to infinity.
 */
static float rnd_tame_param(float lo, float hi)
{
	uint16_t sign = (uint16_t)((rnd() & 1) << 15), mant = (uint16_t)(rnd() & 0x7f);

	switch (rnd() & 7) {
	case 0:
		return shadow__bf16_to_float(sign);
	case 1: /* exponent 27 .. 30: 2^-100 .. 2^-97 */
		return shadow__bf16_to_float(sign | (uint16_t)((27u + (rnd() & 3)) << 7) | mant);
	case 2: /* exponent 250 .. 254 */
		return shadow__bf16_to_float(sign | (uint16_t)((250u + rnd() % 5) << 7) | mant);
	default:
		return shadow__bf16_to_float(shadow__float_to_bf16(rnd_uniform(lo, hi)));
	}
}

enum param_mode { PARAMS_ORDINARY, PARAMS_HOSTILE, PARAMS_TAME };

static float rnd_param_mode(enum param_mode mode, float lo, float hi)
{
	return mode == PARAMS_TAME ? rnd_tame_param(lo, hi) : rnd_param(mode == PARAMS_HOSTILE, lo, hi);
}

static size_t variants(const struct shadow__dequant_kernels **v)
{
	size_t n = shadow__dequant_variants(v, MAX_VARIANTS);

	assert_true(n >= 1 && n <= MAX_VARIANTS);
	assert_string_equal(v[0]->isa, "scalar");
	return n;
}

static int reset_all(void **state)
{
	(void)state;
	unsetenv("SHADOW_FORCE_ISA");
	shadow__cpu_features_reset_for_testing();
	shadow__dequant_reset_for_testing();
	return 0;
}

/* ---- (a) every variant == scalar ---- */

static const size_t out_offsets[] = { 0, 1, 2, 3 };

/* Row kernel `kernel` (row_vec, row_scalar, row_vec_zz, row_scalar_zz) of one variant. */
static void call_row(const struct shadow__dequant_kernels *k, int kernel, const uint8_t *q,
		     const uint8_t *hi, const float *scale, const float *bias, float s1, float b1,
		     void *out, size_t n, enum shadow__out_dtype dtype)
{
	switch (kernel) {
	case 0:
		k->row_vec(q, scale, bias, out, n, dtype);
		break;
	case 1:
		k->row_scalar(q, s1, b1, out, n, dtype);
		break;
	case 2:
		k->row_vec_zz(q, hi, scale, bias, out, n, dtype);
		break;
	default:
		k->row_scalar_zz(q, hi, s1, b1, out, n, dtype);
		break;
	}
}

/*
 * One row-kernel call per variant on the same inputs; outputs must be the same bytes. q is
 * also the low plane of the ECSQ kernels, hi their high plane (random: any code, -32768 too).
 */
static void check_rows(const struct shadow__dequant_kernels **v, size_t nv, size_t n,
		       enum param_mode mode)
{
	uint8_t *q = malloc(n), *hi = malloc(n); /* exactly sized: ASan catches over-reads */
	float *scale = malloc(n * sizeof(float)), *bias = malloc(n * sizeof(float));
	uint8_t *ref = malloc(2 * n + 8), *out = malloc(2 * n + 8);

	assert_non_null(q);
	assert_non_null(hi);
	assert_non_null(scale);
	assert_non_null(bias);
	assert_non_null(ref);
	assert_non_null(out);
	for (size_t i = 0; i < n; i++) {
		q[i] = (uint8_t)rnd();
		/* mostly small codes (the common case), sometimes any */
		hi[i] = (rnd() & 3) == 0 ? (uint8_t)rnd() : (uint8_t)(rnd() & 1);
		scale[i] = rnd_param_mode(mode, 0.0f, 0.05f);
		bias[i] = rnd_param_mode(mode, -4.0f, 4.0f);
	}
	float s1 = scale[n / 2], b1 = bias[0];

	for (int dt = 0; dt < 2; dt++) {
		enum shadow__out_dtype dtype = dt ? SHADOW_OUT_FP16 : SHADOW_OUT_BF16;

		for (int kernel = 0; kernel < 4; kernel++) {
			memset(ref, 0xa5, 2 * n + 8);
			call_row(v[0], kernel, q, hi, scale, bias, s1, b1, ref, n, dtype);
			for (size_t k = 1; k < nv; k++) {
				for (size_t o = 0; o < SHADOW_ARRAY_SIZE(out_offsets); o++) {
					size_t off = out_offsets[o];

					memset(out, 0xa5, 2 * n + 8);
					call_row(v[k], kernel, q, hi, scale, bias, s1, b1,
						 out + off, n, dtype);
					if (memcmp(ref, out + off, 2 * n) != 0) {
						print_error("%s kernel %d dtype %d n %zu off %zu\n",
							    v[k]->isa, kernel, dt, n, off);
						fail();
					}
					/* Nothing written outside [off, off + 2n). */
					for (size_t i = 0; i < off; i++)
						assert_int_equal(out[i], 0xa5);
					for (size_t i = off + 2 * n; i < 2 * n + 8; i++)
						assert_int_equal(out[i], 0xa5);
				}
			}
		}
	}
	free(q);
	free(hi);
	free(scale);
	free(bias);
	free(ref);
	free(out);
}

static void test_variants_rows(void **state)
{
	(void)state;
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = variants(v);

	for (size_t i = 0; i < nv; i++)
		print_message("variant %zu: %s\n", i, v[i]->isa);
#if defined(__x86_64__)
	uint32_t f = shadow__cpu_features();

	if ((f & (SHADOW_CPU_AVX2 | SHADOW_CPU_F16C)) == (SHADOW_CPU_AVX2 | SHADOW_CPU_F16C))
		assert_true(nv >= 2);
	if ((f & SHADOW_CPU_AVX512) == SHADOW_CPU_AVX512)
		assert_int_equal(nv, 3);
#endif
	for (size_t n = 1; n <= MAX_N; n++) {
		check_rows(v, nv, n, PARAMS_ORDINARY);
		check_rows(v, nv, n, PARAMS_HOSTILE);
	}
	for (int rep = 0; rep < 20; rep++)
		check_rows(v, nv, 4096 + (rnd() & 63), PARAMS_HOSTILE);
}

/* rows_vec of every variant == the scalar row_vec row by row (shared parameters). */
static void check_rows_vec(const struct shadow__dequant_kernels **v, size_t nv,
			   enum param_mode mode)
{
	static const size_t widths[] = { 1, 15, 16, 63, 64, 65, 128, 200, 256, 300 };
	static const size_t row_counts[] = { 1, 3, 17 };

	for (size_t wi = 0; wi < SHADOW_ARRAY_SIZE(widths); wi++) {
		for (size_t ri = 0; ri < SHADOW_ARRAY_SIZE(row_counts); ri++) {
			size_t n = widths[wi], rows = row_counts[ri], total = n * rows;
			uint8_t *q = malloc(total), *ref = malloc(2 * total), *out = malloc(2 * total);
			float *scale = malloc(n * sizeof(float)), *bias = malloc(n * sizeof(float));

			assert_true(q && ref && out && scale && bias);
			for (size_t i = 0; i < total; i++)
				q[i] = (uint8_t)rnd();
			for (size_t i = 0; i < n; i++) {
				scale[i] = rnd_param_mode(mode, 0.0f, 0.05f);
				bias[i] = rnd_param_mode(mode, -4.0f, 4.0f);
			}
			for (int dt = 0; dt < 2; dt++) {
				enum shadow__out_dtype dtype = dt ? SHADOW_OUT_FP16 : SHADOW_OUT_BF16;

				for (size_t r = 0; r < rows; r++)
					v[0]->row_vec(q + r * n, scale, bias, ref + 2 * r * n, n, dtype);
				for (size_t k = 0; k < nv; k++) {
					memset(out, 0xa5, 2 * total);
					v[k]->rows_vec(q, scale, bias, out, rows, n, dtype);
					if (memcmp(ref, out, 2 * total) != 0) {
						print_error("%s rows_vec n %zu rows %zu dtype %d\n",
							    v[k]->isa, n, rows, dt);
						fail();
					}
				}
			}
			free(q);
			free(ref);
			free(out);
			free(scale);
			free(bias);
		}
	}
}

/* rows_scalar of every variant == the scalar row_scalar row by row (bf16 parameters). */
static void check_rows_scalar(const struct shadow__dequant_kernels **v, size_t nv,
			      enum param_mode mode)
{
	static const size_t widths[] = { 1, 16, 33, 128 };
	enum { ROWS = 37 };

	for (size_t wi = 0; wi < SHADOW_ARRAY_SIZE(widths); wi++) {
		size_t n = widths[wi], total = n * ROWS;
		uint8_t *q = malloc(total), *ref = malloc(2 * total), *out = malloc(2 * total);
		uint8_t sp[2 * ROWS], bp[2 * ROWS];

		assert_true(q && ref && out);
		for (size_t i = 0; i < total; i++)
			q[i] = (uint8_t)rnd();
		for (size_t r = 0; r < ROWS; r++) {
			uint16_t sh = shadow__float_to_bf16(rnd_param_mode(mode, 0.0f, 0.05f));
			uint16_t bh = shadow__float_to_bf16(rnd_param_mode(mode, -4.0f, 4.0f));
			sp[2 * r] = (uint8_t)sh;
			sp[2 * r + 1] = (uint8_t)(sh >> 8);
			bp[2 * r] = (uint8_t)bh;
			bp[2 * r + 1] = (uint8_t)(bh >> 8);
		}
		for (int dt = 0; dt < 2; dt++) {
			enum shadow__out_dtype dtype = dt ? SHADOW_OUT_FP16 : SHADOW_OUT_BF16;

			for (size_t r = 0; r < ROWS; r++)
				v[0]->row_scalar(q + r * n,
						 shadow__bf16_to_float((uint16_t)(sp[2 * r] | sp[2 * r + 1] << 8)),
						 shadow__bf16_to_float((uint16_t)(bp[2 * r] | bp[2 * r + 1] << 8)),
						 ref + 2 * r * n, n, dtype);
			for (size_t k = 0; k < nv; k++) {
				memset(out, 0xa5, 2 * total);
				v[k]->rows_scalar(q, sp, bp, out, ROWS, n, dtype);
				if (memcmp(ref, out, 2 * total) != 0) {
					print_error("%s rows_scalar n %zu dtype %d\n", v[k]->isa, n, dt);
					fail();
				}
			}
		}
		free(q);
		free(ref);
		free(out);
	}
}

static void test_variants_rows_vec(void **state)
{
	(void)state;
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = variants(v);

	check_rows_vec(v, nv, PARAMS_ORDINARY);
	check_rows_vec(v, nv, PARAMS_HOSTILE);
	check_rows_scalar(v, nv, PARAMS_ORDINARY);
	check_rows_scalar(v, nv, PARAMS_HOSTILE);
	nv = shadow__dequant_tame_variants(v, MAX_VARIANTS);
	check_rows_vec(v, nv, PARAMS_TAME);
	check_rows_scalar(v, nv, PARAMS_TAME);
}

/* The tame-only variants (AVX512-BF16) give the reference's bytes for tame parameters. */
static void test_variants_tame(void **state)
{
	(void)state;
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = shadow__dequant_tame_variants(v, MAX_VARIANTS), nv_all = variants(v);

	assert_true(nv >= nv_all && nv <= MAX_VARIANTS);
	shadow__dequant_tame_variants(v, MAX_VARIANTS);
	for (size_t i = 0; i < nv; i++)
		print_message("tame variant %zu: %s\n", i, v[i]->isa);
#if defined(__x86_64__)
	if (shadow__cpu_features() & SHADOW_CPU_AVX512BF16) {
		assert_int_equal(nv, nv_all + 1);
		assert_string_equal(shadow__dequant_kernels_tame()->isa, "avx512bf16");
	}
#endif
	assert_ptr_equal(shadow__dequant_kernels_tame(), v[nv - 1]);
	for (size_t n = 1; n <= MAX_N; n++)
		check_rows(v, nv, n, PARAMS_TAME);
	for (int rep = 0; rep < 20; rep++)
		check_rows(v, nv, 4096 + (rnd() & 63), PARAMS_TAME);

	/* the definition's edges */
	assert_true(shadow__bf16_tame(0x0000) && shadow__bf16_tame(0x8000));
	assert_true(shadow__bf16_tame(0x0d80) && shadow__bf16_tame(0x8d80)); /* 2^-100 */
	assert_false(shadow__bf16_tame(0x0d7f) || shadow__bf16_tame(0x0001)); /* below */
	assert_true(shadow__bf16_tame(0x7f7f) && shadow__bf16_tame(0x3f80));
	assert_false(shadow__bf16_tame(0x7f80) || shadow__bf16_tame(0xff80)); /* infinities */
	assert_false(shadow__bf16_tame(0x7fc0) || shadow__bf16_tame(0x7f81)); /* NaN */
}

/*
 * The conversions themselves, on any float: q = 1, bias = -0 makes x = scale exactly (-0 keeps
 * the sign of a zero), so every variant must round arbitrary bit patterns like the reference,
 * which for non-NaN is shadow__float_to_bf16 / shadow__float_to_fp16.
 */
static void test_variants_convert(void **state)
{
	(void)state;
	enum { N = 4096 };
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = variants(v);
	uint8_t *q = malloc(N);
	float *x = malloc(N * sizeof(float)), *nz = malloc(N * sizeof(float));
	uint8_t *out = malloc(2 * N);

	assert_non_null(q);
	assert_non_null(x);
	assert_non_null(nz);
	assert_non_null(out);
	memset(q, 1, N);
	for (size_t i = 0; i < N; i++)
		nz[i] = -0.0f;
	for (int rep = 0; rep < 256; rep++) {
		for (size_t i = 0; i < N; i++) {
			uint32_t u = (uint32_t)rnd();

			switch (i & 3) {
			case 0: /* ties and near-ties of bf16 and of fp16 */
				u = (u & 0xffff0000u) | (uint32_t[]){ 0x8000u, 0x7fffu, 0x8001u,
								    0x0000u }[(i >> 2) & 3];
				if (rep & 1)
					u = (u & 0xffffe000u) | ((i >> 4) & 1 ? 0x1000u : 0x0fffu);
				break;
			case 1: /* the fp16 range and its edges: exponents 100..145 */
				u = (u & 0x807fffffu) | ((100u + (uint32_t)(rnd() % 46)) << 23);
				break;
			default:
				break;
			}
			x[i] = f32(u);
		}
		for (size_t k = 0; k < nv; k++) {
			v[k]->row_vec(q, x, nz, out, N, SHADOW_OUT_BF16);
			for (size_t i = 0; i < N; i++) {
				uint16_t want = x[i] != x[i] ? SHADOW_BF16_QNAN
							     : shadow__float_to_bf16(x[i]);

				if (get16(out + 2 * i) != want) {
					print_error("%s bf16 of %08x: %04x, want %04x\n", v[k]->isa,
						    u32(x[i]), get16(out + 2 * i), want);
					fail();
				}
			}
			v[k]->row_vec(q, x, nz, out, N, SHADOW_OUT_FP16);
			for (size_t i = 0; i < N; i++) {
				uint16_t want = x[i] != x[i] ? SHADOW_FP16_QNAN
							     : shadow__float_to_fp16(x[i]);

				if (get16(out + 2 * i) != want) {
					print_error("%s fp16 of %08x: %04x, want %04x\n", v[k]->isa,
						    u32(x[i]), get16(out + 2 * i), want);
					fail();
				}
			}
		}
	}
	free(q);
	free(x);
	free(nz);
	free(out);
}

/* The zigzag decoding as the spec writes it, computed another way. */
static int32_t zz_ref(uint32_t u)
{
	return (u & 1) ? -(int32_t)(u / 2) - 1 : (int32_t)(u / 2);
}

/*
 * ECSQ codes: every 16-bit code through both zz kernels of every variant with scale 1 and bias
 * -0, so that the output is the symbol itself (exact in bf16 up to 256, in fp16 up to 2048,
 * rounded beyond): known values, and the reference conversion of zz(u) everywhere.
 */
static void test_variants_zz_codes(void **state)
{
	(void)state;
	enum { N = 65536 };
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = variants(v);
	uint8_t *lo = malloc(N), *hi = malloc(N), *out = malloc(2 * N + 1);
	float *one = malloc(N * sizeof(float)), *nz = malloc(N * sizeof(float));

	assert_true(lo && hi && out && one && nz);
	for (size_t u = 0; u < N; u++) {
		lo[u] = (uint8_t)u;
		hi[u] = (uint8_t)(u >> 8);
		one[u] = 1.0f;
		nz[u] = -0.0f;
	}
	/* known values: 0 -> 0, 1 -> -1, 2 -> 1, 3 -> -2, 65534 -> 32767, 65533 -> -32767 */
	assert_int_equal(zz_ref(0), 0);
	assert_int_equal(zz_ref(1), -1);
	assert_int_equal(zz_ref(2), 1);
	assert_int_equal(zz_ref(3), -2);
	assert_int_equal(zz_ref(65534), 32767);
	assert_int_equal(zz_ref(65533), -32767);
	assert_int_equal(zz_ref(65535), -32768);
	for (size_t k = 0; k < nv; k++) {
		for (int kernel = 0; kernel < 2; kernel++) {
			for (int dt = 0; dt < 2; dt++) {
				enum shadow__out_dtype dtype =
					dt ? SHADOW_OUT_FP16 : SHADOW_OUT_BF16;
				uint8_t *o = out + (kernel ^ dt); /* odd addresses too */

				if (kernel == 0)
					v[k]->row_vec_zz(lo, hi, one, nz, o, N, dtype);
				else
					v[k]->row_scalar_zz(lo, hi, 1.0f, -0.0f, o, N, dtype);
				for (uint32_t u = 0; u < N; u++) {
					float want = (float)zz_ref(u);
					uint16_t w = dt ? shadow__float_to_fp16(want)
							: shadow__float_to_bf16(want);

					if (get16(o + 2 * u) != w) {
						print_error("%s zz kernel %d dtype %d u %u: %04x, "
							    "want %04x\n", v[k]->isa, kernel, dt, u,
							    get16(o + 2 * u), w);
						fail();
					}
				}
				/* 0 stays +0 (bias -0: 0 * 1 + -0 = +0), small codes exact */
				assert_int_equal(get16(o), 0x0000);
				if (!dt) {
					assert_int_equal(get16(o + 2), 0xbf80);  /* -1 */
					assert_int_equal(get16(o + 4), 0x3f80);  /* 1 */
					assert_int_equal(get16(o + 6), 0xc000);  /* -2 */
				} else {
					assert_int_equal(get16(o + 2), 0xbc00);
					assert_int_equal(get16(o + 4), 0x3c00);
					assert_int_equal(get16(o + 6), 0xc000);
				}
			}
		}
	}
	free(lo);
	free(hi);
	free(out);
	free(one);
	free(nz);
}

static void test_variants_merge(void **state)
{
	(void)state;
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = variants(v);

	for (size_t n = 1; n <= MAX_N + 40; n++) {
		uint16_t *x = malloc(n * sizeof(uint16_t));
		uint8_t *hi = malloc(n), *lo = malloc(n), *out = malloc(2 * n + 3);

		assert_non_null(x);
		assert_non_null(hi);
		assert_non_null(lo);
		assert_non_null(out);
		for (size_t i = 0; i < n; i++)
			x[i] = (uint16_t)rnd();
		shadow__split_planes(x, n, hi, lo);
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(hi[i], x[i] >> 8);
			assert_int_equal(lo[i], x[i] & 0xff);
		}
		for (size_t k = 0; k < nv; k++) {
			for (size_t off = 0; off < 4; off++) {
				memset(out, 0xa5, 2 * n + 3);
				v[k]->merge_planes(hi, lo, out + off, n - (off ? 1 : 0));
				size_t m = n - (off ? 1 : 0);

				for (size_t i = 0; i < m; i++)
					if (get16(out + off + 2 * i) != x[i]) {
						print_error("%s merge n %zu off %zu i %zu\n",
							    v[k]->isa, m, off, i);
						fail();
					}
				for (size_t i = off + 2 * m; i < 2 * n + 3; i++)
					assert_int_equal(out[i], 0xa5);
			}
		}
		free(x);
		free(hi);
		free(lo);
		free(out);
	}
}

static void test_variants_unpack(void **state)
{
	(void)state;
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = variants(v);

	for (unsigned bits = 2; bits <= 8; bits++) {
		for (size_t n = 1; n <= MAX_N; n++) {
			size_t pn = (n * bits + 7) / 8;
			uint8_t *sym = malloc(n), *packed = malloc(pn), *q = malloc(n + 1);

			assert_non_null(sym);
			assert_non_null(packed);
			assert_non_null(q);
			for (size_t i = 0; i < n; i++)
				sym[i] = (uint8_t)(rnd() & ((1u << bits) - 1u));
			assert_int_equal(shadow__pack_bits(sym, n, bits, packed), pn);
			for (size_t k = 0; k < nv; k++) {
				for (size_t off = 0; off < 2; off++) {
					memset(q, 0xa5, n + 1);
					v[k]->unpack_bits(packed, bits, q + off, n - off);
					if (memcmp(q + off, sym, n - off) != 0) {
						print_error("%s unpack bits %u n %zu off %zu\n",
							    v[k]->isa, bits, n - off, off);
						fail();
					}
					assert_int_equal(q[n], 0xa5);
					if (off)
						assert_int_equal(q[0], 0xa5);
				}
			}
			free(sym);
			free(packed);
			free(q);
		}
	}
}

/* ---- (b) dispatch ---- */

static const char *forced_kernels(const char *isa)
{
	setenv("SHADOW_FORCE_ISA", isa, 1);
	shadow__cpu_features_reset_for_testing();
	shadow__dequant_reset_for_testing();
	const char *name = shadow__dequant_kernels()->isa;

	/* Sticks, as the features do, until reset. */
	unsetenv("SHADOW_FORCE_ISA");
	assert_string_equal(shadow__dequant_kernels()->isa, name);
	return name;
}

static void test_dispatch(void **state)
{
	(void)state;
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv;

	reset_all(NULL);
	nv = variants(v);
	/* Unforced: the best variant, the last one listed. */
	assert_ptr_equal(shadow__dequant_kernels(), v[nv - 1]);
	assert_ptr_equal(shadow__dequant_kernels(), shadow__dequant_kernels());

	bool has_avx2 = false, has_avx512 = false, has_neon = false;

	for (size_t i = 0; i < nv; i++) {
		has_avx2 |= strcmp(v[i]->isa, "avx2") == 0;
		has_avx512 |= strcmp(v[i]->isa, "avx512") == 0;
		has_neon |= strcmp(v[i]->isa, "neon") == 0;
	}
	assert_string_equal(forced_kernels("scalar"), "scalar");
	/* Forced down, the list shrinks with the features. */
	assert_int_equal(shadow__dequant_variants(v, MAX_VARIANTS), 1);
	assert_string_equal(forced_kernels("avx2"), has_avx2 ? "avx2" : "scalar");
	assert_string_equal(forced_kernels("avx512"),
			    has_avx512 ? "avx512" : has_avx2 ? "avx2" : "scalar");
	assert_string_equal(forced_kernels("neon"), has_neon ? "neon" : "scalar");
	/* max smaller than the count: writes max, returns the count. */
	reset_all(NULL);
	const struct shadow__dequant_kernels *one[1] = { NULL };

	assert_int_equal(shadow__dequant_variants(one, 1), nv);
	assert_ptr_equal(one[0], v[0]);
	assert_int_equal(shadow__dequant_variants(NULL, 0), nv);
}

/* ---- (c) quantize -> dequantize ---- */

/* A frame and its tiles: group_tokens x group_channels (gt x gc). */
struct frame_cfg {
	uint32_t n_tokens, n_heads, head_dim, bits, gt, gc, rule;
	float step_mul;
};

static struct shadow__quant_params cfg_params(const struct frame_cfg *c)
{
	struct shadow__quant_params p = {
		.n_tokens = c->n_tokens, .n_heads = c->n_heads, .head_dim = c->head_dim,
		.bits = c->bits, .group_tokens = c->gt, .group_channels = c->gc,
		.scale_rule = c->rule, .step_mul = c->step_mul,
	};

	return p;
}

/* The group of element (t, j), j = head * head_dim + channel: [token group][head][ch group]. */
static size_t group_of(const struct frame_cfg *c, size_t t, size_t j)
{
	size_t C = (size_t)c->n_heads * c->head_dim;

	return (t / c->gt) * (C / c->gc) + j / c->gc;
}

static size_t cfg_groups(const struct frame_cfg *c)
{
	return (size_t)((c->n_tokens + c->gt - 1) / c->gt) * c->n_heads * (c->head_dim / c->gc);
}

/*
 * Fill a frame: per-channel offsets and scales (some outlier channels), constant channels, a
 * few outlier elements, and optionally a few non-finite elements.
 */
static void fill_frame(float *x, const struct frame_cfg *c, bool nonfinite)
{
	size_t C = (size_t)c->n_heads * c->head_dim;
	float off[512], sc[512];

	assert_true(C <= 512);
	for (size_t j = 0; j < C; j++) {
		off[j] = rnd_uniform(-2.0f, 2.0f);
		sc[j] = (rnd() & 15) == 0 ? rnd_uniform(5.0f, 20.0f) : rnd_uniform(0.01f, 1.0f);
		if (j % 13 == 4) { /* a large offset against a small spread: float rounding of */
			off[j] = 700.0f + (float)j; /* the decoded grid decides near-ties */
			sc[j] = 0.002f;
		}
	}
	for (size_t t = 0; t < c->n_tokens; t++) {
		for (size_t j = 0; j < C; j++) {
			float v = off[j] + sc[j] * rnd_normal();

			if ((j % 97) == 5)
				v = 1.0009765625f + (float)(j % 3); /* constant channel */
			if ((j % 89) == 7)
				v = 0.1f; /* constant, not a bf16 */
			if (t == 3 && (rnd() & 31) == 0)
				v *= 50.0f; /* outlier */
			x[t * C + j] = v;
		}
	}
	if (nonfinite) {
		x[0] = f32(0x7fc00000u);
		x[C + 1] = __builtin_inff();
		x[2 * C + 2] = -__builtin_inff();
	}
}

/* Per-group statistics of a frame's finite elements, summed in the quantizer's order. */
struct frame_stats {
	double *sum, *sq;
	uint32_t *cnt;
	float *gmin, *gmax;
};

static void frame_stats(const struct frame_cfg *c, const float *x, size_t ng,
			struct frame_stats *s)
{
	size_t C = (size_t)c->n_heads * c->head_dim;

	s->sum = calloc(ng, sizeof(double));
	s->sq = calloc(ng, sizeof(double));
	s->cnt = calloc(ng, sizeof(uint32_t));
	s->gmin = malloc(ng * sizeof(float));
	s->gmax = malloc(ng * sizeof(float));
	assert_true(s->sum && s->sq && s->cnt && s->gmin && s->gmax);
	for (size_t g = 0; g < ng; g++) {
		s->gmin[g] = __builtin_inff();
		s->gmax[g] = -__builtin_inff();
	}
	for (size_t t = 0; t < c->n_tokens; t++)
		for (size_t j = 0; j < C; j++) {
			float xv = x[t * C + j];
			size_t g = group_of(c, t, j);

			if (xv - xv != 0)
				continue;
			s->sum[g] += xv;
			s->cnt[g]++;
			s->gmin[g] = xv < s->gmin[g] ? xv : s->gmin[g];
			s->gmax[g] = xv > s->gmax[g] ? xv : s->gmax[g];
		}
	for (size_t t = 0; t < c->n_tokens; t++)
		for (size_t j = 0; j < C; j++) {
			float xv = x[t * C + j];
			size_t g = group_of(c, t, j);

			if (xv - xv != 0)
				continue;
			double dev = (double)xv - s->sum[g] / s->cnt[g];

			s->sq[g] += dev * dev;
		}
}

static void frame_stats_free(struct frame_stats *s)
{
	free(s->sum);
	free(s->sq);
	free(s->cnt);
	free(s->gmin);
	free(s->gmax);
}

/*
 * Decode row (t, h) of a frame with kernels k as the codec would: row_vec over per-channel
 * parameters (gc 1), else row_scalar per channel group; lo/hi given: the ECSQ kernels.
 */
static void decode_row(const struct shadow__dequant_kernels *k, const struct frame_cfg *c,
		       const uint8_t *q, const uint8_t *hi, const float *sc, const float *bi,
		       size_t t, size_t h, uint8_t *out)
{
	size_t C = (size_t)c->n_heads * c->head_dim, d = c->head_dim, i0 = t * C + h * d;

	if (c->gc == 1) {
		size_t g = group_of(c, t, h * d);

		if (hi)
			k->row_vec_zz(q + i0, hi + i0, sc + g, bi + g, out, d, SHADOW_OUT_BF16);
		else
			k->row_vec(q + i0, sc + g, bi + g, out, d, SHADOW_OUT_BF16);
		return;
	}
	for (size_t j = 0; j < d; j += c->gc) {
		size_t g = group_of(c, t, h * d + j);

		if (hi)
			k->row_scalar_zz(q + i0 + j, hi + i0 + j, sc[g], bi[g], out + 2 * j, c->gc,
					 SHADOW_OUT_BF16);
		else
			k->row_scalar(q + i0 + j, sc[g], bi[g], out + 2 * j, c->gc,
				      SHADOW_OUT_BF16);
	}
}

/* Step = step_mul * std rounded to the nearest bf16: squared, so that no sqrt is needed. */
static void check_step(float s, double step2, bool allow_min, bool allow_max)
{
	uint16_t h = shadow__float_to_bf16(s);
	double up = shadow__bf16_to_float((uint16_t)(h + 1)), m;

	assert_true(s > 0 && h < 0x7f80u && shadow__bf16_to_float(h) == s);
	m = ((double)s + up) / 2; /* above s: the midpoint is not below the step */
	if (!(allow_max && h == 0x7f7fu) && !(m * m >= step2 * (1 - 1e-12))) {
		print_error("step %g above: sqrt(%g)\n", s, step2);
		fail();
	}
	m = ((double)s + shadow__bf16_to_float((uint16_t)(h - 1))) / 2;
	if (!(allow_min && h == 1) && !(m * m <= step2 * (1 + 1e-12))) {
		print_error("step %g below: sqrt(%g)\n", s, step2);
		fail();
	}
}

/* bf16 h is (one of) the nearest to d. */
static void check_nearest_bf16(uint16_t h, double d)
{
	double e = __builtin_fabs((double)shadow__bf16_to_float(h) - d);
	uint16_t nb[2];

	/* neighbours by value: toward +inf and toward -inf */
	if (h & 0x8000u) {
		nb[0] = h == 0x8000u ? 0x0001u : (uint16_t)(h - 1);
		nb[1] = (uint16_t)(h + 1);
	} else {
		nb[0] = (uint16_t)(h + 1);
		nb[1] = h == 0 ? 0x8001u : (uint16_t)(h - 1);
	}
	for (int i = 0; i < 2; i++) {
		float v = shadow__bf16_to_float(nb[i]);

		if (v - v == 0 && __builtin_fabs((double)v - d) < e) {
			print_error("bf16 %04x is not nearest to %.17g (%04x is)\n", h, d, nb[i]);
			fail();
		}
	}
}

static void check_frame(const struct frame_cfg *c, bool nonfinite)
{
	struct shadow__quant_params p = cfg_params(c);
	size_t C = (size_t)c->n_heads * c->head_dim, n = c->n_tokens * C;
	size_t ng = shadow__quant_n_groups(&p);
	uint32_t maxq = (1u << c->bits) - 1u;

	assert_int_equal(ng, cfg_groups(c));
	float *x = malloc(n * sizeof(float));
	uint8_t *q = malloc(n), *out = malloc(2 * C);
	uint16_t *par = malloc(2 * ng * sizeof(uint16_t));
	float *sc = malloc(ng * sizeof(float)), *bi = malloc(ng * sizeof(float));
	struct frame_stats st;

	assert_true(x && q && out && par && sc && bi);
	fill_frame(x, c, nonfinite);
	assert_int_equal(shadow__quantize_frame(&p, x, q, par), 0);
	for (size_t g = 0; g < ng; g++) {
		sc[g] = shadow__bf16_to_float(par[g]);
		bi[g] = shadow__bf16_to_float(par[ng + g]);
		assert_true(sc[g] - sc[g] == 0 && sc[g] >= 0); /* finite, >= 0 */
		assert_true(bi[g] - bi[g] == 0);
	}
	frame_stats(c, x, ng, &st);
	/* Group parameters. */
	for (size_t g = 0; g < ng; g++) {
		if (st.cnt[g] == 0) {
			assert_true(sc[g] == 0 && par[ng + g] == 0);
			continue;
		}
		if (c->rule == SHADOW_SCALE_MINMAX) {
			/* The grid covers the group's range. */
			assert_true(bi[g] <= st.gmin[g]);
			assert_true((double)bi[g] + (double)maxq * sc[g] >= st.gmax[g]);
			/* constant and a bf16: scale 0 */
			if (st.gmin[g] == st.gmax[g] &&
			    shadow__bf16_to_float(shadow__float_to_bf16(st.gmin[g])) == st.gmin[g])
				assert_true(sc[g] == 0);
		} else {
			double var = st.sq[g] / st.cnt[g];

			if (var == 0)
				assert_true(sc[g] == 0);
			else
				check_step(sc[g], (double)c->step_mul * c->step_mul * var, false,
					   false);
		}
	}
	/* Symbols, and the error of each element. */
	for (size_t t = 0; t < c->n_tokens; t++) {
		for (size_t j = 0; j < C; j++) {
			size_t i = t * C + j, g = group_of(c, t, j);
			float xv = x[i], s = sc[g], b = bi[g];
			uint32_t qq = q[i];

			assert_true(qq <= maxq);
			if (xv - xv != 0 || s == 0) {
				assert_int_equal(qq, 0);
				if (xv - xv == 0) /* constant group: bias is its value in bf16 */
					assert_true(__builtin_fabs((double)b - xv) <=
						    __builtin_fabs(xv) * 0x1p-8 + 1e-30);
				continue;
			}
			float dec = (float)qq * s + b;
			double err = __builtin_fabs((double)dec - xv);
			/* float rounding of q * s and of the add */
			double tol = 4 * 0x1p-24 * (__builtin_fabs(b) + (double)qq * s +
						     __builtin_fabs(xv));
			double top = (double)b + (double)maxq * s;

			/* The nearest grid point, with the decoder's arithmetic. */
			if (qq > 0)
				assert_true(err <= __builtin_fabs(
							   (double)((float)(qq - 1) * s + b) - xv));
			if (qq < maxq)
				assert_true(err <= __builtin_fabs(
							   (double)((float)(qq + 1) * s + b) - xv));
			if (xv >= b && xv <= top) {
				if (err > s / 2 + tol) {
					print_error("x %g q %u scale %g bias %g err %g\n", xv,
						    qq, s, b, err);
					fail();
				}
			} else {
				assert_int_equal(c->rule, SHADOW_SCALE_STD); /* MINMAX covers */
				assert_int_equal(qq, xv < b ? 0 : maxq);
			}
		}
	}
	/* Decode each (token, head) row as the codec does and compare with the reference. */
	const struct shadow__dequant_kernels *k = shadow__dequant_kernels();

	for (size_t t = 0; t < c->n_tokens; t++) {
		for (size_t h = 0; h < c->n_heads; h++) {
			size_t i0 = t * C + h * c->head_dim;

			decode_row(k, c, q, NULL, sc, bi, t, h, out);
			for (size_t j = 0; j < c->head_dim; j++) {
				size_t g = group_of(c, t, h * c->head_dim + j);
				float dec = (float)q[i0 + j] * sc[g] + bi[g];

				assert_int_equal(get16(out + 2 * j), shadow__float_to_bf16(dec));
			}
		}
	}
	free(x);
	free(q);
	free(out);
	free(par);
	free(sc);
	free(bi);
	frame_stats_free(&st);
}

/*
 * The tiles every quantizer is checked with, on frames of n_tokens x n_heads x head_dim: keys
 * per channel (gc 1) over 1, 3, 16 (not dividing 37) and all tokens; values per token over 8,
 * 32 and all of head_dim channels; 2D tiles (16 x 32, 5 x 8, 2 x 16) and the whole head-frame.
 */
static const struct {
	uint32_t n_tokens, n_heads, head_dim, gt, gc;
} tiles[] = {
	{ 37, 2, 64, 1, 1 },   { 37, 2, 64, 3, 1 },   { 37, 2, 64, 16, 1 },   { 37, 2, 64, 37, 1 },
	{ 19, 3, 64, 1, 8 },   { 19, 3, 64, 1, 32 },  { 19, 3, 64, 1, 64 },   { 37, 2, 64, 16, 32 },
	{ 19, 3, 64, 5, 8 },   { 24, 4, 32, 2, 16 },  { 37, 2, 64, 37, 64 },  { 19, 3, 64, 19, 64 },
};

static void test_roundtrip(void **state)
{
	(void)state;
	for (uint32_t bits = 2; bits <= 8; bits++) {
		for (uint32_t rule = 0; rule < 2; rule++) {
			float step_mul = bits >= 6 ? 0.05f : bits >= 4 ? 0.35f : 0.9f;

			for (size_t ti = 0; ti < SHADOW_ARRAY_SIZE(tiles); ti++) {
				struct frame_cfg c = { tiles[ti].n_tokens, tiles[ti].n_heads,
						       tiles[ti].head_dim, bits, tiles[ti].gt,
						       tiles[ti].gc, rule, step_mul };

				check_frame(&c, ti % 3 == 1);
			}
		}
	}
	/*
	 * More channels than one encoder block (256 > 128), a group wider than a block (head_dim
	 * 384, 192 and 384 channels), and groups that do not divide the block (96 / 48).
	 */
	static const struct frame_cfg big[] = {
		{ 40, 2, 128, 4, 16, 1, SHADOW_SCALE_MINMAX, 0 },
		{ 40, 2, 128, 4, 16, 1, SHADOW_SCALE_STD, 0.4f },
		{ 40, 2, 128, 4, 3, 32, SHADOW_SCALE_STD, 0.4f },
		{ 9, 1, 384, 5, 1, 192, SHADOW_SCALE_MINMAX, 0 },
		{ 9, 1, 384, 5, 4, 384, SHADOW_SCALE_STD, 0.3f },
		{ 9, 1, 384, 6, 9, 384, SHADOW_SCALE_MINMAX, 0 },
		{ 11, 5, 96, 3, 2, 48, SHADOW_SCALE_MINMAX, 0 },
		{ 11, 5, 96, 3, 11, 96, SHADOW_SCALE_STD, 0.9f },
	};

	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(big); i++)
		check_frame(&big[i], i == 2);
}

/* ---- (d) ECSQ ---- */

static int32_t sym_of(const uint8_t *lo, const uint8_t *hi, size_t i)
{
	return zz_ref((uint32_t)lo[i] | (uint32_t)hi[i] << 8);
}

static void check_frame_ecsq(const struct frame_cfg *c, bool nonfinite)
{
	struct shadow__quant_params p = cfg_params(c), p8 = p;
	size_t C = (size_t)c->n_heads * c->head_dim, n = c->n_tokens * C;

	/* shadow__quant_n_groups checks as shadow__quantize_frame does, bits included. */
	p8.bits = 8;
	size_t ng = shadow__quant_n_groups(&p8);

	assert_int_equal(ng, cfg_groups(c));
	float *x = malloc(n * sizeof(float));
	uint8_t *lo = malloc(n), *hi = malloc(n), *out = malloc(2 * C);
	uint16_t *par = malloc(2 * ng * sizeof(uint16_t));
	float *sc = malloc(ng * sizeof(float)), *bi = malloc(ng * sizeof(float));
	struct frame_stats st;

	assert_true(x && lo && hi && out && par && sc && bi);
	fill_frame(x, c, nonfinite);
	assert_int_equal(shadow__quantize_frame_ecsq(&p, x, lo, hi, par), 0);
	frame_stats(c, x, ng, &st);
	/* Parameters: scale nearest bf16 of step_mul * std (0 for std 0), bias nearest of mean. */
	for (size_t g = 0; g < ng; g++) {
		sc[g] = shadow__bf16_to_float(par[g]);
		bi[g] = shadow__bf16_to_float(par[ng + g]);
		if (st.cnt[g] == 0) {
			assert_int_equal(par[g], 0);
			assert_int_equal(par[ng + g], 0);
			continue;
		}
		double var = st.sq[g] / st.cnt[g];

		check_nearest_bf16(par[ng + g], st.sum[g] / st.cnt[g]);
		if (var == 0)
			assert_int_equal(par[g], 0);
		else
			check_step(sc[g], (double)c->step_mul * c->step_mul * var, true, true);
	}
	/* Symbols: nearest decoded point, within scale / 2 unless clamped. */
	for (size_t t = 0; t < c->n_tokens; t++) {
		for (size_t j = 0; j < C; j++) {
			size_t i = t * C + j, g = group_of(c, t, j);
			float xv = x[i], s = sc[g], b = bi[g];
			int32_t qq = sym_of(lo, hi, i);

			assert_true(qq >= -32767 && qq <= 32767);
			if (xv - xv != 0 || s == 0) {
				assert_int_equal(qq, 0);
				continue;
			}
			float dec = (float)qq * s + b;
			double err = __builtin_fabs((double)dec - xv);
			double tol = 4 * 0x1p-24 *
				     (__builtin_fabs(b) + __builtin_fabs((double)qq) * s +
				      __builtin_fabs(xv));
			double t_exact = ((double)xv - b) / s;

			if (qq > -32767)
				assert_true(err <= __builtin_fabs(
							   (double)((float)(qq - 1) * s + b) - xv));
			if (qq < 32767)
				assert_true(err <= __builtin_fabs(
							   (double)((float)(qq + 1) * s + b) - xv));
			if (t_exact >= -32767 && t_exact <= 32767) {
				if (err > s / 2 + tol) {
					print_error("x %g q %d scale %g bias %g err %g\n", xv, qq,
						    s, b, err);
					fail();
				}
			} else {
				assert_int_equal(qq, t_exact < 0 ? -32767 : 32767); /* clamped */
			}
		}
	}
	/* Decode each (token, head) row as the codec does and compare with the reference. */
	const struct shadow__dequant_kernels *k = shadow__dequant_kernels();

	for (size_t t = 0; t < c->n_tokens; t++) {
		for (size_t h = 0; h < c->n_heads; h++) {
			size_t i0 = t * C + h * c->head_dim;

			decode_row(k, c, lo, hi, sc, bi, t, h, out);
			for (size_t j = 0; j < c->head_dim; j++) {
				size_t g = group_of(c, t, h * c->head_dim + j);
				float dec = (float)sym_of(lo, hi, i0 + j) * sc[g] + bi[g];

				assert_int_equal(get16(out + 2 * j), shadow__float_to_bf16(dec));
			}
		}
	}
	free(x);
	free(lo);
	free(hi);
	free(out);
	free(par);
	free(sc);
	free(bi);
	frame_stats_free(&st);
}

static void test_ecsq_roundtrip(void **state)
{
	(void)state;
	/* 1e-4: most of the outliers clamp (|q| <= 32767 covers 3.3 std) */
	static const float step_muls[] = { 1.0f, 0.25f, 0.02f, 1e-4f };

	for (size_t si = 0; si < SHADOW_ARRAY_SIZE(step_muls); si++) {
		for (size_t ti = 0; ti < SHADOW_ARRAY_SIZE(tiles); ti++) {
			struct frame_cfg c = { tiles[ti].n_tokens, tiles[ti].n_heads,
					       tiles[ti].head_dim, 0, tiles[ti].gt, tiles[ti].gc,
					       SHADOW_SCALE_STD, step_muls[si] };

			check_frame_ecsq(&c, (ti + si) % 3 == 1);
		}
		static const struct frame_cfg big[] = {
			{ 40, 2, 128, 0, 40, 1, SHADOW_SCALE_STD, 0 },
			{ 9, 1, 384, 0, 4, 384, SHADOW_SCALE_STD, 0 },
			{ 11, 5, 96, 0, 3, 48, SHADOW_SCALE_STD, 0 },
		};

		for (size_t i = 0; i < SHADOW_ARRAY_SIZE(big); i++) {
			struct frame_cfg c = big[i];

			c.step_mul = step_muls[si];
			check_frame_ecsq(&c, i == 1);
		}
	}
}

/* sqrt by Newton's method (the test links no libm), for v > 0. */
static double test_sqrt(double v)
{
	double r = v > 1 ? v : 1;

	for (int i = 0; i < 200; i++)
		r = 0.5 * (r + v / r);
	return r;
}

/* Exact ECSQ cases: zigzag codes, ties, clamping, std 0, non-finite, extreme parameters. */
static void test_ecsq_exact(void **state)
{
	(void)state;
	/*
	 * One group (whole frame) with mean exactly 0; step_mul = 1 / std makes the step 1 within
	 * float rounding, so the scale is exactly 1 and each symbol is x rounded to even.
	 */
	enum { N = 15 };
	static const float x[N] = { 0, -1, 1, -2, 2, 32767, -32767, 2.5f, -2.5f, 1.5f, -1.5f,
				    0.25f, -0.25f, 100.75f, -100.75f };
	static const uint16_t want_u[N] = { 0, 1, 2, 3, 4, 65534, 65533, 4, 3, 4, 3, 0, 0, 202,
					    201 };
	double sq = 0;
	uint8_t lo[N], hi[N];
	uint16_t par[2];

	for (int i = 0; i < N; i++)
		sq += (double)x[i] * x[i];
	struct shadow__quant_params p = {
		.n_tokens = 1, .n_heads = 1, .head_dim = N, .bits = 0, .group_tokens = 1,
		.group_channels = N, .scale_rule = SHADOW_SCALE_STD,
		.step_mul = (float)(1.0 / test_sqrt(sq / N)),
	};

	assert_int_equal(shadow__quant_n_groups(&(struct shadow__quant_params){
				 .n_tokens = 1, .n_heads = 1, .head_dim = N, .bits = 8,
				 .group_tokens = 1, .group_channels = N,
				 .scale_rule = SHADOW_SCALE_STD, .step_mul = 1 }),
			 1);
	assert_int_equal(shadow__quantize_frame_ecsq(&p, x, lo, hi, par), 0);
	assert_int_equal(par[0], 0x3f80); /* scale 1 */
	assert_int_equal(par[1], 0x0000); /* bias 0 */
	for (int i = 0; i < N; i++) {
		uint16_t u = (uint16_t)(lo[i] | hi[i] << 8);

		if (u != want_u[i]) {
			print_error("x %g: code %u, want %u\n", x[i], u, want_u[i]);
			fail();
		}
	}

	/*
	 * Clamping: 62 small values and +-1e30 in a group of 64, step_mul 1e-4: the outliers are
	 * 5.7 std from the mean, 56568 steps, and clamp to +-32767 (codes 65534, 65533).
	 */
	float y[64];

	for (int i = 0; i < 64; i++)
		y[i] = rnd_uniform(-1.0f, 1.0f);
	y[10] = 1e30f;
	y[40] = -1e30f;
	p.head_dim = p.group_channels = 64;
	p.step_mul = 1e-4f;
	uint8_t lo64[64], hi64[64];
	uint16_t par64[2];

	assert_int_equal(shadow__quantize_frame_ecsq(&p, y, lo64, hi64, par64), 0);
	assert_int_equal(lo64[10] | hi64[10] << 8, 65534);
	assert_int_equal(lo64[40] | hi64[40] << 8, 65533);
	assert_true(shadow__bf16_to_float(par64[0]) > 1e24f);
	for (int i = 0; i < 64; i++)
		if (i != 10 && i != 40) /* the small ones: near the mean, a step of ~1.8e25 */
			assert_int_equal(lo64[i] | hi64[i] << 8, 0);

	/* std 0: scale 0, bias the mean in bf16, codes 0; also with non-finite companions. */
	float c[4] = { 0.1f, 0.1f, 0.1f, 0.1f };
	uint8_t lo4[4], hi4[4];
	uint16_t par4[2];

	p.head_dim = p.group_channels = 4;
	p.step_mul = 0.5f;
	memset(lo4, 0xff, 4);
	memset(hi4, 0xff, 4);
	assert_int_equal(shadow__quantize_frame_ecsq(&p, c, lo4, hi4, par4), 0);
	assert_int_equal(par4[0], 0);
	assert_int_equal(par4[1], shadow__float_to_bf16(0.1f));
	assert_memory_equal(lo4, ((uint8_t[4]){ 0 }), 4);
	assert_memory_equal(hi4, ((uint8_t[4]){ 0 }), 4);
	c[1] = f32(0x7fc00000u);
	c[2] = -__builtin_inff();
	assert_int_equal(shadow__quantize_frame_ecsq(&p, c, lo4, hi4, par4), 0);
	assert_int_equal(par4[0], 0);
	assert_int_equal(par4[1], shadow__float_to_bf16(0.1f));
	assert_memory_equal(lo4, ((uint8_t[4]){ 0 }), 4);
	assert_memory_equal(hi4, ((uint8_t[4]){ 0 }), 4);

	/* Nothing finite: scale 0, bias 0, codes 0. */
	float nf[4] = { __builtin_inff(), -__builtin_inff(), f32(0x7fc00000u), f32(0xffc00001u) };

	memset(lo4, 0xff, 4);
	assert_int_equal(shadow__quantize_frame_ecsq(&p, nf, lo4, hi4, par4), 0);
	assert_int_equal(par4[0], 0);
	assert_int_equal(par4[1], 0);
	assert_memory_equal(lo4, ((uint8_t[4]){ 0 }), 4);

	/* A spread below bf16's range: scale the smallest positive bf16, not 0. */
	float tiny[4] = { 0, 0x1p-140f, 0, 0x1p-140f };

	assert_int_equal(shadow__quantize_frame_ecsq(&p, tiny, lo4, hi4, par4), 0);
	assert_int_equal(par4[0], 0x0001); /* 2^-133 */
	assert_int_equal(lo4[0] | lo4[1] | lo4[2] | lo4[3] | hi4[0] | hi4[1] | hi4[2] | hi4[3], 0);

	/*
	 * The mean rounds once, to the nearest bf16: 1 + 2^-8 + 2^-24 is just above the half-way
	 * point of bf16 1 and 1 + 2^-7, but in float it is that point (a tie to even, to 1).
	 */
	float mid[4] = { 1.00390625f, f32(0x3f808001u), 1.00390625f, f32(0x3f808001u) };

	assert_int_equal(shadow__quantize_frame_ecsq(&p, mid, lo4, hi4, par4), 0);
	assert_int_equal(par4[1], 0x3f81);
	assert_int_equal(par4[0], shadow__float_to_bf16(0x1p-25f)); /* 0.5 * std 2^-24 */

	/* Huge range: parameters clamp to finite bf16, the symbols stay in range, no UB. */
	float hg[4] = { -3.4e38f, 3.4e38f, 3.4e38f, 1.0f };

	p.step_mul = 1000.0f;
	assert_int_equal(shadow__quantize_frame_ecsq(&p, hg, lo4, hi4, par4), 0);
	assert_int_equal(par4[0], 0x7f7f);
	assert_true((par4[1] & 0x7f80u) != 0x7f80u);
	for (int i = 0; i < 4; i++) {
		float dec = (float)zz_ref((uint32_t)(lo4[i] | hi4[i] << 8)) *
				    shadow__bf16_to_float(par4[0]) + shadow__bf16_to_float(par4[1]);

		assert_true(dec - dec == 0); /* the nearest point, never one that overflows */
	}
}

/* Exact cases of the parameter rounding. */
static void test_quant_exact(void **state)
{
	(void)state;
	/* One value group of 4: min 1.0 (a bf16), max 4.0, 2 bits: scale exactly 1. */
	struct shadow__quant_params p = {
		.n_tokens = 1, .n_heads = 1, .head_dim = 4, .bits = 2,
		.group_tokens = 1, .group_channels = 4,
		.scale_rule = SHADOW_SCALE_MINMAX,
	};
	float x[4] = { 1.0f, 2.6f, 2.5f, 4.0f };
	uint8_t q[4];
	uint16_t par[2];

	assert_int_equal(shadow__quant_n_groups(&p), 1);
	assert_int_equal(shadow__quantize_frame(&p, x, q, par), 0);
	assert_int_equal(par[0], 0x3f80); /* scale 1 */
	assert_int_equal(par[1], 0x3f80); /* bias 1 */
	assert_int_equal(q[0], 0);
	assert_int_equal(q[1], 2); /* 1.6 -> 2 */
	assert_int_equal(q[2], 2); /* 1.5 -> tie -> even 2 */
	assert_int_equal(q[3], 3);

	/* The same group as a 2 x 2 tile (2 tokens x 2 channels): the same symbols. */
	struct shadow__quant_params p2 = p;

	p2.n_tokens = 2;
	p2.head_dim = 2;
	p2.group_tokens = 2;
	p2.group_channels = 2;
	memset(q, 0xff, sizeof(q));
	assert_int_equal(shadow__quant_n_groups(&p2), 1);
	assert_int_equal(shadow__quantize_frame(&p2, x, q, par), 0);
	assert_int_equal(par[0], 0x3f80);
	assert_int_equal(par[1], 0x3f80);
	assert_memory_equal(q, ((uint8_t[4]){ 0, 2, 2, 3 }), 4);

	/* Constant group of a bf16 value: scale 0, bias the value, symbols 0. */
	float c[4] = { -3.5f, -3.5f, -3.5f, -3.5f };

	assert_int_equal(shadow__quantize_frame(&p, c, q, par), 0);
	assert_int_equal(par[0], 0);
	assert_int_equal(par[1], shadow__float_to_bf16(-3.5f));
	assert_memory_equal(q, ((uint8_t[4]){ 0 }), 4);

	/* STD: values -1, -1, 1, 1: mean 0, std 1; step_mul 0.5 -> step 0.5, bias -2 * 0.5. */
	float s[4] = { -1.0f, -1.0f, 1.0f, 1.0f };

	p.scale_rule = SHADOW_SCALE_STD;
	p.step_mul = 0.5f;
	assert_int_equal(shadow__quantize_frame(&p, s, q, par), 0);
	assert_int_equal(par[0], shadow__float_to_bf16(0.5f));
	assert_int_equal(par[1], shadow__float_to_bf16(-1.0f));
	assert_int_equal(q[0], 0);
	assert_int_equal(q[2], 3); /* (1 - -1) / 0.5 = 4, clipped to 3 */

	/* STD with std 0: scale 0, bias the mean. */
	assert_int_equal(shadow__quantize_frame(&p, c, q, par), 0);
	assert_int_equal(par[0], 0);
	assert_int_equal(par[1], shadow__float_to_bf16(-3.5f));

	/* All non-finite: scale 0, bias 0, symbols 0. */
	float nf[4] = { __builtin_inff(), -__builtin_inff(), f32(0x7fc00000u), f32(0xffc00001u) };

	p.scale_rule = SHADOW_SCALE_MINMAX;
	memset(q, 0xff, sizeof(q));
	assert_int_equal(shadow__quantize_frame(&p, nf, q, par), 0);
	assert_int_equal(par[0], 0);
	assert_int_equal(par[1], 0);
	assert_memory_equal(q, ((uint8_t[4]){ 0 }), 4);

	/* Huge range: parameters clamp to finite bf16, no UB. */
	float hg[4] = { -3.4e38f, 3.4e38f, 0.0f, 1.0f };

	assert_int_equal(shadow__quantize_frame(&p, hg, q, par), 0);
	assert_true((par[0] & 0x7f80u) != 0x7f80u);
	assert_true((par[1] & 0x7f80u) != 0x7f80u);
	for (int i = 0; i < 4; i++)
		assert_true(q[i] <= 3);
}

static void test_bad_params(void **state)
{
	(void)state;
	const struct shadow__quant_params good = {
		.n_tokens = 8, .n_heads = 2, .head_dim = 16, .bits = 4,
		.group_tokens = 4, .group_channels = 1,
		.scale_rule = SHADOW_SCALE_STD, .step_mul = 0.5f,
	};
	float x[8 * 2 * 16] = { 0 };
	uint8_t q[8 * 2 * 16], hi[8 * 2 * 16];
	uint16_t par[2 * 8 * 2 * 16];
	struct shadow__quant_params p;

	assert_int_equal(shadow__quant_n_groups(&good), 2 * 32);
	assert_int_equal(shadow__quantize_frame(&good, x, q, par), 0);
	assert_int_equal(shadow__quantize_frame_ecsq(&good, x, q, hi, par), 0);
	p = good;
	p.group_tokens = 1;
	p.group_channels = 8;
	assert_int_equal(shadow__quant_n_groups(&p), 8 * 2 * 2); /* values */
	p.group_tokens = 8;
	p.group_channels = 16;
	assert_int_equal(shadow__quant_n_groups(&p), 2); /* whole head-frame */
	p.group_tokens = 3;
	p.group_channels = 4;
	assert_int_equal(shadow__quant_n_groups(&p), 3 * 2 * 4); /* ceil(8 / 3) token groups */
	p.group_tokens = 1;
	p.group_channels = 1;
	assert_int_equal(shadow__quant_n_groups(&p), 8 * 2 * 16); /* one element each */

	struct shadow__quant_params bad[20];
	int nb = 0;

#define BAD(field, value)            \
	do {                         \
		bad[nb] = good;      \
		bad[nb].field = value; \
		nb++;                \
	} while (0)
	BAD(n_tokens, 0);
	BAD(n_heads, 0);
	BAD(head_dim, 0);
	BAD(group_tokens, 0);
	BAD(group_tokens, 9);
	BAD(group_channels, 0);
	BAD(group_channels, 5);  /* does not divide head_dim */
	BAD(group_channels, 32); /* wider than a head */
	BAD(scale_rule, 2);
	BAD(step_mul, 0.0f);
	BAD(step_mul, -1.0f);
	BAD(step_mul, __builtin_inff());
	BAD(step_mul, f32(0x7fc00000u));
	BAD(n_tokens, UINT32_MAX); /* group_tokens fine, but... */
	bad[nb - 1].group_tokens = UINT32_MAX;
	bad[nb - 1].n_heads = UINT32_MAX;
	bad[nb - 1].head_dim = UINT32_MAX; /* 2^96 elements */
	int nb_common = nb;

	BAD(bits, 1); /* uniform only: ECSQ ignores bits */
	BAD(bits, 9);
#undef BAD
	for (int i = 0; i < nb; i++) {
		assert_int_equal(shadow__quant_n_groups(&bad[i]), 0);
		assert_int_equal(shadow__quantize_frame(&bad[i], x, q, par), -EINVAL);
		assert_int_equal(shadow__quantize_frame_ecsq(&bad[i], x, q, hi, par),
				 i < nb_common ? -EINVAL : 0);
	}
	/* MINMAX ignores step_mul; ECSQ refuses MINMAX. */
	p = good;
	p.scale_rule = SHADOW_SCALE_MINMAX;
	p.step_mul = -1.0f;
	assert_int_equal(shadow__quantize_frame(&p, x, q, par), 0);
	assert_int_equal(shadow__quantize_frame_ecsq(&p, x, q, hi, par), -EINVAL);
	p.step_mul = 0.5f;
	assert_int_equal(shadow__quantize_frame_ecsq(&p, x, q, hi, par), -EINVAL);
	/* ECSQ ignores bits. */
	p = good;
	p.bits = 0;
	assert_int_equal(shadow__quantize_frame_ecsq(&p, x, q, hi, par), 0);
	assert_int_equal(shadow__quant_n_groups(NULL), 0);
	assert_int_equal(shadow__quantize_frame(NULL, x, q, par), -EINVAL);
	assert_int_equal(shadow__quantize_frame_ecsq(NULL, x, q, hi, par), -EINVAL);
}

/* ---- (e) conversions ---- */

static void test_bf16(void **state)
{
	(void)state;
	assert_int_equal(shadow__float_to_bf16(1.0f), 0x3f80);
	assert_int_equal(shadow__float_to_bf16(-2.0f), 0xc000);
	assert_int_equal(shadow__float_to_bf16(f32(0x3f808000u)), 0x3f80); /* tie, even down */
	assert_int_equal(shadow__float_to_bf16(f32(0x3f818000u)), 0x3f82); /* tie, even up */
	assert_int_equal(shadow__float_to_bf16(f32(0x3f808001u)), 0x3f81);
	assert_int_equal(shadow__float_to_bf16(f32(0x3f807fffu)), 0x3f80);
	assert_int_equal(shadow__float_to_bf16(f32(0x7f7fffffu)), 0x7f80); /* FLT_MAX -> inf */
	assert_int_equal(shadow__float_to_bf16(__builtin_inff()), 0x7f80);
	assert_int_equal(shadow__float_to_bf16(-0.0f), 0x8000);
	assert_int_equal(shadow__float_to_bf16(f32(0x00010000u)), 0x0001); /* subnormal */
	assert_int_equal(shadow__float_to_bf16(f32(0x00008000u)), 0x0000); /* tie to even 0 */
	assert_int_equal(shadow__float_to_bf16(f32(0x7fc00000u)), 0x7fc0);
	assert_int_equal(shadow__float_to_bf16(f32(0x7f800001u)), 0x7fc0); /* sNaN made quiet */
	assert_int_equal(shadow__float_to_bf16(f32(0xff812345u)), 0xffc1);
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = shadow__bf16_to_float((uint16_t)h);

		if (f == f)
			assert_int_equal(shadow__float_to_bf16(f), h);
	}
}

static void test_fp16(void **state)
{
	(void)state;
	static const struct {
		uint32_t f;
		uint16_t h;
	} cases[] = {
		{ 0x3f800000u, 0x3c00 }, /* 1 */
		{ 0xc0000000u, 0xc000 }, /* -2 */
		{ 0xc0200000u, 0xc100 }, /* -2.5 */
		{ 0x3dcccccdu, 0x2e66 }, /* 0.1 */
		{ 0x3eaaaaabu, 0x3555 }, /* 1/3 */
		{ 0x477fe000u, 0x7bff }, /* 65504 */
		{ 0x477fefffu, 0x7bff }, /* just below 65520 */
		{ 0x477ff000u, 0x7c00 }, /* 65520: tie, to even = overflow */
		{ 0x7f7fffffu, 0x7c00 }, /* FLT_MAX */
		{ 0x7f800000u, 0x7c00 }, /* inf */
		{ 0xff800000u, 0xfc00 }, /* -inf */
		{ 0x00000000u, 0x0000 },
		{ 0x80000000u, 0x8000 }, /* -0 */
		{ 0x38800000u, 0x0400 }, /* 2^-14, smallest normal */
		{ 0x387fc000u, 0x03ff }, /* largest subnormal */
		{ 0x33800000u, 0x0001 }, /* 2^-24, smallest subnormal */
		{ 0x33000000u, 0x0000 }, /* 2^-25: tie, to even 0 */
		{ 0x33000001u, 0x0001 }, /* just above 2^-25 */
		{ 0x33c00000u, 0x0002 }, /* 1.5 * 2^-24: tie, to even 2 */
		{ 0x34200000u, 0x0002 }, /* 2.5 * 2^-24: tie, to even 2 */
		{ 0x3f801000u, 0x3c00 }, /* 1 + 2^-11: tie, to even */
		{ 0x3f803000u, 0x3c02 }, /* 1 + 3 * 2^-11: tie, to even */
		{ 0x3f801001u, 0x3c01 },
		{ 0x387ff000u, 0x0400 }, /* rounds up from subnormal into the normal range */
		{ 0x00000001u, 0x0000 }, /* float subnormal */
		{ 0x80000001u, 0x8000 },
		{ 0x7fc00000u, 0x7e00 }, /* qNaN */
		{ 0x7f800001u, 0x7e00 }, /* sNaN made quiet */
		{ 0xffc00000u, 0xfe00 },
		{ 0x7fd56000u, 0x7eab }, /* payload's top bits kept */
	};

	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(cases); i++) {
		uint16_t h = shadow__float_to_fp16(f32(cases[i].f));

		if (h != cases[i].h) {
			print_error("fp16 of %08x: %04x, want %04x\n", cases[i].f, h, cases[i].h);
			fail();
		}
	}
	assert_true(shadow__fp16_to_float(0x3c00) == 1.0f);
	assert_true(shadow__fp16_to_float(0x7bff) == 65504.0f);
	assert_true(shadow__fp16_to_float(0x0001) == 0x1p-24f);
	assert_true(shadow__fp16_to_float(0x03ff) == 1023 * 0x1p-24f);
	assert_true(shadow__fp16_to_float(0x0400) == 0x1p-14f);
	assert_int_equal(u32(shadow__fp16_to_float(0x8000)), 0x80000000u);
	assert_int_equal(u32(shadow__fp16_to_float(0x8001)), u32(-0x1p-24f));
	assert_int_equal(u32(shadow__fp16_to_float(0x7c00)), 0x7f800000u);
	assert_int_equal(u32(shadow__fp16_to_float(0xfc00)), 0xff800000u);
	assert_int_equal(u32(shadow__fp16_to_float(0x7e00)), 0x7fc00000u);
	/* Every fp16 survives the round trip; NaNs stay NaN with their sign and quiet. */
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = shadow__fp16_to_float((uint16_t)h);
		uint16_t back = shadow__float_to_fp16(f);

		if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) {
			assert_int_equal(back, h | 0x200u);
			assert_true(f != f);
		} else {
			assert_int_equal(back, h);
		}
	}
}

/* ---- (f) packing ---- */

static void test_pack(void **state)
{
	(void)state;
	uint8_t packed[64], q[64];

	assert_int_equal(shadow__pack_bits((uint8_t[]){ 1, 2, 3, 4, 5, 6, 7, 0 }, 8, 3, packed), 3);
	assert_memory_equal(packed, ((uint8_t[]){ 0xd1, 0x58, 0x1f }), 3);
	assert_int_equal(shadow__pack_bits((uint8_t[]){ 3, 1, 2, 0, 1 }, 5, 2, packed), 2);
	assert_memory_equal(packed, ((uint8_t[]){ 0x27, 0x01 }), 2);
	/* Only the low bits count. */
	assert_int_equal(shadow__pack_bits((uint8_t[]){ 0xff, 0xea, 0x15 }, 3, 5, packed), 2);
	assert_memory_equal(packed, ((uint8_t[]){ 0x5f, 0x55 }), 2);
	assert_int_equal(shadow__pack_bits((uint8_t[]){ 9, 8 }, 2, 8, packed), 2);
	assert_memory_equal(packed, ((uint8_t[]){ 9, 8 }), 2);
	assert_int_equal(shadow__pack_bits(q, 0, 4, packed), 0);
	assert_int_equal(shadow__pack_bits(q, 8, 1, packed), 0);
	assert_int_equal(shadow__pack_bits(q, 8, 9, packed), 0);
	assert_int_equal(shadow__pack_bits(q, 8, 0, packed), 0);

	/* Round trip through the chosen kernels, with n 0..64. */
	const struct shadow__dequant_kernels *k = shadow__dequant_kernels();

	for (unsigned bits = 2; bits <= 8; bits++) {
		for (size_t n = 0; n <= 64; n++) {
			uint8_t sym[64], back[64];

			for (size_t i = 0; i < n; i++)
				sym[i] = (uint8_t)rnd();
			size_t pn = shadow__pack_bits(sym, n, bits, packed);

			assert_int_equal(pn, (n * bits + 7) / 8);
			k->unpack_bits(packed, bits, back, n);
			for (size_t i = 0; i < n; i++)
				assert_int_equal(back[i], sym[i] & ((1u << bits) - 1u));
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_variants_rows, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_variants_tame, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_variants_rows_vec, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_variants_convert, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_variants_zz_codes, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_variants_merge, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_variants_unpack, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_dispatch, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_roundtrip, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_ecsq_roundtrip, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_ecsq_exact, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_quant_exact, reset_all, reset_all),
		cmocka_unit_test_setup_teardown(test_bad_params, reset_all, reset_all),
		cmocka_unit_test(test_bf16),
		cmocka_unit_test(test_fp16),
		cmocka_unit_test_setup_teardown(test_pack, reset_all, reset_all),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
