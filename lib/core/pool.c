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

/* The descriptor and free ring, with every slot of [base, base + mem_nbytes) in the ring. */
static int shadow_pool_setup(struct shadow__pool **pool_ret, uint8_t *base, size_t stride,
			     uint32_t n_slots, size_t align, size_t mem_nbytes)
{
	uint32_t ring_cap = 2;
	struct shadow__pool *pool;
	size_t desc_nbytes = shadow_pool_desc_nbytes();
	int rc;

	while (ring_cap < n_slots)
		ring_cap <<= 1;
	pool = shadow__alloc_aligned(desc_nbytes + shadow__ring_memsize(ring_cap),
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
	pool->free_ring = (struct shadow__ring *)(void *)((uint8_t *)pool + desc_nbytes);
	rc = shadow__ring_init(pool->free_ring, ring_cap);
	if (rc < 0)
		goto err_free_pool;
#if defined(SHADOW_TESTING)
	pool->in_use = shadow__alloc_aligned(n_slots, SHADOW_CACHE_LINE);
	if (pool->in_use == NULL) {
		rc = -ENOMEM;
		goto err_free_pool;
	}
	for (uint32_t i = 0; i < n_slots; i++)
		atomic_init(&pool->in_use[i], 0);
#endif
	/* In index order, so that a fresh pool hands out slot 0, 1, 2, ... */
	for (uint32_t i = 0; i < n_slots; i++) {
		void *slot = base + (size_t)i * stride;
		uint32_t n = shadow__ring_sp_enqueue_bulk(pool->free_ring, &slot, 1);

		SHADOW_ASSERT(n == 1);
		(void)n;
	}
	*pool_ret = pool;
	return 0;

err_free_pool:
	shadow__free_aligned(pool);
	return rc;
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
	uint32_t n;

	SHADOW_ASSERT(cache->pool == pool);
	if (cache->len == 0)
		return;
	/* Cannot fail: the ring has room for every slot (DESIGN). */
	n = shadow__ring_mp_enqueue_bulk(pool->free_ring, cache->objs, cache->len);
	SHADOW_ASSERT(n == cache->len);
	(void)n;
	cache->len = 0;
}

#if defined(SHADOW_TESTING)
void shadow__pool_check_got(struct shadow__pool *pool, void *slot)
{
	uint32_t idx = shadow__pool_slot_index(pool, slot);
	/* relaxed: a diagnostic flag; the ring orders the slot's handover. */
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

/* Refill the cache so that it holds at least n (<= size) slots; false if the ring ran dry. */
static bool shadow_pool_cache_refill(struct shadow__pool *pool, struct shadow__pool_cache *cache,
				     uint32_t n)
{
	uint32_t want = SHADOW_MIN(cache->size - cache->len, n - cache->len + cache->size / 2);

	cache->len += shadow__ring_mc_dequeue_burst(pool->free_ring, cache->objs + cache->len,
						    want);
	return cache->len >= n;
}

int shadow__pool_get_bulk(struct shadow__pool *pool, struct shadow__pool_cache *cache,
			  void **objs, uint32_t n)
{
	SHADOW_ASSERT(cache == NULL || cache->pool == pool);
	if (n == 0)
		return 0;
	if (cache == NULL || n > cache->size) {
		if (shadow__ring_mc_dequeue_bulk(pool->free_ring, objs, n) != n)
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
	uint32_t done;

	SHADOW_ASSERT(cache == NULL || cache->pool == pool);
#if defined(SHADOW_TESTING)
	for (uint32_t i = 0; i < n; i++)
		shadow__pool_check_put(pool, objs[i]);
#endif
	if (n == 0)
		return;
	if (cache == NULL || n > cache->size) {
		/* Cannot fail: the ring has room for every slot (DESIGN). */
		done = shadow__ring_mp_enqueue_bulk(pool->free_ring, objs, n);
		SHADOW_ASSERT(done == n);
		(void)done;
		return;
	}
	if (cache->len + n > cache->size) {
		/* Flush the oldest entries so that about size/2 remain after adding n. */
		uint32_t f = SHADOW_MIN(cache->len, cache->len + n - cache->size / 2);

		done = shadow__ring_mp_enqueue_bulk(pool->free_ring, cache->objs, f);
		SHADOW_ASSERT(done == f);
		(void)done;
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
	stats_ret->n_available = shadow__ring_count(pool->free_ring);
	stats_ret->base = pool->base;
	stats_ret->mem_nbytes = pool->mem_nbytes;
}
