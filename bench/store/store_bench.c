/*
 * store_bench.c - the store benchmark: GET goodput of large values from one local
 * redis-server, ShadowServe's redis:// client against hiredis in the same run, and the mem://
 * and file:// backends against memcpy of the same size.
 *
 * DESIGN
 * One thread, pinned to the CPU it starts on; the redis-server it starts (through
 * tests/support, unless --redis names one) is pinned to another CPU, so that client and server
 * never share a core. Goodput = value bytes delivered / wall seconds, in GB/s (1e9 B/s).
 *
 * Redis, for each value size S (random bytes; K = the largest connection count keys of that
 * size, filled before and deleted after the size's runs), and each connection count C:
 *   shadow   one handle opened with options.connections = C, C GETs kept in flight: each
 *            streams into its own preallocated S-byte buffer (reused), and its on_done
 *            submits the next GET until --min-time has passed;
 *   hiredis  C contexts, each with one GET outstanding: for C = 1 the plain blocking
 *            redisCommand(); else non-blocking sockets driven by poll(), reading each ready
 *            socket until EAGAIN (redisBufferRead) and taking replies with redisGetReply().
 *            Replies stay in hiredis's own buffers: no copy into a destination is charged to
 *            hiredis, although a consumer of the value would need one.
 * Both issue the same requests (slot i of C fetches keys i, i + C, i + 2C ... mod K), and run
 * back to back for each (S, C). Before each timed run one untimed round fetches every slot's
 * first key, and each value is compared with what was stored.
 *
 * What is measured is the clients, not the dev VM's page faults (~20 us each): the server
 * runs with jemalloc keeping freed pages (DEFAULT_MALLOC_CONF), and hiredis gets the reader
 * setting its README gives for big payloads and a glibc malloc that reuses freed replies
 * (hiredis_tune_malloc); --hiredis-stock drops the latter two. Without them hiredis ran 3x
 * (4 MiB, 4 connections) to 3.5x (64 MiB) slower here, and both clients about 10x slower at
 * 16 MiB and up.
 *
 * mem:// and file://: one GET at a time (connections column 1) into one S-byte buffer,
 * alternating over two keys; file:// in a fresh directory under --dir, with the page cache
 * warm (the values were just written and read once). The memcpy reference copies S bytes into
 * the same buffer, alternating over two S-byte sources, so that it touches as much memory as
 * a mem:// GET. memcpy, mem:// and file:// take turns in LOCAL_PASSES passes of --min-time /
 * LOCAL_PASSES, so that the machine's noise falls on all three alike; GB/s is over all passes,
 * the time of one GET (or copy) that of the best pass.
 *
 * Memory: the random value pool (largest size + K x 4 KiB), a second source of the largest
 * size, and C x S destination buffers for the largest C; hiredis's replies are transient. The
 * redis-server holds K values of one size at a time.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <shadow/shadow.h>

#include "bench_util.h"
#include "store_bench.h"
#include "support/redis_server.h"
#ifdef SHADOW_BENCH_HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif

#define MIB (UINT64_C(1) << 20)
#define SIZES_MAX 8u
#define CONNS_LIST_MAX 8u
#define CONNS_MAX 64u             /* options.connections' range */
#define LOCAL_KEYS 2u             /* mem://, file://: keys alternated per size */
#define KEY_STRIDE 4096u          /* value i starts i x KEY_STRIDE bytes into the pool */
#define KEY_NBYTES 64u
#define LOCAL_PASSES 8u           /* memcpy, mem://, file:// take turns: shared, noisy CPUs */
#define DEFAULT_MIN_TIME 1.0
#define QUICK_MIN_TIME 0.2
#define REQUEST_TIMEOUT_MS 60000u /* a 64 MiB GET on a loaded 2-core VM: far from 5 s default */
#define HIREDIS_POLL_MS 10000     /* no progress on any connection for this long: failure */
/*
 * jemalloc (redis-server's allocator) returns the pages of freed large blocks to the kernel
 * at once, so every GET of a value over 8 MiB builds its reply in fresh pages. Where page
 * faults are slow (the dev VM: ~20 us each) that alone held a 16 MiB GET to ~75 ms, whatever
 * the client; keeping freed pages brought it to ~6 ms (measured with a raw socket client).
 */
#define DEFAULT_MALLOC_CONF SHADOW_TEST_REDIS_MALLOC_CONF
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const uint32_t default_sizes_mib[] = { 1, 4, 16, 64 };
static const uint32_t quick_sizes_mib[] = { 1, 4 };
static const uint32_t default_conns[] = { 1, 2, 4, 8 };
static const uint32_t quick_conns[] = { 1, 4 };

enum client { CL_SHADOW, CL_HIREDIS, CL_MEM, CL_FILE, CL_COUNT };
static const char *const client_names[CL_COUNT] = { "shadow", "hiredis", "mem", "file" };

struct options {
	const char *prog;
	uint32_t sizes_mib[SIZES_MAX];
	uint32_t n_sizes;
	uint32_t conns[CONNS_LIST_MAX];
	uint32_t n_conns;
	double min_time;
	const char *csv_path, *redis_url, *dir;
	const char *malloc_conf; /* MALLOC_CONF of the started redis-server; "": inherited */
	int redis_cpu;          /* -2: another CPU than ours; -1: do not pin; else that CPU */
	uint32_t io_threads;    /* the started server's io-threads (1: Redis's default) */
	bool clients[CL_COUNT];
	bool quick, pin;
	bool hiredis_stock;     /* hiredis and glibc malloc as they come: no tuning */
};

/* Where the Redis clients connect. */
struct redis_target {
	char url[1024];          /* for shadow_store_open(), without a query */
	char host[256];
	int port;
	char user[128], password[256];
	bool has_user, has_password;
	int db;
};

/* Figures of one run, NaN where it did not run or failed. */
struct results {
	double redis[2][SIZES_MAX][CONNS_LIST_MAX]; /* [shadow, hiredis][size][conns] GB/s */
	double redis_cpu[2][SIZES_MAX][CONNS_LIST_MAX]; /* client thread CPU s per GB */
	double local[2][SIZES_MAX];                 /* [mem, file][size] GB/s */
	double local_op_s[2][SIZES_MAX];            /* seconds per GET */
	double memcpy_gbps[SIZES_MAX];
	double memcpy_op_s[SIZES_MAX];
};

/* What every part of the run shares. */
struct bench {
	const struct options *o;
	struct results res;
	FILE *csv;
	uint8_t *pool;           /* random values: value i = pool + i * KEY_STRIDE */
	uint8_t *alt;            /* the memcpy reference's second source */
	uint32_t n_keys;         /* K: Redis keys per size */
	int status;              /* the exit status so far */
};

static void results_clear(struct results *r)
{
	for (uint32_t si = 0; si < SIZES_MAX; si++) {
		for (uint32_t c = 0; c < 2; c++) {
			for (uint32_t ci = 0; ci < CONNS_LIST_MAX; ci++)
				r->redis[c][si][ci] = r->redis_cpu[c][si][ci] = NAN;
			r->local[c][si] = NAN;
			r->local_op_s[c][si] = NAN;
		}
		r->memcpy_gbps[si] = NAN;
		r->memcpy_op_s[si] = NAN;
	}
}

static void *alloc_pages(uint64_t nbytes)
{
	size_t n = (size_t)((nbytes + 4095u) & ~(uint64_t)4095u);
	void *p = aligned_alloc(4096, n ? n : 4096);

	if (p != NULL)
		memset(p, 0, n ? n : 4096); /* touch every page outside the timed loops */
	return p;
}

/* xorshift64*: values are incompressible and differ per key. */
static void fill_random(uint8_t *p, size_t nbytes, uint64_t seed)
{
	uint64_t x = seed | 1u;

	for (size_t i = 0; i < nbytes; i += 8) {
		uint64_t v;
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		v = x * UINT64_C(0x2545F4914F6CDD1D);
		memcpy(p + i, &v, nbytes - i < 8 ? nbytes - i : 8);
	}
}

static const uint8_t *value_of(const struct bench *b, uint32_t key)
{
	return b->pool + (size_t)key * KEY_STRIDE;
}

static void key_name(char *buf, uint32_t size_mib, uint32_t key)
{
	snprintf(buf, KEY_NBYTES, "shadow-bench-store:%u:%u", size_mib, key);
}

static double gbps(uint64_t nbytes, double seconds)
{
	return seconds > 0.0 ? (double)nbytes / seconds * 1e-9 : NAN;
}

/* " %*.*f" + suffix, or a right-aligned "-" in the same width for NaN (not measured). */
static void print_cell(double v, int width, int prec, const char *suffix)
{
	if (isnan(v))
		printf(" %*s", width + (int)strlen(suffix), "-");
	else
		printf(" %*.*f%s", width, prec, v, suffix);
}

static void csv_row(struct bench *b, enum client c, uint32_t size_mib, uint32_t conns, double g)
{
	if (b->csv == NULL || isnan(g))
		return;
	fprintf(b->csv, "%s,%u,%u,%.6g\n", client_names[c], size_mib, conns, g);
	fflush(b->csv);
}

/* ------------------------------------------------------------------------------------------ */
/* Command line                                                                               */
/* ------------------------------------------------------------------------------------------ */

static void usage(FILE *out, const char *prog)
{
	fprintf(out,
		"usage: %s [options]\n"
		"GET goodput of large values: ShadowServe's redis:// client against hiredis on one\n"
		"local redis-server (started here unless --redis), and the mem:// and file://\n"
		"backends against memcpy, all in the same run.\n"
		"  --sizes LIST        value sizes in MiB (default 1,4,16,64; --quick 1,4)\n"
		"  --connections LIST  Redis connection counts, 1..%u (default 1,2,4,8; --quick 1,4)\n"
		"  --min-time SEC      time each measurement at least this long (default %.1f;\n"
		"                      --quick %.1f)\n"
		"  --clients LIST      any of shadow,hiredis,mem,file (default: all)\n"
		"  --no-redis          only mem and file: no redis-server needed\n"
		"  --redis URL         use this server, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB],\n"
		"                      instead of starting one; pin it to another CPU yourself\n"
		"  --redis-cpu N       pin the started redis-server to CPU N (default: a CPU other\n"
		"                      than the benchmark's; -1: do not pin it)\n"
		"  --redis-io-threads N  io-threads of the started redis-server (default 1: none;\n"
		"                      N > 1 pins it to N CPUs from --redis-cpu on)\n"
		"  --redis-malloc-conf S  MALLOC_CONF (jemalloc) of the started redis-server\n"
		"                      (default %s; \"\": as inherited)\n"
		"  --hiredis-stock     hiredis and glibc malloc untuned (default: reader maxbuf 0\n"
		"                      and no mmap()ed blocks, so that replies reuse memory)\n"
		"  --dir DIR           where the file:// store is made (default /tmp)\n"
		"  --csv PATH          rows client,value_mib,connections,goodput_gbps\n"
		"  --quick             smoke test: small values, short measurements\n"
		"  --no-pin            do not pin to the current CPU\n"
		"  -h, --help\n",
		prog, CONNS_MAX, DEFAULT_MIN_TIME, QUICK_MIN_TIME, DEFAULT_MALLOC_CONF);
}


/* Returns 0, 2 (usage error) or -1 (done: --help). */
static int parse_args(int argc, char **argv, struct options *o)
{
	bool sizes_set = false, conns_set = false, time_set = false;

	memset(o, 0, sizeof(*o));
	o->prog = argc > 0 && argv[0] != NULL ? argv[0] : "bench_store";
	o->min_time = DEFAULT_MIN_TIME;
	o->dir = "/tmp";
	o->redis_cpu = -2;
	o->io_threads = 1;
	o->malloc_conf = DEFAULT_MALLOC_CONF;
	o->pin = true;
	for (int c = 0; c < CL_COUNT; c++)
		o->clients[c] = true;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v;
		bool missing = false;
		char *end;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, o->prog);
			return -1;
		} else if (strcmp(a, "--quick") == 0) {
			o->quick = true;
		} else if (strcmp(a, "--no-pin") == 0) {
			o->pin = false;
		} else if (strcmp(a, "--hiredis-stock") == 0) {
			o->hiredis_stock = true;
		} else if (strcmp(a, "--no-redis") == 0) {
			o->clients[CL_SHADOW] = o->clients[CL_HIREDIS] = false;
		} else if ((v = bench_opt_value(argc, argv, &i, "--sizes", &missing)) != NULL) {
			if (bench_parse_u32_list(v, 1, 1024, o->sizes_mib, SIZES_MAX, &o->n_sizes) < 0) {
				fprintf(stderr, "%s: --sizes %s: want up to %u sizes of 1..1024 MiB\n",
					o->prog, v, SIZES_MAX);
				return 2;
			}
			sizes_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--connections", &missing)) != NULL) {
			if (bench_parse_u32_list(v, 1, CONNS_MAX, o->conns, CONNS_LIST_MAX, &o->n_conns) <
			    0) {
				fprintf(stderr, "%s: --connections %s: want up to %u counts of 1..%u\n",
					o->prog, v, CONNS_LIST_MAX, CONNS_MAX);
				return 2;
			}
			conns_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--clients", &missing)) != NULL) {
			if (bench_parse_name_set(v, client_names, CL_COUNT, o->clients) < 0) {
				fprintf(stderr, "%s: --clients %s: want names of shadow, hiredis, mem, "
						"file\n", o->prog, v);
				return 2;
			}
		} else if ((v = bench_opt_value(argc, argv, &i, "--min-time", &missing)) != NULL) {
			double t = strtod(v, &end);
			if (*v == '\0' || *end != '\0' || !(t >= 0.0 && t <= 600.0)) {
				fprintf(stderr, "%s: --min-time %s: want 0 .. 600 seconds\n",
					o->prog, v);
				return 2;
			}
			o->min_time = t;
			time_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--redis-cpu", &missing)) != NULL) {
			long n = strtol(v, &end, 10);
			if (*v == '\0' || *end != '\0' || n < -1 || n >= CPU_SETSIZE) {
				fprintf(stderr, "%s: --redis-cpu %s: want a CPU number or -1\n",
					o->prog, v);
				return 2;
			}
			o->redis_cpu = (int)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--redis-io-threads", &missing)) !=
			   NULL) {
			long n = strtol(v, &end, 10);
			if (*v == '\0' || *end != '\0' || n < 1 || n > 16) {
				fprintf(stderr, "%s: --redis-io-threads %s: want 1 .. 16\n",
					o->prog, v);
				return 2;
			}
			o->io_threads = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--redis-malloc-conf", &missing)) !=
			   NULL) {
			o->malloc_conf = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--redis", &missing)) != NULL) {
			o->redis_url = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--dir", &missing)) != NULL) {
			o->dir = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--csv", &missing)) != NULL) {
			o->csv_path = v;
		} else if (missing) {
			fprintf(stderr, "%s: %s needs a value\n", o->prog, a);
			return 2;
		} else {
			fprintf(stderr, "%s: unknown argument '%s' (try --help)\n", o->prog, a);
			return 2;
		}
	}
	if (!sizes_set) {
		const uint32_t *s = o->quick ? quick_sizes_mib : default_sizes_mib;
		o->n_sizes = o->quick ? ARRAY_SIZE(quick_sizes_mib) : ARRAY_SIZE(default_sizes_mib);
		memcpy(o->sizes_mib, s, o->n_sizes * sizeof(*s));
	}
	if (!conns_set) {
		const uint32_t *c = o->quick ? quick_conns : default_conns;
		o->n_conns = o->quick ? ARRAY_SIZE(quick_conns) : ARRAY_SIZE(default_conns);
		memcpy(o->conns, c, o->n_conns * sizeof(*c));
	}
	if (!time_set && o->quick)
		o->min_time = QUICK_MIN_TIME;
	return 0;
}

/*
 * redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], the form both clients understand. A query is
 * refused: connections=N in it would override the count under test.
 */
static int parse_redis_url(const char *url, struct redis_target *t)
{
	const char *p, *at, *slash, *colon;
	size_t host_len;
	char *end;

	memset(t, 0, sizeof(*t));
	t->port = 6379;
	if (strncmp(url, "redis://", 8) != 0 || strchr(url, '?') != NULL ||
	    strlen(url) >= sizeof(t->url))
		return -EINVAL;
	snprintf(t->url, sizeof(t->url), "%s", url);
	p = url + 8;
	slash = strchr(p, '/');
	at = strchr(p, '@');
	if (at != NULL && (slash == NULL || at < slash)) {
		const char *c = memchr(p, ':', (size_t)(at - p));
		if (c == NULL)
			return -EINVAL; /* USER@ without a password: not a form we accept */
		if ((size_t)(c - p) >= sizeof(t->user) || (size_t)(at - c - 1) >= sizeof(t->password))
			return -EINVAL;
		memcpy(t->user, p, (size_t)(c - p));
		t->has_user = c > p;
		memcpy(t->password, c + 1, (size_t)(at - c - 1));
		t->has_password = true;
		p = at + 1;
	}
	if (*p == '[') {
		const char *rb = strchr(p, ']');
		if (rb == NULL || (slash != NULL && rb > slash))
			return -EINVAL;
		host_len = (size_t)(rb - p - 1);
		if (host_len == 0 || host_len >= sizeof(t->host))
			return -EINVAL;
		memcpy(t->host, p + 1, host_len);
		colon = rb[1] == ':' ? rb + 1 : NULL;
	} else {
		colon = strchr(p, ':');
		if (colon != NULL && slash != NULL && colon > slash)
			colon = NULL;
		host_len = colon != NULL ? (size_t)(colon - p)
					 : slash != NULL ? (size_t)(slash - p) : strlen(p);
		if (host_len == 0 || host_len >= sizeof(t->host))
			return -EINVAL;
		memcpy(t->host, p, host_len);
	}
	if (colon != NULL) {
		long port = strtol(colon + 1, &end, 10);
		if (end == colon + 1 || port < 1 || port > 65535 || (*end != '\0' && *end != '/'))
			return -EINVAL;
		t->port = (int)port;
	}
	if (slash != NULL && slash[1] != '\0') {
		long db = strtol(slash + 1, &end, 10);
		if (*end != '\0' || db < 0 || db > 1000000)
			return -EINVAL;
		t->db = (int)db;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* GETs through a libshadow store (redis://, mem://, file://)                                 */
/* ------------------------------------------------------------------------------------------ */

struct get_run;

struct get_slot {
	struct shadow_store_req req;
	struct iovec iov;
	struct get_run *run;
	uint32_t key;
};

struct get_run {
	struct shadow_store *store;
	char (*keys)[KEY_NBYTES];
	uint32_t n_keys, n_slots;
	uint32_t first_key; /* slot i starts on key first_key + i */
	uint64_t value_nbytes;
	uint64_t t_end_ns;  /* on_done resubmits until then; 0: one GET per slot */
	uint64_t gets;
	uint32_t active;    /* slots with a GET in flight */
	int err;            /* the first failure */
	uint32_t err_key;
	struct get_slot *slots;
};

static void get_fail(struct get_run *r, struct get_slot *s, int err)
{
	if (r->err == 0) {
		r->err = err;
		r->err_key = s->key;
	}
	r->active--;
}

static void get_done(struct shadow_store_req *req);

static void get_submit(struct get_run *r, struct get_slot *s)
{
	int rc;

	memset(&s->req, 0, sizeof(s->req)); /* deadline_ns too: submit wrote the last one back */
	s->req.op = SHADOW_STORE_GET;
	s->req.key = r->keys[s->key];
	s->req.iov = &s->iov;
	s->req.iov_count = 1;
	s->req.on_done = get_done;
	s->req.user = s;
	rc = shadow_store_submit(r->store, &s->req);
	if (rc < 0)
		get_fail(r, s, rc);
}

/* Runs from shadow_store_poll(): count, then keep the slot busy until t_end_ns. */
static void get_done(struct shadow_store_req *req)
{
	struct get_slot *s = req->user;
	struct get_run *r = s->run;

	if (req->status != 0) {
		get_fail(r, s, req->status);
		return;
	}
	if (req->value_nbytes != r->value_nbytes) {
		get_fail(r, s, -EBADMSG);
		return;
	}
	r->gets++;
	if (r->err == 0 && r->t_end_ns != 0 && bench_now_ns() < r->t_end_ns) {
		s->key = (s->key + r->n_slots) % r->n_keys;
		get_submit(r, s);
		return;
	}
	r->active--;
}

/*
 * One run: slot i starts on key first_key + i, then GETs continue for min_time seconds
 * (min_time < 0: one GET per slot). The elapsed wall time goes to *seconds_ret. Returns 0 or
 * the first failure (r->err_key names the key); requests may then still be in flight, and
 * closing the store cancels them.
 */
static int get_run_timed(struct get_run *r, double min_time, double *seconds_ret)
{
	uint64_t t0, t1;

	r->gets = 0;
	r->err = 0;
	r->active = r->n_slots;
	t0 = bench_now_ns();
	r->t_end_ns = min_time < 0.0 ? 0 : t0 + (uint64_t)(min_time * 1e9) + 1;
	for (uint32_t i = 0; i < r->n_slots; i++) {
		r->slots[i].key = (r->first_key + i) % r->n_keys;
		get_submit(r, &r->slots[i]);
	}
	while (r->active > 0 && r->err == 0) {
		int rc = shadow_store_poll(r->store, -1);
		if (rc < 0 && r->err == 0) {
			r->err = rc;
			r->err_key = 0;
		}
	}
	t1 = bench_now_ns();
	*seconds_ret = bench_seconds(t0, t1);
	return r->err;
}

/* After a one-GET-per-slot run: does every slot hold its key's value? -EBADMSG if not. */
static int get_run_verify(const struct bench *b, struct get_run *r)
{
	for (uint32_t i = 0; i < r->n_slots; i++) {
		struct get_slot *s = &r->slots[i];
		if (memcmp(s->iov.iov_base, value_of(b, s->key), r->value_nbytes) != 0) {
			r->err_key = s->key;
			return -EBADMSG;
		}
	}
	return 0;
}

static const char *err_text(int err)
{
	return err == -EBADMSG ? "value read back differs from the one stored (or has the wrong "
				 "length)"
			       : shadow_strerror(err);
}

/* CPU time of the calling thread, in seconds: what a client costs, whoever is the bottleneck. */
static double thread_cpu_s(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
		return NAN;
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * Warm-up with verification, then the timed run: goodput in GB/s, or NaN (printed). The
 * client thread's CPU seconds per GB delivered go to *cpu_per_gb_ret.
 */
static double store_measure(struct bench *b, const char *what, struct get_run *r,
			    double *cpu_per_gb_ret)
{
	double s, c0, c1;
	int rc = get_run_timed(r, -1.0, &s);

	if (rc == 0)
		rc = get_run_verify(b, r);
	c0 = thread_cpu_s();
	if (rc == 0)
		rc = get_run_timed(r, b->o->min_time, &s);
	c1 = thread_cpu_s();
	if (rc < 0) {
		fprintf(stderr, "%s: %s: GET %s: %s\n", b->o->prog, what, r->keys[r->err_key],
			err_text(rc));
		b->status = 1;
		return NAN;
	}
	*cpu_per_gb_ret = (c1 - c0) / ((double)(r->gets * r->value_nbytes) / 1e9);
	return gbps(r->gets * r->value_nbytes, s);
}

/* PUT (or DELETE, value NULL) one key and wait. Returns its status (message printed). */
static int store_put(struct bench *b, struct shadow_store *st, const char *what,
		     const char *key, const void *value, uint64_t nbytes)
{
	struct shadow_store_req req;
	struct iovec iov = { .iov_base = (void *)value, .iov_len = (size_t)nbytes };
	int rc;

	memset(&req, 0, sizeof(req));
	req.op = value != NULL ? SHADOW_STORE_PUT : SHADOW_STORE_DELETE;
	req.key = key;
	req.iov = value != NULL ? &iov : NULL;
	req.iov_count = value != NULL ? 1 : 0;
	rc = shadow_store_submit(st, &req);
	if (rc == 0)
		rc = shadow_store_wait(st, &req);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: %s %s: %s\n", b->o->prog, what,
			value != NULL ? "PUT" : "DELETE", key, shadow_strerror(rc));
		b->status = 1;
	}
	return rc;
}

static int store_open(struct bench *b, const char *what, const char *url, uint32_t conns,
		      struct shadow_store **store_ret)
{
	struct shadow_store_options opts;
	int rc;

	shadow_store_options_default(&opts);
	opts.connections = conns;
	opts.request_timeout_ms = REQUEST_TIMEOUT_MS;
	rc = shadow_store_open(url, &opts, store_ret);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: cannot open %s: %s\n", b->o->prog, what, url,
			shadow_strerror(rc));
		b->status = 1;
	}
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* hiredis                                                                                    */
/* ------------------------------------------------------------------------------------------ */

#ifdef SHADOW_BENCH_HAVE_HIREDIS

struct hr_conn {
	redisContext *c;
	uint32_t key;
	bool busy;
};

/* Connect (blocking, 2 s), AUTH and SELECT as the URL says; NULL on failure (printed). */
static redisContext *hr_connect(struct bench *b, const struct redis_target *t)
{
	struct timeval tv = { .tv_sec = 2, .tv_usec = 0 };
	redisContext *c = redisConnectWithTimeout(t->host, t->port, tv);
	redisReply *rep = NULL;

	if (c == NULL || c->err) {
		fprintf(stderr, "%s: hiredis: connect %s:%d: %s\n", b->o->prog, t->host, t->port,
			c != NULL ? c->errstr : "out of memory");
		goto fail;
	}
	if (t->has_password) {
		rep = t->has_user ? redisCommand(c, "AUTH %s %s", t->user, t->password)
				  : redisCommand(c, "AUTH %s", t->password);
		if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
			fprintf(stderr, "%s: hiredis: AUTH: %s\n", b->o->prog,
				rep != NULL ? rep->str : c->errstr);
			goto fail;
		}
		freeReplyObject(rep);
		rep = NULL;
	}
	/*
	 * hiredis frees its read buffer after each reply larger than 16 KiB and grows it again
	 * for the next; its README advises maxbuf 0 (keep it) for very big payloads. With the
	 * default, C > 1 connections at 4 MiB ran 3x slower here (glibc realloc copying), which
	 * would flatter our client.
	 */
	if (!b->o->hiredis_stock)
		c->reader->maxbuf = 0;
	if (t->db != 0) {
		rep = redisCommand(c, "SELECT %d", t->db);
		if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
			fprintf(stderr, "%s: hiredis: SELECT %d: %s\n", b->o->prog, t->db,
				rep != NULL ? rep->str : c->errstr);
			goto fail;
		}
		freeReplyObject(rep);
	}
	return c;
fail:
	freeReplyObject(rep);
	if (c != NULL)
		redisFree(c);
	b->status = 1;
	return NULL;
}

/* A GET reply: a string of the value's length, equal to `expect` when that is not NULL. */
static int hr_check(struct bench *b, redisContext *c, redisReply *rep, const char *key,
		    uint64_t nbytes, const uint8_t *expect)
{
	const char *why = NULL;

	if (rep == NULL)
		why = c->errstr;
	else if (rep->type == REDIS_REPLY_NIL)
		why = "no such key";
	else if (rep->type == REDIS_REPLY_ERROR)
		why = rep->str;
	else if (rep->type != REDIS_REPLY_STRING)
		why = "reply is not a string";
	else if (rep->len != nbytes || (expect != NULL && memcmp(rep->str, expect, nbytes) != 0))
		why = "value read back differs from the one stored (or has the wrong length)";
	if (why == NULL)
		return 0;
	fprintf(stderr, "%s: hiredis: GET %s: %s\n", b->o->prog, key, why);
	b->status = 1;
	return -EIO;
}

/* Send the slot's GET; the command is tiny, so a non-blocking write completes at once. */
static int hr_send(struct bench *b, struct hr_conn *hc, char (*keys)[KEY_NBYTES])
{
	int done = 0;

	if (redisAppendCommand(hc->c, "GET %s", keys[hc->key]) != REDIS_OK)
		goto fail;
	while (!done)
		if (redisBufferWrite(hc->c, &done) != REDIS_OK)
			goto fail;
	hc->busy = true;
	return 0;
fail:
	fprintf(stderr, "%s: hiredis: GET %s: %s\n", b->o->prog, keys[hc->key], hc->c->errstr);
	b->status = 1;
	return -EIO;
}

/*
 * C connections, one GET outstanding on each, until min_time has passed (min_time < 0: one
 * GET each, verified against the pool). *gets_ret and *seconds_ret as in get_run_timed().
 */
static int hr_run(struct bench *b, struct hr_conn *hc, uint32_t n_conns,
		  char (*keys)[KEY_NBYTES], uint32_t n_keys, uint64_t nbytes, double min_time,
		  uint64_t *gets_ret, double *seconds_ret)
{
	const bool verify = min_time < 0.0;
	struct pollfd pfd[CONNS_MAX];
	uint32_t idx[CONNS_MAX], active = 0;
	uint64_t t0, t_end, gets = 0;
	int rc = 0;

	t0 = bench_now_ns();
	t_end = verify ? 0 : t0 + (uint64_t)(min_time * 1e9) + 1;
	if (n_conns == 1) {
		/* The plain blocking client: hiredis's own read loop, nothing of ours around it. */
		struct hr_conn *h = &hc[0];
		h->key = 0;
		do {
			redisReply *rep = redisCommand(h->c, "GET %s", keys[h->key]);
			rc = hr_check(b, h->c, rep, keys[h->key], nbytes,
				      verify ? value_of(b, h->key) : NULL);
			freeReplyObject(rep);
			if (rc < 0)
				return rc;
			gets++;
			h->key = (h->key + 1) % n_keys;
		} while (!verify && bench_now_ns() < t_end);
		goto out;
	}

	for (uint32_t i = 0; i < n_conns; i++) {
		hc[i].key = i % n_keys;
		rc = hr_send(b, &hc[i], keys);
		if (rc < 0)
			return rc;
		active++;
	}
	while (active > 0) {
		uint32_t n = 0;
		int ready;

		for (uint32_t i = 0; i < n_conns; i++) {
			if (!hc[i].busy)
				continue;
			pfd[n].fd = hc[i].c->fd;
			pfd[n].events = POLLIN;
			pfd[n].revents = 0;
			idx[n++] = i;
		}
		ready = poll(pfd, n, HIREDIS_POLL_MS);
		if (ready < 0 && errno == EINTR)
			continue;
		if (ready <= 0) {
			fprintf(stderr, "%s: hiredis: poll: %s\n", b->o->prog,
				ready < 0 ? strerror(errno) : "no reply for 10 s");
			b->status = 1;
			return -EIO;
		}
		for (uint32_t j = 0; j < n; j++) {
			struct hr_conn *h = &hc[idx[j]];

			if (pfd[j].revents == 0)
				continue;
			/* Read until EAGAIN, not one 16 KiB read per poll(): hiredis's best case. */
			for (;;) {
				void *rep = NULL;
				bool drained;

				errno = 0;
				if (redisBufferRead(h->c) != REDIS_OK) {
					fprintf(stderr, "%s: hiredis: read: %s\n", b->o->prog,
						h->c->errstr);
					b->status = 1;
					return -EIO;
				}
				drained = errno == EAGAIN;
				if (redisGetReply(h->c, &rep) != REDIS_OK) {
					fprintf(stderr, "%s: hiredis: reply: %s\n", b->o->prog,
						h->c->errstr);
					b->status = 1;
					return -EIO;
				}
				if (rep != NULL) {
					rc = hr_check(b, h->c, rep, keys[h->key], nbytes,
						      verify ? value_of(b, h->key) : NULL);
					freeReplyObject(rep);
					if (rc < 0)
						return rc;
					gets++;
					h->busy = false;
					if (!verify && bench_now_ns() < t_end) {
						h->key = (h->key + n_conns) % n_keys;
						rc = hr_send(b, h, keys);
						if (rc < 0)
							return rc;
					} else {
						active--;
					}
					break; /* one GET outstanding: nothing more to read yet */
				}
				if (drained)
					break;
			}
		}
	}
out:
	*seconds_ret = bench_seconds(t0, bench_now_ns());
	*gets_ret = gets;
	return 0;
}

/*
 * hiredis has no call that makes a connected context non-blocking; this is what
 * redisConnectNonBlock() sets up: O_NONBLOCK on the socket, and no REDIS_BLOCK flag, so that
 * redisBufferRead() takes EAGAIN as "later" and redisGetReply() does not wait.
 */
static int hr_set_nonblock(redisContext *c)
{
	int fl = fcntl(c->fd, F_GETFL);

	if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	c->flags &= ~REDIS_BLOCK;
	return 0;
}

static double hiredis_measure(struct bench *b, const struct redis_target *t, uint32_t n_conns,
			      char (*keys)[KEY_NBYTES], uint32_t n_keys, uint64_t nbytes,
			      double *cpu_per_gb_ret)
{
	double c0, c1;
	struct hr_conn hc[CONNS_MAX];
	uint64_t gets = 0;
	double s = 0.0, g = NAN;
	uint32_t n = 0;
	int rc = 0;

	memset(hc, 0, sizeof(hc));
	for (; n < n_conns; n++) {
		hc[n].c = hr_connect(b, t);
		if (hc[n].c == NULL)
			goto out;
		if (n_conns > 1 && (rc = hr_set_nonblock(hc[n].c)) < 0) {
			fprintf(stderr, "%s: hiredis: O_NONBLOCK: %s\n", b->o->prog, strerror(-rc));
			b->status = 1;
			n++;
			goto out;
		}
	}
	rc = hr_run(b, hc, n_conns, keys, n_keys, nbytes, -1.0, &gets, &s);
	c0 = thread_cpu_s();
	if (rc == 0)
		rc = hr_run(b, hc, n_conns, keys, n_keys, nbytes, b->o->min_time, &gets, &s);
	c1 = thread_cpu_s();
	if (rc == 0 && gets > 0) {
		g = gbps(gets * nbytes, s);
		*cpu_per_gb_ret = (c1 - c0) / ((double)(gets * nbytes) / 1e9);
	}
out:
	for (uint32_t i = 0; i < n; i++)
		redisFree(hc[i].c);
	return g;
}

/*
 * hiredis mallocs every reply. glibc serves a block over 32 MiB with a fresh mmap(), so each
 * 64 MiB reply page-faults all its pages, which on the dev VM (~20 us a fault) held hiredis
 * to ~0.25 GB/s: a measure of the VM, not of the client. No mmap()ed blocks and no trimming
 * make freed replies come back from the heap. Process-wide and left so: our client does not
 * allocate per GET, and the benchmark is a program of its own (or the last thing shadowctl
 * does).
 */
static void hiredis_tune_malloc(void)
{
	mallopt(M_MMAP_MAX, 0);
	mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

/* SET (value) or DEL (value NULL) the keys through one blocking connection. */
static int hiredis_fill(struct bench *b, const struct redis_target *t, char (*keys)[KEY_NBYTES],
			uint32_t n_keys, uint64_t nbytes, bool del)
{
	redisContext *c = hr_connect(b, t);
	int rc = 0;

	if (c == NULL)
		return -EIO;
	for (uint32_t k = 0; k < n_keys && rc == 0; k++) {
		redisReply *rep = del ? redisCommand(c, "DEL %s", keys[k])
				      : redisCommand(c, "SET %s %b", keys[k], value_of(b, k),
						     (size_t)nbytes);
		if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
			fprintf(stderr, "%s: hiredis: %s %s: %s\n", b->o->prog, del ? "DEL" : "SET",
				keys[k], rep != NULL ? rep->str : c->errstr);
			b->status = 1;
			rc = -EIO;
		}
		freeReplyObject(rep);
	}
	redisFree(c);
	return rc;
}

#endif /* SHADOW_BENCH_HAVE_HIREDIS */

/* ------------------------------------------------------------------------------------------ */
/* Redis                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static double shadow_redis_measure(struct bench *b, const struct redis_target *t,
				   uint32_t n_conns, char (*keys)[KEY_NBYTES], uint32_t n_keys,
				   uint64_t nbytes, uint8_t *dst, double *cpu_per_gb_ret)
{
	struct get_slot slots[CONNS_MAX];
	struct get_run r;
	char what[64];
	double g;

	snprintf(what, sizeof(what), "shadow (%u connections)", n_conns);
	memset(&r, 0, sizeof(r));
	if (store_open(b, what, t->url, n_conns, &r.store) < 0)
		return NAN;
	r.keys = keys;
	r.n_keys = n_keys;
	r.n_slots = n_conns;
	r.value_nbytes = nbytes;
	r.slots = slots;
	for (uint32_t i = 0; i < n_conns; i++) {
		slots[i].run = &r;
		slots[i].iov.iov_base = dst + (size_t)i * nbytes;
		slots[i].iov.iov_len = (size_t)nbytes;
	}
	g = store_measure(b, what, &r, cpu_per_gb_ret);
	shadow_store_close(r.store);
	return g;
}

/* Fill (or delete, del) the size's keys: with hiredis where built in, else our client. */
static int redis_fill(struct bench *b, const struct redis_target *t, char (*keys)[KEY_NBYTES],
		      uint64_t nbytes, bool del)
{
#ifdef SHADOW_BENCH_HAVE_HIREDIS
	/* A known-good writer, so that our client's GETs are checked against another client. */
	return hiredis_fill(b, t, keys, b->n_keys, nbytes, del);
#else
	struct shadow_store *st;
	int rc = store_open(b, "shadow (fill)", t->url, 1, &st);

	if (rc < 0)
		return rc;
	for (uint32_t k = 0; rc == 0 && k < b->n_keys; k++)
		rc = store_put(b, st, "shadow (fill)", keys[k], del ? NULL : value_of(b, k),
			       nbytes);
	shadow_store_close(st);
	return rc;
#endif
}

static void run_redis(struct bench *b, const struct redis_target *t)
{
	const struct options *o = b->o;
	char(*keys)[KEY_NBYTES] = calloc(b->n_keys, KEY_NBYTES);
	uint32_t max_conns = 0;
	bool shadow_ok = o->clients[CL_SHADOW];

	if (keys == NULL) {
		fprintf(stderr, "%s: out of memory\n", o->prog);
		b->status = 1;
		return;
	}
	for (uint32_t c = 0; c < o->n_conns; c++)
		max_conns = o->conns[c] > max_conns ? o->conns[c] : max_conns;

	printf("\nRedis GET goodput, GB/s (value bytes delivered / wall s), and the client thread's\n"
	       "CPU seconds per GB delivered (what the client costs, whoever is the bottleneck)\n");
	printf("%9s %6s %9s %9s %15s %13s %13s\n", "value MiB", "conns", "shadow", "hiredis",
	       "shadow/hiredis", "shadow cpu/GB", "hiredis cpu/GB");
	fflush(stdout);
	for (uint32_t si = 0; si < o->n_sizes; si++) {
		const uint64_t nbytes = o->sizes_mib[si] * MIB;
		uint8_t *dst = alloc_pages(nbytes * max_conns);

		if (dst == NULL) {
			fprintf(stderr, "%s: out of memory for %u x %u MiB buffers\n", o->prog,
				max_conns, o->sizes_mib[si]);
			b->status = 1;
			break;
		}
		for (uint32_t k = 0; k < b->n_keys; k++)
			key_name(keys[k], o->sizes_mib[si], k);
		if (redis_fill(b, t, keys, nbytes, false) < 0) {
			free(dst);
			break;
		}
		for (uint32_t ci = 0; ci < o->n_conns; ci++) {
			const uint32_t conns = o->conns[ci];
			double *gs = &b->res.redis[0][si][ci], *gh = &b->res.redis[1][si][ci];

			if (shadow_ok) {
				*gs = shadow_redis_measure(b, t, conns, keys, b->n_keys, nbytes,
							   dst, &b->res.redis_cpu[0][si][ci]);
				/* One failure says it; the same error for every size would not. */
				shadow_ok = !isnan(*gs);
			}
#ifdef SHADOW_BENCH_HAVE_HIREDIS
			if (o->clients[CL_HIREDIS])
				*gh = hiredis_measure(b, t, conns, keys, b->n_keys, nbytes,
						      &b->res.redis_cpu[1][si][ci]);
#endif
			printf("%9u %6u", o->sizes_mib[si], conns);
			print_cell(*gs, 9, 3, "");
			print_cell(*gh, 9, 3, "");
			print_cell(*gs / *gh, 14, 2, "x");
			print_cell(b->res.redis_cpu[0][si][ci], 13, 3, "");
			print_cell(b->res.redis_cpu[1][si][ci], 13, 3, "");
			printf("\n");
			fflush(stdout);
			csv_row(b, CL_SHADOW, o->sizes_mib[si], conns, *gs);
			csv_row(b, CL_HIREDIS, o->sizes_mib[si], conns, *gh);
		}
		redis_fill(b, t, keys, nbytes, true);
		free(dst);
	}
	free(keys);
}

/* ------------------------------------------------------------------------------------------ */
/* mem:// and file://                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Copies of nbytes into dst, alternating over two sources, for `seconds` (at least 2). */
static uint64_t memcpy_pass(const struct bench *b, uint8_t *dst, uint64_t nbytes,
			    double seconds, double *seconds_ret)
{
	const uint8_t *src[2] = { b->pool, b->alt };
	uint64_t t0 = bench_now_ns(), n = 0;
	double s;

	do {
		memcpy(dst, src[n & 1], (size_t)nbytes);
		__asm__ __volatile__("" : : "r"(dst) : "memory");
		n++;
		s = bench_seconds(t0, bench_now_ns());
	} while (s < seconds || n < 2);
	*seconds_ret = s;
	return n;
}

/* The URL of a file:// store in `dir`: every byte that URLs reserve is %-escaped. */
static int file_url(char *buf, size_t nbytes, const char *dir, uint64_t capacity_mib)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;
	int w;

	w = snprintf(buf, nbytes, "file://");
	n = (size_t)w;
	for (const unsigned char *p = (const unsigned char *)dir; *p != '\0'; p++) {
		bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			     (*p >= '0' && *p <= '9') || strchr("/-._~", *p) != NULL;
		if (n + 4 >= nbytes)
			return -ENAMETOOLONG;
		if (plain) {
			buf[n++] = (char)*p;
		} else {
			buf[n++] = '%';
			buf[n++] = hex[*p >> 4];
			buf[n++] = hex[*p & 15];
		}
	}
	w = snprintf(buf + n, nbytes - n, "?capacity=%lluMiB", (unsigned long long)capacity_mib);
	return w < 0 || (size_t)w >= nbytes - n ? -ENAMETOOLONG : 0;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	if (remove(path) != 0)
		fprintf(stderr, "bench_store: cannot remove %s: %s\n", path, strerror(errno));
	return 0;
}

/* A local store and its GET slot, for every size. */
struct local_store {
	enum client which;
	struct get_run r;
	struct get_slot slot;
	char keys[LOCAL_KEYS][KEY_NBYTES];
};

static int local_open(struct bench *b, struct local_store *ls, enum client which,
		      const char *url, uint8_t *dst)
{
	memset(ls, 0, sizeof(*ls));
	ls->which = which;
	if (store_open(b, client_names[which], url, 1, &ls->r.store) < 0)
		return -1;
	ls->r.keys = ls->keys;
	ls->r.n_keys = LOCAL_KEYS;
	ls->r.n_slots = 1;
	ls->r.slots = &ls->slot;
	ls->slot.run = &ls->r;
	ls->slot.iov.iov_base = dst;
	return 0;
}

/* Put both keys of size si, then one untimed, verified GET of each. 0 or -1 (printed). */
static int local_prepare(struct bench *b, struct local_store *ls, uint32_t si)
{
	const uint32_t mib = b->o->sizes_mib[si];
	const uint64_t nbytes = mib * MIB;
	const char *what = client_names[ls->which];
	double s;
	int rc = 0;

	ls->r.value_nbytes = nbytes;
	ls->slot.iov.iov_len = (size_t)nbytes;
	for (uint32_t k = 0; k < LOCAL_KEYS && rc == 0; k++) {
		key_name(ls->keys[k], mib, k);
		rc = store_put(b, ls->r.store, what, ls->keys[k], value_of(b, k), nbytes);
	}
	if (rc < 0)
		return -1;
	for (uint32_t k = 0; k < LOCAL_KEYS && rc == 0; k++) {
		ls->r.first_key = k;
		rc = get_run_timed(&ls->r, -1.0, &s);
		if (rc == 0)
			rc = get_run_verify(b, &ls->r);
	}
	ls->r.first_key = 0;
	if (rc < 0) {
		fprintf(stderr, "%s: %s: GET %s: %s\n", b->o->prog, what,
			ls->r.keys[ls->r.err_key], err_text(rc));
		b->status = 1;
		return -1;
	}
	return 0;
}

static void local_close(struct local_store *ls)
{
	shadow_store_close(ls->r.store);
	ls->r.store = NULL;
}

/* Per size, back to back: memcpy, mem://, file:// (the machine is shared and noisy). */
static void run_local(struct bench *b)
{
	const struct options *o = b->o;
	struct local_store mem, file;
	uint32_t max_mib = 0;
	uint8_t *dst;
	char url[4600], tmpl[4096];
	bool have_dir = false;

	memset(&mem, 0, sizeof(mem));
	memset(&file, 0, sizeof(file));
	for (uint32_t si = 0; si < o->n_sizes; si++)
		max_mib = o->sizes_mib[si] > max_mib ? o->sizes_mib[si] : max_mib;
	dst = alloc_pages((uint64_t)max_mib * MIB);
	if (dst == NULL) {
		fprintf(stderr, "%s: out of memory\n", o->prog);
		b->status = 1;
		return;
	}
	/* Room for both keys of the largest size, twice over, whatever the per-entry cost. */
	const uint64_t capacity_mib = 4u * LOCAL_KEYS * (uint64_t)max_mib + 64u;
	if (o->clients[CL_MEM]) {
		snprintf(url, sizeof(url), "mem://bench?capacity=%lluMiB",
			 (unsigned long long)capacity_mib);
		local_open(b, &mem, CL_MEM, url, dst);
	}
	if (o->clients[CL_FILE]) {
		if ((size_t)snprintf(tmpl, sizeof(tmpl), "%s/shadow-bench-store.XXXXXX", o->dir) >=
		    sizeof(tmpl)) {
			fprintf(stderr, "%s: --dir %s: path too long\n", o->prog, o->dir);
			b->status = 1;
		} else if (mkdtemp(tmpl) == NULL) {
			fprintf(stderr, "%s: mkdtemp %s: %s\n", o->prog, tmpl, strerror(errno));
			b->status = 1;
		} else {
			have_dir = true;
			if (file_url(url, sizeof(url), tmpl, capacity_mib) < 0) {
				fprintf(stderr, "%s: --dir %s: path too long\n", o->prog, o->dir);
				b->status = 1;
			} else {
				local_open(b, &file, CL_FILE, url, dst);
			}
		}
	}

	printf("\nLocal backends: one GET at a time (connections 1), GB/s; memcpy: the same "
	       "bytes into the same buffer.\nmemcpy, mem and file take turns in %u passes; "
	       "GB/s over all passes, us per GET or copy: the best pass\n", LOCAL_PASSES);
	printf("%9s %9s %9s %9s %12s %12s %11s\n", "value MiB", "mem", "file", "memcpy",
	       "mem us/GET", "memcpy us", "mem/memcpy");
	fflush(stdout);
	for (uint32_t si = 0; si < o->n_sizes; si++) {
		const uint64_t nbytes = o->sizes_mib[si] * MIB;
		const double pass_time = o->min_time / LOCAL_PASSES;
		struct local_store *ls[2] = { &mem, &file };
		double secs[3] = { 0.0, 0.0, 0.0 }, best[3] = { INFINITY, INFINITY, INFINITY };
		uint64_t ops[3] = { 0, 0, 0 };
		bool ok[2];

		for (int w = 0; w < 2; w++) {
			ok[w] = ls[w]->r.store != NULL && local_prepare(b, ls[w], si) == 0;
			if (ls[w]->r.store != NULL && !ok[w])
				local_close(ls[w]); /* one failure is enough said */
		}
		for (uint32_t pass = 0; pass < LOCAL_PASSES; pass++) {
			double s;
			uint64_t n = memcpy_pass(b, dst, nbytes, pass_time, &s);

			ops[2] += n;
			secs[2] += s;
			best[2] = s / (double)n < best[2] ? s / (double)n : best[2];
			for (int w = 0; w < 2; w++) {
				struct get_run *r = &ls[w]->r;
				int rc;

				if (!ok[w])
					continue;
				rc = get_run_timed(r, pass_time, &s);
				if (rc < 0) {
					fprintf(stderr, "%s: %s: GET %s: %s\n", o->prog,
						client_names[ls[w]->which], r->keys[r->err_key],
						err_text(rc));
					b->status = 1;
					ok[w] = false;
					local_close(ls[w]);
					continue;
				}
				ops[w] += r->gets;
				secs[w] += s;
				best[w] = s / (double)r->gets < best[w] ? s / (double)r->gets : best[w];
			}
		}
		for (int w = 0; w < 2; w++) {
			if (!ok[w])
				continue;
			b->res.local[w][si] = gbps(ops[w] * nbytes, secs[w]);
			b->res.local_op_s[w][si] = best[w];
			csv_row(b, ls[w]->which, o->sizes_mib[si], 1, b->res.local[w][si]);
			for (uint32_t k = 0; k < LOCAL_KEYS; k++)
				store_put(b, ls[w]->r.store, client_names[ls[w]->which],
					  ls[w]->keys[k], NULL, 0);
		}
		b->res.memcpy_gbps[si] = gbps(ops[2] * nbytes, secs[2]);
		b->res.memcpy_op_s[si] = best[2];

		printf("%9u", o->sizes_mib[si]);
		print_cell(b->res.local[0][si], 9, 3, "");
		print_cell(b->res.local[1][si], 9, 3, "");
		print_cell(b->res.memcpy_gbps[si], 9, 3, "");
		print_cell(b->res.local_op_s[0][si] * 1e6, 12, 1, "");
		print_cell(b->res.memcpy_op_s[si] * 1e6, 12, 1, "");
		print_cell(b->res.local_op_s[0][si] / b->res.memcpy_op_s[si], 10, 2, "x");
		printf("\n");
		fflush(stdout);
	}
	if (o->clients[CL_FILE])
		printf("file://: page cache warm (values just written and read once), in %s\n",
		       o->dir);
	local_close(&mem);
	local_close(&file);
	if (have_dir)
		nftw(tmpl, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(dst);
}

/* ------------------------------------------------------------------------------------------ */
/* The redis-server                                                                           */
/* ------------------------------------------------------------------------------------------ */


/* Start the server with o->malloc_conf in its environment (ours is restored after). */
static int redis_start(const struct options *o, struct shadow_test_redis **server_ret)
{
	/* Threaded I/O: the main thread still runs every command (and builds each reply), the
	 * I/O threads write replies to the sockets in parallel. */
	char io_line[32];
	const char *config[3] = { io_line, "io-threads-do-reads no", NULL };
	struct shadow_test_redis_options ro = {
		.config = o->io_threads > 1 ? config : NULL,
		.malloc_conf = o->malloc_conf[0] != '\0' ? o->malloc_conf : NULL,
	};

	snprintf(io_line, sizeof(io_line), "io-threads %u", o->io_threads);
	return shadow_test_redis_start(&ro, server_ret);
}

/*
 * The CPU for the redis-server: --redis-cpu, else the first CPU of our original mask that is
 * not the one we are pinned to. -1 when there is none (or not wanted).
 */
static int redis_cpu_choice(const struct options *o, const cpu_set_t *allowed, int our_cpu)
{
	if (o->redis_cpu != -2)
		return o->redis_cpu;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, allowed) && c != our_cpu)
			return c;
	return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Report                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void print_targets(const struct bench *b)
{
	const struct options *o = b->o;
	double lo = INFINITY, hi = -INFINITY;
	bool any = false;

	printf("\nTargets (this run):\n");
	for (uint32_t si = 0; si < o->n_sizes; si++) {
		if (o->sizes_mib[si] < 16)
			continue;
		for (uint32_t ci = 0; ci < o->n_conns; ci++) {
			double s = b->res.redis[0][si][ci], h = b->res.redis[1][si][ci];
			if (isnan(s) || isnan(h))
				continue;
			lo = s / h < lo ? s / h : lo;
			hi = s / h > hi ? s / h : hi;
			any = true;
		}
	}
	if (any)
		printf("  shadow/hiredis GET goodput, values >= 16 MiB, every connection count: "
		       "%.2fx .. %.2fx (target >= 1.2x)\n", lo, hi);
	else
		printf("  shadow/hiredis GET goodput, values >= 16 MiB: not measured\n");
	for (uint32_t si = 0; si < o->n_sizes; si++) {
		double m = b->res.local_op_s[0][si], c = b->res.memcpy_op_s[si];
		if (o->sizes_mib[si] != 16)
			continue;
		if (isnan(m) || c <= 0.0) {
			printf("  mem:// GET of 16 MiB: not measured\n");
		} else {
			printf("  mem:// GET of 16 MiB: %.1f us = %.2f x one memcpy of it (%.1f us) "
			       "(target <= 1 memcpy)\n", m * 1e6, m / c, c * 1e6);
		}
		return;
	}
	printf("  mem:// GET of 16 MiB: not measured (16 not in --sizes)\n");
}

static void print_machine(const struct bench *b, int pinned_cpu)
{
	const struct options *o = b->o;
	char model[256];

	bench_cpu_model(model, sizeof(model));
	printf("store benchmark (libshadow %s), one thread\n", shadow_version());
	printf("cpu: %s; ", model);
	if (pinned_cpu >= 0)
		printf("benchmark pinned to CPU %d\n", pinned_cpu);
	else
		printf("benchmark not pinned\n");
	printf("values:");
	for (uint32_t si = 0; si < o->n_sizes; si++)
		printf("%s%u", si ? ", " : " ", o->sizes_mib[si]);
	printf(" MiB of random bytes; >= %.2f s per measurement%s\n", o->min_time,
	       o->quick ? " (--quick)" : "");
}

static void print_clients(const struct bench *b)
{
	const struct options *o = b->o;

	printf("Redis: %u keys per size; connections", b->n_keys);
	for (uint32_t ci = 0; ci < o->n_conns; ci++)
		printf("%s%u", ci ? ", " : " ", o->conns[ci]);
	printf(", as many GETs in flight\n");
	printf("  shadow:  one handle, options.connections = C, C GETs in flight, each streaming "
	       "into its own buffer\n");
#ifdef SHADOW_BENCH_HAVE_HIREDIS
	printf("  hiredis %d.%d.%d: C contexts, one GET each (C = 1: blocking redisCommand; "
	       "else poll()\n           loop reading until EAGAIN); replies left in hiredis's "
	       "buffers (no copy out charged)\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
	if (o->hiredis_stock)
		printf("           --hiredis-stock: reader maxbuf and glibc malloc as they come\n");
	else
		printf("           tuned for big replies: reader maxbuf 0 (hiredis's advice), glibc "
		       "malloc without\n           mmap()ed blocks or trimming (replies reuse "
		       "memory, no page faults)\n");
#else
	printf("  hiredis: not built in (libhiredis-dev was absent at build time): no hiredis "
	       "rows\n");
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Main                                                                                       */
/* ------------------------------------------------------------------------------------------ */

int shadow_bench_store_main(int argc, char **argv)
{
	struct options o;
	struct bench b;
	struct redis_target target;
	struct shadow_test_redis *server = NULL;
	struct sigaction ign, old_pipe;
	cpu_set_t saved;
	uint32_t max_mib = 0, max_conns = 0, n_values;
	int pinned_cpu = -1, rc;
	bool pinned = false, want_redis, have_redis = false, redis_missing = false;

	rc = parse_args(argc, argv, &o);
	if (rc != 0)
		return rc < 0 ? 0 : rc;
	memset(&b, 0, sizeof(b));
	b.o = &o;
	results_clear(&b.res);
	for (uint32_t si = 0; si < o.n_sizes; si++)
		max_mib = o.sizes_mib[si] > max_mib ? o.sizes_mib[si] : max_mib;
	for (uint32_t ci = 0; ci < o.n_conns; ci++)
		max_conns = o.conns[ci] > max_conns ? o.conns[ci] : max_conns;
	b.n_keys = max_conns;
	n_values = max_conns > LOCAL_KEYS ? max_conns : LOCAL_KEYS;
#ifndef SHADOW_BENCH_HAVE_HIREDIS
	o.clients[CL_HIREDIS] = false;
#endif
	want_redis = o.clients[CL_SHADOW] || o.clients[CL_HIREDIS];
	if (o.redis_url != NULL && parse_redis_url(o.redis_url, &target) < 0) {
		fprintf(stderr, "%s: --redis %s: want redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] "
				"without a query\n", o.prog, o.redis_url);
		return 2;
	}

	/* A server that dies mid-run must not kill us through a write (hiredis uses write()). */
	memset(&ign, 0, sizeof(ign));
	ign.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &ign, &old_pipe);

	if (o.csv_path != NULL &&
	    (b.csv = bench_csv_open(o.prog, o.csv_path,
				    "client,value_mib,connections,goodput_gbps")) == NULL) {
		b.status = 1;
		goto out;
	}
	b.pool = alloc_pages((uint64_t)max_mib * MIB + (uint64_t)n_values * KEY_STRIDE);
	b.alt = alloc_pages((uint64_t)max_mib * MIB);
	if (b.pool == NULL || b.alt == NULL) {
		fprintf(stderr, "%s: out of memory for %u MiB values\n", o.prog, max_mib);
		b.status = 1;
		goto out;
	}
	fill_random(b.pool, (size_t)max_mib * MIB + (size_t)n_values * KEY_STRIDE, 0x5eed);
	fill_random(b.alt, (size_t)max_mib * MIB, 0xa17);

	/*
	 * The server is started before we pin ourselves (a child inherits the affinity of the
	 * thread that forks it), then moved to its own CPU.
	 */
	if (want_redis && o.redis_url == NULL) {
		char path[4096];
		if (shadow_test_redis_find(path, sizeof(path)) < 0) {
			redis_missing = true; /* said after the header */
		} else if ((rc = redis_start(&o, &server)) < 0) {
			fprintf(stderr, "%s: cannot start redis-server: %s\n", o.prog,
				strerror(-rc));
			b.status = 1;
		} else if (parse_redis_url(shadow_test_redis_url(server), &target) < 0) {
			fprintf(stderr, "%s: unexpected server URL %s\n", o.prog,
				shadow_test_redis_url(server));
			b.status = 1;
		} else {
			have_redis = true;
		}
	} else if (want_redis) {
		have_redis = true;
	}

	if (o.pin) {
		rc = bench_pin_current_cpu(&saved, &pinned_cpu);
		if (rc < 0)
			fprintf(stderr, "%s: warning: cannot pin to a CPU: %s\n", o.prog,
				strerror(-rc));
		pinned = rc == 0;
	}
	print_machine(&b, pinned ? pinned_cpu : -1);
	if (redis_missing)
		printf("redis-server: %s: no shadow or hiredis rows\n", SHADOW_TEST_REDIS_MISSING);
	if (have_redis) {
		if (server != NULL) {
			cpu_set_t all, one;
			int cpu;

			if (pinned)
				all = saved;
			else if (sched_getaffinity(0, sizeof(all), &all) != 0)
				CPU_ZERO(&all);
			cpu = redis_cpu_choice(&o, &all, pinned ? pinned_cpu : -1);
			CPU_ZERO(&one);
			/* With threaded I/O, io_threads CPUs from `cpu` on. */
			for (uint32_t k = 0; cpu >= 0 && k < o.io_threads; k++)
				CPU_SET(cpu + (int)k, &one);
			/* Not pinned, it still must not inherit our CPU alone. */
			rc = bench_pin_process(shadow_test_redis_pid(server), cpu >= 0 ? &one : &all);
			printf("redis-server: started here (%s, pid %d), ",
			       shadow_test_redis_addr(server), (int)shadow_test_redis_pid(server));
			if (rc < 0)
				printf("cannot pin it: %s\n", strerror(-rc));
			else if (cpu >= 0 && o.io_threads > 1)
				printf("pinned to CPUs %d-%d, io-threads %u\n", cpu,
				       cpu + (int)o.io_threads - 1, o.io_threads);
			else if (cpu >= 0)
				printf("pinned to CPU %d\n", cpu);
			else
				printf("not pinned (no other CPU): figures mix client and server\n");
			if (o.malloc_conf[0] != '\0')
				printf("redis-server: MALLOC_CONF=%s (jemalloc keeps freed pages, so "
				       "that replies are not built in fresh ones)\n", o.malloc_conf);
		}
		if (o.redis_url != NULL)
			printf("redis-server: %s:%d (--redis), not started here: pin it to another "
			       "CPU than the benchmark's (taskset -pc CPU PID)\n", target.host,
			       target.port);
		print_clients(&b);
		fflush(stdout);
#ifdef SHADOW_BENCH_HAVE_HIREDIS
		if (o.clients[CL_HIREDIS] && !o.hiredis_stock)
			hiredis_tune_malloc();
#endif
		run_redis(&b, &target);
	}
	if (o.clients[CL_MEM] || o.clients[CL_FILE])
		run_local(&b);
	print_targets(&b);

out:
	if (pinned)
		bench_unpin(&saved);
	shadow_test_redis_stop(server);
	sigaction(SIGPIPE, &old_pipe, NULL);
	if (b.csv != NULL && fclose(b.csv) != 0) {
		fprintf(stderr, "%s: %s: %s\n", o.prog, o.csv_path, strerror(errno));
		b.status = 1;
	}
	free(b.pool);
	free(b.alt);
	return b.status;
}
