/*
 * test_store_redis.c - the redis:// store through the public API (shadow.h, "Stores"),
 * against real redis-server processes (tests/support/redis_server.h) and, for faults a real
 * server cannot produce on cue, the scripted fake server (tests/support/fake_resp.h).
 *
 * Covers: round trips from 0 B to 64 MiB with on_data progress, scattered iovecs, misses,
 * DELETE, EXISTS prefix semantics, 256 pipelined requests over 4 connections, TTLs, ACL
 * AUTH, SELECT, and faults: server down at open, SIGKILL and restart, a hung server
 * (deadlines), a server killed mid-value, wrong-type and malformed replies, values larger
 * than the iovec or than max_value_nbytes, cancel of a GET being streamed, close with
 * requests in flight. Every fault must complete within its deadline: no wait here is
 * unbounded (wait_done() fails the test instead), and an alarm ends a test that hangs
 * inside the library.
 *
 * Skips (77) without redis-server, and while the build has no redis backend
 * (shadow_store_open says SHADOW_EUNSUPPORTED).
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <shadow/shadow.h>

#include "support/fake_resp.h"
#include "support/redis_server.h"
#include "integration/store_helpers.h"

static struct shadow_test_redis *g_redis; /* shared server (group setup) */

/* ------------------------------------------------------------------------------------------ */
/* Data path                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void test_roundtrip_sizes(void **state)
{
	(void)state;
	static const size_t sizes[] = { 0, 1, 100, 1 * MiB, 64 * MiB };
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	uint64_t bytes = 0;
	char key[64];

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t n = sizes[i];
		uint8_t *src = xmalloc(n), *dst = xmalloc(n + 16);
		uint64_t got = 0;

		fill(src, n, n);
		memset(dst, 0xAA, n + 16);
		snprintf(key, sizeof(key), "rt:%zu", n);
		assert_status(put(s, key, src, n), 0);
		uint32_t calls = 0;
		assert_status(get_expect(s, key, dst, n, &got, src, &calls), 0);
		assert_int_equal(got, n);
		/* Streamed: a 64 MiB value does not land in one piece. */
		if (n == 64 * MiB && calls < 2)
			fail_msg("GET of 64 MiB: on_data called %u times, want progress", calls);
		if (n > 0)
			assert_memory_equal(dst, src, n);
		/* A destination larger than the value is fine; bytes beyond stay. */
		memset(dst, 0xAA, n + 16);
		assert_status(get(s, key, dst, n + 16, &got), 0);
		assert_int_equal(got, n);
		if (n > 0)
			assert_memory_equal(dst, src, n);
		assert_int_equal(dst[n], 0xAA);
		/* The server holds exactly the bytes. */
		assert_int_equal(raw_int(g_redis, "STRLEN", key), (long long)n);
		bytes += n;
		free(src);
		free(dst);
	}
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.puts, 5);
	assert_int_equal(st.gets, 10);
	assert_int_equal(st.hits, 10);
	assert_int_equal(st.misses, 0);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.bytes_out, bytes);
	assert_int_equal(st.bytes_in, 2 * bytes);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(st.nodes, 1);
	assert_true(st.connects >= 1);
	assert_true(shadow_store_fd(s) >= 0);
	shadow_store_close(s);
}

static void test_iovec_pieces(void **state)
{
	(void)state;
	const size_t n = 200001;
	uint8_t *src = xmalloc(n), *dst = xmalloc(n + 100);
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	struct shadow_store_req req;
	struct tracker t;

	fill(src, n, 7);
	/* PUT gathered from pieces (an empty one included). */
	struct iovec piov[] = { { src, 3 }, { NULL, 0 }, { src + 3, 60000 },
				{ src + 60003, n - 60003 } };
	assert_status(put_iov(s, "iov:v", piov, 4, 0), 0);

	/* GET scattered over pieces of 1, 0, 7, 4096, 65536 bytes and the rest (+100). */
	memset(dst, 0, n + 100);
	size_t cuts[] = { 1, 0, 7, 4096, 65536 };
	struct iovec giov[6];
	size_t off = 0;
	for (int i = 0; i < 5; i++) {
		giov[i].iov_base = cuts[i] > 0 ? dst + off : NULL;
		giov[i].iov_len = cuts[i];
		off += cuts[i];
	}
	giov[5].iov_base = dst + off;
	giov[5].iov_len = n + 100 - off;
	req_init(&req, &t, SHADOW_STORE_GET, "iov:v", giov, 6);
	assert_status(run(s, &req), 0);
	assert_int_equal(req.value_nbytes, n);
	assert_int_equal(t.last_landed, n);
	assert_memory_equal(dst, src, n);

	/* SHADOW_STORE_IOV_MAX pieces of uneven sizes. */
	struct iovec many[SHADOW_STORE_IOV_MAX];
	memset(dst, 0, n + 100);
	off = 0;
	for (uint32_t i = 0; i < SHADOW_STORE_IOV_MAX; i++) {
		size_t len = i + 1 < SHADOW_STORE_IOV_MAX ? (i * 131) % 5000 : n - off;
		many[i].iov_base = dst + off;
		many[i].iov_len = len;
		off += len;
	}
	req_init(&req, &t, SHADOW_STORE_GET, "iov:v", many, SHADOW_STORE_IOV_MAX);
	assert_status(run(s, &req), 0);
	assert_memory_equal(dst, src, n);
	shadow_store_close(s);
	free(src);
	free(dst);
}

static void test_miss(void **state)
{
	(void)state;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	char buf[16];
	uint64_t n = 123;

	assert_status(get(s, "miss:none", buf, sizeof(buf), &n), SHADOW_EMISS);
	assert_int_equal(n, 0);
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.gets, 1);
	assert_int_equal(st.misses, 1);
	assert_int_equal(st.hits, 0);
	assert_int_equal(st.errors, 0);
	shadow_store_close(s);
}

static void test_delete(void **state)
{
	(void)state;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	char buf[16];
	uint32_t found = 99;

	assert_status(put(s, "del:k", "value", 5), 0);
	assert_status(del(s, "del:k", &found), 0);
	assert_int_equal(found, 1);
	assert_status(del(s, "del:k", &found), 0);
	assert_int_equal(found, 0);
	assert_status(get(s, "del:k", buf, sizeof(buf), NULL), SHADOW_EMISS);
	assert_int_equal(raw_int(g_redis, "EXISTS", "del:k"), 0);
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.deletes, 2);
	assert_int_equal(st.errors, 0);
	shadow_store_close(s);
}

static void test_exists_prefix(void **state)
{
	(void)state;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	const char *keys[] = { "ex:0", "ex:1", "ex:2", "ex:3", "ex:4" };
	uint32_t found = 99;

	assert_status(put(s, "ex:0", "a", 1), 0);
	assert_status(put(s, "ex:1", "b", 1), 0);
	assert_status(put(s, "ex:2", "", 0), 0); /* an empty value exists */
	assert_status(put(s, "ex:4", "d", 1), 0); /* after the gap: not counted */
	assert_status(exists(s, keys, 5, &found), 0);
	assert_int_equal(found, 3);
	assert_status(exists(s, keys + 3, 2, &found), 0);
	assert_int_equal(found, 0);
	assert_status(exists(s, keys, 1, &found), 0);
	assert_int_equal(found, 1);
	const char *rev[] = { "ex:4", "ex:3", "ex:0" };
	assert_status(exists(s, rev, 3, &found), 0);
	assert_int_equal(found, 1);

	/* The most keys one EXISTS takes, all present; then with a hole in the middle. */
	static char names[SHADOW_STORE_EXISTS_MAX][24];
	static const char *all[SHADOW_STORE_EXISTS_MAX];
	struct shadow_store_req reqs[64];
	struct tracker ts[64];
	struct iovec one = { (void *)"x", 1 };
	uint32_t done = 0;
	for (uint32_t i = 0; i < SHADOW_STORE_EXISTS_MAX; i++) {
		snprintf(names[i], sizeof(names[i]), "ex:many:%u", i);
		all[i] = names[i];
	}
	for (uint32_t i = 0; i < SHADOW_STORE_EXISTS_MAX; i += 64) {
		done = 0;
		for (uint32_t j = 0; j < 64; j++) {
			req_init(&reqs[j], &ts[j], SHADOW_STORE_PUT, all[i + j], &one, 1);
			ts[j].done_counter = &done;
			submit_ok(s, &reqs[j]);
		}
		uint64_t end = now_ms() + 5000;
		while (done < 64 && now_ms() < end)
			assert_true(shadow_store_poll(s, 20) >= 0);
		assert_int_equal(done, 64);
		for (uint32_t j = 0; j < 64; j++)
			assert_status(reqs[j].status, 0);
	}
	assert_status(exists(s, all, SHADOW_STORE_EXISTS_MAX, &found), 0);
	assert_int_equal(found, SHADOW_STORE_EXISTS_MAX);
	assert_int_equal(raw_int(g_redis, "DEL", "ex:many:700"), 1);
	assert_status(exists(s, all, SHADOW_STORE_EXISTS_MAX, &found), 0);
	assert_int_equal(found, 700);

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.exists_keys, 5 + 2 + 1 + 3 + 2 * SHADOW_STORE_EXISTS_MAX);
	assert_int_equal(st.errors, 0);
	shadow_store_close(s);
}

static void test_keys(void **state)
{
	(void)state;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	char longkey[SHADOW_STORE_KEY_NBYTES_MAX + 2];
	char buf[32];
	uint64_t n;

	/* Keys are bulk strings: blanks, CRLF and RESP markers in them are just bytes. */
	const char *odd = "odd key\r\n$3\r\n*1 :x";
	assert_status(put(s, odd, "odd", 3), 0);
	assert_status(get(s, odd, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 3);
	long long v = -1;
	const char *argv[] = { "EXISTS", odd };
	size_t lens[] = { 6, strlen(odd) };
	char reply[32];
	assert_true(shadow_test_redis_commandv(g_redis, 2, argv, lens, reply, sizeof(reply)) > 0);
	assert_string_equal(reply, ":1\r\n");

	memset(longkey, 'k', SHADOW_STORE_KEY_NBYTES_MAX);
	longkey[SHADOW_STORE_KEY_NBYTES_MAX] = '\0';
	assert_status(put(s, longkey, "long", 4), 0);
	assert_status(get(s, longkey, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 4);
	v = raw_int(g_redis, "STRLEN", longkey);
	assert_int_equal(v, 4);

	/* Malformed requests are refused at submit, nothing is called back. */
	struct shadow_store_req req;
	struct tracker t;
	longkey[SHADOW_STORE_KEY_NBYTES_MAX] = 'k';
	longkey[SHADOW_STORE_KEY_NBYTES_MAX + 1] = '\0';
	req_init(&req, &t, SHADOW_STORE_GET, longkey, NULL, 0);
	assert_int_equal(shadow_store_submit(s, &req), -EINVAL);
	req_init(&req, &t, SHADOW_STORE_GET, "", NULL, 0);
	assert_int_equal(shadow_store_submit(s, &req), -EINVAL);
	assert_int_equal(shadow_store_poll(s, 0), 0);
	assert_int_equal(t.done_calls, 0);
	shadow_store_close(s);
}

static void test_pipelined(void **state)
{
	(void)state;
	enum { N = 256 };
	struct shadow_store_options o;
	shadow_store_options_default(&o);
	o.connections = 4;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), &o);
	static struct shadow_store_req reqs[N];
	static struct tracker ts[N];
	static struct iovec iov[N];
	static char keys[N][32];
	static uint8_t *src[N], *dst[N];
	static size_t len[N];
	uint32_t done = 0;

	for (int i = 0; i < N; i++) {
		len[i] = (size_t)(i * 37 % 8192) + 1 + (i % 16 == 0 ? 256 * 1024 : 0);
		src[i] = xmalloc(len[i]);
		dst[i] = xmalloc(len[i]);
		fill(src[i], len[i], 1000 + (uint64_t)i);
		memset(dst[i], 0, len[i]);
		snprintf(keys[i], sizeof(keys[i]), "pipe:%d", i);
	}
	for (int phase = 0; phase < 2; phase++) {
		uint32_t op = phase == 0 ? SHADOW_STORE_PUT : SHADOW_STORE_GET;
		done = 0;
		for (int i = 0; i < N; i++) {
			iov[i].iov_base = phase == 0 ? src[i] : dst[i];
			iov[i].iov_len = len[i];
			req_init(&reqs[i], &ts[i], op, keys[i], &iov[i], 1);
			ts[i].done_counter = &done;
			int rc;
			while ((rc = shadow_store_submit(s, &reqs[i])) == -EBUSY)
				assert_true(shadow_store_poll(s, 10) >= 0);
			assert_int_equal(rc, 0);
			check_pending_after_submit(&reqs[i]);
		}
		/* All N in flight at once (max_requests is 1024). */
		assert_int_equal(stats_of(s).in_flight, N - done);
		uint64_t end = now_ms() + 10000;
		while (done < N && now_ms() < end)
			assert_true(shadow_store_poll(s, 20) >= 0);
		if (done < N)
			fail_msg("phase %d: %u of %d requests done after 10 s", phase, done, N);
		for (int i = 0; i < N; i++) {
			if (reqs[i].status != 0)
				fail_msg("phase %d request %d: %d (%s)", phase, i, reqs[i].status,
					 shadow_strerror(reqs[i].status));
			if (ts[i].done_calls != 1 || ts[i].why[0] != '\0')
				fail_msg("request %d: on_done %u times; %s", i, ts[i].done_calls,
					 ts[i].why);
		}
	}
	for (int i = 0; i < N; i++) {
		assert_int_equal(reqs[i].value_nbytes, len[i]);
		if (memcmp(src[i], dst[i], len[i]) != 0)
			fail_msg("GET %s: wrong bytes (another request's value?)", keys[i]);
		free(src[i]);
		free(dst[i]);
	}
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.puts, N);
	assert_int_equal(st.hits, N);
	assert_int_equal(st.errors, 0);
	/* connections=4: the server sees (at least) 4 clients besides our own probe. */
	char info[4096];
	assert_true(shadow_test_redis_command(g_redis, info, sizeof(info), "INFO", "clients",
					      NULL) > 0);
	char *p = strstr(info, "connected_clients:");
	assert_non_null(p);
	if (atoi(p + 18) < 5)
		fail_msg("connections=4 but the server sees %d clients (with this probe)",
			 atoi(p + 18));
	shadow_store_close(s);
}

static void test_ttl(void **state)
{
	(void)state;
	char url[128];
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	uint64_t t0 = now_ms();

	/* ttl_s on the request: SET ... EX 1. */
	struct iovec v = { (void *)"soon", 4 };
	assert_status(put_iov(s, "ttl:short", &v, 1, 1), 0);
	long long ttl = raw_int(g_redis, "TTL", "ttl:short");
	assert_in_range(ttl, 0, 1);
	/* No TTL anywhere: none. */
	assert_status(put_iov(s, "ttl:none", &v, 1, 0), 0);
	assert_int_equal(raw_int(g_redis, "TTL", "ttl:none"), -1);

	/* The handle's default from the URL; a request's own ttl_s wins. */
	snprintf(url, sizeof(url), "%s?ttl=100", shadow_test_redis_url(g_redis));
	struct shadow_store *s2 = open_ok(url, NULL);
	assert_status(put_iov(s2, "ttl:url", &v, 1, 0), 0);
	assert_in_range(raw_int(g_redis, "TTL", "ttl:url"), 90, 100);
	assert_status(put_iov(s2, "ttl:req", &v, 1, 7), 0);
	assert_in_range(raw_int(g_redis, "TTL", "ttl:req"), 5, 7);
	shadow_store_close(s2);
	/* ... and from the options. */
	struct shadow_store_options o;
	shadow_store_options_default(&o);
	o.ttl_s = 50;
	s2 = open_ok(shadow_test_redis_url(g_redis), &o);
	assert_status(put_iov(s2, "ttl:opt", &v, 1, 0), 0);
	assert_in_range(raw_int(g_redis, "TTL", "ttl:opt"), 40, 50);
	shadow_store_close(s2);

	/* ttl:short is gone about 1 s after its PUT; look at 2.1 s. */
	uint64_t t = now_ms() - t0;
	if (t < 2100)
		sleep_ms((unsigned)(2100 - t));
	const char *k[] = { "ttl:short" };
	uint32_t found = 9;
	assert_status(exists(s, k, 1, &found), 0);
	assert_int_equal(found, 0);
	char buf[8];
	assert_status(get(s, "ttl:short", buf, sizeof(buf), NULL), SHADOW_EMISS);
	k[0] = "ttl:none";
	assert_status(exists(s, k, 1, &found), 0);
	assert_int_equal(found, 1);
	shadow_store_close(s);
}

/* ------------------------------------------------------------------------------------------ */
/* Authentication and databases                                                               */
/* ------------------------------------------------------------------------------------------ */

static void test_auth_acl(void **state)
{
	(void)state;
	struct shadow_test_redis *r = NULL;
	struct shadow_test_redis_options ro = { .password = "defpw", .user = "alice",
						.user_password = "s3cret" };
	struct shadow_store_options o;
	struct shadow_store *s = NULL;
	char url[256], buf[16];
	uint64_t n;

	opts_fast(&o);
	assert_int_equal(shadow_test_redis_start(&ro, &r), 0);
	const char *addr = shadow_test_redis_addr(r);

	/* The ACL user: ok, and the data is there for others to see. */
	snprintf(url, sizeof(url), "redis://alice:s3cret@%s", addr);
	s = open_ok(url, &o);
	assert_status(put(s, "auth:k", "hello", 5), 0);
	assert_status(get(s, "auth:k", buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 5);
	assert_int_equal(raw_int(r, "EXISTS", "auth:k"), 1);
	shadow_store_close(s);

	/* The default user by password alone. */
	snprintf(url, sizeof(url), "redis://:defpw@%s", addr);
	s = open_ok(url, &o);
	assert_status(get(s, "auth:k", buf, sizeof(buf), &n), 0);
	shadow_store_close(s);

	/* Wrong passwords fail at open, quickly. */
	static const char *const bad[] = { "alice:wrong@", ":wrong@", "bob:s3cret@", "" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(url, sizeof(url), "redis://%s%s", bad[i], addr);
		uint64_t t0 = now_ms();
		s = NULL;
		int rc = shadow_store_open(url, &o, &s);
		if (rc != -EACCES)
			fail_msg("open %s: %d (%s), want -EACCES", url, rc, shadow_strerror(rc));
		assert_null(s);
		assert_true(now_ms() - t0 < o.connect_timeout_ms + SLACK_MS);
	}

	/* The password from the environment (shadow.h: it may replace the URL's). */
	assert_int_equal(setenv("SHADOW_REDIS_PASSWORD", "s3cret", 1), 0);
	snprintf(url, sizeof(url), "redis://alice@%s", addr);
	s = NULL;
	int rc = shadow_store_open(url, &o, &s);
	unsetenv("SHADOW_REDIS_PASSWORD");
	if (rc != 0)
		fail_msg("open %s with SHADOW_REDIS_PASSWORD: %d (%s)", url, rc,
			 shadow_strerror(rc));
	assert_status(get(s, "auth:k", buf, sizeof(buf), &n), 0);
	shadow_store_close(s);
	shadow_test_redis_stop(r);
}

static void test_select_db(void **state)
{
	(void)state;
	char url[128], buf[16];
	uint64_t n;

	snprintf(url, sizeof(url), "%s/3", shadow_test_redis_url(g_redis));
	struct shadow_store *s3 = open_ok(url, NULL);
	snprintf(url, sizeof(url), "%s/0", shadow_test_redis_url(g_redis));
	struct shadow_store *s0 = open_ok(url, NULL);
	struct shadow_store *sd = open_ok(shadow_test_redis_url(g_redis), NULL);

	assert_status(put(s3, "db:k", "three", 5), 0);
	assert_status(get(s3, "db:k", buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 5);
	assert_status(get(s0, "db:k", buf, sizeof(buf), &n), SHADOW_EMISS);
	assert_status(get(sd, "db:k", buf, sizeof(buf), &n), SHADOW_EMISS);
	assert_int_equal(raw_int(g_redis, "EXISTS", "db:k"), 0);
	assert_status(put(s0, "db:k", "zero!!", 6), 0);
	assert_status(get(s3, "db:k", buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 5);
	assert_memory_equal(buf, "three", 5);
	assert_status(get(sd, "db:k", buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 6);
	shadow_store_close(s3);
	shadow_store_close(s0);
	shadow_store_close(sd);

	struct shadow_store *s = NULL;
	snprintf(url, sizeof(url), "%s/notadb", shadow_test_redis_url(g_redis));
	assert_status(shadow_store_open(url, NULL, &s), -EINVAL);
	snprintf(url, sizeof(url), "%s?nosuchoption=1", shadow_test_redis_url(g_redis));
	assert_status(shadow_store_open(url, NULL, &s), -EINVAL);
}

/* ------------------------------------------------------------------------------------------ */
/* Faults                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void test_down_at_open(void **state)
{
	(void)state;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	struct shadow_store_options o;
	struct shadow_store *s = NULL;
	char url[64];

	/* A port bound but not listening: connections are refused, and nobody can take it. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	snprintf(url, sizeof(url), "redis://127.0.0.1:%u", ntohs(a.sin_port));
	opts_fast(&o);
	uint64_t t0 = now_ms();
	assert_status(shadow_store_open(url, &o, &s), -ECONNREFUSED);
	assert_null(s);
	assert_true(now_ms() - t0 < o.connect_timeout_ms + SLACK_MS);
	close(fd);

	/* A server that accepts and hangs up at once. */
	struct shadow_fake_resp *f = NULL;
	assert_int_equal(shadow_fake_resp_start(&f), 0);
	shadow_fake_resp_set_accept(f, SHADOW_FAKE_ACCEPT_CLOSE);
	t0 = now_ms();
	int rc = shadow_store_open(shadow_fake_resp_url(f), &o, &s);
	if (rc == 0) {
		/* Allowed only if open did not wait for an answer; then requests fail. */
		char buf[8];
		assert_conn_error(get(s, "k", buf, sizeof(buf), NULL));
		shadow_store_close(s);
	} else {
		assert_conn_error(rc);
	}
	assert_true(now_ms() - t0 < o.connect_timeout_ms + SLACK_MS);
	assert_true(shadow_fake_resp_accepted(f) >= 1);
	shadow_fake_resp_stop(f);
}

static void test_kill_restart(void **state)
{
	(void)state;
	struct shadow_test_redis *r = NULL;
	struct shadow_store_options o;
	char buf[16];

	assert_int_equal(shadow_test_redis_start(NULL, &r), 0);
	opts_fast(&o);
	o.request_timeout_ms = 1000;
	struct shadow_store *s = open_ok(shadow_test_redis_url(r), &o);
	assert_status(put(s, "kr:k", "before", 6), 0);

	assert_int_equal(shadow_test_redis_kill(r), 0);
	for (int i = 0; i < 3; i++) {
		uint64_t t0 = now_ms();
		int st = get(s, "kr:k", buf, sizeof(buf), NULL);
		uint64_t dt = now_ms() - t0;
		if (!is_conn_error(st))
			fail_msg("GET %d after SIGKILL: %d (%s), want a connection error", i, st,
				 shadow_strerror(st));
		if (dt > o.request_timeout_ms + SLACK_MS)
			fail_msg("GET %d after SIGKILL took %llu ms (deadline %u ms)", i,
				 (unsigned long long)dt, o.request_timeout_ms);
	}
	struct shadow_store_stats st = stats_of(s);
	assert_true(st.disconnects >= 1);
	assert_true(st.errors >= 3);

	/* Back (empty: no persistence); the handle reconnects by itself. */
	assert_int_equal(shadow_test_redis_restart(r), 0);
	assert_int_equal(raw_int(r, "DBSIZE", NULL), 0);
	uint64_t end = now_ms() + RECONNECT_WAIT_MS;
	int rc;
	while ((rc = put(s, "kr:k", "after", 5)) != 0 && now_ms() < end) {
		assert_conn_error(rc);
		sleep_ms(20);
	}
	assert_status(rc, 0);
	get_eventually(s, "kr:k", "after");
	st = stats_of(s);
	assert_true(st.connects >= 2);
	shadow_store_close(s);
	shadow_test_redis_stop(r);
}

static void test_slow_server(void **state)
{
	(void)state;
	struct shadow_fake_resp *f = NULL;
	struct shadow_store_options o;
	struct shadow_store_req req;
	struct tracker t;
	char buf[16];
	struct iovec iov = { buf, sizeof(buf) };

	assert_int_equal(shadow_fake_resp_start(&f), 0);
	struct shadow_fake_rule rule = { .command = "GET", .action = SHADOW_FAKE_SILENT };
	assert_int_equal(shadow_fake_resp_add(f, &rule), 0);
	opts_fast(&o);
	o.connections = 1;
	o.request_timeout_ms = 200;
	struct shadow_store *s = open_ok(shadow_fake_resp_url(f), &o);

	/* A deadline already past: fails on the next poll, never inside submit. */
	req_init(&req, &t, SHADOW_STORE_GET, "slow:k3", &iov, 1);
	req.deadline_ns = shadow_now_ns() - 1;
	submit_ok(s, &req);
	assert_int_equal(t.done_calls, 0);
	assert_status(wait_done(s, &req, SLACK_MS), -ETIMEDOUT);

	/* An explicit deadline 300 ms away. */
	req_init(&req, &t, SHADOW_STORE_GET, "slow:k", &iov, 1);
	uint64_t t0 = shadow_now_ns();
	req.deadline_ns = t0 + 300 * 1000000ull;
	submit_ok(s, &req);
	/* poll(-1) must come back when the deadline passes. */
	while (t.done_calls == 0)
		assert_true(shadow_store_poll(s, -1) >= 0);
	uint64_t ms = (shadow_now_ns() - t0) / 1000000u;
	assert_status(req.status, -ETIMEDOUT);
	print_message("deadline 300 ms: completed after %llu ms\n", (unsigned long long)ms);
	if (ms < 295 || ms > 300 + SLACK_MS)
		fail_msg("deadline 300 ms: completed after %llu ms", (unsigned long long)ms);
	assert_int_equal(t.data_calls, 0);

	/* No deadline: request_timeout_ms (200) from submission. */
	req_init(&req, &t, SHADOW_STORE_GET, "slow:k2", &iov, 1);
	t0 = shadow_now_ns();
	submit_ok(s, &req);
	assert_status(wait_done(s, &req, 200 + SLACK_MS), -ETIMEDOUT);
	ms = (shadow_now_ns() - t0) / 1000000u;
	print_message("request_timeout_ms 200: completed after %llu ms\n", (unsigned long long)ms);
	if (ms < 195)
		fail_msg("request_timeout_ms 200 after an earlier timeout on the connection: "
			 "-ETIMEDOUT after %llu ms, before the deadline", (unsigned long long)ms);

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.timeouts, 3);
	assert_int_equal(st.errors, 3);
	assert_int_equal(st.in_flight, 0);
	shadow_store_close(s);
	shadow_fake_resp_stop(f);
}

static void test_killed_mid_value(void **state)
{
	(void)state;
	struct shadow_fake_resp *f = NULL;
	struct shadow_store_options o;
	static char head[1100];
	char buf[1000];

	assert_int_equal(shadow_fake_resp_start(&f), 0);
	int h = snprintf(head, sizeof(head), "$1000\r\n");
	memset(head + h, 'x', 500);
	struct shadow_fake_rule rule = { .command = "GET", .times = 1,
					 .action = SHADOW_FAKE_REPLY_CLOSE, .bytes = head,
					 .nbytes = (size_t)h + 500 };
	assert_int_equal(shadow_fake_resp_add(f, &rule), 0);
	assert_int_equal(shadow_fake_resp_reply(f, "GET", 0, "$5\r\nhello\r\n"), 0);
	opts_fast(&o);
	o.connections = 1;
	struct shadow_store *s = open_ok(shadow_fake_resp_url(f), &o);

	struct iovec iov = { buf, sizeof(buf) };
	struct shadow_store_req req;
	struct tracker t;
	req_init(&req, &t, SHADOW_STORE_GET, "mid:k", &iov, 1);
	uint64_t t0 = now_ms();
	int st = run(s, &req);
	assert_conn_error(st);
	assert_true(now_ms() - t0 < o.request_timeout_ms + SLACK_MS);
	assert_true(req.landed_nbytes <= 500);
	assert_true(t.last_landed <= 500);
	struct shadow_store_stats ss = stats_of(s);
	assert_true(ss.disconnects >= 1);
	assert_int_equal(ss.hits, 0);

	/* The same handle serves the next request (after reconnecting). */
	get_eventually(s, "mid:k", "hello");
	shadow_store_close(s);
	shadow_fake_resp_stop(f);
}

static void test_wrongtype(void **state)
{
	(void)state;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	char reply[64], buf[16];
	uint64_t n;

	assert_true(shadow_test_redis_command(g_redis, reply, sizeof(reply), "RPUSH", "wt:list",
					      "a", NULL) > 0);
	assert_status(put(s, "wt:str", "fine", 4), 0);
	assert_status(get(s, "wt:list", buf, sizeof(buf), &n), SHADOW_ESERVER);
	/* The connection stays in step: the next GET gets its own reply. */
	assert_status(get(s, "wt:str", buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 4);
	assert_memory_equal(buf, "fine", 4);
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.server_errors, 1);
	assert_int_equal(st.errors, 1);
	assert_int_equal(st.protocol_errors, 0);
	shadow_store_close(s);
}

/*
 * A fake that answers the first GET with `bad`, then "$2\r\nok\r\n": the GET's status is
 * compared with `want` (a mismatch is described into `errs`, so that one test reports every
 * case), and the handle must serve the next GET.
 */
static void fake_bad_reply(const char *bad, int want, bool protocol_error, char *errs,
			   size_t errs_nbytes)
{
	char shown[64];
	size_t w = 0;

	for (const char *p = bad; *p != '\0' && w + 3 < sizeof(shown); p++) {
		if (*p == '\r' || *p == '\n') {
			shown[w++] = '\\';
			shown[w++] = *p == '\r' ? 'r' : 'n';
		} else {
			shown[w++] = *p;
		}
	}
	shown[w] = '\0';

	struct shadow_fake_resp *f = NULL;
	struct shadow_store_options o;
	char buf[16];

	assert_int_equal(shadow_fake_resp_start(&f), 0);
	assert_int_equal(shadow_fake_resp_reply(f, "GET", 1, bad), 0);
	assert_int_equal(shadow_fake_resp_reply(f, "GET", 0, "$2\r\nok\r\n"), 0);
	opts_fast(&o);
	o.connections = 1;
	struct shadow_store *s = open_ok(shadow_fake_resp_url(f), &o);
	int st = get(s, "bad:k", buf, sizeof(buf), NULL);
	struct shadow_store_stats ss = stats_of(s);
	size_t len = strlen(errs);
	if (st != want)
		snprintf(errs + len, errs_nbytes - len, "\n  reply \"%s\" to GET: %d (%s), want %d (%s)",
			 shown, st, shadow_strerror(st), want, shadow_strerror(want));
	len = strlen(errs);
	if (protocol_error && ss.protocol_errors < 1)
		snprintf(errs + len, errs_nbytes - len,
			 "\n  reply \"%s\" to GET: stats.protocol_errors %llu, want >= 1", shown,
			 (unsigned long long)ss.protocol_errors);
	assert_int_equal(ss.errors, 1);
	get_eventually(s, "bad:k", "ok");
	shadow_store_close(s);
	shadow_fake_resp_stop(f);
}

static void test_fake_wrong_reply_type(void **state)
{
	(void)state;
	char errs[1024] = "";

	/* Valid RESP, but not an answer a GET can have. */
	fake_bad_reply(":1\r\n", SHADOW_EPROTO, false, errs, sizeof(errs));
	fake_bad_reply("*1\r\n$1\r\na\r\n", SHADOW_EPROTO, false, errs, sizeof(errs));
	fake_bad_reply("+OK\r\n", SHADOW_EPROTO, false, errs, sizeof(errs));
	if (errs[0] != '\0')
		fail_msg("%s", errs);
}

static void test_fake_garbage(void **state)
{
	(void)state;
	char errs[1024] = "";

	fake_bad_reply("@@garbage\r\n", SHADOW_EPROTO, true, errs, sizeof(errs));
	fake_bad_reply("$abc\r\n", SHADOW_EPROTO, true, errs, sizeof(errs));
	fake_bad_reply("$-7\r\n", SHADOW_EPROTO, true, errs, sizeof(errs));
	/* no CRLF after the payload */
	fake_bad_reply("$3\r\nabcXY", SHADOW_EPROTO, true, errs, sizeof(errs));
	if (errs[0] != '\0')
		fail_msg("%s", errs);
}

static void test_value_larger_than_iovec(void **state)
{
	(void)state;
	const size_t n = 100 * 1024, cap = 10 * 1024;
	uint8_t *src = xmalloc(n), *dst = xmalloc(2 * cap), *full = xmalloc(n);
	struct shadow_store_options o;
	shadow_store_options_default(&o);
	o.connections = 1; /* both GETs on one connection: the discard must keep it in step */
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), &o);

	fill(src, n, 42);
	assert_status(put(s, "big:k", src, n), 0);
	memset(dst, 0xEE, 2 * cap);
	struct iovec small = { dst, cap }, whole = { full, n };
	struct shadow_store_req r1, r2;
	struct tracker t1, t2;
	req_init(&r1, &t1, SHADOW_STORE_GET, "big:k", &small, 1);
	req_init(&r2, &t2, SHADOW_STORE_GET, "big:k", &whole, 1);
	submit_ok(s, &r1);
	submit_ok(s, &r2); /* pipelined behind it */
	assert_status(wait_done(s, &r1, 5000), SHADOW_ELIMIT);
	assert_int_equal(r1.value_nbytes, n);
	assert_true(t1.last_landed <= cap);
	for (size_t i = cap; i < 2 * cap; i++) {
		if (dst[i] != 0xEE)
			fail_msg("byte %zu past a %zu-byte iovec was written", i, cap);
	}
	assert_status(wait_done(s, &r2, 5000), 0);
	assert_memory_equal(full, src, n);
	/* And again, one at a time. */
	assert_status(get(s, "big:k", dst, cap, NULL), SHADOW_ELIMIT);
	assert_status(get(s, "big:k", full, n, NULL), 0);
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.oversize, 2);
	assert_int_equal(st.hits, 2);
	assert_int_equal(st.disconnects, 0);
	shadow_store_close(s);
	free(src);
	free(dst);
	free(full);
}

static void test_value_larger_than_max(void **state)
{
	(void)state;
	const size_t n = 100 * 1024;
	uint8_t *src = xmalloc(n), *dst = xmalloc(MiB);
	struct shadow_store_options o;
	opts_fast(&o);
	o.max_value_nbytes = 64 * 1024;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), &o);
	struct shadow_store *plain = open_ok(shadow_test_redis_url(g_redis), NULL);
	struct shadow_store_req req;
	struct tracker t;

	fill(src, n, 5);
	/* A PUT above the limit is refused at submit. */
	struct iovec iov = { src, n };
	req_init(&req, &t, SHADOW_STORE_PUT, "max:k", &iov, 1);
	assert_status(shadow_store_submit(s, &req), SHADOW_ELIMIT);
	assert_status(put(plain, "max:k", src, n), 0);
	assert_status(put(plain, "max:small", "small", 5), 0);

	/* A GET of it fails even though the iovec would hold it. */
	iov = (struct iovec){ dst, MiB };
	req_init(&req, &t, SHADOW_STORE_GET, "max:k", &iov, 1);
	assert_status(run(s, &req), SHADOW_ELIMIT);
	assert_int_equal(req.value_nbytes, n);
	assert_true(req.landed_nbytes <= o.max_value_nbytes);
	assert_int_equal(stats_of(s).oversize, 1);
	/* The handle carries on (the connection may have been reset for it). */
	get_eventually(s, "max:small", "small");
	shadow_store_close(s);
	shadow_store_close(plain);
	free(src);
	free(dst);
}

static void test_cancel_streaming_fake(void **state)
{
	(void)state;
	struct shadow_fake_resp *f = NULL;
	struct shadow_store_options o;
	const size_t n = 20000;
	char *head = xmalloc(64 + 1000), *tail = xmalloc(n);
	uint8_t *buf = xmalloc(n), *snap = xmalloc(n);

	/* The value arrives in two parts 300 ms apart; the GET is cancelled in between. */
	assert_int_equal(shadow_fake_resp_start(&f), 0);
	int h = snprintf(head, 64, "$%zu\r\n", n);
	memset(head + h, 'A', 1000);
	memset(tail, 'B', n - 1000);
	memcpy(tail + n - 1000, "\r\n", 2);
	struct shadow_fake_rule rule = { .command = "GET", .times = 1, .bytes = head,
					 .nbytes = (size_t)h + 1000, .tail = tail,
					 .tail_nbytes = n - 1000 + 2, .tail_delay_ms = 300 };
	assert_int_equal(shadow_fake_resp_add(f, &rule), 0);
	assert_int_equal(shadow_fake_resp_reply(f, "GET", 0, "$2\r\nok\r\n"), 0);
	opts_fast(&o);
	o.connections = 1;
	struct shadow_store *s = open_ok(shadow_fake_resp_url(f), &o);

	memset(buf, 0, n);
	struct iovec iov = { buf, n };
	struct shadow_store_req req;
	struct tracker t;
	req_init(&req, &t, SHADOW_STORE_GET, "cancel:k", &iov, 1);
	t.snap_src = buf;
	t.snap = snap;
	t.snap_nbytes = n;
	submit_ok(s, &req);
	uint64_t end = now_ms() + 2000;
	while (t.last_landed < 1000 && now_ms() < end)
		assert_true(shadow_store_poll(s, 20) >= 0);
	if (t.last_landed != 1000)
		fail_msg("first part: landed %llu, want 1000", (unsigned long long)t.last_landed);
	assert_int_equal(t.value_nbytes, n);
	assert_int_equal(shadow_store_cancel(s, &req), 0);
	assert_int_equal(t.done_calls, 0); /* on_done only from poll */
	assert_status(wait_done(s, &req, 1000), -ECANCELED);
	assert_memory_equal(buf, snap, n); /* nothing since... */

	/* The next GET waits behind the cancelled one's tail, which must go nowhere. */
	char ok[8];
	uint64_t got;
	assert_status(get(s, "cancel:k2", ok, sizeof(ok), &got), 0);
	assert_int_equal(got, 2);
	assert_memory_equal(ok, "ok", 2);
	if (memcmp(buf, snap, n) != 0)
		fail_msg("the cancelled GET's buffer was written after its on_done");
	assert_null(memchr(buf, 'B', n));
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.cancels, 1);
	assert_int_equal(st.hits, 1);
	assert_int_equal(shadow_store_cancel(s, &req), -ENOENT);
	shadow_store_close(s);
	shadow_fake_resp_stop(f);
	free(head);
	free(tail);
	free(buf);
	free(snap);
}

static void test_cancel_streaming_real(void **state)
{
	(void)state;
	const size_t n = 16 * MiB;
	uint8_t *src = xmalloc(n), *buf = xmalloc(n), *snap = xmalloc(n);
	struct shadow_store_options o;
	shadow_store_options_default(&o);
	o.connections = 1;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), &o);

	fill(src, n, 16);
	assert_status(put(s, "cancel:big", src, n), 0);
	assert_status(put(s, "cancel:small", "small", 5), 0);
	memset(buf, 0, n);
	/* Cancelled from its first on_data (callbacks may cancel), snapshot at on_done. */
	struct iovec iov = { buf, n };
	struct shadow_store_req req;
	struct tracker t;
	req_init(&req, &t, SHADOW_STORE_GET, "cancel:big", &iov, 1);
	t.cancel_store = s;
	t.snap_src = buf;
	t.snap = snap;
	t.snap_nbytes = n;
	submit_ok(s, &req);
	assert_status(wait_done(s, &req, 5000), -ECANCELED);
	assert_int_equal(t.data_calls, 1);
	get_eventually(s, "cancel:small", "small");
	if (memcmp(buf, snap, n) != 0)
		fail_msg("the cancelled GET's buffer was written after its on_done");
	assert_int_equal(stats_of(s).cancels, 1);
	shadow_store_close(s);
	free(src);
	free(buf);
	free(snap);
}

/*
 * An outer event loop (shadow.h, shadow_store_fd): sleep in poll() on the store's fd and
 * call shadow_store_poll(s, 0) whenever it is readable. The fd must wake the loop for
 * replies and for deadlines, or such a loop would hang.
 */
static int outer_wait(struct shadow_store *s, struct shadow_store_req *req, int fd_wait_ms,
		      uint64_t limit_ms)
{
	struct tracker *t = req->user;
	uint64_t end = now_ms() + limit_ms;
	int fd = shadow_store_fd(s);

	assert_true(fd >= 0);
	for (;;) {
		assert_true(shadow_store_poll(s, 0) >= 0);
		if (t->done_calls != 0)
			break;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, fd_wait_ms) == 0)
			fail_msg("store fd not readable for %d ms while op %u key '%s' is in flight "
				 "(its deadline %s)", fd_wait_ms, req->op, req->key,
				 shadow_now_ns() > req->deadline_ns ? "has passed" : "is ahead");
		if (now_ms() > end)
			fail_msg("op %u not done after %llu ms in an outer poll loop", req->op,
				 (unsigned long long)limit_ms);
	}
	assert_int_equal(t->done_calls, 1);
	return req->status;
}

static void test_fd_outer_loop(void **state)
{
	(void)state;
	struct shadow_store *s = open_ok(shadow_test_redis_url(g_redis), NULL);
	struct shadow_store_req req;
	struct tracker t;
	char buf[16];
	struct iovec iov = { (void *)"outer", 5 };

	req_init(&req, &t, SHADOW_STORE_PUT, "fd:k", &iov, 1);
	submit_ok(s, &req);
	assert_status(outer_wait(s, &req, 2000, 5000), 0);
	iov = (struct iovec){ buf, sizeof(buf) };
	req_init(&req, &t, SHADOW_STORE_GET, "fd:k", &iov, 1);
	submit_ok(s, &req);
	assert_status(outer_wait(s, &req, 2000, 5000), 0);
	assert_int_equal(req.value_nbytes, 5);
	assert_memory_equal(buf, "outer", 5);
	shadow_store_close(s);

	/* A deadline with no reply: the fd must wake the loop when it passes. */
	struct shadow_fake_resp *f = NULL;
	struct shadow_store_options o;
	assert_int_equal(shadow_fake_resp_start(&f), 0);
	struct shadow_fake_rule rule = { .command = "GET", .action = SHADOW_FAKE_SILENT };
	assert_int_equal(shadow_fake_resp_add(f, &rule), 0);
	opts_fast(&o);
	s = open_ok(shadow_fake_resp_url(f), &o);
	req_init(&req, &t, SHADOW_STORE_GET, "fd:slow", &iov, 1);
	uint64_t t0 = now_ms();
	req.deadline_ns = shadow_now_ns() + 200 * 1000000ull;
	submit_ok(s, &req);
	assert_status(outer_wait(s, &req, 1000, 3000), -ETIMEDOUT);
	uint64_t ms = now_ms() - t0;
	if (ms > 200 + SLACK_MS)
		fail_msg("deadline 200 ms in an outer poll loop: done after %llu ms",
			 (unsigned long long)ms);
	shadow_store_close(s);
	shadow_fake_resp_stop(f);
}

/*
 * Regression: with nothing in flight the store's fd must still go quiet after a poll. The
 * connections' set-up (connect completing, a handshake's SELECT, its reply, the connect
 * timeout's timer coming due after all is done) makes it readable; shadow_store_poll() used to return at once when nothing was in
 * flight, leaving the fd readable for good, so an idle shadowd fetch thread, which sleeps on
 * it, spun on a core (50-100% of one per idle fetch thread on a redis://HOST:PORT/DB store).
 */
static void test_fd_quiet_when_idle(void **state)
{
	(void)state;
	char url[128];
	/* A database number: its SELECT is queued at connect, to be sent by a poll. */
	snprintf(url, sizeof(url), "%s/2?connections=2", shadow_test_redis_url(g_redis));
	struct shadow_store_options o;
	opts_fast(&o); /* 500 ms connect timeout: its timer comes due during the test */
	struct shadow_store *s = open_ok(url, &o);
	int fd = shadow_store_fd(s);
	struct pollfd p = { .fd = fd, .events = POLLIN };

	assert_true(fd >= 0);
	for (int round = 0; round < 2; round++) {
		/* Let whatever the connections and timers have to say come, then take it in. */
		usleep(700 * 1000);
		for (int i = 0; i < 5; i++)
			assert_int_equal(shadow_store_poll(s, 0), 0);
		if (poll(&p, 1, 0) != 0)
			fail_msg("store fd still readable after polls with nothing in flight "
				 "(round %d)", round);
		if (round == 0) {
			/* Again after a request came and went. */
			struct shadow_store_req req;
			struct tracker t;
			struct iovec iov = { (void *)"idle", 4 };
			req_init(&req, &t, SHADOW_STORE_PUT, "fd:idle", &iov, 1);
			submit_ok(s, &req);
			assert_int_equal(shadow_store_wait(s, &req), 0);
		}
	}
	shadow_store_close(s);
}

static void test_close_in_flight(void **state)
{
	(void)state;
	struct shadow_fake_resp *f = NULL;
	struct shadow_store_options o;
	char buf[8];
	struct iovec iov = { buf, sizeof(buf) };
	struct shadow_store_req req[3];
	struct tracker t[3];

	assert_int_equal(shadow_fake_resp_start(&f), 0);
	struct shadow_fake_rule rule = { .command = "GET", .action = SHADOW_FAKE_SILENT };
	assert_int_equal(shadow_fake_resp_add(f, &rule), 0);
	opts_fast(&o);
	struct shadow_store *s = open_ok(shadow_fake_resp_url(f), &o);
	for (int i = 0; i < 3; i++) {
		req_init(&req[i], &t[i], SHADOW_STORE_GET, "close:k", &iov, 1);
		submit_ok(s, &req[i]);
	}
	assert_true(shadow_store_poll(s, 50) >= 0);
	shadow_store_close(s);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(t[i].done_calls, 1);
		assert_status(req[i].status, -ECANCELED);
	}
	shadow_fake_resp_stop(f);
}

/* ------------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
	(void)state;
	return shadow_test_redis_start(NULL, &g_redis) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	shadow_test_redis_stop(g_redis);
	return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, arm, disarm)

int main(void)
{
	char path[4096];
	struct shadow_store *s = NULL;

	if (shadow_test_redis_find(path, sizeof(path)) < 0) {
		printf("%s\n", SHADOW_TEST_REDIS_MISSING);
		return 77;
	}
	/* A build without the redis backend: nothing to test. */
	shadow_log_set_handler(log_quiet, NULL); /* the probe's refused connect is expected */
	int probe = shadow_store_open("redis://127.0.0.1:1", NULL, &s);
	shadow_log_set_handler(NULL, NULL);
	if (probe == SHADOW_EUNSUPPORTED) {
		printf("this build has no redis:// backend (SHADOW_EUNSUPPORTED)\n");
		return 77;
	}
	shadow_store_close(s);

	const struct CMUnitTest tests[] = {
		T(test_roundtrip_sizes),
		T(test_iovec_pieces),
		T(test_miss),
		T(test_delete),
		T(test_exists_prefix),
		T(test_keys),
		T(test_pipelined),
		T(test_ttl),
		T(test_auth_acl),
		T(test_select_db),
		T(test_down_at_open),
		T(test_kill_restart),
		T(test_slow_server),
		T(test_killed_mid_value),
		T(test_wrongtype),
		T(test_fake_wrong_reply_type),
		T(test_fake_garbage),
		T(test_value_larger_than_iovec),
		T(test_value_larger_than_max),
		T(test_cancel_streaming_fake),
		T(test_cancel_streaming_real),
		T(test_close_in_flight),
		T(test_fd_outer_loop),
		T(test_fd_quiet_when_idle),
		T(test_contract),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
