/* test_cpu.c - CPU feature detection, SHADOW_FORCE_ISA masking, the feature string. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/cpu.h"
#include "core/cpuset.h"
#include "core/log.h"

/* Detected features with no forcing. */
static uint32_t real_features(void)
{
	unsetenv("SHADOW_FORCE_ISA");
	shadow__cpu_features_reset_for_testing();
	return shadow__cpu_features();
}

static uint32_t forced_features(const char *isa)
{
	setenv("SHADOW_FORCE_ISA", isa, 1);
	shadow__cpu_features_reset_for_testing();
	uint32_t f = shadow__cpu_features();

	unsetenv("SHADOW_FORCE_ISA");
	return f;
}

static int teardown(void **state)
{
	(void)state;
	unsetenv("SHADOW_FORCE_ISA");
	shadow__cpu_features_reset_for_testing();
	return 0;
}

static void test_consistent(void **state)
{
	(void)state;
	uint32_t f = real_features();

	print_message("cpu features: %s\n", shadow__cpu_features_string(f));
	assert_int_equal(f, shadow__cpu_features()); /* cached */
	assert_int_equal(f & (1u << 31), 0);           /* no internal bits leak */
#if defined(__x86_64__)
	assert_int_equal(f & SHADOW_CPU_NEON, 0);
	if (f & (SHADOW_CPU_AVX512F | SHADOW_CPU_AVX512BW | SHADOW_CPU_AVX512VL))
		assert_true(f & SHADOW_CPU_AVX2);
	if (f & (SHADOW_CPU_AVX512BW | SHADOW_CPU_AVX512VL))
		assert_true(f & SHADOW_CPU_AVX512F);
	/* Every x86-64 CPU that can run AVX2 has SSE4.2 too. */
	if (f & SHADOW_CPU_AVX2)
		assert_true(f & SHADOW_CPU_SSE42);
	/* The kernel's view must agree (it also checks OS support). */
	FILE *fp = fopen("/proc/cpuinfo", "r");
	if (fp != NULL) {
		static char line[8192];
		bool has_avx2 = false, has_avx512f = false;

		while (fgets(line, sizeof(line), fp) != NULL) {
			if (strncmp(line, "flags", 5) != 0)
				continue;
			has_avx2 = strstr(line, " avx2") != NULL;
			has_avx512f = strstr(line, " avx512f") != NULL;
			break;
		}
		fclose(fp);
		/*
		 * Never more than the kernel lists. (Not equality: an emulator such as valgrind
		 * hides AVX-512 from CPUID but not from /proc/cpuinfo.)
		 */
		if (f & SHADOW_CPU_AVX2)
			assert_true(has_avx2);
		if (f & SHADOW_CPU_AVX512F)
			assert_true(has_avx512f);
	}
#elif defined(__aarch64__)
	assert_true(f & SHADOW_CPU_NEON);
	assert_int_equal(f & ~SHADOW_CPU_NEON, 0);
#endif
}

static void test_force_scalar(void **state)
{
	(void)state;
	assert_int_equal(forced_features("scalar"), 0);
	/* Sticks until reset, even with the variable gone. */
	assert_int_equal(shadow__cpu_features(), 0);
}

static void test_force_levels(void **state)
{
	(void)state;
	uint32_t real = real_features();
	uint32_t avx2 = forced_features("avx2");
	uint32_t avx512 = forced_features("avx512");
	uint32_t neon = forced_features("neon");

	/* Forcing only removes. */
	assert_int_equal(avx2 & ~real, 0);
	assert_int_equal(avx512 & ~real, 0);
	assert_int_equal(neon & ~real, 0);
	assert_int_equal(avx2 & SHADOW_CPU_AVX512, 0);
	assert_int_equal(avx2, real & SHADOW_CPU_X86_AVX2_LEVEL);
	assert_int_equal(avx512, real & SHADOW_CPU_X86_AVX512_LEVEL);
	assert_int_equal(neon, real & SHADOW_CPU_NEON);
#if defined(__x86_64__)
	/* "avx512" keeps everything but AVX512-BF16, which only the unforced default uses. */
	assert_int_equal(avx512, real & ~SHADOW_CPU_AVX512BF16);
	assert_int_equal(neon, 0);
	if (real & SHADOW_CPU_AVX2)
		assert_true(avx2 & SHADOW_CPU_AVX2);
#elif defined(__aarch64__)
	assert_int_equal(avx2, 0);
	assert_int_equal(avx512, 0);
	assert_int_equal(neon, SHADOW_CPU_NEON);
#endif
}

static void test_force_unknown_ignored(void **state)
{
	(void)state;
	uint32_t real = real_features();
	enum shadow_log_level saved = shadow_log_get_level();

	shadow_log_set_level(SHADOW_LOG_ERROR); /* keep the expected warning out of the output */
	assert_int_equal(forced_features("sse9000"), real);
	assert_int_equal(forced_features(""), real);
	shadow_log_set_level(saved);
}

static void test_string(void **state)
{
	(void)state;
	char buf[128];

	assert_string_equal(shadow__cpu_features_string(0), "none");
	assert_string_equal(shadow__cpu_features_string(SHADOW_CPU_AVX2), "avx2");
	assert_string_equal(shadow__cpu_features_string(SHADOW_CPU_NEON), "neon");
	assert_string_equal(shadow__cpu_features_string(SHADOW_CPU_SSE42 | SHADOW_CPU_AVX2 |
							SHADOW_CPU_AVX512BW),
			    "sse4.2 avx2 avx512bw");
	/* Every flag at once fits. */
	snprintf(buf, sizeof(buf), "%s", shadow__cpu_features_string(UINT32_MAX));
	assert_string_equal(buf,
			    "sse4.2 avx2 fma bmi2 f16c avx512f avx512bw avx512vl avx512bf16 neon");
	/* Unknown bits are ignored. */
	assert_string_equal(shadow__cpu_features_string(1u << 30), "none");
}

/* core/cpuset.h: the --cpus lists of shadowd, linkem and the benchmarks. */
static void test_cpuset_parse(void **state)
{
	(void)state;
	cpu_set_t set;

	assert_int_equal(shadow__cpuset_parse("0-3,8,10-11", &set), 0);
	assert_int_equal(CPU_COUNT(&set), 7);
	assert_true(CPU_ISSET(0, &set) && CPU_ISSET(3, &set) && CPU_ISSET(8, &set));
	assert_true(CPU_ISSET(11, &set) && !CPU_ISSET(4, &set) && !CPU_ISSET(9, &set));
	assert_int_equal(shadow__cpuset_parse("5", &set), 0);
	assert_int_equal(CPU_COUNT(&set), 1);
	assert_int_equal(shadow__cpuset_parse("2-2", &set), 0);
	assert_int_equal(CPU_COUNT(&set), 1);
	static const char *const bad[] = { "", ",", "1,", ",1", "1,,2", "3-1", "-1", "+1", " 1",
					   "1 ", "1-", "1--2", "a", "1-b", "0x1", "1024",
					   "0-99999999999999999999" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (shadow__cpuset_parse(bad[i], &set) != -EINVAL)
			fail_msg("'%s' parsed", bad[i]);
}

/* core/cpuset.h: the k-th CPU of a set, as the pipeline pins its threads. */
static void test_cpuset_nth(void **state)
{
	(void)state;
	cpu_set_t set;

	assert_int_equal(shadow__cpuset_parse("2-3,8,10", &set), 0);
	assert_int_equal(shadow__cpuset_nth(&set, 0), 2);
	assert_int_equal(shadow__cpuset_nth(&set, 1), 3);
	assert_int_equal(shadow__cpuset_nth(&set, 2), 8);
	assert_int_equal(shadow__cpuset_nth(&set, 3), 10);
	assert_int_equal(shadow__cpuset_nth(&set, 4), -1);
	CPU_ZERO(&set);
	assert_int_equal(shadow__cpuset_nth(&set, 0), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_consistent, teardown),
		cmocka_unit_test_teardown(test_force_scalar, teardown),
		cmocka_unit_test_teardown(test_force_levels, teardown),
		cmocka_unit_test_teardown(test_force_unknown_ignored, teardown),
		cmocka_unit_test_teardown(test_string, teardown),
		cmocka_unit_test(test_cpuset_parse),
		cmocka_unit_test(test_cpuset_nth),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
