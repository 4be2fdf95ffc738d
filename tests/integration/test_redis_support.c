/*
 * test_redis_support.c - the test-support library itself (tests/support): redis-server
 * processes (start, raw commands, redis-cli, kill, restart, stop), a 3-master cluster (slot
 * owners, key slots, a slot migration seen through -ASK and -MOVED, a lost node) and the
 * scripted fake RESP server, all checked with raw RESP over plain sockets. The store tests
 * trust these helpers, so they are tested without libshadow's client in the way.
 *
 * Skips (77) without redis-server; the cluster test skips itself without redis-cli.
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "support/fake_resp.h"
#include "support/redis_server.h"
#include "support/resp.h"

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int raw_connect(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

static void raw_send(int fd, const char *s)
{
	size_t n = strlen(s);
	assert_int_equal(send(fd, s, n, MSG_NOSIGNAL), (ssize_t)n);
}

/*
 * Read until `want` bytes arrived, EOF, or timeout_ms passed. Returns the bytes read; *eof_ret
 * says whether the peer closed.
 */
static size_t raw_recv(int fd, char *buf, size_t want, int timeout_ms, bool *eof_ret)
{
	uint64_t end = now_ms() + (uint64_t)timeout_ms;
	size_t n = 0;

	*eof_ret = false;
	while (n < want) {
		uint64_t t = now_ms();
		if (t >= end)
			break;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, (int)(end - t)) <= 0)
			continue;
		ssize_t r = recv(fd, buf + n, want - n, 0);
		if (r <= 0) {
			*eof_ret = true;
			break;
		}
		n += (size_t)r;
	}
	return n;
}

/* ---- resp.c ---- */

static void test_resp_scan(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		ssize_t want;
	} cases[] = {
		{ "+OK\r\n", 5 },	      { "+OK\r", 0 },	       { "-ERR x\r\n", 8 },
		{ ":12\r\n", 5 },	      { "$5\r\nhello\r\n", 11 }, { "$5\r\nhel", 0 },
		{ "$-1\r\n", 5 },	      { "*2\r\n:1\r\n$1\r\na\r\n", 15 },
		{ "*2\r\n:1\r\n", 0 },	      { "*-1\r\n", 5 },	       { "@garbage\r\n", -1 },
		{ "$5\r\nhelloXX", -1 },      { "$x\r\n", -1 },	       { "+OK\rX", -1 },
		{ "%1\r\n+a\r\n:1\r\n", 12 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ssize_t got = shadow_test_resp_scan(cases[i].text, strlen(cases[i].text));
		if (got != cases[i].want)
			fail_msg("scan(\"%s\") = %zd, want %zd", cases[i].text, got, cases[i].want);
	}
	const char *argv[] = { "SET", "k", "v v" };
	char buf[64];
	size_t n = shadow_test_resp_encode(buf, sizeof(buf), 3, argv, NULL);
	assert_int_equal(n, strlen("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv v\r\n"));
	assert_memory_equal(buf, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv v\r\n", n);

	const char *av[8];
	size_t lens[8];
	int argc;
	assert_int_equal(shadow_test_resp_parse_command(buf, n, av, lens, 8, &argc), (ssize_t)n);
	assert_int_equal(argc, 3);
	assert_int_equal(lens[2], 3);
	assert_memory_equal(av[2], "v v", 3);
	assert_int_equal(shadow_test_resp_parse_command(buf, n - 1, av, lens, 8, &argc), 0);
	assert_int_equal(shadow_test_resp_parse_command("PING\r\n", 6, av, lens, 8, &argc), 6);
	assert_int_equal(argc, 1);
}

/* ---- one server ---- */

static void test_server_lifecycle(void **state)
{
	(void)state;
	struct shadow_test_redis *r = NULL;
	char reply[256], dir[4096];
	long long v;

	assert_int_equal(shadow_test_redis_start(NULL, &r), 0);
	uint16_t port = shadow_test_redis_port(r);
	assert_true(port > 0);
	snprintf(reply, sizeof(reply), "redis://127.0.0.1:%u", port);
	assert_string_equal(shadow_test_redis_url(r), reply);
	assert_true(shadow_test_redis_running(r));
	snprintf(dir, sizeof(dir), "%s", shadow_test_redis_dir(r));

	assert_int_equal(shadow_test_redis_command(r, reply, sizeof(reply), "PING", NULL), 7);
	assert_string_equal(reply, "+PONG\r\n");
	assert_true(shadow_test_redis_command(r, reply, sizeof(reply), "SET", "k", "v 1", NULL) > 0);
	assert_string_equal(reply, "+OK\r\n");
	assert_true(shadow_test_redis_command(r, reply, sizeof(reply), "GET", "k", NULL) > 0);
	assert_string_equal(reply, "$3\r\nv 1\r\n");
	/* Truncation: the full length comes back, the copy is cut and terminated. */
	char small[4];
	assert_int_equal(shadow_test_redis_command(r, small, sizeof(small), "GET", "k", NULL), 9);
	assert_string_equal(small, "$3\r");
	assert_int_equal(shadow_test_redis_command_int(r, &v, "DBSIZE", NULL), 0);
	assert_int_equal(v, 1);
	assert_int_equal(shadow_test_redis_command_int(r, &v, "GET", "k", NULL), -EPROTO);
	assert_int_equal(shadow_test_redis_command_int(r, &v, "NOSUCHCMD", NULL), -EREMOTEIO);
	/* Binary-safe arguments. */
	const char *argv[] = { "SET", "bin", "a\0b" };
	const size_t lens[] = { 3, 3, 3 };
	assert_true(shadow_test_redis_commandv(r, 3, argv, lens, reply, sizeof(reply)) > 0);
	assert_int_equal(shadow_test_redis_command_int(r, &v, "STRLEN", "bin", NULL), 0);
	assert_int_equal(v, 3);

	char out[256];
	assert_int_equal(shadow_test_redis_cli(r, out, sizeof(out), "GET", "k", NULL), 0);
	assert_string_equal(out, "v 1\n");

	/* Crash: nothing answers, the directory stays; restart: same port, empty. */
	pid_t old = shadow_test_redis_pid(r);
	assert_int_equal(shadow_test_redis_kill(r), 0);
	assert_false(shadow_test_redis_running(r));
	assert_int_equal(shadow_test_redis_pid(r), -1);
	assert_int_equal(kill(old, 0), -1);
	assert_int_equal(shadow_test_redis_kill(r), -ESRCH);
	assert_int_equal(shadow_test_redis_command(r, reply, sizeof(reply), "PING", NULL),
			 -ECONNREFUSED);
	struct stat st;
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(shadow_test_redis_restart(r), 0);
	assert_int_equal(shadow_test_redis_port(r), port);
	assert_true(shadow_test_redis_pid(r) > 0 && shadow_test_redis_pid(r) != old);
	assert_int_equal(shadow_test_redis_command_int(r, &v, "DBSIZE", NULL), 0);
	assert_int_equal(v, 0);
	/* Restart while running kills the old process first. */
	old = shadow_test_redis_pid(r);
	assert_int_equal(shadow_test_redis_restart(r), 0);
	assert_int_equal(kill(old, 0), -1);

	pid_t pid = shadow_test_redis_pid(r);
	shadow_test_redis_stop(r);
	assert_int_equal(kill(pid, 0), -1);
	assert_int_equal(stat(dir, &st), -1);
	shadow_test_redis_stop(NULL);
}

static void test_server_auth(void **state)
{
	(void)state;
	struct shadow_test_redis *r = NULL;
	const char *extra[] = { "maxmemory 64mb", NULL };
	struct shadow_test_redis_options o = { .password = "defpw", .user = "alice",
					       .user_password = "s3cret", .config = extra };
	char reply[256];
	bool eof;

	assert_int_equal(shadow_test_redis_start(&o, &r), 0);
	/* The helpers authenticate as alice. */
	assert_true(shadow_test_redis_command(r, reply, sizeof(reply), "ACL", "WHOAMI", NULL) > 0);
	assert_string_equal(reply, "$5\r\nalice\r\n");
	assert_true(shadow_test_redis_command(r, reply, sizeof(reply), "CONFIG", "GET",
					      "maxmemory", NULL) > 0);
	assert_non_null(strstr(reply, "67108864"));
	char out[256];
	assert_int_equal(shadow_test_redis_cli(r, out, sizeof(out), "ACL", "WHOAMI", NULL), 0);
	assert_string_equal(out, "alice\n");

	/* Without AUTH the server refuses; with the default user's password it accepts. */
	int fd = raw_connect(shadow_test_redis_port(r));
	assert_true(fd >= 0);
	raw_send(fd, "GET k\r\n");
	size_t n = raw_recv(fd, reply, 7, 2000, &eof);
	assert_int_equal(n, 7);
	assert_memory_equal(reply, "-NOAUTH", 7);
	close(fd);
	fd = raw_connect(shadow_test_redis_port(r));
	raw_send(fd, "AUTH alice wrong\r\n");
	n = raw_recv(fd, reply, 10, 2000, &eof);
	assert_memory_equal(reply, "-WRONGPASS", 10);
	close(fd);
	fd = raw_connect(shadow_test_redis_port(r));
	raw_send(fd, "AUTH defpw\r\n");
	n = raw_recv(fd, reply, 5, 2000, &eof);
	assert_memory_equal(reply, "+OK\r\n", 5);
	close(fd);

	assert_int_equal(shadow_test_redis_kill(r), 0);
	assert_int_equal(shadow_test_redis_restart(r), 0);
	assert_true(shadow_test_redis_command(r, reply, sizeof(reply), "ACL", "WHOAMI", NULL) > 0);
	assert_string_equal(reply, "$5\r\nalice\r\n");
	shadow_test_redis_stop(r);

	/* user without password is refused before anything starts */
	struct shadow_test_redis_options bad = { .user = "bob" };
	assert_int_equal(shadow_test_redis_start(&bad, &r), -EINVAL);
}

static void test_server_many(void **state)
{
	(void)state;
	struct shadow_test_redis *r[6];

	/* Several at once get distinct ports and directories. */
	for (int i = 0; i < 6; i++)
		assert_int_equal(shadow_test_redis_start(NULL, &r[i]), 0);
	for (int i = 0; i < 6; i++) {
		for (int j = 0; j < i; j++) {
			assert_int_not_equal(shadow_test_redis_port(r[i]),
					     shadow_test_redis_port(r[j]));
			assert_string_not_equal(shadow_test_redis_dir(r[i]),
						shadow_test_redis_dir(r[j]));
		}
	}
	for (int i = 0; i < 6; i++)
		shadow_test_redis_stop(r[i]);
}

/* ---- cluster ---- */

static void test_cluster(void **state)
{
	(void)state;
	struct shadow_test_cluster *c = NULL;
	char cli[4096], reply[512];
	long long v;

	if (shadow_test_redis_cli_find(cli, sizeof(cli)) < 0) {
		print_message("%s\n", SHADOW_TEST_REDIS_CLI_MISSING);
		skip();
	}
	uint64_t t0 = now_ms();
	assert_int_equal(shadow_test_cluster_start(3, NULL, &c), 0);
	print_message("cluster of 3 up in %llu ms\n", (unsigned long long)(now_ms() - t0));
	assert_int_equal(shadow_test_cluster_size(c), 3);
	snprintf(reply, sizeof(reply), "redis+cluster://127.0.0.1:%u",
		 shadow_test_redis_port(shadow_test_cluster_node(c, 0)));
	assert_string_equal(shadow_test_cluster_url(c), reply);
	assert_null(shadow_test_cluster_node(c, 3));

	/* Our CRC16 agrees with the server's, hash tags included. */
	static const char *const keys[] = { "a", "foo", "{user1000}.following", "x{}y", "{}{b}",
					    "ab{cd}{ef}", "123456789" };
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		assert_int_equal(shadow_test_redis_command_int(shadow_test_cluster_node(c, 0), &v,
							       "CLUSTER", "KEYSLOT", keys[i], NULL),
				 0);
		assert_int_equal(shadow_test_cluster_keyslot(keys[i], strlen(keys[i])), v);
	}
	assert_int_equal(shadow_test_cluster_keyslot("123456789", 9), 0x31C3 & 16383);

	/* Every node owns something, and each node agrees on every owner. */
	int owners[3] = { 0 };
	for (uint32_t s = 0; s < SHADOW_TEST_CLUSTER_SLOTS; s += 997) {
		int o = shadow_test_cluster_slot_owner(c, 0, s);
		assert_in_range(o, 0, 2);
		owners[o]++;
		assert_int_equal(shadow_test_cluster_slot_owner(c, 1, s), o);
	}
	assert_true(owners[0] > 0 && owners[1] > 0 && owners[2] > 0);

	/* A key lives on its owner; the others redirect with -MOVED. */
	const char *k1 = "{mig}one", *k2 = "{mig}two";
	uint32_t slot = shadow_test_cluster_keyslot(k1, strlen(k1));
	int src = shadow_test_cluster_slot_owner(c, 0, slot);
	assert_true(src >= 0);
	uint32_t dst = ((uint32_t)src + 1) % 3;
	struct shadow_test_redis *s = shadow_test_cluster_node(c, (uint32_t)src);
	struct shadow_test_redis *d = shadow_test_cluster_node(c, dst);
	assert_true(shadow_test_redis_command(s, reply, sizeof(reply), "SET", k1, "1", NULL) > 0);
	assert_string_equal(reply, "+OK\r\n");
	assert_true(shadow_test_redis_command(s, reply, sizeof(reply), "SET", k2, "2", NULL) > 0);
	assert_true(shadow_test_redis_command(d, reply, sizeof(reply), "GET", k1, NULL) > 0);
	assert_memory_equal(reply, "-MOVED", 6);

	/* Half-migrated: k1 moved, k2 not; src answers -ASK for k1 only. */
	assert_int_equal(shadow_test_cluster_migrate_begin(c, slot, dst), 0);
	assert_int_equal(shadow_test_cluster_migrate_key(c, slot, dst, k1), 0);
	assert_int_equal(shadow_test_cluster_migrate_key(c, slot + 1, dst, k1), -EINVAL);
	assert_true(shadow_test_redis_command(s, reply, sizeof(reply), "GET", k1, NULL) > 0);
	assert_memory_equal(reply, "-ASK", 4);
	assert_true(shadow_test_redis_command(s, reply, sizeof(reply), "GET", k2, NULL) > 0);
	assert_string_equal(reply, "$1\r\n2\r\n");
	assert_int_equal(shadow_test_cluster_slot_owner(c, 0, slot), src);

	/* Done: dst owns the slot and both keys; src answers -MOVED to dst. */
	assert_int_equal(shadow_test_cluster_migrate_end(c, slot, dst), 0);
	assert_int_equal(shadow_test_cluster_slot_owner(c, (uint32_t)src, slot), (int)dst);
	assert_int_equal(shadow_test_cluster_slot_owner(c, dst, slot), (int)dst);
	assert_true(shadow_test_redis_command(s, reply, sizeof(reply), "GET", k2, NULL) > 0);
	char want[64];
	snprintf(want, sizeof(want), "-MOVED %u %s", slot, shadow_test_redis_addr(d));
	assert_memory_equal(reply, want, strlen(want));
	assert_true(shadow_test_redis_command(d, reply, sizeof(reply), "GET", k2, NULL) > 0);
	assert_string_equal(reply, "$1\r\n2\r\n");
	assert_int_equal(shadow_test_cluster_migrate_slot(c, slot, dst), -EINVAL);
	assert_int_equal(shadow_test_cluster_wait_ok(c, 10000), 0);

	/* A whole slot with several keys, in one call. */
	assert_int_equal(shadow_test_cluster_migrate_slot(c, slot, (uint32_t)src), 0);
	assert_true(shadow_test_redis_command(s, reply, sizeof(reply), "GET", k1, NULL) > 0);
	assert_string_equal(reply, "$1\r\n1\r\n");

	/* A master lost: the others keep serving their slots (full coverage not required). */
	uint32_t victim = 2;
	assert_int_equal(shadow_test_redis_kill(shadow_test_cluster_node(c, victim)), 0);
	assert_int_equal(shadow_test_cluster_wait_ok(c, 10000), 0);
	for (uint32_t i = 0; i < 2; i++) {
		struct shadow_test_redis *n = shadow_test_cluster_node(c, i);
		char key[32];
		for (int k = 0;; k++) {
			snprintf(key, sizeof(key), "live%d", k);
			if (shadow_test_cluster_slot_owner(c, 0,
							   shadow_test_cluster_keyslot(key,
										       strlen(key))) ==
			    (int)i)
				break;
		}
		assert_true(shadow_test_redis_command(n, reply, sizeof(reply), "SET", key, "x",
						      NULL) > 0);
		assert_string_equal(reply, "+OK\r\n");
	}
	/* It comes back with its identity (nodes.conf) and rejoins. */
	assert_int_equal(shadow_test_redis_restart(shadow_test_cluster_node(c, victim)), 0);
	assert_int_equal(shadow_test_cluster_wait_ok(c, 20000), 0);
	assert_true(shadow_test_redis_command(shadow_test_cluster_node(c, victim), reply,
					      sizeof(reply), "CLUSTER", "MYID", NULL) > 0);
	assert_memory_equal(reply + 5, shadow_test_cluster_node_id(c, victim), 40);

	t0 = now_ms();
	shadow_test_cluster_stop(c);
	print_message("cluster stopped in %llu ms\n", (unsigned long long)(now_ms() - t0));
}

/* ---- fake_resp ---- */

static void test_fake(void **state)
{
	(void)state;
	struct shadow_fake_resp *f = NULL;
	char buf[256];
	bool eof;

	assert_int_equal(shadow_fake_resp_start(&f), 0);
	snprintf(buf, sizeof(buf), "redis://127.0.0.1:%u", shadow_fake_resp_port(f));
	assert_string_equal(shadow_fake_resp_url(f), buf);

	/* Built-ins and a scripted reply used up after one GET. */
	assert_int_equal(shadow_fake_resp_reply(f, "get", 1, "$5\r\nhello\r\n"), 0);
	int fd = raw_connect(shadow_fake_resp_port(f));
	raw_send(fd, "*1\r\n$4\r\nPING\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n");
	assert_int_equal(raw_recv(fd, buf, 12, 2000, &eof), 12);
	assert_memory_equal(buf, "+PONG\r\n+OK\r\n", 12);
	raw_send(fd, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
	assert_int_equal(raw_recv(fd, buf, 11, 2000, &eof), 11);
	assert_memory_equal(buf, "$5\r\nhello\r\n", 11);
	size_t n = raw_recv(fd, buf, sizeof(buf) - 1, 2000, &eof);
	assert_true(n > 4);
	assert_memory_equal(buf, "-ERR", 4);
	assert_int_equal(shadow_fake_resp_commands(f, "GET"), 2);
	assert_int_equal(shadow_fake_resp_commands(f, "select"), 1);
	assert_int_equal(shadow_fake_resp_commands(f, NULL), 4);
	assert_int_equal(shadow_fake_resp_last_command(f, buf, sizeof(buf)), 5);
	assert_string_equal(buf, "GET k");
	close(fd);

	/* Delay, then a value in two parts with a pause between them. */
	struct shadow_fake_rule r = { .command = "GET", .times = 1, .delay_ms = 200,
				      .bytes = "$6\r\nabc", .tail = "def\r\n",
				      .tail_delay_ms = 200 };
	assert_int_equal(shadow_fake_resp_add(f, &r), 0);
	fd = raw_connect(shadow_fake_resp_port(f));
	uint64_t t0 = now_ms();
	raw_send(fd, "GET k\r\nPING\r\n");
	assert_int_equal(raw_recv(fd, buf, 7, 2000, &eof), 7);
	uint64_t t1 = now_ms();
	assert_in_range(t1 - t0, 180, 400);
	assert_memory_equal(buf, "$6\r\nabc", 7);
	assert_int_equal(raw_recv(fd, buf, 12, 2000, &eof), 12);
	assert_in_range(now_ms() - t1, 180, 400);
	assert_memory_equal(buf, "def\r\n+PONG\r\n", 12); /* PING waited behind the GET */
	close(fd);

	/* Partial bulk, then the connection closes. */
	r = (struct shadow_fake_rule){ .command = "GET", .times = 1,
				       .action = SHADOW_FAKE_REPLY_CLOSE, .bytes = "$100\r\nxyz" };
	assert_int_equal(shadow_fake_resp_add(f, &r), 0);
	fd = raw_connect(shadow_fake_resp_port(f));
	raw_send(fd, "GET k\r\n");
	n = raw_recv(fd, buf, sizeof(buf) - 1, 2000, &eof);
	assert_int_equal(n, 9);
	assert_true(eof);
	close(fd);

	/* Silent: nothing, not even for a PING behind it, and the connection stays. */
	r = (struct shadow_fake_rule){ .command = "GET", .times = 1, .action = SHADOW_FAKE_SILENT };
	assert_int_equal(shadow_fake_resp_add(f, &r), 0);
	fd = raw_connect(shadow_fake_resp_port(f));
	raw_send(fd, "GET k\r\nPING\r\n");
	assert_int_equal(raw_recv(fd, buf, 1, 300, &eof), 0);
	assert_false(eof);
	assert_int_equal(shadow_fake_resp_open_connections(f), 1);
	/* A server crash drops it. */
	shadow_fake_resp_drop_connections(f);
	assert_int_equal(shadow_fake_resp_open_connections(f), 0);
	assert_int_equal(raw_recv(fd, buf, 1, 2000, &eof), 0);
	assert_true(eof);
	close(fd);

	/* Close instead of an answer; garbage; any command. */
	r = (struct shadow_fake_rule){ .command = NULL, .times = 1, .action = SHADOW_FAKE_CLOSE };
	assert_int_equal(shadow_fake_resp_add(f, &r), 0);
	assert_int_equal(shadow_fake_resp_reply(f, NULL, 0, "@@garbage\r\n"), 0);
	fd = raw_connect(shadow_fake_resp_port(f));
	raw_send(fd, "ECHO x\r\n");
	assert_int_equal(raw_recv(fd, buf, 1, 2000, &eof), 0);
	assert_true(eof);
	close(fd);
	fd = raw_connect(shadow_fake_resp_port(f));
	raw_send(fd, "PING\r\n");
	assert_int_equal(raw_recv(fd, buf, 11, 2000, &eof), 11);
	assert_memory_equal(buf, "@@garbage\r\n", 11);
	close(fd);
	shadow_fake_resp_clear(f);

	/* Down: connections are accepted and closed at once. */
	uint32_t accepted = shadow_fake_resp_accepted(f);
	shadow_fake_resp_set_accept(f, SHADOW_FAKE_ACCEPT_CLOSE);
	fd = raw_connect(shadow_fake_resp_port(f));
	assert_true(fd >= 0);
	assert_int_equal(raw_recv(fd, buf, 1, 2000, &eof), 0);
	assert_true(eof);
	close(fd);
	assert_int_equal(shadow_fake_resp_accepted(f), accepted + 1);
	shadow_fake_resp_set_accept(f, SHADOW_FAKE_ACCEPT_SERVE);

	/* A big reply leaves whole even when the client reads slowly. */
	size_t big = 8u << 20;
	char *val = malloc(big + 32);
	assert_non_null(val);
	int h = snprintf(val, 32, "$%zu\r\n", big);
	memset(val + h, 'v', big);
	memcpy(val + h + big, "\r\n", 2);
	r = (struct shadow_fake_rule){ .command = "GET", .bytes = val, .nbytes = (size_t)h + big + 2 };
	assert_int_equal(shadow_fake_resp_add(f, &r), 0);
	free(val);
	fd = raw_connect(shadow_fake_resp_port(f));
	raw_send(fd, "GET k\r\n");
	char *got = malloc(big + 32);
	usleep(100000);
	assert_int_equal(raw_recv(fd, got, (size_t)h + big + 2, 5000, &eof), (size_t)h + big + 2);
	assert_int_equal(got[h + big - 1], 'v');
	free(got);
	close(fd);

	shadow_fake_resp_stop(f);
	shadow_fake_resp_stop(NULL);
}

int main(void)
{
	char path[4096];

	if (shadow_test_redis_find(path, sizeof(path)) < 0) {
		printf("%s\n", SHADOW_TEST_REDIS_MISSING);
		return 77;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resp_scan),
		cmocka_unit_test(test_server_lifecycle),
		cmocka_unit_test(test_server_auth),
		cmocka_unit_test(test_server_many),
		cmocka_unit_test(test_cluster),
		cmocka_unit_test(test_fake),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
