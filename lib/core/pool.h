/*
 * pool.h - fixed-size slot pool: the data plane's only hot-path allocator (after DPDK's
 * rte_mempool).
 *
 * DESIGN
 *
 * Memory. All n_slots slots are carved from one contiguous block, either a region the pool maps
 * itself (shadow__pool_create) or memory the caller owns (shadow__pool_create_on: later a pinned
 * cudaHostAlloc() block, so that every slot can be a DMA source or target). The slot stride is
 * slot_nbytes rounded up to `align`, and slot i starts at base + i * stride:
 *
 *	base                                                   base + n_slots * stride
 *	| slot 0   pad | slot 1   pad | ... | slot n-1   pad |
 *
 * The pool descriptor and its free list come from the heap, not from that block, so the block
 * holds nothing but slots and can be registered with a device as a whole.
 *
 * Free slots. Every free slot is on one lock-free LIFO stack (a Treiber stack): a next-slot
 * index per slot, and a top word holding the top slot's index with a 32-bit tag that every
 * push and pop bumps, changed by compare-and-swap. The tag is what makes a pop safe against
 * ABA (the top popped and pushed back by others between a pop's read and its swap): it would
 * take 2^32 operations inside that window to fool it. LIFO, not FIFO, so that the slot put
 * back last, still warm in some core's cache, is the next one handed out, and a pool used far
 * below its size keeps cycling through the same few slots: bench/pipeline measured a decoder
 * writing frame after frame into slots cycled FIFO through a 256 MiB pool at 12-32% below the
 * same decoder writing into one warm image (docs/results.md, "Data-plane pipeline"). The
 * stack costs a compare-and-swap and an atomic add on one shared line per get or put, bulk or
 * not: a bulk get walks n links from the top and swaps the top past them in one go (all or
 * none: other threads never see part of it taken), a bulk put links its slots first and
 * swaps them on in one go. A slot is always in exactly one place: the stack, one cache, or
 * with the one owner that got it.
 *
 * Caches. A struct shadow__pool_cache is a small stack of free slot pointers in front of the
 * shared stack, owned by one thread at a time (usually one per worker, living in the worker's
 * state), so a get or put that hits it touches no shared cache line. A get on an empty cache
 * refills it with a burst of size/2 from the shared stack; a put on a full cache pushes its
 * oldest size/2 entries back, keeping the recently used, cache-warm slots. Slots held in caches
 * are not available to other threads: size a pool with n_threads * cache size of headroom, and
 * flush a cache (shadow__pool_cache_flush) when its thread goes idle or exits. A NULL cache
 * goes straight to the shared stack and may be used from any thread.
 *
 * Threading. shadow__pool_get/put and their bulk forms may be called from any number of threads
 * at once, each with its own cache or with NULL. A cache must not be used by two threads at the
 * same time (handing it over needs the usual happens-before, e.g. a mutex or a thread join).
 * Creation and shadow__pool_free() are not concurrent with anything else on the pool.
 *
 * Ownership. The thread that got a slot owns it until it puts it back; whoever it hands the slot
 * to (through a ring, say) owns it after. Slot contents are not cleared. Putting a slot twice, or
 * a pointer that is not a slot of this pool, is a bug: SHADOW_TESTING builds assert on both (each
 * slot has an in-use byte there), release builds corrupt the pool.
 *
 * Memory order: a push's compare-and-swap is a release, a pop reads the top and swaps it with
 * acquire (so the next index it reads is the one the top's pusher wrote; the swaps between
 * continue that push's release sequence). They order a slot's last use by the thread that put
 * it before its first use by the thread that gets it; caches add nothing, being
 * single-threaded.
 */
#ifndef SHADOW_CORE_POOL_H
#define SHADOW_CORE_POOL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/alloc.h"
#include "core/common.h"

#define SHADOW_POOL_CACHE_MAX 64u
#define SHADOW_POOL_SLOTS_MAX (UINT32_C(1) << 31) /* index + 1 fits the top word's low half */
/* Largest slot alignment. */
#define SHADOW_POOL_ALIGN_MAX SHADOW_REGION_HUGE_NBYTES

struct shadow__pool {
	uint8_t *base;       /* slot 0 */
	size_t slot_nbytes;  /* the stride: requested size rounded up to align */
	size_t align;
	size_t mem_nbytes;   /* n_slots * slot_nbytes */
	uint32_t n_slots;
	int stride_shift;    /* log2(slot_nbytes) if a power of two, else -1 */
	struct shadow__region region; /* the pool's own block; addr NULL when on caller memory */
	_Atomic uint32_t *free_next; /* per slot: index + 1 of the free slot under it, 0: none */
	_Atomic uint8_t *in_use; /* SHADOW_TESTING: 1 per slot held by a user, else NULL */
	/* The top of the free stack: tag << 32 | (top slot's index + 1), 0 in the low half when
	 * empty; and how many slots it holds. On a line of their own, apart from the read-mostly
	 * fields above: every get and put changes both. */
	_Alignas(SHADOW_CACHE_LINE) _Atomic uint64_t free_top;
	_Atomic uint32_t n_free; /* a snapshot for statistics, never below the true count */
};

/* Owned by one thread at a time; see DESIGN. Initialise with shadow__pool_cache_init(). */
struct shadow__pool_cache {
	struct shadow__pool *pool;
	uint32_t size; /* 2 .. SHADOW_POOL_CACHE_MAX */
	uint32_t len;  /* free slots held, objs[0] oldest */
	void *objs[SHADOW_POOL_CACHE_MAX];
};

struct shadow__pool_stats {
	uint32_t n_slots;
	size_t slot_nbytes;  /* stride */
	uint32_t n_available; /* on the shared stack: a snapshot, not counting slots in caches */
	void *base;          /* the slot block, for registering it with a device */
	size_t mem_nbytes;
};

/*
 * A pool of n_slots slots of slot_nbytes bytes each, aligned to `align` (a power of two up to
 * SHADOW_POOL_ALIGN_MAX; 0 means SHADOW_CACHE_LINE), in one region of its own. flags are
 * SHADOW_REGION_* flags (alloc.h), e.g. SHADOW_REGION_POPULATE. Every slot is free at the start.
 * Returns 0; -EINVAL for slot_nbytes 0, n_slots 0 or above SHADOW_POOL_SLOTS_MAX, a bad align
 * or unknown flags; -ENOMEM (also when the total size overflows) or another -errno from mmap.
 */
int shadow__pool_create(struct shadow__pool **pool_ret, size_t slot_nbytes, uint32_t n_slots,
			size_t align, unsigned flags) SHADOW_INTERNAL;

/*
 * The same on caller memory: `mem` must be aligned to `align` and hold n_slots strides
 * (mem_nbytes >= n_slots * round_up(slot_nbytes, align)), else -EINVAL. The caller keeps
 * ownership of mem and frees it after shadow__pool_free().
 */
int shadow__pool_create_on(struct shadow__pool **pool_ret, void *mem, size_t mem_nbytes,
			   size_t slot_nbytes, uint32_t n_slots, size_t align) SHADOW_INTERNAL;

/*
 * Free the pool, and its region if it owns one. Slots still held by users or caches become
 * invalid; caches must not be used after. NULL is accepted.
 */
void shadow__pool_free(struct shadow__pool *pool) SHADOW_INTERNAL;

/* Set up an empty cache of `size` (2 .. SHADOW_POOL_CACHE_MAX) for pool. 0 or -EINVAL. */
int shadow__pool_cache_init(struct shadow__pool_cache *cache, struct shadow__pool *pool,
			    uint32_t size) SHADOW_INTERNAL;

/* Return every slot in the cache to the pool's shared stack. */
void shadow__pool_cache_flush(struct shadow__pool *pool, struct shadow__pool_cache *cache)
	SHADOW_INTERNAL;

/*
 * Get n slots into objs, all or none (through cache if not NULL). Returns 0, or -ENOBUFS if
 * fewer than n are free on the shared stack plus this cache (other caches may still hold some).
 */
int shadow__pool_get_bulk(struct shadow__pool *pool, struct shadow__pool_cache *cache,
			  void **objs, uint32_t n) SHADOW_INTERNAL;

/* Put n slots back (through cache if not NULL). Cannot fail. */
void shadow__pool_put_bulk(struct shadow__pool *pool, struct shadow__pool_cache *cache,
			   void *const *objs, uint32_t n) SHADOW_INTERNAL;

void shadow__pool_stats(struct shadow__pool *pool, struct shadow__pool_stats *stats_ret)
	SHADOW_INTERNAL;

#if defined(SHADOW_TESTING)
/* The test-build checks behind the inline functions below: ownership, alignment, double put. */
void shadow__pool_check_got(struct shadow__pool *pool, void *slot) SHADOW_INTERNAL;
void shadow__pool_check_put(struct shadow__pool *pool, void *slot) SHADOW_INTERNAL;
#endif

/* Whether ptr is the start of one of the pool's slots. */
static inline bool shadow__pool_owns(const struct shadow__pool *pool, const void *ptr)
{
	uintptr_t p = (uintptr_t)ptr, b = (uintptr_t)pool->base;

	return p >= b && p - b < pool->mem_nbytes && (p - b) % pool->slot_nbytes == 0;
}

/* Index (0 .. n_slots-1) of a slot of this pool. */
static inline uint32_t shadow__pool_slot_index(const struct shadow__pool *pool, const void *slot)
{
	uintptr_t off = (uintptr_t)slot - (uintptr_t)pool->base;

	SHADOW_ASSERT(shadow__pool_owns(pool, slot));
	if (pool->stride_shift >= 0)
		return (uint32_t)(off >> pool->stride_shift);
	return (uint32_t)(off / pool->slot_nbytes);
}

/* The slot with index idx (< n_slots). */
static inline void *shadow__pool_slot_ptr(const struct shadow__pool *pool, uint32_t idx)
{
	SHADOW_ASSERT(idx < pool->n_slots);
	return pool->base + (size_t)idx * pool->slot_nbytes;
}

/* Get one slot into *slot_ret. Returns 0 or -ENOBUFS (see shadow__pool_get_bulk). */
static inline int shadow__pool_get(struct shadow__pool *pool, struct shadow__pool_cache *cache,
				   void **slot_ret)
{
	if (cache != NULL && shadow_likely(cache->len > 0)) {
		SHADOW_ASSERT(cache->pool == pool);
		*slot_ret = cache->objs[--cache->len];
#if defined(SHADOW_TESTING)
		shadow__pool_check_got(pool, *slot_ret);
#endif
		return 0;
	}
	return shadow__pool_get_bulk(pool, cache, slot_ret, 1);
}

/* Put one slot back. */
static inline void shadow__pool_put(struct shadow__pool *pool, struct shadow__pool_cache *cache,
				    void *slot)
{
	if (cache != NULL && shadow_likely(cache->len < cache->size)) {
		SHADOW_ASSERT(cache->pool == pool);
#if defined(SHADOW_TESTING)
		shadow__pool_check_put(pool, slot);
#endif
		cache->objs[cache->len++] = slot;
		return;
	}
	shadow__pool_put_bulk(pool, cache, &slot, 1);
}

#endif /* SHADOW_CORE_POOL_H */
