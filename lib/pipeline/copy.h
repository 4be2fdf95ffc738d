/*
 * copy.h - copy backends: how decoded frames reach the engine's KV memory, and how the save
 * path reads it back. One ops table per backend (after UCX's cuda_copy / cuda_ipc transports):
 *
 *   host  the region is host memory the client shares (a memfd passed over the unix socket),
 *         mapped into the daemon; a copy is a memcpy of each run (lib/pipeline/copy_host.c).
 *   cuda  the region is GPU memory the client exported with a CUDA IPC handle; the daemon
 *         opens it and copies with the copy engine from pinned staging memory,
 *         asynchronously, on its own streams, completion by events (lib/pipeline/copy_cuda.c,
 *         through the dlopen()ed CUDA module: no CUDA header here). It never launches a
 *         kernel.
 *
 * DESIGN
 *
 * A region is opened once (region_open) when a client registers it and closed when the last
 * job on it has completed. A copy context belongs to one thread (the pipeline's copy thread,
 * or a save thread): it owns that thread's streams and events. submit() starts a job and
 * never blocks on the copy itself; reap() hands back finished jobs, whose source memory may
 * then be reused. A backend that copies synchronously (host) finishes the job inside submit
 * and reports it at the next reap, so the caller has one completion path for both.
 *
 * Jobs are chunks: the staging image of a chunk's frames (frame f at f * frame pitch), and
 * its copy as plain runs and rectangles (2D copies: the same run of consecutive frames, one
 * line per frame) from that image into the region, as shadow__copy_plan_chunk() plans them
 * (copy_plan.c says why: each copy operation costs the issuing thread, not the bytes). A job
 * may also be a single frame's runs (shadow_layout_plan_frame). Every run has been checked
 * against the region's size by the layout validation; backends still refuse a run or a
 * rectangle that ends beyond region_nbytes (-EINVAL), because a region is client input.
 */
#ifndef SHADOW_PIPELINE_COPY_H
#define SHADOW_PIPELINE_COPY_H

#include <stdint.h>

#include "core/common.h"

enum shadow__copy_kind {
	SHADOW__COPY_HOST = 1,
	SHADOW__COPY_CUDA = 2,
};

#define SHADOW__CUDA_IPC_HANDLE_NBYTES 64u

/* The memory of a region as a client describes it (control protocol). */
struct shadow__region_mem {
	uint32_t kind;        /* enum shadow__copy_kind */
	int fd;               /* HOST: an mmap()able fd (memfd) holding the region; region_open
				 dup()s what it keeps, the caller still owns and closes `fd` */
	uint64_t fd_offset;   /* HOST: where the region starts in the fd (page aligned) */
	uint8_t ipc_handle[SHADOW__CUDA_IPC_HANDLE_NBYTES]; /* CUDA: cudaIpcMemHandle_t */
	int32_t device;       /* CUDA: the device ordinal, as the daemon numbers them */
	uint64_t ipc_offset;  /* CUDA: where the region starts in the exported allocation (a
				 caching allocator's tensor sits inside a larger block) */
	uint64_t nbytes;      /* the region's size: the layout's region_nbytes */
};

struct shadow__copy_region; /* backend-private: a mapping or an opened IPC pointer */
struct shadow__copy_ctx;    /* backend-private: one thread's streams and events */

/*
 * A rectangle: `height` lines of `width` bytes, line j from src_offset + j * src_pitch in the
 * staging image to dst_offset + j * dst_pitch in the region. Both pitches are >= width, so
 * the lines of one rectangle never overlap.
 */
struct shadow__copy_rect {
	uint64_t src_offset;
	uint64_t dst_offset;
	uint64_t width;
	uint64_t src_pitch;
	uint64_t dst_pitch;
	uint64_t height;
};

/* Whether `rect` is well formed (height, width > 0, pitches >= width) and ends inside
 * [0, region_nbytes) on its region side. */
bool shadow__copy_rect_fits(const struct shadow__copy_rect *rect, uint64_t region_nbytes)
	SHADOW_INTERNAL;

/* One job: runs and rectangles from a staging image into a region, in no set order. */
struct shadow__copy_job {
	struct shadow__copy_region *region;
	const void *src;                     /* the staging image (pool memory; pinned for cuda) */
	const struct shadow_copy_run *runs;  /* both arrays must stay valid until the job is */
	const struct shadow__copy_rect *rects; /* reaped */
	uint32_t n_runs;
	uint32_t n_rects;
	void *user;                          /* handed back by reap() */
};

/* Every run inside [0, region_nbytes) on its region side. */
bool shadow__copy_runs_fit(const struct shadow_copy_run *runs, uint32_t n_runs,
			   uint64_t region_nbytes) SHADOW_INTERNAL;

/*
 * The check a backend makes of a job before it copies any of it: the arrays present where
 * counted, every run inside [0, region_nbytes) and every rectangle well formed and inside.
 * 0, or -EINVAL (logged, rate-limited, with `backend`'s name).
 */
int shadow__copy_job_check(const struct shadow__copy_job *job, uint64_t region_nbytes,
			   const char *backend) SHADOW_INTERNAL;

/* A chunk's copy: the caller's arrays and their capacities; the counts are outputs. */
struct shadow__copy_plan {
	struct shadow_copy_run *runs;
	size_t max_runs, n_runs;
	struct shadow__copy_rect *rects;
	size_t max_rects, n_rects;
};

/*
 * Plan the copy of a chunk whose frames are staged one after another, frame f = 2 * layer +
 * kind at f * frame_pitch (>= the geometry's frame size), into the blocks block_ids[0 ..
 * n_block_ids-1] (as for shadow_layout_plan_frame, whose checks apply): runs of consecutive
 * frames at one distance in the region become rectangles, the rest plain runs
 * (copy_plan.c). Scratch: max_frame_runs runs and as many rectangles, at least the most runs
 * one frame needs. Allocates nothing. 0; -EINVAL (bad arguments, layout or block ids);
 * -ENOBUFS (a frame needs more than max_frame_runs runs, or the plan's arrays are too small:
 * 2 * n_layers * max_frame_runs runs and n_layers * max_frame_runs rectangles always do).
 */
int shadow__copy_plan_chunk(const struct shadow_kv_layout *layout,
			    const struct shadow_kv_geometry *geom, const uint32_t *block_ids,
			    uint32_t n_block_ids, uint64_t frame_pitch,
			    struct shadow_copy_run *scratch_runs,
			    struct shadow__copy_rect *scratch_rects, size_t max_frame_runs,
			    struct shadow__copy_plan *plan) SHADOW_INTERNAL;

struct shadow__copy_ops {
	const char *name; /* "host", "cuda" */

	/* Map / open a region. 0, -EINVAL (bad description), -errno, SHADOW_ECUDA, SHADOW_ENOGPU. */
	int (*region_open)(const struct shadow__region_mem *mem, struct shadow__copy_region **r_ret);
	/* Unmap / close; no job on it may be in flight. NULL accepted. */
	void (*region_close)(struct shadow__copy_region *r);

	/*
	 * A context for the calling thread. `peers`: how many threads, this one included, issue
	 * copies at the same time, each through a context of its own (the pipeline's copy
	 * threads); the cuda backend weighs a rectangle's one 2D copy against its lines as
	 * batched copies with it (copy_cuda.c). 0 is taken as 1.
	 */
	int (*ctx_create)(uint32_t peers, struct shadow__copy_ctx **ctx_ret);
	void (*ctx_destroy)(struct shadow__copy_ctx *ctx); /* waits for jobs still in flight */

	/*
	 * Start `job` (the struct may be reused once submit returns; its arrays and src must
	 * live until reaped). 0; -EAGAIN when the context has SHADOW__COPY_INFLIGHT_MAX jobs in
	 * flight (reap, then retry); -EINVAL (a run or rectangle outside the region, or
	 * malformed); SHADOW_ECUDA.
	 */
	int (*submit)(struct shadow__copy_ctx *ctx, const struct shadow__copy_job *job);
	/*
	 * Start what submit() has queued: a backend may hold submitted jobs to issue many in one
	 * call (cuda: one batched copy for a burst of frames). Call it after each burst of
	 * submits, and before waiting on reap(): a job not flushed never completes. 0, or the
	 * error every job of the flushed group then reports at reap().
	 */
	int (*flush)(struct shadow__copy_ctx *ctx);
	/*
	 * Finished jobs, oldest first: up to `max` of their `user` pointers and statuses (0 or a
	 * negative code). Never blocks. Returns how many.
	 */
	uint32_t (*reap)(struct shadow__copy_ctx *ctx, void **users, int *statuses, uint32_t max);
	/* Jobs submitted and not yet reaped. */
	uint32_t (*in_flight)(const struct shadow__copy_ctx *ctx);

	/*
	 * Save path: gather `runs` (dst_offset = where in the region, src_offset = where in
	 * `dst`) from the region into host memory `dst`, and wait for it. 0, -EINVAL,
	 * SHADOW_ECUDA.
	 */
	int (*read)(struct shadow__copy_ctx *ctx, struct shadow__copy_region *r,
		    const struct shadow_copy_run *runs, uint32_t n_runs, void *dst);
};

#define SHADOW__COPY_INFLIGHT_MAX 256u

/*
 * The cuda backend's choice for a rectangle, issued by one of `peers` copy threads: true to
 * copy it as its lines (one batched copy each), false as one 2D copy (copy_cuda.c, DESIGN,
 * "Rectangles"). Pure; no GPU needed.
 */
bool shadow__copy_cuda_rect_as_lines(uint32_t peers, const struct shadow__copy_rect *rect)
	SHADOW_INTERNAL;

extern const struct shadow__copy_ops shadow__copy_host_ops SHADOW_INTERNAL;

/* The cuda backend's ops, or SHADOW_ENOGPU where the CUDA module or a GPU is missing. */
int shadow__copy_cuda_ops(const struct shadow__copy_ops **ops_ret) SHADOW_INTERNAL;

/* Host memory for the pipeline's pool: pinned (cudaHostAlloc) when `pinned`, else huge-page backed
 * aligned memory. Freed with shadow__copy_pool_free(mem, nbytes, pinned). */
int shadow__copy_pool_alloc(size_t nbytes, bool pinned, void **mem_ret) SHADOW_INTERNAL;
void shadow__copy_pool_free(void *mem, size_t nbytes, bool pinned) SHADOW_INTERNAL;

#endif /* SHADOW_PIPELINE_COPY_H */
