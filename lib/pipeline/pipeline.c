/*
 * pipeline.c - the chunked data-plane pipeline (pipeline.h has the picture).
 *
 * DESIGN
 *
 * Threads (all pinned inside cfg->cpus when given, each to a CPU of its own when the set has
 * enough; shadow__pipeline_thread_cpus(), docs/threads.md):
 *   fetch  x fetch_threads   pops FETCH and LOOKUP ops, owns a store handle; starts one GET
 *                            per chunk once a chunk buffer is free; as bytes land it parses
 *                            the container's metadata and hands each frame whose payload has
 *                            fully arrived to the decode ring.
 *   decode x decode_threads  pops frames; decompresses, verifies and dequantizes each straight
 *                            into its place in the chunk's staging area (one codec per thread
 *                            and geometry). Frames of one chunk decode in parallel. The thread
 *                            that drops a chunk's last reference (usually the one that
 *                            decoded its last frame; the fetch thread when the GET completes
 *                            later) plans the chunk's copy (runs and rectangles,
 *                            copy_plan.c) and pushes the chunk to the copy ring.
 *   copy   x copy_threads    pops chunks, submits them to the region's copy backend (a copy
 *                            context of its own: a CUDA stream per thread), reaps its
 *                            finished copies and frees their chunk buffers. More than one
 *                            where issuing copies is the bottleneck: the CUDA driver spends
 *                            about 1 us of the issuing thread per copy operation
 *                            (docs/results.md, "Copy engine").
 *   save   x save_threads    pops SAVE ops; per chunk gathers the blocks from the region
 *                            (copy backend read), encodes, PUTs. Its own store handle and
 *                            buffers: saves never take a fetch's memory or threads.
 *
 * Queues: ops ring (MPMC, submitters -> fetch threads), save ring (MPMC, submitters -> save
 * threads), decode ring (MPMC, fetch -> decode: frames), copy ring (MPMC, decode -> copy:
 * chunks). Each has a doorbell (below) that wakes consumers asleep on it; a producer rings
 * only when a consumer said it is going to sleep, so a busy pipeline makes no syscall per
 * item.
 *
 * Memory: one block of pool_nbytes (pinned when cfg->pinned), carved into the save threads'
 * buffers and chunk buffers, all fixed at creation. A chunk buffer is a receive buffer
 * (rx_nbytes: the stored container) and a staging area (stage_nbytes: the chunk's decoded
 * frames at a fixed pitch, then its copy plan and the planner's scratch):
 *
 *	| rx: container as it lands | stage: frame 0 | frame 1 | ... | runs | rects | scratch |
 *
 * Chunk buffers are the slots of a LIFO pool (core/pool.h), so a lightly loaded pipeline
 * reuses the buffer that was freed last, still warm in cache. A chunk enters the pipeline
 * only with a buffer of its own: occupancy-based admission at chunk granularity, with
 * backpressure to the fetch threads. Why the whole chunk is staged before its copy, and not
 * frame by frame: a chunk staged at a fixed frame pitch lets one 2D copy move the same block
 * of every frame (copy_plan.c), where frame slots from a free list made one copy per block
 * per frame, and the copy engine's cost is per operation (docs/results.md).
 *
 * Lifetimes: a chunk in flight holds its buffer and a reference count: 1 for its GET plus 1
 * per frame handed to decode. Whoever drops the last reference (fetch thread at GET
 * completion, decode thread after a frame) ends the chunk's decode: a chunk that is still OK
 * is planned and goes to the copy ring, any other is finished at once. A copy thread
 * finishes a chunk when its copy is reaped. Finishing writes the chunk's status, frees its
 * buffer, and finishes the op when it was the op's last chunk. An op holds a reference on its
 * region until it finishes, so a region is unmapped only once nothing copies into it.
 *
 * Failure: a chunk's first failure wins (chunk->status, compare-and-swap). Frames of a failed
 * chunk (or of a cancelled op) that have not been decoded yet are skipped, so a corrupt chunk
 * costs no more decode work, and a chunk that failed to fetch or decode is never copied: no
 * byte of it reaches the region. A copy that fails (a CUDA error) may have written part of
 * its chunk, which then reports an error.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/cpuset.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/ring.h"
#include "pipeline/pipeline.h"

#define PL_REGIONS_MAX 64u
#define PL_FRAMES_MAX (2u * SHADOW_MAX_LAYERS)
#define PL_CHUNKS_MAX 64u       /* chunk buffers, i.e. chunks in flight, at most */
#define PL_THREADS_MAX 64u
#define PL_BUF_ALIGN 4096u
#define PL_STAGE_ALIGN 64u     /* frames and plan arrays in a staging area */

/* ------------------------------------------------------------------------------------------ */
/* Doorbells                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/*
 * A consumer about to sleep increments `sleepers`, re-checks its queue, and only then blocks
 * on the eventfd (semaphore mode: one token wakes one sleeper). A producer that made k items
 * available rings only if `sleepers` is non-zero, with min(k, sleepers) tokens: a chunk's
 * frames released at once wake as many decode threads as there are frames, or a lone chunk
 * would decode on one thread (measured: one chunk of bf16planes+zstd1 took 1.2 ms from two
 * decode threads with one token, 0.6 ms with one per frame; docs/results.md). Both sides
 * order their two steps with seq_cst, so either the consumer's re-check sees the work or the
 * producer sees the sleeper (the Dekker pattern); a spare token only causes one spurious
 * wake-up.
 */
struct doorbell {
	_Atomic int sleepers;
	int efd;
};

static int doorbell_init(struct doorbell *d)
{
	atomic_init(&d->sleepers, 0);
	d->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	return d->efd < 0 ? -errno : 0;
}

static void doorbell_fini(struct doorbell *d)
{
	if (d->efd >= 0)
		close(d->efd);
	d->efd = -1;
}

static void doorbell_ring_n(struct doorbell *d, uint32_t n)
{
	atomic_thread_fence(memory_order_seq_cst); /* pairs with the fence in doorbell_wait */
	int sleepers = atomic_load_explicit(&d->sleepers, memory_order_relaxed);
	if (sleepers > 0 && n > 0) {
		uint64_t v = SHADOW_MIN((uint64_t)n, (uint64_t)sleepers);
		(void)!write(d->efd, &v, sizeof(v));
	}
}

static void doorbell_ring(struct doorbell *d)
{
	doorbell_ring_n(d, 1);
}

/* Wake everyone (shutdown): one token per possible sleeper. */
static void doorbell_ring_all(struct doorbell *d, uint32_t n)
{
	uint64_t v = n;

	(void)!write(d->efd, &v, sizeof(v));
}

/*
 * Sleep until rung or timeout_ms passes (-1: no timeout), unless ready(arg) holds after the
 * sleeper count went up.
 */
static void doorbell_wait(struct doorbell *d, bool (*ready)(void *), void *arg, int timeout_ms)
{
	atomic_fetch_add_explicit(&d->sleepers, 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_seq_cst); /* pairs with the fence in doorbell_ring */
	if (!ready(arg)) {
		struct pollfd p = { .fd = d->efd, .events = POLLIN };
		if (poll(&p, 1, timeout_ms) > 0) {
			uint64_t v;
			(void)!read(d->efd, &v, sizeof(v));
		}
	}
	atomic_fetch_sub_explicit(&d->sleepers, 1, memory_order_relaxed);
}

/* ------------------------------------------------------------------------------------------ */
/* State                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * A staging area for one region's chunks (stage_layout): the decoded frames at a fixed pitch,
 * then the copy plan's arrays, then the planner's scratch. Offsets are bytes from the area's
 * start.
 */
struct pl_stage_layout {
	uint64_t frame_pitch;            /* frame f at f * frame_pitch */
	uint64_t off_runs;               /* the plan's runs */
	uint64_t off_rects;              /* the plan's rectangles */
	uint64_t off_scratch_runs;       /* scratch: one frame's runs */
	uint64_t off_scratch_rects;      /* scratch: one frame's rectangles */
	uint64_t plan_runs;              /* capacity of the plan's runs */
	uint64_t plan_rects;             /* capacity of the plan's rectangles */
};

struct pl_region {
	bool used;
	bool removing;
	_Atomic uint32_t refs;           /* 1 while registered + 1 per op in flight */
	uint32_t bpc;                    /* blocks per chunk */
	uint32_t max_runs;               /* runs of one frame, at most */
	uint64_t frame_nbytes;           /* a frame's staging image */
	struct pl_stage_layout stage;    /* its chunks' staging area */
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout layout;
	const struct shadow__copy_ops *ops;
	struct shadow__copy_region *cr;
	uint64_t raw_nbytes;             /* a chunk's KV, all frames */
};

struct pl_chunk;

struct pl_frame {
	struct pl_chunk *chunk;
	uint32_t frame;
};

struct pl_chunk {
	struct shadow__pipeline *pl;
	struct shadow__op *op;
	struct pl_region *region;
	struct pl_thread *owner;         /* the fetch thread whose GET is in flight, or NULL */
	uint32_t idx;                    /* in the op */
	uint8_t *rx;                     /* the chunk buffer: receive buffer, */
	uint8_t *stage;                  /* then staging area */
	struct shadow__copy_plan plan;   /* arrays in the staging area */
	uint64_t t_copy_ns;
	struct shadow_store_req req;
	struct iovec iov;
	char key_text[SHADOW_STORE_KEY_MAX];
	struct shadow_chunk_view view;
	bool peeked, parsed;
	uint32_t meta_nbytes;
	uint32_t frames_released;
	_Atomic uint32_t refs;
	_Atomic int status;              /* enum shadow_chunk_status; OK until a failure */
	uint64_t t0_ns;
	struct pl_frame frames[PL_FRAMES_MAX];
};

struct pl_thread {
	struct shadow__pipeline *pl;
	pthread_t tid;
	bool started;
	uint32_t index;
	struct shadow_store *store;      /* fetch, save */
	struct shadow_codec *codecs[PL_REGIONS_MAX]; /* decode, save: per region, lazily */
	struct shadow__copy_ctx *copy;   /* copy, save */
	uint8_t *save_raw, *save_enc;    /* save: gather and encode buffers (rx_nbytes each) */
	uint32_t *save_ids;              /* save: 0 .. bpc-1, the compact region's block ids */
	struct doorbell bell;            /* fetch: ops, rx buffers */
	int epfd;                        /* fetch: bell + store fd */
	/* fetch: the ops being worked on */
	struct shadow__op *cur;          /* still has chunks to start */
	struct shadow_store_req lookup_req;
	const char *lookup_keys[SHADOW_STORE_EXISTS_MAX];
	char (*lookup_text)[SHADOW_STORE_KEY_MAX];
	struct shadow__op *lookup_op;
};

struct shadow__pipeline {
	struct shadow__pipeline_config cfg;
	struct shadow_codec_options save_opts;
	char key_prefix[SHADOW_KEY_PREFIX_MAX + 1];

	void *mem;                       /* the pool block */
	size_t mem_nbytes;
	struct shadow__pool *buf_pool;   /* free chunk buffers (LIFO) */
	uint32_t n_chunks;
	struct pl_chunk *chunks;         /* n_chunks; chunk i owns chunk buffer i */

	struct shadow__ring *ops;        /* FETCH, LOOKUP */
	struct shadow__ring *saves;
	struct shadow__ring *decode;
	struct shadow__ring *copyq;
	struct doorbell decode_bell;     /* frames to decode */
	struct doorbell copy_bell;
	struct doorbell save_bell;

	pthread_mutex_t regions_lock;    /* region add/remove (control path only) */
	struct pl_region regions[PL_REGIONS_MAX];

	struct pl_thread *threads;
	uint32_t n_threads;
	uint32_t n_fetch, n_decode, n_copy, n_save;
	_Atomic bool stopping;
	_Atomic uint32_t cancel_epoch;   /* bumped by cancel and stop: fetch threads rescan */
	_Atomic uint32_t fetchers_alive; /* decode threads outlive every fetch thread, */
	_Atomic uint32_t decoders_alive; /* and the copy threads every decode thread */

	/* statistics: relaxed atomics, written by the thread that did the work */
	_Atomic uint64_t st[16];
};

enum {
	ST_OPS, ST_OK, ST_MISS, ST_CORRUPT, ST_TIMEOUT, ST_ERROR, ST_CANCELED, ST_BYTES_IN,
	ST_BYTES_DECODED, ST_BYTES_SAVED, ST_NS_FETCH, ST_NS_DECODE, ST_NS_COPY, ST_NS_SAVE,
};

static void st_add(struct shadow__pipeline *pl, int i, uint64_t v)
{
	atomic_fetch_add_explicit(&pl->st[i], v, memory_order_relaxed);
}

/* ------------------------------------------------------------------------------------------ */
/* Ops, chunks, frames                                                                        */
/* ------------------------------------------------------------------------------------------ */

static void region_put(struct pl_region *r)
{
	atomic_fetch_sub_explicit(&r->refs, 1, memory_order_release);
}

static void op_finish(struct shadow__pipeline *pl, struct shadow__op *op)
{
	if (op->kind != SHADOW__OP_LOOKUP)
		region_put(&pl->regions[op->region]);
	st_add(pl, ST_OPS, 1);
	op->on_done(op); /* the op is the caller's again from here on */
}

/* One chunk of `op` has its final status. */
static void op_chunk_done(struct shadow__pipeline *pl, struct shadow__op *op, uint32_t idx,
			  int status)
{
	static const int stat_of[] = { ST_OK, ST_MISS, ST_CORRUPT, ST_TIMEOUT, ST_ERROR,
				       ST_CANCELED };

	op->chunk_status[idx] = (uint8_t)status;
	st_add(pl, stat_of[status], 1);
	/* acq_rel: the last one sees every other chunk's writes to the op. */
	if (atomic_fetch_sub_explicit(&op->p.chunks_left, 1, memory_order_acq_rel) == 1) {
		uint32_t ok = 0;
		for (uint32_t i = 0; i < op->n_chunks; i++)
			ok += op->chunk_status[i] == SHADOW_CHUNK_OK;
		op->n_ok = ok;
		op_finish(pl, op);
	}
}

static bool op_cancelled(const struct shadow__op *op)
{
	return atomic_load_explicit(&((struct shadow__op *)op)->p.cancelled,
				    memory_order_relaxed) != 0;
}

/* Record the chunk's first failure. */
static void chunk_fail(struct pl_chunk *c, int status)
{
	int ok = SHADOW_CHUNK_OK;

	atomic_compare_exchange_strong_explicit(&c->status, &ok, status, memory_order_relaxed,
						memory_order_relaxed);
}

/* The chunk is done: its final status to the op, its buffer back to the pool. */
static void chunk_finish(struct pl_chunk *c)
{
	struct shadow__pipeline *pl = c->pl;
	struct shadow__op *op = c->op;
	uint32_t idx = c->idx;
	int status = atomic_load_explicit(&c->status, memory_order_relaxed);

	if (status == SHADOW_CHUNK_OK && op_cancelled(op))
		status = SHADOW_CHUNK_CANCELED;
	if (status == SHADOW_CHUNK_OK)
		__atomic_fetch_add(&op->bytes_out, c->region->raw_nbytes, __ATOMIC_RELAXED);
	c->op = NULL;
	/* The chunk buffer is free again: tell the fetch threads. */
	shadow__pool_put(pl->buf_pool, NULL, c->rx);
	for (uint32_t i = 0; i < pl->n_fetch; i++)
		doorbell_ring(&pl->threads[i].bell);
	op_chunk_done(pl, op, idx, status);
}

/* Plan a decoded chunk's copy into its staging area and hand it to the copy threads. */
static void chunk_to_copy(struct pl_chunk *c)
{
	struct shadow__pipeline *pl = c->pl;
	struct pl_region *r = c->region;
	const struct pl_stage_layout *s = &r->stage;
	const uint32_t *blocks = c->op->block_ids + (uint64_t)c->idx * r->bpc;
	void *obj = c;
	int rc;

	c->plan = (struct shadow__copy_plan){
		.runs = (struct shadow_copy_run *)(void *)(c->stage + s->off_runs),
		.max_runs = s->plan_runs,
		.rects = (struct shadow__copy_rect *)(void *)(c->stage + s->off_rects),
		.max_rects = s->plan_rects,
	};
	rc = shadow__copy_plan_chunk(&r->layout, &r->geom, blocks, r->bpc, s->frame_pitch,
				     (struct shadow_copy_run *)(void *)(c->stage +
									 s->off_scratch_runs),
				     (struct shadow__copy_rect *)(void *)(c->stage +
									   s->off_scratch_rects),
				     r->max_runs, &c->plan);
	if (rc < 0) {
		SHADOW_ASSERT(0); /* the layout was validated and the arrays sized for it */
		chunk_fail(c, SHADOW_CHUNK_ERROR);
		chunk_finish(c);
		return;
	}
	/* The ring holds every chunk: it cannot be full. */
	if (shadow__ring_mp_enqueue_bulk(pl->copyq, &obj, 1) != 1) {
		SHADOW_ASSERT(0);
		chunk_fail(c, SHADOW_CHUNK_ERROR);
		chunk_finish(c);
		return;
	}
	doorbell_ring(&pl->copy_bell);
}

/*
 * Drop one reference (the GET's or a frame's). The last one ends the chunk's decode: every
 * frame of a chunk still OK has been decoded, so it goes to the copy threads; any other
 * chunk is finished here.
 */
static void chunk_release(struct pl_chunk *c)
{
	/* acq_rel: the last one sees every frame's decode into the staging area. */
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (atomic_load_explicit(&c->status, memory_order_relaxed) == SHADOW_CHUNK_OK &&
	    !op_cancelled(c->op))
		chunk_to_copy(c);
	else
		chunk_finish(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Fetch threads                                                                              */
/* ------------------------------------------------------------------------------------------ */

static int status_of_store(int rc)
{
	switch (rc) {
	case 0:
		return SHADOW_CHUNK_OK;
	case SHADOW_EMISS:
		return SHADOW_CHUNK_MISS;
	case -ETIMEDOUT:
		return SHADOW_CHUNK_TIMEOUT;
	case -ECANCELED:
		return SHADOW_CHUNK_CANCELED;
	case SHADOW_ECORRUPT:
		return SHADOW_CHUNK_CORRUPT;
	default:
		return SHADOW_CHUNK_ERROR;
	}
}

/* Hand every frame whose payload lies within the first `landed` bytes to decode. */
static void chunk_release_frames(struct pl_chunk *c, uint64_t landed)
{
	struct shadow__pipeline *pl = c->pl;
	uint32_t released = 0;

	while (c->frames_released < c->view.n_frames) {
		struct shadow_frame_info fi;
		struct pl_frame *f = &c->frames[c->frames_released];

		if (shadow_chunk_frame_info(&c->view, c->frames_released, &fi) < 0 ||
		    fi.payload_offset + fi.payload_nbytes > landed)
			break;
		f->chunk = c;
		f->frame = c->frames_released;
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
		void *obj = f;
		/* The ring holds every frame of every chunk in flight: it cannot be full. */
		if (shadow__ring_mp_enqueue_bulk(pl->decode, &obj, 1) != 1) {
			SHADOW_ASSERT(0);
			chunk_fail(c, SHADOW_CHUNK_ERROR);
			atomic_fetch_sub_explicit(&c->refs, 1, memory_order_relaxed);
			break;
		}
		c->frames_released++;
		released++;
	}
	if (released > 0)
		doorbell_ring_n(&pl->decode_bell, released);
}

/* on_data of a chunk's GET: parse the metadata once it is in, then release frames. */
static void chunk_on_data(struct shadow_store_req *req, uint64_t value_nbytes, uint64_t landed)
{
	struct pl_chunk *c = req->user;
	struct shadow__op *op = c->op;
	int rc;

	(void)value_nbytes;
	if (atomic_load_explicit(&c->status, memory_order_relaxed) != SHADOW_CHUNK_OK)
		goto stop; /* a frame of it failed on a decode thread */
	if (!c->peeked) {
		uint64_t total;
		if (landed < SHADOW_CHUNK_HEADER_NBYTES)
			return;
		rc = shadow_chunk_peek(c->rx, landed, &c->meta_nbytes, &total);
		if (rc < 0 || total != req->value_nbytes)
			goto corrupt;
		c->peeked = true;
	}
	if (!c->parsed) {
		if (landed < c->meta_nbytes)
			return;
		rc = shadow_chunk_parse(c->rx, landed, &op->keys[c->idx], &c->region->geom,
					&c->view);
		if (rc < 0 || c->view.chunk_index != op->first_chunk_index + c->idx ||
		    c->view.n_tokens != c->region->geom.chunk_tokens) {
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "chunk %s: %s", c->key_text,
					       rc < 0 ? shadow_strerror(rc) :
							"wrong chunk index or token count");
			goto corrupt;
		}
		c->parsed = true;
	}
	chunk_release_frames(c, landed);
	return;
corrupt:
	chunk_fail(c, SHADOW_CHUNK_CORRUPT);
stop:
	/* The rest of the value is of no use: stop reading it. The chunk keeps its first
	 * failure; the GET completes with -ECANCELED. */
	(void)shadow_store_cancel(c->owner->store, req);
}

static void chunk_on_done(struct shadow_store_req *req)
{
	struct pl_chunk *c = req->user;
	struct shadow__pipeline *pl = c->pl;

	c->owner = NULL;
	st_add(pl, ST_NS_FETCH, shadow__now_ns() - c->t0_ns);
	if (req->status == 0) {
		st_add(pl, ST_BYTES_IN, req->value_nbytes);
		__atomic_fetch_add(&c->op->bytes_in, req->value_nbytes, __ATOMIC_RELAXED);
		/* Everything landed: every frame must have been released by now. */
		if (!c->parsed || c->frames_released != c->view.n_frames)
			chunk_fail(c, SHADOW_CHUNK_CORRUPT);
	} else {
		if (req->status == SHADOW_ELIMIT)
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
					       "chunk %s: %llu bytes, larger than a receive buffer",
					       c->key_text, (unsigned long long)req->value_nbytes);
		chunk_fail(c, status_of_store(req->status));
	}
	chunk_release(c); /* the GET's reference */
}

/* Start the next chunk of t->cur if a chunk buffer is free. Returns false if it could not. */
static bool fetch_start_chunk(struct pl_thread *t)
{
	struct shadow__pipeline *pl = t->pl;
	struct shadow__op *op = t->cur;
	void *buf;

	if (shadow__pool_get(pl->buf_pool, NULL, &buf) < 0)
		return false;
	struct pl_chunk *c = &pl->chunks[shadow__pool_slot_index(pl->buf_pool, buf)];
	uint32_t idx = atomic_fetch_add_explicit(&op->p.next_chunk, 1, memory_order_relaxed);

	SHADOW_ASSERT(idx < op->n_chunks); /* only this thread advances its op's cursor */
	if (idx + 1 == op->n_chunks)
		t->cur = NULL; /* every chunk started */
	c->op = op;
	c->region = &pl->regions[op->region];
	c->idx = idx;
	c->peeked = c->parsed = false;
	c->frames_released = 0;
	atomic_store_explicit(&c->refs, 1, memory_order_relaxed);
	atomic_store_explicit(&c->status, SHADOW_CHUNK_OK, memory_order_relaxed);
	c->t0_ns = shadow__now_ns();

	if (op_cancelled(op) || (op->deadline_ns != 0 && c->t0_ns >= op->deadline_ns)) {
		chunk_fail(c, op_cancelled(op) ? SHADOW_CHUNK_CANCELED : SHADOW_CHUNK_TIMEOUT);
		chunk_release(c);
		return true;
	}
	shadow_key_format(&op->keys[idx], pl->key_prefix, c->key_text, sizeof(c->key_text));
	c->iov.iov_base = c->rx;
	c->iov.iov_len = pl->cfg.rx_nbytes;
	memset(&c->req, 0, sizeof(c->req));
	c->req.op = SHADOW_STORE_GET;
	c->req.key = c->key_text;
	c->req.iov = &c->iov;
	c->req.iov_count = 1;
	c->req.deadline_ns = op->deadline_ns;
	c->req.on_data = chunk_on_data;
	c->req.on_done = chunk_on_done;
	c->req.user = c;
	c->owner = t;
	int rc = shadow_store_submit(t->store, &c->req);
	if (rc < 0) {
		c->owner = NULL;
		chunk_fail(c, SHADOW_CHUNK_ERROR);
		chunk_release(c);
	}
	return true;
}

static void lookup_done(struct shadow_store_req *req)
{
	struct pl_thread *t = req->user;
	struct shadow__op *op = t->lookup_op;

	t->lookup_op = NULL;
	op->status = req->status < 0 ? req->status : 0;
	op->n_found = req->status == 0 ? req->n_found : 0;
	op_finish(t->pl, op);
}

/* LOOKUP: one EXISTS over the op's keys (at most SHADOW_STORE_EXISTS_MAX of them). */
static void lookup_start(struct pl_thread *t, struct shadow__op *op)
{
	struct shadow__pipeline *pl = t->pl;
	uint32_t n = SHADOW_MIN(op->n_chunks, SHADOW_STORE_EXISTS_MAX);

	for (uint32_t i = 0; i < n; i++) {
		shadow_key_format(&op->keys[i], pl->key_prefix, t->lookup_text[i],
				  SHADOW_STORE_KEY_MAX);
		t->lookup_keys[i] = t->lookup_text[i];
	}
	t->lookup_op = op;
	memset(&t->lookup_req, 0, sizeof(t->lookup_req));
	t->lookup_req.op = SHADOW_STORE_EXISTS;
	t->lookup_req.keys = t->lookup_keys;
	t->lookup_req.n_keys = n;
	t->lookup_req.deadline_ns = op->deadline_ns;
	t->lookup_req.on_done = lookup_done;
	t->lookup_req.user = t;
	int rc = shadow_store_submit(t->store, &t->lookup_req);
	if (rc < 0) {
		t->lookup_op = NULL;
		op->status = rc;
		op->n_found = 0;
		op_finish(pl, op);
	}
}

static bool buffers_free(struct shadow__pipeline *pl)
{
	struct shadow__pool_stats s;

	shadow__pool_stats(pl->buf_pool, &s);
	return s.n_available > 0;
}

static bool fetch_has_work(struct pl_thread *t)
{
	struct shadow__pipeline *pl = t->pl;

	if (t->cur == NULL && t->lookup_op == NULL && shadow__ring_count(pl->ops) > 0)
		return true;
	return t->cur != NULL && buffers_free(pl);
}

/*
 * Cancel this thread's GETs of cancelled ops (or all of them when stopping), so that a
 * cancelled op finishes without waiting for its bytes. Runs when cancel_epoch moved.
 */
static void fetch_cancel_scan(struct pl_thread *t, bool all)
{
	struct shadow__pipeline *pl = t->pl;

	for (uint32_t i = 0; i < pl->n_chunks; i++) {
		struct pl_chunk *c = &pl->chunks[i];
		if (c->owner == t && (all || op_cancelled(c->op)))
			(void)shadow_store_cancel(t->store, &c->req);
	}
}

static void *fetch_main(void *arg)
{
	struct pl_thread *t = arg;
	struct shadow__pipeline *pl = t->pl;
	uint32_t epoch = 0;
	struct epoll_event ev[4];

	for (;;) {
		bool stopping = atomic_load_explicit(&pl->stopping, memory_order_acquire);
		uint32_t e = atomic_load_explicit(&pl->cancel_epoch, memory_order_acquire);

		if (e != epoch) {
			epoch = e;
			fetch_cancel_scan(t, stopping);
		}
		/* One op at a time per thread: its chunks start in order. */
		if (t->cur == NULL && t->lookup_op == NULL) {
			void *obj;
			if (shadow__ring_mc_dequeue_bulk(pl->ops, &obj, 1) == 1) {
				struct shadow__op *op = obj;
				if (stopping)
					atomic_store_explicit(&op->p.cancelled, 1, memory_order_relaxed);
				if (op->kind == SHADOW__OP_LOOKUP)
					lookup_start(t, op);
				else
					t->cur = op;
			}
		}
		while (t->cur != NULL && fetch_start_chunk(t))
			;
		if (shadow_store_poll(t->store, 0) > 0 || fetch_has_work(t))
			continue;
		if (stopping && t->cur == NULL && t->lookup_op == NULL) {
			struct shadow_store_stats s = { .size = sizeof(s) };
			shadow_store_stats(t->store, &s);
			if (s.in_flight == 0 && shadow__ring_count(pl->ops) == 0)
				break;
		}
		/* Sleep on the doorbell and the store's fd together (doorbell_wait's protocol). */
		atomic_fetch_add_explicit(&t->bell.sleepers, 1, memory_order_relaxed);
		atomic_thread_fence(memory_order_seq_cst);
		if (!fetch_has_work(t) &&
		    atomic_load_explicit(&pl->cancel_epoch, memory_order_relaxed) == epoch) {
			int n = epoll_wait(t->epfd, ev, 4, stopping ? 10 : 100);
			for (int i = 0; i < n; i++) {
				uint64_t v;
				if (ev[i].data.u32 == 1)
					(void)!read(t->bell.efd, &v, sizeof(v));
			}
		}
		atomic_fetch_sub_explicit(&t->bell.sleepers, 1, memory_order_relaxed);
	}
	atomic_fetch_sub_explicit(&pl->fetchers_alive, 1, memory_order_release);
	doorbell_ring_all(&pl->decode_bell, pl->n_decode);
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Decode threads                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* Stopping, a decode thread leaves only once no fetch thread can release more frames. */
static bool decode_may_exit(struct shadow__pipeline *pl)
{
	return atomic_load_explicit(&pl->stopping, memory_order_acquire) &&
	       atomic_load_explicit(&pl->fetchers_alive, memory_order_acquire) == 0;
}

static bool decode_ready(void *arg)
{
	struct shadow__pipeline *pl = arg;

	return decode_may_exit(pl) || shadow__ring_count(pl->decode) > 0;
}

static struct shadow_codec *thread_codec(struct pl_thread *t, struct pl_region *r)
{
	uint32_t id = (uint32_t)(r - t->pl->regions);

	if (t->codecs[id] != NULL)
		return t->codecs[id];
	if (shadow_codec_create(&r->geom, &t->codecs[id]) < 0)
		return NULL;
	if (t->pl->cfg.transform != NULL)
		(void)shadow_codec_set_transform(t->codecs[id], t->pl->cfg.transform);
	return t->codecs[id];
}

static void decode_one(struct pl_thread *t, struct pl_frame *f)
{
	struct shadow__pipeline *pl = t->pl;
	struct pl_chunk *c = f->chunk;
	struct pl_region *r = c->region;
	uint64_t t0;
	int rc;

	if (atomic_load_explicit(&c->status, memory_order_relaxed) != SHADOW_CHUNK_OK ||
	    op_cancelled(c->op)) {
		chunk_release(c); /* skipped */
		return;
	}
	struct shadow_codec *codec = thread_codec(t, r);
	if (codec == NULL) {
		chunk_fail(c, SHADOW_CHUNK_ERROR);
		chunk_release(c);
		return;
	}
	t0 = shadow__now_ns();
	rc = shadow_chunk_decode_frame(codec, &c->view, f->frame, &r->layout,
				       c->stage + (uint64_t)f->frame * r->stage.frame_pitch,
				       r->frame_nbytes);
	st_add(pl, ST_NS_DECODE, shadow__now_ns() - t0);
	if (rc < 0) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "chunk %s frame %u: %s", c->key_text,
				       f->frame, shadow_strerror(rc));
		chunk_fail(c, rc == SHADOW_ECORRUPT ? SHADOW_CHUNK_CORRUPT : SHADOW_CHUNK_ERROR);
	}
	chunk_release(c); /* the last frame's thread plans the chunk's copy */
}

static void *decode_main(void *arg)
{
	struct pl_thread *t = arg;
	struct shadow__pipeline *pl = t->pl;

	for (;;) {
		void *obj;
		if (shadow__ring_mc_dequeue_bulk(pl->decode, &obj, 1) == 1) {
			decode_one(t, obj);
			continue;
		}
		if (decode_may_exit(pl)) {
			/* A fetch thread may have released a frame between the dequeue above and
			 * its exit: look once more now that none is alive (acquire), or that
			 * frame's chunk would never finish. */
			if (shadow__ring_count(pl->decode) == 0)
				break;
			continue;
		}
		doorbell_wait(&pl->decode_bell, decode_ready, pl, 100);
	}
	atomic_fetch_sub_explicit(&pl->decoders_alive, 1, memory_order_release);
	doorbell_ring_all(&pl->copy_bell, pl->n_copy);
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Copy thread                                                                                */
/* ------------------------------------------------------------------------------------------ */

/*
 * A thread's copy contexts, one per backend. The CUDA one is made on the first GPU region the
 * thread meets, not before: a host-only daemon never initialises CUDA.
 */
struct pl_ctxs {
	struct shadow__copy_ctx *host, *cuda;
	const struct shadow__copy_ops *cuda_ops;
	uint32_t peers; /* threads of this one's kind, each with contexts of its own */
};

static void ctxs_init(struct pl_ctxs *x, uint32_t peers)
{
	memset(x, 0, sizeof(*x));
	x->peers = peers;
	if (shadow__copy_host_ops.ctx_create(peers, &x->host) < 0)
		x->host = NULL;
}

/* The context for region r's backend, or NULL if it cannot be made (logged). */
static struct shadow__copy_ctx *ctxs_for(struct pl_ctxs *x, const struct pl_region *r)
{
	if (r->ops == &shadow__copy_host_ops)
		return x->host;
	if (x->cuda == NULL) {
		x->cuda_ops = r->ops;
		if (x->cuda_ops->ctx_create(x->peers, &x->cuda) < 0)
			x->cuda = NULL;
	}
	return x->cuda;
}

static void ctxs_fini(struct pl_ctxs *x)
{
	if (x->host != NULL)
		shadow__copy_host_ops.ctx_destroy(x->host);
	if (x->cuda != NULL)
		x->cuda_ops->ctx_destroy(x->cuda);
}

static bool copy_ready(void *arg)
{
	struct shadow__pipeline *pl = arg;

	return atomic_load_explicit(&pl->stopping, memory_order_relaxed) ||
	       shadow__ring_count(pl->copyq) > 0;
}

/* Reap every finished copy of this thread's context; how many. */
static uint32_t copy_reap(struct pl_thread *t, const struct shadow__copy_ops *ops)
{
	struct shadow__pipeline *pl = t->pl;
	void *users[32];
	int statuses[32];
	uint32_t n, total = 0;

	while ((n = ops->reap(t->copy, users, statuses, 32)) > 0) {
		uint64_t now = shadow__now_ns();
		for (uint32_t i = 0; i < n; i++) {
			struct pl_chunk *c = users[i];
			st_add(pl, ST_NS_COPY, now - c->t_copy_ns);
			if (statuses[i] < 0)
				chunk_fail(c, SHADOW_CHUNK_ERROR);
			else
				st_add(pl, ST_BYTES_DECODED, c->region->raw_nbytes);
			chunk_finish(c);
		}
		total += n;
	}
	return total;
}

/*
 * Every copy thread serves every region, each through contexts of its own; regions share a
 * backend kind per process in practice (all host or all cuda), and each backend keeps its own
 * context here. A thread reaps only the jobs it submitted.
 */
static void *copy_main(void *arg)
{
	struct pl_thread *t = arg;
	struct shadow__pipeline *pl = t->pl;
	struct pl_ctxs x;

	ctxs_init(&x, pl->n_copy);
	for (;;) {
		void *obj;
		bool did = false;

		while (shadow__ring_mc_dequeue_bulk(pl->copyq, &obj, 1) == 1) {
			struct pl_chunk *c = obj;
			struct pl_region *r = c->region;
			struct shadow__copy_ctx *ctx = ctxs_for(&x, r);
			const struct shadow__copy_ops *ops = r->ops;
			struct shadow__copy_job job = {
				.region = r->cr,
				.src = c->stage,
				.runs = c->plan.runs,
				.n_runs = (uint32_t)c->plan.n_runs,
				.rects = c->plan.rects,
				.n_rects = (uint32_t)c->plan.n_rects,
				.user = c,
			};
			int rc;

			did = true;
			if (ctx == NULL) {
				chunk_fail(c, SHADOW_CHUNK_ERROR);
				chunk_finish(c);
				continue;
			}
			c->t_copy_ns = shadow__now_ns();
			t->copy = ctx;
			while ((rc = ops->submit(ctx, &job)) == -EAGAIN) {
				(void)ops->flush(ctx); /* its errors come back through reap */
				/* Every job slot in flight: wait for the oldest without spinning on
				 * event queries, which take the CUDA driver's locks that the other
				 * copy threads need to issue. */
				if (copy_reap(t, ops) == 0)
					shadow__sleep_ns(20 * SHADOW_NS_PER_US);
			}
			if (rc < 0) {
				chunk_fail(c, SHADOW_CHUNK_ERROR);
				chunk_finish(c);
			}
		}
		/* The burst is queued: one flush issues it (one batched copy on a GPU). */
		if (x.cuda != NULL)
			(void)x.cuda_ops->flush(x.cuda);
		if (x.cuda != NULL) {
			t->copy = x.cuda;
			copy_reap(t, x.cuda_ops);
		}
		if (x.host != NULL) {
			t->copy = x.host;
			copy_reap(t, &shadow__copy_host_ops);
		}
		if (did)
			continue;
		bool busy = x.cuda != NULL && x.cuda_ops->in_flight(x.cuda) > 0;
		if (atomic_load_explicit(&pl->stopping, memory_order_acquire) && !busy &&
		    atomic_load_explicit(&pl->decoders_alive, memory_order_acquire) == 0 &&
		    shadow__ring_count(pl->copyq) == 0)
			break;
		if (busy)
			shadow__sleep_ns(20 * SHADOW_NS_PER_US); /* copies in flight: poll events */
		else
			doorbell_wait(&pl->copy_bell, copy_ready, pl, 100);
	}
	t->copy = NULL;
	ctxs_fini(&x);
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Save threads                                                                               */
/* ------------------------------------------------------------------------------------------ */

static bool save_ready(void *arg)
{
	struct shadow__pipeline *pl = arg;

	return atomic_load_explicit(&pl->stopping, memory_order_relaxed) ||
	       shadow__ring_count(pl->saves) > 0;
}

/*
 * The chunk's blocks, gathered frame by frame into t->save_raw as a compact region with the
 * source's block-internal order: frame (l, kv) at (2l + kv) * frame_nbytes, block i of the
 * chunk at i * block bytes within it. Fills *lay with the layout that describes it.
 */
static int save_gather(struct pl_thread *t, struct pl_region *r, const uint32_t *blocks,
		       struct shadow_kv_layout *lay)
{
	const struct shadow_kv_geometry *g = &r->geom;
	uint64_t es = shadow_dtype_nbytes(g->dtype);
	uint64_t vec = g->head_dim * es;
	uint64_t block = (uint64_t)g->block_tokens * g->n_kv_heads * vec;
	bool token_major = r->layout.head_stride <= r->layout.token_stride;
	/* save_enc is page aligned (pool carving) and free until the encode: run scratch. */
	struct shadow_copy_run *runs = (struct shadow_copy_run *)(void *)t->save_enc;
	size_t n_runs;
	int rc;

	memset(lay, 0, sizeof(*lay));
	lay->region_nbytes = r->raw_nbytes;
	lay->n_layers = g->n_layers;
	lay->n_blocks = r->bpc;
	lay->block_stride = (int64_t)block;
	lay->elem_stride = (int64_t)es;
	lay->token_stride = (int64_t)(token_major ? g->n_kv_heads * vec : vec);
	lay->head_stride = (int64_t)(token_major ? vec : g->block_tokens * vec);
	for (uint32_t l = 0; l < g->n_layers; l++) {
		for (uint32_t kv = 0; kv < 2; kv++)
			lay->base[l][kv] = (2 * l + kv) * r->frame_nbytes;
	}
	for (uint32_t fr = 0; fr < 2 * g->n_layers; fr++) {
		rc = shadow_layout_plan_frame(&r->layout, g, fr / 2, fr % 2, blocks, r->bpc, runs,
					      r->max_runs, &n_runs);
		if (rc < 0)
			return rc;
		/* Runs hold (image offset, region offset): read() wants the image offset shifted
		 * to this frame's place in save_raw. */
		for (size_t i = 0; i < n_runs; i++)
			runs[i].src_offset += fr * r->frame_nbytes;
		rc = r->ops->read(t->copy, r->cr, runs, (uint32_t)n_runs, t->save_raw);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int save_chunk(struct pl_thread *t, struct shadow__op *op, uint32_t i)
{
	struct shadow__pipeline *pl = t->pl;
	struct pl_region *r = &pl->regions[op->region];
	struct shadow_kv_layout lay;
	size_t n = 0;
	int rc;

	if (op_cancelled(op))
		return SHADOW_CHUNK_CANCELED;
	if (op->deadline_ns != 0 && shadow__now_ns() >= op->deadline_ns)
		return SHADOW_CHUNK_TIMEOUT;
	rc = save_gather(t, r, op->block_ids + (uint64_t)i * r->bpc, &lay);
	if (rc < 0)
		return SHADOW_CHUNK_ERROR;
	struct shadow_codec *codec = thread_codec(t, r);
	if (codec == NULL)
		return SHADOW_CHUNK_ERROR;
	uint64_t t0 = shadow__now_ns();
	rc = shadow_chunk_encode(codec, &pl->save_opts, &op->keys[i], op->first_chunk_index + i,
				 t->save_raw, &lay, t->save_ids, t->save_enc, pl->cfg.rx_nbytes, &n);
	st_add(pl, ST_NS_SAVE, shadow__now_ns() - t0);
	if (rc < 0) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "save: encode: %s", shadow_strerror(rc));
		return SHADOW_CHUNK_ERROR;
	}
	char key[SHADOW_STORE_KEY_MAX];
	shadow_key_format(&op->keys[i], pl->key_prefix, key, sizeof(key));
	struct iovec iov = { t->save_enc, n };
	struct shadow_store_req req = { .op = SHADOW_STORE_PUT, .key = key, .iov = &iov,
					.iov_count = 1, .deadline_ns = op->deadline_ns };
	rc = shadow_store_submit(t->store, &req);
	if (rc == 0)
		rc = shadow_store_wait(t->store, &req);
	if (rc < 0)
		return status_of_store(rc) == SHADOW_CHUNK_OK ? SHADOW_CHUNK_ERROR : status_of_store(rc);
	st_add(pl, ST_BYTES_SAVED, n);
	__atomic_fetch_add(&op->bytes_out, n, __ATOMIC_RELAXED);
	return SHADOW_CHUNK_OK;
}

static void *save_main(void *arg)
{
	struct pl_thread *t = arg;
	struct shadow__pipeline *pl = t->pl;
	struct pl_ctxs x;

	ctxs_init(&x, pl->n_save);
	for (;;) {
		void *obj;
		if (shadow__ring_mc_dequeue_bulk(pl->saves, &obj, 1) == 1) {
			struct shadow__op *op = obj;
			struct pl_region *r = &pl->regions[op->region];
			t->copy = ctxs_for(&x, r);
			/* The op is the caller's again once its last chunk is done: n_chunks is
			 * read before that. */
			const uint32_t n = op->n_chunks;
			for (uint32_t i = 0; i < n; i++) {
				int st = t->copy == NULL ? SHADOW_CHUNK_ERROR : save_chunk(t, op, i);
				op_chunk_done(pl, op, i, st);
			}
			continue;
		}
		if (atomic_load_explicit(&pl->stopping, memory_order_acquire))
			break;
		doorbell_wait(&pl->save_bell, save_ready, pl, -1);
	}
	t->copy = NULL;
	ctxs_fini(&x);
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Set-up                                                                                     */
/* ------------------------------------------------------------------------------------------ */

void shadow__pipeline_config_default(struct shadow__pipeline_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	shadow_store_options_default(&cfg->store_opts);
	cfg->pool_nbytes = UINT64_C(1) << 30;
	cfg->stage_nbytes = UINT64_C(64) << 20;
	cfg->rx_nbytes = UINT64_C(64) << 20;
	cfg->fetch_threads = 1;
	cfg->decode_threads = 2;
	cfg->copy_threads = 1;
	cfg->save_threads = 1;
}

enum pl_role { PL_FETCH, PL_DECODE, PL_COPY, PL_SAVE };

/* The role of thread i of a pipeline with these counts (creation order: fetch, decode, copy,
 * save). */
static enum pl_role thread_role(const struct shadow__pipeline_config *cfg, uint32_t i)
{
	if (i < cfg->fetch_threads)
		return PL_FETCH;
	i -= cfg->fetch_threads;
	if (i < cfg->decode_threads)
		return PL_DECODE;
	i -= cfg->decode_threads;
	return i < cfg->copy_threads ? PL_COPY : PL_SAVE;
}

static uint32_t thread_count(const struct shadow__pipeline_config *cfg)
{
	return cfg->fetch_threads + cfg->decode_threads + cfg->copy_threads + cfg->save_threads;
}

/* Whether each thread gets a CPU of its own: the set has one for every thread. */
static bool threads_apart(const struct shadow__pipeline_config *cfg)
{
	return cfg->cpus != NULL && (uint32_t)CPU_COUNT(cfg->cpus) >= thread_count(cfg);
}

/*
 * Apart, a busy thread never shares a CPU with another: floating, a thread woken through a
 * doorbell is often placed on its waker's CPU for a while (the scheduler's wake-affine
 * placement), and on the GPU host two busy threads sharing a vCPU showed as rows at 0.69 of
 * their bound (bench/pipeline). With fewer CPUs than threads the scheduler balances better
 * than a fixed assignment could.
 */
bool shadow__pipeline_thread_cpus(const struct shadow__pipeline_config *cfg, uint32_t i,
				  cpu_set_t *set_ret)
{
	if (cfg->cpus == NULL)
		return false;
	int cpu = threads_apart(cfg) ? shadow__cpuset_nth(cfg->cpus, i) : -1;

	if (cpu < 0) {
		*set_ret = *cfg->cpus;
		return true;
	}
	CPU_ZERO(set_ret);
	CPU_SET(cpu, set_ret);
	return true;
}

static void thread_fini(struct pl_thread *t)
{
	for (uint32_t i = 0; i < PL_REGIONS_MAX; i++)
		shadow_codec_free(t->codecs[i]);
	shadow_store_close(t->store);
	doorbell_fini(&t->bell);
	if (t->epfd >= 0)
		close(t->epfd);
	free(t->lookup_text);
	free(t->save_ids);
}

/* Per-thread resources made before the thread starts (so a failure is reported by create). */
static int thread_prepare(struct shadow__pipeline *pl, struct pl_thread *t, bool fetch, bool save)
{
	int rc;

	t->pl = pl;
	t->epfd = -1;
	t->bell.efd = -1;
	if (!fetch && !save)
		return 0;
	rc = shadow_store_open(pl->cfg.store_url, &pl->cfg.store_opts, &t->store);
	if (rc < 0)
		return rc;
	if (!fetch) {
		t->save_ids = malloc(SHADOW_MAX_CHUNK_TOKENS * sizeof(*t->save_ids));
		if (t->save_ids == NULL)
			return -ENOMEM;
		for (uint32_t b = 0; b < SHADOW_MAX_CHUNK_TOKENS; b++)
			t->save_ids[b] = b;
		return 0;
	}
	t->lookup_text = calloc(SHADOW_STORE_EXISTS_MAX, SHADOW_STORE_KEY_MAX);
	if (t->lookup_text == NULL)
		return -ENOMEM;
	rc = doorbell_init(&t->bell);
	if (rc < 0)
		return rc;
	t->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (t->epfd < 0)
		return -errno;
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = 1 };
	if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->bell.efd, &ev) < 0)
		return -errno;
	int sfd = shadow_store_fd(t->store);
	ev.data.u32 = 2;
	if (sfd >= 0 && epoll_ctl(t->epfd, EPOLL_CTL_ADD, sfd, &ev) < 0)
		return -errno;
	return 0;
}

/* Split the pool: save buffers, then chunk buffers (a receive buffer and a staging area each). */
static int pool_carve(struct shadow__pipeline *pl)
{
	const struct shadow__pipeline_config *c = &pl->cfg;
	uint64_t save = (uint64_t)c->save_threads * 2 * c->rx_nbytes;
	uint64_t buf = c->rx_nbytes + c->stage_nbytes;
	uint64_t min = save + buf;
	int rc;

	if (c->pool_nbytes < min) {
		SHADOW_LOGE("pipeline: pool of %llu MiB is below the %llu MiB that %u save "
			    "thread(s) and one chunk buffer (receive + staging) need",
			    (unsigned long long)(c->pool_nbytes >> 20),
			    (unsigned long long)((min + (1 << 20) - 1) >> 20), c->save_threads);
		return -EINVAL;
	}
	pl->n_chunks = (uint32_t)SHADOW_MIN((uint64_t)PL_CHUNKS_MAX, (c->pool_nbytes - save) / buf);
	pl->mem_nbytes = (size_t)c->pool_nbytes;
	rc = shadow__copy_pool_alloc(pl->mem_nbytes, c->pinned, &pl->mem);
	if (rc < 0)
		return rc;
	uint8_t *p = pl->mem;
	for (uint32_t i = 0; i < pl->n_threads; i++) {
		struct pl_thread *t = &pl->threads[i];
		if (thread_role(c, t->index) != PL_SAVE)
			continue;
		t->save_raw = p;
		t->save_enc = p + c->rx_nbytes;
		p += 2 * c->rx_nbytes;
	}
	return shadow__pool_create_on(&pl->buf_pool, p, pl->n_chunks * buf, (size_t)buf,
				      pl->n_chunks, PL_BUF_ALIGN);
}

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 2;

	while (p < n)
		p <<= 1;
	return p;
}

static void *(*const thread_main[])(void *) = {
	[PL_FETCH] = fetch_main, [PL_DECODE] = decode_main, [PL_COPY] = copy_main,
	[PL_SAVE] = save_main,
};

int shadow__pipeline_create(const struct shadow__pipeline_config *cfg,
			    struct shadow__pipeline **pl_ret)
{
	struct shadow__pipeline *pl;
	int rc;

	if (cfg == NULL || cfg->store_url == NULL || cfg->fetch_threads < 1 ||
	    cfg->decode_threads < 1 || cfg->copy_threads < 1 || cfg->save_threads < 1 ||
	    cfg->fetch_threads > PL_THREADS_MAX || cfg->decode_threads > PL_THREADS_MAX ||
	    cfg->copy_threads > PL_THREADS_MAX || cfg->save_threads > PL_THREADS_MAX ||
	    thread_count(cfg) > PL_THREADS_MAX ||
	    cfg->stage_nbytes < 4096 || cfg->rx_nbytes < 4096 || cfg->stage_nbytes % 4096 != 0 ||
	    cfg->rx_nbytes % 4096 != 0) {
		SHADOW_LOGE("pipeline: bad configuration (threads 1..%u, buffers multiples of 4 KiB)",
			    PL_THREADS_MAX);
		return -EINVAL;
	}
	pl = calloc(1, sizeof(*pl));
	if (pl == NULL)
		return -ENOMEM;
	pl->cfg = *cfg; /* store_url, the caller's string, is used until the threads are set up */
	pl->decode_bell.efd = pl->copy_bell.efd = pl->save_bell.efd = -1;
	pthread_mutex_init(&pl->regions_lock, NULL);
	char probe[SHADOW_STORE_KEY_MAX];
	rc = shadow_key_format(&(struct shadow_chunk_key){ { 0 } }, cfg->key_prefix, probe,
			       sizeof(probe)); /* validates the prefix */
	if (rc < 0) {
		SHADOW_LOGE("pipeline: bad key prefix");
		goto fail;
	}
	snprintf(pl->key_prefix, sizeof(pl->key_prefix), "%s",
		 cfg->key_prefix != NULL ? cfg->key_prefix : SHADOW_DEFAULT_KEY_PREFIX);
	rc = shadow_codec_options_parse(cfg->save_scheme != NULL ? cfg->save_scheme :
								   "bf16planes+zstd1",
					&pl->save_opts);
	if (rc < 0) {
		SHADOW_LOGE("pipeline: save scheme '%s': %s", cfg->save_scheme, shadow_strerror(rc));
		goto fail;
	}

	pl->n_fetch = cfg->fetch_threads;
	pl->n_decode = cfg->decode_threads;
	pl->n_copy = cfg->copy_threads;
	pl->n_save = cfg->save_threads;
	pl->n_threads = thread_count(cfg);
	atomic_init(&pl->fetchers_alive, pl->n_fetch);
	atomic_init(&pl->decoders_alive, pl->n_decode);
	pl->threads = calloc(pl->n_threads, sizeof(*pl->threads));
	if (pl->threads == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < pl->n_threads; i++) {
		pl->threads[i].index = i;
		pl->threads[i].epfd = -1;
		pl->threads[i].bell.efd = -1;
	}
	rc = pool_carve(pl);
	if (rc < 0)
		goto fail;
	pl->chunks = calloc(pl->n_chunks, sizeof(*pl->chunks));
	if (pl->chunks == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	/* Ring sizes (powers of two): every op, every frame of every chunk in flight, every
	 * chunk: so no enqueue can find its ring full. */
	rc = shadow__ring_create(&pl->ops, SHADOW__OPS_MAX);
	if (rc == 0)
		rc = shadow__ring_create(&pl->saves, SHADOW__OPS_MAX);
	if (rc == 0)
		rc = shadow__ring_create(&pl->decode, pow2_at_least(pl->n_chunks * PL_FRAMES_MAX));
	if (rc == 0)
		rc = shadow__ring_create(&pl->copyq, pow2_at_least(pl->n_chunks));
	if (rc == 0)
		rc = doorbell_init(&pl->decode_bell);
	if (rc == 0)
		rc = doorbell_init(&pl->copy_bell);
	if (rc == 0)
		rc = doorbell_init(&pl->save_bell);
	if (rc < 0)
		goto fail;
	for (uint32_t i = 0; i < pl->n_chunks; i++) {
		pl->chunks[i].pl = pl;
		pl->chunks[i].rx = shadow__pool_slot_ptr(pl->buf_pool, i);
		pl->chunks[i].stage = pl->chunks[i].rx + cfg->rx_nbytes;
	}
	for (uint32_t i = 0; i < pl->n_threads; i++) {
		enum pl_role role = thread_role(cfg, i);
		rc = thread_prepare(pl, &pl->threads[i], role == PL_FETCH, role == PL_SAVE);
		if (rc < 0)
			goto fail;
	}
	pl->cfg.store_url = NULL;
	pl->cfg.cpus = NULL; /* likewise */
	for (uint32_t i = 0; i < pl->n_threads; i++) {
		struct pl_thread *t = &pl->threads[i];
		pthread_attr_t attr;
		cpu_set_t set;

		rc = -pthread_attr_init(&attr);
		if (rc < 0)
			goto fail;
		/* Pinned from its first instruction: it never runs outside the set. */
		if (shadow__pipeline_thread_cpus(cfg, i, &set))
			rc = -pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
		if (rc == 0)
			rc = -pthread_create(&t->tid, &attr, thread_main[thread_role(cfg, i)], t);
		pthread_attr_destroy(&attr);
		if (rc < 0) {
			SHADOW_LOGE("pipeline: cannot start a thread%s: %s",
				    cfg->cpus != NULL ? " inside the CPU set" : "", shadow_strerror(rc));
			goto fail;
		}
		t->started = true;
	}
	SHADOW_LOGI("pipeline: %u chunk buffers (%llu KiB receive + %llu KiB staging), "
		    "%u fetch / %u decode / %u copy / %u save threads%s%s",
		    pl->n_chunks, (unsigned long long)(cfg->rx_nbytes >> 10),
		    (unsigned long long)(cfg->stage_nbytes >> 10), pl->n_fetch, pl->n_decode,
		    pl->n_copy, pl->n_save, cfg->pinned ? ", pinned" : "",
		    cfg->cpus == NULL ? "" : threads_apart(cfg) ? ", one CPU each" :
							      ", floating in the CPU set");
	*pl_ret = pl;
	return 0;
fail:
	shadow__pipeline_destroy(pl);
	return rc;
}

void shadow__pipeline_destroy(struct shadow__pipeline *pl)
{
	if (pl == NULL)
		return;
	atomic_store_explicit(&pl->stopping, true, memory_order_release);
	atomic_fetch_add_explicit(&pl->cancel_epoch, 1, memory_order_release);
	/* Fetch threads first: they cancel what is in flight and drain the op ring. */
	for (uint32_t i = 0; i < pl->n_fetch && pl->threads != NULL; i++) {
		struct pl_thread *t = &pl->threads[i];
		if (t->bell.efd >= 0)
			doorbell_ring_all(&t->bell, 1);
		if (t->started)
			pthread_join(t->tid, NULL);
		t->started = false;
	}
	if (pl->decode_bell.efd >= 0)
		doorbell_ring_all(&pl->decode_bell, pl->n_decode + 1);
	if (pl->copy_bell.efd >= 0)
		doorbell_ring_all(&pl->copy_bell, pl->n_copy);
	if (pl->save_bell.efd >= 0)
		doorbell_ring_all(&pl->save_bell, pl->n_save);
	for (uint32_t i = 0; i < pl->n_threads && pl->threads != NULL; i++) {
		struct pl_thread *t = &pl->threads[i];
		if (t->started)
			pthread_join(t->tid, NULL);
		thread_fini(t);
	}
	/* Save ops never picked up: complete them. */
	void *obj;
	while (pl->saves != NULL && shadow__ring_mc_dequeue_bulk(pl->saves, &obj, 1) == 1) {
		struct shadow__op *op = obj;
		for (uint32_t i = 0; i < op->n_chunks; i++)
			op_chunk_done(pl, op, i, SHADOW_CHUNK_CANCELED);
	}
	for (uint32_t i = 0; i < PL_REGIONS_MAX; i++) {
		if (pl->regions[i].used)
			pl->regions[i].ops->region_close(pl->regions[i].cr);
	}
	shadow__ring_free(pl->ops);
	shadow__ring_free(pl->saves);
	shadow__ring_free(pl->decode);
	shadow__ring_free(pl->copyq);
	doorbell_fini(&pl->decode_bell);
	doorbell_fini(&pl->copy_bell);
	doorbell_fini(&pl->save_bell);
	shadow__pool_free(pl->buf_pool);
	if (pl->mem != NULL)
		shadow__copy_pool_free(pl->mem, pl->mem_nbytes, pl->cfg.pinned);
	free(pl->chunks);
	free(pl->threads);
	pthread_mutex_destroy(&pl->regions_lock);
	free(pl);
}

/* ------------------------------------------------------------------------------------------ */
/* Regions                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static uint64_t stage_align(uint64_t n)
{
	return (n + PL_STAGE_ALIGN - 1) & ~(uint64_t)(PL_STAGE_ALIGN - 1);
}

/*
 * Lay out *s, a staging area for region r (frame_nbytes, n_layers and max_runs set): the frames
 * at a fixed pitch, then the copy plan's runs and rectangles, then the planner's scratch (one
 * frame's runs and rectangles). Returns the bytes it needs. The sizes are bounded by the
 * geometry limits (frames < 2^32 bytes, max_runs <= chunk tokens x heads), so no sum wraps.
 */
static uint64_t stage_layout(const struct pl_region *r, struct pl_stage_layout *s)
{
	uint64_t n_frames = 2 * (uint64_t)r->geom.n_layers;

	s->frame_pitch = stage_align(r->frame_nbytes);
	s->plan_runs = n_frames * r->max_runs;
	s->plan_rects = (uint64_t)r->geom.n_layers * r->max_runs;
	s->off_runs = n_frames * s->frame_pitch;
	s->off_rects = stage_align(s->off_runs + s->plan_runs * sizeof(struct shadow_copy_run));
	s->off_scratch_runs = stage_align(s->off_rects +
					  s->plan_rects * sizeof(struct shadow__copy_rect));
	s->off_scratch_rects = stage_align(s->off_scratch_runs +
					   r->max_runs * sizeof(struct shadow_copy_run));
	return s->off_scratch_rects + r->max_runs * sizeof(struct shadow__copy_rect);
}

/*
 * Fill r's sizes from its geometry and layout (both set, the layout validated): blocks per
 * chunk, frame and chunk bytes, the most runs a frame needs, and its staging area's layout,
 * whose size goes to *stage_nbytes_ret. 0, -ENOMEM, or the planner's error.
 */
static int region_size(struct pl_region *r, uint64_t *stage_nbytes_ret)
{
	r->bpc = r->geom.chunk_tokens / r->geom.block_tokens;
	r->frame_nbytes = shadow_geometry_frame_nbytes(&r->geom);
	r->raw_nbytes = 2 * (uint64_t)r->geom.n_layers * r->frame_nbytes;
	/* The most runs a frame can need: every block on its own (block ids may repeat, so no
	 * two blocks of a chunk are assumed adjacent). */
	uint32_t *zeros = calloc(r->bpc, sizeof(*zeros));
	size_t n_runs = 0;
	if (zeros == NULL)
		return -ENOMEM;
	int rc = shadow_layout_plan_frame(&r->layout, &r->geom, 0, SHADOW_KV_K, zeros, r->bpc,
					  NULL, 0, &n_runs);
	free(zeros);
	if (rc < 0 && rc != -ENOBUFS)
		return rc;
	r->max_runs = (uint32_t)n_runs;
	*stage_nbytes_ret = stage_layout(r, &r->stage);
	return 0;
}

int shadow__pipeline_stage_size(const struct shadow_kv_geometry *geom,
				const struct shadow_kv_layout *layout, uint64_t *stage_nbytes_ret,
				uint64_t *frame_pitch_ret)
{
	struct pl_region r;
	uint64_t need;
	int rc;

	if (geom == NULL || layout == NULL || stage_nbytes_ret == NULL || frame_pitch_ret == NULL)
		return -EINVAL;
	rc = shadow_layout_validate(layout, geom);
	if (rc < 0)
		return rc;
	memset(&r, 0, sizeof(r));
	r.geom = *geom;
	r.layout = *layout;
	rc = region_size(&r, &need);
	if (rc < 0)
		return rc;
	*stage_nbytes_ret = (need + 4095) & ~(uint64_t)4095;
	*frame_pitch_ret = r.stage.frame_pitch;
	return 0;
}

int shadow__pipeline_region_add(struct shadow__pipeline *pl, const struct shadow__region_spec *spec,
				uint32_t *id_ret)
{
	const struct shadow__copy_ops *ops = &shadow__copy_host_ops;
	struct pl_region r = { 0 };
	int rc;

	if (pl == NULL || spec == NULL || id_ret == NULL)
		return -EINVAL;
	rc = shadow_layout_validate(&spec->layout, &spec->geom);
	if (rc < 0)
		return rc;
	if (spec->mem.nbytes != spec->layout.region_nbytes)
		return -EINVAL;
	if (spec->mem.kind == SHADOW__COPY_CUDA) {
		rc = shadow__copy_cuda_ops(&ops);
		if (rc < 0)
			return rc;
	} else if (spec->mem.kind != SHADOW__COPY_HOST) {
		return -EINVAL;
	}
	r.geom = spec->geom;
	r.layout = spec->layout;
	r.ops = ops;
	uint64_t need;
	rc = region_size(&r, &need);
	if (rc < 0)
		return rc;
	if (need > pl->cfg.stage_nbytes || r.raw_nbytes > pl->cfg.rx_nbytes ||
	    (uint64_t)r.max_runs * sizeof(struct shadow_copy_run) > pl->cfg.rx_nbytes) {
		SHADOW_LOGE("pipeline: region needs %llu-byte staging areas and receive buffers "
			    "of at least %llu bytes (its chunk's KV, and the save path's copy "
			    "runs); have %llu and %llu", (unsigned long long)need,
			    (unsigned long long)SHADOW_MAX(r.raw_nbytes, (uint64_t)r.max_runs *
						   sizeof(struct shadow_copy_run)),
			    (unsigned long long)pl->cfg.stage_nbytes,
			    (unsigned long long)pl->cfg.rx_nbytes);
		return SHADOW_ELIMIT;
	}
	rc = ops->region_open(&spec->mem, &r.cr);
	if (rc < 0)
		return rc;

	pthread_mutex_lock(&pl->regions_lock);
	uint32_t id = 0;
	while (id < PL_REGIONS_MAX && pl->regions[id].used)
		id++;
	if (id == PL_REGIONS_MAX) {
		pthread_mutex_unlock(&pl->regions_lock);
		ops->region_close(r.cr);
		return SHADOW_ELIMIT;
	}
	r.used = true;
	/* The threads read a region only through ops submitted after this unlock. */
	struct pl_region *slot = &pl->regions[id];
	slot->used = r.used;
	slot->removing = false;
	slot->bpc = r.bpc;
	slot->max_runs = r.max_runs;
	slot->frame_nbytes = r.frame_nbytes;
	slot->stage = r.stage;
	slot->raw_nbytes = r.raw_nbytes;
	slot->geom = r.geom;
	slot->layout = r.layout;
	slot->ops = r.ops;
	slot->cr = r.cr;
	atomic_store_explicit(&slot->refs, 1, memory_order_release);
	pthread_mutex_unlock(&pl->regions_lock);
	*id_ret = id;
	return 0;
}

int shadow__pipeline_region_remove(struct shadow__pipeline *pl, uint32_t id)
{
	struct pl_region *r;

	if (pl == NULL || id >= PL_REGIONS_MAX)
		return -ENOENT;
	pthread_mutex_lock(&pl->regions_lock);
	r = &pl->regions[id];
	if (!r->used || r->removing) {
		pthread_mutex_unlock(&pl->regions_lock);
		return -ENOENT;
	}
	r->removing = true; /* submit refuses new ops on it from now on */
	pthread_mutex_unlock(&pl->regions_lock);

	/* Ops still on it finish; the caller (shadowd) cancels its client's ops first. */
	while (atomic_load_explicit(&r->refs, memory_order_acquire) > 1)
		shadow__sleep_ns(SHADOW_NS_PER_MS);
	r->ops->region_close(r->cr);
	for (uint32_t i = pl->n_fetch; i < pl->n_threads; i++) {
		/* Codecs are per region and thread; the threads create them lazily and only
		 * for regions that are in use, so it is safe to drop them here: no op on this
		 * region is in flight. */
		struct pl_thread *t = &pl->threads[i];
		shadow_codec_free(t->codecs[id]);
		t->codecs[id] = NULL;
	}
	pthread_mutex_lock(&pl->regions_lock);
	r->used = false;
	r->removing = false;
	pthread_mutex_unlock(&pl->regions_lock);
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Operations                                                                                 */
/* ------------------------------------------------------------------------------------------ */

int shadow__pipeline_submit(struct shadow__pipeline *pl, struct shadow__op *op)
{
	struct pl_region *r = NULL;

	if (pl == NULL || op == NULL || op->on_done == NULL || op->keys == NULL ||
	    op->n_chunks < 1 || op->n_chunks > SHADOW__OP_CHUNKS_MAX)
		return -EINVAL;
	if (op->kind != SHADOW__OP_LOOKUP) {
		if ((op->kind != SHADOW__OP_FETCH && op->kind != SHADOW__OP_SAVE) ||
		    op->block_ids == NULL || op->chunk_status == NULL)
			return -EINVAL;
		if (op->region >= PL_REGIONS_MAX)
			return -ENOENT;
		pthread_mutex_lock(&pl->regions_lock);
		r = &pl->regions[op->region];
		if (!r->used || r->removing) {
			pthread_mutex_unlock(&pl->regions_lock);
			return -ENOENT;
		}
		atomic_fetch_add_explicit(&r->refs, 1, memory_order_acq_rel);
		pthread_mutex_unlock(&pl->regions_lock);
		/* Every block id of every chunk must be a block of the region. */
		for (uint64_t i = 0; i < (uint64_t)op->n_chunks * r->bpc; i++) {
			if (op->block_ids[i] >= r->layout.n_blocks) {
				region_put(r);
				return -EINVAL;
			}
		}
		if (op->first_chunk_index > UINT32_MAX - op->n_chunks) {
			region_put(r);
			return -EINVAL;
		}
	}
	op->n_found = op->n_ok = 0;
	op->bytes_in = op->bytes_out = 0;
	op->status = 0;
	atomic_store_explicit(&op->p.chunks_left, op->n_chunks, memory_order_relaxed);
	atomic_store_explicit(&op->p.next_chunk, 0, memory_order_relaxed);
	atomic_store_explicit(&op->p.cancelled, 0, memory_order_relaxed);

	void *obj = op;
	struct shadow__ring *ring = op->kind == SHADOW__OP_SAVE ? pl->saves : pl->ops;
	/* release: the op's fields before the consumer reads them (the ring's own order). */
	if (shadow__ring_mp_enqueue_bulk(ring, &obj, 1) != 1) {
		if (r != NULL)
			region_put(r);
		return -EBUSY;
	}
	if (op->kind == SHADOW__OP_SAVE) {
		doorbell_ring(&pl->save_bell);
	} else {
		for (uint32_t i = 0; i < pl->n_fetch; i++)
			doorbell_ring(&pl->threads[i].bell);
	}
	return 0;
}

void shadow__pipeline_cancel(struct shadow__pipeline *pl, struct shadow__op *op)
{
	atomic_store_explicit(&op->p.cancelled, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&pl->cancel_epoch, 1, memory_order_release);
	for (uint32_t i = 0; i < pl->n_fetch; i++)
		doorbell_ring_all(&pl->threads[i].bell, 1);
}

void shadow__pipeline_stats(struct shadow__pipeline *pl, struct shadow__pipeline_stats *s)
{
	struct shadow__pool_stats ps;

#define LD(i) atomic_load_explicit(&pl->st[i], memory_order_relaxed)
	memset(s, 0, sizeof(*s));
	s->ops_done = LD(ST_OPS);
	s->chunks_ok = LD(ST_OK);
	s->chunks_miss = LD(ST_MISS);
	s->chunks_corrupt = LD(ST_CORRUPT);
	s->chunks_timeout = LD(ST_TIMEOUT);
	s->chunks_error = LD(ST_ERROR);
	s->chunks_canceled = LD(ST_CANCELED);
	s->bytes_in = LD(ST_BYTES_IN);
	s->bytes_decoded = LD(ST_BYTES_DECODED);
	s->bytes_saved = LD(ST_BYTES_SAVED);
	s->ns_fetch = LD(ST_NS_FETCH);
	s->ns_decode = LD(ST_NS_DECODE);
	s->ns_copy = LD(ST_NS_COPY);
	s->ns_save = LD(ST_NS_SAVE);
#undef LD
	shadow__pool_stats(pl->buf_pool, &ps);
	s->chunks_total = pl->n_chunks;
	s->chunks_free = ps.n_available;
}
