/*
 * bench_util.c - clock, CPU pinning, CPU model and file helpers for the benchmarks.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "bench_util.h"

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int bench_pin_current_cpu(cpu_set_t *saved_ret, int *cpu_ret)
{
	cpu_set_t one;
	int cpu = sched_getcpu();
	int rc;

	if (cpu < 0)
		return -errno;
	rc = pthread_getaffinity_np(pthread_self(), sizeof(*saved_ret), saved_ret);
	if (rc != 0)
		return -rc;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	rc = pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
	if (rc != 0)
		return -rc;
	*cpu_ret = cpu;
	return 0;
}

void bench_unpin(const cpu_set_t *saved)
{
	(void)pthread_setaffinity_np(pthread_self(), sizeof(*saved), saved);
}

void bench_cpu_model(char *buf, size_t buf_nbytes)
{
	static const char *const keys[] = { "model name", "Model", "cpu model", "Hardware" };
	char line[512];
	FILE *f;

	snprintf(buf, buf_nbytes, "unknown CPU");
	f = fopen("/proc/cpuinfo", "r");
	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL) {
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			size_t n = strlen(keys[i]);
			char *colon = strchr(line, ':');
			if (strncmp(line, keys[i], n) != 0 || colon == NULL)
				continue;
			colon++;
			while (*colon == ' ' || *colon == '\t')
				colon++;
			colon[strcspn(colon, "\n")] = '\0';
			snprintf(buf, buf_nbytes, "%s", colon);
			fclose(f);
			return;
		}
	}
	fclose(f);
}

int bench_read_file(const char *path, uint64_t max_nbytes, uint8_t **buf_ret,
		    size_t *nbytes_ret)
{
	struct stat st;
	uint8_t *buf;
	size_t got;
	int err = 0;
	FILE *f = fopen(path, "rb");

	if (f == NULL)
		return -errno;
	if (fstat(fileno(f), &st) != 0) {
		err = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		err = -EINVAL;
		goto out_close;
	}
	if ((uint64_t)st.st_size > max_nbytes) {
		err = -EFBIG;
		goto out_close;
	}
	buf = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
	if (buf == NULL) {
		err = -ENOMEM;
		goto out_close;
	}
	got = fread(buf, 1, (size_t)st.st_size, f);
	if (got != (size_t)st.st_size) {
		err = ferror(f) ? -EIO : -ENODATA;
		free(buf);
		goto out_close;
	}
	*buf_ret = buf;
	*nbytes_ret = got;
out_close:
	fclose(f);
	return err;
}

int bench_file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

FILE *bench_csv_open(const char *prog, const char *path, const char *header)
{
	FILE *f = fopen(path, "w");

	if (f == NULL || fprintf(f, "%s\n", header) < 0 || fflush(f) != 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		if (f != NULL)
			fclose(f);
		return NULL;
	}
	return f;
}

const char *bench_opt_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
	size_t n = strlen(name);

	if (strncmp(argv[*i], name, n) != 0)
		return NULL;
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (argv[*i][n] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		*missing = true;
		return NULL;
	}
	return argv[++*i];
}

int bench_parse_u32_list(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, uint32_t max,
			 uint32_t *n_ret)
{
	uint32_t n = 0;

	while (*s != '\0') {
		char *end;
		unsigned long v;

		if (*s < '0' || *s > '9' || n == max)
			return -EINVAL;
		v = strtoul(s, &end, 10);
		if (v < lo || v > hi || (*end != ',' && *end != '\0'))
			return -EINVAL;
		out[n++] = (uint32_t)v;
		s = *end == ',' ? end + 1 : end;
	}
	if (n == 0)
		return -EINVAL;
	*n_ret = n;
	return 0;
}

int bench_split_schemes(const char *list, int (*add)(void *ctx, const char *name, size_t len),
			void *ctx)
{
	const char *p = list;

	while (*p != '\0') {
		const char *end = p;
		while (*end != '\0') {
			end += strcspn(end, ",");
			if (*end == ',' && end[1] >= '0' && end[1] <= '9') {
				end++;
				continue;
			}
			break;
		}
		if (end > p) {
			int rc = add(ctx, p, (size_t)(end - p));
			if (rc < 0)
				return rc;
		}
		p = *end == ',' ? end + 1 : end;
	}
	return 0;
}

int bench_pin_process(pid_t pid, const cpu_set_t *set)
{
	char path[64];
	struct dirent *de;
	DIR *d;
	int err = 0, n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (d == NULL)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		pid_t tid = (pid_t)atoi(de->d_name);
		if (tid <= 0)
			continue;
		if (sched_setaffinity(tid, sizeof(*set), set) != 0 && err == 0)
			err = -errno;
		n++;
	}
	closedir(d);
	return err != 0 ? err : n > 0 ? 0 : -ESRCH;
}

int bench_parse_name_set(const char *s, const char *const *names, int n, bool *set)
{
	memset(set, 0, (size_t)n * sizeof(*set));
	while (*s != '\0') {
		size_t len = strcspn(s, ",");
		int k;

		for (k = 0; k < n; k++)
			if (strlen(names[k]) == len && strncmp(s, names[k], len) == 0)
				break;
		if (k == n)
			return -EINVAL;
		set[k] = true;
		s += len;
		if (*s == ',')
			s++;
	}
	return 0;
}

int bench_strv_push(char ***v, size_t *n, const char *name, size_t len)
{
	char *copy = malloc(len + 1);
	char **grown;

	if (copy == NULL)
		return -ENOMEM;
	grown = realloc(*v, (*n + 1) * sizeof(*grown));
	if (grown == NULL) {
		free(copy);
		return -ENOMEM;
	}
	memcpy(copy, name, len);
	copy[len] = '\0';
	grown[*n] = copy;
	*v = grown;
	(*n)++;
	return 0;
}

void bench_strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}
