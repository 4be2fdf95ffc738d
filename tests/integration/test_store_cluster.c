/*
 * test_store_cluster.c - the redis+cluster:// store through the public API against a real
 * 3-master Redis Cluster (tests/support/redis_server.h): keys spread over every node from
 * one seed, a slot moved under an open handle (MOVED), a slot half-migrated (ASK), and a
 * master lost (its slots fail fast with a connection error, the others keep working).
 *
 * The tests run in order on one cluster and change its slot map as they go. Skips (77)
 * without redis-server or redis-cli, and while the build has no redis backend.
 */
#include <errno.h>
#include <netinet/in.h>
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
#include <unistd.h>

#include <cmocka.h>

#include <shadow/shadow.h>

#include "support/redis_server.h"
#include "integration/store_helpers.h"

static struct shadow_test_cluster *g_cluster;

static struct shadow_test_redis *node(uint32_t i)
{
	return shadow_test_cluster_node(g_cluster, i);
}

static uint32_t slot_of(const char *key)
{
	return shadow_test_cluster_keyslot(key, strlen(key));
}

/* The node that owns `key` now (as node `via` sees it). */
static int owner_of(const char *key, uint32_t via)
{
	int o = shadow_test_cluster_slot_owner(g_cluster, via, slot_of(key));
	if (o < 0)
		fail_msg("owner of '%s' (slot %u): %d", key, slot_of(key), o);
	return o;
}

/* A key "prefix:N" owned by node `want`. */
static void key_on(uint32_t want, const char *prefix, char *key, size_t nbytes)
{
	for (int i = 0; i < 100000; i++) {
		snprintf(key, nbytes, "%s:%d", prefix, i);
		if (owner_of(key, 0) == (int)want)
			return;
	}
	fail_msg("no key for node %u", want);
}

/*
 * Whether node i holds `key` (CLUSTER GETKEYSINSLOT: a local answer, without the -MOVED or
 * -ASK that EXISTS would give on a node importing or migrating the slot).
 */
static bool raw_exists_on(uint32_t i, const char *key)
{
	char slot[16], reply[4096], want[64];

	snprintf(slot, sizeof(slot), "%u", slot_of(key));
	ssize_t n = shadow_test_redis_command(node(i), reply, sizeof(reply), "CLUSTER",
					      "GETKEYSINSLOT", slot, "100", NULL);
	assert_true(n > 0 && (size_t)n < sizeof(reply));
	snprintf(want, sizeof(want), "\r\n$%zu\r\n%s\r\n", strlen(key), key);
	return strstr(reply, want) != NULL;
}

/* ------------------------------------------------------------------------------------------ */

static void test_cluster_many_keys(void **state)
{
	(void)state;
	enum { N = 600 };
	static struct shadow_store_req reqs[N];
	static struct tracker ts[N];
	static struct iovec iov[N];
	static char keys[N][32];
	static const char *kp[N];
	static uint8_t src[N][300], dst[N][300];
	uint32_t done;

	struct shadow_store *s = open_ok(shadow_test_cluster_url(g_cluster), NULL);
	assert_int_equal(stats_of(s).nodes, 3);
	for (int i = 0; i < N; i++) {
		snprintf(keys[i], sizeof(keys[i]), "ck:%d", i);
		kp[i] = keys[i];
		fill(src[i], sizeof(src[i]), (uint64_t)i);
	}
	for (int phase = 0; phase < 2; phase++) {
		done = 0;
		for (int i = 0; i < N; i++) {
			size_t len = phase == 0 ? 1 + (size_t)i % 300 : 300;
			iov[i].iov_base = phase == 0 ? src[i] : dst[i];
			iov[i].iov_len = len;
			req_init(&reqs[i], &ts[i], phase == 0 ? SHADOW_STORE_PUT : SHADOW_STORE_GET,
				 keys[i], &iov[i], 1);
			ts[i].done_counter = &done;
			submit_ok(s, &reqs[i]);
		}
		uint64_t end = now_ms() + 10000;
		while (done < N && now_ms() < end)
			assert_true(shadow_store_poll(s, 20) >= 0);
		if (done < N)
			fail_msg("phase %d: %u of %d done after 10 s", phase, done, N);
		for (int i = 0; i < N; i++) {
			if (reqs[i].status != 0)
				fail_msg("phase %d %s: %d (%s)", phase, keys[i], reqs[i].status,
					 shadow_strerror(reqs[i].status));
		}
	}
	for (int i = 0; i < N; i++) {
		size_t len = 1 + (size_t)i % 300;
		assert_int_equal(reqs[i].value_nbytes, len);
		if (memcmp(src[i], dst[i], len) != 0)
			fail_msg("GET %s: wrong bytes", keys[i]);
	}
	/* Each key is on its owner, and every node got some. */
	long long per_node[3];
	for (uint32_t n = 0; n < 3; n++) {
		assert_int_equal(shadow_test_redis_command_int(node(n), &per_node[n], "DBSIZE", NULL),
				 0);
		assert_true(per_node[n] > 0);
	}
	assert_int_equal(per_node[0] + per_node[1] + per_node[2], N);
	for (int i = 0; i < N; i += 37)
		assert_true(raw_exists_on((uint32_t)owner_of(keys[i], 0), keys[i]));

	/* EXISTS across nodes keeps prefix semantics; DELETE on any node. */
	uint32_t found = 0;
	assert_status(exists(s, kp, N, &found), 0);
	assert_int_equal(found, N);
	assert_status(del(s, keys[250], &found), 0);
	assert_int_equal(found, 1);
	assert_status(exists(s, kp, N, &found), 0);
	assert_int_equal(found, 250);
	char buf[8];
	assert_status(get(s, keys[250], buf, sizeof(buf), NULL), SHADOW_EMISS);

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.moved, 0);
	assert_int_equal(st.asked, 0);
	shadow_store_close(s);

	/* Seeds: the first may be down, any one that answers gives the whole map. */
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	char url[256];
	snprintf(url, sizeof(url), "redis+cluster://127.0.0.1:%u,%s", ntohs(a.sin_port),
		 shadow_test_redis_addr(node(2)));
	struct shadow_store_options o;
	opts_fast(&o);
	s = open_ok(url, &o);
	assert_int_equal(stats_of(s).nodes, 3);
	assert_status(get(s, keys[0], dst[0], 300, NULL), 0);
	shadow_store_close(s);
	close(fd);
}

static void test_cluster_moved(void **state)
{
	(void)state;
	const char *ka = "{mv}a", *kb = "{mv}b";
	struct shadow_store *s = open_ok(shadow_test_cluster_url(g_cluster), NULL);
	char buf[16];
	uint64_t n;

	assert_status(put(s, ka, "alpha", 5), 0);
	assert_status(put(s, kb, "beta", 4), 0);
	uint32_t slot = slot_of(ka);
	int src = owner_of(ka, 0);
	uint32_t dst = ((uint32_t)src + 1) % 3;

	/* Move the slot behind the open handle's back. */
	assert_int_equal(shadow_test_cluster_migrate_slot(g_cluster, slot, dst), 0);
	assert_true(raw_exists_on(dst, ka));
	assert_false(raw_exists_on((uint32_t)src, ka));

	assert_status(get(s, ka, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 5);
	assert_memory_equal(buf, "alpha", 5);
	struct shadow_store_stats st = stats_of(s);
	if (st.moved < 1)
		fail_msg("GET after the slot moved: stats.moved %llu, want >= 1",
			 (unsigned long long)st.moved);
	/* The handle learnt: the same slot goes straight to its new owner. */
	uint64_t moved = st.moved;
	assert_status(get(s, kb, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 4);
	assert_status(put(s, "{mv}c", "gamma", 5), 0);
	assert_true(raw_exists_on(dst, "{mv}c"));
	st = stats_of(s);
	if (st.moved != moved)
		fail_msg("stats.moved went %llu -> %llu: the slot map was not updated",
			 (unsigned long long)moved, (unsigned long long)st.moved);
	assert_int_equal(st.errors, 0);
	shadow_store_close(s);
}

static void test_cluster_ask(void **state)
{
	(void)state;
	const char *ka = "{ask}a", *kb = "{ask}b", *kn = "{ask}new";
	struct shadow_store *s = open_ok(shadow_test_cluster_url(g_cluster), NULL);
	char buf[16];
	uint64_t n;

	assert_status(put(s, ka, "apple", 5), 0);
	assert_status(put(s, kb, "banana", 6), 0);
	uint32_t slot = slot_of(ka);
	int src = owner_of(ka, 0);
	uint32_t dst = ((uint32_t)src + 1) % 3;

	/* Half-way: the slot is MIGRATING on src, IMPORTING on dst, and only ka has moved. */
	assert_int_equal(shadow_test_cluster_migrate_begin(g_cluster, slot, dst), 0);
	assert_int_equal(shadow_test_cluster_migrate_key(g_cluster, slot, dst, ka), 0);
	assert_true(raw_exists_on((uint32_t)src, kb));

	assert_status(get(s, ka, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 5);
	assert_memory_equal(buf, "apple", 5);
	struct shadow_store_stats st = stats_of(s);
	if (st.asked < 1)
		fail_msg("GET of a migrated key: stats.asked %llu, want >= 1",
			 (unsigned long long)st.asked);
	/* ASK is for one command: kb is still at src. */
	uint64_t asked = st.asked;
	assert_status(get(s, kb, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 6);
	assert_memory_equal(buf, "banana", 6);
	st = stats_of(s);
	assert_int_equal(st.asked, asked);
	/* A new key in a migrating slot is created at the destination (ASK again). */
	assert_status(put(s, kn, "new", 3), 0);
	assert_true(raw_exists_on(dst, kn));
	st = stats_of(s);
	if (st.asked < asked + 1)
		fail_msg("PUT of a new key in a migrating slot: stats.asked %llu, want %llu",
			 (unsigned long long)st.asked, (unsigned long long)asked + 1);
	assert_int_equal(st.moved, 0);

	/* Finished: everything at dst, reached through MOVED. */
	assert_int_equal(shadow_test_cluster_migrate_end(g_cluster, slot, dst), 0);
	assert_status(get(s, kb, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 6);
	assert_status(get(s, kn, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 3);
	st = stats_of(s);
	assert_true(st.moved >= 1);
	assert_int_equal(st.errors, 0);
	shadow_store_close(s);
	assert_int_equal(shadow_test_cluster_wait_ok(g_cluster, 10000), 0);
}

static void test_cluster_node_gone(void **state)
{
	(void)state;
	struct shadow_store_options o;
	char keys[3][32], buf[16];
	uint64_t n;

	opts_fast(&o);
	o.request_timeout_ms = 1000;
	struct shadow_store *s = open_ok(shadow_test_cluster_url(g_cluster), &o);
	for (uint32_t i = 0; i < 3; i++) {
		key_on(i, "gone", keys[i], sizeof(keys[i]));
		assert_status(put(s, keys[i], "here", 4), 0);
	}
	const uint32_t victim = 1;
	assert_int_equal(shadow_test_redis_kill(node(victim)), 0);

	for (int round = 0; round < 3; round++) {
		for (uint32_t i = 0; i < 3; i++) {
			uint64_t t0 = now_ms();
			int st = get(s, keys[i], buf, sizeof(buf), &n);
			uint64_t dt = now_ms() - t0;
			if (i == victim) {
				if (!is_conn_error(st))
					fail_msg("round %d: GET on the dead node: %d (%s), want a "
						 "connection error", round, st, shadow_strerror(st));
				if (dt > o.request_timeout_ms + SLACK_MS)
					fail_msg("round %d: GET on the dead node took %llu ms",
						 round, (unsigned long long)dt);
			} else {
				if (st != 0)
					fail_msg("round %d: GET on live node %u: %d (%s)", round, i,
						 st, shadow_strerror(st));
				assert_int_equal(n, 4);
			}
		}
	}
	struct shadow_store_stats st = stats_of(s);
	assert_true(st.disconnects >= 1);
	assert_int_equal(st.hits, 6);

	/* It comes back (empty, same slots); the handle finds it again. */
	assert_int_equal(shadow_test_redis_restart(node(victim)), 0);
	assert_int_equal(shadow_test_cluster_wait_ok(g_cluster, 20000), 0);
	uint64_t end = now_ms() + RECONNECT_WAIT_MS;
	int rc;
	while ((rc = put(s, keys[victim], "back", 4)) != 0 && now_ms() < end) {
		assert_conn_error(rc);
		sleep_ms(20);
	}
	assert_status(rc, 0);
	get_eventually(s, keys[victim], "back");
	shadow_store_close(s);
}

/* ------------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
	(void)state;
	uint64_t t0 = now_ms();
	int rc = shadow_test_cluster_start(3, NULL, &g_cluster);
	if (rc < 0)
		return -1;
	print_message("cluster of 3 masters up in %llu ms\n", (unsigned long long)(now_ms() - t0));
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	shadow_test_cluster_stop(g_cluster);
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
	if (shadow_test_redis_cli_find(path, sizeof(path)) < 0) {
		printf("%s\n", SHADOW_TEST_REDIS_CLI_MISSING);
		return 77;
	}
	shadow_log_set_handler(log_quiet, NULL); /* the probe's refused connect is expected */
	int probe = shadow_store_open("redis+cluster://127.0.0.1:1", NULL, &s);
	shadow_log_set_handler(NULL, NULL);
	if (probe == SHADOW_EUNSUPPORTED) {
		printf("this build has no redis+cluster:// backend (SHADOW_EUNSUPPORTED)\n");
		return 77;
	}
	shadow_store_close(s);

	const struct CMUnitTest tests[] = {
		T(test_cluster_many_keys),
		T(test_cluster_moved),
		T(test_cluster_ask),
		T(test_cluster_node_gone),
		T(test_contract),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
