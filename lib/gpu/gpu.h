/*
 * gpu.h - the boundary between libshadow and its optional CUDA module.
 *
 * DESIGN
 * Only lib/gpu/cuda/ includes CUDA headers or links the CUDA runtime. It builds as
 * libshadow_cuda.so, which libshadow loads with dlopen() the first time GPU work is asked for
 * (shadow__gpu_ops()). The module exports one symbol, shadow_cuda_module_ops(), returning a
 * static ops table; everything GPU-related goes through that table, as UCX's cuda_copy and
 * cuda_ipc transports sit behind uct ops. So libshadow, shadowd and every test build and run
 * on machines without the CUDA toolkit, without a driver, or without a GPU; those paths report
 * SHADOW_ENOGPU.
 *
 * Versioning: the table starts with abi_version and sizeof_ops. The loader refuses a module
 * whose abi_version differs, and reads only the fields both sides know (sizeof_ops).
 *
 * Every op returns 0 or a negative status (SHADOW_ECUDA after logging the CUDA error, -EINVAL,
 * SHADOW_ENOGPU); none aborts. Ops are thread-safe as the CUDA runtime API is; each op acts on
 * the device current to the calling thread (device 0 unless the caller set another).
 */
#ifndef SHADOW_GPU_GPU_H
#define SHADOW_GPU_GPU_H

#include <stddef.h>
#include <stdint.h>

#include <shadow/shadow.h>

#define SHADOW_GPU_ABI_VERSION 1u
#define SHADOW_CUDA_MODULE_SYMBOL "shadow_cuda_module_ops"

enum shadow__gpu_copy_dir {
	SHADOW_GPU_H2D = 1,
	SHADOW_GPU_D2H = 2
};

struct shadow__gpu_ops {
	uint32_t abi_version; /* SHADOW_GPU_ABI_VERSION */
	uint32_t sizeof_ops;  /* sizeof(struct shadow__gpu_ops) as the module was built */

	/* Number of CUDA devices; 0 devices is reported as SHADOW_ENOGPU. */
	int (*device_count)(int *n_ret);
	/* "NVIDIA H100 80GB HBM3, cc 9.0, 79 GiB" into buf (NUL-terminated, truncated to fit). */
	int (*device_describe)(int device, char *buf, size_t buf_nbytes);

	/* Page-locked host memory (cudaHostAlloc, portable); freed with host_free. */
	int (*host_alloc)(void **ptr_ret, size_t nbytes);
	int (*host_free)(void *ptr);
	/* Device memory on the current device (cudaMalloc); freed with dev_free. */
	int (*dev_alloc)(void **ptr_ret, size_t nbytes);
	int (*dev_free)(void *ptr);
	/* Synchronous copy between host and device memory. */
	int (*memcpy_sync)(void *dst, const void *src, size_t nbytes, enum shadow__gpu_copy_dir dir);

	/*
	 * Copy-engine ops (lib/pipeline/copy_cuda.c). Appended to ABI 1: a module built before
	 * them reports a smaller sizeof_ops and the loader refuses it, so a caller that holds a
	 * table may use every field.
	 *
	 * Streams and events are opaque pointers (cudaStream_t, cudaEvent_t). A stream or an
	 * event belongs to the device that was current when it was created; use it with that
	 * device current.
	 */

	/* Make `device` current for the calling thread (cudaSetDevice). */
	int (*device_set)(int device);

	/*
	 * Export device memory from dev_alloc (or any cudaMalloc allocation: the handle names the
	 * whole allocation, whatever pointer inside it is given) for another process:
	 * cudaIpcGetMemHandle into handle_ret[0 .. SHADOW_GPU_IPC_HANDLE_NBYTES-1]. For tests and
	 * for engines that export their KV memory.
	 */
	int (*ipc_export)(void *dptr, uint8_t *handle_ret);
	/*
	 * Open another process's exported allocation on `device` (cudaSetDevice, then
	 * cudaIpcOpenMemHandle with cudaIpcMemLazyEnablePeerAccess; the calling thread's current
	 * device is restored afterwards). *dptr_ret is the base of the allocation in this process;
	 * *nbytes_ret its size where the driver tells it (cuMemGetAddressRange), else 0.
	 * -EINVAL for a NULL argument; SHADOW_ECUDA for a handle CUDA refuses, including one
	 * opened in the process that exported it (CUDA's rule). Close with ipc_close.
	 */
	int (*ipc_open)(const uint8_t *handle, int device, void **dptr_ret, size_t *nbytes_ret);
	int (*ipc_close)(void *dptr);

	/* A non-blocking stream (cudaStreamNonBlocking) on the current device. */
	int (*stream_create)(void **stream_ret);
	/* Destroys once the stream's work has finished (the work itself still completes). */
	int (*stream_destroy)(void *stream);
	/* Wait until every copy issued on `stream` has finished. */
	int (*stream_sync)(void *stream);

	/*
	 * Issue count copies, entry i being sizes[i] bytes from srcs[i] to dsts[i], on `stream`
	 * without waiting: one cudaMemcpyBatchAsync call where the runtime and driver support it
	 * (CUDA >= 12.8), else one cudaMemcpyAsync per entry (decided at the first call and kept).
	 * h2d: srcs are host memory (pinned for an asynchronous copy), dsts device memory; d2h
	 * the reverse. The arrays are read during the call only. count 0 does nothing; every
	 * size must be > 0 and every pointer non-NULL (-EINVAL). The copies of one batch may run
	 * in any order, so destination ranges must not overlap. On an error some copies may
	 * have been issued: synchronise the stream before reusing the sources.
	 */
	int (*memcpy_h2d_batch)(void *stream, void *const *dsts, const void *const *srcs,
				const size_t *sizes, size_t count);
	int (*memcpy_d2h_batch)(void *stream, void *const *dsts, const void *const *srcs,
				const size_t *sizes, size_t count);

	/* An event without timing (cudaEventDisableTiming) on the current device. */
	int (*event_create)(void **event_ret);
	/* Record `event` after the work issued so far on `stream` (same device). */
	int (*event_record)(void *event, void *stream);
	/* 0 once the recorded work has finished, -EAGAIN before, SHADOW_ECUDA if it failed. */
	int (*event_query)(void *event);
	int (*event_destroy)(void *event);

	/*
	 * Issue one 2D copy on `stream` without waiting (cudaMemcpy2DAsync, host to device):
	 * `height` lines of `width` bytes, line j from src + j * spitch (host memory, pinned for
	 * an asynchronous copy) to dst + j * dpitch (device memory). Both pitches must be >=
	 * width and at most SHADOW_GPU_PITCH_MAX, width and height > 0 (-EINVAL). One copy
	 * operation however many lines: the copy engine walks the lines itself.
	 */
	int (*memcpy_h2d_2d)(void *stream, void *dst, size_t dpitch, const void *src, size_t spitch,
			     size_t width, size_t height);
};

/* The largest pitch memcpy_h2d_2d takes: CUDA refuses pitches from cudaDeviceProp::memPitch
 * (2^31 - 1 on current GPUs) up. */
#define SHADOW_GPU_PITCH_MAX ((size_t)INT32_MAX)

/* Bytes of a CUDA IPC memory handle (cudaIpcMemHandle_t). */
#define SHADOW_GPU_IPC_HANDLE_NBYTES 64u

/* What libshadow hands the module: its logger, so CUDA errors land in the library's log. */
struct shadow__gpu_host {
	uint32_t abi_version; /* SHADOW_GPU_ABI_VERSION */
	/* Level-filtered like the library's own log; safe from any thread. */
	void (*log)(enum shadow_log_level level, const char *fmt, ...)
		__attribute__((format(printf, 2, 3)));
};

/* The one symbol libshadow_cuda.so exports. Returns NULL if it cannot serve this host. */
typedef const struct shadow__gpu_ops *(*shadow__gpu_module_fn)(const struct shadow__gpu_host *host);
const struct shadow__gpu_ops *shadow_cuda_module_ops(const struct shadow__gpu_host *host);

/*
 * Load the CUDA module once per process and return its ops table in *ops_ret. Returns 0 or
 * SHADOW_ENOGPU (no module, wrong ABI, no driver or no device; logged once at INFO).
 * Thread-safe.
 */
int shadow__gpu_ops(const struct shadow__gpu_ops **ops_ret) __attribute__((visibility("hidden")));

#endif /* SHADOW_GPU_GPU_H */
