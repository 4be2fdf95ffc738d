/*
 * gpu.c - finds and loads the optional CUDA module (libshadow_cuda.so), see gpu.h.
 *
 * Search order: $SHADOW_CUDA_MODULE (a path), then the directory libshadow itself was loaded
 * from, then the install libdir. The first that dlopen()s and exports a table of the right
 * ABI wins. The result, success or failure, is cached for the process (pthread_once).
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/log.h"
#include "gpu/gpu.h"

#ifndef SHADOW_CUDA_MODULE_NAME
#define SHADOW_CUDA_MODULE_NAME "libshadow_cuda.so"
#endif

static pthread_once_t gpu_once = PTHREAD_ONCE_INIT;
static const struct shadow__gpu_ops *gpu_ops;
static int gpu_status = SHADOW_ENOGPU;

/* The module's logger: filtered by the library's level, formatted once, emitted whole. */
__attribute__((format(printf, 2, 3))) static void gpu_module_log(enum shadow_log_level level,
								 const char *fmt, ...)
{
	if (!shadow__log_enabled(level))
		return;
	char line[SHADOW_LOG_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	shadow__log(level, "cuda: %s", line);
}

/* Try one candidate path; 0 and gpu_ops set on success. */
static int gpu_try_load(const char *path)
{
	void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		SHADOW_LOGD("CUDA module %s: %s", path, dlerror());
		return SHADOW_ENOGPU;
	}
	shadow__gpu_module_fn fn;
	/* POSIX-sanctioned way to turn dlsym()'s void * into a function pointer. */
	*(void **)&fn = dlsym(handle, SHADOW_CUDA_MODULE_SYMBOL);
	static const struct shadow__gpu_host host = {
		.abi_version = SHADOW_GPU_ABI_VERSION,
		.log = gpu_module_log,
	};
	const struct shadow__gpu_ops *ops = fn != NULL ? fn(&host) : NULL;
	if (ops == NULL || ops->abi_version != SHADOW_GPU_ABI_VERSION ||
	    ops->sizeof_ops < sizeof(struct shadow__gpu_ops)) {
		SHADOW_LOGI("CUDA module %s: missing symbol or ABI %u (want %u)", path,
				ops != NULL ? ops->abi_version : 0u, SHADOW_GPU_ABI_VERSION);
		dlclose(handle);
		return SHADOW_ENOGPU;
	}
	/* The handle stays open for the life of the process: ops point into it. */
	gpu_ops = ops;
	return 0;
}

static void gpu_load_once(void)
{
	char path[PATH_MAX];
	const char *env = getenv("SHADOW_CUDA_MODULE");

	if (env != NULL && env[0] != '\0') {
		gpu_status = gpu_try_load(env);
	} else {
		gpu_status = SHADOW_ENOGPU;
		Dl_info info;
		if (dladdr((void *)&shadow_gpu_probe, &info) != 0 && info.dli_fname != NULL) {
			const char *slash = strrchr(info.dli_fname, '/');
			int dir_len = slash != NULL ? (int)(slash - info.dli_fname) : 1;
			const char *dir = slash != NULL ? info.dli_fname : ".";
			if (snprintf(path, sizeof(path), "%.*s/%s", dir_len, dir,
				     SHADOW_CUDA_MODULE_NAME) < (int)sizeof(path))
				gpu_status = gpu_try_load(path);
		}
#ifdef SHADOW_LIBDIR
		if (gpu_status != 0 &&
		    snprintf(path, sizeof(path), "%s/%s", SHADOW_LIBDIR, SHADOW_CUDA_MODULE_NAME) <
			    (int)sizeof(path))
			gpu_status = gpu_try_load(path);
#endif
	}
	if (gpu_status != 0) {
		SHADOW_LOGI("no CUDA module found (set SHADOW_CUDA_MODULE); GPU paths disabled");
		return;
	}
	int n = 0;
	int err = gpu_ops->device_count(&n);
	if (err != 0) {
		/* The module logged the CUDA error; the process simply has no usable GPU. */
		gpu_ops = NULL;
		gpu_status = SHADOW_ENOGPU;
	}
}

int shadow__gpu_ops(const struct shadow__gpu_ops **ops_ret)
{
	pthread_once(&gpu_once, gpu_load_once);
	if (gpu_status != 0)
		return gpu_status;
	*ops_ret = gpu_ops;
	return 0;
}

int shadow_gpu_probe(int *n_devices_ret)
{
	const struct shadow__gpu_ops *ops;
	int err = shadow__gpu_ops(&ops);
	if (err != 0)
		return err;
	return ops->device_count(n_devices_ret);
}
