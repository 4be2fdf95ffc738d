/*
 * bench_util.h - small helpers shared by the benchmark programs: a monotonic clock, pinning
 * the calling thread to the CPU it runs on (single-core figures), the CPU's model name, and
 * reading a whole file with a size cap.
 *
 * Benchmarks are programs, not library code: these helpers print nothing themselves and return
 * 0 or -errno so the caller can say which file or call failed.
 */
#ifndef SHADOW_BENCH_UTIL_H
#define SHADOW_BENCH_UTIL_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);

/* Seconds between two bench_now_ns() readings. */
static inline double bench_seconds(uint64_t t0_ns, uint64_t t1_ns)
{
	return (double)(t1_ns - t0_ns) * 1e-9;
}

/*
 * Pin the calling thread to the CPU it is running on now. The previous affinity mask goes to
 * *saved_ret (give it back with bench_unpin) and the CPU to *cpu_ret. Returns 0 or -errno.
 */
int bench_pin_current_cpu(cpu_set_t *saved_ret, int *cpu_ret);

/* Restore the mask saved by bench_pin_current_cpu(). */
void bench_unpin(const cpu_set_t *saved);

/* "model name" of /proc/cpuinfo (or a fallback) into buf; always NUL-terminated. */
void bench_cpu_model(char *buf, size_t buf_nbytes);

/*
 * Read the whole of `path` into a malloc()ed buffer (*buf_ret, free() it) of *nbytes_ret
 * bytes. Returns 0, -errno, or -EFBIG if the file is larger than max_nbytes.
 */
int bench_read_file(const char *path, uint64_t max_nbytes, uint8_t **buf_ret,
		    size_t *nbytes_ret);

/* Whether `path` names an existing regular file. */
int bench_file_exists(const char *path);

/* Create (truncate) the CSV file `path` and write its `header` line (without the newline),
 * flushed. NULL on failure, printed as "PROG: PATH: why". */
FILE *bench_csv_open(const char *prog, const char *path, const char *header);

/*
 * Command-line option `name` at argv[*i], as `--name VALUE` or `--name=VALUE`: returns the
 * value (advancing *i past it), or NULL if argv[*i] is another option; sets *missing when the
 * option is there but its value is not.
 */
const char *bench_opt_value(int argc, char **argv, int *i, const char *name, bool *missing);

/*
 * Pin every thread of process `pid` (its /proc/PID/task entries) to `set`: a server started for
 * a benchmark, kept off the benchmark's CPUs. 0, -ESRCH (no threads) or the first -errno.
 */
int bench_pin_process(pid_t pid, const cpu_set_t *set);

/*
 * A comma list of names, each one of names[0 .. n-1]: set[i] is true for those given, false
 * for the others. 0 or -EINVAL (an unknown name).
 */
int bench_parse_name_set(const char *s, const char *const *names, int n, bool *set);

/* A comma list of numbers in [lo, hi], at most max of them, into out[]. 0 or -EINVAL. */
int bench_parse_u32_list(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, uint32_t max,
			 uint32_t *n_ret);

/*
 * Split a comma list of codec scheme names, calling add(ctx, name, len) for each; a piece that
 * starts with a digit belongs to the previous name ("bits4-g64,8+zstd1" is one name). Returns
 * 0 or the first negative value add returned.
 */
int bench_split_schemes(const char *list, int (*add)(void *ctx, const char *name, size_t len),
			void *ctx);

/*
 * Append a malloc()ed, NUL-terminated copy of name[0 .. len) to the realloc()ed array *v of *n
 * strings (scheme names from a command line). 0 or -ENOMEM; on failure *v and *n still
 * describe what was there, for bench_strv_free().
 */
int bench_strv_push(char ***v, size_t *n, const char *name, size_t len);

/* Free the n strings of v and v itself. */
void bench_strv_free(char **v, size_t n);

#endif /* SHADOW_BENCH_UTIL_H */
