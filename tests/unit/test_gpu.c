/*
 * test_gpu.c - the CUDA module loader and the module's ops.
 *
 * Always runs: a bad module path is reported as SHADOW_ENOGPU, not a crash. Where a GPU and
 * the module are present it also round-trips bytes through pinned host and device memory;
 * otherwise it exits 77 (skip) and says why.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gpu/gpu.h"
#include <shadow/shadow.h>

/* The loader caches its result per process, so each path is probed in a child. */
static int probe_in_child(const char *module_path)
{
	pid_t pid = fork();
	if (pid == 0) {
		setenv("SHADOW_CUDA_MODULE", module_path, 1);
		int n = 0;
		int err = shadow_gpu_probe(&n);
		_exit(err == SHADOW_ENOGPU ? 10 : err == 0 ? 0 : 1);
	}
	int status = 0;
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static void test_missing_module_is_enogpu(void **state)
{
	(void)state;
	assert_int_equal(probe_in_child("/nonexistent/libshadow_cuda.so"), 10);
	/* A real shared object that is not a CUDA module: the symbol is missing. */
	assert_int_equal(probe_in_child("libc.so.6"), 10);
}

static void test_roundtrip_pinned_device(void **state)
{
	(void)state;
	const struct shadow__gpu_ops *ops;
	assert_int_equal(shadow__gpu_ops(&ops), 0);

	char desc[256];
	assert_int_equal(ops->device_describe(0, desc, sizeof(desc)), 0);
	printf("# GPU 0: %s\n", desc);

	const size_t nbytes = 8u << 20;
	uint8_t *host_src, *host_dst;
	void *dev;
	assert_int_equal(ops->host_alloc((void **)&host_src, nbytes), 0);
	assert_int_equal(ops->host_alloc((void **)&host_dst, nbytes), 0);
	assert_int_equal(ops->dev_alloc(&dev, nbytes), 0);
	for (size_t i = 0; i < nbytes; i++)
		host_src[i] = (uint8_t)(i * 2654435761u >> 13);
	memset(host_dst, 0, nbytes);
	assert_int_equal(ops->memcpy_sync(dev, host_src, nbytes, SHADOW_GPU_H2D), 0);
	assert_int_equal(ops->memcpy_sync(host_dst, dev, nbytes, SHADOW_GPU_D2H), 0);
	assert_memory_equal(host_src, host_dst, nbytes);

	/* Bad arguments are errors, not crashes. */
	assert_int_equal(ops->memcpy_sync(dev, host_src, 16, (enum shadow__gpu_copy_dir)99),
			 -EINVAL);
	assert_int_equal(ops->dev_alloc(NULL, 16), -EINVAL);

	assert_int_equal(ops->dev_free(dev), 0);
	assert_int_equal(ops->host_free(host_src), 0);
	assert_int_equal(ops->host_free(host_dst), 0);
}

int main(void)
{
	const struct CMUnitTest always[] = {
		cmocka_unit_test(test_missing_module_is_enogpu),
	};
	int failed = cmocka_run_group_tests_name("gpu_loader", always, NULL, NULL);
	if (failed != 0)
		return 1;

	int n = 0;
	int err = shadow_gpu_probe(&n);
	if (err == SHADOW_ENOGPU) {
		printf("SKIP: GPU round trip: no CUDA module or no GPU here (%s)\n",
		       shadow_strerror(err));
		return 77;
	}
	assert_int_equal(err, 0);
	const struct CMUnitTest gpu[] = {
		cmocka_unit_test(test_roundtrip_pinned_device),
	};
	return cmocka_run_group_tests_name("gpu_device", gpu, NULL, NULL) != 0;
}
