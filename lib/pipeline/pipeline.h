/*
 * pipeline.h - the data plane's chunked pipeline: fetch -> verify + decompress + dequantize ->
 * copy, and the save path back to the store. shadowd drives it; tests and bench/pipeline use it
 * directly. (Internal: the engine talks to it only through shadowd and the client API.)
 *
 * DESIGN (the full picture, with the threads and rings, is in pipeline.c)
 *
 *   submit(op) --> op ring --> fetch threads ------> decode ring --> decode threads
 *                              (own store handle,    (frames whose    (own codec; each frame
 *                               GET into a chunk      bytes landed)     into its place in the
 *                               buffer, on_data:                        chunk's staging area)
 *                               parse, release                             | last frame:
 *                               frames)                                    v plan the copy
 *                                                       copy threads <-- copy ring (chunks)
 *                                                        (copy backend: runs and 2D copies
 *                                                         from the staging area into the
 *                                                         region; buffer freed when the
 *                                                         copy completes)
 *                                                               |
 *                      on_done(op) <-- last chunk of the op <---+
 *
 * Memory is fixed at creation: `pool_nbytes` is split into chunk buffers, one per chunk in
 * flight, each a receive buffer (rx_nbytes) and a staging area (stage_nbytes), all in one
 * block that is pinned when the CUDA module is present. A chunk's GET starts only when a
 * chunk buffer is free: occupancy-based admission, so memory never grows with load and a
 * request larger than the pool still completes, chunk by chunk.
 */
#ifndef SHADOW_PIPELINE_PIPELINE_H
#define SHADOW_PIPELINE_PIPELINE_H

#include <sched.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/common.h"
#include "pipeline/copy.h"

#define SHADOW__OP_CHUNKS_MAX 4096u /* chunks in one operation */

struct shadow__pipeline;

struct shadow__pipeline_config {
	const char *store_url;            /* opened once per fetch and save thread */
	struct shadow_store_options store_opts;
	uint64_t pool_nbytes;             /* everything the data plane holds (default 1 GiB) */
	uint64_t rx_nbytes;               /* a receive buffer, >= the largest stored chunk
					     (default 64 MiB) */
	uint64_t stage_nbytes;            /* a staging area, >= the largest chunk's decoded KV
					     plus its copy plan (default 64 MiB) */
	uint32_t fetch_threads;           /* default 1; each with its own store connections */
	uint32_t decode_threads;          /* default 2 */
	uint32_t copy_threads;            /* default 1; each submits and reaps its own copies
					     (a CUDA stream of its own) */
	uint32_t save_threads;            /* default 1: saves never take more cores than this */
	const cpu_set_t *cpus;            /* every pipeline thread is pinned inside it; NULL: no
					     pinning */
	const struct shadow_transform *transform; /* for PCA frames; NULL: none; must outlive the
						     pipeline */
	const char *save_scheme;          /* codec scheme of saves (shadow_codec_options_parse);
					     NULL: "bf16planes+zstd1" */
	const char *key_prefix;           /* store key prefix; NULL: SHADOW_DEFAULT_KEY_PREFIX */
	bool pinned;                      /* pool from cudaHostAlloc (requires the CUDA module) */
};

/* Defaults for every field; store_url is NULL and must be set. */
void shadow__pipeline_config_default(struct shadow__pipeline_config *cfg) SHADOW_INTERNAL;

/*
 * Where thread i of a pipeline made with cfg runs (threads in creation order: fetch_threads
 * fetch, decode_threads decode, copy_threads copy, save_threads save threads): into *set_ret
 * the i-th CPU of cfg->cpus when the set has a CPU for every thread, else the whole set.
 * false (nothing written) when cfg->cpus is NULL: not pinned. Pure: for callers that want to
 * know, such as bench/pipeline's bound, where a thread will run.
 */
bool shadow__pipeline_thread_cpus(const struct shadow__pipeline_config *cfg, uint32_t i,
				  cpu_set_t *set_ret) SHADOW_INTERNAL;

/*
 * Create the pipeline and start its threads. Returns 0; -EINVAL (a bad field, a pool too
 * small for the save buffers and one chunk buffer), store open errors (the first thread's),
 * -ENOMEM, SHADOW_ENOGPU (pinned without the CUDA module).
 */
int shadow__pipeline_create(const struct shadow__pipeline_config *cfg,
			    struct shadow__pipeline **pl_ret) SHADOW_INTERNAL;

/* Cancel everything in flight (each op completes), stop the threads, free. NULL accepted. */
void shadow__pipeline_destroy(struct shadow__pipeline *pl) SHADOW_INTERNAL;

/* A KV region: where fetched chunks go and saved chunks come from. */
struct shadow__region_spec {
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout layout;   /* validated against geom by region_add */
	struct shadow__region_mem mem;
};

/*
 * The staging area (rounded up to 4 KiB) that a chunk of a region with this geometry and
 * layout needs: its decoded frames at *frame_pitch_ret apart, its copy plan and the planner's
 * scratch. A pipeline takes the region when its stage_nbytes is at least that. 0; -EINVAL or
 * SHADOW_EGEOMETRY (the layout does not validate); -ENOMEM. Pure: for callers that size a
 * pipeline, such as bench/pipeline.
 */
int shadow__pipeline_stage_size(const struct shadow_kv_geometry *geom,
				const struct shadow_kv_layout *layout, uint64_t *stage_nbytes_ret,
				uint64_t *frame_pitch_ret) SHADOW_INTERNAL;

/*
 * Register a region (any thread). Returns 0 and its id; SHADOW_EGEOMETRY (layout invalid for
 * the geometry), SHADOW_ELIMIT (a chunk larger than a receive buffer or, decoded with its
 * copy plan, than a staging area; or too many regions),
 * SHADOW_ENOGPU (a cuda region without the CUDA module), the backend's region_open errors.
 */
int shadow__pipeline_region_add(struct shadow__pipeline *pl, const struct shadow__region_spec *spec,
				uint32_t *id_ret) SHADOW_INTERNAL;

/*
 * Unregister: new ops on the region are refused at once; this blocks (sleeping in 1 ms steps)
 * until the ops still on it have finished, then unmaps it, so its memory can go when it
 * returns. It does not cancel them: cancel them first (a SAVE on a slow store otherwise holds
 * it until its deadline). Any thread but a pipeline callback. 0 or -ENOENT.
 */
int shadow__pipeline_region_remove(struct shadow__pipeline *pl, uint32_t id) SHADOW_INTERNAL;

enum shadow__op_kind {
	SHADOW__OP_FETCH = 1,  /* chunks from the store into the region's blocks */
	SHADOW__OP_SAVE = 2,   /* the region's blocks into the store */
	SHADOW__OP_LOOKUP = 3, /* how many leading chunks the store has (of the first
				  SHADOW_STORE_EXISTS_MAX keys: a longer op asks about those) */
};

/*
 * One operation, in the caller's memory until on_done. For FETCH and SAVE, chunk i is keys[i]
 * with blocks block_ids[i * bpc .. (i + 1) * bpc), bpc = chunk_tokens / block_tokens, and
 * chunk index first_chunk_index + i (recorded in the container and checked on fetch).
 */
struct shadow__op {
	/* Input. */
	uint32_t kind;                      /* enum shadow__op_kind */
	uint32_t region;                    /* FETCH, SAVE */
	uint32_t n_chunks;                  /* 1 .. SHADOW__OP_CHUNKS_MAX */
	uint32_t first_chunk_index;
	const struct shadow_chunk_key *keys;
	const uint32_t *block_ids;          /* FETCH, SAVE */
	uint64_t deadline_ns;               /* absolute shadow_now_ns(); 0: none */
	void (*on_done)(struct shadow__op *op); /* from a pipeline thread; keep it short */
	void *user;

	/* Output, valid in on_done. */
	uint8_t *chunk_status;              /* n_chunks entries, enum shadow_chunk_status
					       (FETCH, SAVE); caller memory */
	uint32_t n_found;                   /* LOOKUP: leading chunks present */
	uint32_t n_ok;                      /* FETCH, SAVE: chunks with SHADOW_CHUNK_OK */
	uint64_t bytes_in;                  /* FETCH: container bytes read from the store */
	uint64_t bytes_out;                 /* FETCH: decoded bytes copied into the region;
					       SAVE: container bytes put */
	int status;                         /* 0, or why the whole op failed (-EINVAL, ...) */

	/* Private to the pipeline. */
	struct {
		_Atomic uint32_t chunks_left;
		_Atomic uint32_t next_chunk;
		_Atomic uint32_t cancelled;
	} p;
};

/*
 * Submit `op` (any thread). Returns 0 (on_done will be called exactly once, from a pipeline
 * thread, possibly before this returns), -EINVAL (malformed op: nothing is called back),
 * -ENOENT (no such region), -EBUSY (the op's ring is full: SHADOW__OPS_MAX fetch and lookup
 * ops, or SHADOW__OPS_MAX saves, are waiting for a thread).
 */
int shadow__pipeline_submit(struct shadow__pipeline *pl, struct shadow__op *op) SHADOW_INTERNAL;

/*
 * Ask an op in flight to finish early: chunks not yet done report SHADOW_CHUNK_CANCELED. Any
 * thread. Harmless on an op that has already completed, as long as its memory is still
 * valid (it only sets a flag in the op and wakes the fetch threads).
 */
void shadow__pipeline_cancel(struct shadow__pipeline *pl, struct shadow__op *op) SHADOW_INTERNAL;

#define SHADOW__OPS_MAX 1024u

/* Counters since creation (relaxed reads of per-thread counters: a consistent-enough view). */
struct shadow__pipeline_stats {
	uint64_t ops_done;
	uint64_t chunks_ok, chunks_miss, chunks_corrupt, chunks_timeout, chunks_error,
		chunks_canceled;
	uint64_t bytes_in;          /* container bytes fetched */
	uint64_t bytes_decoded;     /* frame bytes decoded and copied */
	uint64_t bytes_saved;       /* container bytes put */
	uint64_t ns_fetch;          /* wall time GETs were in flight, summed */
	uint64_t ns_decode;         /* decode thread time spent decoding */
	uint64_t ns_copy;           /* copy submit to completion, summed per chunk */
	uint64_t ns_save;           /* save thread time spent encoding */
	uint32_t chunks_free, chunks_total; /* chunk buffers: chunks that may be in flight */
};
void shadow__pipeline_stats(struct shadow__pipeline *pl, struct shadow__pipeline_stats *s)
	SHADOW_INTERNAL;

#endif /* SHADOW_PIPELINE_PIPELINE_H */
