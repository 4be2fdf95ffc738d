/*
 * pipeline_bench.h - the pipeline benchmark (bench/pipeline), as a function so that both the
 * bench_pipeline program and `shadowctl bench pipeline` run it.
 *
 * It drives the data plane's pipeline (lib/pipeline) directly: chunks of the real KV dumps are
 * saved into mem:// and redis:// with each codec scheme, then fetched into a host (or, with
 * --cuda, a GPU) region with 1, 2, 4 and 8 decode threads. Each row reports goodput (bf16
 * bytes delivered per second) and CPU seconds per GB beside the bound measured in the same
 * run: min(decode threads x one core's decode speed, the store's read bandwidth, the copy
 * backend's bandwidth). `argv[0] --help` lists the options.
 */
#ifndef SHADOW_BENCH_PIPELINE_BENCH_H
#define SHADOW_BENCH_PIPELINE_BENCH_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Run the benchmark. argv[0] is the command's name (used in messages only); the rest are
 * options and dump paths. Keeps no state between calls. Pins the calling thread to the first
 * CPU it may use and the pipeline's threads inside --cpus (unless --no-pin), restoring the
 * caller's affinity after; ignores SIGPIPE while it runs. Starts (and stops) a redis-server
 * unless given --redis URL or --no-redis. With --cuda it forks a child process that owns the
 * destination GPU memory; call it before anything in the process has used CUDA, and from the
 * main thread (the redis-server and the child are killed when the thread that started them
 * exits). Prints the tables to stdout and diagnostics to stderr.
 *
 * Returns the exit status: 0 success (parts that cannot run here, such as Redis without a
 * redis-server binary, are skipped with a message), 1 a runtime failure (a pipeline, store or
 * CUDA error, a chunk that did not arrive, a lossless scheme whose bytes differ), 2 a usage
 * error.
 */
int shadow_bench_pipeline_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* SHADOW_BENCH_PIPELINE_BENCH_H */
