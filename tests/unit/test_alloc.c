/* test_alloc.c - aligned heap blocks and mmap()ed regions. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"

#define MiB ((size_t)1 << 20)

/* Sanitizer allocators report an oversized request instead of returning NULL. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZER_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZER_ALLOCATOR 1
#endif
#endif

static void test_aligned(void **state)
{
	(void)state;
	for (size_t align = 1; align <= 2 * MiB; align <<= 1) {
		size_t nbytes = align * 3 + 7;
		uint8_t *p = shadow__alloc_aligned(nbytes, align);

		assert_non_null(p);
		assert_int_equal((uintptr_t)p % SHADOW_MAX(align, sizeof(void *)), 0);
		memset(p, 0xab, nbytes);
		assert_int_equal(p[nbytes - 1], 0xab);
		shadow__free_aligned(p);
	}
	shadow__free_aligned(NULL);
}

static void test_aligned_bad_args(void **state)
{
	(void)state;
	errno = 0;
	assert_null(shadow__alloc_aligned(0, 64));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(shadow__alloc_aligned(64, 0));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(shadow__alloc_aligned(64, 48));
	assert_int_equal(errno, EINVAL);
#if !defined(SANITIZER_ALLOCATOR)
	errno = 0;
	assert_null(shadow__alloc_aligned((size_t)1 << 62, 64));
	assert_int_equal(errno, ENOMEM);
#endif
}

static void test_region_small(void **state)
{
	(void)state;
	struct shadow__region r;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	assert_int_equal(shadow__region_alloc(&r, 100, 0), 0);
	assert_non_null(r.addr);
	assert_int_equal((uintptr_t)r.addr % page, 0);
	assert_int_equal(r.nbytes, 100);
	assert_int_equal(r.map_nbytes, page);
	assert_false(r.huge_requested);
	assert_false(r.huge_advised);
	/* Zero-filled and writable over the whole mapping. */
	for (size_t i = 0; i < r.map_nbytes; i++)
		assert_int_equal(((uint8_t *)r.addr)[i], 0);
	memset(r.addr, 0x5a, r.map_nbytes);
	shadow__region_free(&r);
	assert_null(r.addr);
	shadow__region_free(&r); /* idempotent */
}

static void test_region_huge(void **state)
{
	(void)state;
	struct shadow__region r;

	assert_int_equal(shadow__region_alloc(&r, 5 * MiB + 1, SHADOW_REGION_POPULATE), 0);
	assert_int_equal((uintptr_t)r.addr % (2 * MiB), 0);
	assert_int_equal(r.nbytes, 5 * MiB + 1);
	assert_int_equal(r.map_nbytes, 6 * MiB);
	assert_true(r.huge_requested);
	/* huge_advised depends on the kernel (THP may be off); both are valid. */
	((volatile uint8_t *)r.addr)[r.map_nbytes - 1] = 1;
	assert_int_equal(((uint8_t *)r.addr)[r.map_nbytes - 2], 0);
	shadow__region_free(&r);

	/* Exactly 2 MiB is "large". */
	assert_int_equal(shadow__region_alloc(&r, 2 * MiB, 0), 0);
	assert_true(r.huge_requested);
	assert_int_equal(r.map_nbytes, 2 * MiB);
	shadow__region_free(&r);
}

static void test_region_no_huge(void **state)
{
	(void)state;
	struct shadow__region r;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	assert_int_equal(shadow__region_alloc(&r, 3 * MiB + 5,
					      SHADOW_REGION_NO_HUGE | SHADOW_REGION_POPULATE), 0);
	assert_false(r.huge_requested);
	assert_false(r.huge_advised);
	assert_int_equal(r.map_nbytes, (3 * MiB + 5 + page - 1) / page * page);
	memset(r.addr, 1, r.nbytes);
	shadow__region_free(&r);
}

static void test_region_bad_args(void **state)
{
	(void)state;
	struct shadow__region r;

	memset(&r, 0x77, sizeof(r));
	assert_int_equal(shadow__region_alloc(&r, 0, 0), -EINVAL);
	assert_int_equal(shadow__region_alloc(&r, 4096, 1u << 7), -EINVAL);
	assert_int_equal(shadow__region_alloc(&r, SIZE_MAX, 0), -ENOMEM);
	assert_int_equal(shadow__region_alloc(&r, SIZE_MAX - 3 * MiB, 0), -ENOMEM);
	/* Too large to map (2^62 bytes): mmap's error comes back (valgrind says EINVAL). */
	int rc = shadow__region_alloc(&r, (size_t)1 << 62, SHADOW_REGION_NO_HUGE);

	assert_true(rc == -ENOMEM || rc == -EINVAL);
	/* *r untouched on failure. */
	uint8_t pattern[sizeof(r)];

	memset(pattern, 0x77, sizeof(pattern));
	assert_memory_equal(&r, pattern, sizeof(r));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_aligned),
		cmocka_unit_test(test_aligned_bad_args),
		cmocka_unit_test(test_region_small),
		cmocka_unit_test(test_region_huge),
		cmocka_unit_test(test_region_no_huge),
		cmocka_unit_test(test_region_bad_args),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
