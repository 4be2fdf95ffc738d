/*
 * test_pipeline.c - the data-plane pipeline end to end on the CPU: save a region's blocks to
 * a mem:// store, look them up, fetch them into another region with another layout and other
 * block ids, and compare every head vector; lossless schemes byte-exact, int8 within its
 * bound. Plus: many ops at once, a pool smaller than one op, misses, corrupt and foreign
 * values, deadlines, cancel, region removal, destroy with work in flight, and where the
 * threads are pinned.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/clock.h"
#include "core/cpuset.h"
#include "pipeline/pipeline.h"

#define N_CHUNKS 4u
#define MANY_OPS 24u
/* Blocks for MANY_OPS fetches of N_CHUNKS chunks of 4 blocks each, all apart: with several
 * copy threads, two ops writing the same block at once would be a data race. */
#define N_BLOCKS (MANY_OPS * N_CHUNKS * 4u)

struct region {
	struct shadow__region_spec spec;
	int fd;
	uint8_t *map;
	uint32_t id;
};

struct fixture {
	struct shadow_kv_geometry geom;
	uint32_t bpc;
	struct shadow_chunk_key keys[N_CHUNKS + 1]; /* the last is never saved */
	struct region a, b;
	struct shadow__pipeline *pl;
	char url[64];
};

static _Atomic int g_done;

static void on_done(struct shadow__op *op)
{
	(void)op;
	atomic_fetch_add(&g_done, 1);
}

/* Wait until `n` ops completed since the counter was reset (10 s at most). */
static void wait_ops(int n)
{
	uint64_t end = shadow__now_ns() + 10 * SHADOW_NS_PER_SEC;

	while (atomic_load(&g_done) < n) {
		if (shadow__now_ns() > end)
			fail_msg("ops did not complete: %d of %d", atomic_load(&g_done), n);
		shadow__sleep_ns(100 * SHADOW_NS_PER_US);
	}
}

static void region_make(struct fixture *f, struct region *r, enum shadow_layout_kind kind)
{
	uint64_t nbytes = 2 * (uint64_t)f->geom.n_layers * N_BLOCKS * f->geom.block_tokens *
			  f->geom.n_kv_heads * f->geom.head_dim * 2;

	memset(r, 0, sizeof(*r));
	r->fd = memfd_create("test-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(r->fd >= 0);
	assert_int_equal(ftruncate(r->fd, (off_t)nbytes), 0);
	assert_int_equal(fcntl(r->fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	r->map = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	assert_true(r->map != MAP_FAILED);
	r->spec.geom = f->geom;
	assert_int_equal(shadow_layout_init(&r->spec.layout, &f->geom, kind, N_BLOCKS, 0, nbytes), 0);
	r->spec.mem.kind = SHADOW__COPY_HOST;
	r->spec.mem.fd = r->fd;
	r->spec.mem.nbytes = nbytes;
}

static void region_free(struct region *r)
{
	munmap(r->map, r->spec.mem.nbytes);
	close(r->fd);
}

static uint16_t bf16_of(float x)
{
	uint32_t u;
	memcpy(&u, &x, 4);
	return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static float float_of(uint16_t b)
{
	uint32_t u = (uint32_t)b << 16;
	float x;
	memcpy(&x, &u, 4);
	return x;
}

/* Fill every element of region r with a smooth, finite pattern (KV-like magnitudes). */
static void region_fill(struct fixture *f, struct region *r, uint32_t seed)
{
	const struct shadow_kv_geometry *g = &f->geom;

	for (uint32_t l = 0; l < g->n_layers; l++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t b = 0; b < N_CHUNKS * f->bpc; b++) /* the blocks saved */
				for (uint32_t t = 0; t < g->block_tokens; t++)
					for (uint32_t h = 0; h < g->n_kv_heads; h++) {
						int64_t off = shadow_layout_offset(&r->spec.layout, g, l, kv, b, t, h);
						assert_true(off >= 0);
						uint16_t *v = (uint16_t *)(r->map + off);
						for (uint32_t d = 0; d < g->head_dim; d++) {
							float x = sinf((float)(seed + l * 7 + kv * 3 + b * 11 + t) * 0.1f +
								       (float)(h * 131 + d) * 0.05f) * (1.0f + (float)d / 64.0f);
							v[d] = bf16_of(x);
						}
					}
}

/*
 * Compare chunk c's tokens in region a (blocks ida) with region b (blocks idb): max abs
 * error relative to the largest magnitude, over every element.
 */
static double compare(struct fixture *f, const uint32_t *ida, const uint32_t *idb)
{
	const struct shadow_kv_geometry *g = &f->geom;
	double worst = 0.0, mag = 0.0;

	for (uint32_t l = 0; l < g->n_layers; l++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t i = 0; i < f->bpc; i++)
				for (uint32_t t = 0; t < g->block_tokens; t++)
					for (uint32_t h = 0; h < g->n_kv_heads; h++) {
						const uint16_t *x = (const uint16_t *)(f->a.map +
							shadow_layout_offset(&f->a.spec.layout, g, l, kv, ida[i], t, h));
						const uint16_t *y = (const uint16_t *)(f->b.map +
							shadow_layout_offset(&f->b.spec.layout, g, l, kv, idb[i], t, h));
						for (uint32_t d = 0; d < g->head_dim; d++) {
							double e = fabs((double)float_of(x[d]) - float_of(y[d]));
							worst = e > worst ? e : worst;
							double m = fabs((double)float_of(x[d]));
							mag = m > mag ? m : mag;
						}
					}
	return worst / mag;
}

static int setup_with(void **state, const char *scheme, uint64_t pool, uint64_t rx,
		      uint64_t stage, uint32_t decode, uint32_t copy)
{
	static int n;
	struct fixture *f = calloc(1, sizeof(*f));
	struct shadow__pipeline_config cfg;
	uint32_t tokens[N_CHUNKS + 1][64];

	assert_non_null(f);
	assert_int_equal(shadow_geometry_preset("minillama-h128", &f->geom), 0);
	f->geom.n_layers = 3;
	f->geom.chunk_tokens = 64;
	f->bpc = f->geom.chunk_tokens / f->geom.block_tokens;
	struct shadow_chunk_key ns;
	assert_int_equal(shadow_key_namespace("test-pipeline", &f->geom, NULL, 0, &ns), 0);
	for (uint32_t i = 0; i < (N_CHUNKS + 1) * 64; i++)
		tokens[i / 64][i % 64] = i * 2654435761u;
	size_t nk = 0;
	assert_int_equal(shadow_key_chain(&ns, &tokens[0][0], (N_CHUNKS + 1) * 64, 64, f->keys,
					  N_CHUNKS + 1, &nk), 0);
	assert_int_equal(nk, N_CHUNKS + 1);

	region_make(f, &f->a, SHADOW_LAYOUT_NHD);
	region_make(f, &f->b, SHADOW_LAYOUT_HND);
	region_fill(f, &f->a, 1);

	snprintf(f->url, sizeof(f->url), "mem://test-pipeline-%d?capacity=64MiB", n++);
	shadow__pipeline_config_default(&cfg);
	cfg.store_url = f->url;
	cfg.pool_nbytes = pool;
	cfg.rx_nbytes = rx;
	cfg.stage_nbytes = stage;
	cfg.decode_threads = decode;
	cfg.copy_threads = copy;
	cfg.save_scheme = scheme;
	assert_int_equal(shadow__pipeline_create(&cfg, &f->pl), 0);
	assert_int_equal(shadow__pipeline_region_add(f->pl, &f->a.spec, &f->a.id), 0);
	assert_int_equal(shadow__pipeline_region_add(f->pl, &f->b.spec, &f->b.id), 0);
	atomic_store(&g_done, 0);
	*state = f;
	return 0;
}

static int setup_lossless(void **state)
{
	return setup_with(state, "bf16planes+zstd1", 8u << 20, 1u << 20, 256u << 10, 2, 1);
}

/* Three copy threads: chunks of one op are copied (and reaped) by different threads. */
static int setup_copy_threads(void **state)
{
	return setup_with(state, "bf16planes+zstd1", 8u << 20, 1u << 20, 256u << 10, 2, 3);
}

static int setup_int8(void **state)
{
	return setup_with(state, "int8+zstd1", 8u << 20, 1u << 20, 256u << 10, 2, 1);
}

/* The save buffers and one chunk buffer (1 MiB receive, 256 KiB staging for a 192 KiB
 * chunk): less than one op of four chunks. */
static int setup_tiny_pool(void **state)
{
	return setup_with(state, "bf16planes+zstd1", 2 * (1u << 20) + (1u << 20) + (256u << 10),
			  1u << 20, 256u << 10, 1, 1);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	shadow__pipeline_destroy(f->pl);
	region_free(&f->a);
	region_free(&f->b);
	free(f);
	return 0;
}

static void op_init(struct shadow__op *op, struct fixture *f, uint32_t kind, uint32_t region,
		    uint32_t first, uint32_t n, const uint32_t *blocks, uint8_t *status)
{
	memset(op, 0, sizeof(*op));
	op->kind = kind;
	op->region = region;
	op->n_chunks = n;
	op->first_chunk_index = first;
	op->keys = &f->keys[first];
	op->block_ids = blocks;
	op->chunk_status = status;
	op->on_done = on_done;
}

/* Save chunks 0..N-1 of region a from blocks 0.. in order. */
static void save_all(struct fixture *f, uint32_t *ids_a)
{
	struct shadow__op op;
	uint8_t st[N_CHUNKS];

	for (uint32_t i = 0; i < N_CHUNKS * f->bpc; i++)
		ids_a[i] = i;
	op_init(&op, f, SHADOW__OP_SAVE, f->a.id, 0, N_CHUNKS, ids_a, st);
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	assert_int_equal(op.n_ok, N_CHUNKS);
	for (uint32_t i = 0; i < N_CHUNKS; i++)
		assert_int_equal(st[i], SHADOW_CHUNK_OK);
	assert_true(op.bytes_out > 0);
}

static void fetch_check(struct fixture *f, const uint32_t *ids_a, double tol)
{
	uint32_t ids_b[N_CHUNKS * 16];
	struct shadow__op op;
	uint8_t st[N_CHUNKS];

	/* Other blocks, out of order, in the other layout. */
	for (uint32_t i = 0; i < N_CHUNKS * f->bpc; i++)
		ids_b[i] = (i * 7 + 3) % N_BLOCKS;
	op_init(&op, f, SHADOW__OP_FETCH, f->b.id, 0, N_CHUNKS, ids_b, st);
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	for (uint32_t i = 0; i < N_CHUNKS; i++)
		assert_int_equal(st[i], SHADOW_CHUNK_OK);
	assert_int_equal(op.n_ok, N_CHUNKS);
	for (uint32_t c = 0; c < N_CHUNKS; c++) {
		double e = compare(f, ids_a + c * f->bpc, ids_b + c * f->bpc);
		if (tol == 0.0)
			assert_true(e == 0.0);
		else if (e > tol)
			fail_msg("chunk %u: relative error %.4f above %.4f", c, e, tol);
	}
}

static void test_round_trip_lossless(void **state)
{
	struct fixture *f = *state;
	uint32_t ids_a[N_CHUNKS * 16];

	save_all(f, ids_a);
	fetch_check(f, ids_a, 0.0);

	struct shadow__pipeline_stats s;
	shadow__pipeline_stats(f->pl, &s);
	assert_int_equal(s.chunks_ok, 2 * N_CHUNKS);
	assert_true(s.bytes_decoded == (uint64_t)N_CHUNKS * 2 * f->geom.n_layers * 64 * 2 * 128 * 2);
	assert_int_equal(s.chunks_free, s.chunks_total); /* every chunk buffer came back */
	assert_int_equal(s.chunks_total, 4);
}

/* int8 with per-group scales: half a step of the largest group range, relative to it. */
static void test_round_trip_int8(void **state)
{
	struct fixture *f = *state;
	uint32_t ids_a[N_CHUNKS * 16];

	save_all(f, ids_a);
	fetch_check(f, ids_a, 0.5 / 127.0 * 2.0 + 1.0 / 128.0 /* bf16 rounding */);
}

static void test_lookup(void **state)
{
	struct fixture *f = *state;
	uint32_t ids_a[N_CHUNKS * 16];
	struct shadow__op op;

	save_all(f, ids_a);
	op_init(&op, f, SHADOW__OP_LOOKUP, 0, 0, N_CHUNKS + 1, NULL, NULL);
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	assert_int_equal(op.status, 0);
	assert_int_equal(op.n_found, N_CHUNKS); /* the last key was never saved */
}

static void test_many_ops_and_tiny_pool(void **state)
{
	struct fixture *f = *state;
	uint32_t ids_a[N_CHUNKS * 16];
	static struct shadow__op ops[MANY_OPS];
	static uint8_t st[MANY_OPS][N_CHUNKS];
	static uint32_t ids[MANY_OPS][N_CHUNKS * 16];

	save_all(f, ids_a);
	atomic_store(&g_done, 0);
	for (uint32_t k = 0; k < MANY_OPS; k++) {
		/* Each op its own blocks, out of order. */
		const uint32_t per_op = N_CHUNKS * f->bpc;
		for (uint32_t i = 0; i < per_op; i++)
			ids[k][i] = (MANY_OPS - 1 - k) * per_op + i * 5 % per_op;
		op_init(&ops[k], f, SHADOW__OP_FETCH, f->b.id, 0, N_CHUNKS, ids[k], st[k]);
		assert_int_equal(shadow__pipeline_submit(f->pl, &ops[k]), 0);
	}
	wait_ops(MANY_OPS);
	for (uint32_t k = 0; k < MANY_OPS; k++) {
		assert_int_equal(ops[k].n_ok, N_CHUNKS);
		for (uint32_t c = 0; c < N_CHUNKS; c++)
			assert_true(compare(f, ids_a + c * f->bpc, ids[k] + c * f->bpc) == 0.0);
	}
}

/* No byte of region r was written (it was zeroed before). */
static void assert_region_zero(const struct region *r)
{
	for (uint64_t i = 0; i < r->spec.mem.nbytes; i++)
		if (r->map[i] != 0)
			fail_msg("byte %llu of the region written", (unsigned long long)i);
}

static void test_miss_corrupt_foreign(void **state)
{
	struct fixture *f = *state;
	uint32_t ids_a[N_CHUNKS * 16], ids_b[16];
	struct shadow_store *s = NULL;
	char key[SHADOW_STORE_KEY_MAX], key0[SHADOW_STORE_KEY_MAX];
	struct shadow__op op;
	uint8_t st[1];

	save_all(f, ids_a);
	for (uint32_t i = 0; i < f->bpc; i++)
		ids_b[i] = i;
	/* Never saved: a miss. */
	op_init(&op, f, SHADOW__OP_FETCH, f->b.id, N_CHUNKS, 1, ids_b, st);
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	assert_int_equal(st[0], SHADOW_CHUNK_MISS);

	/* Garbage under the key: corrupt. */
	assert_int_equal(shadow_store_open(f->url, NULL, &s), 0);
	shadow_key_format(&f->keys[N_CHUNKS], NULL, key, sizeof(key));
	static uint8_t junk[4096];
	memset(junk, 0xa5, sizeof(junk));
	struct iovec iov = { junk, sizeof(junk) };
	struct shadow_store_req put = { .op = SHADOW_STORE_PUT, .key = key, .iov = &iov,
					.iov_count = 1 };
	assert_int_equal(shadow_store_submit(s, &put), 0);
	assert_int_equal(shadow_store_wait(s, &put), 0);
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	assert_int_equal(st[0], SHADOW_CHUNK_CORRUPT);

	/* Chunk 0's container under chunk N's key: a valid container of another key. */
	static uint8_t val[1u << 20];
	shadow_key_format(&f->keys[0], NULL, key0, sizeof(key0));
	struct iovec viov = { val, sizeof(val) };
	struct shadow_store_req get = { .op = SHADOW_STORE_GET, .key = key0, .iov = &viov,
					.iov_count = 1 };
	assert_int_equal(shadow_store_submit(s, &get), 0);
	assert_int_equal(shadow_store_wait(s, &get), 0);
	viov.iov_len = get.value_nbytes;
	put.iov = &viov;
	assert_int_equal(shadow_store_submit(s, &put), 0);
	assert_int_equal(shadow_store_wait(s, &put), 0);
	memset(f->b.map, 0, f->b.spec.mem.nbytes);
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	assert_int_equal(st[0], SHADOW_CHUNK_CORRUPT);
	/* Nothing of a chunk that failed its metadata check reached the region. */
	assert_region_zero(&f->b);

	/* Chunk 0's own container with its last byte (in the last frame's payload) flipped:
	 * every other frame decodes and passes its checksum, and still nothing of the chunk
	 * reaches the region, because a chunk is copied only once all its frames passed. */
	val[get.value_nbytes - 1] ^= 0x40;
	put.key = key0;
	assert_int_equal(shadow_store_submit(s, &put), 0);
	assert_int_equal(shadow_store_wait(s, &put), 0);
	op_init(&op, f, SHADOW__OP_FETCH, f->b.id, 0, 1, ids_b, st);
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	assert_int_equal(st[0], SHADOW_CHUNK_CORRUPT);
	assert_region_zero(&f->b);
	shadow_store_close(s);
}

static void test_deadline_cancel_and_bad_ops(void **state)
{
	struct fixture *f = *state;
	uint32_t ids_a[N_CHUNKS * 16];
	struct shadow__op op;
	uint8_t st[N_CHUNKS];

	save_all(f, ids_a);
	op_init(&op, f, SHADOW__OP_FETCH, f->b.id, 0, N_CHUNKS, ids_a, st);
	op.deadline_ns = 1; /* long past */
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	wait_ops(1);
	for (uint32_t i = 0; i < N_CHUNKS; i++)
		assert_int_equal(st[i], SHADOW_CHUNK_TIMEOUT);

	/* Cancelled at once: every chunk either made it or says canceled. */
	op.deadline_ns = 0;
	atomic_store(&g_done, 0);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), 0);
	shadow__pipeline_cancel(f->pl, &op);
	wait_ops(1);
	for (uint32_t i = 0; i < N_CHUNKS; i++)
		assert_true(st[i] == SHADOW_CHUNK_OK || st[i] == SHADOW_CHUNK_CANCELED);

	/* Malformed ops are refused, nothing called back. */
	uint32_t bad_ids[16] = { N_BLOCKS };
	op_init(&op, f, SHADOW__OP_FETCH, f->b.id, 0, 1, bad_ids, st);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), -EINVAL);
	op_init(&op, f, SHADOW__OP_FETCH, 63, 0, 1, ids_a, st);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), -ENOENT);
	op_init(&op, f, 9, f->b.id, 0, 1, ids_a, st);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), -EINVAL);
	op_init(&op, f, SHADOW__OP_FETCH, f->b.id, 0, 0, ids_a, st);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), -EINVAL);

	/* A removed region takes no more ops. */
	assert_int_equal(shadow__pipeline_region_remove(f->pl, f->b.id), 0);
	op_init(&op, f, SHADOW__OP_FETCH, f->b.id, 0, 1, ids_a, st);
	assert_int_equal(shadow__pipeline_submit(f->pl, &op), -ENOENT);
	assert_int_equal(shadow__pipeline_region_remove(f->pl, f->b.id), -ENOENT);
	assert_int_equal(atomic_load(&g_done), 1);
}

/* Destroy with ops queued: each completes (canceled or done), once. */
static void test_destroy_in_flight(void **state)
{
	struct fixture *f = *state;
	uint32_t ids_a[N_CHUNKS * 16];
	enum { N_OPS = 16 };
	static struct shadow__op ops[N_OPS];
	static uint8_t st[N_OPS][N_CHUNKS];

	save_all(f, ids_a);
	atomic_store(&g_done, 0);
	for (int k = 0; k < N_OPS; k++) {
		/* Saves read region a, fetches write region b: no two ops race on memory. */
		bool save = k % 2;
		op_init(&ops[k], f, save ? SHADOW__OP_SAVE : SHADOW__OP_FETCH,
			save ? f->a.id : f->b.id, 0, N_CHUNKS, ids_a, st[k]);
		assert_int_equal(shadow__pipeline_submit(f->pl, &ops[k]), 0);
	}
	shadow__pipeline_destroy(f->pl);
	f->pl = NULL;
	assert_int_equal(atomic_load(&g_done), N_OPS);
	for (int k = 0; k < N_OPS; k++)
		for (uint32_t i = 0; i < N_CHUNKS; i++)
			assert_true(st[k][i] == SHADOW_CHUNK_OK || st[k][i] == SHADOW_CHUNK_CANCELED);
}

/* The CPUs thread `tid` of this process may run on, from /proc (Cpus_allowed_list). */
static void task_cpus(const char *tid, cpu_set_t *set)
{
	char path[320], line[512];
	bool seen = false;

	snprintf(path, sizeof(path), "/proc/self/task/%.32s/status", tid); /* a number */
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "Cpus_allowed_list:", 18) == 0) {
			char *v = line + 18 + strspn(line + 18, " \t");
			v[strcspn(v, "\n")] = '\0';
			assert_int_equal(shadow__cpuset_parse(v, set), 0);
			seen = true;
		}
	}
	fclose(f);
	assert_true(seen);
}

/* The thread ids of this process, into ids (at most max); how many. */
static int task_ids(char (*ids)[256], int max)
{
	DIR *d = opendir("/proc/self/task");
	int n = 0;

	assert_non_null(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (e->d_name[0] != '.' && n < max)
			snprintf(ids[n++], sizeof(ids[0]), "%s", e->d_name);
	}
	closedir(d);
	return n;
}

/*
 * Create a pipeline inside `cpus` (1 fetch, 1 decode, 1 copy, 1 save thread) and check where
 * each of its threads may run: one CPU of its own each when the set has a CPU for every
 * thread, the whole set otherwise.
 */
static void check_pinning(const cpu_set_t *cpus)
{
	char before[64][256], after[64][256];
	struct shadow__pipeline_config cfg;
	struct shadow__pipeline *pl = NULL;
	cpu_set_t used;
	const bool apart = CPU_COUNT(cpus) >= 4;
	int n0, n1, found = 0;

	shadow__pipeline_config_default(&cfg);
	cfg.store_url = "mem://test-pipeline-pin";
	cfg.pool_nbytes = 8u << 20;
	cfg.rx_nbytes = 1u << 20;
	cfg.stage_nbytes = 256u << 10;
	cfg.decode_threads = 1;
	cfg.cpus = cpus;
	n0 = task_ids(before, 64);
	assert_int_equal(shadow__pipeline_create(&cfg, &pl), 0);
	n1 = task_ids(after, 64);
	CPU_ZERO(&used);
	for (int i = 0; i < n1; i++) {
		bool old = false;
		for (int j = 0; j < n0 && !old; j++)
			old = strcmp(after[i], before[j]) == 0;
		if (old)
			continue;
		cpu_set_t set, both;
		task_cpus(after[i], &set);
		found++;
		if (!apart) {
			assert_true(CPU_EQUAL(&set, cpus));
			continue;
		}
		assert_int_equal(CPU_COUNT(&set), 1);
		CPU_AND(&both, &set, cpus);
		assert_int_equal(CPU_COUNT(&both), 1); /* inside the set */
		CPU_AND(&both, &set, &used);
		assert_int_equal(CPU_COUNT(&both), 0); /* and no other thread's */
		CPU_OR(&used, &used, &set);
	}
	assert_int_equal(found, 4);
	shadow__pipeline_destroy(pl);
}

static void test_threads_pinned(void **state)
{
	cpu_set_t mine, one;

	(void)state;
	assert_int_equal(sched_getaffinity(0, sizeof(mine), &mine), 0);
	CPU_ZERO(&one);
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (CPU_ISSET(c, &mine)) {
			CPU_SET(c, &one);
			break;
		}
	}
	check_pinning(&one); /* four threads, one CPU: all share it */
	if (CPU_COUNT(&mine) < 4) {
		print_message("only %d CPUs: threads one CPU each not checked\n", CPU_COUNT(&mine));
		return;
	}
	check_pinning(&mine);
}

static void test_config_errors(void **state)
{
	struct shadow__pipeline_config cfg;
	struct shadow__pipeline *pl = NULL;

	(void)state;
	shadow__pipeline_config_default(&cfg);
	assert_int_equal(shadow__pipeline_create(&cfg, &pl), -EINVAL); /* no store */
	cfg.store_url = "mem://cfg";
	cfg.copy_threads = 0;
	assert_int_equal(shadow__pipeline_create(&cfg, &pl), -EINVAL);
	cfg.copy_threads = UINT32_MAX; /* the sum of the counts must not wrap */
	cfg.fetch_threads = 2;
	assert_int_equal(shadow__pipeline_create(&cfg, &pl), -EINVAL);
	shadow__pipeline_config_default(&cfg);
	cfg.store_url = "mem://cfg";
	cfg.pool_nbytes = 1u << 20; /* below two save buffers */
	assert_int_equal(shadow__pipeline_create(&cfg, &pl), -EINVAL);
	shadow__pipeline_config_default(&cfg);
	cfg.store_url = "mem://cfg";
	cfg.save_scheme = "no-such-scheme";
	cfg.pool_nbytes = 8u << 20;
	cfg.rx_nbytes = 1u << 20;
	cfg.stage_nbytes = 256u << 10;
	assert_true(shadow__pipeline_create(&cfg, &pl) < 0);
	cfg.save_scheme = NULL;
	cfg.store_url = "nosuch://x";
	assert_int_equal(shadow__pipeline_create(&cfg, &pl), SHADOW_EUNKNOWN_NAME);
	assert_null(pl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip_lossless, setup_lossless, teardown),
		cmocka_unit_test_setup_teardown(test_round_trip_int8, setup_int8, teardown),
		cmocka_unit_test_setup_teardown(test_lookup, setup_lossless, teardown),
		cmocka_unit_test_setup_teardown(test_many_ops_and_tiny_pool, setup_lossless, teardown),
		cmocka_unit_test_setup_teardown(test_many_ops_and_tiny_pool, setup_tiny_pool, teardown),
		cmocka_unit_test_setup_teardown(test_round_trip_lossless, setup_copy_threads,
						teardown),
		cmocka_unit_test_setup_teardown(test_many_ops_and_tiny_pool, setup_copy_threads,
						teardown),
		cmocka_unit_test_setup_teardown(test_destroy_in_flight, setup_copy_threads, teardown),
		cmocka_unit_test_setup_teardown(test_miss_corrupt_foreign, setup_lossless, teardown),
		cmocka_unit_test_setup_teardown(test_deadline_cancel_and_bad_ops, setup_lossless,
						teardown),
		cmocka_unit_test_setup_teardown(test_destroy_in_flight, setup_lossless, teardown),
		cmocka_unit_test(test_threads_pinned),
		cmocka_unit_test(test_config_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
