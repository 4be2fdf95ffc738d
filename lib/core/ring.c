/* ring.c - ring setup and teardown; the operations are inline in ring.h (DESIGN there). */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "core/alloc.h"
#include "core/ring.h"

SHADOW_STATIC_ASSERT(offsetof(struct shadow__ring, prod) % SHADOW_CACHE_LINE == 0 &&
			     offsetof(struct shadow__ring, cons) -
					     offsetof(struct shadow__ring, prod) >=
				     2 * SHADOW_CACHE_LINE &&
			     offsetof(struct shadow__ring, slots) -
					     offsetof(struct shadow__ring, cons) >=
				     2 * SHADOW_CACHE_LINE,
		     "producer and consumer indices need their own cache lines, with guards");

static bool shadow_ring_capacity_ok(uint32_t capacity)
{
	return capacity >= 2 && capacity <= SHADOW_RING_CAPACITY_MAX && shadow_is_pow2(capacity);
}

size_t shadow__ring_memsize(uint32_t capacity)
{
	uint64_t nbytes;

	if (!shadow_ring_capacity_ok(capacity))
		return 0;
	if (!shadow_mul_u64(capacity, sizeof(void *), &nbytes) ||
	    !shadow_add_u64(nbytes, sizeof(struct shadow__ring), &nbytes) || nbytes > SIZE_MAX)
		return 0;
	return (size_t)nbytes;
}

int shadow__ring_init(struct shadow__ring *r, uint32_t capacity)
{
	if (!shadow_ring_capacity_ok(capacity) || shadow__ring_memsize(capacity) == 0 ||
	    ((uintptr_t)r & (SHADOW_CACHE_LINE - 1)) != 0)
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	r->capacity = capacity;
	r->mask = capacity - 1;
	/* Plain init: the ring is not shared yet (ring.h says how to publish it). */
	atomic_init(&r->prod.head, 0);
	atomic_init(&r->prod.tail, 0);
	atomic_init(&r->cons.head, 0);
	atomic_init(&r->cons.tail, 0);
	return 0;
}

int shadow__ring_create(struct shadow__ring **ring_ret, uint32_t capacity)
{
	size_t nbytes = shadow__ring_memsize(capacity);
	struct shadow__ring *r;
	int rc;

	if (nbytes == 0)
		return -EINVAL;
	r = shadow__alloc_aligned(nbytes, SHADOW_CACHE_LINE);
	if (r == NULL)
		return -ENOMEM;
	rc = shadow__ring_init(r, capacity);
	if (rc < 0) {
		shadow__free_aligned(r);
		return rc;
	}
	*ring_ret = r;
	return 0;
}

void shadow__ring_free(struct shadow__ring *r)
{
	shadow__free_aligned(r);
}
