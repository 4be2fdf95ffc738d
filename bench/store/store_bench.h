/*
 * store_bench.h - the store benchmark (bench/store), as a function so that both the
 * bench_store program and `shadowctl bench store` run it.
 *
 * It measures GET goodput of large values (1, 4, 16, 64 MiB by default) from one local
 * redis-server with 1 to 8 connections, ShadowServe's redis:// client against hiredis in the
 * same run, and the mem:// and file:// backends against memcpy of the same size.
 * `argv[0] --help` lists the options.
 */
#ifndef SHADOW_BENCH_STORE_BENCH_H
#define SHADOW_BENCH_STORE_BENCH_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Run the benchmark. argv[0] is the command's name (used in messages only); the rest are
 * options. Keeps no state between calls, except that the hiredis runs leave glibc's malloc
 * without mmap()ed blocks or trimming (mallopt; not with --hiredis-stock). Starts (and stops)
 * a redis-server unless given --redis URL or --no-redis; pins the calling thread to its
 * current CPU while it runs (unless --no-pin) and restores the affinity after; ignores SIGPIPE
 * while it runs. Prints the tables to stdout and diagnostics to stderr. Call it from the main
 * thread: the redis-server it starts is killed when the thread that started it exits.
 *
 * Returns the exit status: 0 success (parts that cannot run here, such as Redis without a
 * redis-server binary, are skipped with a message), 1 a runtime failure (a store or hiredis
 * error, a value that did not read back intact), 2 a usage error.
 */
int shadow_bench_store_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* SHADOW_BENCH_STORE_BENCH_H */
