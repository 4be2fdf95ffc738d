/* alloc.c - aligned heap blocks and mmap()ed regions (see alloc.h). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"

void *shadow__alloc_aligned(size_t nbytes, size_t align)
{
	void *p = NULL;
	int rc;

	if (nbytes == 0 || !shadow_is_pow2(align)) {
		errno = EINVAL;
		return NULL;
	}
	if (align < sizeof(void *))
		align = sizeof(void *);
	rc = posix_memalign(&p, align, nbytes);
	if (rc != 0) {
		errno = rc;
		return NULL;
	}
	return p;
}

void shadow__free_aligned(void *ptr)
{
	free(ptr);
}

static size_t shadow_page_nbytes(void)
{
	long n = sysconf(_SC_PAGESIZE);

	return n > 0 ? (size_t)n : 4096;
}

/* Round n up to a multiple of the power of two `align`; false on overflow. */
static bool shadow_round_up(size_t n, size_t align, size_t *ret)
{
	size_t r;

	if (__builtin_add_overflow(n, align - 1, &r))
		return false;
	*ret = r & ~(align - 1);
	return true;
}

/* Fault in every page of [addr, addr + nbytes) for writing. */
static void shadow_region_populate(void *addr, size_t nbytes, size_t page)
{
#if defined(MADV_POPULATE_WRITE)
	/* Linux 5.14+: one call, and huge pages stay huge. */
	if (madvise(addr, nbytes, MADV_POPULATE_WRITE) == 0)
		return;
#endif
	/* Anonymous memory is zero, so writing zero changes nothing but the page tables. */
	for (size_t off = 0; off < nbytes; off += page)
		((volatile char *)addr)[off] = 0;
}

int shadow__region_alloc(struct shadow__region *r, size_t nbytes, unsigned flags)
{
	size_t page = shadow_page_nbytes();
	bool huge = nbytes >= SHADOW_REGION_HUGE_NBYTES && !(flags & SHADOW_REGION_NO_HUGE);
	size_t align = huge ? SHADOW_REGION_HUGE_NBYTES : page;
	size_t map_nbytes, over_nbytes;
	uint8_t *raw, *addr;

	if (nbytes == 0 || (flags & ~SHADOW_REGION_FLAGS_ALL))
		return -EINVAL;
	if (!shadow_round_up(nbytes, align, &map_nbytes))
		return -ENOMEM;
	/* Over-map by the alignment so that an aligned start exists, then trim both ends. */
	over_nbytes = map_nbytes;
	if (huge && __builtin_add_overflow(map_nbytes, align, &over_nbytes))
		return -ENOMEM;
	raw = mmap(NULL, over_nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return -errno;
	addr = raw;
	if (huge) {
		uint8_t *end;

		addr = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
		end = addr + map_nbytes;
		if (addr > raw)
			munmap(raw, (size_t)(addr - raw));
		if (raw + over_nbytes > end)
			munmap(end, (size_t)(raw + over_nbytes - end));
	}

	memset(r, 0, sizeof(*r));
	r->addr = addr;
	r->nbytes = nbytes;
	r->map_nbytes = map_nbytes;
	r->huge_requested = huge;
#if defined(MADV_HUGEPAGE)
	if (huge) {
		r->huge_advised = madvise(addr, map_nbytes, MADV_HUGEPAGE) == 0;
		if (!r->huge_advised)
			SHADOW_LOGD("madvise(MADV_HUGEPAGE, %zu bytes): %s; small pages",
					 map_nbytes, shadow_strerror(-errno));
	}
#endif
	if (flags & SHADOW_REGION_POPULATE)
		shadow_region_populate(addr, map_nbytes, page);
	return 0;
}

void shadow__region_free(struct shadow__region *r)
{
	if (r->addr != NULL)
		munmap(r->addr, r->map_nbytes);
	memset(r, 0, sizeof(*r));
}
