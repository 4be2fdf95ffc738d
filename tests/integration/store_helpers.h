/*
 * store_helpers.h - what the store integration tests (test_store_redis.c,
 * test_store_cluster.c) share: requests with checking callbacks (on_data progress must be
 * monotonic and within the value and the iovec, on_done exactly once), bounded waits that
 * fail the test instead of hanging, and an alarm() watchdog per test for hangs inside the
 * library. Include after cmocka.h and shadow.h.
 */
#ifndef SHADOW_TEST_STORE_HELPERS_H
#define SHADOW_TEST_STORE_HELPERS_H

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "support/redis_server.h"

#define MiB (1u << 20)
#define TEST_ALARM_S 60     /* a test still running after this hung in the library */
#define SLACK_MS 250        /* scheduling slack on a shared 2-core machine */
#define RECONNECT_WAIT_MS 2000

static inline uint64_t now_ms(void)
{
	return shadow_now_ns() / 1000000u;
}

static inline void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

#define assert_status(got, want)                                                           \
	do {                                                                               \
		int g_ = (got), w_ = (want);                                               \
		if (g_ != w_)                                                              \
			fail_msg("status %d (%s), want %d (%s)", g_, shadow_strerror(g_), w_,     \
				 shadow_strerror(w_));                                     \
	} while (0)

/* shadow.h: node unreachable or connection lost. */
static inline bool is_conn_error(int st)
{
	return st == -ECONNREFUSED || st == -ECONNRESET || st == -EHOSTUNREACH;
}

#define assert_conn_error(got)                                                             \
	do {                                                                               \
		int g_ = (got);                                                            \
		if (!is_conn_error(g_))                                                    \
			fail_msg("status %d (%s), want a connection error (-ECONNREFUSED, "       \
				 "-ECONNRESET, -EHOSTUNREACH)", g_, shadow_strerror(g_));  \
	} while (0)

/* Deterministic bytes for a value: xorshift64 from seed, 8 bytes at a time. */
static inline void fill(void *buf, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
	uint8_t *p = buf;
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
	for (; i < n; i++)
		p[i] = (uint8_t)(x >> (8 * (i % 8))) ^ (uint8_t)i;
}

static inline void *xmalloc(size_t n)
{
	void *p = malloc(n != 0 ? n : 1);
	assert_non_null(p);
	return p;
}

/* What a request's callbacks saw. */
struct tracker {
	uint64_t last_landed;
	uint64_t value_nbytes;
	uint64_t iov_nbytes;
	uint32_t data_calls;
	uint32_t done_calls;
	char why[200];             /* first broken rule, "" if none */
	struct shadow_store *cancel_store; /* set: cancel from the first on_data */
	const void *snap_src;      /* set: copy snap_nbytes from here into snap in on_done */
	void *snap;
	size_t snap_nbytes;
	uint32_t *done_counter;    /* set: incremented in on_done */
	const uint8_t *expect;     /* set: the value, checked against dst as it lands */
	const uint8_t *dst;        /* the (contiguous) destination, with expect */
};

static inline void on_data(struct shadow_store_req *req, uint64_t value_nbytes,
			   uint64_t landed)
{
	struct tracker *t = req->user;

	if (t->why[0] == '\0') {
		if (t->done_calls != 0)
			snprintf(t->why, sizeof(t->why), "on_data after on_done");
		else if (t->data_calls > 0 && value_nbytes != t->value_nbytes)
			snprintf(t->why, sizeof(t->why), "value_nbytes changed %llu -> %llu",
				 (unsigned long long)t->value_nbytes,
				 (unsigned long long)value_nbytes);
		else if (landed < t->last_landed)
			snprintf(t->why, sizeof(t->why), "landed went back %llu -> %llu",
				 (unsigned long long)t->last_landed, (unsigned long long)landed);
		else if (landed > value_nbytes || landed > t->iov_nbytes)
			snprintf(t->why, sizeof(t->why),
				 "landed %llu beyond value %llu or iovec %llu",
				 (unsigned long long)landed, (unsigned long long)value_nbytes,
				 (unsigned long long)t->iov_nbytes);
	}
	/* shadow.h: once reported, bytes [0, landed) are in place; check the new ones. */
	if (t->expect != NULL && t->why[0] == '\0' && landed > t->last_landed &&
	    landed <= t->iov_nbytes &&
	    memcmp(t->dst + t->last_landed, t->expect + t->last_landed,
		   landed - t->last_landed) != 0)
		snprintf(t->why, sizeof(t->why), "bytes [%llu, %llu) reported landed but not in place",
			 (unsigned long long)t->last_landed, (unsigned long long)landed);
	t->value_nbytes = value_nbytes;
	t->last_landed = landed;
	t->data_calls++;
	if (t->cancel_store != NULL && t->data_calls == 1) {
		int rc = shadow_store_cancel(t->cancel_store, req);
		if (rc != 0 && t->why[0] == '\0')
			snprintf(t->why, sizeof(t->why), "cancel from on_data: %d", rc);
	}
}

static inline void on_done(struct shadow_store_req *req)
{
	struct tracker *t = req->user;

	if (req->status == SHADOW_STORE_PENDING && t->why[0] == '\0')
		snprintf(t->why, sizeof(t->why), "on_done with status PENDING");
	t->done_calls++;
	if (t->snap != NULL)
		memcpy(t->snap, t->snap_src, t->snap_nbytes);
	if (t->done_counter != NULL)
		(*t->done_counter)++;
}

static inline void req_init(struct shadow_store_req *req, struct tracker *t, uint32_t op,
			    const char *key, const struct iovec *iov, uint32_t iov_count)
{
	memset(req, 0, sizeof(*req));
	memset(t, 0, sizeof(*t));
	req->op = op;
	req->key = key;
	req->iov = iov;
	req->iov_count = iov_count;
	req->on_data = on_data;
	req->on_done = on_done;
	req->user = t;
	for (uint32_t i = 0; i < iov_count; i++)
		t->iov_nbytes += iov[i].iov_len;
}

/*
 * Poll until req's on_done ran, failing the test after limit_ms. Checks that on_done ran
 * exactly once and the callbacks kept their rules. Returns the status.
 */
static inline int wait_done(struct shadow_store *s, struct shadow_store_req *req,
			    uint64_t limit_ms)
{
	struct tracker *t = req->user;
	uint64_t end = now_ms() + limit_ms;

	while (t->done_calls == 0) {
		int rc = shadow_store_poll(s, 20);
		if (rc < 0)
			fail_msg("shadow_store_poll: %d (%s)", rc, shadow_strerror(rc));
		if (now_ms() > end && t->done_calls == 0)
			fail_msg("request op %u key '%s' not done after %llu ms (status %d)", req->op,
				 req->key != NULL ? req->key : "-", (unsigned long long)limit_ms,
				 req->status);
	}
	if (t->done_calls != 1)
		fail_msg("on_done called %u times", t->done_calls);
	if (t->why[0] != '\0')
		fail_msg("callbacks: %s", t->why);
	if (req->status == SHADOW_STORE_PENDING)
		fail_msg("status still PENDING after on_done");
	return req->status;
}

/*
 * shadow.h: after a successful submit, req->status is SHADOW_STORE_PENDING (the result comes
 * from a later poll). A breach is recorded rather than failed at once, so that it does not
 * hide what the rest of a test checks; test_contract() at the end fails on it.
 */
static char g_contract_breach[256];

static inline void check_pending_after_submit(const struct shadow_store_req *req)
{
	if (req->status != SHADOW_STORE_PENDING && g_contract_breach[0] == '\0')
		snprintf(g_contract_breach, sizeof(g_contract_breach),
			 "submit returned 0 but req->status was already %d (%s), not "
			 "SHADOW_STORE_PENDING (op %u, key '%s')", req->status,
			 shadow_strerror(req->status), req->op, req->key != NULL ? req->key : "-");
}

static inline void test_contract(void **state)
{
	(void)state;
	if (g_contract_breach[0] != '\0')
		fail_msg("%s", g_contract_breach);
}

/* Submit, which must succeed. */
static inline void submit_ok(struct shadow_store *s, struct shadow_store_req *req)
{
	int rc = shadow_store_submit(s, req);
	if (rc != 0)
		fail_msg("submit: %d (%s)", rc, shadow_strerror(rc));
	check_pending_after_submit(req);
}

/* Submit and wait; the request's own deadline bounds the wait (plus slack). */
static inline int run(struct shadow_store *s, struct shadow_store_req *req)
{
	int rc = shadow_store_submit(s, req);
	if (rc != 0)
		fail_msg("submit: %d (%s)", rc, shadow_strerror(rc));
	check_pending_after_submit(req);
	return wait_done(s, req, 10000 + 2 * SLACK_MS);
}

static inline int put_iov(struct shadow_store *s, const char *key, const struct iovec *iov,
			  uint32_t n, uint32_t ttl_s)
{
	struct shadow_store_req req;
	struct tracker t;

	req_init(&req, &t, SHADOW_STORE_PUT, key, iov, n);
	req.ttl_s = ttl_s;
	return run(s, &req);
}

static inline int put(struct shadow_store *s, const char *key, const void *buf, size_t n)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = n };
	return put_iov(s, key, &iov, 1, 0);
}

/*
 * GET into buf[0..cap); *value_nbytes_ret gets the value's length, *data_calls_ret (may be
 * NULL) how often on_data ran. Checks progress, and with `expect` (may be NULL) that every
 * byte reported landed is the value's.
 */
static inline int get_expect(struct shadow_store *s, const char *key, void *buf, size_t cap,
			     uint64_t *value_nbytes_ret, const void *expect,
			     uint32_t *data_calls_ret)
{
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct shadow_store_req req;
	struct tracker t;

	req_init(&req, &t, SHADOW_STORE_GET, key, &iov, cap > 0 ? 1 : 0);
	t.expect = expect;
	t.dst = buf;
	int st = run(s, &req);
	if (data_calls_ret != NULL)
		*data_calls_ret = t.data_calls;
	if (value_nbytes_ret != NULL)
		*value_nbytes_ret = req.value_nbytes;
	if (st == 0) {
		assert_int_equal(req.landed_nbytes, req.value_nbytes);
		if (req.value_nbytes > 0) {
			if (t.data_calls == 0)
				fail_msg("GET of %llu bytes: no on_data",
					 (unsigned long long)req.value_nbytes);
			assert_int_equal(t.last_landed, req.value_nbytes);
			assert_int_equal(t.value_nbytes, req.value_nbytes);
		}
	}
	return st;
}

/* GET into buf[0..cap); *value_nbytes_ret gets the value's length. Checks progress. */
static inline int get(struct shadow_store *s, const char *key, void *buf, size_t cap,
		      uint64_t *value_nbytes_ret)
{
	return get_expect(s, key, buf, cap, value_nbytes_ret, NULL, NULL);
}

static inline int del(struct shadow_store *s, const char *key, uint32_t *n_found_ret)
{
	struct shadow_store_req req;
	struct tracker t;

	req_init(&req, &t, SHADOW_STORE_DELETE, key, NULL, 0);
	int st = run(s, &req);
	*n_found_ret = req.n_found;
	return st;
}

static inline int exists(struct shadow_store *s, const char *const *keys, uint32_t n,
			 uint32_t *n_found_ret)
{
	struct shadow_store_req req;
	struct tracker t;

	req_init(&req, &t, SHADOW_STORE_EXISTS, NULL, NULL, 0);
	req.keys = keys;
	req.n_keys = n;
	int st = run(s, &req);
	*n_found_ret = req.n_found;
	return st;
}

static inline struct shadow_store_stats stats_of(struct shadow_store *s)
{
	struct shadow_store_stats st = { .size = sizeof(st) };

	assert_int_equal(shadow_store_stats(s, &st), 0);
	return st;
}

/* Short timeouts and quick reconnects, so fault tests stay fast. */
static inline void opts_fast(struct shadow_store_options *o)
{
	shadow_store_options_default(o);
	o->connect_timeout_ms = 500;
	o->request_timeout_ms = 2000;
	o->reconnect_min_ms = 10;
	o->reconnect_max_ms = 100;
}

static inline struct shadow_store *open_ok(const char *url,
					   const struct shadow_store_options *o)
{
	struct shadow_store *s = NULL;
	int rc = shadow_store_open(url, o, &s);

	if (rc != 0)
		fail_msg("open %s: %d (%s)", url, rc, shadow_strerror(rc));
	assert_non_null(s);
	return s;
}

/* Retry a small GET of `key` (expecting `want`, a C string) until the handle reconnected. */
static inline void get_eventually(struct shadow_store *s, const char *key, const char *want)
{
	uint64_t end = now_ms() + RECONNECT_WAIT_MS;
	char buf[64];
	uint64_t n;
	int st;

	for (;;) {
		st = get(s, key, buf, sizeof(buf), &n);
		if (st == 0 || now_ms() > end)
			break;
		if (!is_conn_error(st))
			fail_msg("GET %s while reconnecting: %d (%s)", key, st, shadow_strerror(st));
		sleep_ms(20);
	}
	if (st != 0)
		fail_msg("GET %s still failing %u ms later: %d (%s)", key, RECONNECT_WAIT_MS, st,
			 shadow_strerror(st));
	assert_int_equal(n, strlen(want));
	assert_memory_equal(buf, want, n);
}

static inline long long raw_int(struct shadow_test_redis *r, const char *cmd,
				const char *key)
{
	long long v = -99;
	assert_int_equal(shadow_test_redis_command_int(r, &v, cmd, key, NULL), 0);
	return v;
}

/* A log handler that drops everything (for a probe whose failure is the point). */
static inline void log_quiet(void *ctx, enum shadow_log_level level, const char *line)
{
	(void)ctx;
	(void)level;
	(void)line;
}

/* ---- watchdog ---- */

static inline void on_alarm(int sig)
{
	static const char msg[] = "store test: a test hung for 60 s (TEST_ALARM_S): aborting\n";
	(void)sig;
	ssize_t w = write(2, msg, sizeof(msg) - 1);
	(void)w;
	_exit(1);
}

static inline int arm(void **state)
{
	(void)state;
	signal(SIGALRM, on_alarm);
	alarm(TEST_ALARM_S);
	return 0;
}

static inline int disarm(void **state)
{
	(void)state;
	alarm(0);
	return 0;
}

#endif /* SHADOW_TEST_STORE_HELPERS_H */
