/*
 * codec_bench.h - the codec benchmark (bench/codec), as a function so that both the
 * bench_codec program and `shadowctl bench codec` run it.
 *
 * It encodes KV dumps (KVD1, plain or xz; or a synthetic KV) chunk by chunk with each scheme,
 * decodes every frame into a staging image and scatters it into a paged region, and reports
 * compression ratio, single-core encode/decode throughput against memcpy measured in the same
 * run, and fidelity (K/V relative RMSE, max |error|, attention-output error when a query file
 * sits beside the dump). `argv[0] --help` lists the options.
 */
#ifndef SHADOW_BENCH_CODEC_BENCH_H
#define SHADOW_BENCH_CODEC_BENCH_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Run the benchmark. argv[0] is the command's name (used in messages only); the rest are
 * options and dump paths. Keeps no state between calls; pins the calling thread to its
 * current CPU while it runs (unless --no-pin) and restores the affinity after. Prints the
 * table to stdout and diagnostics to stderr.
 *
 * Returns the exit status: 0 success, 1 a runtime failure (unreadable or malformed input, a
 * library error in any scheme, a lossless scheme that did not round-trip), 2 a usage error.
 */
int shadow_bench_codec_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* SHADOW_BENCH_CODEC_BENCH_H */
