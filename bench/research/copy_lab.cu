/*
 * copy_lab.cu - research harness: how fast the copy engine scatters pinned host memory into
 * GPU memory in blocks of one size, by the way the copies are issued. It chose how the cuda
 * copy backend (lib/pipeline/copy_cuda.c) issues its copies; not part of the product or the
 * build (the product reaches CUDA only through lib/gpu/cuda).
 *
 *   nvcc -O2 -o copy_lab bench/research/copy_lab.cu && ./copy_lab [MiB]
 *
 * For block sizes 8, 32 and 128 KiB it moves MiB (default 256) of pinned host memory into
 * blocks of a device buffer twice as large, at a random permutation of the block slots (a
 * paged KV cache), and prints GB/s (best of 3) of:
 *   contiguous     one cudaMemcpyAsync of the whole batch (the reference)
 *   per-copy       one cudaMemcpyAsync per block, one stream
 *   batch B        cudaMemcpyBatchAsync calls of B blocks, one stream, source order = stream,
 *                  flags = PreferOverlapWithCompute (what the backend does)
 *   batch B f0     the same with flags = default
 *   batch B any    the same with source access order = any
 *   S streams      batch calls of B blocks dealt round-robin to S streams
 *   T threads      T host threads, each issuing batch calls of 128 on a stream of its own
 *   2D regular     one cudaMemcpy2DAsync, blocks at a regular destination pitch (2 blocks):
 *                  what one copy-engine descriptor with many lines does
 *   3D batch HxB   cudaMemcpy3DBatchAsync calls of B operations, each H blocks at a regular
 *                  source pitch to H destination blocks at a regular pitch (one chunk's
 *                  frames into one paged block of a layer-regular layout), the operations
 *                  at random places
 *   2D ops H       one cudaMemcpy2DAsync per H blocks: H lines from a regular source pitch
 *                  to H destination blocks at a regular pitch, the operations at random
 *                  places (one chunk's frames into one paged block of a layer-regular
 *                  layout, issued the way cudaMemcpy3DBatchAsync's operations are not)
 *   issue us/call  host time spent inside the batch calls, per call
 */
#include <cuda_runtime.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(x)                                                                               \
	do {                                                                                   \
		cudaError_t e_ = (x);                                                          \
		if (e_ != cudaSuccess) {                                                       \
			fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,              \
				cudaGetErrorString(e_));                                       \
			exit(1);                                                               \
		}                                                                              \
	} while (0)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct plan {
	size_t n, block;
	void **dsts;
	const void **srcs;
	size_t *sizes;
	size_t *perm3d; /* a permutation of the places of operations of 4 lines */
	size_t *perm_h[65]; /* by lines per operation H: a permutation of [0, n / H) */
};

enum mode { CONTIG, PER_COPY, BATCH, TWO_D, THREADS, BATCH3D, TWO_D_OPS };

struct variant {
	const char *name;
	enum mode mode;
	size_t batch;
	int streams;
	unsigned flags;
	cudaMemcpySrcAccessOrder order;
};

static cudaStream_t streams[8];

struct worker {
	const struct plan *p;
	size_t first, end, batch;
	cudaStream_t stream;
};

static void *worker_main(void *arg)
{
	struct worker *w = (struct worker *)arg;
	struct cudaMemcpyAttributes attr;
	size_t idx = 0;

	memset(&attr, 0, sizeof(attr));
	attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
	attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
	for (size_t i = w->first; i < w->end; i += w->batch) {
		size_t c = w->end - i < w->batch ? w->end - i : w->batch;
		CHECK(cudaMemcpyBatchAsync(w->p->dsts + i, w->p->srcs + i, w->p->sizes + i, c,
					   &attr, &idx, 1, w->stream));
	}
	CHECK(cudaStreamSynchronize(w->stream));
	return NULL;
}

static double issue_s;
static size_t issue_calls;

static void run_once(const struct variant *v, const struct plan *p, char *dev, char *host)
{
	switch (v->mode) {
	case CONTIG:
		CHECK(cudaMemcpyAsync(dev, host, p->n * p->block, cudaMemcpyHostToDevice,
				      streams[0]));
		break;
	case PER_COPY:
		for (size_t i = 0; i < p->n; i++)
			CHECK(cudaMemcpyAsync(p->dsts[i], p->srcs[i], p->block,
					      cudaMemcpyHostToDevice, streams[0]));
		break;
	case THREADS: {
		pthread_t tids[8];
		struct worker ws[8];
		size_t share = (p->n + v->streams - 1) / v->streams;
		for (int t = 0; t < v->streams; t++) {
			ws[t].p = p;
			ws[t].first = t * share < p->n ? t * share : p->n;
			ws[t].end = (t + 1) * share < p->n ? (t + 1) * share : p->n;
			ws[t].batch = v->batch;
			ws[t].stream = streams[t];
			pthread_create(&tids[t], NULL, worker_main, &ws[t]);
		}
		for (int t = 0; t < v->streams; t++)
			pthread_join(tids[t], NULL);
		break;
	}
	case BATCH3D: {
		/* v->flags carries H, the lines per operation. */
		size_t h = v->flags, n_ops = p->n / h;
		static struct cudaMemcpy3DBatchOp ops[4096];
		for (size_t i = 0; i < n_ops; i += v->batch) {
			size_t c = n_ops - i < v->batch ? n_ops - i : v->batch;
			for (size_t k = 0; k < c; k++) {
				struct cudaMemcpy3DBatchOp *o = &ops[k];
				memset(o, 0, sizeof(*o));
				o->src.type = cudaMemcpyOperandTypePointer;
				o->src.op.ptr.ptr = (void *)p->srcs[(i + k) * h];
				o->src.op.ptr.rowLength = p->block;
				o->dst.type = cudaMemcpyOperandTypePointer;
				/* the op's H destination blocks: its first block's slot, then every
				 * other slot (pitch 2 blocks), inside a region 2H blocks wide */
				o->dst.op.ptr.ptr = dev + (size_t)(p->perm_h[h][i + k]) * 2 * h * p->block;
				o->dst.op.ptr.rowLength = 2 * p->block;
				o->extent = make_cudaExtent(p->block, h, 1);
				o->srcAccessOrder = cudaMemcpySrcAccessOrderStream;
				o->flags = cudaMemcpyFlagPreferOverlapWithCompute;
			}
			double t0 = now_s();
			CHECK(cudaMemcpy3DBatchAsync(c, ops, 0, streams[0]));
			issue_s += now_s() - t0;
			issue_calls++;
		}
		break;
	}
	case TWO_D_OPS: {
		/* v->flags carries H, the lines per operation; the same places as BATCH3D */
		size_t h = v->flags, n_ops = p->n / h;
		for (size_t i = 0; i < n_ops; i++) {
			double t0 = now_s();
			CHECK(cudaMemcpy2DAsync(dev + (size_t)(p->perm_h[h][i]) * 2 * h * p->block,
						2 * p->block, p->srcs[i * h], p->block, p->block, h,
						cudaMemcpyHostToDevice, streams[0]));
			issue_s += now_s() - t0;
			issue_calls++;
		}
		break;
	}
	case TWO_D:
		CHECK(cudaMemcpy2DAsync(dev, 2 * p->block, host, p->block, p->block, p->n,
					cudaMemcpyHostToDevice, streams[0]));
		break;
	case BATCH: {
		struct cudaMemcpyAttributes attr;
		memset(&attr, 0, sizeof(attr));
		attr.srcAccessOrder = v->order;
		attr.flags = v->flags;
		size_t idx = 0;
		int s = 0;
		for (size_t i = 0; i < p->n; i += v->batch) {
			size_t c = p->n - i < v->batch ? p->n - i : v->batch;
			double t0 = now_s();
			CHECK(cudaMemcpyBatchAsync(p->dsts + i, p->srcs + i, p->sizes + i, c, &attr,
						   &idx, 1, streams[s]));
			issue_s += now_s() - t0;
			issue_calls++;
			s = (s + 1) % v->streams;
		}
		break;
	}
	}
	for (int s = 0; s < 8; s++)
		CHECK(cudaStreamSynchronize(streams[s]));
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	size_t total = mib << 20;
	char *host, *dev;
	cudaDeviceProp prop;

	CHECK(cudaGetDeviceProperties(&prop, 0));
	printf("# %s, asyncEngineCount %d, %zu MiB per measurement\n", prop.name,
	       prop.asyncEngineCount, mib);
	CHECK(cudaHostAlloc((void **)&host, total, cudaHostAllocPortable));
	CHECK(cudaMalloc((void **)&dev, 2 * total));
	memset(host, 1, total);
	for (int s = 0; s < 8; s++)
		CHECK(cudaStreamCreateWithFlags(&streams[s], cudaStreamNonBlocking));

	const size_t blocks[] = { 8u << 10, 32u << 10, 128u << 10 };
	const cudaMemcpySrcAccessOrder ST = cudaMemcpySrcAccessOrderStream;
	const unsigned OV = cudaMemcpyFlagPreferOverlapWithCompute;
	const struct variant vs[] = {
		{ "contiguous", CONTIG, 0, 1, 0, ST },
		{ "per-copy", PER_COPY, 0, 1, 0, ST },
		{ "batch 16", BATCH, 16, 1, OV, ST },
		{ "batch 128", BATCH, 128, 1, OV, ST },
		{ "batch 1024", BATCH, 1024, 1, OV, ST },
		{ "batch 4096", BATCH, 4096, 1, OV, ST },
		{ "batch 1024 f0", BATCH, 1024, 1, 0, ST },
		{ "batch 16 f0", BATCH, 16, 1, 0, ST },
		{ "batch 1024 any", BATCH, 1024, 1, OV, cudaMemcpySrcAccessOrderAny },
		{ "2 streams b128", BATCH, 128, 2, OV, ST },
		{ "2 streams b1024", BATCH, 1024, 2, OV, ST },
		{ "4 streams b1024", BATCH, 1024, 4, OV, ST },
		{ "8 streams b256", BATCH, 256, 8, OV, ST },
		{ "batch 32", BATCH, 32, 1, OV, ST },
		{ "batch 64", BATCH, 64, 1, OV, ST },
		{ "batch 256", BATCH, 256, 1, OV, ST },
		{ "2 threads b128", THREADS, 128, 2, OV, ST },
		{ "4 threads b128", THREADS, 128, 4, OV, ST },
		{ "2D regular", TWO_D, 0, 1, 0, ST },
		{ "3D batch 12x16", BATCH3D, 16, 1, 12, ST },
		{ "3D batch 12x128", BATCH3D, 128, 1, 12, ST },
		{ "3D batch 32x128", BATCH3D, 128, 1, 32, ST },
		{ "2D ops 4", TWO_D_OPS, 0, 1, 4, ST },
		{ "2D ops 16", TWO_D_OPS, 0, 1, 16, ST },
		{ "2D ops 32", TWO_D_OPS, 0, 1, 32, ST },
		{ "2D ops 64", TWO_D_OPS, 0, 1, 64, ST },
	};

	for (size_t b = 0; b < sizeof(blocks) / sizeof(blocks[0]); b++) {
		struct plan p;
		p.block = blocks[b];
		p.n = total / p.block;
		p.dsts = (void **)malloc(p.n * sizeof(void *));
		p.srcs = (const void **)malloc(p.n * sizeof(void *));
		p.sizes = (size_t *)malloc(p.n * sizeof(size_t));
		size_t slots = 2 * p.n;
		size_t *perm = (size_t *)malloc(slots * sizeof(size_t));
		for (size_t i = 0; i < slots; i++)
			perm[i] = i;
		srand(42);
		for (size_t i = slots - 1; i > 0; i--) {
			size_t j = (size_t)rand() % (i + 1), t = perm[i];
			perm[i] = perm[j];
			perm[j] = t;
		}
		size_t n3d = p.n / 4; /* operations of 4 or more lines */
		p.perm3d = (size_t *)malloc((n3d + 1) * sizeof(size_t));
		for (size_t i = 0; i < n3d; i++)
			p.perm3d[i] = i;
		for (size_t i = n3d - 1; i > 0; i--) {
			size_t j = (size_t)rand() % (i + 1), t = p.perm3d[i];
			p.perm3d[i] = p.perm3d[j];
			p.perm3d[j] = t;
		}
		/* Of a random permutation, the elements below m are a random permutation of
		 * [0, m) in their order. */
		const size_t hs[] = { 4, 12, 16, 32, 64 };
		for (size_t k = 0; k < sizeof(hs) / sizeof(hs[0]); k++) {
			size_t m = p.n / hs[k], j = 0;
			p.perm_h[hs[k]] = (size_t *)malloc((m + 1) * sizeof(size_t));
			for (size_t i = 0; i < n3d; i++)
				if (p.perm3d[i] < m)
					p.perm_h[hs[k]][j++] = p.perm3d[i];
		}
		for (size_t i = 0; i < p.n; i++) {
			p.dsts[i] = dev + perm[i] * p.block;
			p.srcs[i] = host + i * p.block;
			p.sizes[i] = p.block;
		}
		for (size_t k = 0; k < sizeof(vs) / sizeof(vs[0]); k++) {
			double best = 1e30;
			issue_s = 0;
			issue_calls = 0;
			run_once(&vs[k], &p, dev, host); /* warm-up */
			issue_s = 0;
			issue_calls = 0;
			for (int r = 0; r < 3; r++) {
				double t0 = now_s();
				run_once(&vs[k], &p, dev, host);
				double t = now_s() - t0;
				best = t < best ? t : best;
			}
			printf("%4zu KiB  %-18s %6.1f GB/s  %6.2f us/copy", p.block >> 10,
			       vs[k].name, total / best / 1e9, best / p.n * 1e6);
			if (issue_calls > 0)
				printf("  issue %.1f us/call", issue_s / issue_calls * 1e6);
			printf("\n");
			fflush(stdout);
		}
		free(perm);
		free(p.perm3d);
		for (size_t k = 0; k < sizeof(hs) / sizeof(hs[0]); k++)
			free(p.perm_h[hs[k]]);
		free(p.dsts);
		free(p.srcs);
		free(p.sizes);
	}
	return 0;
}
