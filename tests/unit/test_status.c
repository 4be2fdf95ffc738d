/* test_status.c - shadow_strerror() for every code, and shadow_version(). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include <shadow/shadow.h>

static const int all_codes[] = {
	SHADOW_ECORRUPT, SHADOW_ETRUNCATED, SHADOW_EVERSION, SHADOW_EGEOMETRY,
	SHADOW_EKEYMISMATCH, SHADOW_EMISS, SHADOW_ENOGPU, SHADOW_ECUDA,
	SHADOW_EPROTO, SHADOW_EUNSUPPORTED, SHADOW_ELIMIT, SHADOW_ECODEC,
	SHADOW_EUNKNOWN_NAME, SHADOW_ESERVER,
};

static void test_ok(void **state)
{
	(void)state;
	assert_string_equal(shadow_strerror(SHADOW_OK), "success");
}

static void test_every_project_code(void **state)
{
	(void)state;
	size_t n = sizeof(all_codes) / sizeof(all_codes[0]);

	/* The codes are contiguous from -10001, so a new code not in this list shows up here. */
	assert_int_equal(n, (size_t)(-SHADOW_ESERVER - 10000));
	for (size_t i = 0; i < n; i++) {
		const char *t = shadow_strerror(all_codes[i]);

		assert_non_null(t);
		assert_true(strlen(t) > 0);
		assert_string_not_equal(t, "unknown error");
		assert_string_not_equal(t, "success");
		assert_true(all_codes[i] < -10000); /* never collides with -errno */
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(t, shadow_strerror(all_codes[j]));
	}
}

static void test_errno_passthrough(void **state)
{
	(void)state;
	assert_string_equal(shadow_strerror(-EINVAL), strerrordesc_np(EINVAL));
	assert_string_equal(shadow_strerror(-ENOMEM), strerrordesc_np(ENOMEM));
	assert_string_equal(shadow_strerror(-ENOBUFS), strerrordesc_np(ENOBUFS));
	assert_string_equal(shadow_strerror(-ETIMEDOUT), strerrordesc_np(ETIMEDOUT));
	for (int e = 1; e < 134; e++) {
		const char *t = shadow_strerror(-e);

		assert_non_null(t);
		assert_true(strlen(t) > 0);
	}
}

static void test_unknown_codes(void **state)
{
	(void)state;
	const int unknown[] = { -10000, SHADOW_ESERVER - 1, -20000, 1, 12345,
				INT_MAX, INT_MIN, -4095, -4096, -5000 };

	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
		assert_string_equal(shadow_strerror(unknown[i]), "unknown error");
}

static void test_version(void **state)
{
	(void)state;
	char want[32];

	snprintf(want, sizeof(want), "%d.%d.%d", SHADOW_VERSION_MAJOR, SHADOW_VERSION_MINOR,
		 SHADOW_VERSION_PATCH);
	assert_string_equal(shadow_version(), want);
	assert_ptr_equal(shadow_version(), shadow_version()); /* static */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ok),
		cmocka_unit_test(test_every_project_code),
		cmocka_unit_test(test_errno_passthrough),
		cmocka_unit_test(test_unknown_codes),
		cmocka_unit_test(test_version),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
