/*
 * cuda_module.c - libshadow_cuda.so: the CUDA runtime behind the ops table of gpu.h.
 *
 * Every CUDA error is logged through the host's logger with the call that failed and mapped to
 * SHADOW_ECUDA; nothing here aborts. No kernel is ever launched: ShadowServe moves KV bytes
 * with copy engines only, so the engine's SMs stay free.
 *
 * Batched copies. memcpy_*_batch issue a whole frame's scatter (one copy per KV block run) as
 * one cudaMemcpyBatchAsync call: on the H100 that takes 32 KiB block scatters from 10 GB/s
 * (one cudaMemcpyAsync each, launch-bound) to 30 GB/s (DESIGN.md, "Measured"). The call's
 * signature changed between releases, so it is chosen by CUDART_VERSION:
 *
 *	12.8     (void **, void **, size_t *, count, attrs, attrsIdxs, numAttrs, failIdx, stream)
 *	12.9     the same with const-qualified dsts/srcs/sizes
 *	13.0+    (void *const *, const void *const *, const size_t *, count, attrs, attrsIdxs,
 *		  numAttrs, stream): failIdx is gone
 *
 * Built against an older toolkit, or where the driver refuses the call (cudaErrorNotSupported,
 * cudaErrorCallRequiresNewerDriver), the module falls back to one cudaMemcpyAsync per entry
 * and remembers that for the process (batch_state), logging it once.
 *
 * 2D copies. memcpy_h2d_2d is one cudaMemcpy2DAsync: the same run of many frames of a chunk
 * staged at a fixed pitch, to blocks at a fixed distance (lib/pipeline/copy_plan.c), as one
 * copy operation; the driver's cost is per operation, not per line.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "gpu/gpu.h"
#include <shadow/shadow.h>

static const struct shadow__gpu_host *host;

#define CUDA_CHECK(call)                                                                   \
	do {                                                                               \
		cudaError_t err_ = (call);                                                 \
		if (err_ != cudaSuccess) {                                                 \
			host->log(SHADOW_LOG_ERROR, "%s failed: %s (%s)", #call,            \
				  cudaGetErrorName(err_), cudaGetErrorString(err_));         \
			return SHADOW_ECUDA;                                               \
		}                                                                          \
	} while (0)

static int cuda_device_count(int *n_ret)
{
	int n = 0;
	cudaError_t err = cudaGetDeviceCount(&n);
	if (err != cudaSuccess || n <= 0) {
		/* No driver or no device is an expected state, not an error worth shouting. */
		host->log(SHADOW_LOG_INFO, "no CUDA device: %s",
			  err != cudaSuccess ? cudaGetErrorString(err) : "count is 0");
		return SHADOW_ENOGPU;
	}
	*n_ret = n;
	return 0;
}

static int cuda_device_describe(int device, char *buf, size_t buf_nbytes)
{
	struct cudaDeviceProp prop;
	if (buf == NULL || buf_nbytes == 0)
		return -EINVAL;
	CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
	snprintf(buf, buf_nbytes, "%s, cc %d.%d, %zu MiB, %d copy engines", prop.name, prop.major,
		 prop.minor, prop.totalGlobalMem >> 20, prop.asyncEngineCount);
	return 0;
}

static int cuda_host_alloc(void **ptr_ret, size_t nbytes)
{
	if (ptr_ret == NULL || nbytes == 0)
		return -EINVAL;
	CUDA_CHECK(cudaHostAlloc(ptr_ret, nbytes, cudaHostAllocPortable));
	return 0;
}

static int cuda_host_free(void *ptr)
{
	CUDA_CHECK(cudaFreeHost(ptr));
	return 0;
}

static int cuda_dev_alloc(void **ptr_ret, size_t nbytes)
{
	if (ptr_ret == NULL || nbytes == 0)
		return -EINVAL;
	CUDA_CHECK(cudaMalloc(ptr_ret, nbytes));
	return 0;
}

static int cuda_dev_free(void *ptr)
{
	CUDA_CHECK(cudaFree(ptr));
	return 0;
}

static int cuda_memcpy_sync(void *dst, const void *src, size_t nbytes,
			    enum shadow__gpu_copy_dir dir)
{
	enum cudaMemcpyKind kind;
	switch (dir) {
	case SHADOW_GPU_H2D:
		kind = cudaMemcpyHostToDevice;
		break;
	case SHADOW_GPU_D2H:
		kind = cudaMemcpyDeviceToHost;
		break;
	default:
		return -EINVAL;
	}
	CUDA_CHECK(cudaMemcpy(dst, src, nbytes, kind));
	return 0;
}

/* Log a failed call and map it to SHADOW_ECUDA; for paths that must clean up first. */
static int cuda_fail(cudaError_t err, const char *what)
{
	host->log(SHADOW_LOG_ERROR, "%s failed: %s (%s)", what, cudaGetErrorName(err),
		  cudaGetErrorString(err));
	return SHADOW_ECUDA;
}

static int cuda_device_set(int device)
{
	CUDA_CHECK(cudaSetDevice(device));
	return 0;
}

_Static_assert(sizeof(cudaIpcMemHandle_t) == SHADOW_GPU_IPC_HANDLE_NBYTES,
	       "cudaIpcMemHandle_t is not SHADOW_GPU_IPC_HANDLE_NBYTES bytes");

static int cuda_ipc_export(void *dptr, uint8_t *handle_ret)
{
	cudaIpcMemHandle_t h;

	if (dptr == NULL || handle_ret == NULL)
		return -EINVAL;
	CUDA_CHECK(cudaIpcGetMemHandle(&h, dptr));
	memcpy(handle_ret, &h, sizeof(h));
	return 0;
}

/*
 * Bytes of the allocation from `ptr` to its end, through the driver's cuMemGetAddressRange
 * (the runtime has no such call); 0 when it cannot be had. Region opens are rare, so the entry
 * point is looked up each time.
 */
static size_t cuda_alloc_tail_nbytes(void *ptr)
{
#if CUDART_VERSION >= 12050
	typedef int (*get_range_fn)(unsigned long long *base_ret, size_t *size_ret,
				    unsigned long long dptr);
	enum cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
	void *sym = NULL;
	get_range_fn get_range;
	unsigned long long base = 0;
	size_t size = 0;

	if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &sym, 12000,
					     cudaEnableDefault, &found) != cudaSuccess ||
	    found != cudaDriverEntryPointSuccess || sym == NULL) {
		(void)cudaGetLastError(); /* not sticky; do not leave it for the next call */
		return 0;
	}
	*(void **)&get_range = sym;
	if (get_range(&base, &size, (unsigned long long)(uintptr_t)ptr) != 0 ||
	    (uintptr_t)ptr < base || (uintptr_t)ptr - base > size)
		return 0;
	return size - (size_t)((uintptr_t)ptr - base);
#else
	(void)ptr;
	return 0;
#endif
}

static int cuda_ipc_open(const uint8_t *handle, int device, void **dptr_ret, size_t *nbytes_ret)
{
	cudaIpcMemHandle_t h;
	cudaError_t err;
	void *ptr = NULL;
	int prev = 0;
	int rc = 0;

	if (handle == NULL || dptr_ret == NULL || nbytes_ret == NULL || device < 0)
		return -EINVAL;
	memcpy(&h, handle, sizeof(h));
	CUDA_CHECK(cudaGetDevice(&prev));
	if (prev != device)
		CUDA_CHECK(cudaSetDevice(device));
	err = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess);
	if (err != cudaSuccess) {
		rc = cuda_fail(err, "cudaIpcOpenMemHandle");
		goto restore_device;
	}
	*dptr_ret = ptr;
	*nbytes_ret = cuda_alloc_tail_nbytes(ptr);
restore_device:
	if (prev != device) {
		err = cudaSetDevice(prev);
		if (err != cudaSuccess && rc == 0) {
			(void)cudaIpcCloseMemHandle(ptr);
			rc = cuda_fail(err, "cudaSetDevice (restoring the caller's device)");
		}
	}
	return rc;
}

static int cuda_ipc_close(void *dptr)
{
	if (dptr == NULL)
		return -EINVAL;
	CUDA_CHECK(cudaIpcCloseMemHandle(dptr));
	return 0;
}

static int cuda_stream_create(void **stream_ret)
{
	cudaStream_t stream;

	if (stream_ret == NULL)
		return -EINVAL;
	/* Non-blocking: never serialised with the legacy default stream of an engine thread. */
	CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
	*stream_ret = stream;
	return 0;
}

static int cuda_stream_destroy(void *stream)
{
	if (stream == NULL)
		return -EINVAL;
	CUDA_CHECK(cudaStreamDestroy((cudaStream_t)stream));
	return 0;
}

static int cuda_stream_sync(void *stream)
{
	if (stream == NULL)
		return -EINVAL;
	CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)stream));
	return 0;
}

/* 0: the batch call not tried yet; 1: it works; -1: unavailable, copy entry by entry. Relaxed:
 * a standalone flag; two threads racing on the first call both try the batch, harmlessly. */
static _Atomic int batch_state;

#if CUDART_VERSION >= 12080
static cudaError_t cuda_batch_call(cudaStream_t stream, void *const *dsts, const void *const *srcs,
				   const size_t *sizes, size_t count)
{
	/* One attribute set for every copy: sources are read in stream order (they are slots
	 * the caller recycles only after the job's event), no location hints (plain pinned and
	 * device memory ignore them), and PreferOverlapWithCompute: the driver is asked to keep
	 * the copies off the SMs (copy engines), which are the engine's. SHADOW_CUDA_BATCH_FLAGS
	 * (0 or 1, read once) overrides the flag, to measure the difference. */
	static _Atomic int flags = -1; /* relaxed: racing first callers compute the same value */
	struct cudaMemcpyAttributes attr;
	size_t attr_idx = 0;
	int f = atomic_load_explicit(&flags, memory_order_relaxed);

	if (f < 0) {
		const char *e = getenv("SHADOW_CUDA_BATCH_FLAGS");
		f = e != NULL && e[0] == '0' ? cudaMemcpyFlagDefault :
					       cudaMemcpyFlagPreferOverlapWithCompute;
		atomic_store_explicit(&flags, f, memory_order_relaxed);
	}
	memset(&attr, 0, sizeof(attr));
	attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
	attr.flags = (unsigned int)f;
#if CUDART_VERSION >= 13000
	return cudaMemcpyBatchAsync(dsts, srcs, sizes, count, &attr, &attr_idx, 1, stream);
#elif CUDART_VERSION >= 12090
	size_t fail_idx = 0;
	return cudaMemcpyBatchAsync(dsts, srcs, sizes, count, &attr, &attr_idx, 1, &fail_idx,
				    stream);
#else
	size_t fail_idx = 0;
	return cudaMemcpyBatchAsync((void **)dsts, (void **)srcs, (size_t *)sizes, count, &attr,
				    &attr_idx, 1, &fail_idx, stream);
#endif
}

/* Errors that mean "this driver or device does not do batches", not "these copies are bad". */
static bool cuda_batch_unsupported(cudaError_t err)
{
	return err == cudaErrorNotSupported || err == cudaErrorCallRequiresNewerDriver ||
	       err == cudaErrorNotYetImplemented;
}
#endif

static int cuda_memcpy_batch(void *stream, void *const *dsts, const void *const *srcs,
			     const size_t *sizes, size_t count, enum cudaMemcpyKind kind)
{
	if (stream == NULL)
		return -EINVAL;
	if (count == 0)
		return 0;
	if (dsts == NULL || srcs == NULL || sizes == NULL)
		return -EINVAL;
	for (size_t i = 0; i < count; i++) {
		if (sizes[i] == 0 || dsts[i] == NULL || srcs[i] == NULL)
			return -EINVAL;
	}
#if CUDART_VERSION >= 12080
	int state = atomic_load_explicit(&batch_state, memory_order_relaxed);
	if (state >= 0) {
		cudaError_t err = cuda_batch_call((cudaStream_t)stream, dsts, srcs, sizes, count);
		if (err == cudaSuccess) {
			if (state == 0)
				atomic_store_explicit(&batch_state, 1, memory_order_relaxed);
			return 0;
		}
		if (!cuda_batch_unsupported(err))
			return cuda_fail(err, "cudaMemcpyBatchAsync");
		(void)cudaGetLastError(); /* not sticky: clear it */
		if (atomic_exchange_explicit(&batch_state, -1, memory_order_relaxed) != -1)
			host->log(SHADOW_LOG_INFO,
				  "cudaMemcpyBatchAsync unavailable (%s): "
				  "one cudaMemcpyAsync per copy",
				  cudaGetErrorName(err));
	}
#endif
	for (size_t i = 0; i < count; i++)
		CUDA_CHECK(cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], kind, (cudaStream_t)stream));
	return 0;
}

static int cuda_memcpy_h2d_batch(void *stream, void *const *dsts, const void *const *srcs,
				 const size_t *sizes, size_t count)
{
	return cuda_memcpy_batch(stream, dsts, srcs, sizes, count, cudaMemcpyHostToDevice);
}

static int cuda_memcpy_d2h_batch(void *stream, void *const *dsts, const void *const *srcs,
				 const size_t *sizes, size_t count)
{
	return cuda_memcpy_batch(stream, dsts, srcs, sizes, count, cudaMemcpyDeviceToHost);
}

static int cuda_memcpy_h2d_2d(void *stream, void *dst, size_t dpitch, const void *src,
			      size_t spitch, size_t width, size_t height)
{
	if (stream == NULL || dst == NULL || src == NULL || width == 0 || height == 0 ||
	    dpitch < width || spitch < width || dpitch > SHADOW_GPU_PITCH_MAX ||
	    spitch > SHADOW_GPU_PITCH_MAX)
		return -EINVAL;
	CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height,
				     cudaMemcpyHostToDevice, (cudaStream_t)stream));
	return 0;
}

static int cuda_event_create(void **event_ret)
{
	cudaEvent_t event;

	if (event_ret == NULL)
		return -EINVAL;
	CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
	*event_ret = event;
	return 0;
}

static int cuda_event_record(void *event, void *stream)
{
	if (event == NULL || stream == NULL)
		return -EINVAL;
	CUDA_CHECK(cudaEventRecord((cudaEvent_t)event, (cudaStream_t)stream));
	return 0;
}

static int cuda_event_query(void *event)
{
	if (event == NULL)
		return -EINVAL;
	cudaError_t err = cudaEventQuery((cudaEvent_t)event);
	if (err == cudaSuccess)
		return 0;
	if (err == cudaErrorNotReady)
		return -EAGAIN;
	return cuda_fail(err, "cudaEventQuery");
}

static int cuda_event_destroy(void *event)
{
	if (event == NULL)
		return -EINVAL;
	CUDA_CHECK(cudaEventDestroy((cudaEvent_t)event));
	return 0;
}

static const struct shadow__gpu_ops cuda_ops = {
	.abi_version = SHADOW_GPU_ABI_VERSION,
	.sizeof_ops = sizeof(struct shadow__gpu_ops),
	.device_count = cuda_device_count,
	.device_describe = cuda_device_describe,
	.host_alloc = cuda_host_alloc,
	.host_free = cuda_host_free,
	.dev_alloc = cuda_dev_alloc,
	.dev_free = cuda_dev_free,
	.memcpy_sync = cuda_memcpy_sync,
	.device_set = cuda_device_set,
	.ipc_export = cuda_ipc_export,
	.ipc_open = cuda_ipc_open,
	.ipc_close = cuda_ipc_close,
	.stream_create = cuda_stream_create,
	.stream_destroy = cuda_stream_destroy,
	.stream_sync = cuda_stream_sync,
	.memcpy_h2d_batch = cuda_memcpy_h2d_batch,
	.memcpy_d2h_batch = cuda_memcpy_d2h_batch,
	.event_create = cuda_event_create,
	.event_record = cuda_event_record,
	.event_query = cuda_event_query,
	.event_destroy = cuda_event_destroy,
	.memcpy_h2d_2d = cuda_memcpy_h2d_2d,
};

__attribute__((visibility("default"))) const struct shadow__gpu_ops *
shadow_cuda_module_ops(const struct shadow__gpu_host *h)
{
	if (h == NULL || h->abi_version != SHADOW_GPU_ABI_VERSION || h->log == NULL)
		return NULL;
	host = h;
	return &cuda_ops;
}
