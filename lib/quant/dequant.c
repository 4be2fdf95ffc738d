/*
 * dequant.c - the scalar decode kernels (the reference every variant must match), the fp16
 * conversions, and the choice of kernels for this CPU (quant.h, DESIGN).
 *
 * The choice is cached in one atomic pointer. Two threads racing on the first call compute the
 * same answer; the tables it points at are constant data, so nothing else is published and a
 * relaxed load is enough (as in core/cpu.c).
 */
#include <stdatomic.h>

#include "core/cpu.h"
#include "core/log.h"
#include "quant/quant.h"

#define DQ_SUFFIX scalar
#define DQ_ISA "scalar"
#define DQ_ATTR
#include "quant/dequant_template.h"

uint16_t shadow__float_to_fp16(float f)
{
	return dq_float_to_fp16(f);
}

float shadow__fp16_to_float(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
	float f;

	if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float */
		f = (float)m * 0x1p-24f;
		return sign ? -f : f;
	}
	if (e == 31) /* infinity or NaN, payload kept */
		u = sign | 0x7f800000u | (m << 13);
	else
		u = sign | ((e + 112u) << 23) | (m << 13);
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* The variants, slowest first, and the features each one's target attribute names. */
static const struct shadow__dequant_kernels *const shadow_dequant_all[] = {
	&shadow__dequant_scalar,
#if defined(__x86_64__)
	&shadow__dequant_avx2,
	&shadow__dequant_avx512,
#elif defined(__aarch64__)
	&shadow__dequant_neon,
#endif
};

static const uint32_t shadow_dequant_needs[] = {
	0,
#if defined(__x86_64__)
	SHADOW_CPU_AVX2 | SHADOW_CPU_F16C,
	SHADOW_CPU_AVX2 | SHADOW_CPU_F16C | SHADOW_CPU_AVX512,
#elif defined(__aarch64__)
	SHADOW_CPU_NEON,
#endif
};

SHADOW_STATIC_ASSERT(SHADOW_ARRAY_SIZE(shadow_dequant_all) == SHADOW_ARRAY_SIZE(shadow_dequant_needs),
		     "one feature set per variant");

/* Variants that are exact only for tame parameters (quant.h), slowest first. */
#if defined(__x86_64__)
static const struct shadow__dequant_kernels *const shadow_dequant_tame_only[] = {
	&shadow__dequant_avx512bf16,
};
static const uint32_t shadow_dequant_tame_needs[] = {
	SHADOW_CPU_AVX2 | SHADOW_CPU_F16C | SHADOW_CPU_AVX512 | SHADOW_CPU_AVX512BF16,
};
#define SHADOW_DQ_N_TAME SHADOW_ARRAY_SIZE(shadow_dequant_tame_only)
#else
#define SHADOW_DQ_N_TAME 0
#endif

/* Append the runnable ones of variants[0 .. n) to out[*m ..), up to max. */
static size_t dequant_append(const struct shadow__dequant_kernels *const *variants,
			     const uint32_t *needs, size_t n, const struct shadow__dequant_kernels **out,
			     size_t max, size_t m)
{
	size_t idx[SHADOW_ARRAY_SIZE(shadow_dequant_all)];
	size_t k = shadow__cpu_runnable(needs, n, idx);

	for (size_t i = 0; i < k; i++, m++)
		if (m < max)
			out[m] = variants[idx[i]];
	return m;
}

size_t shadow__dequant_variants(const struct shadow__dequant_kernels **out, size_t max)
{
	return dequant_append(shadow_dequant_all, shadow_dequant_needs,
			      SHADOW_ARRAY_SIZE(shadow_dequant_all), out, max, 0);
}

size_t shadow__dequant_tame_variants(const struct shadow__dequant_kernels **out, size_t max)
{
	size_t m = shadow__dequant_variants(out, max);
#if defined(__x86_64__)
	m = dequant_append(shadow_dequant_tame_only, shadow_dequant_tame_needs, SHADOW_DQ_N_TAME, out,
			   max, m);
#endif
	return m;
}

static _Atomic(const struct shadow__dequant_kernels *) shadow_dequant_chosen;

const struct shadow__dequant_kernels *shadow__dequant_kernels(void)
{
	/* relaxed: see the header comment. */
	const struct shadow__dequant_kernels *k =
		atomic_load_explicit(&shadow_dequant_chosen, memory_order_relaxed);
	const struct shadow__dequant_kernels *v[4];

	if (shadow_likely(k != NULL))
		return k;
	/* The variants are listed slowest first: take the last. */
	k = v[shadow__dequant_variants(v, SHADOW_ARRAY_SIZE(v)) - 1];
	atomic_store_explicit(&shadow_dequant_chosen, k, memory_order_relaxed);
	SHADOW_LOGD("dequant kernels: %s", k->isa);
	return k;
}

static _Atomic(const struct shadow__dequant_kernels *) shadow_dequant_tame_chosen;

const struct shadow__dequant_kernels *shadow__dequant_kernels_tame(void)
{
	/* relaxed: as shadow__dequant_kernels(). */
	const struct shadow__dequant_kernels *k =
		atomic_load_explicit(&shadow_dequant_tame_chosen, memory_order_relaxed);
	const struct shadow__dequant_kernels *v[SHADOW_ARRAY_SIZE(shadow_dequant_all) +
						  SHADOW_DQ_N_TAME];

	if (shadow_likely(k != NULL))
		return k;
	k = v[shadow__dequant_tame_variants(v, SHADOW_ARRAY_SIZE(v)) - 1];
	atomic_store_explicit(&shadow_dequant_tame_chosen, k, memory_order_relaxed);
	SHADOW_LOGD("dequant kernels for tame parameters: %s", k->isa);
	return k;
}

#if defined(SHADOW_TESTING)
void shadow__dequant_reset_for_testing(void)
{
	atomic_store_explicit(&shadow_dequant_chosen, NULL, memory_order_relaxed);
	atomic_store_explicit(&shadow_dequant_tame_chosen, NULL, memory_order_relaxed);
}
#endif
