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
};

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
