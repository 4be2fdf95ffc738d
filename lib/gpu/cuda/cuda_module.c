/*
 * cuda_module.c - libshadow_cuda.so: the CUDA runtime behind the ops table of gpu.h.
 *
 * Every CUDA error is logged through the host's logger with the call that failed and mapped to
 * SHADOW_ECUDA; nothing here aborts. No kernel is ever launched: ShadowServe moves KV bytes
 * with copy engines only, so the engine's SMs stay free.
 */
#include <errno.h>
#include <stdio.h>

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
};

__attribute__((visibility("default"))) const struct shadow__gpu_ops *
shadow_cuda_module_ops(const struct shadow__gpu_host *h)
{
	if (h == NULL || h->abi_version != SHADOW_GPU_ABI_VERSION || h->log == NULL)
		return NULL;
	host = h;
	return &cuda_ops;
}
