/*
 * bench_kernels - single-core throughput of the decode kernels and the frame checksum, each
 * against memcpy of the same output bytes measured in the same run.
 *
 *   bench_kernels [--csv PATH] [--min-time SEC]
 *
 * For every kernel variant this CPU runs (and, for the uniform and ECSQ kernels, the variants
 * valid for tame parameters), it decodes a 64 Ki-element frame as the codec does for a
 * minillama-h128 frame: rows of 128 elements, or the whole frame per call (rows_vec,
 * rows_scalar: what the codec uses for token-major uniform frames), bf16 output. Parameters are ordinary (tame) KV
 * scales. The PCA row kernel runs with half of the coefficients zero. The checksum is XXH3-64
 * of 64 KiB through the baseline build of libxxhash and through its x86 dispatch. Inputs are
 * L1/L2-resident, as in the data plane where a frame is decoded right after it arrives.
 * Figures: GB/s of output (bf16 bytes) per core, best of the passes run in --min-time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#undef XXH3_64bits /* keep both names callable below */
#endif

#include "bench_util.h"
#include "core/cpu.h"
#include "quant/pca.h"
#include "quant/quant.h"

#define N_ELEMS 65536u
#define ROW 128u
#define MAX_VARIANTS 8

static double min_time = 0.3;
static FILE *csv;
static volatile uint64_t sink;

struct data {
	uint8_t q[N_ELEMS], hi[N_ELEMS];
	float scale[N_ELEMS], bias[N_ELEMS];
	float mean[ROW], basis[ROW * ROW];
	uint16_t out[N_ELEMS];
	uint16_t src[N_ELEMS];
	uint8_t param_bf16[4 * N_ELEMS / ROW]; /* scale then bias of each row, little-endian */
};

/* Best GB/s of `out_nbytes` per call of fn over passes filling min_time. */
static double best_gbps(void (*fn)(void *ctx), void *ctx, double out_nbytes)
{
	double best = 0;
	uint64_t start = bench_now_ns();

	do {
		uint64_t t0 = bench_now_ns();
		for (int i = 0; i < 16; i++)
			fn(ctx);
		double s = bench_seconds(t0, bench_now_ns()) / 16;
		if (s > 0 && out_nbytes / s / 1e9 > best)
			best = out_nbytes / s / 1e9;
	} while (bench_seconds(start, bench_now_ns()) < min_time);
	return best;
}

struct run {
	struct data *d;
	const struct shadow__dequant_kernels *k;
	const struct shadow__pca_kernel *pk;
	int kernel;
};

static void run_memcpy(void *ctx)
{
	struct run *r = ctx;
	memcpy(r->d->out, r->d->src, sizeof(r->d->out));
	sink += r->d->out[N_ELEMS / 2];
}

static void run_rows(void *ctx)
{
	struct run *r = ctx;
	struct data *d = r->d;

	if (r->kernel == 4) { /* whole frame: 256 tokens x 2 heads, one key token group */
		r->k->rows_vec(d->q, d->scale, d->bias, d->out, N_ELEMS / (2 * ROW), 2 * ROW,
			       SHADOW_OUT_BF16);
		sink += d->out[N_ELEMS / 2];
		return;
	}
	if (r->kernel == 5) { /* whole frame of per-row value groups, bf16 parameters */
		r->k->rows_scalar(d->q, d->param_bf16, d->param_bf16 + N_ELEMS / ROW * 2, d->out,
				  N_ELEMS / ROW, ROW, SHADOW_OUT_BF16);
		sink += d->out[N_ELEMS / 2];
		return;
	}
	for (size_t i = 0; i < N_ELEMS; i += ROW) {
		size_t p = i % (2 * ROW); /* per-channel parameters of a 2-head token */
		switch (r->kernel) {
		case 0:
			r->k->row_vec(d->q + i, d->scale + p, d->bias + p, d->out + i, ROW,
				      SHADOW_OUT_BF16);
			break;
		case 1:
			r->k->row_scalar(d->q + i, d->scale[i / ROW], d->bias[i / ROW], d->out + i, ROW,
					 SHADOW_OUT_BF16);
			break;
		case 2:
			r->k->row_vec_zz(d->q + i, d->hi + i, d->scale + p, d->bias + p, d->out + i,
					 ROW, SHADOW_OUT_BF16);
			break;
		default:
			r->k->row_scalar_zz(d->q + i, d->hi + i, d->scale[i / ROW], d->bias[i / ROW],
					    d->out + i, ROW, SHADOW_OUT_BF16);
			break;
		}
	}
	sink += d->out[N_ELEMS / 2];
}

static void run_pca(void *ctx)
{
	struct run *r = ctx;
	struct data *d = r->d;

	for (size_t i = 0; i < N_ELEMS; i += ROW)
		r->pk->row(d->q + i, d->hi + i, 0.05f, d->mean, d->basis, d->out + i, ROW,
			   SHADOW_OUT_BF16);
	sink += d->out[N_ELEMS / 2];
}

static void run_xxh(void *ctx)
{
	struct run *r = ctx;
	sink += XXH3_64bits(r->d->q, N_ELEMS);
}

#if defined(__x86_64__)
static void run_xxh_dispatch(void *ctx)
{
	struct run *r = ctx;
	sink += XXH3_64bits_dispatch(r->d->q, N_ELEMS);
}
#endif

static void report(const char *what, const char *isa, double gbps, double memcpy_gbps)
{
	printf("%-26s %-12s %8.2f GB/s  %5.2fx memcpy\n", what, isa, gbps, gbps / memcpy_gbps);
	if (csv != NULL)
		fprintf(csv, "%s,%s,%.4f,%.4f\n", what, isa, gbps, memcpy_gbps);
}

int main(int argc, char **argv)
{
	const char *csv_path = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--csv") == 0 && i + 1 < argc) {
			csv_path = argv[++i];
		} else if (strcmp(argv[i], "--min-time") == 0 && i + 1 < argc) {
			min_time = strtod(argv[++i], NULL);
		} else {
			fprintf(stderr, "usage: %s [--csv PATH] [--min-time SEC]\n", argv[0]);
			return 2;
		}
	}
	struct data *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return 1;
	if (csv_path != NULL && (csv = fopen(csv_path, "w")) == NULL) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], csv_path, strerror(errno));
		return 1;
	}
	if (csv != NULL)
		fprintf(csv, "kernel,isa,gbps,memcpy_gbps\n");

	/* Symbols like an 8-bit frame's; ECSQ codes mostly small (high byte 0 or 1); every
	 * other PCA coefficient zero; tame parameters of real KV magnitudes. */
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < N_ELEMS; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		d->q[i] = (uint8_t)(x >> 33);
		d->hi[i] = (uint8_t)((x >> 60) == 0);
		d->scale[i] = shadow__bf16_to_float(shadow__float_to_bf16(0.01f + (float)(x >> 40 & 255) * 1e-4f));
		d->bias[i] = shadow__bf16_to_float(shadow__float_to_bf16(-1.5f + (float)(x >> 48 & 255) * 1e-3f));
		d->src[i] = (uint16_t)x;
		if (i % 2 == 0) /* zigzag code 0: a zero coefficient */
			d->q[i] = d->hi[i] = 0;
	}
	for (size_t r = 0; r < 2 * N_ELEMS / ROW; r++) {
		uint16_t h = shadow__float_to_bf16(r < N_ELEMS / ROW ? d->scale[r] : d->bias[r]);
		d->param_bf16[2 * r] = (uint8_t)h;
		d->param_bf16[2 * r + 1] = (uint8_t)(h >> 8);
	}
	for (size_t i = 0; i < ROW * ROW; i++)
		d->basis[i] = (float)((int)(i * 2654435761u % 2001) - 1000) * 1e-4f;

	char model[128];
	cpu_set_t saved;
	int cpu = -1;
	int pinned = bench_pin_current_cpu(&saved, &cpu) == 0;
	bench_cpu_model(model, sizeof(model));
	printf("bench_kernels: %s, %s; cpu features: %s\n", model,
	       pinned ? "one pinned core" : "not pinned",
	       shadow__cpu_features_string(shadow__cpu_features()));
	printf("frames of %u elements in rows of %u, bf16 out; GB/s of output\n\n", N_ELEMS, ROW);

	struct run r = { .d = d };
	double mc = best_gbps(run_memcpy, &r, sizeof(d->out));
	report("memcpy (reference)", "-", mc, mc);

	static const char *const names[] = { "row_vec (uniform K)", "row_scalar (uniform V)",
					     "row_vec_zz (ECSQ K)", "row_scalar_zz (ECSQ V)",
					     "rows_vec (K, whole frame)", "rows_scalar (V, frame)" };
	const struct shadow__dequant_kernels *v[MAX_VARIANTS];
	size_t nv = shadow__dequant_tame_variants(v, MAX_VARIANTS);
	for (int kernel = 0; kernel < 6; kernel++) {
		for (size_t i = 0; i < nv && i < MAX_VARIANTS; i++) {
			r.k = v[i];
			r.kernel = kernel;
			report(names[kernel], v[i]->isa, best_gbps(run_rows, &r, sizeof(d->out)), mc);
		}
	}
	const struct shadow__pca_kernel *pv[MAX_VARIANTS];
	size_t npv = shadow__pca_kernel_variants(pv, MAX_VARIANTS);
	for (size_t i = 0; i < npv && i < MAX_VARIANTS; i++) {
		r.pk = pv[i];
		report("pca row (50% zero coef)", pv[i]->isa, best_gbps(run_pca, &r, sizeof(d->out)),
		       mc);
	}
	/* The checksum reads the 64 KiB of symbols; its figure is per output byte (128 KiB) so
	 * that it adds to the kernels' time like-for-like. */
	report("xxh3 of 64 KiB symbols", "baseline", best_gbps(run_xxh, &r, sizeof(d->out)), mc);
#if defined(__x86_64__)
	report("xxh3 of 64 KiB symbols", "dispatch", best_gbps(run_xxh_dispatch, &r, sizeof(d->out)),
	       mc);
#endif
	if (pinned)
		bench_unpin(&saved);
	if (csv != NULL)
		fclose(csv);
	free(d);
	return 0;
}
