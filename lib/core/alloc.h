/*
 * alloc.h - aligned heap allocations, and large anonymous regions for pools and staging
 * buffers.
 *
 * The data plane never calls these per item: they run when a pool, a ring or a staging buffer
 * is created. Every failure is returned (NULL with errno, or -errno), never an abort.
 */
#ifndef SHADOW_CORE_ALLOC_H
#define SHADOW_CORE_ALLOC_H

#include <stddef.h>

#include "core/common.h"

/*
 * nbytes bytes aligned to `align` (a power of two; values below sizeof(void *) are raised to
 * it). Free with shadow__free_aligned(). Returns NULL with errno EINVAL (nbytes 0, align not a
 * power of two) or ENOMEM. Thread-safe.
 */
void *shadow__alloc_aligned(size_t nbytes, size_t align) SHADOW_INTERNAL;

/* Frees a shadow__alloc_aligned() block; NULL is accepted. */
void shadow__free_aligned(void *ptr) SHADOW_INTERNAL;

/* Regions at least this large are rounded up to it and advised for transparent huge pages. */
#define SHADOW_REGION_HUGE_NBYTES ((size_t)2 << 20)

/* shadow__region_alloc() flags. */
#define SHADOW_REGION_POPULATE (1u << 0) /* fault every page in now, not on first touch */
#define SHADOW_REGION_NO_HUGE (1u << 1)  /* never ask for huge pages */
#define SHADOW_REGION_FLAGS_ALL (SHADOW_REGION_POPULATE | SHADOW_REGION_NO_HUGE)

/*
 * An anonymous private mapping, zero-filled. `addr` is page-aligned, and 2 MiB-aligned when
 * huge pages were requested. The struct is a plain value owned by the caller; the memory is
 * valid until shadow__region_free().
 */
struct shadow__region {
	void *addr;
	size_t nbytes;     /* as requested */
	size_t map_nbytes; /* as mapped: nbytes rounded up to the page, or to 2 MiB when huge */
	bool huge_requested; /* madvise(MADV_HUGEPAGE) was asked for */
	bool huge_advised;   /* ... and the kernel accepted it (THP may still not back it all) */
};

/*
 * Map nbytes of anonymous memory into *r. Regions of SHADOW_REGION_HUGE_NBYTES or more are
 * rounded up to a multiple of 2 MiB, mapped 2 MiB-aligned and advised MADV_HUGEPAGE (best
 * effort: a kernel without THP still gives the region), unless SHADOW_REGION_NO_HUGE.
 * SHADOW_REGION_POPULATE pre-faults the pages after the advice, so that they are huge where
 * possible. Returns 0; -EINVAL for nbytes 0 or unknown flags; -ENOMEM or another -errno from
 * mmap. *r is untouched on failure.
 */
int shadow__region_alloc(struct shadow__region *r, size_t nbytes, unsigned flags) SHADOW_INTERNAL;

/* Unmap a region and zero *r; a zeroed or already freed region is accepted. */
void shadow__region_free(struct shadow__region *r) SHADOW_INTERNAL;

#endif /* SHADOW_CORE_ALLOC_H */
