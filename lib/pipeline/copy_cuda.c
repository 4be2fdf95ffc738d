/*
 * copy_cuda.c - the cuda copy backend (copy.h): the region is GPU memory a client exported
 * with a CUDA IPC handle; a job is one batched host-to-device copy of its runs (and of the
 * lines of some rectangles) and one 2D copy per other rectangle from pinned staging memory,
 * issued on one of the context's streams and finished when an event recorded after it has
 * fired. Everything CUDA goes through the
 * dlopen()ed module's ops (gpu/gpu.h): no CUDA header here, and never a kernel.
 *
 * DESIGN
 *
 * Regions. region_open opens the handle on the region's device (ipc_open) and keeps the
 * device pointer, the size and the device. Where the driver reports the allocation's size, a
 * region larger than it is refused (-EINVAL): a client's wrong size must not make the copy
 * engine fault, which would poison this process's CUDA context for every client.
 *
 * Contexts. A context belongs to one thread and holds, per device it has copied to (a lane,
 * created at the first job for that device), CUDA_COPY_STREAMS non-blocking streams used
 * round-robin and one event per in-flight slot; and one ring of SHADOW__COPY_INFLIGHT_MAX job
 * slots shared by all lanes:
 *
 *	jobs[]:  | reaped ... | head: oldest in flight ... | tail: next free ... |
 *	            slot i  -> (user, event = lanes[device].events[i])
 *
 * submit() checks every run and rectangle against the region (all or nothing), makes the
 * region's device current (cached: the context assumes nobody else changes its thread's
 * device), issues the rectangles it copies in 2D at once (on the stream the group's flush
 * will use) and appends the runs, and the lines of the other rectangles, to the context's
 * dst/src/size arrays; flush() issues the copies still queued with one memcpy_h2d_batch call
 * (cudaMemcpyBatchAsync) and records one event after it, which every job of that group waits
 * on. The caller flushes after each burst of submits; submit flushes by itself when the
 * arrays would overflow or the device changes. The arrays are read during the call only, so
 * one set per context serves every group; a job with more than CUDA_COPY_BATCH_MAX batched
 * copies starts a group and issues full calls on its stream as it fills them, never refused.
 * Zero-byte runs are skipped. The copies of a batch run in no set order, so of two runs that
 * overlap in the region (a block id repeated in a block table) either may win, where the host
 * backend leaves the later one. reap() queries events oldest first and stops at the first
 * unfinished one, so completions come back in submission order even though the streams may
 * finish out of order. Nothing is allocated per job once a lane and its
 * events exist: events are created at the first use of each (device, slot).
 *
 * Rectangles. A rectangle (the same block of consecutive frames) can go as one 2D copy or as
 * its `height` lines, each a batched copy; which is cheaper depends on what binds. A 2D copy
 * costs the issuing thread 2-3 us whatever its height, and the copy engine about
 * CUDA_2D_OP_NS beyond its bytes (2D copies from several threads do not add up: the engine
 * is the limit); a batched copy costs the engine only its bytes and the issuing thread
 * 0.5-1 us, and more copy threads issue more of them (with diminishing returns). So, for h
 * lines of w bytes and a line time t = w / CUDA_H2D_BYTES_PER_NS:
 *
 *	as one 2D copy   CUDA_2D_OP_NS + h * t            (engine-bound)
 *	as h lines       h * max(t, line_issue_ns(peers))  (issue- or engine-bound)
 *
 * and lines are taken only when they cost a quarter less than the 2D copy
 * (CUDA_LINES_MARGIN): a 2D copy's time is steady, a line's is not. Measured both ways on the
 * H100 host (bench_pipeline's copy term, docs/results.md "2D copy or lines"), 2D copies moved
 * the same GB/s run after run (within 2%), while batched lines, bound by the issuing thread
 * on a shared guest, moved 1.5-2x more in one run than in another (12 lines of 16 KiB from one
 * thread: 35 GB/s in one run, 18 in the next, against 29-30 as 2D copies). So
 * cuda_line_issue_ns holds a thread's slow cost, not its best (the ~1 us per copy that
 * copy_lab measures too). What goes as lines then: wide lines from two or more copy threads
 * (12 lines of 32 KiB: 49-51 GB/s from two or four threads against 38-39 as 2D copies), and
 * rectangles of a few lines (up to 2 from one thread, 4 from four), whose one 2D operation
 * costs more than their batched copies; the rest, the tall rectangles of deep models and the
 * narrow lines of small blocks, goes as 2D copies.
 * Another host moves the crossings, not what is copied. The environment variable
 * SHADOW_CUDA_RECTS=2d or =lines, read when a context is made, sends every rectangle one way
 * (a pitch beyond SHADOW_GPU_PITCH_MAX still goes as lines), to measure the model's choice
 * against both.
 *
 * If issuing fails half-way, submit() waits for the stream before returning the error, so
 * that the caller may reuse the job's source memory at once. A copy that fails on the device
 * is reported at reap() with SHADOW_ECUDA.
 *
 * The source memory must be pinned (shadow__copy_pool_alloc(pinned=true)): that is the
 * caller's duty; from pageable memory CUDA copies synchronously and at a fraction of the
 * rate (6 GB/s against 48 GB/s on the H100 host).
 *
 * read() (the save path) gathers runs from the region with memcpy_d2h_batch on the lane's
 * first stream, after any job still running there, and waits for that stream.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "gpu/gpu.h"
#include "pipeline/copy.h"

/* Streams per device; jobs alternate between them. One: on the H100 host, 8 KiB runs scattered
 * over a paged region copied at 4.6-6.7 GB/s from one stream against 2.8-3.5 GB/s from two
 * (and 2.9-3.7 from four or eight), while large runs reach 83-98% of pinned H2D either way
 * (docs/results.md, "Data-plane pipeline"): one thread issuing to two streams pays more per
 * copy. More issuing threads, each with its own context and stream (the pipeline's
 * copy_threads), do add up: 8.4 GB/s of 8 KiB runs from one, 13.9 from two, 17.7 from four
 * (bench/research/copy_lab.cu). -DCUDA_COPY_STREAMS=N builds another count. */
#ifndef CUDA_COPY_STREAMS
#define CUDA_COPY_STREAMS 1u
#endif
/* Copies per batch call; a group of jobs flushes when the next would pass it, and a job with
 * more copies starts a group and issues full calls as it fills them. The driver spends about
 * 1 us of the issuing thread per copy, and the copy engine seems to start on a call's copies
 * only once the call has returned: on the H100 host calls of 32-256 scattered copies moved
 * 8 KiB blocks at 8.1-8.4 GB/s, 32 KiB at 33-34 and 128 KiB at 52-53, against 7.0, 26 and
 * 39 GB/s in calls of 4096 (bench/research/copy_lab.cu, docs/results.md). Each group also
 * gets its own event, so its source memory comes back sooner. */
#define CUDA_COPY_BATCH_MAX 128u
#define CUDA_COPY_DEVICES_MAX 16u /* device ordinals a context can copy to */

/* The cost model that sends a rectangle as one 2D copy or as its lines (DESIGN, "Rectangles"),
 * fitted to the H100 host (bench_pipeline's copy term, docs/results.md "2D copy or lines"): */
#define CUDA_2D_OP_NS 2500u        /* copy engine time per 2D operation beyond its bytes */
#define CUDA_H2D_BYTES_PER_NS 48u  /* what the lines of a 2D copy move at, bytes per ns */
#define CUDA_LINES_MARGIN 4u       /* lines must cost at most 1 - 1/4 of the 2D copy */
/* Time per batched copy of a small line, all issuing threads together, by their number, as
 * it is when the issuing CPUs are slow (DESIGN): copy_lab's 8 KiB copies from 1, 2 and 4
 * threads, 8.4, 13.9 and 17.7 GB/s; in good runs of the copy term a chunk job's lines cost
 * half that. More than four threads add nothing measurable. */
static const uint64_t cuda_line_issue_ns[] = { 980, 590, 520, 460 };

SHADOW_STATIC_ASSERT(SHADOW__CUDA_IPC_HANDLE_NBYTES == SHADOW_GPU_IPC_HANDLE_NBYTES,
		     "copy.h and gpu.h disagree on the size of an IPC handle");
SHADOW_STATIC_ASSERT((SHADOW__COPY_INFLIGHT_MAX & (SHADOW__COPY_INFLIGHT_MAX - 1)) == 0,
		     "SHADOW__COPY_INFLIGHT_MAX must be a power of two (ring index mask)");

struct shadow__copy_region {
	void *alloc;     /* the opened allocation (what ipc_close takes) */
	uint8_t *base;   /* region byte 0: alloc + ipc_offset */
	uint64_t nbytes; /* the region's size as described */
	int device;
};

/* One device's streams and events in a context; created at the first job for the device. */
struct cuda_lane {
	bool ready;
	uint32_t next_stream;
	void *streams[CUDA_COPY_STREAMS];
	void *events[SHADOW__COPY_INFLIGHT_MAX]; /* by job slot; NULL until first used */
};

/* How a context copies rectangles. */
enum cuda_rects {
	CUDA_RECTS_MODEL, /* each by the cost model (shadow__copy_cuda_rect_as_lines) */
	CUDA_RECTS_2D,    /* each as one 2D copy, where its pitches allow */
	CUDA_RECTS_LINES, /* each as its lines */
};

struct cuda_job {
	void *user;
	void *event; /* recorded after the job's copies (its group's); NULL while queued */
	int err;     /* set when issuing its group failed: reap reports it without a query */
};

struct shadow__copy_ctx {
	const struct shadow__gpu_ops *gpu;
	int cur_device;  /* the device this context last made current; -1: none yet */
	uint32_t head;   /* oldest job in flight; free-running, & (INFLIGHT_MAX - 1) */
	uint32_t tail;   /* next free slot */
	struct cuda_job jobs[SHADOW__COPY_INFLIGHT_MAX];
	struct cuda_lane lanes[CUDA_COPY_DEVICES_MAX];
	/* Arguments of one batch call (read by the call only), filled by the jobs queued since
	 * the last flush: pending_n entries, for jobs [pending_first, tail), all to one device. */
	void *dsts[CUDA_COPY_BATCH_MAX];
	const void *srcs[CUDA_COPY_BATCH_MAX];
	size_t sizes[CUDA_COPY_BATCH_MAX];
	uint32_t pending_n;
	uint32_t pending_first;
	struct cuda_lane *pending_lane;
	uint32_t peers;         /* ctx_create's: threads issuing copies like this one */
	enum cuda_rects rects;  /* how rectangles go (SHADOW_CUDA_RECTS) */
};

static int cuda_region_open(const struct shadow__region_mem *mem,
			    struct shadow__copy_region **r_ret)
{
	const struct shadow__gpu_ops *gpu;
	struct shadow__copy_region *r;
	size_t alloc_nbytes = 0;
	void *base = NULL;
	int n_devices = 0;
	int err;

	if (mem == NULL || r_ret == NULL)
		return -EINVAL;
	err = shadow__gpu_ops(&gpu);
	if (err != 0) {
		SHADOW_LOGE("cuda region: %s", shadow_strerror(err));
		return err;
	}
	err = gpu->device_count(&n_devices);
	if (err != 0)
		return err;
	if (mem->kind != SHADOW__COPY_CUDA || mem->nbytes == 0 || mem->nbytes > SIZE_MAX ||
	    mem->device < 0 || mem->device >= n_devices ||
	    (uint32_t)mem->device >= CUDA_COPY_DEVICES_MAX) {
		SHADOW_LOGE("cuda region: bad description (device %d of %d, %llu bytes)",
			    (int)mem->device, n_devices, (unsigned long long)mem->nbytes);
		return -EINVAL;
	}
	err = gpu->ipc_open(mem->ipc_handle, mem->device, &base, &alloc_nbytes);
	if (err != 0)
		return err; /* logged by the module */
	uint64_t end;
	if (!shadow_add_u64(mem->ipc_offset, mem->nbytes, &end) ||
	    (alloc_nbytes != 0 && end > alloc_nbytes)) {
		SHADOW_LOGE("cuda region: %llu bytes at offset %llu described, the exported "
			    "allocation holds %zu", (unsigned long long)mem->nbytes,
			    (unsigned long long)mem->ipc_offset, alloc_nbytes);
		err = -EINVAL;
		goto close_ipc;
	}
	r = malloc(sizeof(*r));
	if (r == NULL) {
		SHADOW_LOGE("cuda region: out of memory");
		err = -ENOMEM;
		goto close_ipc;
	}
	r->alloc = base;
	r->base = (uint8_t *)base + mem->ipc_offset;
	r->nbytes = mem->nbytes;
	r->device = mem->device;
	*r_ret = r;
	return 0;

close_ipc:
	(void)gpu->ipc_close(base);
	return err;
}

static void cuda_region_close(struct shadow__copy_region *r)
{
	const struct shadow__gpu_ops *gpu;

	if (r == NULL)
		return;
	/* The region was opened through the module, so the module is loaded. */
	if (shadow__gpu_ops(&gpu) == 0)
		(void)gpu->ipc_close(r->alloc); /* a failure is logged by the module */
	free(r);
}

/* SHADOW_CUDA_RECTS: unset or "model", the cost model; "2d" or "lines" to measure one way
 * against the other (bench_pipeline's copy term). */
static enum cuda_rects cuda_rects_from_env(void)
{
	const char *e = getenv("SHADOW_CUDA_RECTS");

	if (e == NULL || strcmp(e, "model") == 0)
		return CUDA_RECTS_MODEL;
	if (strcmp(e, "2d") == 0)
		return CUDA_RECTS_2D;
	if (strcmp(e, "lines") == 0)
		return CUDA_RECTS_LINES;
	SHADOW_LOGW("SHADOW_CUDA_RECTS=%s: want model, 2d or lines; using the model", e);
	return CUDA_RECTS_MODEL;
}

static int cuda_ctx_create(uint32_t peers, struct shadow__copy_ctx **ctx_ret)
{
	const struct shadow__gpu_ops *gpu;
	struct shadow__copy_ctx *ctx;
	int err;

	err = shadow__gpu_ops(&gpu);
	if (err != 0) {
		SHADOW_LOGE("cuda copy context: %s", shadow_strerror(err));
		return err;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL) {
		SHADOW_LOGE("cuda copy context: out of memory");
		return -ENOMEM;
	}
	ctx->gpu = gpu;
	ctx->cur_device = -1;
	ctx->peers = peers;
	ctx->rects = cuda_rects_from_env();
	*ctx_ret = ctx;
	return 0;
}

static int cuda_use_device(struct shadow__copy_ctx *ctx, int device)
{
	if (ctx->cur_device == device)
		return 0;
	int err = ctx->gpu->device_set(device);
	if (err != 0)
		return err;
	ctx->cur_device = device;
	return 0;
}

static void cuda_lane_destroy(struct shadow__copy_ctx *ctx, struct cuda_lane *lane)
{
	const struct shadow__gpu_ops *gpu = ctx->gpu;

	/* Waits for every job still in flight on the lane: their slots must not be reused. */
	for (uint32_t i = 0; i < CUDA_COPY_STREAMS; i++) {
		if (lane->streams[i] != NULL) {
			(void)gpu->stream_sync(lane->streams[i]);
			(void)gpu->stream_destroy(lane->streams[i]);
		}
	}
	for (uint32_t i = 0; i < SHADOW__COPY_INFLIGHT_MAX; i++) {
		if (lane->events[i] != NULL)
			(void)gpu->event_destroy(lane->events[i]);
	}
	memset(lane, 0, sizeof(*lane));
}

/* The lane of `device`, created (streams) on first use; the device is current on return. */
static int cuda_lane_get(struct shadow__copy_ctx *ctx, int device, struct cuda_lane **lane_ret)
{
	struct cuda_lane *lane = &ctx->lanes[device];
	int err;

	err = cuda_use_device(ctx, device);
	if (err != 0)
		return err;
	if (!lane->ready) {
		for (uint32_t i = 0; i < CUDA_COPY_STREAMS; i++) {
			err = ctx->gpu->stream_create(&lane->streams[i]);
			if (err != 0) {
				cuda_lane_destroy(ctx, lane);
				return err;
			}
		}
		lane->ready = true;
	}
	*lane_ret = lane;
	return 0;
}

static int cuda_flush(struct shadow__copy_ctx *ctx);

static void cuda_ctx_destroy(struct shadow__copy_ctx *ctx)
{
	if (ctx == NULL)
		return;
	(void)cuda_flush(ctx);
	for (uint32_t d = 0; d < CUDA_COPY_DEVICES_MAX; d++) {
		if (ctx->lanes[d].ready && cuda_use_device(ctx, (int)d) == 0)
			cuda_lane_destroy(ctx, &ctx->lanes[d]);
	}
	free(ctx);
}

typedef int (*cuda_batch_fn)(void *stream, void *const *dsts, const void *const *srcs,
			     const size_t *sizes, size_t count);

/*
 * Queue one copy of `size` bytes from src to dst in the context's arrays; when they are full,
 * first issue them as one batch call on `stream`. Only a job that started with the arrays
 * empty (cuda_submit flushed the group before it) can fill them, so what a full call issues
 * is that job's alone.
 */
static int cuda_push(struct shadow__copy_ctx *ctx, void *stream, cuda_batch_fn batch, void *dst,
		     const void *src, size_t size)
{
	if (ctx->pending_n == CUDA_COPY_BATCH_MAX) {
		/* Only a job that started a group fills the arrays (cuda_job_batched counts what
		 * cuda_issue_job queues): no other job's copies go out with its. */
		SHADOW_ASSERT(ctx->pending_first == ctx->tail);
		int err = batch(stream, ctx->dsts, ctx->srcs, ctx->sizes, ctx->pending_n);
		if (err != 0)
			return err;
		ctx->pending_n = 0;
	}
	ctx->dsts[ctx->pending_n] = dst;
	ctx->srcs[ctx->pending_n] = src;
	ctx->sizes[ctx->pending_n] = size;
	ctx->pending_n++;
	return 0;
}

/* Whether the 2D call takes q's pitches (SHADOW_GPU_PITCH_MAX: layers up to 2 GiB apart). */
static bool cuda_rect_2d_ok(const struct shadow__copy_rect *q)
{
	return q->dst_pitch <= SHADOW_GPU_PITCH_MAX && q->src_pitch <= SHADOW_GPU_PITCH_MAX;
}

bool shadow__copy_cuda_rect_as_lines(uint32_t peers, const struct shadow__copy_rect *q)
{
	if (!cuda_rect_2d_ok(q))
		return true;
	const size_t k = SHADOW_MIN(SHADOW_MAX(peers, 1u), SHADOW_ARRAY_SIZE(cuda_line_issue_ns));
	const uint64_t line_ns = q->width / CUDA_H2D_BYTES_PER_NS;
	/* Saturating: a checked rectangle's height * width is at most its region's size, but
	 * this is also called on rectangles nobody checked. */
	uint64_t as_2d, as_lines;
	if (!shadow_mul_u64(q->height, line_ns, &as_2d) ||
	    !shadow_add_u64(as_2d, CUDA_2D_OP_NS, &as_2d))
		as_2d = UINT64_MAX;
	if (!shadow_mul_u64(q->height, SHADOW_MAX(line_ns, cuda_line_issue_ns[k - 1]), &as_lines) ||
	    !shadow_add_u64(as_lines, as_lines / CUDA_LINES_MARGIN, &as_lines))
		as_lines = UINT64_MAX;
	return as_lines < as_2d;
}

static bool cuda_rect_as_lines(const struct shadow__copy_ctx *ctx,
			       const struct shadow__copy_rect *q)
{
	switch (ctx->rects) {
	case CUDA_RECTS_2D:
		return !cuda_rect_2d_ok(q);
	case CUDA_RECTS_LINES:
		return true;
	case CUDA_RECTS_MODEL:
	default:
		return shadow__copy_cuda_rect_as_lines(ctx->peers, q);
	}
}

/* The batched copies `job` makes: its runs of nonzero size and the lines of the rectangles
 * it copies as lines. */
static uint64_t cuda_job_batched(const struct shadow__copy_ctx *ctx,
				 const struct shadow__copy_job *job)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < job->n_runs; i++)
		n += job->runs[i].nbytes != 0;
	for (uint32_t i = 0; i < job->n_rects; i++) {
		if (cuda_rect_as_lines(ctx, &job->rects[i]))
			n += job->rects[i].height;
	}
	return n;
}

/*
 * Issue `job` host -> region on `stream`: each rectangle copied as one 2D copy now, the other
 * rectangles' lines and the runs queued in the context's arrays for the group's batch call
 * (full arrays are issued on the way, cuda_push).
 */
static int cuda_issue_job(struct shadow__copy_ctx *ctx, void *stream, uint8_t *dev_base,
			  const uint8_t *host, const struct shadow__copy_job *job)
{
	const cuda_batch_fn batch = ctx->gpu->memcpy_h2d_batch;
	int err;

	for (uint32_t i = 0; i < job->n_rects; i++) {
		const struct shadow__copy_rect *q = &job->rects[i];
		if (!cuda_rect_as_lines(ctx, q)) {
			err = ctx->gpu->memcpy_h2d_2d(stream, dev_base + q->dst_offset,
						      (size_t)q->dst_pitch, host + q->src_offset,
						      (size_t)q->src_pitch, (size_t)q->width,
						      (size_t)q->height);
			if (err != 0)
				return err;
			continue;
		}
		for (uint64_t j = 0; j < q->height; j++) {
			err = cuda_push(ctx, stream, batch, dev_base + q->dst_offset + j * q->dst_pitch,
					host + q->src_offset + j * q->src_pitch, (size_t)q->width);
			if (err != 0)
				return err;
		}
	}
	for (uint32_t i = 0; i < job->n_runs; i++) {
		const struct shadow_copy_run *run = &job->runs[i];
		if (run->nbytes == 0)
			continue;
		err = cuda_push(ctx, stream, batch, dev_base + run->dst_offset,
				host + run->src_offset, (size_t)run->nbytes);
		if (err != 0)
			return err;
	}
	return 0;
}

/*
 * Issue the queued jobs as one batch call on the lane's next stream and record one event after
 * it, on the last job's slot; every job of the group waits on that event. If issuing fails the
 * stream is drained (no copy may still read a slot the caller then recycles) and every job of
 * the group reports the error at reap.
 */
static int cuda_flush(struct shadow__copy_ctx *ctx)
{
	struct cuda_lane *lane = ctx->pending_lane;
	uint32_t last = (ctx->tail - 1) & (SHADOW__COPY_INFLIGHT_MAX - 1);
	void *stream, *event;
	int err;

	if (ctx->pending_first == ctx->tail)
		return 0;
	stream = lane->streams[lane->next_stream];
	lane->next_stream = (lane->next_stream + 1) % CUDA_COPY_STREAMS;
	event = lane->events[last];
	err = ctx->pending_n > 0 ? ctx->gpu->memcpy_h2d_batch(stream, ctx->dsts, ctx->srcs,
							       ctx->sizes, ctx->pending_n) : 0;
	if (err == 0)
		err = ctx->gpu->event_record(event, stream);
	if (err != 0)
		(void)ctx->gpu->stream_sync(stream);
	for (uint32_t i = ctx->pending_first; i != ctx->tail; i++) {
		struct cuda_job *j = &ctx->jobs[i & (SHADOW__COPY_INFLIGHT_MAX - 1)];
		j->event = event;
		j->err = err;
	}
	ctx->pending_first = ctx->tail;
	ctx->pending_n = 0;
	ctx->pending_lane = NULL;
	return err;
}

/*
 * Queue a job: its 2D copies are issued at once, its other copies join the pending batch,
 * issued by flush() (the caller's, or here when the batch would pass CUDA_COPY_BATCH_MAX or
 * the device changes). A job with more batched copies than one call takes starts a group of
 * its own and issues full calls on the way; the rest waits for the flush like any job's.
 */
static int cuda_submit(struct shadow__copy_ctx *ctx, const struct shadow__copy_job *job)
{
	struct shadow__copy_region *r = job->region;
	uint32_t slot = ctx->tail & (SHADOW__COPY_INFLIGHT_MAX - 1);
	struct cuda_lane *lane;
	int err;

	if (ctx->tail - ctx->head >= SHADOW__COPY_INFLIGHT_MAX)
		return -EAGAIN;
	if (r == NULL)
		return -EINVAL;
	err = shadow__copy_job_check(job, r->nbytes, "cuda");
	if (err != 0)
		return err;
	/* A group goes to one device and, unless a job alone is larger, stays within one call. */
	if (ctx->pending_lane != NULL &&
	    (ctx->pending_lane != &ctx->lanes[r->device] ||
	     ctx->pending_n + cuda_job_batched(ctx, job) > CUDA_COPY_BATCH_MAX))
		(void)cuda_flush(ctx); /* an error is the flushed jobs', reported at reap */
	err = cuda_lane_get(ctx, r->device, &lane);
	if (err != 0)
		return err;
	if (lane->events[slot] == NULL) {
		err = ctx->gpu->event_create(&lane->events[slot]);
		if (err != 0)
			return err;
	}
	/* On the stream the group's flush will use, so that its event comes after them. */
	void *stream = lane->streams[lane->next_stream];
	const uint32_t queued = ctx->pending_n;
	err = cuda_issue_job(ctx, stream, r->base, job->src, job);
	if (err != 0) {
		/* Copies may have been issued: let them end before the slot is reused. What
		 * this job queued is dropped: a call issued on the way had emptied the arrays,
		 * so the job's copies are those from `queued` on, or all of them. */
		(void)ctx->gpu->stream_sync(stream);
		ctx->pending_n = SHADOW_MIN(queued, ctx->pending_n);
		return err;
	}
	ctx->pending_lane = lane;
	ctx->jobs[slot] = (struct cuda_job){ .user = job->user, .event = NULL };
	ctx->tail++;
	return 0;
}

static uint32_t cuda_reap(struct shadow__copy_ctx *ctx, void **users, int *statuses, uint32_t max)
{
	uint32_t n = 0;

	while (n < max && ctx->head != ctx->tail) {
		const struct cuda_job *j = &ctx->jobs[ctx->head & (SHADOW__COPY_INFLIGHT_MAX - 1)];
		if (j->event == NULL)
			break; /* queued, not flushed yet */
		int rc = j->err != 0 ? j->err : ctx->gpu->event_query(j->event);
		if (rc == -EAGAIN)
			break;
		users[n] = j->user;
		statuses[n] = rc; /* 0, or SHADOW_ECUDA logged by the module */
		ctx->head++;
		n++;
	}
	return n;
}

static uint32_t cuda_in_flight(const struct shadow__copy_ctx *ctx)
{
	return ctx->tail - ctx->head;
}

static int cuda_read(struct shadow__copy_ctx *ctx, struct shadow__copy_region *r,
		     const struct shadow_copy_run *runs, uint32_t n_runs, void *dst)
{
	struct cuda_lane *lane;
	int err;

	if (r == NULL || (n_runs > 0 && (runs == NULL || dst == NULL)))
		return -EINVAL;
	if (!shadow__copy_runs_fit(runs, n_runs, r->nbytes)) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
				       "cuda read: a run ends beyond the %llu-byte region",
				       (unsigned long long)r->nbytes);
		return -EINVAL;
	}
	(void)cuda_flush(ctx); /* the arrays are about to be reused */
	err = cuda_lane_get(ctx, r->device, &lane);
	if (err != 0)
		return err;
	/* The arrays serve both directions: for d2h the region is the source. */
	void *stream = lane->streams[0];
	const cuda_batch_fn batch = ctx->gpu->memcpy_d2h_batch;
	err = 0;
	for (uint32_t i = 0; i < n_runs && err == 0; i++) {
		if (runs[i].nbytes != 0)
			err = cuda_push(ctx, stream, batch, (uint8_t *)dst + runs[i].src_offset,
					r->base + runs[i].dst_offset, (size_t)runs[i].nbytes);
	}
	if (err == 0 && ctx->pending_n > 0)
		err = batch(stream, ctx->dsts, ctx->srcs, ctx->sizes, ctx->pending_n);
	ctx->pending_n = 0;
	/* Wait even after a failure: no copy may still write into dst once we return. */
	int sync_err = ctx->gpu->stream_sync(stream);
	return err != 0 ? err : sync_err;
}

static const struct shadow__copy_ops cuda_copy_ops = {
	.name = "cuda",
	.region_open = cuda_region_open,
	.region_close = cuda_region_close,
	.ctx_create = cuda_ctx_create,
	.ctx_destroy = cuda_ctx_destroy,
	.submit = cuda_submit,
	.flush = cuda_flush,
	.reap = cuda_reap,
	.in_flight = cuda_in_flight,
	.read = cuda_read,
};

int shadow__copy_cuda_ops(const struct shadow__copy_ops **ops_ret)
{
	const struct shadow__gpu_ops *gpu;
	int err = shadow__gpu_ops(&gpu); /* logs why at INFO when there is no GPU */

	if (err != 0)
		return err;
	*ops_ret = &cuda_copy_ops;
	return 0;
}
