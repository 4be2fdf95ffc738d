/*
 * test_store_file.c - the file:// store backend (lib/store/file.c): round trips, persistence
 * across close and reopen, sharing between handles, exclusion of a second process, LRU
 * eviction by capacity, damaged files on disk (torn, flipped, garbage), cancel, deadlines and
 * URL checking. Each test works in a fresh mkdtemp directory under /tmp, removed at the end.
 *
 * Entry files are found on disk the way the backend names them (DESIGN of file.c):
 * DIR/v1/XX/<32 hex of XXH3-128(key), canonical>, so tests can damage them.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <pthread.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdbool.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include <shadow/shadow.h>

#define MIB (UINT64_C(1) << 20)
#define BIG_NBYTES (9 * MIB + 123) /* three GET pieces of at most 4 MiB */
#define PIECE_NBYTES (4 * MIB)
#define VALUE_OFFSET 4096u

/* ---- fixture: a fresh directory per test ---- */

struct fixture {
	char dir[64];
};

static int setup_dir(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	strcpy(f->dir, "/tmp/shadow-test-file-XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int teardown_dir(void **state)
{
	struct fixture *f = *state;
	int rc = nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);

	free(f);
	return rc;
}

/* ---- helpers ---- */

static void url_of(const struct fixture *f, const char *suffix, char *url, size_t n)
{
	snprintf(url, n, "file://%s%s", f->dir, suffix);
}

static struct shadow_store *open_ok(const struct fixture *f, const char *suffix)
{
	struct shadow_store *s = NULL;
	char url[256];

	url_of(f, suffix, url, sizeof(url));
	assert_int_equal(shadow_store_open(url, NULL, &s), 0);
	assert_non_null(s);
	return s;
}

static int open_rc(const struct fixture *f, const char *suffix)
{
	struct shadow_store *s = NULL;
	char url[256];
	int rc;

	url_of(f, suffix, url, sizeof(url));
	rc = shadow_store_open(url, NULL, &s);
	if (rc == 0)
		shadow_store_close(s);
	return rc;
}

/* The path of key's entry file. */
static void entry_path(const struct fixture *f, const char *key, char *path, size_t n)
{
	XXH128_canonical_t c;
	char hex[33];

	XXH128_canonicalFromHash(&c, XXH3_128bits(key, strlen(key)));
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", c.digest[i]);
	snprintf(path, n, "%s/v1/%.2s/%s", f->dir, hex, hex);
}

static bool file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static void fill(uint8_t *buf, uint64_t n, uint32_t seed)
{
	uint32_t x = seed * 2654435761u + 1;

	for (uint64_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (uint8_t)x;
	}
}

/* What the callbacks saw. */
struct probe {
	struct shadow_store *store;
	uint32_t done_calls;
	uint32_t data_calls;
	uint64_t data_value_nbytes;
	uint64_t last_landed;
	bool progress_ok;         /* strictly increasing, never beyond the value */
	uint32_t cancel_at_call;  /* cancel from the n-th on_data (1-based), 0: never */
	int cancel_rc;
	const char *truncate_path; /* truncate this file from the first on_data */
	off_t truncate_to;
};

static void on_data(struct shadow_store_req *req, uint64_t value_nbytes, uint64_t landed)
{
	struct probe *p = req->user;

	p->data_calls++;
	if (p->data_calls == 1)
		p->data_value_nbytes = value_nbytes;
	if (landed <= p->last_landed || landed > value_nbytes ||
	    value_nbytes != p->data_value_nbytes || req->landed_nbytes != landed)
		p->progress_ok = false;
	p->last_landed = landed;
	if (p->cancel_at_call == p->data_calls)
		p->cancel_rc = shadow_store_cancel(p->store, req);
	if (p->truncate_path != NULL && p->data_calls == 1)
		assert_int_equal(truncate(p->truncate_path, p->truncate_to), 0);
}

static void on_done(struct shadow_store_req *req)
{
	struct probe *p = req->user;

	p->done_calls++;
}

static void req_init(struct shadow_store_req *req, uint32_t op, const char *key,
		     const struct iovec *iov, uint32_t iov_count, struct probe *p)
{
	memset(req, 0, sizeof(*req));
	req->op = op;
	req->key = key;
	req->iov = iov;
	req->iov_count = iov_count;
	req->on_data = on_data;
	req->on_done = on_done;
	req->user = p;
}

static void probe_init(struct probe *p, struct shadow_store *s)
{
	memset(p, 0, sizeof(*p));
	p->store = s;
	p->progress_ok = true;
}

/* Submit, check nothing is called back from submit, wait; the status. */
static int run(struct shadow_store *s, struct shadow_store_req *req)
{
	struct probe *p = req->user;
	uint32_t before = p->done_calls;
	int rc = shadow_store_submit(s, req);

	assert_int_equal(rc, 0);
	assert_int_equal(req->status, SHADOW_STORE_PENDING);
	assert_int_equal(p->done_calls, before);
	rc = shadow_store_wait(s, req);
	assert_int_equal(p->done_calls, before + 1);
	return rc;
}

static int put(struct shadow_store *s, const char *key, const void *buf, uint64_t n)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = n };
	struct shadow_store_req req;
	struct probe p;

	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_PUT, key, &iov, 1, &p);
	return run(s, &req);
}

/* GET into buf[0, cap); *value_nbytes_ret = req.value_nbytes. */
static int get(struct shadow_store *s, const char *key, void *buf, uint64_t cap,
	       uint64_t *value_nbytes_ret)
{
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct shadow_store_req req;
	struct probe p;
	int rc;

	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_GET, key, &iov, 1, &p);
	rc = run(s, &req);
	assert_true(p.progress_ok);
	if (value_nbytes_ret != NULL)
		*value_nbytes_ret = req.value_nbytes;
	return rc;
}

static int del(struct shadow_store *s, const char *key, uint32_t *n_found_ret)
{
	struct shadow_store_req req;
	struct probe p;
	int rc;

	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_DELETE, key, NULL, 0, &p);
	rc = run(s, &req);
	*n_found_ret = req.n_found;
	return rc;
}

static uint32_t exists(struct shadow_store *s, const char *const *keys, uint32_t n)
{
	struct shadow_store_req req;
	struct probe p;

	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_EXISTS, NULL, NULL, 0, &p);
	req.keys = keys;
	req.n_keys = n;
	assert_int_equal(run(s, &req), 0);
	return req.n_found;
}

static struct shadow_store_stats stats_of(const struct shadow_store *s)
{
	struct shadow_store_stats st;

	memset(&st, 0, sizeof(st));
	st.size = sizeof(st);
	assert_int_equal(shadow_store_stats(s, &st), 0);
	return st;
}

/* Put a value of n bytes made from seed, then get it back and compare. */
static void put_get_check(struct shadow_store *s, const char *key, uint64_t n, uint32_t seed)
{
	uint8_t *v = malloc(n + 1), *out = malloc(n + 1);
	uint64_t vn = UINT64_MAX;

	assert_non_null(v);
	assert_non_null(out);
	fill(v, n, seed);
	assert_int_equal(put(s, key, v, n), 0);
	memset(out, 0x5a, n + 1);
	assert_int_equal(get(s, key, out, n + 1, &vn), 0);
	assert_int_equal(vn, n);
	assert_memory_equal(out, v, n);
	assert_int_equal(out[n], 0x5a); /* nothing beyond the value */
	free(v);
	free(out);
}

/* ---- tests ---- */

static void test_roundtrip_sizes(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	static const uint64_t sizes[] = { 0, 1, 4095, 4096, 100000 };
	uint64_t total = 0;
	char key[32];

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(key, sizeof(key), "k%zu", i);
		put_get_check(s, key, sizes[i], (uint32_t)i + 1);
		total += sizes[i];
	}
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.puts, 5);
	assert_int_equal(st.gets, 5);
	assert_int_equal(st.hits, 5);
	assert_int_equal(st.misses, 0);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.bytes_out, total);
	assert_int_equal(st.bytes_in, total);
	assert_int_equal(st.items, 5);
	assert_int_equal(st.used_nbytes, 5 * VALUE_OFFSET + total);
	assert_int_equal(st.capacity_nbytes, UINT64_C(64) << 30);
	assert_int_equal(st.corrupt, 0);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(shadow_store_fd(s), -1);

	/* Replacing a value: the index holds the new size, the GET the new bytes. */
	put_get_check(s, "k1", 5000, 99);
	st = stats_of(s);
	assert_int_equal(st.items, 5);
	assert_int_equal(st.used_nbytes, 5 * VALUE_OFFSET + total - 1 + 5000);
	shadow_store_close(s);
}

/* A value of several pieces, from and into iovecs of uneven parts; on_data progress. */
static void test_roundtrip_multi_piece(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t *v = malloc(BIG_NBYTES), *out = malloc(BIG_NBYTES + 7);
	struct shadow_store_req req;
	struct probe p;

	assert_non_null(v);
	assert_non_null(out);
	fill(v, BIG_NBYTES, 7);
	struct iovec in[3] = {
		{ v, 1000 },
		{ v + 1000, 5 * MIB },
		{ v + 1000 + 5 * MIB, BIG_NBYTES - 1000 - 5 * MIB },
	};
	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_PUT, "big", in, 3, &p);
	assert_int_equal(run(s, &req), 0);

	memset(out, 0, BIG_NBYTES + 7);
	struct iovec o[4] = {
		{ out, 3 * MIB + 1 }, { out + 3 * MIB + 1, 0 }, { out + 3 * MIB + 1, 17 },
		{ out + 3 * MIB + 18, BIG_NBYTES + 7 - 3 * MIB - 18 },
	};
	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_GET, "big", o, 4, &p);
	assert_int_equal(run(s, &req), 0);
	assert_int_equal(req.value_nbytes, BIG_NBYTES);
	assert_int_equal(req.landed_nbytes, BIG_NBYTES);
	assert_true(p.progress_ok);
	assert_int_equal(p.data_calls, 3); /* 4 MiB, 8 MiB, all */
	assert_int_equal(p.data_value_nbytes, BIG_NBYTES);
	assert_int_equal(p.last_landed, BIG_NBYTES);
	assert_memory_equal(out, v, BIG_NBYTES);
	for (int i = 0; i < 7; i++)
		assert_int_equal(out[BIG_NBYTES + i], 0);
	free(v);
	free(out);
	shadow_store_close(s);
}

/* The on-disk layout docs/stores.md promises. */
static void test_file_layout(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	const char *key = "layout-key";
	uint8_t v[300], buf[VALUE_OFFSET + sizeof(v) + 1];
	char path[256];
	struct stat st;

	fill(v, sizeof(v), 3);
	assert_int_equal(put(s, key, v, sizeof(v)), 0);
	entry_path(f, key, path, sizeof(path));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, VALUE_OFFSET + sizeof(v));
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, buf, sizeof(buf)), VALUE_OFFSET + sizeof(v));
	close(fd);
	assert_memory_equal(buf, "SHSF", 4);
	assert_int_equal(buf[4], 1); /* version, little-endian */
	assert_int_equal(buf[8], strlen(key));
	assert_int_equal(buf[12] | buf[13] << 8, VALUE_OFFSET);
	assert_int_equal(buf[16] | buf[17] << 8, sizeof(v));
	uint64_t sum = 0;
	for (int i = 7; i >= 0; i--)
		sum = sum << 8 | buf[24 + i];
	assert_int_equal(sum, XXH3_64bits(v, sizeof(v)));
	assert_memory_equal(buf + 40, key, strlen(key));
	for (size_t i = 40 + strlen(key); i < VALUE_OFFSET; i++)
		assert_int_equal(buf[i], 0);
	assert_memory_equal(buf + VALUE_OFFSET, v, sizeof(v));

	/* Nothing left in tmp/; the lock file is there. */
	char tmp[256];
	snprintf(tmp, sizeof(tmp), "%s/tmp", f->dir);
	assert_int_equal(rmdir(tmp), 0); /* empty */
	assert_int_equal(mkdir(tmp, 0755), 0);
	snprintf(tmp, sizeof(tmp), "%s/.lock", f->dir);
	assert_true(file_exists(tmp));
	shadow_store_close(s);
}

static void test_miss_and_delete(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t buf[64];
	uint64_t vn = 77;
	uint32_t n_found = 9;
	char path[256];

	assert_int_equal(get(s, "absent", buf, sizeof(buf), &vn), SHADOW_EMISS);
	assert_int_equal(vn, 0);
	assert_int_equal(del(s, "absent", &n_found), 0);
	assert_int_equal(n_found, 0);

	assert_int_equal(put(s, "k", "hello", 5), 0);
	entry_path(f, "k", path, sizeof(path));
	assert_true(file_exists(path));
	assert_int_equal(del(s, "k", &n_found), 0);
	assert_int_equal(n_found, 1);
	assert_false(file_exists(path));
	assert_int_equal(get(s, "k", buf, sizeof(buf), NULL), SHADOW_EMISS);

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.gets, 2);
	assert_int_equal(st.misses, 2);
	assert_int_equal(st.hits, 0);
	assert_int_equal(st.deletes, 2);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.items, 0);
	assert_int_equal(st.used_nbytes, 0);
	shadow_store_close(s);
}

static void test_exists_prefix(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	const char *const keys[] = { "c0", "c1", "c2", "c3" };

	assert_int_equal(put(s, "c0", "a", 1), 0);
	assert_int_equal(put(s, "c1", "b", 1), 0);
	assert_int_equal(put(s, "c3", "d", 1), 0); /* c2 missing: c3 does not count */
	assert_int_equal(exists(s, keys, 4), 2);
	assert_int_equal(exists(s, keys, 1), 1);
	assert_int_equal(exists(s, keys + 2, 2), 0);
	assert_int_equal(exists(s, keys + 3, 1), 1);
	assert_int_equal(stats_of(s).exists_keys, 4 + 1 + 2 + 1);
	shadow_store_close(s);
}

/* Close and reopen (a restart): every entry is back; stale temporaries are removed. */
static void test_survives_restart(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t v[3][2000], out[2000];
	char key[16], stale[256];

	for (int i = 0; i < 3; i++) {
		fill(v[i], sizeof(v[i]), 10 + (uint32_t)i);
		snprintf(key, sizeof(key), "r%d", i);
		assert_int_equal(put(s, key, v[i], sizeof(v[i])), 0);
	}
	struct shadow_store_stats before = stats_of(s);
	shadow_store_close(s);

	/* A PUT that a crash interrupted. */
	snprintf(stale, sizeof(stale), "%s/tmp/0000000000000000", f->dir);
	int fd = open(stale, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "partial", 7), 7);
	close(fd);

	s = open_ok(f, "");
	assert_false(file_exists(stale));
	struct shadow_store_stats after = stats_of(s);
	assert_int_equal(after.items, 3);
	assert_int_equal(after.used_nbytes, before.used_nbytes);
	assert_int_equal(after.corrupt, 0);
	for (int i = 0; i < 3; i++) {
		uint64_t vn = 0;
		snprintf(key, sizeof(key), "r%d", i);
		assert_int_equal(get(s, key, out, sizeof(out), &vn), 0);
		assert_int_equal(vn, sizeof(out));
		assert_memory_equal(out, v[i], sizeof(out));
	}
	shadow_store_close(s);
}

/* Two handles of one directory share its data; capacities must agree. */
static void test_two_handles_share(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *a = open_ok(f, "?capacity=1MiB");
	struct shadow_store *b = open_ok(f, "/./"); /* same realpath; capacity taken from a */
	struct shadow_store *c = NULL;
	char url[256];
	uint8_t out[16];
	uint64_t vn;

	assert_int_equal(put(a, "shared", "0123456789", 10), 0);
	assert_int_equal(get(b, "shared", out, sizeof(out), &vn), 0);
	assert_int_equal(vn, 10);
	assert_memory_equal(out, "0123456789", 10);
	assert_int_equal(stats_of(b).items, 1);
	assert_int_equal(stats_of(b).capacity_nbytes, MIB);
	assert_int_equal(stats_of(a).used_nbytes, stats_of(b).used_nbytes);
	/* Counters are per handle. */
	assert_int_equal(stats_of(a).puts, 1);
	assert_int_equal(stats_of(a).gets, 0);
	assert_int_equal(stats_of(b).hits, 1);

	url_of(f, "?capacity=2MiB", url, sizeof(url));
	assert_int_equal(shadow_store_open(url, NULL, &c), -EINVAL);
	url_of(f, "?capacity=1024KiB", url, sizeof(url));
	assert_int_equal(shadow_store_open(url, NULL, &c), 0);

	/* Closing one leaves the others working. */
	shadow_store_close(a);
	uint32_t n_found = 0;
	assert_int_equal(del(c, "shared", &n_found), 0);
	assert_int_equal(n_found, 1);
	assert_int_equal(get(b, "shared", out, sizeof(out), NULL), SHADOW_EMISS);
	shadow_store_close(b);
	shadow_store_close(c);
}

/* Run open in a child process; its status (as a small positive number to exit with). */
static int child_open_rc(const struct fixture *f)
{
	pid_t pid = fork();
	int ws;

	assert_true(pid >= 0);
	if (pid == 0) {
		int rc = open_rc(f, "");
		_exit(rc == 0 ? 0 : rc == -EBUSY ? 1 : 2);
	}
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	assert_true(WIFEXITED(ws));
	return WEXITSTATUS(ws);
}

static void test_second_process_busy(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");

	assert_int_equal(child_open_rc(f), 1); /* -EBUSY */
	shadow_store_close(s);
	assert_int_equal(child_open_rc(f), 0); /* the lock went with the last handle */
}

/* 8 KiB per entry (4 KiB header block + 4 KiB value), room for three. */
static void test_capacity_lru(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "?capacity=24KiB");
	uint8_t v[4096], out[4096];
	char path[256];

	memset(v, 1, sizeof(v));
	assert_int_equal(put(s, "a", v, sizeof(v)), 0);
	assert_int_equal(put(s, "b", v, sizeof(v)), 0);
	assert_int_equal(put(s, "c", v, sizeof(v)), 0);
	assert_int_equal(stats_of(s).evictions, 0);
	assert_int_equal(get(s, "a", out, sizeof(out), NULL), 0); /* a is now the newest */
	assert_int_equal(put(s, "d", v, sizeof(v)), 0);           /* b is the oldest: evicted */

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(st.items, 3);
	assert_int_equal(st.used_nbytes, 3 * 8192);
	assert_int_equal(st.capacity_nbytes, 24576);
	entry_path(f, "b", path, sizeof(path));
	assert_false(file_exists(path));
	assert_int_equal(get(s, "b", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_int_equal(get(s, "a", out, sizeof(out), NULL), 0);
	assert_int_equal(get(s, "c", out, sizeof(out), NULL), 0);
	assert_int_equal(get(s, "d", out, sizeof(out), NULL), 0);

	/* A bigger value evicts as many as it needs: a (least recently read), then c. */
	uint8_t big[12288];
	memset(big, 2, sizeof(big));
	assert_int_equal(put(s, "e", big, sizeof(big)), 0);
	st = stats_of(s);
	assert_int_equal(st.evictions, 3);
	assert_int_equal(st.items, 2);
	assert_int_equal(st.used_nbytes, 8192 + 16384);
	assert_int_equal(get(s, "d", out, sizeof(out), NULL), 0);
	assert_int_equal(get(s, "c", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_int_equal(get(s, "a", out, sizeof(out), NULL), SHADOW_EMISS);
	shadow_store_close(s);
}

static void set_mtime(const struct fixture *f, const char *key, time_t t)
{
	struct timespec ts[2] = { { t, 0 }, { t, 0 } };
	char path[256];

	entry_path(f, key, path, sizeof(path));
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* After a restart the LRU order is the files' mtimes; open evicts beyond a smaller capacity. */
static void test_restart_lru_by_mtime(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "?capacity=24KiB");
	uint8_t v[4096], out[4096];

	memset(v, 3, sizeof(v));
	assert_int_equal(put(s, "a", v, sizeof(v)), 0);
	assert_int_equal(put(s, "b", v, sizeof(v)), 0);
	assert_int_equal(put(s, "c", v, sizeof(v)), 0);
	shadow_store_close(s);
	set_mtime(f, "a", 3000000);
	set_mtime(f, "b", 1000000);
	set_mtime(f, "c", 2000000);

	s = open_ok(f, "?capacity=24KiB");
	assert_int_equal(put(s, "d", v, sizeof(v)), 0); /* b has the oldest mtime */
	assert_int_equal(get(s, "b", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_int_equal(get(s, "a", out, sizeof(out), NULL), 0);
	shadow_store_close(s);

	/* a, c, d on disk; d newest. Room for one: only d stays. */
	set_mtime(f, "a", 1000000);
	set_mtime(f, "c", 2000000);
	s = open_ok(f, "?capacity=8KiB");
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.items, 1);
	assert_int_equal(st.evictions, 2);
	assert_int_equal(st.used_nbytes, 8192);
	assert_int_equal(get(s, "d", out, sizeof(out), NULL), 0);
	assert_int_equal(get(s, "a", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_int_equal(get(s, "c", out, sizeof(out), NULL), SHADOW_EMISS);
	shadow_store_close(s);
}

static void test_value_larger_than_capacity(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "?capacity=16KiB");
	static uint8_t v[12288 + 1];
	uint8_t out[16];

	assert_int_equal(put(s, "small", "x", 1), 0);
	assert_int_equal(put(s, "huge", v, sizeof(v)), SHADOW_ELIMIT);
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.oversize, 1);
	assert_int_equal(st.errors, 1);
	assert_int_equal(st.puts, 1);
	assert_int_equal(st.items, 1); /* nothing evicted for a value that cannot fit */
	assert_int_equal(st.evictions, 0);
	assert_int_equal(get(s, "huge", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_int_equal(put(s, "fits", v, sizeof(v) - 1), 0); /* exactly the capacity */
	assert_int_equal(stats_of(s).used_nbytes, 16384);
	shadow_store_close(s);
}

static void test_destination_too_small(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t v[1000], out[1000];
	struct shadow_store_req req;
	struct probe p;

	fill(v, sizeof(v), 5);
	assert_int_equal(put(s, "k", v, sizeof(v)), 0);
	struct iovec iov = { out, sizeof(out) - 1 };
	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_GET, "k", &iov, 1, &p);
	assert_int_equal(run(s, &req), SHADOW_ELIMIT);
	assert_int_equal(req.value_nbytes, sizeof(v));
	assert_int_equal(req.landed_nbytes, 0);
	assert_int_equal(p.data_calls, 0);
	assert_int_equal(stats_of(s).oversize, 1);

	/* A handle whose max_value_nbytes is below the value refuses it too. */
	struct shadow_store_options o;
	struct shadow_store *t = NULL;
	char url[256];
	shadow_store_options_default(&o);
	o.max_value_nbytes = 512;
	url_of(f, "", url, sizeof(url));
	assert_int_equal(shadow_store_open(url, &o, &t), 0);
	uint64_t vn = 0;
	assert_int_equal(get(t, "k", out, sizeof(out), &vn), SHADOW_ELIMIT);
	assert_int_equal(vn, sizeof(v));
	shadow_store_close(t);

	/* The entry is intact. */
	assert_int_equal(get(s, "k", out, sizeof(out), &vn), 0);
	assert_memory_equal(out, v, sizeof(v));
	shadow_store_close(s);
}

/* An entry truncated on disk while the store was closed: removed at open, counted. */
static void test_torn_at_reopen(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t v[5000], out[5000];
	char path[256];

	fill(v, sizeof(v), 8);
	assert_int_equal(put(s, "torn", v, sizeof(v)), 0);
	assert_int_equal(put(s, "whole", v, sizeof(v)), 0);
	shadow_store_close(s);
	entry_path(f, "torn", path, sizeof(path));
	assert_int_equal(truncate(path, VALUE_OFFSET + 100), 0);

	s = open_ok(f, "");
	assert_false(file_exists(path));
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.corrupt, 1);
	assert_int_equal(st.items, 1);
	assert_int_equal(st.used_nbytes, VALUE_OFFSET + sizeof(v));
	assert_int_equal(get(s, "torn", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_int_equal(get(s, "whole", out, sizeof(out), NULL), 0);
	assert_memory_equal(out, v, sizeof(v));
	/* Another handle joining the open directory scanned nothing. */
	struct shadow_store *t = open_ok(f, "");
	assert_int_equal(stats_of(t).corrupt, 0);
	shadow_store_close(t);
	shadow_store_close(s);
}

static void write_file(const char *path, const void *buf, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, n), (ssize_t)n);
	close(fd);
}

/* Garbage, stray names and misplaced entries in v1/ are removed at open. */
static void test_garbage_at_open(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	char good[256], bad[256], stray[256], misplaced[256], subdir[256], fan[256];
	uint8_t junk[8192], entry[VALUE_OFFSET + 10], out[16];

	assert_int_equal(put(s, "good", "0123456789", 10), 0);
	assert_int_equal(put(s, "mine", "abcdefghij", 10), 0);
	shadow_store_close(s);
	entry_path(f, "good", good, sizeof(good));

	/* garbage under a valid name, in a fan-out dir of its own */
	entry_path(f, "garbage", bad, sizeof(bad));
	snprintf(fan, sizeof(fan), "%s", bad);
	*strrchr(fan, '/') = '\0';
	mkdir(fan, 0755);
	fill(junk, sizeof(junk), 9);
	write_file(bad, junk, sizeof(junk));
	/* a name that is not a hash */
	snprintf(stray, sizeof(stray), "%s", good);
	strcpy(strrchr(stray, '/') + 1, "notes.txt");
	write_file(stray, "hello", 5);
	/* a valid entry of "good" stored under the name of "other" */
	int fd = open(good, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, entry, sizeof(entry)), (ssize_t)sizeof(entry));
	close(fd);
	entry_path(f, "other", misplaced, sizeof(misplaced));
	snprintf(fan, sizeof(fan), "%s", misplaced);
	*strrchr(fan, '/') = '\0';
	mkdir(fan, 0755);
	write_file(misplaced, entry, sizeof(entry));
	/* a directory: not ours to judge, left alone */
	snprintf(subdir, sizeof(subdir), "%s", good);
	strcpy(strrchr(subdir, '/') + 1, "somedir");
	assert_int_equal(mkdir(subdir, 0755), 0);

	s = open_ok(f, "");
	assert_int_equal(stats_of(s).corrupt, 3);
	assert_int_equal(stats_of(s).items, 2);
	assert_false(file_exists(bad));
	assert_false(file_exists(stray));
	assert_false(file_exists(misplaced));
	assert_true(file_exists(subdir));
	assert_true(file_exists(good));
	assert_int_equal(get(s, "good", out, sizeof(out), NULL), 0);
	assert_memory_equal(out, "0123456789", 10);
	assert_int_equal(get(s, "other", out, sizeof(out), NULL), SHADOW_EMISS);
	shadow_store_close(s);
	assert_int_equal(rmdir(subdir), 0);
}

/* Truncated while open: a GET finds it torn before any byte lands, a miss; it is removed. */
static void test_torn_while_open(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t v[5000], out[5000];
	char path[256];
	uint64_t vn = 1;

	fill(v, sizeof(v), 11);
	assert_int_equal(put(s, "t1", v, sizeof(v)), 0);
	assert_int_equal(put(s, "t2", v, sizeof(v)), 0);
	entry_path(f, "t1", path, sizeof(path));
	assert_int_equal(truncate(path, VALUE_OFFSET + 4999), 0);
	assert_int_equal(get(s, "t1", out, sizeof(out), &vn), SHADOW_EMISS);
	assert_int_equal(vn, 0);
	assert_false(file_exists(path));
	entry_path(f, "t2", path, sizeof(path));
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(get(s, "t2", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_false(file_exists(path));

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.corrupt, 2);
	assert_int_equal(st.misses, 2);
	assert_int_equal(st.errors, 0);
	assert_int_equal(st.items, 0);
	assert_int_equal(st.used_nbytes, 0);
	shadow_store_close(s);
}

/* Truncated while its value streams: bytes have landed, so SHADOW_ECORRUPT; removed. */
static void test_torn_while_streaming(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t *v = malloc(BIG_NBYTES), *out = malloc(BIG_NBYTES);
	struct shadow_store_req req;
	struct probe p;
	char path[256];

	assert_non_null(v);
	assert_non_null(out);
	fill(v, BIG_NBYTES, 12);
	assert_int_equal(put(s, "big", v, BIG_NBYTES), 0);
	entry_path(f, "big", path, sizeof(path));
	struct iovec iov = { out, BIG_NBYTES };
	probe_init(&p, s);
	p.truncate_path = path;
	p.truncate_to = VALUE_OFFSET + PIECE_NBYTES + 1;
	req_init(&req, SHADOW_STORE_GET, "big", &iov, 1, &p);
	assert_int_equal(run(s, &req), SHADOW_ECORRUPT);
	assert_int_equal(p.data_calls, 1);
	assert_int_equal(req.landed_nbytes, PIECE_NBYTES);
	assert_memory_equal(out, v, PIECE_NBYTES);
	assert_false(file_exists(path));
	assert_int_equal(stats_of(s).corrupt, 1);
	assert_int_equal(stats_of(s).items, 0);
	free(v);
	free(out);
	shadow_store_close(s);
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	uint8_t b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, off), 1);
	b ^= 0x10;
	assert_int_equal(pwrite(fd, &b, 1, off), 1);
	close(fd);
}

static void test_flipped_value_byte(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t *v = malloc(BIG_NBYTES), *out = malloc(BIG_NBYTES);
	struct shadow_store_req req;
	struct probe p;
	char path[256];

	assert_non_null(v);
	assert_non_null(out);
	fill(v, 10000, 13);
	assert_int_equal(put(s, "small", v, 10000), 0);
	entry_path(f, "small", path, sizeof(path));
	flip_byte(path, VALUE_OFFSET + 5000);
	assert_int_equal(get(s, "small", out, 10000, NULL), SHADOW_ECORRUPT);
	assert_false(file_exists(path));
	assert_int_equal(get(s, "small", out, 10000, NULL), SHADOW_EMISS);

	/* In the last byte of a multi-piece value: the final on_data never comes. */
	fill(v, BIG_NBYTES, 14);
	assert_int_equal(put(s, "big", v, BIG_NBYTES), 0);
	entry_path(f, "big", path, sizeof(path));
	flip_byte(path, VALUE_OFFSET + BIG_NBYTES - 1);
	struct iovec iov = { out, BIG_NBYTES };
	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_GET, "big", &iov, 1, &p);
	assert_int_equal(run(s, &req), SHADOW_ECORRUPT);
	assert_true(p.progress_ok);
	assert_int_equal(p.data_calls, 2);
	assert_int_equal(p.last_landed, 2 * PIECE_NBYTES);
	assert_false(file_exists(path));

	/* A flipped header byte reads as torn: a miss. */
	assert_int_equal(put(s, "hdr", v, 100), 0);
	entry_path(f, "hdr", path, sizeof(path));
	flip_byte(path, 17);
	assert_int_equal(get(s, "hdr", out, 100, NULL), SHADOW_EMISS);
	assert_false(file_exists(path));

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.corrupt, 3);
	assert_int_equal(st.errors, 2);
	assert_int_equal(st.hits, 0);
	assert_int_equal(st.items, 0);
	free(v);
	free(out);
	shadow_store_close(s);
}

/* A file holding another key (as after a hash collision) is a miss and stays. */
static void test_other_key_in_file(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	char pa[256], pb[256];
	uint8_t out[16];

	assert_int_equal(put(s, "A", "aaaa", 4), 0);
	assert_int_equal(put(s, "B", "bbbb", 4), 0);
	entry_path(f, "A", pa, sizeof(pa));
	entry_path(f, "B", pb, sizeof(pb));
	assert_int_equal(rename(pa, pb), 0);
	assert_int_equal(get(s, "B", out, sizeof(out), NULL), SHADOW_EMISS);
	assert_true(file_exists(pb));
	assert_int_equal(stats_of(s).corrupt, 0);
	assert_int_equal(get(s, "A", out, sizeof(out), NULL), SHADOW_EMISS); /* file gone */
	assert_int_equal(stats_of(s).items, 1);
	shadow_store_close(s);
}

/* on_data cancels: streaming stops at once, nothing more is written into the iovec. */
static void test_cancel_from_on_data(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	uint8_t *v = malloc(BIG_NBYTES), *out = malloc(BIG_NBYTES);
	struct shadow_store_req req;
	struct probe p;

	assert_non_null(v);
	assert_non_null(out);
	fill(v, BIG_NBYTES, 15);
	assert_int_equal(put(s, "big", v, BIG_NBYTES), 0);
	memset(out, 0xaa, BIG_NBYTES);
	struct iovec iov = { out, BIG_NBYTES };
	probe_init(&p, s);
	p.cancel_at_call = 1;
	req_init(&req, SHADOW_STORE_GET, "big", &iov, 1, &p);
	assert_int_equal(run(s, &req), -ECANCELED);
	assert_int_equal(p.cancel_rc, 0);
	assert_int_equal(p.data_calls, 1);
	assert_int_equal(req.landed_nbytes, PIECE_NBYTES);
	assert_memory_equal(out, v, PIECE_NBYTES);
	for (uint64_t i = PIECE_NBYTES; i < BIG_NBYTES; i++) {
		if (out[i] != 0xaa)
			fail_msg("byte %llu written after cancel", (unsigned long long)i);
	}
	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.cancels, 1);
	assert_int_equal(st.hits, 0);
	/* The entry is untouched. */
	assert_int_equal(get(s, "big", out, BIG_NBYTES, NULL), 0);
	assert_memory_equal(out, v, BIG_NBYTES);
	free(v);
	free(out);
	shadow_store_close(s);
}

/* Cancel of a queued request, of one not in flight, and close with requests queued. */
static void test_cancel_queued_and_close(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	struct shadow_store_req r1, r2, r3;
	struct probe p;
	uint8_t out[8];
	struct iovec iov = { out, sizeof(out) };

	assert_int_equal(put(s, "k", "12345678", 8), 0);
	probe_init(&p, s);
	req_init(&r1, SHADOW_STORE_GET, "k", &iov, 1, &p);
	req_init(&r2, SHADOW_STORE_GET, "k", &iov, 1, &p);
	assert_int_equal(shadow_store_submit(s, &r1), 0);
	assert_int_equal(shadow_store_submit(s, &r2), 0);
	assert_int_equal(shadow_store_cancel(s, &r1), 0);
	/* The status, like on_done, comes with the next poll. */
	assert_int_equal(r1.status, SHADOW_STORE_PENDING);
	assert_int_equal(p.done_calls, 0);
	assert_int_equal(shadow_store_cancel(s, &r1), -ENOENT);
	assert_int_equal(shadow_store_wait(s, &r2), 0);
	assert_int_equal(r1.status, -ECANCELED);
	assert_int_equal(p.done_calls, 2);
	assert_int_equal(r2.value_nbytes, 8);
	assert_int_equal(shadow_store_cancel(s, &r2), -ENOENT);

	/* A request queued on another handle is not this one's to cancel. */
	struct shadow_store *t = open_ok(f, "");
	req_init(&r3, SHADOW_STORE_GET, "k", &iov, 1, &p);
	assert_int_equal(shadow_store_submit(t, &r3), 0);
	assert_int_equal(shadow_store_cancel(s, &r3), -ENOENT);
	assert_int_equal(stats_of(t).in_flight, 1);
	shadow_store_close(t); /* completes r3 with -ECANCELED and calls on_done */
	assert_int_equal(r3.status, -ECANCELED);
	assert_int_equal(p.done_calls, 3);
	assert_int_equal(stats_of(s).cancels, 1);
	shadow_store_close(s);
}

static void test_deadline_passed(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = open_ok(f, "");
	struct shadow_store_req req;
	struct probe p;
	uint8_t out[8];
	struct iovec iov = { out, sizeof(out) };

	assert_int_equal(put(s, "k", "12345678", 8), 0);
	probe_init(&p, s);
	req_init(&req, SHADOW_STORE_GET, "k", &iov, 1, &p);
	req.deadline_ns = 1; /* long past */
	assert_int_equal(run(s, &req), -ETIMEDOUT);
	assert_int_equal(p.data_calls, 0);

	struct iovec in = { (void *)"abc", 3 };
	req_init(&req, SHADOW_STORE_PUT, "late", &in, 1, &p);
	req.deadline_ns = 1;
	assert_int_equal(run(s, &req), -ETIMEDOUT);
	assert_int_equal(get(s, "late", out, sizeof(out), NULL), SHADOW_EMISS);

	struct shadow_store_stats st = stats_of(s);
	assert_int_equal(st.timeouts, 2);
	assert_int_equal(st.errors, 2);
	assert_int_equal(st.puts, 1);
	shadow_store_close(s);
}

static void test_bad_urls(void **state)
{
	struct fixture *f = *state;
	struct shadow_store *s = NULL;
	char url[512], file[256];

	assert_int_equal(open_rc(f, "?bogus=1"), -EINVAL);
	assert_int_equal(open_rc(f, "?capacity=abc"), -EINVAL);
	assert_int_equal(open_rc(f, "?capacity=0"), -EINVAL);
	assert_int_equal(open_rc(f, "?capacity=12XB"), -EINVAL);
	assert_int_equal(shadow_store_open("file://host/tmp/x", NULL, &s), -EINVAL);
	assert_int_equal(shadow_store_open("file://user@/tmp/x", NULL, &s), -EINVAL);
	assert_int_equal(shadow_store_open("file://", NULL, &s), -EINVAL);
	snprintf(url, sizeof(url), "file://%s/no-such-parent/leaf", f->dir);
	assert_int_equal(shadow_store_open(url, NULL, &s), -ENOENT);
	snprintf(file, sizeof(file), "%s/plain", f->dir);
	write_file(file, "x", 1);
	snprintf(url, sizeof(url), "file://%s", file);
	assert_int_equal(shadow_store_open(url, NULL, &s), -ENOTDIR);
	assert_null(s);

	/* A missing leaf is created; percent escapes are decoded. */
	snprintf(url, sizeof(url), "file://%s/new%%20dir?capacity=1GiB", f->dir);
	assert_int_equal(shadow_store_open(url, NULL, &s), 0);
	snprintf(file, sizeof(file), "%s/new dir/v1", f->dir);
	assert_true(file_exists(file));
	assert_int_equal(stats_of(s).capacity_nbytes, UINT64_C(1) << 30);
	shadow_store_close(s);
}

/* Submit and wait without cmocka asserts (for forked children); the status. */
static int child_run(struct shadow_store *s, uint32_t op, const char *key, void *buf, size_t n)
{
	struct iovec iov = { buf, n };
	struct shadow_store_req req;

	memset(&req, 0, sizeof(req));
	req.op = op;
	req.key = key;
	req.iov = &iov;
	req.iov_count = 1;
	if (shadow_store_submit(s, &req) != 0)
		return 1;
	return shadow_store_wait(s, &req);
}

/* A write that fails (here: RLIMIT_FSIZE) returns -errno and leaves no file behind. */
static void test_write_error(void **state)
{
	struct fixture *f = *state;
	pid_t pid = fork();
	int ws;

	assert_true(pid >= 0);
	if (pid == 0) {
		/* No cmocka asserts in the child: a failure must only reach the exit code. */
		static uint8_t v[65536];
		struct rlimit rl = { 16384, 16384 };
		struct shadow_store_stats st = { .size = sizeof(st) };
		struct shadow_store *s = NULL;
		char url[256], tmp[256];
		uint8_t out[16];
		int code = 0;

		signal(SIGXFSZ, SIG_IGN);
		url_of(f, "", url, sizeof(url));
		if (setrlimit(RLIMIT_FSIZE, &rl) < 0 || shadow_store_open(url, NULL, &s) != 0)
			_exit(10);
		if (child_run(s, SHADOW_STORE_PUT, "k", v, sizeof(v)) != -EFBIG)
			code = 11;
		else if (child_run(s, SHADOW_STORE_GET, "k", out, sizeof(out)) != SHADOW_EMISS)
			code = 12;
		else if (shadow_store_stats(s, &st) != 0 || st.items != 0 || st.errors != 1)
			code = 13;
		else if (child_run(s, SHADOW_STORE_PUT, "k", v, 100) != 0) /* small ones fit */
			code = 14;
		snprintf(tmp, sizeof(tmp), "%s/tmp", f->dir);
		if (code == 0 && rmdir(tmp) != 0) /* must be empty */
			code = 15;
		shadow_store_close(s);
		_exit(code);
	}
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	assert_true(WIFEXITED(ws));
	assert_int_equal(WEXITSTATUS(ws), 0);
}

/* ---- two threads, two handles, one directory ---- */

#define MT_KEYS 16u
#define MT_ITERS 1500u
#define MT_VALUE_MAX 9000u

struct mt_worker {
	struct shadow_store *store;
	uint32_t seed;
	uint32_t bad;     /* a GET delivered a value that is not its key's: must stay 0 */
	uint32_t hits, failures;
};

/* A self-describing value: key index, seed, length, then fill(seed). */
static uint64_t mt_value(uint8_t *buf, uint32_t key, uint32_t seed)
{
	uint64_t n = 16 + (seed % (MT_VALUE_MAX - 16));

	memcpy(buf, &key, 4);
	memcpy(buf + 4, &seed, 4);
	memcpy(buf + 8, &n, 8);
	fill(buf + 16, n - 16, seed);
	return n;
}

static void *mt_run(void *arg)
{
	struct mt_worker *w = arg;
	static const char *const names[MT_KEYS] = {
		"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7",
		"m8", "m9", "m10", "m11", "m12", "m13", "m14", "m15",
	};
	uint8_t *v = malloc(MT_VALUE_MAX), *out = malloc(MT_VALUE_MAX);
	uint8_t *want = malloc(MT_VALUE_MAX);
	uint32_t x = w->seed;

	if (v == NULL || out == NULL || want == NULL) {
		w->bad++;
		goto out;
	}
	for (uint32_t it = 0; it < MT_ITERS; it++) {
		x = x * 1103515245u + 12345u;
		uint32_t key = (x >> 8) % MT_KEYS, op = (x >> 20) % 10;
		struct shadow_store_req req;
		struct iovec iov;

		memset(&req, 0, sizeof(req));
		req.key = names[key];
		req.iov = &iov;
		req.iov_count = 1;
		if (op < 4) {
			req.op = SHADOW_STORE_PUT;
			iov.iov_base = v;
			iov.iov_len = mt_value(v, key, x);
		} else if (op < 8) {
			req.op = SHADOW_STORE_GET;
			iov.iov_base = out;
			iov.iov_len = MT_VALUE_MAX;
		} else if (op < 9) {
			req.op = SHADOW_STORE_DELETE;
			req.iov_count = 0;
		} else {
			req.op = SHADOW_STORE_EXISTS;
			req.keys = &names[key];
			req.n_keys = MT_KEYS - key;
			req.iov_count = 0;
		}
		if (shadow_store_submit(w->store, &req) != 0) {
			w->bad++;
			continue;
		}
		int rc = shadow_store_wait(w->store, &req);
		if (req.op == SHADOW_STORE_GET && rc == 0) {
			uint32_t k, seed;
			memcpy(&k, out, 4);
			memcpy(&seed, out + 4, 4);
			if (k != key || mt_value(want, key, seed) != req.value_nbytes ||
			    memcmp(out, want, req.value_nbytes) != 0)
				w->bad++;
			w->hits++;
		} else if (rc != 0 && rc != SHADOW_EMISS) {
			w->failures++;
		}
	}
out:
	free(v);
	free(out);
	free(want);
	return NULL;
}

/* Sum of the sizes of the entry files on disk, and their count. */
static void disk_usage(const struct fixture *f, uint64_t *nbytes, uint64_t *count)
{
	char path[512];

	*nbytes = *count = 0;
	for (unsigned xx = 0; xx < 256; xx++) {
		snprintf(path, sizeof(path), "%s/v1/%02x", f->dir, xx);
		DIR *d = opendir(path);
		struct dirent *de;
		if (d == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			struct stat st;
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/v1/%02x/%s", f->dir, xx, de->d_name);
			assert_int_equal(stat(path, &st), 0);
			*nbytes += (uint64_t)st.st_size;
			(*count)++;
		}
		closedir(d);
	}
}

/*
 * Handles in two threads race on 16 keys with evictions: no GET ever sees another key's
 * value or a torn one, nothing fails, and once every key has been read the index agrees with
 * the disk.
 */
static void test_two_threads(void **state)
{
	struct fixture *f = *state;
	struct mt_worker w[2];
	pthread_t th[2];

	for (int i = 0; i < 2; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].store = open_ok(f, "?capacity=64KiB");
		w[i].seed = 1000u + (uint32_t)i;
	}
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, mt_run, &w[i]), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(w[i].bad, 0);
		assert_int_equal(w[i].failures, 0);
		assert_true(w[i].hits > 0);
	}
	assert_true(stats_of(w[0].store).evictions > 0);
	assert_int_equal(stats_of(w[0].store).corrupt + stats_of(w[1].store).corrupt, 0);

	/* Reading every key heals what racing unlinks left (see file.c DESIGN). */
	uint8_t *out = malloc(MT_VALUE_MAX);
	char key[8];
	assert_non_null(out);
	for (unsigned k = 0; k < MT_KEYS; k++) {
		snprintf(key, sizeof(key), "m%u", k);
		int rc = get(w[0].store, key, out, MT_VALUE_MAX, NULL);
		assert_true(rc == 0 || rc == SHADOW_EMISS);
	}
	free(out);
	uint64_t disk_nbytes, disk_count;
	disk_usage(f, &disk_nbytes, &disk_count);
	struct shadow_store_stats st = stats_of(w[1].store);
	assert_int_equal(st.used_nbytes, disk_nbytes);
	assert_int_equal(st.items, disk_count);
	assert_true(st.used_nbytes <= st.capacity_nbytes);
	shadow_store_close(w[0].store);
	shadow_store_close(w[1].store);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup_dir, teardown_dir)
		T(test_roundtrip_sizes),
		T(test_roundtrip_multi_piece),
		T(test_file_layout),
		T(test_miss_and_delete),
		T(test_exists_prefix),
		T(test_survives_restart),
		T(test_two_handles_share),
		T(test_second_process_busy),
		T(test_capacity_lru),
		T(test_restart_lru_by_mtime),
		T(test_value_larger_than_capacity),
		T(test_destination_too_small),
		T(test_torn_at_reopen),
		T(test_garbage_at_open),
		T(test_torn_while_open),
		T(test_torn_while_streaming),
		T(test_flipped_value_byte),
		T(test_other_key_in_file),
		T(test_cancel_from_on_data),
		T(test_cancel_queued_and_close),
		T(test_deadline_passed),
		T(test_bad_urls),
		T(test_write_error),
		T(test_two_threads),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
