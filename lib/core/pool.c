/* pool.c - slot pool construction, slow paths and test-build checks (DESIGN in pool.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/pool.h"

static size_t shadow_pool_desc_nbytes(void)
{
	return (sizeof(struct shadow__pool) + SHADOW_CACHE_LINE - 1) &
	       ~(size_t)(SHADOW_CACHE_LINE - 1);
}

/* Check the geometry and compute the stride and the block size. */
static int shadow_pool_geometry(size_t slot_nbytes, uint32_t n_slots, size_t *align_inout,
				size_t *stride_ret, size_t *mem_nbytes_ret)
{
	size_t align = *align_inout ? *align_inout : SHADOW_CACHE_LINE;
	size_t stride;
	uint64_t total;

	if (slot_nbytes == 0 || n_slots == 0 || n_slots > SHADOW_POOL_SLOTS_MAX ||
	    !shadow_is_pow2(align) || align > SHADOW_POOL_ALIGN_MAX)
		return -EINVAL;
	if (__builtin_add_overflow(slot_nbytes, align - 1, &stride))
		return -ENOMEM;
	stride &= ~(align - 1);
	if (!shadow_mul_u64(stride, n_slots, &total) || total > SIZE_MAX)
		return -ENOMEM;
	*align_inout = align;
	*stride_ret = stride;
	*mem_nbytes_ret = (size_t)total;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The free stack (DESIGN in pool.h)                                                           */
/* ------------------------------------------------------------------------------------------ */

#define TOP_INDEX(top) ((uint32_t)(top))            /* index + 1; 0: empty */
#define TOP_NEXT(top, index1) ((((top) >> 32) + 1) << 32 | (uint64_t)(index1))

/* A slot's index + 1; 0 for a pointer that is not a slot (a caller's bug: SHADOW_TESTING
 * builds assert on it at put, shadow__pool_check_put; others drop it here rather than write
 * outside free_next). */
static uint32_t slot_index1(const struct shadow__pool *pool, const void *slot)
{
	return shadow__pool_owns(pool, slot) ? shadow__pool_slot_index(pool, slot) + 1 : 0;
}

/* Push n slots in one swap, objs[n - 1] ending on top. */
static void stack_push_n(struct shadow__pool *pool, void *const *objs, uint32_t n)
{
	uint32_t bottom = 0, top1 = 0, pushed = 0;

	/* Link them among themselves first: they are the caller's, no other thread writes their
	 * links (a stale pop may read them: it then fails its swap). */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t idx1 = slot_index1(pool, objs[i]);
		if (idx1 == 0)
			continue;
		if (top1 != 0)
			atomic_store_explicit(&pool->free_next[idx1 - 1], top1, memory_order_relaxed);
		else
			bottom = idx1;
		top1 = idx1;
		pushed++;
	}
	if (pushed == 0)
		return;
	/* Counted before they are on the stack, uncounted after they left: never below zero. */
	atomic_fetch_add_explicit(&pool->n_free, pushed, memory_order_relaxed);
	uint64_t top = atomic_load_explicit(&pool->free_top, memory_order_relaxed);
	do
		atomic_store_explicit(&pool->free_next[bottom - 1], TOP_INDEX(top),
				      memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(&pool->free_top, &top, TOP_NEXT(top, top1),
						      memory_order_release, memory_order_relaxed));
}

/*
 * Pop exactly n slots into objs (the top first), or none (objs untouched): walk n links down
 * from the top, then swap the top past them. Links read while others change the stack may be
 * stale, even out of range; the tag makes the swap fail then, and a walk that runs off the
 * stack means "fewer than n free" only if the top is still the one it started from. Once the
 * swap succeeded the n slots are this thread's and their links stay as they were, so a second
 * walk hands them out.
 */
static bool stack_pop_bulk(struct shadow__pool *pool, void **objs, uint32_t n)
{
	uint64_t top = atomic_load_explicit(&pool->free_top, memory_order_acquire);
	uint32_t idx1;

	if (n == 0)
		return true;
	if (n > pool->n_slots)
		return false;
	for (;;) {
		uint32_t got = 0;

		idx1 = TOP_INDEX(top);
		while (got < n && idx1 != 0 && idx1 <= pool->n_slots) {
			got++;
			idx1 = atomic_load_explicit(&pool->free_next[idx1 - 1], memory_order_relaxed);
		}
		if (got == n) {
			if (atomic_compare_exchange_weak_explicit(&pool->free_top, &top,
								  TOP_NEXT(top, idx1),
								  memory_order_acquire,
								  memory_order_acquire))
				break;
			continue; /* top reloaded */
		}
		uint64_t now = atomic_load_explicit(&pool->free_top, memory_order_acquire);
		if (now == top)
			return false;
		top = now;
	}
	atomic_fetch_sub_explicit(&pool->n_free, n, memory_order_relaxed);
	idx1 = TOP_INDEX(top);
	for (uint32_t i = 0; i < n; i++) {
		objs[i] = shadow__pool_slot_ptr(pool, idx1 - 1);
		idx1 = atomic_load_explicit(&pool->free_next[idx1 - 1], memory_order_relaxed);
	}
	return true;
}

/* Pop up to n slots into objs (the top first); how many. */
static uint32_t stack_pop_burst(struct shadow__pool *pool, void **objs, uint32_t n)
{
	uint32_t avail = atomic_load_explicit(&pool->n_free, memory_order_relaxed);

	/* Ask for what seems free, then for less while that fails: one swap in the usual case. */
	for (uint32_t want = SHADOW_MAX(SHADOW_MIN(n, avail), n > 0 ? 1u : 0u); want > 0;
	     want /= 2)
		if (stack_pop_bulk(pool, objs, want))
			return want;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Construction                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* The descriptor and free stack, with every slot of [base, base + mem_nbytes) on the stack. */
static int shadow_pool_setup(struct shadow__pool **pool_ret, uint8_t *base, size_t stride,
			     uint32_t n_slots, size_t align, size_t mem_nbytes)
{
	struct shadow__pool *pool;
	size_t desc_nbytes = shadow_pool_desc_nbytes();

	pool = shadow__alloc_aligned(desc_nbytes + (size_t)n_slots * sizeof(*pool->free_next),
				     SHADOW_CACHE_LINE);
	if (pool == NULL)
		return -ENOMEM;
	memset(pool, 0, sizeof(*pool));
	pool->base = base;
	pool->slot_nbytes = stride;
	pool->align = align;
	pool->mem_nbytes = mem_nbytes;
	pool->n_slots = n_slots;
	pool->stride_shift = shadow_is_pow2(stride) ? __builtin_ctzll(stride) : -1;
	pool->free_next = (_Atomic uint32_t *)(void *)((uint8_t *)pool + desc_nbytes);
#if defined(SHADOW_TESTING)
	pool->in_use = shadow__alloc_aligned(n_slots, SHADOW_CACHE_LINE);
	if (pool->in_use == NULL) {
		shadow__free_aligned(pool);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n_slots; i++)
		atomic_init(&pool->in_use[i], 0);
#endif
	/* Every slot on the stack, slot 0 on top and each one's next the one after it, so that a
	 * fresh pool hands out slot 0, 1, 2, ... */
	for (uint32_t i = 0; i < n_slots; i++)
		atomic_init(&pool->free_next[i], i + 1 < n_slots ? i + 2 : 0);
	atomic_init(&pool->free_top, 1);
	atomic_init(&pool->n_free, n_slots);
	*pool_ret = pool;
	return 0;
}

int shadow__pool_create(struct shadow__pool **pool_ret, size_t slot_nbytes, uint32_t n_slots,
			size_t align, unsigned flags)
{
	struct shadow__region region;
	size_t stride, mem_nbytes, map_nbytes;
	long page = sysconf(_SC_PAGESIZE);
	uint8_t *base;
	int rc;

	if (flags & ~SHADOW_REGION_FLAGS_ALL)
		return -EINVAL;
	rc = shadow_pool_geometry(slot_nbytes, n_slots, &align, &stride, &mem_nbytes);
	if (rc < 0)
		return rc;
	/* mmap() gives page alignment (2 MiB for huge regions); over-map for larger aligns. */
	map_nbytes = mem_nbytes;
	if (page <= 0 || align > (size_t)page) {
		if (__builtin_add_overflow(mem_nbytes, align, &map_nbytes))
			return -ENOMEM;
	}
	rc = shadow__region_alloc(&region, map_nbytes, flags);
	if (rc < 0) {
		SHADOW_LOGE("pool of %u x %zu bytes: %s", n_slots, stride, shadow_strerror(rc));
		return rc;
	}
	base = (uint8_t *)(((uintptr_t)region.addr + align - 1) & ~(uintptr_t)(align - 1));
	rc = shadow_pool_setup(pool_ret, base, stride, n_slots, align, mem_nbytes);
	if (rc < 0)
		goto err_free_region;
	(*pool_ret)->region = region;
	return 0;

err_free_region:
	shadow__region_free(&region);
	return rc;
}

int shadow__pool_create_on(struct shadow__pool **pool_ret, void *mem, size_t mem_nbytes,
			   size_t slot_nbytes, uint32_t n_slots, size_t align)
{
	size_t stride, need_nbytes;
	int rc;

	rc = shadow_pool_geometry(slot_nbytes, n_slots, &align, &stride, &need_nbytes);
	if (rc == -ENOMEM) /* the caller cannot have passed a block that large */
		rc = -EINVAL;
	if (rc < 0)
		return rc;
	if (mem == NULL || ((uintptr_t)mem & (align - 1)) != 0 || mem_nbytes < need_nbytes)
		return -EINVAL;
	return shadow_pool_setup(pool_ret, mem, stride, n_slots, align, need_nbytes);
}

void shadow__pool_free(struct shadow__pool *pool)
{
	if (pool == NULL)
		return;
	shadow__region_free(&pool->region);
	shadow__free_aligned((void *)pool->in_use);
	shadow__free_aligned(pool);
}

int shadow__pool_cache_init(struct shadow__pool_cache *cache, struct shadow__pool *pool,
			    uint32_t size)
{
	if (size < 2 || size > SHADOW_POOL_CACHE_MAX)
		return -EINVAL;
	cache->pool = pool;
	cache->size = size;
	cache->len = 0;
	return 0;
}

void shadow__pool_cache_flush(struct shadow__pool *pool, struct shadow__pool_cache *cache)
{
	SHADOW_ASSERT(cache->pool == pool);
	stack_push_n(pool, cache->objs, cache->len);
	cache->len = 0;
}

#if defined(SHADOW_TESTING)
void shadow__pool_check_got(struct shadow__pool *pool, void *slot)
{
	uint32_t idx = shadow__pool_slot_index(pool, slot);
	/* relaxed: a diagnostic flag; the stack orders the slot's handover. */
	uint8_t was = atomic_exchange_explicit(&pool->in_use[idx], 1, memory_order_relaxed);

	SHADOW_ASSERT(was == 0 && "a free slot was already in use");
}

void shadow__pool_check_put(struct shadow__pool *pool, void *slot)
{
	SHADOW_ASSERT(shadow__pool_owns(pool, slot) && "put of a pointer that is not a slot");
	uint32_t idx = shadow__pool_slot_index(pool, slot);
	/* relaxed: as above. */
	uint8_t was = atomic_exchange_explicit(&pool->in_use[idx], 0, memory_order_relaxed);

	SHADOW_ASSERT(was == 1 && "slot put twice");
}
#endif

/* Refill the cache so that it holds at least n (<= size) slots; false if the stack ran dry. */
static bool shadow_pool_cache_refill(struct shadow__pool *pool, struct shadow__pool_cache *cache,
				     uint32_t n)
{
	uint32_t want = SHADOW_MIN(cache->size - cache->len, n - cache->len + cache->size / 2);

	/* Popped top first, so reversed: the cache hands out its last entry first. */
	uint32_t got = stack_pop_burst(pool, cache->objs + cache->len, want);
	for (uint32_t i = 0; i < got / 2; i++) {
		void **a = &cache->objs[cache->len + i], **b = &cache->objs[cache->len + got - 1 - i];
		void *tmp = *a;
		*a = *b;
		*b = tmp;
	}
	cache->len += got;
	return cache->len >= n;
}

int shadow__pool_get_bulk(struct shadow__pool *pool, struct shadow__pool_cache *cache,
			  void **objs, uint32_t n)
{
	SHADOW_ASSERT(cache == NULL || cache->pool == pool);
	if (n == 0)
		return 0;
	if (cache == NULL || n > cache->size) {
		if (!stack_pop_bulk(pool, objs, n))
			return -ENOBUFS;
	} else {
		if (cache->len < n && !shadow_pool_cache_refill(pool, cache, n))
			return -ENOBUFS; /* what the refill got stays cached */
		for (uint32_t i = 0; i < n; i++)
			objs[i] = cache->objs[--cache->len];
	}
#if defined(SHADOW_TESTING)
	for (uint32_t i = 0; i < n; i++)
		shadow__pool_check_got(pool, objs[i]);
#endif
	return 0;
}

void shadow__pool_put_bulk(struct shadow__pool *pool, struct shadow__pool_cache *cache,
			   void *const *objs, uint32_t n)
{
	SHADOW_ASSERT(cache == NULL || cache->pool == pool);
#if defined(SHADOW_TESTING)
	for (uint32_t i = 0; i < n; i++)
		shadow__pool_check_put(pool, objs[i]);
#endif
	if (n == 0)
		return;
	if (cache == NULL || n > cache->size) {
		stack_push_n(pool, objs, n);
		return;
	}
	if (cache->len + n > cache->size) {
		/* Push back the oldest entries so that about size/2 remain after adding n. */
		uint32_t f = SHADOW_MIN(cache->len, cache->len + n - cache->size / 2);

		stack_push_n(pool, cache->objs, f);
		cache->len -= f;
		memmove(cache->objs, cache->objs + f, cache->len * sizeof(cache->objs[0]));
	}
	memcpy(cache->objs + cache->len, objs, n * sizeof(objs[0]));
	cache->len += n;
}

void shadow__pool_stats(struct shadow__pool *pool, struct shadow__pool_stats *stats_ret)
{
	stats_ret->n_slots = pool->n_slots;
	stats_ret->slot_nbytes = pool->slot_nbytes;
	stats_ret->n_available = atomic_load_explicit(&pool->n_free, memory_order_relaxed);
	stats_ret->base = pool->base;
	stats_ret->mem_nbytes = pool->mem_nbytes;
}
