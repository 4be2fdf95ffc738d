/*
 * cpu.c - CPU feature detection (see cpu.h).
 *
 * x86: CPUID leaf 1 (SSE4.2, FMA, F16C, AVX, OSXSAVE) and leaf 7.0 (AVX2, BMI2, AVX-512F/BW/VL),
 * then XCR0 via xgetbv: bits 1-2 (XMM, YMM) must be set for any VEX/EVEX instruction and bits
 * 5-7 (opmask, ZMM0-15 upper halves, ZMM16-31) for AVX-512. A hypervisor or kernel can hide
 * AVX-512 state even on a CPU that has it, which is why CPUID alone is not enough.
 * arm64: Advanced SIMD (NEON) is mandatory in the AArch64 Linux ABI, so it is always set.
 *
 * The result is cached in one atomic word; bit 31 marks it valid. Two threads racing on the
 * first call both compute the same value, so no once-control is needed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/cpu.h"
#include "core/log.h"

#define SHADOW_CPU_VALID (1u << 31)

static _Atomic uint32_t shadow_cpu_cached;

#if defined(__x86_64__) || defined(__i386__)
static uint64_t shadow_xgetbv0(void)
{
	uint32_t lo, hi;

	/* xgetbv by opcode-name asm, so the file needs no -mxsave. */
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static uint32_t shadow_cpu_detect(void)
{
	unsigned int a, b, c, d;
	unsigned int max_leaf = __get_cpuid_max(0, NULL);
	uint32_t f = 0;
	uint64_t xcr0 = 0;
	bool avx_os = false, avx512_os = false;

	if (max_leaf < 1)
		return 0;
	__cpuid_count(1, 0, a, b, c, d);
	if (c & (1u << 20))
		f |= SHADOW_CPU_SSE42;
	if (c & (1u << 27)) { /* OSXSAVE: xgetbv is usable */
		xcr0 = shadow_xgetbv0();
		avx_os = (c & (1u << 28)) && (xcr0 & 0x6) == 0x6;
		avx512_os = avx_os && (xcr0 & 0xe0) == 0xe0;
	}
	if (avx_os && (c & (1u << 12)))
		f |= SHADOW_CPU_FMA;
	if (avx_os && (c & (1u << 29)))
		f |= SHADOW_CPU_F16C;
	if (max_leaf >= 7) {
		__cpuid_count(7, 0, a, b, c, d);
		if (b & (1u << 8))
			f |= SHADOW_CPU_BMI2;
		if (avx_os && (b & (1u << 5)))
			f |= SHADOW_CPU_AVX2;
		if (avx512_os && (b & (1u << 16))) {
			f |= SHADOW_CPU_AVX512F;
			if (b & (1u << 30))
				f |= SHADOW_CPU_AVX512BW;
			if (b & (1u << 31))
				f |= SHADOW_CPU_AVX512VL;
			__cpuid_count(7, 1, a, b, c, d);
			if (a & (1u << 5))
				f |= SHADOW_CPU_AVX512BF16;
		}
	}
	/* No AVX-512 kernel without the AVX2 level under it (cpu.h). */
	if (!(f & SHADOW_CPU_AVX2))
		f &= ~(SHADOW_CPU_AVX512 | SHADOW_CPU_AVX512BF16);
	return f;
}
#elif defined(__aarch64__)
static uint32_t shadow_cpu_detect(void)
{
	return SHADOW_CPU_NEON;
}
#else
static uint32_t shadow_cpu_detect(void)
{
	return 0;
}
#endif

#if defined(SHADOW_TESTING)
static uint32_t shadow_cpu_apply_force(uint32_t f)
{
	const char *isa = getenv("SHADOW_FORCE_ISA");

	if (isa == NULL || isa[0] == '\0')
		return f;
	if (strcmp(isa, "scalar") == 0)
		return 0;
	if (strcmp(isa, "avx2") == 0)
		return f & SHADOW_CPU_X86_AVX2_LEVEL;
	if (strcmp(isa, "avx512") == 0)
		return f & SHADOW_CPU_X86_AVX512_LEVEL;
	if (strcmp(isa, "neon") == 0)
		return f & SHADOW_CPU_NEON;
	SHADOW_LOGW("SHADOW_FORCE_ISA=%s is not scalar, avx2, avx512 or neon; ignored", isa);
	return f;
}

void shadow__cpu_features_reset_for_testing(void)
{
	atomic_store_explicit(&shadow_cpu_cached, 0, memory_order_relaxed);
}
#endif

uint32_t shadow__cpu_features(void)
{
	/* relaxed: the word is self-contained (value + valid bit); nothing else is published. */
	uint32_t f = atomic_load_explicit(&shadow_cpu_cached, memory_order_relaxed);

	if (shadow_likely(f & SHADOW_CPU_VALID))
		return f & ~SHADOW_CPU_VALID;
	f = shadow_cpu_detect();
#if defined(SHADOW_TESTING)
	f = shadow_cpu_apply_force(f);
#endif
	atomic_store_explicit(&shadow_cpu_cached, f | SHADOW_CPU_VALID, memory_order_relaxed);
	SHADOW_LOGD("cpu features: %s", shadow__cpu_features_string(f));
	return f;
}

static const struct {
	uint32_t flag;
	const char *name;
} shadow_cpu_names[] = {
	{ SHADOW_CPU_SSE42, "sse4.2" },	    { SHADOW_CPU_AVX2, "avx2" },
	{ SHADOW_CPU_FMA, "fma" },	    { SHADOW_CPU_BMI2, "bmi2" },
	{ SHADOW_CPU_F16C, "f16c" },	    { SHADOW_CPU_AVX512F, "avx512f" },
	{ SHADOW_CPU_AVX512BW, "avx512bw" }, { SHADOW_CPU_AVX512VL, "avx512vl" },
	{ SHADOW_CPU_AVX512BF16, "avx512bf16" },
	{ SHADOW_CPU_NEON, "neon" },
};

const char *shadow__cpu_features_string(uint32_t features)
{
	/* Large enough for every name above, with separators. */
	static _Thread_local char buf[96];
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(shadow_cpu_names); i++) {
		if (!(features & shadow_cpu_names[i].flag))
			continue;
		int n = snprintf(buf + len, sizeof(buf) - len, "%s%s", len ? " " : "",
				 shadow_cpu_names[i].name);
		if (n < 0 || (size_t)n >= sizeof(buf) - len)
			break;
		len += (size_t)n;
	}
	return len ? buf : "none";
}

size_t shadow__cpu_runnable(const uint32_t *needs, size_t n, size_t *idx_ret)
{
	uint32_t f = shadow__cpu_features();
	size_t m = 0;

	for (size_t i = 0; i < n; i++)
		if ((f & needs[i]) == needs[i])
			idx_ret[m++] = i;
	return m;
}
