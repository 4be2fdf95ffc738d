/*
 * copy.h - copy backends: how decoded frames reach the engine's KV memory, and how the save
 * path reads it back. One ops table per backend (after UCX's cuda_copy / cuda_ipc transports):
 *
 *   host  the region is host memory the client shares (a memfd passed over the unix socket),
 *         mapped into the daemon; a copy is a memcpy of each run (lib/pipeline/copy_host.c).
 *   cuda  the region is GPU memory the client exported with a CUDA IPC handle; the daemon
 *         opens it and copies with the copy engine from pinned slots, asynchronously, on its
 *         own streams, completion by events (lib/pipeline/copy_cuda.c, through the dlopen()ed
 *         CUDA module: no CUDA header here). It never launches a kernel.
 *
 * DESIGN
 *
 * A region is opened once (region_open) when a client registers it and closed when the last
 * job on it has completed. A copy context belongs to one thread (the pipeline's copy thread,
 * or a save thread): it owns that thread's streams and events. submit() starts a job and
 * never blocks on the copy itself; reap() hands back finished jobs, whose source slots may
 * then be reused. A backend that copies synchronously (host) finishes the job inside submit
 * and reports it at the next reap, so the caller has one completion path for both.
 *
 * Jobs are frames: the staging image of one frame in one slot, and its copy runs
 * (shadow_layout_plan_frame) from that image into the region. Every run has been checked
 * against the region's size by the layout validation; backends still refuse a run that ends
 * beyond region_nbytes (-EINVAL), because a region is client input.
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

/* One frame to copy: runs from a staging image into a region. */
struct shadow__copy_job {
	struct shadow__copy_region *region;
	const void *src;                     /* the staging image (a pool slot; pinned for cuda) */
	const struct shadow_copy_run *runs;  /* must stay valid until the job is reaped */
	uint32_t n_runs;
	void *user;                          /* handed back by reap() */
};

struct shadow__copy_ops {
	const char *name; /* "host", "cuda" */

	/* Map / open a region. 0, -EINVAL (bad description), -errno, SHADOW_ECUDA, SHADOW_ENOGPU. */
	int (*region_open)(const struct shadow__region_mem *mem, struct shadow__copy_region **r_ret);
	/* Unmap / close; no job on it may be in flight. NULL accepted. */
	void (*region_close)(struct shadow__copy_region *r);

	/* A context for the calling thread. */
	int (*ctx_create)(struct shadow__copy_ctx **ctx_ret);
	void (*ctx_destroy)(struct shadow__copy_ctx *ctx); /* waits for jobs still in flight */

	/*
	 * Start `job` (the struct may be reused once submit returns; runs and src must live until
	 * reaped). 0; -EAGAIN when the context has SHADOW__COPY_INFLIGHT_MAX jobs in flight (reap,
	 * then retry); -EINVAL (a run outside the region); SHADOW_ECUDA.
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

extern const struct shadow__copy_ops shadow__copy_host_ops SHADOW_INTERNAL;

/* The cuda backend's ops, or SHADOW_ENOGPU where the CUDA module or a GPU is missing. */
int shadow__copy_cuda_ops(const struct shadow__copy_ops **ops_ret) SHADOW_INTERNAL;

/* Host memory for the slot pool: pinned (cudaHostAlloc) when `pinned`, else huge-page backed
 * aligned memory. Freed with shadow__copy_pool_free(mem, nbytes, pinned). */
int shadow__copy_pool_alloc(size_t nbytes, bool pinned, void **mem_ret) SHADOW_INTERNAL;
void shadow__copy_pool_free(void *mem, size_t nbytes, bool pinned) SHADOW_INTERNAL;

#endif /* SHADOW_PIPELINE_COPY_H */
