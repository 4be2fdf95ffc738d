/*
 * test_ring.c - the lock-free ring: single-thread semantics (bulk, burst, wraparound of slots
 * and of the 32-bit indices), then SPSC, MPSC, SPMC and MPMC runs with pthreads in which every
 * token must arrive exactly once and each producer's tokens in order.
 *
 * The machine that runs the tests may have 2 cores for 8 threads, so a thread that cannot make
 * progress calls sched_yield(). SHADOW_TEST_SCALE=N divides the token counts (for valgrind).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/ring.h"

static void *tok(uintptr_t v)
{
	return (void *)v;
}

static void test_init_args(void **state)
{
	(void)state;
	struct shadow__ring *r;
	static const uint32_t bad[] = { 0, 1, 3, 6, 100, UINT32_MAX, (UINT32_C(1) << 31) + 2 };

	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(bad); i++) {
		assert_int_equal(shadow__ring_memsize(bad[i]), 0);
		assert_int_equal(shadow__ring_create(&r, bad[i]), -EINVAL);
	}
	assert_int_equal(shadow__ring_memsize(2), sizeof(struct shadow__ring) + 2 * sizeof(void *));
	assert_int_equal(shadow__ring_memsize(UINT32_C(1) << 31),
			 sizeof(struct shadow__ring) + ((size_t)1 << 31) * sizeof(void *));

	/* Caller memory must be cache-line aligned. */
	size_t nbytes = shadow__ring_memsize(8);
	uint8_t *mem = shadow__alloc_aligned(nbytes + SHADOW_CACHE_LINE, SHADOW_CACHE_LINE);

	assert_non_null(mem);
	assert_int_equal(shadow__ring_init((struct shadow__ring *)(void *)(mem + 8), 8), -EINVAL);
	assert_int_equal(shadow__ring_init((struct shadow__ring *)(void *)mem, 8), 0);
	r = (struct shadow__ring *)(void *)mem;
	assert_int_equal(shadow__ring_capacity(r), 8);
	assert_int_equal(shadow__ring_count(r), 0);
	assert_int_equal(shadow__ring_free_count(r), 8);
	shadow__free_aligned(mem);

	/* Layout: producer and consumer indices on their own lines. */
	assert_int_equal(offsetof(struct shadow__ring, prod) % SHADOW_CACHE_LINE, 0);
	assert_int_equal(offsetof(struct shadow__ring, cons) % SHADOW_CACHE_LINE, 0);
	assert_true(offsetof(struct shadow__ring, cons) - offsetof(struct shadow__ring, prod) >=
		    2 * SHADOW_CACHE_LINE);
	shadow__ring_free(NULL);
}

/* Each enqueue/dequeue flavour, called through a table so every one is exercised. */
typedef uint32_t (*enq_fn)(struct shadow__ring *, void *const *, uint32_t);
typedef uint32_t (*deq_fn)(struct shadow__ring *, void **, uint32_t);

static const enq_fn enq_bulk[2] = { shadow__ring_sp_enqueue_bulk, shadow__ring_mp_enqueue_bulk };
static const enq_fn enq_burst[2] = { shadow__ring_sp_enqueue_burst,
				     shadow__ring_mp_enqueue_burst };
static const deq_fn deq_bulk[2] = { shadow__ring_sc_dequeue_bulk, shadow__ring_mc_dequeue_bulk };
static const deq_fn deq_burst[2] = { shadow__ring_sc_dequeue_burst,
				     shadow__ring_mc_dequeue_burst };

static void test_bulk_burst(void **state)
{
	(void)state;
	for (int v = 0; v < 2; v++) {
		struct shadow__ring *r;
		void *in[16], *out[16];

		for (uintptr_t i = 0; i < 16; i++)
			in[i] = tok(100 + i);
		assert_int_equal(shadow__ring_create(&r, 8), 0);

		assert_int_equal(enq_bulk[v](r, in, 0), 0);
		assert_int_equal(enq_burst[v](r, in, 0), 0);
		assert_int_equal(deq_bulk[v](r, out, 1), 0);   /* empty */
		assert_int_equal(deq_burst[v](r, out, 4), 0);  /* empty */

		assert_int_equal(enq_bulk[v](r, in, 5), 5);
		assert_int_equal(shadow__ring_count(r), 5);
		assert_int_equal(enq_bulk[v](r, in + 5, 4), 0); /* 3 free: all or nothing */
		assert_int_equal(shadow__ring_count(r), 5);
		assert_int_equal(enq_burst[v](r, in + 5, 4), 3); /* best effort */
		assert_int_equal(shadow__ring_count(r), 8);      /* full capacity usable */
		assert_int_equal(shadow__ring_free_count(r), 0);
		assert_int_equal(enq_burst[v](r, in, 1), 0);
		assert_int_equal(enq_bulk[v](r, in, 1), 0);

		assert_int_equal(deq_bulk[v](r, out, 9), 0);
		assert_int_equal(shadow__ring_count(r), 8);
		assert_int_equal(deq_bulk[v](r, out, 2), 2);
		assert_ptr_equal(out[0], tok(100));
		assert_ptr_equal(out[1], tok(101));
		assert_int_equal(deq_burst[v](r, out, 16), 6);
		for (uintptr_t i = 0; i < 6; i++)
			assert_ptr_equal(out[i], tok(102 + i));
		assert_int_equal(shadow__ring_count(r), 0);
		assert_int_equal(shadow__ring_free_count(r), 8);

		/* Capacity 2, the smallest. */
		shadow__ring_free(r);
		assert_int_equal(shadow__ring_create(&r, 2), 0);
		assert_int_equal(enq_burst[v](r, in, 3), 2);
		assert_int_equal(deq_bulk[v](r, out, 2), 2);
		assert_ptr_equal(out[1], tok(101));
		shadow__ring_free(r);
	}
}

/* Many laps with varying sizes against a reference FIFO, optionally across index 2^32. */
static void run_laps(uint32_t start_index)
{
	const uint32_t cap = 16;
	struct shadow__ring *r;
	uintptr_t next_in = 1, next_out = 1;
	uint64_t rng = 0x9e3779b97f4a7c15ull;

	assert_int_equal(shadow__ring_create(&r, cap), 0);
	atomic_store(&r->prod.head, start_index);
	atomic_store(&r->prod.tail, start_index);
	atomic_store(&r->cons.head, start_index);
	atomic_store(&r->cons.tail, start_index);

	for (int it = 0; it < 20000; it++) {
		void *buf[32];
		int v = it & 1, burst = (it >> 1) & 1;
		uint32_t n, want, before = shadow__ring_count(r);

		rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
		want = (uint32_t)(rng % 20);
		if ((rng >> 32) & 1) {
			for (uint32_t i = 0; i < want; i++)
				buf[i] = tok(next_in + i);
			n = burst ? enq_burst[v](r, buf, want) : enq_bulk[v](r, buf, want);
			if (burst)
				assert_int_equal(n, SHADOW_MIN(want, cap - before));
			else
				assert_int_equal(n, want <= cap - before ? want : 0);
			next_in += n;
			assert_int_equal(shadow__ring_count(r), before + n);
		} else {
			n = burst ? deq_burst[v](r, buf, want) : deq_bulk[v](r, buf, want);
			if (burst)
				assert_int_equal(n, SHADOW_MIN(want, before));
			else
				assert_int_equal(n, want <= before ? want : 0);
			for (uint32_t i = 0; i < n; i++)
				assert_ptr_equal(buf[i], tok(next_out + i));
			next_out += n;
			assert_int_equal(shadow__ring_count(r), before - n);
		}
	}
	/* Many laps happened. */
	assert_true(next_out > 50 * cap);
	shadow__ring_free(r);
}

static void test_wraparound(void **state)
{
	(void)state;
	run_laps(0);
}

static void test_index_wrap_2_32(void **state)
{
	(void)state;
	run_laps(UINT32_MAX - 40);
	run_laps(UINT32_MAX);
}

/* ---------------------------------------------------------------------------------------- */
/* Concurrent runs                                                                          */
/* ---------------------------------------------------------------------------------------- */

#define MAX_THREADS 4
#define MAX_BATCH 16

struct harness {
	struct shadow__ring *r;
	int n_prod, n_cons;
	bool mp, mc;
	uint32_t per_prod;
	uint64_t total;
	_Atomic uint64_t consumed;
	_Atomic bool stop; /* a worker failed: everyone stops */
	_Atomic uint8_t *seen; /* [producer][seq] */
	pthread_barrier_t start;
};

struct worker {
	struct harness *h;
	int id;
	uint64_t rng;
	uint64_t n_moved;
	uint64_t n_yields;
	uint32_t last[MAX_THREADS]; /* consumers: 1 + last seq seen per producer, 0 = none */
	char error[160];            /* first failure; cmocka asserts are not thread-safe */
};

static uint32_t worker_rand(struct worker *w)
{
	w->rng ^= w->rng << 13;
	w->rng ^= w->rng >> 7;
	w->rng ^= w->rng << 17;
	return (uint32_t)(w->rng >> 16);
}

/* A token: producer id in the high half, seq + 1 in the low half (never NULL). */
static void *encode(int prod, uint32_t seq)
{
	return (void *)(((uintptr_t)prod << 32) | ((uintptr_t)seq + 1));
}

static void *producer(void *arg)
{
	struct worker *w = arg;
	struct harness *h = w->h;
	void *buf[MAX_BATCH];
	uint32_t seq = 0;

	pthread_barrier_wait(&h->start);
	for (uint32_t it = 0; seq < h->per_prod && !atomic_load(&h->stop); it++) {
		uint32_t k = 1 + worker_rand(w) % MAX_BATCH, n;

		k = SHADOW_MIN(k, h->per_prod - seq); /* (the macro evaluates twice) */

		for (uint32_t i = 0; i < k; i++)
			buf[i] = encode(w->id, seq + i);
		if (it & 1)
			n = h->mp ? shadow__ring_mp_enqueue_burst(h->r, buf, k)
				  : shadow__ring_sp_enqueue_burst(h->r, buf, k);
		else
			n = h->mp ? shadow__ring_mp_enqueue_bulk(h->r, buf, k)
				  : shadow__ring_sp_enqueue_bulk(h->r, buf, k);
		if (n > k || (!(it & 1) && n != 0 && n != k)) {
			snprintf(w->error, sizeof(w->error), "enqueue of %u returned %u", k, n);
			atomic_store(&h->stop, true);
			return NULL;
		}
		seq += n;
		w->n_moved += n;
		if (n == 0) {
			w->n_yields++;
			sched_yield();
		}
	}
	return NULL;
}

static bool check_token(struct worker *w, void *t)
{
	struct harness *h = w->h;
	uintptr_t v = (uintptr_t)t;
	int p = (int)(v >> 32);
	uint32_t seq1 = (uint32_t)v; /* seq + 1 */

	if (p >= h->n_prod || seq1 == 0 || seq1 > h->per_prod) {
		snprintf(w->error, sizeof(w->error), "garbage token %#lx", (unsigned long)v);
		return false;
	}
	/* One consumer sees each producer's tokens consecutively; several see them rising. */
	if (h->n_cons == 1 ? seq1 != w->last[p] + 1 : seq1 <= w->last[p]) {
		snprintf(w->error, sizeof(w->error), "producer %d: seq %u after %u", p, seq1 - 1,
			 w->last[p]);
		return false;
	}
	w->last[p] = seq1;
	/* relaxed: a counter per token; the ring provides the ordering under test. */
	if (atomic_fetch_add_explicit(&h->seen[(size_t)p * h->per_prod + seq1 - 1], 1,
				      memory_order_relaxed) != 0) {
		snprintf(w->error, sizeof(w->error), "producer %d seq %u seen twice", p, seq1 - 1);
		return false;
	}
	return true;
}

static void *consumer(void *arg)
{
	struct worker *w = arg;
	struct harness *h = w->h;
	void *buf[MAX_BATCH];

	pthread_barrier_wait(&h->start);
	for (uint32_t it = 0; atomic_load_explicit(&h->consumed, memory_order_relaxed) < h->total &&
			      !atomic_load(&h->stop);
	     it++) {
		uint32_t k = 1 + worker_rand(w) % MAX_BATCH, n;

		if (it & 1)
			n = h->mc ? shadow__ring_mc_dequeue_burst(h->r, buf, k)
				  : shadow__ring_sc_dequeue_burst(h->r, buf, k);
		else
			n = h->mc ? shadow__ring_mc_dequeue_bulk(h->r, buf, k)
				  : shadow__ring_sc_dequeue_bulk(h->r, buf, k);
		if (n > k || (!(it & 1) && n != 0 && n != k)) {
			snprintf(w->error, sizeof(w->error), "dequeue of %u returned %u", k, n);
			/* Let the others finish rather than spin forever. */
			atomic_store(&h->stop, true);
			return NULL;
		}
		if (n == 0) {
			w->n_yields++;
			sched_yield();
			continue;
		}
		for (uint32_t i = 0; i < n; i++) {
			if (!check_token(w, buf[i])) {
				atomic_store(&h->stop, true);
				return NULL;
			}
		}
		w->n_moved += n;
		atomic_fetch_add_explicit(&h->consumed, n, memory_order_relaxed);
	}
	return NULL;
}

static uint64_t test_scale(void)
{
	const char *s = getenv("SHADOW_TEST_SCALE");
	uint64_t scale = s != NULL ? strtoull(s, NULL, 10) : 1;

	return scale > 0 ? scale : 1;
}

static void run_concurrent(int n_prod, int n_cons, bool mp, bool mc, uint32_t capacity,
			   uint64_t total)
{
	struct harness h = { .n_prod = n_prod, .n_cons = n_cons, .mp = mp, .mc = mc };
	struct worker w[2 * MAX_THREADS];
	pthread_t t[2 * MAX_THREADS];
	int n = n_prod + n_cons;
	uint64_t t0, sum_prod = 0, sum_cons = 0, yields = 0;

	total /= test_scale();
	h.per_prod = (uint32_t)(total / (uint64_t)n_prod);
	h.total = (uint64_t)h.per_prod * (uint64_t)n_prod;
	assert_int_equal(shadow__ring_create(&h.r, capacity), 0);
	h.seen = calloc(h.total, 1);
	assert_non_null(h.seen);
	atomic_init(&h.consumed, 0);
	atomic_init(&h.stop, false);
	assert_int_equal(pthread_barrier_init(&h.start, NULL, (unsigned)n), 0);

	t0 = shadow__now_ns();
	for (int i = 0; i < n; i++) {
		bool is_prod = i < n_prod;

		memset(&w[i], 0, sizeof(w[i]));
		w[i].h = &h;
		w[i].id = is_prod ? i : i - n_prod;
		w[i].rng = 0x2545f4914f6cdd1dull * (uint64_t)(i + 1);
		assert_int_equal(pthread_create(&t[i], NULL, is_prod ? producer : consumer, &w[i]),
				 0);
	}
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);

	for (int i = 0; i < n; i++) {
		if (w[i].error[0] != '\0')
			fail_msg("%s %d: %s", i < n_prod ? "producer" : "consumer", w[i].id,
				 w[i].error);
		if (i < n_prod)
			sum_prod += w[i].n_moved;
		else
			sum_cons += w[i].n_moved;
		yields += w[i].n_yields;
	}
	print_message("%d%s x %d%s, capacity %u: %llu tokens in %.2f s (%llu yields)\n", n_prod,
		      mp ? "mp" : "sp", n_cons, mc ? "mc" : "sc", capacity,
		      (unsigned long long)h.total, (double)(shadow__now_ns() - t0) / 1e9,
		      (unsigned long long)yields);
	assert_int_equal(sum_prod, h.total);
	assert_int_equal(sum_cons, h.total);
	for (uint64_t i = 0; i < h.total; i++) {
		if (atomic_load_explicit(&h.seen[i], memory_order_relaxed) != 1)
			fail_msg("token %llu of producer %llu arrived %u times",
				 (unsigned long long)(i % h.per_prod),
				 (unsigned long long)(i / h.per_prod), h.seen[i]);
	}
	assert_int_equal(shadow__ring_count(h.r), 0);
	assert_int_equal(atomic_load(&h.r->prod.head), atomic_load(&h.r->prod.tail));
	assert_int_equal(atomic_load(&h.r->cons.head), atomic_load(&h.r->cons.tail));
	assert_int_equal(atomic_load(&h.r->prod.tail), atomic_load(&h.r->cons.tail));

	pthread_barrier_destroy(&h.start);
	free((void *)h.seen);
	shadow__ring_free(h.r);
}

static void test_spsc(void **state)
{
	(void)state;
	run_concurrent(1, 1, false, false, 64, 2000000);
	run_concurrent(1, 1, false, false, 2, 100000);
}

static void test_mpsc(void **state)
{
	(void)state;
	run_concurrent(4, 1, true, false, 64, 1000000);
}

static void test_spmc(void **state)
{
	(void)state;
	run_concurrent(1, 4, false, true, 64, 1000000);
}

static void test_mpmc(void **state)
{
	(void)state;
	run_concurrent(4, 4, true, true, 64, 2000000);
	run_concurrent(4, 4, true, true, 4, 200000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_args),
		cmocka_unit_test(test_bulk_burst),
		cmocka_unit_test(test_wraparound),
		cmocka_unit_test(test_index_wrap_2_32),
		cmocka_unit_test(test_spsc),
		cmocka_unit_test(test_mpsc),
		cmocka_unit_test(test_spmc),
		cmocka_unit_test(test_mpmc),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
