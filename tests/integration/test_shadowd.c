/*
 * test_shadowd.c - shadowd end to end through the client library (include/shadow/client.h):
 * the daemon is the real binary (argv[1], fork/exec), stores are mem:// and a real
 * redis-server (tests/support/redis_server.h), regions are memfds in this process.
 *
 * Covers: save then fetch into another region at other block ids, byte-exact for a lossless
 * scheme (mem:// and Redis) and within the int8 codec's error bound for a lossy one; lookups
 * by tokens and by keys; the event-loop fd; refusals, cancel, unregister with requests in
 * flight; many concurrent requests from two clients, and one handle split between a
 * submitting and a polling thread; a pool smaller than one request; Redis killed mid-fetch
 * (chunks fail, the daemon stays up, works again after a restart); a client SIGKILLed
 * mid-fetch (the daemon drops its registration and still serves others); the daemon
 * SIGKILLed or stopped (client calls return errors within their deadlines, nothing blocks);
 * SIGTERM draining; --cpus pinning of every thread and the SHADOW_* variables; a TCP
 * endpoint; malformed input on the socket and in the shared rings. Every wait is bounded; an
 * alarm ends a test that hangs anyway.
 *
 * The Redis group skips (the rest runs) without redis-server; the whole test exits 77 only if
 * nothing could run.
 */
#include <errno.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <shadow/client.h>
#include <shadow/shadow.h>

#include "client/proto.h"
#include "support/redis_server.h"
#include "support/watchdog.h"

#define TEST_ALARM_S 120
#define SLACK_MS 500                 /* scheduling slack on a shared 2-core machine */
#define READY_TIMEOUT_MS 20000
#define N_BLOCKS 64u
#define N_CHUNKS_MAX (N_BLOCKS / 4u) /* 4 blocks per chunk */

static const char *g_shadowd;       /* the binary */
static struct shadow_test_redis *g_redis;

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
	return shadow_client_now_ns() / 1000000u;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

#define assert_status(got, want)                                                           \
	do {                                                                               \
		int g_ = (got), w_ = (want);                                               \
		if (g_ != w_)                                                              \
			fail_msg("%s: status %d (%s), want %d (%s)", #got, g_,              \
				 shadow_strerror(g_), w_, shadow_strerror(w_));            \
	} while (0)

/* The test geometry: 2 layers, 2 KV heads, head_dim 128, bf16, 16-token blocks, 64-token
 * chunks (4 blocks per chunk, 32 KiB frames, 128 KiB of KV per chunk). */
static struct shadow_kv_geometry test_geom(void)
{
	return (struct shadow_kv_geometry){ .n_layers = 2, .n_kv_heads = 2, .head_dim = 128,
					    .dtype = SHADOW_DTYPE_BF16, .block_tokens = 16,
					    .chunk_tokens = 64 };
}

static uint16_t f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even (no NaNs here) */
	return (uint16_t)(u >> 16);
}

static float bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static uint32_t rng_next(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(*s >> 33);
}

/* A token sequence of n_chunks chunks, distinct per seed. */
static uint32_t *make_tokens(uint32_t n_chunks, uint64_t seed)
{
	size_t n = (size_t)n_chunks * test_geom().chunk_tokens;
	uint32_t *t = malloc(n * sizeof(*t));
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	assert_non_null(t);
	for (size_t i = 0; i < n; i++)
		t[i] = rng_next(&s) % 128256u;
	return t;
}

/* ------------------------------------------------------------------------------------------ */
/* Regions                                                                                    */
/* ------------------------------------------------------------------------------------------ */

struct region {
	int fd;
	uint8_t *mem;
	size_t nbytes;
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout layout;
	uint32_t id;
};

static void region_make(struct region *r)
{
	memset(r, 0, sizeof(*r));
	r->geom = test_geom();
	r->nbytes = (size_t)N_BLOCKS * r->geom.block_tokens * shadow_geometry_token_nbytes(&r->geom);
	r->fd = memfd_create("test-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(r->fd >= 0);
	assert_int_equal(ftruncate(r->fd, (off_t)r->nbytes), 0);
	r->mem = mmap(NULL, r->nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	assert_true(r->mem != MAP_FAILED);
	assert_status(shadow_client_layout_init(&r->layout, &r->geom, SHADOW_LAYOUT_NHD, N_BLOCKS, 0,
						r->nbytes), 0);
}

static void region_free(struct region *r)
{
	if (r->mem != NULL)
		munmap(r->mem, r->nbytes);
	if (r->fd >= 0)
		close(r->fd);
	r->mem = NULL;
	r->fd = -1;
}

static int region_register(struct shadow_client *c, struct region *r)
{
	struct shadow_client_memory m = { .size = sizeof(m), .kind = SHADOW_CLIENT_MEM_HOST,
					  .fd = r->fd };
	return shadow_client_register_kv(c, &r->geom, &r->layout, &m, &r->id);
}

/* KV-like bf16 values: smooth per channel, with an outlier channel, some noise. */
static void region_fill(struct region *r, uint64_t seed)
{
	uint16_t *p = (uint16_t *)r->mem;
	uint64_t s = seed + 7;
	for (size_t i = 0; i < r->nbytes / 2; i++) {
		uint32_t d = (uint32_t)(i % 128);
		float v = sinf((float)i * 0.001f + (float)d * 0.3f) * (d == 5 ? 8.0f : 1.0f) +
			  (float)(rng_next(&s) % 1000) * 1e-4f;
		p[i] = f32_to_bf16(v);
	}
}

/* Byte offset of block b's (layer, kind) bytes; NHD blocks are contiguous, block_stride long. */
static const uint8_t *block_at(const struct region *r, uint32_t layer, int kind, uint32_t b)
{
	int64_t off = shadow_layout_offset(&r->layout, &r->geom, layer, (enum shadow_kv_kind)kind,
					   b, 0, 0);
	assert_true(off >= 0);
	return r->mem + off;
}

/* Source blocks of chunk c in A: 4c .. 4c+3. Destination blocks in B: a permutation. */
static uint32_t a_block(uint32_t c, uint32_t j)
{
	return 4 * c + j;
}

static uint32_t b_block(uint32_t c, uint32_t j)
{
	return (a_block(c, j) * 37u + 11u) % N_BLOCKS;
}

static void blocks_of(uint32_t first, uint32_t n, bool dst, uint32_t *ids)
{
	for (uint32_t c = 0; c < n; c++)
		for (uint32_t j = 0; j < 4; j++)
			ids[c * 4 + j] = dst ? b_block(first + c, j) : a_block(first + c, j);
}

/* Every block of chunks [first, first + n) of A equals its copy in B, byte for byte. */
static void assert_same_blocks(const struct region *a, const struct region *b, uint32_t first,
			       uint32_t n)
{
	size_t bn = (size_t)a->layout.block_stride;
	for (uint32_t c = first; c < first + n; c++)
		for (uint32_t j = 0; j < 4; j++)
			for (uint32_t l = 0; l < a->geom.n_layers; l++)
				for (int k = 0; k < 2; k++) {
					if (memcmp(block_at(a, l, k, a_block(c, j)),
						   block_at(b, l, k, b_block(c, j)), bn) != 0)
						fail_msg("chunk %u block %u layer %u kind %d differs",
							 c, j, l, k);
				}
}

/*
 * Within the int8 codec's error bound: uniform 8-bit quantization of a group of range R has
 * a step of R / 255, so rounding is off by at most R / 510; the output is rounded to bf16
 * (2^-8 relative) and so are each group's scale and offset (2^-8 relative each, the offset
 * being at most max|x|). Groups (keys: a channel over the chunk; values: a token's head
 * vector) never span more than a frame, so with R and max|x| of the whole frame the bound is
 *   |y - x| <= R / 510 + R / 256 + (|x| + max|x|) / 256,
 * and the test allows twice that. Returns the largest error seen, relative to R.
 */
static double assert_within_int8_bound(const struct region *a, const struct region *b,
				       uint32_t first, uint32_t n)
{
	size_t bn = (size_t)a->layout.block_stride / 2;
	double worst = 0;
	for (uint32_t c = first; c < first + n; c++)
		for (uint32_t l = 0; l < a->geom.n_layers; l++)
			for (int k = 0; k < 2; k++) {
				float lo = INFINITY, hi = -INFINITY, amax = 0;
				for (uint32_t j = 0; j < 4; j++) {
					const uint16_t *x = (const uint16_t *)block_at(a, l, k,
										       a_block(c, j));
					for (size_t i = 0; i < bn; i++) {
						float v = bf16_to_f32(x[i]);
						lo = fminf(lo, v);
						hi = fmaxf(hi, v);
						amax = fmaxf(amax, fabsf(v));
					}
				}
				double range = (double)hi - lo;
				for (uint32_t j = 0; j < 4; j++) {
					const uint16_t *x = (const uint16_t *)block_at(a, l, k,
										       a_block(c, j));
					const uint16_t *y = (const uint16_t *)block_at(b, l, k,
										       b_block(c, j));
					for (size_t i = 0; i < bn; i++) {
						double xv = bf16_to_f32(x[i]), yv = bf16_to_f32(y[i]);
						double err = fabs(yv - xv);
						double bound = range / 510 + range / 256 +
							       (fabs(xv) + amax) / 256;
						if (!(err <= 2 * bound))
							fail_msg("chunk %u layer %u kind %d: %g vs %g "
								 "(error %g, bound %g)", c, l, k, yv,
								 xv, err, 2 * bound);
						if (range > 0 && err / range > worst)
							worst = err / range;
					}
				}
			}
	return worst;
}

/* ------------------------------------------------------------------------------------------ */
/* The daemon                                                                                 */
/* ------------------------------------------------------------------------------------------ */

struct daemon {
	pid_t pid;
	char dir[256];
	char endpoint[300];
	char metrics[128];   /* HOST:PORT */
	char ready[1024];    /* the ready line */
};

/* Start shadowd with the store and extra flags (NULL-ended); wait for its ready line. */
static void daemon_start_listen(struct daemon *d, const char *store, const char *listen, ...)
{
	const char *argv[48];
	int n = 0, out[2];
	char listen_arg[300];
	va_list ap;

	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "%s/shadowd-test-XXXXXX",
		 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(d->dir));
	if (listen == NULL) {
		snprintf(listen_arg, sizeof(listen_arg), "unix:%s/s.sock", d->dir);
		listen = listen_arg;
	}
	argv[n++] = g_shadowd;
	argv[n++] = "--store";
	argv[n++] = store;
	argv[n++] = "--listen";
	argv[n++] = listen;
	argv[n++] = "--metrics";
	argv[n++] = "127.0.0.1:0";
	argv[n++] = "--log-level";
	argv[n++] = "info";
	/* Small buffers to match the small geometry (a chunk is ~130 KiB). */
	argv[n++] = "--rx-size";
	argv[n++] = "256KiB";
	argv[n++] = "--stage-size";
	argv[n++] = "256KiB";
	argv[n++] = "--decode-threads";
	argv[n++] = "1";
	va_start(ap, listen);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL && n < 46;)
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;

	assert_int_equal(pipe2(out, O_CLOEXEC), 0);
	d->pid = fork();
	assert_true(d->pid >= 0);
	if (d->pid == 0) {
		char log[300];
		snprintf(log, sizeof(log), "%s/shadowd.log", d->dir);
		int lf = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(out[1], 1);
		if (lf >= 0)
			dup2(lf, 2);
		execv(g_shadowd, (char *const *)argv);
		_exit(127);
	}
	close(out[1]);
	size_t len = 0;
	uint64_t deadline = now_ms() + READY_TIMEOUT_MS;
	while (strchr(d->ready, '\n') == NULL) {
		struct pollfd p = { .fd = out[0], .events = POLLIN };
		int ms = (int)(deadline > now_ms() ? deadline - now_ms() : 0);
		if (ms == 0 || poll(&p, 1, ms) <= 0)
			fail_msg("shadowd gave no ready line within %d ms (log: %s/shadowd.log)",
				 READY_TIMEOUT_MS, d->dir);
		ssize_t r = read(out[0], d->ready + len, sizeof(d->ready) - 1 - len);
		if (r <= 0)
			fail_msg("shadowd exited before it was ready (log: %s/shadowd.log)", d->dir);
		len += (size_t)r;
		d->ready[len] = '\0';
	}
	close(out[0]);
	if (strncmp(d->ready, "shadowd: ready listen=", 22) != 0)
		fail_msg("unexpected ready line: %s", d->ready);
	const char *lp = d->ready + 22;
	snprintf(d->endpoint, sizeof(d->endpoint), "%.*s", (int)strcspn(lp, " \n"), lp);
	const char *mp = strstr(d->ready, " metrics=");
	assert_non_null(mp);
	mp += 9;
	snprintf(d->metrics, sizeof(d->metrics), "%.*s", (int)strcspn(mp, " \n"), mp);
}

#define daemon_start(d, store, ...) daemon_start_listen(d, store, NULL, __VA_ARGS__)

/* Wait for the daemon to exit within timeout_ms; its wait status, or -1 (then killed). */
static int daemon_reap(struct daemon *d, unsigned timeout_ms)
{
	uint64_t deadline = now_ms() + timeout_ms;
	int st;

	for (;;) {
		pid_t r = waitpid(d->pid, &st, WNOHANG);
		if (r == d->pid)
			break;
		if (now_ms() >= deadline) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &st, 0);
			st = -1;
			break;
		}
		sleep_ms(10);
	}
	d->pid = 0;
	return st;
}

static void daemon_cleanup_dir(struct daemon *d)
{
	char cmd[400];
	if (d->dir[0] == '\0')
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", d->dir);
	d->dir[0] = '\0';
}

static void print_log_tail(struct daemon *d)
{
	char cmd[400];
	snprintf(cmd, sizeof(cmd), "tail -n 30 '%s/shadowd.log' >&2", d->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "(no log)\n");
}

/* SIGTERM and expect a clean exit 0. */
static void daemon_stop(struct daemon *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGTERM);
	int st = daemon_reap(d, 15000);
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		print_log_tail(d);
		fail_msg("shadowd did not exit 0 on SIGTERM (status %#x)", st);
	}
	daemon_cleanup_dir(d);
}

static void daemon_kill(struct daemon *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGKILL);
	daemon_reap(d, 5000);
}

static bool daemon_alive(struct daemon *d)
{
	return d->pid > 0 && waitpid(d->pid, NULL, WNOHANG) == 0;
}

/* GET path from the metrics endpoint: the body (malloc) and the HTTP status. */
static char *http_get(struct daemon *d, const char *path, int *code_ret)
{
	char host[64];
	const char *colon = strrchr(d->metrics, ':');
	struct sockaddr_in sa = { .sin_family = AF_INET };

	snprintf(host, sizeof(host), "%.*s", (int)(colon - d->metrics), d->metrics);
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	assert_int_equal(inet_pton(AF_INET, host, &sa.sin_addr), 1);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	char req[128];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
	assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap + 1);
	assert_non_null(buf);
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		assert_true(poll(&p, 1, 5000) == 1);
		ssize_t r = recv(fd, buf + len, cap - len, 0);
		if (r <= 0)
			break;
		len += (size_t)r;
		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
	}
	close(fd);
	buf[len] = '\0';
	*code_ret = len > 12 ? atoi(buf + 9) : 0;
	char *body = strstr(buf, "\r\n\r\n");
	assert_non_null(body);
	memmove(buf, body + 4, strlen(body + 4) + 1);
	return buf;
}

/* The value of an unlabelled metric (or one line with labels: name{...}), or -1. */
static long long metric(struct daemon *d, const char *name)
{
	int code;
	char *text = http_get(d, "/metrics", &code);
	long long v = -1;
	size_t nl = strlen(name);
	assert_int_equal(code, 200);
	for (char *line = text; line != NULL && *line != '\0';) {
		char *next = strchr(line, '\n');
		if (strncmp(line, name, nl) == 0 && line[nl] == ' ')
			v = atoll(line + nl + 1);
		line = next != NULL ? next + 1 : NULL;
	}
	free(text);
	return v;
}

/* Poll until metric == want (within timeout_ms); returns the last value. */
static long long metric_wait(struct daemon *d, const char *name, long long want,
			     unsigned timeout_ms)
{
	uint64_t deadline = now_ms() + timeout_ms;
	long long v;
	while ((v = metric(d, name)) != want && now_ms() < deadline)
		sleep_ms(20);
	return v;
}

/* ------------------------------------------------------------------------------------------ */
/* Client helpers                                                                             */
/* ------------------------------------------------------------------------------------------ */

static struct shadow_client *connect_ok(struct daemon *d, uint32_t max_inflight)
{
	struct shadow_client_options o;
	struct shadow_client *c = NULL;

	shadow_client_options_default(&o);
	o.name = "test";
	if (max_inflight != 0)
		o.max_inflight = max_inflight;
	assert_status(shadow_client_connect(d->endpoint, &o, &c), 0);
	return c;
}

/* Collect completions until `n` arrived (within timeout_ms, else fail); into out (may be NULL). */
static void collect(struct shadow_client *c, uint32_t n, struct shadow_client_completion *out,
		    unsigned timeout_ms)
{
	struct shadow_client_completion tmp[16];
	uint64_t deadline = now_ms() + timeout_ms;
	uint32_t got = 0;

	while (got < n) {
		int k = shadow_client_poll(c, out != NULL ? out + got : tmp,
					   (int)SHADOW_MIN(n - got, 16u));
		if (k < 0)
			fail_msg("poll: %s after %u of %u completions", shadow_strerror(k), got, n);
		got += (uint32_t)k;
		if (got == n)
			break;
		if (now_ms() >= deadline)
			fail_msg("%u of %u completions after %u ms", got, n, timeout_ms);
		int w = shadow_client_wait(c, (int)SHADOW_MIN(deadline - now_ms() + 1, 100u));
		if (w < 0)
			fail_msg("wait: %s", shadow_strerror(w));
	}
}

struct req_bufs {
	struct shadow_client_request req;
	uint32_t ids[N_BLOCKS];
	uint8_t status[N_CHUNKS_MAX];
};

/* A fetch or save of chunks [first, first + n) of `tokens` (namespace ns), A or B blocks. */
static void req_tokens(struct req_bufs *rb, const struct region *r,
		       const struct shadow_chunk_key *ns, const uint32_t *tokens, uint32_t first,
		       uint32_t n, bool dst_blocks)
{
	memset(rb, 0, sizeof(*rb));
	rb->req.size = sizeof(rb->req);
	rb->req.region = r->id;
	rb->req.tokens = tokens;
	rb->req.n_tokens = (size_t)(first + n) * r->geom.chunk_tokens;
	rb->req.ns = ns;
	rb->req.first_chunk = first;
	rb->req.n_chunks = n;
	blocks_of(first, n, dst_blocks, rb->ids);
	rb->req.block_ids = rb->ids;
	rb->req.n_block_ids = 4 * n;
	rb->req.chunk_status = rb->status;
	memset(rb->status, 0xee, sizeof(rb->status));
}

static uint32_t count_ok(const uint8_t *st, uint32_t n)
{
	uint32_t ok = 0;
	for (uint32_t i = 0; i < n; i++)
		ok += st[i] == SHADOW_CHUNK_OK;
	return ok;
}

/* Save chunks [0, n) of A under `tokens` and check every chunk is stored. */
static void save_all(struct shadow_client *c, const struct region *a,
		     const struct shadow_chunk_key *ns, const uint32_t *tokens, uint32_t n)
{
	struct req_bufs rb;
	struct shadow_client_completion done;
	uint64_t ticket;

	req_tokens(&rb, a, ns, tokens, 0, n, false);
	rb.req.deadline_ns = shadow_client_now_ns() + 20ull * 1000000000ull;
	assert_status(shadow_client_save(c, &rb.req, &ticket), 0);
	collect(c, 1, &done, 30000);
	assert_int_equal(done.ticket, ticket);
	assert_int_equal(done.op, SHADOW_CLIENT_SAVE);
	assert_status(done.status, 0);
	assert_int_equal(done.n_chunks, n);
	if (done.n_ok != n)
		fail_msg("save: %u of %u chunks ok (first status: %s)", done.n_ok, n,
			 shadow_chunk_status_name(rb.status[0]));
	assert_ptr_equal(done.chunk_status, rb.status);
	assert_int_equal(count_ok(rb.status, n), n);
}

/* save_all, retried while the daemon's store connections come back (after a restart). */
static void save_retry(struct shadow_client *c, const struct region *a,
		       const struct shadow_chunk_key *ns, const uint32_t *tokens, uint32_t n,
		       unsigned timeout_ms)
{
	uint64_t deadline = now_ms() + timeout_ms;
	struct shadow_client_completion done;
	struct req_bufs sv;
	uint64_t t;

	for (;;) {
		req_tokens(&sv, a, ns, tokens, 0, n, false);
		assert_status(shadow_client_save(c, &sv.req, &t), 0);
		collect(c, 1, &done, 10000);
		if (done.n_ok == n)
			return;
		if (now_ms() >= deadline)
			fail_msg("save: %u of %u chunks ok after %u ms of retries", done.n_ok, n,
				 timeout_ms);
		sleep_ms(200);
	}
}

/* Fetch chunks [first, first + n) into B; returns the completion. */
static struct shadow_client_completion fetch_wait(struct shadow_client *c, const struct region *b,
						  const struct shadow_chunk_key *ns,
						  const uint32_t *tokens, uint32_t first,
						  uint32_t n, uint8_t *status_ret)
{
	struct req_bufs rb;
	struct shadow_client_completion done;
	uint64_t ticket;

	req_tokens(&rb, b, ns, tokens, first, n, true);
	rb.req.deadline_ns = shadow_client_now_ns() + 20ull * 1000000000ull;
	assert_status(shadow_client_fetch(c, &rb.req, &ticket), 0);
	collect(c, 1, &done, 30000);
	assert_int_equal(done.ticket, ticket);
	assert_int_equal(done.op, SHADOW_CLIENT_FETCH);
	if (status_ret != NULL)
		memcpy(status_ret, rb.status, n);
	done.chunk_status = NULL; /* rb is gone */
	return done;
}

static uint32_t lookup_wait(struct shadow_client *c, const struct region *r,
			    const struct shadow_chunk_key *ns, const uint32_t *tokens,
			    uint32_t n_chunks)
{
	struct shadow_client_request req = { .size = sizeof(req), .region = r->id, .tokens = tokens,
					     .n_tokens = (size_t)n_chunks * r->geom.chunk_tokens,
					     .ns = ns };
	struct shadow_client_completion done;
	uint64_t ticket;

	assert_status(shadow_client_lookup(c, &req, &ticket), 0);
	collect(c, 1, &done, 10000);
	assert_int_equal(done.op, SHADOW_CLIENT_LOOKUP);
	assert_status(done.status, 0);
	assert_int_equal(done.n_tokens, done.n_found * r->geom.chunk_tokens);
	return done.n_found;
}

/* A connected client with regions A (filled) and B (zero), and a namespace. */
struct setup {
	struct shadow_client *c;
	struct region a, b;
	struct shadow_chunk_key ns;
};

static void setup_open(struct setup *s, struct daemon *d, uint64_t seed)
{
	s->c = connect_ok(d, 0);
	region_make(&s->a);
	region_make(&s->b);
	region_fill(&s->a, seed);
	assert_status(region_register(s->c, &s->a), 0);
	assert_status(region_register(s->c, &s->b), 0);
	assert_status(shadow_client_namespace(s->c, s->a.id, "test-model", NULL, 0, &s->ns), 0);
}

static void setup_close(struct setup *s)
{
	shadow_client_close(s->c);
	region_free(&s->a);
	region_free(&s->b);
}

/* ------------------------------------------------------------------------------------------ */
/* Round trips                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Save A, look up, fetch into B at other blocks; byte-exact (the default lossless scheme). */
static void roundtrip_lossless(struct daemon *d, uint64_t seed)
{
	struct setup s;
	uint32_t *tokens = make_tokens(12, seed);
	uint8_t st[N_CHUNKS_MAX];

	setup_open(&s, d, seed);
	assert_int_equal(lookup_wait(s.c, &s.a, &s.ns, tokens, 12), 0);
	save_all(s.c, &s.a, &s.ns, tokens, 8);
	/* Lookup: 8 of 12 chunks are there, counted from the first. */
	assert_int_equal(lookup_wait(s.c, &s.a, &s.ns, tokens, 12), 8);

	struct shadow_client_completion done = fetch_wait(s.c, &s.b, &s.ns, tokens, 0, 8, st);
	assert_status(done.status, 0);
	assert_int_equal(done.n_ok, 8);
	assert_int_equal(count_ok(st, 8), 8);
	assert_int_equal(done.bytes_out, 8ull * 64 * shadow_geometry_token_nbytes(&s.a.geom));
	assert_true(done.bytes_in > 0);
	assert_same_blocks(&s.a, &s.b, 0, 8);

	/* A fetch from the middle (keys chained from the start) and past the end (misses). */
	memset(s.b.mem, 0, s.b.nbytes);
	done = fetch_wait(s.c, &s.b, &s.ns, tokens, 5, 5, st);
	assert_status(done.status, 0);
	assert_int_equal(done.n_ok, 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(st[i], SHADOW_CHUNK_OK);
	assert_int_equal(st[3], SHADOW_CHUNK_MISS);
	assert_int_equal(st[4], SHADOW_CHUNK_MISS);
	assert_same_blocks(&s.a, &s.b, 5, 3);

	/* By keys, computed once by the client. */
	struct shadow_chunk_key keys[8];
	size_t n_keys = 0;
	assert_status(shadow_client_chunk_keys(s.c, s.a.id, &s.ns, tokens, 8 * 64, keys, 8,
					       &n_keys), 0);
	assert_int_equal(n_keys, 8);
	struct shadow_client_request lk = { .size = sizeof(lk), .region = SHADOW_CLIENT_NO_REGION,
					    .keys = keys, .n_chunks = 8 };
	struct shadow_client_completion lc;
	uint64_t t;
	assert_status(shadow_client_lookup(s.c, &lk, &t), 0);
	collect(s.c, 1, &lc, 10000);
	assert_int_equal(lc.n_found, 8);
	assert_int_equal(lc.n_tokens, 0); /* no region: no chunk size */

	/* An outer event loop: wait(0) arms the fd, which turns readable on the completion. */
	assert_int_equal(shadow_client_wait(s.c, 0), 0);
	struct pollfd pf = { .fd = shadow_client_fd(s.c), .events = POLLIN };
	assert_int_equal(poll(&pf, 1, 0), 0);
	assert_status(shadow_client_lookup(s.c, &lk, &t), 0);
	assert_int_equal(poll(&pf, 1, 10000), 1);
	assert_int_equal(shadow_client_poll(s.c, &lc, 1), 1);
	assert_int_equal(lc.ticket, t);
	assert_int_equal(lc.n_found, 8);

	struct shadow_client_stats cs = { .size = sizeof(cs) };
	assert_status(shadow_client_stats(s.c, &cs), 0);
	assert_int_equal(cs.in_flight, 0);
	assert_int_equal(cs.regions, 2);
	assert_int_equal(cs.daemon_requests, cs.submitted);
	assert_int_equal(cs.daemon_completed, cs.completed);
	assert_int_equal(cs.failed, 0);
	setup_close(&s);
	free(tokens);
}

static void test_roundtrip_mem(void **state)
{
	struct daemon d;
	(void)state;
	daemon_start(&d, "mem://", "--pool", "16", NULL);
	roundtrip_lossless(&d, 1);
	daemon_stop(&d);
}

/* Requests the client or the daemon must refuse, and cancel. */
static void test_refusals(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(4, 2);
	struct req_bufs rb;
	uint64_t t;
	(void)state;

	daemon_start(&d, "mem://", "--pool", "16", NULL);
	setup_open(&s, &d, 2);
	/* Client-side checks. */
	req_tokens(&rb, &s.a, &s.ns, tokens, 0, 2, false);
	rb.req.n_block_ids = 7;
	assert_status(shadow_client_fetch(s.c, &rb.req, &t), -EINVAL);
	req_tokens(&rb, &s.a, &s.ns, tokens, 0, 2, false);
	rb.ids[3] = N_BLOCKS;
	assert_status(shadow_client_fetch(s.c, &rb.req, &t), -EINVAL);
	req_tokens(&rb, &s.a, &s.ns, tokens, 0, 2, false);
	rb.req.region = 9;
	assert_status(shadow_client_fetch(s.c, &rb.req, &t), -ENOENT);
	req_tokens(&rb, &s.a, &s.ns, tokens, 3, 2, false);
	rb.req.n_tokens = 4 * 64; /* chunks 3 and 4 of a 4-chunk sequence */
	assert_status(shadow_client_fetch(s.c, &rb.req, &t), -EINVAL);
	assert_status(shadow_client_cancel(s.c, 12345), -ENOENT);
	/* A region the daemon refuses: its layout runs past the memory. */
	struct region bad;
	region_make(&bad);
	bad.layout.region_nbytes = bad.nbytes * 2;
	uint32_t id;
	struct shadow_client_memory m = { .size = sizeof(m), .kind = SHADOW_CLIENT_MEM_HOST,
					  .fd = bad.fd };
	assert_status(shadow_client_register_kv(s.c, &bad.geom, &bad.layout, &m, &id), -EINVAL);
	region_free(&bad);
	/* Unregister, then a fetch into it is refused client-side. */
	struct region tmp;
	region_make(&tmp);
	assert_status(region_register(s.c, &tmp), 0);
	assert_status(shadow_client_unregister(s.c, tmp.id), 0);
	assert_status(shadow_client_unregister(s.c, tmp.id), -ENOENT);
	req_tokens(&rb, &tmp, &s.ns, tokens, 0, 2, true);
	assert_status(shadow_client_fetch(s.c, &rb.req, &t), -ENOENT);
	region_free(&tmp);
	/* Cancel of a request in flight: it still completes, once. */
	save_all(s.c, &s.a, &s.ns, tokens, 4);
	req_tokens(&rb, &s.b, &s.ns, tokens, 0, 4, true);
	assert_status(shadow_client_fetch(s.c, &rb.req, &t), 0);
	int rc = shadow_client_cancel(s.c, t);
	assert_true(rc == 0 || rc == -ENOENT);
	struct shadow_client_completion done;
	collect(s.c, 1, &done, 10000);
	assert_int_equal(done.ticket, t);
	for (uint32_t i = 0; i < 4; i++)
		assert_true(rb.status[i] == SHADOW_CHUNK_OK || rb.status[i] == SHADOW_CHUNK_CANCELED);
	assert_int_equal(shadow_client_poll(s.c, &done, 1), 0);
	/* Unregister with fetches in flight on the region: they end (done or cancelled) and
	 * the reply comes once the daemon no longer touches it. */
	struct req_bufs many[4];
	region_make(&tmp);
	assert_status(region_register(s.c, &tmp), 0);
	for (int i = 0; i < 4; i++) {
		req_tokens(&many[i], &tmp, &s.ns, tokens, 0, 4, true);
		assert_status(shadow_client_fetch(s.c, &many[i].req, &t), 0);
	}
	assert_status(shadow_client_unregister(s.c, tmp.id), 0);
	struct shadow_client_completion cs[4];
	collect(s.c, 4, cs, 10000);
	for (int i = 0; i < 4; i++) {
		assert_status(cs[i].status, 0);
		for (uint32_t j = 0; j < 4; j++)
			assert_true(cs[i].chunk_status[j] == SHADOW_CHUNK_OK ||
				    cs[i].chunk_status[j] == SHADOW_CHUNK_CANCELED);
	}
	region_free(&tmp);
	setup_close(&s);
	free(tokens);
	daemon_stop(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Concurrency and a small pool                                                               */
/* ------------------------------------------------------------------------------------------ */

struct worker {
	struct daemon *d;
	const struct shadow_chunk_key *ns;
	const uint32_t *tokens;
	const struct region *a;
	struct region b;
	uint32_t n_requests;
	bool use_wait;
	uint64_t seed;
	char error[256];
	uint32_t chunks_ok;
};

/* Up to 32 fetches in flight of 1-4 chunks each, over chunks 0..15, into the worker's B. */
static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct shadow_client_options o;
	struct shadow_client *c = NULL;
	struct req_bufs *rb = calloc(32, sizeof(*rb));
	bool busy[32] = { false };
	uint32_t sent = 0, done = 0, in_flight = 0;
	uint64_t s = w->seed, deadline = now_ms() + 60000;
	int rc;

	shadow_client_options_default(&o);
	o.max_inflight = 32;
	if (rb == NULL || (rc = shadow_client_connect(w->d->endpoint, &o, &c)) < 0) {
		snprintf(w->error, sizeof(w->error), "connect failed");
		free(rb);
		return NULL;
	}
	region_make(&w->b);
	struct shadow_client_memory m = { .size = sizeof(m), .kind = SHADOW_CLIENT_MEM_HOST,
					  .fd = w->b.fd };
	struct shadow_chunk_key ns;
	if (shadow_client_register_kv(c, &w->b.geom, &w->b.layout, &m, &w->b.id) < 0 ||
	    shadow_client_namespace(c, w->b.id, "test-model", NULL, 0, &ns) < 0) {
		snprintf(w->error, sizeof(w->error), "register failed");
		goto out;
	}
	while (done < w->n_requests) {
		while (sent < w->n_requests && in_flight < 32) {
			uint32_t i = 0;
			while (busy[i])
				i++;
			uint32_t n = 1 + rng_next(&s) % 4, first = rng_next(&s) % (17 - n);
			req_tokens(&rb[i], &w->b, &ns, w->tokens, first, n, true);
			rb[i].req.user = &rb[i];
			rb[i].req.deadline_ns = shadow_client_now_ns() + 30ull * 1000000000ull;
			uint64_t t;
			rc = shadow_client_fetch(c, &rb[i].req, &t);
			if (rc == -EAGAIN)
				break;
			if (rc < 0) {
				snprintf(w->error, sizeof(w->error), "fetch: %s", shadow_strerror(rc));
				goto out;
			}
			busy[i] = true;
			sent++;
			in_flight++;
		}
		struct shadow_client_completion cs[8];
		int k = shadow_client_poll(c, cs, 8);
		if (k < 0) {
			snprintf(w->error, sizeof(w->error), "poll: %s", shadow_strerror(k));
			goto out;
		}
		for (int j = 0; j < k; j++) {
			struct req_bufs *r = cs[j].user;
			if (cs[j].status != 0 || cs[j].n_ok != r->req.n_chunks ||
			    cs[j].chunk_status != r->status ||
			    count_ok(r->status, r->req.n_chunks) != r->req.n_chunks) {
				snprintf(w->error, sizeof(w->error),
					 "fetch of %u chunks: status %d, %u ok", r->req.n_chunks,
					 cs[j].status, cs[j].n_ok);
				goto out;
			}
			w->chunks_ok += cs[j].n_ok;
			busy[r - rb] = false;
			in_flight--;
			done++;
		}
		if (k == 0 && w->use_wait)
			(void)shadow_client_wait(c, 100);
		if (now_ms() > deadline) {
			snprintf(w->error, sizeof(w->error), "%u of %u done after 60 s", done,
				 w->n_requests);
			goto out;
		}
	}
out:
	shadow_client_close(c);
	free(rb);
	return NULL;
}

static void test_concurrent(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(16, 3);
	struct worker w[2];
	pthread_t tid[2];
	(void)state;

	daemon_start(&d, "mem://", "--pool", "16", NULL);
	setup_open(&s, &d, 3);
	save_all(s.c, &s.a, &s.ns, tokens, 16);
	for (int i = 0; i < 2; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].d = &d;
		w[i].tokens = tokens;
		w[i].a = &s.a;
		w[i].n_requests = 150;
		w[i].use_wait = i == 1;
		w[i].seed = 100 + (uint64_t)i;
		assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
	}
	/* Meanwhile this client keeps saving and looking up. */
	for (int i = 0; i < 5; i++)
		assert_int_equal(lookup_wait(s.c, &s.a, &s.ns, tokens, 16), 16);
	for (int i = 0; i < 2; i++) {
		pthread_join(tid[i], NULL);
		if (w[i].error[0] != '\0')
			fail_msg("worker %d: %s", i, w[i].error);
		assert_true(w[i].chunks_ok >= 150);
		/* 150 random requests of 1-4 chunks cover all 16 (a chunk is missed with
		 * probability below 1e-8): every one landed intact, whatever the order. */
		assert_same_blocks(&s.a, &w[i].b, 0, 16);
		region_free(&w[i].b);
	}
	setup_close(&s);
	free(tokens);
	daemon_stop(&d);
}

/*
 * One handle, two threads: this one submits fetches by keys, another polls and waits (the
 * split client.h allows). Buffers go back to the submitter through an atomic flag each.
 */
#define SPLIT_REQUESTS 400u
#define SPLIT_BUFS 48u

struct split {
	struct shadow_client *c;
	struct req_bufs *rb;
	_Atomic bool busy[SPLIT_BUFS];
	_Atomic uint32_t completed;
	char error[200];
};

static void *split_poller(void *arg)
{
	struct split *sp = arg;
	uint64_t deadline = now_ms() + 60000;

	while (atomic_load(&sp->completed) < SPLIT_REQUESTS) {
		struct shadow_client_completion cs[8];
		int k = shadow_client_poll(sp->c, cs, 8);
		if (k < 0 || now_ms() > deadline) {
			snprintf(sp->error, sizeof(sp->error), "poll: %d after %u", k,
				 atomic_load(&sp->completed));
			return NULL;
		}
		for (int i = 0; i < k; i++) {
			struct req_bufs *r = cs[i].user;
			if (cs[i].status != 0 || cs[i].n_ok != r->req.n_chunks ||
			    count_ok(r->status, r->req.n_chunks) != r->req.n_chunks) {
				snprintf(sp->error, sizeof(sp->error), "status %d, %u of %u ok",
					 cs[i].status, cs[i].n_ok, r->req.n_chunks);
				return NULL;
			}
			atomic_store(&sp->busy[r - sp->rb], false);
			atomic_fetch_add(&sp->completed, 1);
		}
		if (k == 0)
			(void)shadow_client_wait(sp->c, 50);
	}
	return NULL;
}

static void test_split_threads(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(16, 9);
	struct shadow_chunk_key keys[16];
	size_t n_keys;
	struct split sp = { 0 };
	pthread_t tid;
	uint64_t rng = 9, t;
	(void)state;

	daemon_start(&d, "mem://", "--pool", "16", NULL);
	setup_open(&s, &d, 9);
	save_all(s.c, &s.a, &s.ns, tokens, 16);
	assert_status(shadow_client_chunk_keys(s.c, s.b.id, &s.ns, tokens, 16 * 64, keys, 16,
					       &n_keys), 0);
	sp.c = s.c;
	sp.rb = calloc(SPLIT_BUFS, sizeof(*sp.rb));
	assert_non_null(sp.rb);
	assert_int_equal(pthread_create(&tid, NULL, split_poller, &sp), 0);
	uint64_t deadline = now_ms() + 60000;
	for (uint32_t sent = 0; sent < SPLIT_REQUESTS && sp.error[0] == '\0';) {
		uint32_t i = 0;
		while (i < SPLIT_BUFS && atomic_load(&sp.busy[i]))
			i++;
		if (i == SPLIT_BUFS) {
			sched_yield();
			continue;
		}
		uint32_t n = 1 + rng_next(&rng) % 4, first = rng_next(&rng) % (17 - n);
		struct req_bufs *r = &sp.rb[i];
		memset(r, 0, sizeof(*r));
		r->req.size = sizeof(r->req);
		r->req.region = s.b.id;
		r->req.keys = keys + first;
		r->req.n_chunks = n;
		r->req.first_chunk = first;
		blocks_of(first, n, true, r->ids);
		r->req.block_ids = r->ids;
		r->req.n_block_ids = 4 * n;
		r->req.chunk_status = r->status;
		r->req.user = r;
		atomic_store(&sp.busy[i], true);
		int rc = shadow_client_fetch(s.c, &r->req, &t);
		if (rc == -EAGAIN) {
			atomic_store(&sp.busy[i], false);
			sched_yield();
		} else {
			assert_status(rc, 0);
			sent++;
		}
		assert_true(now_ms() < deadline);
	}
	pthread_join(tid, NULL);
	if (sp.error[0] != '\0')
		fail_msg("poller: %s", sp.error);
	assert_int_equal(atomic_load(&sp.completed), SPLIT_REQUESTS);
	assert_same_blocks(&s.a, &s.b, 0, 16);
	struct shadow_client_stats cst = { .size = sizeof(cst) };
	assert_status(shadow_client_stats(s.c, &cst), 0);
	assert_int_equal(cst.submitted, SPLIT_REQUESTS + 1);
	assert_int_equal(cst.completed, SPLIT_REQUESTS + 1);
	assert_int_equal(cst.in_flight, 0);
	print_message("split threads: %llu doorbells for %llu requests, %llu sleeps\n",
		      (unsigned long long)cst.doorbells, (unsigned long long)cst.submitted,
		      (unsigned long long)cst.sleeps);
	free(sp.rb);
	setup_close(&s);
	free(tokens);
	daemon_stop(&d);
}

/* --pool 1 (MiB): the save thread's 512 KiB and one chunk buffer (256 KiB receive + 256 KiB
 * staging), against a 2 MiB request. */
static void test_small_pool(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(16, 4);
	uint8_t st[16];
	(void)state;

	daemon_start(&d, "mem://", "--pool", "1", NULL);
	assert_int_equal(metric(&d, "shadowd_pipeline_chunk_buffers{state=\"total\"}"), 1);
	setup_open(&s, &d, 4);
	uint64_t request_nbytes = 16ull * 64 * shadow_geometry_token_nbytes(&s.a.geom);
	assert_true(request_nbytes > (1u << 20)); /* larger than the whole pool */
	save_all(s.c, &s.a, &s.ns, tokens, 16);
	struct shadow_client_completion done = fetch_wait(s.c, &s.b, &s.ns, tokens, 0, 16, st);
	assert_status(done.status, 0);
	assert_int_equal(done.n_ok, 16);
	assert_same_blocks(&s.a, &s.b, 0, 16);
	/* The pool is what it was: nothing grew, everything is free again. */
	assert_int_equal(metric(&d, "shadowd_pipeline_chunk_buffers{state=\"free\"}"), 1);
	setup_close(&s);
	free(tokens);
	daemon_stop(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Failures                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A client SIGKILLed with requests in flight: the daemon reclaims it and serves others. */
static void test_client_killed(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(16, 5);
	int ready[2];
	(void)state;

	daemon_start(&d, "mem://", "--pool", "4", NULL);
	setup_open(&s, &d, 5);
	save_all(s.c, &s.a, &s.ns, tokens, 16);
	assert_int_equal(metric(&d, "shadowd_clients"), 1);
	assert_int_equal(metric(&d, "shadowd_regions"), 2);

	assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
	pid_t child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		/* The doomed client: its own connection and region, fetches in flight. */
		struct shadow_client *c = NULL;
		struct region b;
		struct shadow_chunk_key ns;
		static struct req_bufs rb[32];
		uint64_t t;
		int n = 0;
		close(ready[0]);
		if (shadow_client_connect(d.endpoint, NULL, &c) < 0)
			_exit(2);
		b.fd = memfd_create("child", MFD_ALLOW_SEALING);
		b.geom = test_geom();
		b.nbytes = s.a.nbytes;
		if (ftruncate(b.fd, (off_t)b.nbytes) < 0 ||
		    shadow_client_layout_init(&b.layout, &b.geom, SHADOW_LAYOUT_NHD, N_BLOCKS, 0,
					      b.nbytes) < 0)
			_exit(3);
		struct shadow_client_memory m = { .size = sizeof(m),
						  .kind = SHADOW_CLIENT_MEM_HOST, .fd = b.fd };
		if (shadow_client_register_kv(c, &b.geom, &b.layout, &m, &b.id) < 0 ||
		    shadow_client_namespace(c, b.id, "test-model", NULL, 0, &ns) < 0)
			_exit(4);
		for (int i = 0; i < 32; i++) {
			req_tokens(&rb[i], &b, &ns, tokens, 0, 16, true);
			if (shadow_client_fetch(c, &rb[i].req, &t) == 0)
				n++;
		}
		if (n == 0 || write(ready[1], "r", 1) != 1)
			_exit(5);
		for (;;)
			pause();
	}
	close(ready[1]);
	struct pollfd p = { .fd = ready[0], .events = POLLIN };
	char byte;
	assert_int_equal(poll(&p, 1, 10000), 1);
	assert_int_equal(read(ready[0], &byte, 1), 1);
	close(ready[0]);
	assert_int_equal(metric(&d, "shadowd_clients"), 2);
	assert_int_equal(metric(&d, "shadowd_regions"), 3);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);

	/* Its registration goes; ours stays; it no longer shows in the metrics. */
	assert_int_equal(metric_wait(&d, "shadowd_clients", 1, 5000), 1);
	assert_int_equal(metric_wait(&d, "shadowd_regions", 2, 5000), 2);
	int code;
	char *text = http_get(&d, "/metrics", &code);
	char label[64];
	snprintf(label, sizeof(label), "pid=\"%d\"", (int)child);
	assert_null(strstr(text, label));
	free(text);
	assert_true(daemon_alive(&d));
	/* The daemon still serves us, and its pool is whole again. */
	uint8_t st[16];
	struct shadow_client_completion done = fetch_wait(s.c, &s.b, &s.ns, tokens, 0, 16, st);
	assert_status(done.status, 0);
	assert_int_equal(done.n_ok, 16);
	assert_same_blocks(&s.a, &s.b, 0, 16);
	assert_int_equal(metric(&d, "shadowd_pipeline_chunk_buffers{state=\"free\"}"),
			 metric(&d, "shadowd_pipeline_chunk_buffers{state=\"total\"}"));
	setup_close(&s);
	free(tokens);
	daemon_stop(&d);
}

/* The daemon SIGKILLed, then one stopped: every client call returns within its bound. */
static void test_daemon_killed(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(16, 6);
	struct req_bufs rb[32];
	uint64_t t;
	(void)state;

	daemon_start(&d, "mem://", "--pool", "1", NULL);
	setup_open(&s, &d, 6);
	save_all(s.c, &s.a, &s.ns, tokens, 16);
	for (int i = 0; i < 32; i++) {
		req_tokens(&rb[i], &s.b, &s.ns, tokens, 0, 16, true);
		rb[i].req.deadline_ns = shadow_client_now_ns() + 10ull * 1000000000ull;
		assert_status(shadow_client_fetch(s.c, &rb[i].req, &t), 0);
	}
	daemon_kill(&d);
	uint64_t t0 = now_ms();
	/* Every request completes: done before the kill, or -ECONNRESET with chunk errors. */
	struct shadow_client_completion cs[32];
	collect(s.c, 32, cs, 3000);
	uint32_t reset = 0;
	for (int i = 0; i < 32; i++) {
		if (cs[i].status == -ECONNRESET) {
			reset++;
			for (uint32_t j = 0; j < 16; j++)
				assert_int_equal(cs[i].chunk_status[j], SHADOW_CHUNK_ERROR);
		} else {
			assert_status(cs[i].status, 0);
		}
	}
	assert_true(reset > 0); /* 32 x 2 MiB through a 1 MiB pool cannot all be done at once */
	/* Then everything says so, at once. */
	req_tokens(&rb[0], &s.b, &s.ns, tokens, 0, 1, true);
	assert_status(shadow_client_fetch(s.c, &rb[0].req, &t), -EPIPE);
	assert_status(shadow_client_cancel(s.c, t), -EPIPE);
	assert_status(shadow_client_poll(s.c, cs, 8), -ECONNRESET);
	assert_status(shadow_client_wait(s.c, -1), -ECONNRESET);
	struct shadow_client_stats cst = { .size = sizeof(cst) };
	int rc = shadow_client_stats(s.c, &cst);
	assert_true(rc == -EPIPE || rc == -ECONNRESET);
	assert_int_equal(cst.in_flight, 0);
	rc = region_register(s.c, &s.b);
	assert_true(rc == -EPIPE || rc == -ECONNRESET);
	if (now_ms() - t0 > 3000 + SLACK_MS)
		fail_msg("noticing the dead daemon took %llu ms", (unsigned long long)(now_ms() - t0));
	setup_close(&s);
	daemon_cleanup_dir(&d);

	/* A daemon that hangs (SIGSTOP): bounded by call_timeout_ms and wait()'s timeout. */
	daemon_start(&d, "mem://", "--pool", "4", NULL);
	struct shadow_client_options o;
	struct shadow_client *c = NULL;
	shadow_client_options_default(&o);
	o.call_timeout_ms = 300;
	o.connect_timeout_ms = 300;
	assert_status(shadow_client_connect(d.endpoint, &o, &c), 0);
	kill(d.pid, SIGSTOP);
	t0 = now_ms();
	cst.size = sizeof(cst);
	assert_status(shadow_client_stats(c, &cst), -ETIMEDOUT);
	assert_true(now_ms() - t0 < 300 + SLACK_MS);
	t0 = now_ms();
	assert_int_equal(shadow_client_wait(c, 200), 0);
	assert_true(now_ms() - t0 >= 190 && now_ms() - t0 < 200 + SLACK_MS);
	struct shadow_client *c2 = NULL;
	t0 = now_ms();
	assert_status(shadow_client_connect(d.endpoint, &o, &c2), -ETIMEDOUT);
	assert_true(now_ms() - t0 < 300 + SLACK_MS);
	kill(d.pid, SIGCONT);
	/* Once it runs again, the late reply is skipped and the next call works. */
	assert_status(shadow_client_stats(c, &cst), 0);
	shadow_client_close(c);
	daemon_stop(&d);
	free(tokens);
}

/* SIGTERM: requests in flight finish, new ones are refused, exit 0. */
static void test_sigterm_drain(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(16, 7);
	struct req_bufs rb[4];
	uint64_t t;
	(void)state;

	daemon_start(&d, "mem://", "--pool", "1", "--drain-timeout", "10000", NULL);
	setup_open(&s, &d, 7);
	save_all(s.c, &s.a, &s.ns, tokens, 16);
	for (int i = 0; i < 4; i++) {
		req_tokens(&rb[i], &s.b, &s.ns, tokens, 0, 16, true);
		assert_status(shadow_client_fetch(s.c, &rb[i].req, &t), 0);
	}
	kill(d.pid, SIGTERM);
	struct shadow_client_completion cs[4];
	collect(s.c, 4, cs, 10000);
	for (int i = 0; i < 4; i++) {
		assert_status(cs[i].status, 0);
		assert_int_equal(cs[i].n_ok, 16);
	}
	assert_same_blocks(&s.a, &s.b, 0, 16);
	int st = daemon_reap(&d, 10000);
	assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* Gone: the client says so. */
	assert_int_equal(shadow_client_wait(s.c, 2000), -ECONNRESET);
	setup_close(&s);
	daemon_cleanup_dir(&d);
	free(tokens);
}

/* --cpus pins every thread (the metrics thread too); SHADOW_* variables stand in for flags,
 * and a flag wins over its variable. */
static void test_cpus_and_env(void **state)
{
	struct daemon d;
	cpu_set_t mine;
	int cpu = -1;
	char cpus[16], path[128], line[256];
	(void)state;

	assert_int_equal(sched_getaffinity(0, sizeof(mine), &mine), 0);
	for (int i = CPU_SETSIZE - 1; i >= 0; i--) /* the last CPU we may use */
		if (CPU_ISSET(i, &mine)) {
			cpu = i;
			break;
		}
	assert_true(cpu >= 0);
	snprintf(cpus, sizeof(cpus), "%d", cpu);
	setenv("SHADOW_CPUS", cpus, 1);
	setenv("SHADOW_POOL", "3", 1);
	setenv("SHADOW_FETCH_THREADS", "2", 1);
	setenv("SHADOW_DECODE_THREADS", "3", 1); /* the harness's --decode-threads 1 wins */
	setenv("SHADOW_COPY_THREADS", "2", 1);
	daemon_start(&d, "mem://", NULL);
	unsetenv("SHADOW_CPUS");
	unsetenv("SHADOW_POOL");
	unsetenv("SHADOW_FETCH_THREADS");
	unsetenv("SHADOW_DECODE_THREADS");
	unsetenv("SHADOW_COPY_THREADS");
	if (strstr(d.ready, " pool=3MiB fetch=2 decode=1 copy=2 ") == NULL)
		fail_msg("ready line: %s", d.ready);

	/* main (control) + 2 fetch + 1 decode + 2 copy + 1 save + metrics, all on `cpu`. */
	snprintf(path, sizeof(path), "/proc/%d/task", (int)d.pid);
	int n_threads = 0;
	DIR *dir = opendir(path);
	assert_non_null(dir);
	for (struct dirent *e; (e = readdir(dir)) != NULL;) {
		if (e->d_name[0] == '.')
			continue;
		char status[512];
		snprintf(status, sizeof(status), "%s/%s/status", path, e->d_name);
		FILE *f = fopen(status, "r");
		if (f == NULL)
			continue;
		bool seen = false;
		while (fgets(line, sizeof(line), f) != NULL) {
			if (strncmp(line, "Cpus_allowed_list:", 18) == 0) {
				const char *v = line + 18 + strspn(line + 18, " \t");
				if (strncmp(v, cpus, strlen(cpus)) != 0 || v[strlen(cpus)] != '\n')
					fail_msg("thread %s runs on %s, want %s", e->d_name, v, cpus);
				seen = true;
			}
		}
		fclose(f);
		assert_true(seen);
		n_threads++;
	}
	closedir(dir);
	assert_true(n_threads >= 8); /* a sanitizer runtime may add one of its own (TSan) */
	daemon_stop(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Malformed input                                                                            */
/* ------------------------------------------------------------------------------------------ */

static int raw_connect(struct daemon *d)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", d->endpoint + 5);
	assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	return fd;
}

/* Whether the daemon closed fd within timeout_ms (reading and dropping what it sent). */
static bool closed_by_peer(int fd, int timeout_ms)
{
	char buf[256];
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	while (now_ms() < deadline) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 50) == 1) {
			ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN))
				return true;
		}
	}
	return false;
}

static void send_with_fds(int sock, const void *msg, size_t n, const int *fds, int n_fds)
{
	union {
		char b[CMSG_SPACE(3 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { (void *)msg, n };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (n_fds > 0) {
		memset(&u, 0, sizeof(u));
		mh.msg_control = u.b;
		mh.msg_controllen = CMSG_SPACE((size_t)n_fds * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN((size_t)n_fds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, (size_t)n_fds * sizeof(int));
	}
	assert_int_equal(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)n);
}

/* A hand-made client (proto.h) that writes bad things into its own shared rings. */
static void test_malformed(void **state)
{
	struct daemon d;
	(void)state;

	daemon_start(&d, "mem://", "--pool", "4", NULL);
	/* Garbage on the socket: dropped. */
	int fd = raw_connect(&d);
	assert_int_equal(send(fd, "hello", 5, MSG_NOSIGNAL), 5);
	assert_true(closed_by_peer(fd, 3000));
	close(fd);
	/* Another protocol version: told so. */
	fd = raw_connect(&d);
	struct shadow_proto_hello h = { .hdr = { .type = SHADOW_PROTO_HELLO, .nbytes = sizeof(h),
						 .seq = 1 },
					.magic = SHADOW_PROTO_MAGIC, .version = 99, .n_slots = 4,
					.slot_nbytes = 4096, .flags = SHADOW_PROTO_HELLO_SHM };
	struct shadow__proto_shm_layout lay;
	assert_int_equal(shadow__proto_shm_layout(4, 4096, &lay), 0);
	h.shm_nbytes = lay.total_nbytes;
	send_with_fds(fd, &h, sizeof(h), NULL, 0);
	struct shadow_proto_hello_reply rep;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	assert_int_equal(poll(&p, 1, 3000), 1);
	assert_int_equal(recv(fd, &rep, sizeof(rep), 0), (ssize_t)sizeof(rep));
	assert_status(rep.status, SHADOW_EVERSION);
	assert_int_equal(rep.version, SHADOW_PROTO_VERSION);
	close(fd);

	/* An unsealed memfd: refused. A proper one: accepted. */
	int memfd = memfd_create("raw", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	int efd[2] = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC) };
	assert_int_equal(ftruncate(memfd, (off_t)lay.total_nbytes), 0);
	int fds[3] = { memfd, efd[0], efd[1] };
	h.version = SHADOW_PROTO_VERSION;
	fd = raw_connect(&d);
	send_with_fds(fd, &h, sizeof(h), fds, 3);
	assert_int_equal(poll(&p, 1, 3000), 1);
	p.fd = fd;
	assert_int_equal(recv(fd, &rep, sizeof(rep), 0), (ssize_t)sizeof(rep));
	assert_status(rep.status, -EPERM);
	close(fd);
	assert_int_equal(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	fd = raw_connect(&d);
	p.fd = fd;
	send_with_fds(fd, &h, sizeof(h), fds, 3);
	assert_int_equal(poll(&p, 1, 3000), 1);
	assert_int_equal(recv(fd, &rep, sizeof(rep), 0), (ssize_t)sizeof(rep));
	assert_status(rep.status, 0);
	uint8_t *shm = mmap(NULL, lay.total_nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	assert_true(shm != MAP_FAILED);
	struct shadow_proto_ring *sq = (void *)(shm + lay.sq_ring_off);
	struct shadow_proto_ring *cq = (void *)(shm + lay.cq_ring_off);
	struct shadow_proto_sqe *sqes = (void *)(shm + lay.sqes_off);
	struct shadow_proto_cqe *cqes = (void *)(shm + lay.cqes_off);
	uint64_t one = 1;

	/* Keys outside the request's slot, and a region that does not exist: refused. */
	sqes[0] = (struct shadow_proto_sqe){ .ticket = 7, .opcode = SHADOW_PROTO_OP_LOOKUP,
					     .slot = 0, .n_chunks = 1,
					     .keys_off = 4096 - 16 };
	sqes[1] = (struct shadow_proto_sqe){ .ticket = 8, .opcode = SHADOW_PROTO_OP_FETCH,
					     .slot = 1, .region = 5, .n_chunks = 1,
					     .n_block_ids = 4, .keys_off = 4096,
					     .blocks_off = 4096 + 32, .status_off = 4096 + 64 };
	sqes[2] = (struct shadow_proto_sqe){ .ticket = 9, .opcode = SHADOW_PROTO_OP_LOOKUP,
					     .slot = 2, .n_chunks = 100000,
					     .keys_off = 2 * 4096 };
	atomic_store(&sq->head, 3);
	assert_int_equal(write(efd[0], &one, 8), 8);
	uint64_t deadline = now_ms() + 3000;
	while (atomic_load(&cq->head) < 3 && now_ms() < deadline)
		sleep_ms(5);
	assert_int_equal(atomic_load(&cq->head), 3);
	assert_int_equal(cqes[0].ticket, 7);
	assert_status(cqes[0].status, -EINVAL);
	assert_int_equal(cqes[1].ticket, 8);
	assert_status(cqes[1].status, -ENOENT);
	assert_int_equal(cqes[2].ticket, 9);
	assert_status(cqes[2].status, -EINVAL);
	atomic_store(&cq->tail, 3);
	/* A slot out of range breaks the protocol: the connection goes, the daemon stays. */
	sqes[3] = (struct shadow_proto_sqe){ .ticket = 10, .opcode = SHADOW_PROTO_OP_LOOKUP,
					     .slot = 4, .n_chunks = 1 };
	atomic_store(&sq->head, 4);
	assert_int_equal(write(efd[0], &one, 8), 8);
	assert_true(closed_by_peer(fd, 3000));
	close(fd);
	/* A head far beyond the tail: the same. */
	fd = raw_connect(&d);
	p.fd = fd;
	memset(shm, 0, (size_t)lay.total_nbytes);
	send_with_fds(fd, &h, sizeof(h), fds, 3);
	assert_int_equal(poll(&p, 1, 3000), 1);
	assert_int_equal(recv(fd, &rep, sizeof(rep), 0), (ssize_t)sizeof(rep));
	assert_status(rep.status, 0);
	atomic_store(&sq->head, 1000000);
	assert_int_equal(write(efd[0], &one, 8), 8);
	assert_true(closed_by_peer(fd, 3000));
	close(fd);
	munmap(shm, lay.total_nbytes);
	close(memfd);
	close(efd[0]);
	close(efd[1]);

	assert_true(daemon_alive(&d));
	assert_true(metric(&d, "shadowd_protocol_errors_total") >= 3);
	assert_int_equal(metric_wait(&d, "shadowd_clients", 0, 3000), 0);
	/* And it still serves a proper client. */
	roundtrip_lossless(&d, 8);
	daemon_stop(&d);
}

/* ------------------------------------------------------------------------------------------ */
/* Redis                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void test_roundtrip_redis(void **state)
{
	struct daemon d;
	(void)state;
	daemon_start(&d, shadow_test_redis_url(g_redis), "--pool", "16", NULL);
	roundtrip_lossless(&d, 11);
	daemon_stop(&d);
}

/* int8+zstd1: within the quantizer's error bound, not exact. */
static void test_lossy_redis(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(8, 12);
	uint8_t st[8];
	(void)state;

	daemon_start(&d, shadow_test_redis_url(g_redis), "--pool", "16", "--save-scheme",
		     "int8+zstd1", "--key-prefix", "lossy:v1", NULL);
	setup_open(&s, &d, 12);
	save_all(s.c, &s.a, &s.ns, tokens, 8);
	struct shadow_client_completion done = fetch_wait(s.c, &s.b, &s.ns, tokens, 0, 8, st);
	assert_status(done.status, 0);
	assert_int_equal(done.n_ok, 8);
	/* Compressed: fewer bytes fetched than the KV delivered. */
	assert_true(done.bytes_in < done.bytes_out * 3 / 4);
	double worst = assert_within_int8_bound(&s.a, &s.b, 0, 8);
	print_message("int8+zstd1: largest error %.5f of a frame's range, %llu bytes for %llu\n",
		      worst, (unsigned long long)done.bytes_in,
		      (unsigned long long)done.bytes_out);
	assert_true(worst > 0); /* lossy indeed */
	setup_close(&s);
	free(tokens);
	daemon_stop(&d);
}

/* Redis SIGKILLed mid-fetch: chunks fail, the daemon lives, works after the restart. */
static void test_store_killed(void **state)
{
	struct daemon d;
	struct setup s;
	uint32_t *tokens = make_tokens(16, 13);
	struct req_bufs rb[8];
	uint64_t t;
	uint32_t failed = 0;
	(void)state;

	daemon_start(&d, shadow_test_redis_url(g_redis), "--pool", "1", NULL);
	setup_open(&s, &d, 13);
	for (int attempt = 0; attempt < 3 && failed == 0; attempt++) {
		if (attempt > 0)
			assert_int_equal(shadow_test_redis_restart(g_redis), 0);
		save_retry(s.c, &s.a, &s.ns, tokens, 16, 15000);
		for (int i = 0; i < 8; i++) {
			req_tokens(&rb[i], &s.b, &s.ns, tokens, 0, 16, true);
			rb[i].req.deadline_ns = shadow_client_now_ns() + 5ull * 1000000000ull;
			assert_status(shadow_client_fetch(s.c, &rb[i].req, &t), 0);
		}
		assert_int_equal(shadow_test_redis_kill(g_redis), 0);
		uint64_t t0 = now_ms();
		struct shadow_client_completion cs[8];
		collect(s.c, 8, cs, 8000);
		if (now_ms() - t0 > 5000 + SLACK_MS)
			fail_msg("fetches ended %llu ms after the store died: past their deadline",
				 (unsigned long long)(now_ms() - t0));
		for (int i = 0; i < 8; i++) {
			assert_status(cs[i].status, 0);
			for (uint32_t j = 0; j < 16; j++) {
				uint8_t v = cs[i].chunk_status[j];
				assert_true(v == SHADOW_CHUNK_OK || v == SHADOW_CHUNK_ERROR ||
					    v == SHADOW_CHUNK_TIMEOUT);
				failed += v != SHADOW_CHUNK_OK;
			}
		}
		assert_true(daemon_alive(&d));
	}
	if (failed == 0)
		fail_msg("three fetches of 8 x 16 chunks all finished before Redis died");
	int code;
	free(http_get(&d, "/healthz", &code));
	assert_int_equal(code, 200);
	/* Back up (empty: persistence is off): a new save and fetch work once the daemon's
	 * connections are back (they reconnect with backoff; retry for a while). */
	assert_int_equal(shadow_test_redis_restart(g_redis), 0);
	save_retry(s.c, &s.a, &s.ns, tokens, 16, 15000);
	memset(s.b.mem, 0, s.b.nbytes);
	uint8_t st[16];
	struct shadow_client_completion done = fetch_wait(s.c, &s.b, &s.ns, tokens, 0, 16, st);
	assert_int_equal(done.n_ok, 16);
	assert_same_blocks(&s.a, &s.b, 0, 16);
	setup_close(&s);
	free(tokens);
	daemon_stop(&d);
}

/* A TCP endpoint: lookups by keys; host memory is refused (it needs fd passing). */
static void test_tcp(void **state)
{
	struct daemon du, dt;
	struct setup s;
	uint32_t *tokens = make_tokens(8, 14);
	(void)state;

	daemon_start(&du, shadow_test_redis_url(g_redis), "--pool", "16", NULL);
	setup_open(&s, &du, 14);
	save_all(s.c, &s.a, &s.ns, tokens, 6);
	struct shadow_chunk_key keys[8];
	size_t n_keys;
	assert_status(shadow_client_chunk_keys(s.c, s.a.id, &s.ns, tokens, 8 * 64, keys, 8,
					       &n_keys), 0);

	daemon_start_listen(&dt, shadow_test_redis_url(g_redis), "tcp:127.0.0.1:0", "--pool", "4",
			    NULL);
	assert_int_equal(strncmp(dt.endpoint, "tcp:127.0.0.1:", 14), 0);
	assert_true(atoi(dt.endpoint + 14) > 0);
	struct shadow_client *c = connect_ok(&dt, 16);
	struct region r;
	region_make(&r);
	assert_status(region_register(c, &r), SHADOW_EUNSUPPORTED);
	region_free(&r);
	for (int round = 0; round < 20; round++) {
		struct shadow_client_request lk = { .size = sizeof(lk),
						    .region = SHADOW_CLIENT_NO_REGION,
						    .keys = keys, .n_chunks = 8 };
		struct shadow_client_completion cs[4];
		uint64_t t[4];
		for (int i = 0; i < 4; i++)
			assert_status(shadow_client_lookup(c, &lk, &t[i]), 0);
		collect(c, 4, cs, 10000);
		for (int i = 0; i < 4; i++) {
			assert_status(cs[i].status, 0);
			assert_int_equal(cs[i].n_found, 6);
		}
	}
	struct shadow_client_stats cst = { .size = sizeof(cst) };
	assert_status(shadow_client_stats(c, &cst), 0);
	assert_int_equal(cst.daemon_requests, 80);
	assert_int_equal(cst.completed, 80);
	shadow_client_close(c);
	daemon_stop(&dt);
	setup_close(&s);
	free(tokens);
	daemon_stop(&du);
}

static int redis_setup(void **state)
{
	(void)state;
	return shadow_test_redis_start(NULL, &g_redis) == 0 ? 0 : -1;
}

static int redis_teardown(void **state)
{
	(void)state;
	shadow_test_redis_stop(g_redis);
	return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, test_watchdog_arm, test_watchdog_disarm)

int main(int argc, char **argv)
{
	char path[4096];
	int failed;

	if (argc < 2) {
		fprintf(stderr, "usage: test_shadowd PATH/TO/shadowd\n");
		return 2;
	}
	g_shadowd = argv[1];
	if (access(g_shadowd, X_OK) != 0) {
		fprintf(stderr, "test_shadowd: %s: not executable\n", g_shadowd);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	const struct CMUnitTest local[] = {
		T(test_roundtrip_mem),
		T(test_refusals),
		T(test_concurrent),
		T(test_split_threads),
		T(test_small_pool),
		T(test_client_killed),
		T(test_daemon_killed),
		T(test_sigterm_drain),
		T(test_cpus_and_env),
		T(test_malformed),
	};
	test_watchdog_init("test_shadowd", TEST_ALARM_S);
	failed = cmocka_run_group_tests_name("shadowd (mem://)", local, NULL, NULL);

	if (shadow_test_redis_find(path, sizeof(path)) < 0) {
		printf("redis parts skipped: %s\n", SHADOW_TEST_REDIS_MISSING);
		return failed != 0 ? 1 : 0;
	}
	const struct CMUnitTest redis[] = {
		T(test_roundtrip_redis),
		T(test_lossy_redis),
		T(test_store_killed),
		T(test_tcp),
	};
	failed += cmocka_run_group_tests_name("shadowd (redis://)", redis, redis_setup,
					      redis_teardown);
	return failed != 0 ? 1 : 0;
}
