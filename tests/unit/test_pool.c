/*
 * test_pool.c - the slot pool: arguments, exhaustion and reuse (last in, first out), slot
 * geometry, caches, a pool on caller memory, concurrent get/put from 4 threads, a bulk get
 * that others never see half done, and the test-build checks on put.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/clock.h"
#include "core/pool.h"

static uint32_t available(struct shadow__pool *pool)
{
	struct shadow__pool_stats st;

	shadow__pool_stats(pool, &st);
	return st.n_available;
}

static void test_create_args(void **state)
{
	(void)state;
	struct shadow__pool *pool = NULL;

	assert_int_equal(shadow__pool_create(&pool, 0, 8, 64, 0), -EINVAL);
	assert_int_equal(shadow__pool_create(&pool, 64, 0, 64, 0), -EINVAL);
	assert_int_equal(shadow__pool_create(&pool, 64, 8, 48, 0), -EINVAL);
	assert_int_equal(shadow__pool_create(&pool, 64, 8, SHADOW_POOL_ALIGN_MAX * 2, 0), -EINVAL);
	assert_int_equal(shadow__pool_create(&pool, 64, 8, 64, 1u << 9), -EINVAL);
	assert_int_equal(shadow__pool_create(&pool, 64, SHADOW_POOL_SLOTS_MAX + 1, 64, 0),
			 -EINVAL);
	assert_int_equal(shadow__pool_create(&pool, SIZE_MAX, 8, 64, 0), -ENOMEM);
	assert_int_equal(shadow__pool_create(&pool, SIZE_MAX / 4, 8, 64, 0), -ENOMEM);
	assert_null(pool);
	shadow__pool_free(NULL);

	struct shadow__pool_cache cache;

	assert_int_equal(shadow__pool_create(&pool, 64, 8, 0, 0), 0);
	assert_int_equal(pool->align, SHADOW_CACHE_LINE); /* 0 means a cache line */
	assert_int_equal(shadow__pool_cache_init(&cache, pool, 0), -EINVAL);
	assert_int_equal(shadow__pool_cache_init(&cache, pool, 1), -EINVAL);
	assert_int_equal(shadow__pool_cache_init(&cache, pool, SHADOW_POOL_CACHE_MAX + 1),
			 -EINVAL);
	assert_int_equal(shadow__pool_cache_init(&cache, pool, SHADOW_POOL_CACHE_MAX), 0);
	shadow__pool_free(pool);
}

static void test_exhaustion_and_reuse(void **state)
{
	(void)state;
	struct shadow__pool *pool;
	struct shadow__pool_stats st;
	void *s[10], *x, *pair[2];

	assert_int_equal(shadow__pool_create(&pool, 100, 10, 64, 0), 0);
	shadow__pool_stats(pool, &st);
	assert_int_equal(st.n_slots, 10);
	assert_int_equal(st.slot_nbytes, 128); /* rounded up to the alignment */
	assert_int_equal(st.n_available, 10);
	assert_int_equal(st.mem_nbytes, 1280);

	for (uint32_t i = 0; i < 10; i++) {
		assert_int_equal(shadow__pool_get(pool, NULL, &s[i]), 0);
		assert_ptr_equal(s[i], shadow__pool_slot_ptr(pool, i)); /* fresh pool: in order */
		assert_int_equal(shadow__pool_slot_index(pool, s[i]), i);
	}
	assert_int_equal(available(pool), 0);
	x = (void *)0x1;
	assert_int_equal(shadow__pool_get(pool, NULL, &x), -ENOBUFS);
	assert_ptr_equal(x, (void *)0x1); /* untouched on failure */

	shadow__pool_put(pool, NULL, s[3]);
	assert_int_equal(available(pool), 1);
	/* Bulk is all or nothing. */
	assert_int_equal(shadow__pool_get_bulk(pool, NULL, pair, 2), -ENOBUFS);
	assert_int_equal(available(pool), 1);
	assert_int_equal(shadow__pool_get(pool, NULL, &x), 0);
	assert_ptr_equal(x, s[3]); /* reused */
	/* Last in, first out: the slot put back last (warm in cache) is handed out first. */
	shadow__pool_put(pool, NULL, s[5]);
	shadow__pool_put(pool, NULL, s[1]);
	shadow__pool_put(pool, NULL, s[8]);
	assert_int_equal(shadow__pool_get_bulk(pool, NULL, pair, 2), 0);
	assert_ptr_equal(pair[0], s[8]);
	assert_ptr_equal(pair[1], s[1]);
	assert_int_equal(shadow__pool_get(pool, NULL, &s[1]), 0);
	assert_ptr_equal(s[1], s[5]);
	s[1] = pair[1];
	s[8] = pair[0];
	shadow__pool_put(pool, NULL, x);
	assert_int_equal(available(pool), 1);
	/* A failed bulk get leaves the stack as it was. */
	assert_int_equal(shadow__pool_get_bulk(pool, NULL, pair, 2), -ENOBUFS);
	assert_int_equal(shadow__pool_get(pool, NULL, &x), 0);
	assert_ptr_equal(x, s[3]);

	shadow__pool_put_bulk(pool, NULL, s, 10);
	assert_int_equal(available(pool), 10);
	assert_int_equal(shadow__pool_get_bulk(pool, NULL, s, 10), 0);
	assert_int_equal(available(pool), 0);
	shadow__pool_put_bulk(pool, NULL, s, 10);
	assert_int_equal(shadow__pool_get_bulk(pool, NULL, s, 0), 0);
	shadow__pool_free(pool);
}

/* Every slot distinct, aligned, inside the block, and fully writable without overlap. */
static void check_geometry(struct shadow__pool *pool, size_t slot_nbytes, uint32_t n_slots,
			   size_t align)
{
	struct shadow__pool_stats st;
	uint8_t **s = calloc(n_slots, sizeof(*s));

	assert_non_null(s);
	shadow__pool_stats(pool, &st);
	assert_int_equal(st.slot_nbytes % align, 0);
	assert_true(st.slot_nbytes >= slot_nbytes && st.slot_nbytes < slot_nbytes + align);
	assert_int_equal((uintptr_t)st.base % align, 0);
	for (uint32_t i = 0; i < n_slots; i++) {
		assert_int_equal(shadow__pool_get(pool, NULL, (void **)&s[i]), 0);
		assert_int_equal((uintptr_t)s[i] % align, 0);
		assert_true(s[i] >= (uint8_t *)st.base &&
			    s[i] + slot_nbytes <= (uint8_t *)st.base + st.mem_nbytes);
		assert_true(shadow__pool_owns(pool, s[i]));
		if (st.slot_nbytes > 1)
			assert_false(shadow__pool_owns(pool, s[i] + 1));
		memset(s[i], (int)(i & 0xff), slot_nbytes);
	}
	for (uint32_t i = 0; i < n_slots; i++) {
		uint32_t idx = shadow__pool_slot_index(pool, s[i]);

		assert_ptr_equal(shadow__pool_slot_ptr(pool, idx), s[i]);
		for (size_t b = 0; b < slot_nbytes; b++)
			assert_int_equal(s[i][b], i & 0xff);
	}
	assert_false(shadow__pool_owns(pool, (uint8_t *)st.base + st.mem_nbytes));
	assert_false(shadow__pool_owns(pool, (uint8_t *)st.base - st.slot_nbytes));
	shadow__pool_put_bulk(pool, NULL, (void **)s, n_slots);
	free(s);
}

static void test_geometry(void **state)
{
	(void)state;
	static const struct {
		size_t slot_nbytes, align;
		uint32_t n_slots;
		unsigned flags;
	} cases[] = {
		{ 1, 1, 7, 0 },
		{ 100, 4, 33, 0 },        /* stride 100: not a power of two */
		{ 64, 64, 1, 0 },
		{ 4097, 4096, 5, 0 },     /* 8 KiB strides */
		{ 1000, 8192, 3, 0 },     /* alignment above the page size */
		{ 300, 64, 10000, SHADOW_REGION_POPULATE }, /* a huge-page sized region */
		{ 2 << 20, 2 << 20, 2, SHADOW_REGION_NO_HUGE },
	};

	for (size_t c = 0; c < SHADOW_ARRAY_SIZE(cases); c++) {
		struct shadow__pool *pool;

		assert_int_equal(shadow__pool_create(&pool, cases[c].slot_nbytes, cases[c].n_slots,
						     cases[c].align, cases[c].flags), 0);
		check_geometry(pool, cases[c].slot_nbytes, cases[c].n_slots, cases[c].align);
		shadow__pool_free(pool);
	}
}

static void test_cache(void **state)
{
	(void)state;
	struct shadow__pool *pool;
	struct shadow__pool_cache c;
	void *s[40], *x;

	assert_int_equal(shadow__pool_create(&pool, 64, 32, 64, 0), 0);
	assert_int_equal(shadow__pool_cache_init(&c, pool, 8), 0);

	/* An empty cache refills size/2 beyond what is asked. */
	assert_int_equal(shadow__pool_get(pool, &c, &s[0]), 0);
	assert_int_equal(c.len, 4);
	assert_int_equal(available(pool), 32 - 5);
	for (int i = 1; i < 5; i++)
		assert_int_equal(shadow__pool_get(pool, &c, &s[i]), 0);
	assert_int_equal(c.len, 0);
	assert_int_equal(available(pool), 27);

	/* Puts fill the cache up to its size, then flush half in one go. */
	for (int i = 0; i < 5; i++)
		shadow__pool_put(pool, &c, s[i]);
	assert_int_equal(c.len, 5);
	assert_int_equal(available(pool), 27);
	assert_int_equal(shadow__pool_get_bulk(pool, &c, s, 8), 0);
	assert_int_equal(shadow__pool_get_bulk(pool, &c, s + 8, 3), 0);
	for (int i = 0; i < 11; i++)
		shadow__pool_put(pool, &c, s[i]);
	assert_true(c.len <= 8 && c.len >= 4);
	assert_int_equal(available(pool) + c.len, 32);

	/* Slots in a cache are not available through the ring. */
	assert_int_equal(shadow__pool_get_bulk(pool, NULL, s, 32 - c.len), 0);
	assert_int_equal(shadow__pool_get(pool, NULL, &x), -ENOBUFS);
	uint32_t held = c.len;

	shadow__pool_cache_flush(pool, &c);
	assert_int_equal(c.len, 0);
	assert_int_equal(available(pool), held);
	shadow__pool_put_bulk(pool, NULL, s, 32 - held);
	assert_int_equal(available(pool), 32);

	/* Bulk larger than the cache bypasses it, both ways. */
	assert_int_equal(shadow__pool_get_bulk(pool, &c, s, 20), 0);
	assert_int_equal(c.len, 0);
	shadow__pool_put_bulk(pool, &c, s, 20);
	assert_int_equal(c.len, 0);
	assert_int_equal(available(pool), 32);

	/* Bulk through the cache: a failed get keeps what the refill got. */
	assert_int_equal(shadow__pool_get_bulk(pool, &c, s, 6), 0);
	assert_int_equal(shadow__pool_get_bulk(pool, NULL, s + 6, 32 - 6 - c.len), 0);
	held = c.len;
	assert_int_equal(shadow__pool_get_bulk(pool, &c, s + 26, held + 1), -ENOBUFS);
	assert_int_equal(c.len, held);
	shadow__pool_put_bulk(pool, &c, s, 6);
	shadow__pool_put_bulk(pool, NULL, s + 6, 32 - 6 - held);
	shadow__pool_cache_flush(pool, &c);
	assert_int_equal(available(pool), 32);

	/* All 32 through one cache: exhaustion reported, nothing lost. */
	for (int i = 0; i < 32; i++)
		assert_int_equal(shadow__pool_get(pool, &c, &s[i]), 0);
	assert_int_equal(shadow__pool_get(pool, &c, &x), -ENOBUFS);
	for (int i = 0; i < 32; i++)
		for (int j = 0; j < i; j++)
			assert_ptr_not_equal(s[i], s[j]);
	shadow__pool_put_bulk(pool, &c, s, 32);
	shadow__pool_cache_flush(pool, &c);
	assert_int_equal(available(pool), 32);
	shadow__pool_free(pool);
}

static void test_caller_memory(void **state)
{
	(void)state;
	struct shadow__pool *pool;
	const size_t nbytes = 16 * 256;
	uint8_t *mem = aligned_alloc(256, nbytes + 256);
	void *s[16], *x;

	assert_non_null(mem);
	assert_int_equal(shadow__pool_create_on(&pool, NULL, nbytes, 200, 16, 256), -EINVAL);
	assert_int_equal(shadow__pool_create_on(&pool, mem + 64, nbytes, 200, 16, 256), -EINVAL);
	assert_int_equal(shadow__pool_create_on(&pool, mem, nbytes - 1, 200, 16, 256), -EINVAL);
	assert_int_equal(shadow__pool_create_on(&pool, mem, nbytes, 0, 16, 256), -EINVAL);
	assert_int_equal(shadow__pool_create_on(&pool, mem, nbytes, SIZE_MAX, 16, 256), -EINVAL);

	assert_int_equal(shadow__pool_create_on(&pool, mem, nbytes + 256, 200, 16, 256), 0);
	for (int i = 0; i < 16; i++) {
		assert_int_equal(shadow__pool_get(pool, NULL, &s[i]), 0);
		assert_ptr_equal(s[i], mem + (size_t)i * 256);
	}
	assert_int_equal(shadow__pool_get(pool, NULL, &x), -ENOBUFS);
	shadow__pool_put_bulk(pool, NULL, s, 16);
	shadow__pool_free(pool);
	memset(mem, 0xee, nbytes + 256); /* still the caller's */
	free(mem);
}

/* ---------------------------------------------------------------------------------------- */
/* Concurrent get/put                                                                       */
/* ---------------------------------------------------------------------------------------- */

#define N_THREADS 4
#define CACHE_SIZE 16
#define SLOT_NBYTES 256
#define MAX_HELD 8

struct worker {
	struct shadow__pool *pool;
	int id;
	uint32_t iterations;
	uint64_t n_got, n_nobufs;
	char error[160];
};

static uint64_t pattern_word(int id, uint32_t it, uint32_t k)
{
	return ((uint64_t)(id + 1) << 56) | ((uint64_t)it << 16) | k;
}

static void *pool_worker(void *arg)
{
	struct worker *w = arg;
	struct shadow__pool_cache cache;
	void *held[MAX_HELD];
	uint64_t rng = 0x853c49e6748fea9bull * (uint64_t)(w->id + 1);

	if (shadow__pool_cache_init(&cache, w->pool, CACHE_SIZE) != 0) {
		snprintf(w->error, sizeof(w->error), "cache init failed");
		return NULL;
	}
	for (uint32_t it = 0; it < w->iterations; it++) {
		uint32_t n;
		int rc = 0;

		rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
		n = 1 + (uint32_t)(rng % MAX_HELD);
		if (rng & (1u << 20)) {
			rc = shadow__pool_get_bulk(w->pool, &cache, held, n);
		} else {
			for (uint32_t i = 0; i < n; i++) {
				rc = shadow__pool_get(w->pool, &cache, &held[i]);
				if (rc != 0) {
					shadow__pool_put_bulk(w->pool, &cache, held, i);
					break;
				}
			}
		}
		if (rc == -ENOBUFS) {
			w->n_nobufs++;
			sched_yield();
			continue;
		}
		if (rc != 0) {
			snprintf(w->error, sizeof(w->error), "get: %d", rc);
			return NULL;
		}
		w->n_got += n;
		for (uint32_t i = 0; i < n; i++) {
			uint64_t *words = held[i];

			for (uint32_t k = 0; k < SLOT_NBYTES / 8; k++)
				words[k] = pattern_word(w->id, it, k);
		}
		if ((it & 31) == 0)
			sched_yield(); /* let others run while we hold slots */
		for (uint32_t i = 0; i < n; i++) {
			const uint64_t *words = held[i];

			for (uint32_t k = 0; k < SLOT_NBYTES / 8; k++) {
				if (words[k] != pattern_word(w->id, it, k)) {
					snprintf(w->error, sizeof(w->error),
						 "slot %u word %u: %#llx, someone else wrote it",
						 shadow__pool_slot_index(w->pool, held[i]), k,
						 (unsigned long long)words[k]);
					return NULL;
				}
			}
		}
		if (rng & (1u << 21)) {
			shadow__pool_put_bulk(w->pool, &cache, held, n);
		} else {
			for (uint32_t i = 0; i < n; i++)
				shadow__pool_put(w->pool, &cache, held[i]);
		}
	}
	shadow__pool_cache_flush(w->pool, &cache);
	return NULL;
}

static void run_pool_threads(uint32_t n_slots, uint32_t iterations)
{
	struct shadow__pool *pool;
	struct worker w[N_THREADS];
	pthread_t t[N_THREADS];
	uint64_t t0 = shadow__now_ns(), got = 0, nobufs = 0;

	assert_int_equal(shadow__pool_create(&pool, SLOT_NBYTES, n_slots, 64, 0), 0);
	for (int i = 0; i < N_THREADS; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].pool = pool;
		w[i].id = i;
		w[i].iterations = iterations;
		assert_int_equal(pthread_create(&t[i], NULL, pool_worker, &w[i]), 0);
	}
	for (int i = 0; i < N_THREADS; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < N_THREADS; i++) {
		if (w[i].error[0] != '\0')
			fail_msg("thread %d: %s", i, w[i].error);
		got += w[i].n_got;
		nobufs += w[i].n_nobufs;
	}
	print_message("%u slots, %d threads: %llu slots got in %.2f s, %llu -ENOBUFS\n", n_slots,
		      N_THREADS, (unsigned long long)got, (double)(shadow__now_ns() - t0) / 1e9,
		      (unsigned long long)nobufs);
	assert_true(got > 0);
	/* Everything came back. */
	assert_int_equal(available(pool), n_slots);
#if defined(SHADOW_TESTING)
	for (uint32_t i = 0; i < n_slots; i++)
		assert_int_equal(atomic_load(&pool->in_use[i]), 0);
#endif
	shadow__pool_free(pool);
}

/* A bulk getter that never holds more than 4 of the 8 slots, while the main thread gets and
 * puts one at a time: a bulk get is all or none for the others too, so the single get never
 * finds the pool empty. */
struct bulk_hog {
	struct shadow__pool *pool;
	_Atomic bool stop;
	uint64_t rounds, failed;
};

static void *bulk_hog_main(void *arg)
{
	struct bulk_hog *h = arg;
	void *held[4];

	while (!atomic_load_explicit(&h->stop, memory_order_relaxed)) {
		if (shadow__pool_get_bulk(h->pool, NULL, held, 4) != 0) {
			h->failed++; /* cannot happen: at most 1 + 4 of 8 are ever out */
			continue;
		}
		shadow__pool_put_bulk(h->pool, NULL, held, 4);
		h->rounds++;
	}
	return NULL;
}

static uint32_t scaled(uint32_t n);

static void test_bulk_get_all_or_none_concurrent(void **state)
{
	(void)state;
	struct bulk_hog h = { .rounds = 0 };
	pthread_t t;
	uint64_t empty = 0;
	void *one, *nine[9];

	assert_int_equal(shadow__pool_create(&h.pool, 64, 8, 64, 0), 0);
	atomic_init(&h.stop, false);
	/* More than the pool holds: refused at once, nothing taken. */
	assert_int_equal(shadow__pool_get_bulk(h.pool, NULL, nine, 9), -ENOBUFS);
	assert_int_equal(available(h.pool), 8);
	assert_int_equal(pthread_create(&t, NULL, bulk_hog_main, &h), 0);
	for (uint32_t i = 0; i < scaled(400000); i++) {
		if (shadow__pool_get(h.pool, NULL, &one) != 0) {
			empty++;
			continue;
		}
		shadow__pool_put(h.pool, NULL, one);
	}
	atomic_store(&h.stop, true);
	pthread_join(t, NULL);
	print_message("bulk getter: %llu rounds; single gets that found no slot: %llu\n",
		      (unsigned long long)h.rounds, (unsigned long long)empty);
	assert_int_equal(empty, 0);
	assert_int_equal(h.failed, 0);
	assert_int_equal(available(h.pool), 8);
	shadow__pool_free(h.pool);
}

static uint32_t scaled(uint32_t n)
{
	const char *s = getenv("SHADOW_TEST_SCALE");
	uint32_t scale = s != NULL ? (uint32_t)strtoul(s, NULL, 10) : 1;

	return n / (scale > 0 ? scale : 1);
}

static void test_concurrent(void **state)
{
	(void)state;
	/* Enough for every cache plus what each thread holds: no -ENOBUFS expected... */
	run_pool_threads(N_THREADS * (CACHE_SIZE + MAX_HELD) + 16, scaled(200000));
	/* ... and scarce, so that threads run dry and hand slots to each other. */
	run_pool_threads(2 * MAX_HELD, scaled(100000));
}

/* Run fn in a child; true if the child died of SIGABRT (a failed SHADOW_ASSERT). */
static bool child_aborts(void (*fn)(struct shadow__pool *), struct shadow__pool *pool)
{
	pid_t pid;
	int status;

	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit no_core = { 0, 0 };

		setrlimit(RLIMIT_CORE, &no_core);
		/* Keep the expected assertion message out of the test log. */
		if (freopen("/dev/null", "w", stderr) == NULL)
			_exit(3);
		fn(pool);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void put_misaligned(struct shadow__pool *pool)
{
	void *s;

	if (shadow__pool_get(pool, NULL, &s) == 0)
		shadow__pool_put(pool, NULL, (uint8_t *)s + 8);
}

static void put_foreign(struct shadow__pool *pool)
{
	static uint64_t not_a_slot[16];

	shadow__pool_put(pool, NULL, not_a_slot);
}

static void put_twice(struct shadow__pool *pool)
{
	struct shadow__pool_cache c;
	void *s;

	shadow__pool_cache_init(&c, pool, 4);
	if (shadow__pool_get(pool, &c, &s) == 0) {
		shadow__pool_put(pool, &c, s);
		shadow__pool_put(pool, &c, s);
	}
}

static void put_ok(struct shadow__pool *pool)
{
	void *s;

	if (shadow__pool_get(pool, NULL, &s) == 0)
		shadow__pool_put(pool, NULL, s);
}

static void test_put_checks(void **state)
{
	(void)state;
#if defined(SHADOW_TESTING)
	struct shadow__pool *pool;

	assert_int_equal(shadow__pool_create(&pool, 64, 8, 64, 0), 0);
	assert_false(child_aborts(put_ok, pool));
	assert_true(child_aborts(put_misaligned, pool));
	assert_true(child_aborts(put_foreign, pool));
	assert_true(child_aborts(put_twice, pool));
	shadow__pool_free(pool);
#else
	skip();
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_args),
		cmocka_unit_test(test_exhaustion_and_reuse),
		cmocka_unit_test(test_geometry),
		cmocka_unit_test(test_cache),
		cmocka_unit_test(test_caller_memory),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_bulk_get_all_or_none_concurrent),
		cmocka_unit_test(test_put_checks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
