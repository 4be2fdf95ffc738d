/*
 * test_copy.c - the copy backends (lib/pipeline/copy.h).
 *
 * host (always runs): frames planned with shadow_layout_plan_frame for the NHD, HND and
 * cross-layer layouts are copied into a memfd region and the whole file is compared with an
 * image built independently (every head vector put at its shadow_layout_offset), so bytes
 * outside the runs are checked untouched; bad runs and bad region descriptions give -EINVAL;
 * a full context gives -EAGAIN; read() gathers the frames back; the slot pool allocates.
 *
 * cuda (only with the CUDA module and a GPU; else a SKIP line, and the exit status is the
 * host part's): CUDA IPC handles cannot be opened by the process that exported them, so the
 * test allocates device memory, fills it, exports a handle and spawns itself again
 * (`test_copy --cuda-child HANDLE KIND DEVICE`, a fresh process: CUDA does not survive
 * fork()). The child opens the region through the cuda backend, checks a job of more runs
 * than one batch call takes, read() and -EAGAIN, and copies every frame from pinned slots;
 * the parent then reads the device memory back and compares it with the host backend's
 * result for the same plan.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/clock.h"
#include "gpu/gpu.h"
#include "pipeline/copy.h"
#include <shadow/shadow.h>

extern char **environ;

#define N_BLOCKS 10u
#define CACHE_OFFSET 256u /* where the cache starts inside the region */
#define REGION_TAIL 200u  /* bytes after the cache: never written */
#define FILL 0x5a         /* what every byte of a region holds before the copies */
#define REAP_TIMEOUT_S 10

/* The chunk's block table: out of order, no repeats (copies of one job may run in any order). */
static const uint32_t chunk_blocks[] = { 7, 2, 9, 4 };

static const enum shadow_layout_kind all_kinds[] = {
	SHADOW_LAYOUT_NHD,
	SHADOW_LAYOUT_HND,
	SHADOW_LAYOUT_CROSS_LAYER_NHD,
};

/* 3 layers, 2 KV heads, head_dim 32, bf16, 4-token blocks, 16-token chunks (4 blocks). */
static struct shadow_kv_geometry test_geom(void)
{
	struct shadow_kv_geometry g = {
		.n_layers = 3,
		.n_kv_heads = 2,
		.head_dim = 32,
		.dtype = SHADOW_DTYPE_BF16,
		.block_tokens = 4,
		.chunk_tokens = 16,
	};
	return g;
}

/* Every frame of one chunk in one layout: staging images and copy plans. */
struct scenario {
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout layout;
	uint64_t region_nbytes;
	uint64_t frame_nbytes;
	uint32_t n_frames; /* frame f is layer f / 2, kind f % 2 */
	size_t max_runs;   /* runs[] holds max_runs per frame */
	uint8_t *stage;    /* n_frames images of frame_nbytes */
	struct shadow_copy_run *runs;
	uint32_t *n_runs;
};

static void scenario_init(struct scenario *sc, enum shadow_layout_kind kind)
{
	memset(sc, 0, sizeof(*sc));
	sc->geom = test_geom();
	const struct shadow_kv_geometry *g = &sc->geom;
	uint64_t block_nbytes = (uint64_t)g->block_tokens * g->n_kv_heads * g->head_dim *
				shadow_dtype_nbytes(g->dtype);
	uint64_t cache_nbytes = (uint64_t)g->n_layers * 2 * N_BLOCKS * block_nbytes;

	sc->region_nbytes = CACHE_OFFSET + cache_nbytes + REGION_TAIL;
	assert_int_equal(shadow_layout_init(&sc->layout, g, kind, N_BLOCKS, CACHE_OFFSET,
					    sc->region_nbytes),
			 0);
	sc->frame_nbytes = shadow_geometry_frame_nbytes(g);
	sc->n_frames = 2 * g->n_layers;
	sc->max_runs = (size_t)SHADOW_ARRAY_SIZE(chunk_blocks) * g->block_tokens * g->n_kv_heads;
	sc->stage = malloc(sc->n_frames * sc->frame_nbytes);
	sc->runs = calloc(sc->n_frames * sc->max_runs, sizeof(*sc->runs));
	sc->n_runs = calloc(sc->n_frames, sizeof(*sc->n_runs));
	assert_non_null(sc->stage);
	assert_non_null(sc->runs);
	assert_non_null(sc->n_runs);

	for (uint32_t f = 0; f < sc->n_frames; f++) {
		uint8_t *img = sc->stage + f * sc->frame_nbytes;
		for (uint64_t i = 0; i < sc->frame_nbytes; i++)
			img[i] = (uint8_t)((i * 131u + (i >> 8) * 7u + f * 29u + 1u) ^ (i >> 3));
		size_t n = 0;
		assert_int_equal(shadow_layout_plan_frame(&sc->layout, g, f / 2,
							  (enum shadow_kv_kind)(f % 2),
							  chunk_blocks,
							  SHADOW_ARRAY_SIZE(chunk_blocks),
							  sc->runs + f * sc->max_runs,
							  sc->max_runs, &n),
				 0);
		sc->n_runs[f] = (uint32_t)n;
	}
}

static void scenario_free(struct scenario *sc)
{
	free(sc->stage);
	free(sc->runs);
	free(sc->n_runs);
}

/*
 * What the region must hold after every frame is copied, built without the plan: FILL, and
 * each head vector of each frame at its shadow_layout_offset.
 */
static void scenario_expected(const struct scenario *sc, uint8_t *img)
{
	const struct shadow_kv_geometry *g = &sc->geom;
	size_t vec_nbytes = g->head_dim * shadow_dtype_nbytes(g->dtype);

	memset(img, FILL, sc->region_nbytes);
	for (uint32_t f = 0; f < sc->n_frames; f++) {
		for (uint32_t t = 0; t < g->chunk_tokens; t++) {
			for (uint32_t h = 0; h < g->n_kv_heads; h++) {
				int64_t dst = shadow_layout_offset(
					&sc->layout, g, f / 2, (enum shadow_kv_kind)(f % 2),
					chunk_blocks[t / g->block_tokens], t % g->block_tokens, h);
				int64_t src = shadow_layout_stage_offset(&sc->layout, g, t, h);
				assert_true(dst >= 0 && src >= 0);
				memcpy(img + dst, sc->stage + f * sc->frame_nbytes + src,
				       vec_nbytes);
			}
		}
	}
}

static struct shadow__copy_job frame_job(const struct scenario *sc, struct shadow__copy_region *r,
					 const uint8_t *stage, uint32_t f)
{
	struct shadow__copy_job job = {
		.region = r,
		.src = stage + f * sc->frame_nbytes,
		.runs = sc->runs + f * sc->max_runs,
		.n_runs = sc->n_runs[f],
		.user = (void *)(uintptr_t)(f + 1),
	};
	return job;
}

/* Reap until `n` jobs are back, oldest first, with users first_user, first_user + 1, ... */
static void reap_all(const struct shadow__copy_ops *ops, struct shadow__copy_ctx *ctx,
		     uint32_t n, uintptr_t first_user)
{
	uint64_t deadline = shadow__now_ns() + (uint64_t)REAP_TIMEOUT_S * 1000000000u;
	uint32_t got = 0;

	assert_int_equal(ops->flush(ctx), 0); /* queued jobs complete only once flushed */
	while (got < n) {
		void *users[3];
		int statuses[3];
		uint32_t k = ops->reap(ctx, users, statuses, 3);
		assert_true(k <= 3 && got + k <= n);
		for (uint32_t i = 0; i < k; i++, got++) {
			assert_int_equal(statuses[i], 0);
			assert_ptr_equal(users[i], (void *)(first_user + got));
		}
		if (k == 0) {
			assert_true(shadow__now_ns() < deadline);
			usleep(50);
		}
	}
}

/* Submit every frame (`stage` holds the images: sc->stage or a pinned copy), then reap. */
static void copy_frames(const struct shadow__copy_ops *ops, struct shadow__copy_ctx *ctx,
			struct shadow__copy_region *r, const struct scenario *sc,
			const uint8_t *stage)
{
	uint32_t before = ops->in_flight(ctx);

	for (uint32_t f = 0; f < sc->n_frames; f++) {
		struct shadow__copy_job job = frame_job(sc, r, stage, f);
		assert_int_equal(ops->submit(ctx, &job), 0);
	}
	assert_int_equal(ops->in_flight(ctx), before + sc->n_frames);
	reap_all(ops, ctx, sc->n_frames, 1);
	assert_int_equal(ops->in_flight(ctx), 0);
}

/*
 * The whole chunk as one job, as the pipeline copies it: the frames (`stage`, frame after
 * frame) planned with shadow__copy_plan_chunk into runs and rectangles. Returns how many
 * rectangles the plan made.
 */
static size_t copy_chunk(const struct shadow__copy_ops *ops, struct shadow__copy_ctx *ctx,
			 struct shadow__copy_region *r, const struct scenario *sc,
			 const uint8_t *stage)
{
	struct shadow_copy_run *runs = calloc(sc->n_frames * sc->max_runs, sizeof(*runs));
	struct shadow__copy_rect *rects = calloc(sc->geom.n_layers * sc->max_runs, sizeof(*rects));
	struct shadow_copy_run *scratch_runs = calloc(sc->max_runs, sizeof(*scratch_runs));
	struct shadow__copy_rect *scratch_rects = calloc(sc->max_runs, sizeof(*scratch_rects));
	assert_non_null(runs);
	assert_non_null(rects);
	assert_non_null(scratch_runs);
	assert_non_null(scratch_rects);
	struct shadow__copy_plan plan = { .runs = runs, .max_runs = sc->n_frames * sc->max_runs,
					  .rects = rects,
					  .max_rects = sc->geom.n_layers * sc->max_runs };
	assert_int_equal(shadow__copy_plan_chunk(&sc->layout, &sc->geom, chunk_blocks,
						 SHADOW_ARRAY_SIZE(chunk_blocks), sc->frame_nbytes,
						 scratch_runs, scratch_rects, sc->max_runs, &plan),
			 0);
	struct shadow__copy_job job = { .region = r, .src = stage, .runs = runs,
					.n_runs = (uint32_t)plan.n_runs, .rects = rects,
					.n_rects = (uint32_t)plan.n_rects,
					.user = (void *)(uintptr_t)500 };
	assert_int_equal(ops->submit(ctx, &job), 0);
	reap_all(ops, ctx, 1, 500);
	free(runs);
	free(rects);
	free(scratch_runs);
	free(scratch_rects);
	return plan.n_rects;
}

/* read() every frame back from the region into `dst` (frame_nbytes) and compare. */
static void read_frames(const struct shadow__copy_ops *ops, struct shadow__copy_ctx *ctx,
			struct shadow__copy_region *r, const struct scenario *sc, uint8_t *dst)
{
	for (uint32_t f = 0; f < sc->n_frames; f++) {
		memset(dst, 0xee, sc->frame_nbytes);
		assert_int_equal(ops->read(ctx, r, sc->runs + f * sc->max_runs, sc->n_runs[f], dst),
				 0);
		assert_memory_equal(dst, sc->stage + f * sc->frame_nbytes, sc->frame_nbytes);
	}
}

/* ---- host backend ------------------------------------------------------------------------ */

/* A memfd of pre + region + a page after, all FILL; the region starts at `pre`. */
static int memfd_region(uint64_t pre, uint64_t region_nbytes, uint64_t *file_nbytes_ret)
{
	uint64_t file_nbytes = pre + region_nbytes + (uint64_t)sysconf(_SC_PAGESIZE);
	int fd = memfd_create("test_copy", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)file_nbytes), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0); /* region_open insists */
	uint8_t *fill = malloc(file_nbytes);
	assert_non_null(fill);
	memset(fill, FILL, file_nbytes);
	assert_int_equal(pwrite(fd, fill, file_nbytes, 0), (ssize_t)file_nbytes);
	free(fill);
	*file_nbytes_ret = file_nbytes;
	return fd;
}

static struct shadow__region_mem host_mem(int fd, uint64_t fd_offset, uint64_t nbytes)
{
	struct shadow__region_mem mem;
	memset(&mem, 0, sizeof(mem));
	mem.kind = SHADOW__COPY_HOST;
	mem.fd = fd;
	mem.fd_offset = fd_offset;
	mem.nbytes = nbytes;
	return mem;
}

/* The host backend's result for `sc`: the region's bytes after copying every frame into a
 * fresh memfd region, into img (region_nbytes). */
static void host_copy_image(const struct scenario *sc, uint8_t *img)
{
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;
	uint64_t pre = (uint64_t)sysconf(_SC_PAGESIZE), file_nbytes;
	int fd = memfd_region(pre, sc->region_nbytes, &file_nbytes);
	struct shadow__region_mem mem = host_mem(fd, pre, sc->region_nbytes);
	struct shadow__copy_region *r = NULL;
	struct shadow__copy_ctx *ctx = NULL;

	assert_int_equal(ops->region_open(&mem, &r), 0);
	assert_int_equal(ops->ctx_create(1, &ctx), 0);
	copy_frames(ops, ctx, r, sc, sc->stage);
	ops->ctx_destroy(ctx);
	ops->region_close(r);
	assert_int_equal(pread(fd, img, sc->region_nbytes, (off_t)pre),
			 (ssize_t)sc->region_nbytes);
	close(fd);
}

static void check_host_layout(enum shadow_layout_kind kind)
{
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;
	struct scenario sc;
	scenario_init(&sc, kind);

	uint64_t pre = 2 * (uint64_t)sysconf(_SC_PAGESIZE), file_nbytes;
	int fd = memfd_region(pre, sc.region_nbytes, &file_nbytes);
	struct shadow__region_mem mem = host_mem(fd, pre, sc.region_nbytes);
	struct shadow__copy_region *r = NULL;
	struct shadow__copy_ctx *ctx = NULL;

	assert_int_equal(ops->region_open(&mem, &r), 0);
	assert_int_equal(ops->ctx_create(1, &ctx), 0);
	assert_int_equal(ops->in_flight(ctx), 0);
	copy_frames(ops, ctx, r, &sc, sc.stage);

	/* The whole file: FILL before and after the region, the expected image inside it. */
	uint8_t *want = malloc(file_nbytes), *got = malloc(file_nbytes);
	assert_non_null(want);
	assert_non_null(got);
	memset(want, FILL, file_nbytes);
	scenario_expected(&sc, want + pre);
	assert_int_equal(pread(fd, got, file_nbytes, 0), (ssize_t)file_nbytes);
	assert_memory_equal(got, want, file_nbytes);

	/* The same bytes from the whole chunk as one job of runs and rectangles (every standard
	 * layout spaces its frames evenly: one rectangle per block). */
	memset(got, FILL, file_nbytes);
	assert_int_equal(pwrite(fd, got, file_nbytes, 0), (ssize_t)file_nbytes);
	assert_int_equal(copy_chunk(ops, ctx, r, &sc, sc.stage), SHADOW_ARRAY_SIZE(chunk_blocks));
	assert_int_equal(pread(fd, got, file_nbytes, 0), (ssize_t)file_nbytes);
	assert_memory_equal(got, want, file_nbytes);

	uint8_t *dst = malloc(sc.frame_nbytes);
	assert_non_null(dst);
	read_frames(ops, ctx, r, &sc, dst);

	free(dst);
	free(want);
	free(got);
	ops->ctx_destroy(ctx);
	ops->region_close(r);
	close(fd);
	scenario_free(&sc);
}

static void test_host_layouts(void **state)
{
	(void)state;
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(all_kinds); i++)
		check_host_layout(all_kinds[i]);
}

/* A FILL'ed memfd region of R bytes opened by the host backend, and a context for it. */
struct host_region {
	int fd;
	uint64_t file_nbytes;
	struct shadow__copy_region *r;
	struct shadow__copy_ctx *ctx;
};

static void host_region_open(struct host_region *h, uint64_t R)
{
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;

	h->fd = memfd_region(0, R, &h->file_nbytes);
	struct shadow__region_mem mem = host_mem(h->fd, 0, R);
	assert_int_equal(ops->region_open(&mem, &h->r), 0);
	assert_int_equal(ops->ctx_create(1, &h->ctx), 0);
}

static void host_region_close(struct host_region *h)
{
	shadow__copy_host_ops.ctx_destroy(h->ctx);
	shadow__copy_host_ops.region_close(h->r);
	close(h->fd);
}

static void test_host_bad_runs(void **state)
{
	(void)state;
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;
	const uint64_t R = 10000;
	struct host_region h;
	uint8_t src[64];

	host_region_open(&h, R);
	memset(src, 0x11, sizeof(src));

	/* A good run then one that crosses the end: nothing at all is written. */
	struct shadow_copy_run crossing[] = { { 0, 0, 16 }, { 16, R - 4, 8 } };
	struct shadow__copy_job job = { .region = h.r, .src = src, .runs = crossing, .n_runs = 2 };
	assert_int_equal(ops->submit(h.ctx, &job), -EINVAL);
	/* dst_offset + nbytes overflows. */
	struct shadow_copy_run wrap[] = { { 0, UINT64_MAX - 2, 4 } };
	job.runs = wrap;
	job.n_runs = 1;
	assert_int_equal(ops->submit(h.ctx, &job), -EINVAL);
	/* A run starting at the end, even empty, is inside; one starting beyond is not. */
	struct shadow_copy_run beyond[] = { { 0, R + 1, 0 } };
	job.runs = beyond;
	assert_int_equal(ops->submit(h.ctx, &job), -EINVAL);
	assert_int_equal(ops->in_flight(h.ctx), 0);
	assert_int_equal(ops->read(h.ctx, h.r, crossing, 2, src), -EINVAL);
	assert_int_equal(ops->read(h.ctx, h.r, wrap, 1, src), -EINVAL);

	uint8_t *got = malloc(h.file_nbytes);
	assert_non_null(got);
	assert_int_equal(pread(h.fd, got, h.file_nbytes, 0), (ssize_t)h.file_nbytes);
	for (uint64_t i = 0; i < h.file_nbytes; i++)
		assert_int_equal(got[i], FILL);

	/* The last bytes of the region, and nothing after them. */
	struct shadow_copy_run last[] = { { 0, R - 16, 16 }, { 16, R, 0 } };
	job.runs = last;
	job.n_runs = 2;
	job.user = &job;
	assert_int_equal(ops->submit(h.ctx, &job), 0);
	reap_all(ops, h.ctx, 1, (uintptr_t)&job);
	assert_int_equal(pread(h.fd, got, h.file_nbytes, 0), (ssize_t)h.file_nbytes);
	for (uint64_t i = 0; i < h.file_nbytes; i++)
		assert_int_equal(got[i], i >= R - 16 && i < R ? 0x11 : FILL);

	free(got);
	host_region_close(&h);
}

/* Rectangles: lines at their pitches and nothing between them; a bad one refuses the job. */
static void test_host_rects(void **state)
{
	(void)state;
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;
	const uint64_t R = 10000;
	struct host_region h;
	uint8_t src[256];

	host_region_open(&h, R);
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i + 1);

	/* A good rectangle and run, then one rectangle each way wrong: nothing is written. */
	struct shadow_copy_run run = { 200, 50, 10 };
	struct shadow__copy_rect bad[] = {
		{ .src_offset = 0, .dst_offset = R - 30, .width = 8, .src_pitch = 16,
		  .dst_pitch = 16, .height = 3 },  /* its last line ends 2 bytes past R */
		{ .src_offset = 0, .dst_offset = 0, .width = 8, .src_pitch = 16, .dst_pitch = 4,
		  .height = 3 },                   /* lines overlap */
		{ .src_offset = 0, .dst_offset = 0, .width = 8, .src_pitch = 16, .dst_pitch = 16,
		  .height = 0 },
		{ .src_offset = 0, .dst_offset = 0, .width = 8, .src_pitch = 16,
		  .dst_pitch = UINT64_MAX / 2, .height = 3 }, /* wraps */
	};
	struct shadow__copy_rect rects[2] = {
		{ .src_offset = 0, .dst_offset = 1000, .width = 8, .src_pitch = 16,
		  .dst_pitch = 100, .height = 4 },
		{ 0 },
	};
	struct shadow__copy_job job = { .region = h.r, .src = src, .runs = &run, .n_runs = 1,
					.rects = rects, .n_rects = 2 };
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(bad); i++) {
		rects[1] = bad[i];
		assert_int_equal(ops->submit(h.ctx, &job), -EINVAL);
	}
	job.rects = NULL;
	assert_int_equal(ops->submit(h.ctx, &job), -EINVAL); /* n_rects without rects */
	assert_int_equal(ops->in_flight(h.ctx), 0);
	uint8_t *got = malloc(h.file_nbytes);
	assert_non_null(got);
	assert_int_equal(pread(h.fd, got, h.file_nbytes, 0), (ssize_t)h.file_nbytes);
	for (uint64_t i = 0; i < h.file_nbytes; i++)
		assert_int_equal(got[i], FILL);

	/* The good rectangle, and one whose last line ends exactly at R. */
	rects[1] = (struct shadow__copy_rect){ .src_offset = 64, .dst_offset = R - 40, .width = 8,
					       .src_pitch = 8, .dst_pitch = 16, .height = 3 };
	job.rects = rects;
	job.user = &job;
	assert_int_equal(ops->submit(h.ctx, &job), 0);
	reap_all(ops, h.ctx, 1, (uintptr_t)&job);
	assert_int_equal(pread(h.fd, got, h.file_nbytes, 0), (ssize_t)h.file_nbytes);
	for (uint64_t i = 0; i < h.file_nbytes; i++) {
		int want = FILL;
		if (i >= 50 && i < 60)
			want = src[200 + i - 50];
		for (uint64_t j = 0; j < 4; j++)
			if (i >= 1000 + j * 100 && i < 1000 + j * 100 + 8)
				want = src[j * 16 + i - (1000 + j * 100)];
		for (uint64_t j = 0; j < 3; j++)
			if (i >= R - 40 + j * 16 && i < R - 40 + j * 16 + 8)
				want = src[64 + j * 8 + i - (R - 40 + j * 16)];
		assert_int_equal(got[i], want);
	}

	free(got);
	host_region_close(&h);
}

static void test_host_full_context(void **state)
{
	(void)state;
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;
	uint64_t file_nbytes;
	int fd = memfd_region(0, 4096, &file_nbytes);
	struct shadow__region_mem mem = host_mem(fd, 0, 4096);
	struct shadow__copy_region *r;
	struct shadow__copy_ctx *ctx;
	uint8_t src[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct shadow_copy_run run = { 0, 100, 8 };
	struct shadow__copy_job job = { .src = src, .runs = &run, .n_runs = 1 };

	assert_int_equal(ops->region_open(&mem, &r), 0);
	close(fd); /* the mapping outlives the fd */
	assert_int_equal(ops->ctx_create(1, &ctx), 0);
	job.region = r;
	for (uint32_t i = 0; i < SHADOW__COPY_INFLIGHT_MAX; i++) {
		job.user = (void *)(uintptr_t)(1000 + i);
		assert_int_equal(ops->submit(ctx, &job), 0);
	}
	assert_int_equal(ops->in_flight(ctx), SHADOW__COPY_INFLIGHT_MAX);
	job.user = (void *)(uintptr_t)(1000 + SHADOW__COPY_INFLIGHT_MAX);
	assert_int_equal(ops->submit(ctx, &job), -EAGAIN);
	assert_int_equal(ops->in_flight(ctx), SHADOW__COPY_INFLIGHT_MAX);

	void *users[10];
	int statuses[10];
	assert_int_equal(ops->reap(ctx, users, statuses, 10), 10);
	for (uint32_t i = 0; i < 10; i++) {
		assert_ptr_equal(users[i], (void *)(uintptr_t)(1000 + i));
		assert_int_equal(statuses[i], 0);
	}
	assert_int_equal(ops->submit(ctx, &job), 0); /* room again */
	reap_all(ops, ctx, SHADOW__COPY_INFLIGHT_MAX + 1 - 10, 1010);
	assert_int_equal(ops->reap(ctx, users, statuses, 10), 0);
	assert_int_equal(ops->in_flight(ctx), 0);

	ops->ctx_destroy(ctx);
	ops->region_close(r);
}

static void test_host_bad_regions(void **state)
{
	(void)state;
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), file_nbytes;
	int fd = memfd_region(page, 4 * page, &file_nbytes); /* file_nbytes = 6 pages */
	struct shadow__copy_region *r = NULL;
	struct shadow__region_mem mem;

	mem = host_mem(-1, 0, page);
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem = host_mem(fd, 100, page); /* offset not page aligned */
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem = host_mem(fd, 0, 0);
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem = host_mem(fd, page, file_nbytes); /* ends beyond the file */
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem = host_mem(fd, UINT64_MAX & ~(page - 1), page); /* offset + size overflows */
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem = host_mem(fd, 0, page);
	mem.kind = SHADOW__COPY_CUDA;
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	int pipefd[2];
	assert_int_equal(pipe(pipefd), 0);
	mem = host_mem(pipefd[0], 0, page); /* a pipe has no bytes to map (nor seals) */
	assert_true(ops->region_open(&mem, &r) < 0);
	close(pipefd[0]);
	close(pipefd[1]);
	/* A file that could shrink under the mapping is refused. */
	int unsealed = memfd_create("unsealed", MFD_CLOEXEC);
	assert_true(unsealed >= 0);
	assert_int_equal(ftruncate(unsealed, (off_t)page), 0);
	mem = host_mem(unsealed, 0, page);
	assert_int_equal(ops->region_open(&mem, &r), -EPERM);
	close(unsealed);
	assert_null(r);

	/* The exact end of the file is fine. */
	mem = host_mem(fd, page, file_nbytes - page);
	assert_int_equal(ops->region_open(&mem, &r), 0);
	ops->region_close(r);
	ops->region_close(NULL);
	close(fd);
}

static void test_pool(void **state)
{
	(void)state;
	const size_t sizes[] = { 5000, (size_t)3 << 20 };
	void *mem = NULL;

	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(sizes); i++) {
		assert_int_equal(shadow__copy_pool_alloc(sizes[i], false, &mem), 0);
		memset(mem, 0x3c, sizes[i]);
		shadow__copy_pool_free(mem, sizes[i], false);
	}
	assert_int_equal(shadow__copy_pool_alloc(0, false, &mem), -EINVAL);
	shadow__copy_pool_free(NULL, 0, false);

	int n = 0;
	int gpu = shadow_gpu_probe(&n);
	int err = shadow__copy_pool_alloc(1 << 20, true, &mem);
	if (gpu == SHADOW_ENOGPU) {
		assert_int_equal(err, SHADOW_ENOGPU);
	} else {
		assert_int_equal(err, 0);
		memset(mem, 0x3c, 1 << 20);
		shadow__copy_pool_free(mem, 1 << 20, true);
	}
}

/* ---- cuda backend ------------------------------------------------------------------------ */

static struct shadow__copy_rect rect_of(uint64_t height, uint64_t width)
{
	struct shadow__copy_rect q = { .src_offset = 0, .dst_offset = 0, .width = width,
				       .src_pitch = width, .dst_pitch = 1u << 20,
				       .height = height };
	return q;
}

/* The cuda backend's cost model picks what docs/results.md ("2D copy or lines") measured
 * faster on the H100 in every run, or, where runs disagreed, the steady 2D copy; and nothing
 * it cannot issue. Needs no GPU. */
static void test_cuda_rect_choice(void **state)
{
	(void)state;
	const uint64_t KiB = 1024;
	/* Each shape, the copy threads, and the choice, with what the H100 measured (GB/s). */
	static const struct {
		uint64_t height, width;
		uint32_t peers;
		bool lines;
	} cases[] = {
		/* 12 x 32 KiB: 2D from one thread (36-37; lines 36-50 by run), lines from two or
		 * more (49-51 against 38-39); 0 peers is taken as 1. */
		{ 12, 32 * KiB, 1, false },
		{ 12, 32 * KiB, 0, false },
		{ 12, 32 * KiB, 2, true },
		{ 12, 32 * KiB, 4, true },
		{ 12, 32 * KiB, 8, true },
		/* 12 x 16 KiB from one thread: 2D (29-30; lines 17-35 by run). */
		{ 12, 16 * KiB, 1, false },
		/* 12 x 8 KiB from one thread: 2D (20-21 against 17). */
		{ 12, 8 * KiB, 1, false },
		/* 64 x 8 KiB (32 layers) from four threads: 2D (41 against 19). */
		{ 64, 8 * KiB, 4, false },
		/* 64 x 32 KiB from one and from four threads: 2D (51; lines 52-53, within the
		 * noise, so the steady 2D copy). */
		{ 64, 32 * KiB, 1, false },
		{ 64, 32 * KiB, 4, false },
		/* A few lines are cheaper as batched copies than one 2D operation; one line
		 * always is. */
		{ 2, 8 * KiB, 1, true },
		{ 4, 8 * KiB, 1, false },
		{ 4, 8 * KiB, 4, true },
		{ 1, 8 * KiB, 1, true },
	};
	struct shadow__copy_rect q;

	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(cases); i++) {
		q = rect_of(cases[i].height, cases[i].width);
		if (shadow__copy_cuda_rect_as_lines(cases[i].peers, &q) != cases[i].lines)
			fail_msg("%llu lines of %llu bytes from %u thread(s): want %s",
				 (unsigned long long)cases[i].height,
				 (unsigned long long)cases[i].width, cases[i].peers,
				 cases[i].lines ? "lines" : "one 2D copy");
	}
	/* A pitch beyond what the 2D call takes: lines, whatever the shape. */
	q = rect_of(64, 8 * KiB);
	q.dst_pitch = (uint64_t)SHADOW_GPU_PITCH_MAX + 1;
	assert_true(shadow__copy_cuda_rect_as_lines(1, &q));
	q.dst_pitch = 1u << 20;
	q.src_pitch = (uint64_t)SHADOW_GPU_PITCH_MAX + 1;
	assert_true(shadow__copy_cuda_rect_as_lines(1, &q));
}

static struct {
	uint8_t handle[SHADOW__CUDA_IPC_HANDLE_NBYTES];
	enum shadow_layout_kind kind;
	int device;
} child_args;

static void hex_encode(const uint8_t *b, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hex_decode(const char *s, uint8_t *b, size_t n)
{
	if (strlen(s) != 2 * n)
		return -1;
	for (size_t i = 0; i < 2 * n; i++) {
		char c = s[i];
		int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (v < 0)
			return -1;
		b[i / 2] = (uint8_t)(i % 2 == 0 ? v << 4 : b[i / 2] | v);
	}
	return 0;
}

/*
 * The child's whole work, in a process that did not export the handle: open the region,
 * scatter a job of more runs than one batch call takes and read it back, restore FILL, check
 * -EAGAIN and bad runs, a rectangle (2D copy) good and bad, a job of rectangles copied both
 * ways from contexts of 1 and 8 peers (unless SHADOW_CUDA_RECTS forces one way), a group of
 * jobs one of which spans batch calls, then copy the scenario's chunk from pinned memory as
 * one job of rectangles and as a job per frame, reading each back. The parent checks the
 * region's final bytes.
 */
static void test_cuda_child(void **state)
{
	(void)state;
	const struct shadow__copy_ops *ops;
	struct scenario sc;
	scenario_init(&sc, child_args.kind);
	const uint64_t R = sc.region_nbytes;

	assert_int_equal(shadow__copy_cuda_ops(&ops), 0);
	assert_string_equal(ops->name, "cuda");
	struct shadow__region_mem mem;
	memset(&mem, 0, sizeof(mem));
	mem.kind = SHADOW__COPY_CUDA;
	mem.fd = -1;
	memcpy(mem.ipc_handle, child_args.handle, sizeof(mem.ipc_handle));
	mem.device = child_args.device;
	mem.nbytes = R;

	struct shadow__copy_region *r;
	struct shadow__copy_ctx *ctx;
	assert_int_equal(ops->region_open(&mem, &r), 0);
	assert_int_equal(ops->ctx_create(1, &ctx), 0);

	/* Pinned memory: the scenario's stage images, then 3 x R of scratch. */
	size_t stage_nbytes = sc.n_frames * sc.frame_nbytes;
	size_t pool_nbytes = stage_nbytes + 3 * R;
	uint8_t *pool;
	assert_int_equal(shadow__copy_pool_alloc(pool_nbytes, true, (void **)&pool), 0);
	uint8_t *pinned_stage = pool, *a = pool + stage_nbytes, *b = a + R, *c = b + R;
	memcpy(pinned_stage, sc.stage, stage_nbytes);

	/* 1. A scatter of R / 4 four-byte runs (more than one batch call takes): piece i of `a`
	 * goes to piece (i * 7919) mod P of the region, a permutation as 7919 is prime and
	 * does not divide P. */
	uint32_t P = (uint32_t)(R / 4);
	assert_true(P > 4096 && P % 7919 != 0);
	struct shadow_copy_run *scatter = calloc(P, sizeof(*scatter));
	assert_non_null(scatter);
	for (uint32_t i = 0; i < P; i++) {
		scatter[i].src_offset = 4ull * i;
		scatter[i].dst_offset = 4ull * (uint32_t)(((uint64_t)i * 7919u) % P);
		scatter[i].nbytes = 4;
	}
	for (uint64_t i = 0; i < R; i++)
		a[i] = (uint8_t)(i * 2654435761u >> 11);
	struct shadow__copy_job job = { .region = r, .src = a, .runs = scatter, .n_runs = P,
					.user = (void *)(uintptr_t)77 };
	assert_int_equal(ops->submit(ctx, &job), 0);
	reap_all(ops, ctx, 1, 77);
	memset(b, 0, R);
	assert_int_equal(ops->read(ctx, r, scatter, P, b), 0); /* gathers it back */
	assert_memory_equal(a, b, 4ull * P);
	struct shadow_copy_run whole = { 0, 0, R };
	assert_int_equal(ops->read(ctx, r, &whole, 1, b), 0);
	for (uint32_t i = 0; i < P; i++)
		assert_memory_equal(b + scatter[i].dst_offset, a + scatter[i].src_offset, 4);
	free(scatter);

	/* 2. Back to FILL, as the parent left it; -EAGAIN when full; bad runs. */
	memset(a, FILL, R);
	job.src = a;
	job.runs = &whole;
	job.n_runs = 1;
	for (uint32_t i = 0; i < SHADOW__COPY_INFLIGHT_MAX; i++) {
		job.user = (void *)(uintptr_t)(1000 + i);
		assert_int_equal(ops->submit(ctx, &job), 0);
	}
	assert_int_equal(ops->submit(ctx, &job), -EAGAIN);
	assert_int_equal(ops->in_flight(ctx), SHADOW__COPY_INFLIGHT_MAX);
	reap_all(ops, ctx, SHADOW__COPY_INFLIGHT_MAX, 1000);
	struct shadow_copy_run crossing[] = { { 0, 0, 16 }, { 16, R - 4, 8 } };
	job.runs = crossing;
	job.n_runs = 2;
	assert_int_equal(ops->submit(ctx, &job), -EINVAL);
	assert_int_equal(ops->read(ctx, r, crossing, 2, b), -EINVAL);
	assert_int_equal(ops->in_flight(ctx), 0);
	assert_int_equal(ops->read(ctx, r, &whole, 1, b), 0);
	for (uint64_t i = 0; i < R; i++)
		assert_int_equal(b[i], FILL);

	/* 3. Rectangles: a malformed one and one past the end refuse the job; a good one
	 * lands line by line (read back as runs). */
	struct shadow__copy_rect rect = { .src_offset = 0, .dst_offset = 8, .width = 24,
					  .src_pitch = 40, .dst_pitch = 56, .height = 5 };
	struct shadow__copy_job rjob = { .region = r, .src = a, .rects = &rect, .n_rects = 1,
					 .user = (void *)(uintptr_t)88 };
	rect.dst_pitch = 23;
	assert_int_equal(ops->submit(ctx, &rjob), -EINVAL);
	rect.dst_pitch = 56;
	rect.dst_offset = R - 4 * 56 - 23;
	assert_int_equal(ops->submit(ctx, &rjob), -EINVAL);
	rect.dst_offset = 8;
	for (uint64_t i = 0; i < R; i++)
		a[i] = (uint8_t)(i * 40503u >> 7);
	assert_int_equal(ops->submit(ctx, &rjob), 0);
	reap_all(ops, ctx, 1, 88);
	assert_int_equal(ops->read(ctx, r, &whole, 1, b), 0);
	for (uint64_t i = 0; i < 8 + 5 * 56; i++) {
		uint64_t j = (i - 8) / 56, k = (i - 8) % 56;
		uint8_t want = i >= 8 && k < 24 ? a[j * 40 + k] : FILL;
		assert_int_equal(b[i], want);
	}
	memset(a, FILL, R);
	job.src = a;
	job.runs = &whole;
	job.n_runs = 1;
	job.user = (void *)(uintptr_t)89;
	assert_int_equal(ops->submit(ctx, &job), 0);
	reap_all(ops, ctx, 1, 89);

	/* 3b. One job of rectangles the backend copies different ways (one line: a batched
	 * copy; 64 narrow lines: one 2D copy; 4 lines: one 2D copy from a lone copy thread,
	 * batched lines from eight) and a run, from a context of 1 and one of 8 peers: the same
	 * bytes either way, then back to FILL. */
	const struct shadow__copy_rect mixed[] = {
		{ .src_offset = 0, .dst_offset = 300, .width = 700, .src_pitch = 700,
		  .dst_pitch = 700, .height = 1 },
		{ .src_offset = 1000, .dst_offset = 2000, .width = 8, .src_pitch = 12,
		  .dst_pitch = 16, .height = 64 },
		{ .src_offset = 2000, .dst_offset = 4000, .width = 40, .src_pitch = 40,
		  .dst_pitch = 100, .height = 4 },
	};
	const struct shadow_copy_run mixed_run = { .src_offset = 3000, .dst_offset = 5000,
						   .nbytes = 333 };
	uint8_t *want = malloc(R);
	assert_non_null(want);
	for (uint64_t i = 0; i < R; i++)
		c[i] = (uint8_t)(i * 2246822519u >> 13);
	memset(want, FILL, R);
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(mixed); i++) {
		for (uint64_t j = 0; j < mixed[i].height; j++)
			memcpy(want + mixed[i].dst_offset + j * mixed[i].dst_pitch,
			       c + mixed[i].src_offset + j * mixed[i].src_pitch, mixed[i].width);
	}
	memcpy(want + mixed_run.dst_offset, c + mixed_run.src_offset, mixed_run.nbytes);
	struct shadow__copy_ctx *ctx8;
	assert_int_equal(ops->ctx_create(8, &ctx8), 0);
	struct shadow__copy_ctx *const both[] = { ctx, ctx8 };
	for (size_t k = 0; k < SHADOW_ARRAY_SIZE(both); k++) {
		struct shadow__copy_job mjob = { .region = r, .src = c, .rects = mixed,
						 .n_rects = SHADOW_ARRAY_SIZE(mixed),
						 .runs = &mixed_run, .n_runs = 1,
						 .user = (void *)(uintptr_t)91 };
		assert_int_equal(ops->submit(both[k], &mjob), 0);
		reap_all(ops, both[k], 1, 91);
		assert_int_equal(ops->read(both[k], r, &whole, 1, b), 0);
		assert_memory_equal(b, want, R);
		job.user = (void *)(uintptr_t)92;
		assert_int_equal(ops->submit(both[k], &job), 0);
		reap_all(ops, both[k], 1, 92);
	}
	ops->ctx_destroy(ctx8);

	/* 3c. One group of three jobs, flushed once: one of more copies than a batch call takes
	 * (issued in part on the way), then a run, then a 2D copy; every job's bytes land. */
	struct shadow_copy_run many[200];
	for (uint32_t i = 0; i < SHADOW_ARRAY_SIZE(many); i++)
		many[i] = (struct shadow_copy_run){ .src_offset = 4u * i, .dst_offset = 8u * i,
						    .nbytes = 4 };
	const struct shadow_copy_run one = { .src_offset = 2000, .dst_offset = 4000,
					     .nbytes = 100 };
	struct shadow__copy_job group[] = {
		{ .region = r, .src = c, .runs = many, .n_runs = SHADOW_ARRAY_SIZE(many),
		  .user = (void *)(uintptr_t)93 },
		{ .region = r, .src = c, .runs = &one, .n_runs = 1, .user = (void *)(uintptr_t)94 },
		{ .region = r, .src = c, .rects = &mixed[1], .n_rects = 1,
		  .user = (void *)(uintptr_t)95 },
	};
	memset(want, FILL, R);
	for (uint32_t i = 0; i < SHADOW_ARRAY_SIZE(many); i++)
		memcpy(want + many[i].dst_offset, c + many[i].src_offset, many[i].nbytes);
	memcpy(want + one.dst_offset, c + one.src_offset, one.nbytes);
	for (uint64_t j = 0; j < mixed[1].height; j++)
		memcpy(want + mixed[1].dst_offset + j * mixed[1].dst_pitch,
		       c + mixed[1].src_offset + j * mixed[1].src_pitch, mixed[1].width);
	for (size_t k = 0; k < SHADOW_ARRAY_SIZE(group); k++)
		assert_int_equal(ops->submit(ctx, &group[k]), 0);
	reap_all(ops, ctx, SHADOW_ARRAY_SIZE(group), 93);
	assert_int_equal(ops->read(ctx, r, &whole, 1, b), 0);
	assert_memory_equal(b, want, R);
	job.user = (void *)(uintptr_t)96;
	assert_int_equal(ops->submit(ctx, &job), 0);
	reap_all(ops, ctx, 1, 96);
	free(want);

	/* 4. The whole chunk as one job of runs and rectangles, as the pipeline copies it; then
	 * back to FILL and every frame as a job of its own, as before; each gathered back. */
	assert_int_equal(copy_chunk(ops, ctx, r, &sc, pinned_stage),
			 SHADOW_ARRAY_SIZE(chunk_blocks));
	read_frames(ops, ctx, r, &sc, b);
	job.user = (void *)(uintptr_t)90;
	assert_int_equal(ops->submit(ctx, &job), 0);
	reap_all(ops, ctx, 1, 90);
	copy_frames(ops, ctx, r, &sc, pinned_stage);
	read_frames(ops, ctx, r, &sc, b);

	shadow__copy_pool_free(pool, pool_nbytes, true);
	ops->ctx_destroy(ctx);
	ops->region_close(r);
	scenario_free(&sc);
}

/*
 * A rectangle whose region-side pitch the 2D call does not take (SHADOW_GPU_PITCH_MAX: layers
 * more than 2 GiB apart), which the backend copies as its lines: two lines of WIDE_WIDTH
 * bytes, WIDE_PITCH apart, in a region of WIDE_REGION bytes.
 */
#define WIDE_PITCH ((uint64_t)SHADOW_GPU_PITCH_MAX + 1u + 4096u)
#define WIDE_REGION (WIDE_PITCH + 8192u)
#define WIDE_OFFSET 1000u
#define WIDE_WIDTH 3000u

static uint8_t wide_byte(uint64_t i)
{
	return (uint8_t)(i * 167u + 13u);
}

static void test_cuda_wide_pitch_child(void **state)
{
	(void)state;
	const struct shadow__copy_ops *ops;
	struct shadow__copy_region *r;
	struct shadow__copy_ctx *ctx;
	struct shadow__region_mem mem;
	uint8_t *src;

	assert_int_equal(shadow__copy_cuda_ops(&ops), 0);
	memset(&mem, 0, sizeof(mem));
	mem.kind = SHADOW__COPY_CUDA;
	mem.fd = -1;
	memcpy(mem.ipc_handle, child_args.handle, sizeof(mem.ipc_handle));
	mem.device = child_args.device;
	mem.nbytes = WIDE_REGION;
	assert_int_equal(ops->region_open(&mem, &r), 0);
	assert_int_equal(ops->ctx_create(1, &ctx), 0);
	assert_int_equal(shadow__copy_pool_alloc(4 * WIDE_WIDTH, true, (void **)&src), 0);
	for (uint64_t i = 0; i < 2 * WIDE_WIDTH; i++)
		src[i] = wide_byte(i);
	const struct shadow__copy_rect rect = { .src_offset = 0, .dst_offset = WIDE_OFFSET,
						.width = WIDE_WIDTH, .src_pitch = WIDE_WIDTH,
						.dst_pitch = WIDE_PITCH, .height = 2 };
	struct shadow__copy_job job = { .region = r, .src = src, .rects = &rect, .n_rects = 1,
					.user = (void *)(uintptr_t)7 };
	assert_int_equal(ops->submit(ctx, &job), 0);
	reap_all(ops, ctx, 1, 7);
	/* Gathered back as runs into the other half of the buffer. */
	const struct shadow_copy_run back[] = {
		{ .src_offset = 0, .dst_offset = WIDE_OFFSET, .nbytes = WIDE_WIDTH },
		{ .src_offset = WIDE_WIDTH, .dst_offset = WIDE_OFFSET + WIDE_PITCH,
		  .nbytes = WIDE_WIDTH },
	};
	assert_int_equal(ops->read(ctx, r, back, 2, src + 2 * WIDE_WIDTH), 0);
	assert_memory_equal(src + 2 * WIDE_WIDTH, src, 2 * WIDE_WIDTH);
	shadow__copy_pool_free(src, 4 * WIDE_WIDTH, true);
	ops->ctx_destroy(ctx);
	ops->region_close(r);
}

static int child_main(int argc, char **argv)
{
	if (argc != 5 || hex_decode(argv[2], child_args.handle, sizeof(child_args.handle)) != 0) {
		fprintf(stderr, "usage: %s --cuda-child HANDLE_HEX LAYOUT_KIND|wide DEVICE\n",
			argv[0]);
		return 2;
	}
	bool wide = strcmp(argv[3], "wide") == 0;
	child_args.kind = (enum shadow_layout_kind)atoi(argv[3]);
	child_args.device = atoi(argv[4]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cuda_child),
	};
	const struct CMUnitTest wide_tests[] = {
		cmocka_unit_test(test_cuda_wide_pitch_child),
	};
	if (wide)
		return cmocka_run_group_tests_name("copy_cuda_wide_child", wide_tests, NULL,
						   NULL) != 0;
	return cmocka_run_group_tests_name("copy_cuda_child", tests, NULL, NULL) != 0;
}

/* Spawn `self --cuda-child ...` and wait for it; its exit status, or -1. kind 0: the wide
 * pitch test. */
static int spawn_child(const uint8_t *handle, enum shadow_layout_kind kind, int device)
{
	char hex[2 * SHADOW__CUDA_IPC_HANDLE_NBYTES + 1], kind_s[16], dev_s[16];
	char self[] = "/proc/self/exe", flag[] = "--cuda-child";
	char *argv[] = { self, flag, hex, kind_s, dev_s, NULL };
	pid_t pid;
	int status = 0;

	hex_encode(handle, SHADOW__CUDA_IPC_HANDLE_NBYTES, hex);
	if (kind == 0)
		snprintf(kind_s, sizeof(kind_s), "wide");
	else
		snprintf(kind_s, sizeof(kind_s), "%d", (int)kind);
	snprintf(dev_s, sizeof(dev_s), "%d", device);
	fflush(stdout);
	if (posix_spawn(&pid, self, NULL, NULL, argv, environ) != 0)
		return -1;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static void check_cuda_layout(const struct shadow__gpu_ops *gpu, enum shadow_layout_kind kind)
{
	struct scenario sc;
	scenario_init(&sc, kind);
	const uint64_t R = sc.region_nbytes;
	uint8_t *host = malloc(R), *want = malloc(R);
	uint8_t handle[SHADOW__CUDA_IPC_HANDLE_NBYTES];
	void *dev;

	assert_non_null(host);
	assert_non_null(want);
	assert_int_equal(gpu->dev_alloc(&dev, R), 0);
	memset(host, FILL, R);
	assert_int_equal(gpu->memcpy_sync(dev, host, R, SHADOW_GPU_H2D), 0);
	assert_int_equal(gpu->ipc_export(dev, handle), 0);

	assert_int_equal(spawn_child(handle, kind, 0), 0);

	memset(host, 0, R);
	assert_int_equal(gpu->memcpy_sync(host, dev, R, SHADOW_GPU_D2H), 0);
	scenario_expected(&sc, want);
	assert_memory_equal(host, want, R);
	/* The same plan through the host backend gives the same bytes. */
	host_copy_image(&sc, want);
	assert_memory_equal(host, want, R);

	assert_int_equal(gpu->dev_free(dev), 0);
	free(host);
	free(want);
	scenario_free(&sc);
}

static void test_cuda_layouts(void **state)
{
	(void)state;
	const struct shadow__gpu_ops *gpu;
	assert_int_equal(shadow__gpu_ops(&gpu), 0);
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(all_kinds); i++)
		check_cuda_layout(gpu, all_kinds[i]);
}

/* The wide-pitch rectangle into a region of WIDE_REGION bytes (2 GiB and a few pages) that
 * this process owns: the child copies and reads back; here the bytes around the two lines
 * are checked to be untouched. */
static void test_cuda_wide_pitch(void **state)
{
	(void)state;
	const struct shadow__gpu_ops *gpu;
	uint8_t handle[SHADOW__CUDA_IPC_HANDLE_NBYTES];
	static uint8_t host[8192], want[8192];
	uint8_t *dev;

	assert_int_equal(shadow__gpu_ops(&gpu), 0);
	assert_int_equal(gpu->dev_alloc((void **)&dev, WIDE_REGION), 0);
	/* Only the pages around the two lines are looked at: they start FILL. */
	memset(host, FILL, sizeof(host));
	assert_int_equal(gpu->memcpy_sync(dev, host, sizeof(host), SHADOW_GPU_H2D), 0);
	assert_int_equal(gpu->memcpy_sync(dev + WIDE_PITCH, host, sizeof(host), SHADOW_GPU_H2D),
			 0);
	assert_int_equal(gpu->ipc_export(dev, handle), 0);

	assert_int_equal(spawn_child(handle, 0, 0), 0);

	for (uint32_t line = 0; line < 2; line++) {
		memset(want, FILL, sizeof(want));
		for (uint32_t i = 0; i < WIDE_WIDTH; i++)
			want[WIDE_OFFSET + i] = wide_byte((uint64_t)line * WIDE_WIDTH + i);
		assert_int_equal(gpu->memcpy_sync(host, dev + line * WIDE_PITCH, sizeof(host),
						  SHADOW_GPU_D2H),
				 0);
		assert_memory_equal(host, want, sizeof(host));
	}
	assert_int_equal(gpu->dev_free(dev), 0);
}

/* What can be checked in the exporting process: bad descriptions, and CUDA's own refusal. */
static void test_cuda_bad_regions(void **state)
{
	(void)state;
	const struct shadow__copy_ops *ops;
	const struct shadow__gpu_ops *gpu;
	struct shadow__copy_region *r = NULL;
	struct shadow__copy_ctx *ctx = NULL;
	struct shadow__region_mem mem;
	int n_devices = 0;

	assert_int_equal(shadow__copy_cuda_ops(&ops), 0);
	assert_int_equal(shadow__gpu_ops(&gpu), 0);
	assert_int_equal(gpu->device_count(&n_devices), 0);
	memset(&mem, 0, sizeof(mem));
	mem.kind = SHADOW__COPY_CUDA;
	mem.nbytes = 4096;
	mem.device = n_devices; /* no such device */
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem.device = -1;
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem.device = 0;
	mem.nbytes = 0;
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);
	mem.nbytes = 4096;
	mem.kind = SHADOW__COPY_HOST;
	assert_int_equal(ops->region_open(&mem, &r), -EINVAL);

	/* A handle exported here cannot be opened here. */
	void *dev;
	assert_int_equal(gpu->dev_alloc(&dev, 4096), 0);
	mem.kind = SHADOW__COPY_CUDA;
	assert_int_equal(gpu->ipc_export(dev, mem.ipc_handle), 0);
	assert_true(ops->region_open(&mem, &r) < 0);
	assert_null(r);
	assert_int_equal(gpu->dev_free(dev), 0);

	assert_int_equal(ops->ctx_create(1, &ctx), 0);
	assert_int_equal(ops->in_flight(ctx), 0);
	ops->ctx_destroy(ctx);
	ops->region_close(NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--cuda-child") == 0)
		return child_main(argc, argv);

	const struct CMUnitTest host[] = {
		cmocka_unit_test(test_host_layouts),
		cmocka_unit_test(test_host_bad_runs),
		cmocka_unit_test(test_host_rects),
		cmocka_unit_test(test_host_full_context),
		cmocka_unit_test(test_host_bad_regions),
		cmocka_unit_test(test_pool),
		cmocka_unit_test(test_cuda_rect_choice),
	};
	if (cmocka_run_group_tests_name("copy_host", host, NULL, NULL) != 0)
		return 1;

	const struct shadow__copy_ops *ops;
	int err = shadow__copy_cuda_ops(&ops);
	if (err == SHADOW_ENOGPU) {
		printf("SKIP: cuda copy backend: no CUDA module or no GPU here (%s)\n",
		       shadow_strerror(err));
		return 0; /* the host part ran */
	}
	assert_int_equal(err, 0);
	const struct CMUnitTest cuda[] = {
		cmocka_unit_test(test_cuda_bad_regions),
		cmocka_unit_test(test_cuda_layouts),
		cmocka_unit_test(test_cuda_wide_pitch),
	};
	return cmocka_run_group_tests_name("copy_cuda", cuda, NULL, NULL) != 0;
}
