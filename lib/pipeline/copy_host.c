/*
 * copy_host.c - the host copy backend (copy.h): the region is host memory a client shares as
 * an fd (a memfd), mapped into this process; a job is a memcpy of each run and of each line
 * of its rectangles. Also the pipeline pool's memory (shadow__copy_pool_alloc), shared by
 * both backends.
 *
 * DESIGN
 *
 * Regions. region_open maps [fd_offset, fd_offset + nbytes) of the client's fd MAP_SHARED,
 * read-write, after checking the description against fstat(); the mapping outlives the fd, so
 * nothing else is kept. A client that later shrinks the file would make a copy fault (SIGBUS):
 * clients should seal their memfd with F_SEAL_SHRINK before passing it.
 *
 * Contexts. A host copy finishes inside submit(), so a context is only a FIFO of finished
 * jobs (user pointer, status) waiting for reap(): a fixed ring of SHADOW__COPY_INFLIGHT_MAX
 * entries, allocated with the context. submit() checks every run and rectangle against the
 * region before copying any (all or nothing), copies, and queues the completion; -EAGAIN when
 * the FIFO is full. No allocation, no syscall, no lock per job: a context belongs to one thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "gpu/gpu.h"
#include "pipeline/copy.h"

struct shadow__copy_region {
	uint8_t *base;    /* the mapping, region byte 0 */
	uint64_t nbytes;  /* the region's size as described (mapped: rounded up to the page) */
};

struct host_done {
	void *user;
	int status;
};

struct shadow__copy_ctx {
	uint32_t head; /* next to reap; free-running, index & (SHADOW__COPY_INFLIGHT_MAX - 1) */
	uint32_t tail; /* next to fill */
	struct host_done done[SHADOW__COPY_INFLIGHT_MAX];
};

SHADOW_STATIC_ASSERT((SHADOW__COPY_INFLIGHT_MAX & (SHADOW__COPY_INFLIGHT_MAX - 1)) == 0,
		     "SHADOW__COPY_INFLIGHT_MAX must be a power of two (ring index mask)");

static int host_region_open(const struct shadow__region_mem *mem,
			    struct shadow__copy_region **r_ret)
{
	long page = sysconf(_SC_PAGESIZE);
	struct shadow__copy_region *r;
	struct stat st;
	uint64_t end;
	void *addr;
	int err;

	if (mem == NULL || r_ret == NULL)
		return -EINVAL;
	if (mem->kind != SHADOW__COPY_HOST || mem->fd < 0 || mem->nbytes == 0 ||
	    mem->nbytes > SIZE_MAX || page <= 0 || mem->fd_offset % (uint64_t)page != 0 ||
	    !shadow_add_u64(mem->fd_offset, mem->nbytes, &end) || end > INT64_MAX) {
		SHADOW_LOGE("host region: bad description (fd %d, offset %llu, %llu bytes)",
			    mem->fd, (unsigned long long)mem->fd_offset,
			    (unsigned long long)mem->nbytes);
		return -EINVAL;
	}
	/* A file that can shrink under the mapping would make a copy fault (SIGBUS) and kill
	 * the daemon: only regions sealed against shrinking are taken. */
	int seals = fcntl(mem->fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
		SHADOW_LOGE("host region: fd %d is not sealed against shrinking (F_SEAL_SHRINK)",
			    mem->fd);
		return -EPERM;
	}
	if (fstat(mem->fd, &st) != 0) {
		err = errno;
		SHADOW_LOGE("host region: fstat(fd %d): %s", mem->fd, strerror(err));
		return -EINVAL;
	}
	if (st.st_size < 0 || (uint64_t)st.st_size < end) {
		SHADOW_LOGE("host region: fd %d holds %lld bytes, the region ends at %llu", mem->fd,
			    (long long)st.st_size, (unsigned long long)end);
		return -EINVAL;
	}
	r = malloc(sizeof(*r));
	if (r == NULL) {
		SHADOW_LOGE("host region: out of memory");
		return -ENOMEM;
	}
	addr = mmap(NULL, (size_t)mem->nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, mem->fd,
		    (off_t)mem->fd_offset);
	if (addr == MAP_FAILED) {
		err = errno;
		SHADOW_LOGE("host region: mmap(fd %d, %llu bytes at %llu): %s", mem->fd,
			    (unsigned long long)mem->nbytes, (unsigned long long)mem->fd_offset,
			    strerror(err));
		free(r);
		/* A file that cannot be mapped (a pipe, a socket) is a bad description too. */
		return err == ENODEV || err == EACCES || err == EINVAL ? -EINVAL : -err;
	}
	r->base = addr;
	r->nbytes = mem->nbytes;
	*r_ret = r;
	return 0;
}

static void host_region_close(struct shadow__copy_region *r)
{
	if (r == NULL)
		return;
	munmap(r->base, (size_t)r->nbytes);
	free(r);
}

static int host_ctx_create(uint32_t peers, struct shadow__copy_ctx **ctx_ret)
{
	struct shadow__copy_ctx *ctx = calloc(1, sizeof(*ctx));

	(void)peers; /* a memcpy per line costs the same however the lines are grouped */
	if (ctx == NULL) {
		SHADOW_LOGE("host copy context: out of memory");
		return -ENOMEM;
	}
	*ctx_ret = ctx;
	return 0;
}

static void host_ctx_destroy(struct shadow__copy_ctx *ctx)
{
	free(ctx); /* nothing is ever in flight: every job finished inside submit() */
}

static int host_submit(struct shadow__copy_ctx *ctx, const struct shadow__copy_job *job)
{
	struct shadow__copy_region *r = job->region;
	const uint8_t *src = job->src;
	int err;

	if (ctx->tail - ctx->head >= SHADOW__COPY_INFLIGHT_MAX)
		return -EAGAIN;
	if (r == NULL)
		return -EINVAL;
	err = shadow__copy_job_check(job, r->nbytes, "host");
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < job->n_runs; i++)
		memcpy(r->base + job->runs[i].dst_offset, src + job->runs[i].src_offset,
		       (size_t)job->runs[i].nbytes);
	for (uint32_t i = 0; i < job->n_rects; i++) {
		const struct shadow__copy_rect *q = &job->rects[i];
		for (uint64_t j = 0; j < q->height; j++)
			memcpy(r->base + q->dst_offset + j * q->dst_pitch,
			       src + q->src_offset + j * q->src_pitch, (size_t)q->width);
	}

	struct host_done *d = &ctx->done[ctx->tail & (SHADOW__COPY_INFLIGHT_MAX - 1)];
	d->user = job->user;
	d->status = 0;
	ctx->tail++;
	return 0;
}

static uint32_t host_reap(struct shadow__copy_ctx *ctx, void **users, int *statuses, uint32_t max)
{
	uint32_t n = 0;

	while (n < max && ctx->head != ctx->tail) {
		const struct host_done *d = &ctx->done[ctx->head & (SHADOW__COPY_INFLIGHT_MAX - 1)];
		users[n] = d->user;
		statuses[n] = d->status;
		ctx->head++;
		n++;
	}
	return n;
}

/* Host copies happen in submit: nothing is ever queued. */
static int host_flush(struct shadow__copy_ctx *ctx)
{
	(void)ctx;
	return 0;
}

static uint32_t host_in_flight(const struct shadow__copy_ctx *ctx)
{
	return ctx->tail - ctx->head;
}

static int host_read(struct shadow__copy_ctx *ctx, struct shadow__copy_region *r,
		     const struct shadow_copy_run *runs, uint32_t n_runs, void *dst)
{
	(void)ctx;
	if (r == NULL || (n_runs > 0 && (runs == NULL || dst == NULL)))
		return -EINVAL;
	if (!shadow__copy_runs_fit(runs, n_runs, r->nbytes)) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
				       "host read: a run ends beyond the %llu-byte region",
				       (unsigned long long)r->nbytes);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < n_runs; i++)
		memcpy((uint8_t *)dst + runs[i].src_offset, r->base + runs[i].dst_offset,
		       (size_t)runs[i].nbytes);
	return 0;
}

const struct shadow__copy_ops shadow__copy_host_ops = {
	.name = "host",
	.region_open = host_region_open,
	.region_close = host_region_close,
	.ctx_create = host_ctx_create,
	.ctx_destroy = host_ctx_destroy,
	.submit = host_submit,
	.flush = host_flush,
	.reap = host_reap,
	.in_flight = host_in_flight,
	.read = host_read,
};

/*
 * The pipeline's pool. Unpinned memory comes from shadow__region_alloc (2 MiB-aligned and advised
 * for huge pages from 2 MiB up, pre-faulted so that the data path never takes a first-touch
 * fault); pinned memory from the CUDA module's host_alloc. The free side rebuilds the region
 * from (mem, nbytes) with the same rounding as region_alloc.
 */
int shadow__copy_pool_alloc(size_t nbytes, bool pinned, void **mem_ret)
{
	const struct shadow__gpu_ops *gpu;
	struct shadow__region region;
	int err;

	if (nbytes == 0 || mem_ret == NULL)
		return -EINVAL;
	if (pinned) {
		err = shadow__gpu_ops(&gpu);
		if (err != 0) {
			SHADOW_LOGE("pinned pool: %s", shadow_strerror(err));
			return err;
		}
		return gpu->host_alloc(mem_ret, nbytes); /* the module logs its failures */
	}
	err = shadow__region_alloc(&region, nbytes, SHADOW_REGION_POPULATE);
	if (err != 0) {
		SHADOW_LOGE("pool of %zu bytes: %s", nbytes, shadow_strerror(err));
		return err;
	}
	*mem_ret = region.addr;
	return 0;
}

void shadow__copy_pool_free(void *mem, size_t nbytes, bool pinned)
{
	const struct shadow__gpu_ops *gpu;

	if (mem == NULL)
		return;
	if (pinned) {
		/* Allocated through the module, so it is loaded; a failure is logged there. */
		if (shadow__gpu_ops(&gpu) == 0)
			(void)gpu->host_free(mem);
		return;
	}
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t align = nbytes >= SHADOW_REGION_HUGE_NBYTES ? SHADOW_REGION_HUGE_NBYTES : page;
	struct shadow__region region = {
		.addr = mem,
		.nbytes = nbytes,
		.map_nbytes = (nbytes + align - 1) & ~(align - 1),
	};
	shadow__region_free(&region);
}
