/*
 * pipeline_bench.c - the pipeline benchmark: goodput (bf16 bytes delivered into the engine's
 * KV memory per second) and CPU seconds per GB of the whole data plane (fetch -> decode ->
 * copy, lib/pipeline) against the number of decode threads and the codec scheme, from mem://
 * and redis://, each row beside a bound measured for it in the same run.
 *
 * DESIGN
 *
 * Data. The real KV dumps (bench/codec/kvdump.h; without them a synthetic KV, and the output
 * says so) are copied once each into a source region, a host memfd. The data set is G
 * sequences of S chunks, S = the whole chunks of a dump (8 of 256 tokens for the shared
 * 2048-token dumps): sequence g is a copy of dump g mod D under its own chain of chunk keys
 * (namespace salted with g), so N = G x S chunks are distinct store values and every chunk
 * keeps its true position (PCA codes keys un-rotated by position, and a container records its
 * chunk index). Per scheme the data set is SAVEd through a pipeline (untimed; one op per
 * sequence, a save thread per CPU) under a key prefix of its own.
 *
 * Destination. N chunks' worth of blocks in the same layout as the source (NHD by default): a
 * host memfd, or with --cuda GPU memory that a child process allocates and exports by CUDA
 * IPC (a handle cannot be opened by the process that exported it; tests/unit/test_copy.c).
 * The child is forked before this process makes its first CUDA call: CUDA does not survive
 * fork(), but a child forked before the parent's first call starts clean, and this way
 * bench_pipeline and `shadowctl bench pipeline` need no re-exec convention. Chunk i goes to
 * blocks taken from a fixed random permutation of the block ids (a paged engine's blocks are
 * scattered; --contiguous puts them in order, so that a frame's runs merge).
 *
 * Goodput. For each decode thread count T a pipeline is created (threads pinned inside
 * --cpus; a pinned pool with --cuda); an untimed pass fetches every op once (first-touch
 * faults, codecs created); then FETCH ops of K chunks (one sequence by default: a 2048-token
 * prefix hit) are kept --inflight at a time until --gb GB of bf16 were asked for (or
 * --max-time passed). goodput = the ops' bytes_out / wall seconds from the first submit to
 * the last completion; cpu_s_per_gb = getrusage(RUSAGE_SELF) user + sys over the same span
 * per GB delivered: every pipeline thread plus the main thread, which sleeps on a semaphore
 * between completions. A redis-server is another process and is not counted.
 *
 * Bound, measured in the same run with the main thread moved to a pipeline CPU and nothing
 * else running:
 *   decode  shadow_chunk_decode_frame() of every frame of the scheme's containers (read back
 *           from the store) into one staging image, timed as bench/codec times it: decoded
 *           GB/s of one core, times T. The scheme's "terms" line shows it on the set's first
 *           CPU; for a row it is measured on every CPU of the pipeline's set in turn, each
 *           alone, and T x the mean over the CPUs the row's decode threads are pinned to (the
 *           whole set when they float) is the row's term: on a VM one core's speed differs
 *           from CPU to CPU and drifts over a run (clocks, neighbours; core_speeds());
 *   store   GETs of the same values with the store alone: on as many threads as the
 *           pipeline has fetch threads, each with a handle opened with the pipeline's store
 *           options (so the same connections as a fetch thread), as many GETs in flight in
 *           all as the pipeline has receive buffers, each into its own rx-sized
 *           buffer; container GB/s times the scheme's ratio, so that it counts decoded bytes
 *           as goodput does;
 *   copy    the copy backend alone, on --copy-threads threads as the pipeline's copy threads
 *           (each with a context of its own and every n-th frame), copying
 *           staging images from pool memory into the destination with the pipeline's plans
 *           (host: a memcpy per run; cuda: batched H2D from pinned memory). With --cuda also a
 *           plain pinned H2D reference: large contiguous copies into device memory.
 * A row measures all three right before its run and again right after it, and takes each
 * term's mean of the two (row_terms()): on the GPU host a term moves by 10-25% within a
 * minute, as much as the target's margin, and a drift during the run then shows as a gap
 * between the two figures on the row's "terms before / after" line.
 * bound = min(T x decode, store, copy); the table names the smallest term.
 *
 * With --alone, beside each row, measured right before it with the same loop as the decode
 * term, T cores
 * alone: T decoders started together (a start barrier), each pinned to a CPU of its own from
 * the pipeline's set (one per core before hyperthread siblings, as the scheduler spreads the
 * pipeline's threads) and starting at its own place in the data set; decoded GB/s = all their
 * bytes / the longest one's time; the first to pass min_time tells the others to stop at
 * their next chunk boundary, so that all of them run at once throughout. Hot: each into its
 * own staging image; cycled: each frame after frame through its own pool / T bytes of
 * slot-sized positions, wrapping: the destination as cold as slots cycled FIFO through the
 * pool (the worst case; the pool hands out its free slots LIFO, core/pool.h, so the
 * pipeline's slots are usually warmer). A row that misses its bound reads: hot against T x
 * one core is what T cores at once cost each other (clocks, shared LLC and memory bandwidth,
 * neighbours), cycled against hot what cold slots would cost, and the pipeline's decode GB/s
 * per busy thread (its copy plans timed in) against hot per core what is left to the
 * pipeline itself.
 *
 * Memory. The pipeline's pool is pre-faulted at creation. Its resident cost is the growth of
 * this process's RSS outside shared memory (/proc/self/status VmRSS - RssShmem) from before
 * the pipeline's creation to the end of its timed run: that leaves out the memfd regions and
 * counts the pool, the threads and the store connections (not a pinned pool: cudaHostAlloc
 * memory does not show in RSS). Peak RSS of the whole process (ru_maxrss, data set and store
 * values included) is reported too.
 *
 * Latency (--latency N; 0, the default: not measured). Right after a row's timed run, on the
 * same pipeline, region, store and chunks (so warm), N FETCH ops one at a time, each submitted
 * only once the last one completed: first ops of one chunk, then ops of the row's chunks per
 * op (--op-chunks; a sequence by default). Each is timed from just before its submit to the
 * first thing its on_done does (CLOCK_MONOTONIC, on the pipeline thread that finishes it: the
 * waiter's own wake-up is not counted); p50, p90, p99 and max in microseconds, nearest rank.
 * A failed op (submit error, op status, a chunk not OK) is counted, printed and left out of
 * the percentiles; the run goes on, and the bench exits 1 at the end. Beside them, per chunk
 * from the row's terms (the means of before and after, as its bound): store = chunk bytes /
 * store GB/s (amortized over the term's GETs in flight, so a lone GET may take longer),
 * decode = chunk bytes / one core's GB/s, divided by T (a chunk's frames decode in parallel),
 * copy = chunk bytes / (copy GB/s / copy threads) (a chunk goes to one copy thread whole).
 * Their sum against a 1-chunk op's p50 is what fetching one chunk costs beyond the three
 * terms back to back: the hand-offs and wake-ups between stages, and whatever of a chunk's
 * fetch and decode its copy cannot overlap because the chunk is staged whole first (its copy
 * starts after its last frame was decoded). A K-chunk op is set against the same sum plus
 * K - 1 times the slowest of the three, the ideal pipelined time. --latency-csv PATH writes
 * one line per row and op size: store,scheme,decode_threads,op_chunks,n,p50_us,p90_us,
 * p99_us,max_us (n: the ops that completed OK and were counted).
 *
 * Check. After the first run of each scheme every frame of the destination is read back with
 * the copy backend and compared with the source: a lossless scheme must match bit for bit, a
 * lossy one reports max |error| / max |value|.
 *
 * CPUs. The main thread is pinned to the first CPU it may use (CPU 0 normally); a
 * redis-server started here to the last one when there are at least 3 (else it shares the
 * main thread's CPU, which only sleeps during the runs); the pipeline's threads run inside
 * --cpus, by default all the CPUs left: one CPU each, in the set's order, when the set has
 * enough, else floating in it (lib/pipeline/pipeline.c). Decode thread counts above the
 * pipeline's CPUs are skipped. The save pipeline, untimed and alone, uses every CPU.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <shadow/shadow.h>

#include "bench_util.h"
#include "core/cpuset.h"
#include "gpu/gpu.h"
#include "kvdump.h"
#include "pipeline/pipeline.h"
#include "pipeline_bench.h"
#include "support/redis_server.h"

#define MIB (UINT64_C(1) << 20)
#define BLOCK_TOKENS 16u           /* default --block-tokens, and the smallest */
#define DUMPS_MAX 16
#define SCHEMES_MAX 16u
#define THREADS_LIST_MAX 8u
#define THREADS_MAX 64u            /* decode threads of one row */
#define DEFAULT_CHUNKS 256u        /* 384 MiB of bf16 for minillama-h128 */
#define QUICK_CHUNKS 32u
#define DEFAULT_GB 1.5             /* bf16 GB per measurement */
#define QUICK_GB 0.05
#define DEFAULT_MIN_TIME 1.0       /* each term of the bound */
#define QUICK_MIN_TIME 0.1
#define DEFAULT_MAX_TIME 30.0      /* a measurement stops early past this */
#define QUICK_MAX_TIME 5.0
#define DEFAULT_INFLIGHT 8u
#define DEFAULT_POOL (UINT64_C(256) << 20)
#define RSS_ALLOWANCE (UINT64_C(64) << 20) /* the issue's target: within --pool plus this */
#define RX_ALIGN (UINT64_C(64) << 10)
#define COPY_BURST 4u              /* chunks per flush in the copy term */
#define COPY_THREADS_MAX 8u        /* --copy-threads */
#define H2D_COPY_NBYTES (UINT64_C(32) << 20)
#define H2D_COPIES 8u
#define STALL_S 60                 /* no op completed for this long: the run failed */
#define CHILD_START_S 120          /* the CUDA child's first CUDA call can take a while */
#define REQUEST_TIMEOUT_MS 30000u  /* store requests: far from the 5 s default on a loaded VM */
#define SYNTHETIC_TOKENS 2048u
/* The shared dumps' model, minillama-h128, uses RoPE base 500000 (../shared/data/kv/README). */
#define ROPE_THETA 500000.0
#define KEY_MODEL_ID "bench-pipeline"
#define KEY_PREFIX "bench-pipeline"
/* As bench/store: jemalloc keeps freed pages, so replies are not built in fresh ones. */
#define DEFAULT_MALLOC_CONF SHADOW_TEST_REDIS_MALLOC_CONF

/*
 * Schemes run by default: the lossless default, int8, and PCA at about 3% attention error
 * (docs/results.md), the fastest and the slowest decoders a deployment would pick.
 */
static const char *const default_schemes[] = {
	"bf16planes+zstd1", "int8+zstd1", "pca-s0.09+zstd1",
};
/* --cuda adds one whose decode runs near memcpy speed, so that the copy backend can limit. */
static const char *const cuda_extra_scheme = "bf16+none";
static const uint32_t default_threads[] = { 1, 2, 4, 8 };
static const uint32_t quick_threads[] = { 1, 2 };

enum store_kind { ST_MEM, ST_REDIS, ST_COUNT };
static const char *const store_names[ST_COUNT] = { "mem", "redis" };
enum limit { LIM_DECODE, LIM_STORE, LIM_COPY };
static const char *const limit_names[] = { "decode", "store", "copy" };

struct options {
	const char *prog;
	char **paths; /* dumps given on the command line (argv's strings) */
	int n_paths;
	char **schemes; /* malloc()ed copies */
	size_t n_schemes;
	uint32_t threads[THREADS_LIST_MAX];
	uint32_t n_threads;
	uint32_t max_threads;
	uint32_t n_chunks;
	uint32_t op_chunks;   /* 0: one sequence */
	uint32_t inflight;
	uint32_t latency;     /* --latency: ops one at a time per op size; 0: off */
	uint32_t fetch_threads, copy_threads, block_tokens, layers;
	uint64_t pool_nbytes;
	double gb, min_time, max_time;
	const char *csv_path, *lat_csv_path, *redis_url, *malloc_conf;
	int redis_cpu;        /* -2: chosen here; -1: not pinned */
	int device;
	enum shadow_layout_kind layout;
	cpu_set_t cpus;
	bool cpus_set;
	bool stores[ST_COUNT];
	bool quick, pin, cuda, synthetic, contiguous, alone;
};

/* A KV region as the pipeline sees it, and where it lives here. */
struct region {
	struct shadow__region_spec spec;
	int fd;        /* host: the memfd; -1 for cuda */
	uint8_t *map;  /* host source: our mapping; NULL otherwise */
};

struct dataset {
	struct bench_kv kv[DUMPS_MAX];
	int n_dumps;
	bool synthetic;
	struct shadow_kv_geometry geom;
	uint32_t bpc;             /* blocks per chunk */
	uint32_t seq_chunks;      /* S */
	uint32_t n_seqs;          /* G */
	uint32_t n_chunks;        /* N = G x S */
	uint32_t n_frames;        /* per chunk */
	uint64_t frame_nbytes, chunk_nbytes;
	uint64_t rx_nbytes;
	uint64_t stage_nbytes;    /* the pipeline's staging area for either region */
	uint64_t frame_pitch;     /* of frames in a staging area */
	uint32_t max_runs;        /* of one frame, either layout */
	struct region src, dst;
	uint32_t *src_ids, *dst_ids; /* chunk i: [i * bpc, (i + 1) * bpc) */
	struct shadow_chunk_key *keys;
	struct shadow_transform *transform;
	double calib_s;
};

/* One row of the table (and of the CSV). */
struct row {
	const char *store, *scheme;
	uint32_t threads;
	double goodput, cpu_per_gb, bound, decode1, store_gbps, copy_gbps, rss_mib;
	enum limit limit;
};

/* One (store, scheme): its values in the store and what was measured on them. */
struct scheme_run {
	enum store_kind store_kind;
	uint32_t idx;               /* in o->schemes */
	const char *scheme;
	struct shadow_codec_options opts;
	bool lossless, pca;
	char url[1100];
	char prefix[SHADOW_KEY_PREFIX_MAX + 1];
	char (*key_text)[SHADOW_STORE_KEY_MAX];
	struct shadow_store *store; /* held open: a mem:// instance lives while a handle does */
	uint8_t *cont;              /* every container, rx_nbytes apart, until the rows are done */
	uint64_t *cont_nbytes;
	struct shadow_chunk_view *views; /* cont parsed: what the decode terms decode */
	uint64_t cont_total;
	double ratio, save_s, store_gbps;
	uint32_t save_threads;
	bool checked;               /* the destination was read back after a run */
};

struct bench {
	const struct options *o;
	struct dataset ds;
	FILE *csv, *lat_csv;
	int status;
	struct shadow_store_options store_opts;
	const struct shadow__copy_ops *copy_ops;
	/* CPUs */
	bool pinned;
	cpu_set_t saved_affinity, pipe_cpus, allowed_cpus;
	int main_cpu, measure_cpu, redis_cpu;
	uint32_t n_pipe_cpus;
	/* the CUDA child */
	pid_t child_pid;
	int child_done_fd;
	/* Redis */
	struct shadow_test_redis *server;
	char redis_url[1024];
	bool have_redis;
	/* measured */
	uint32_t n_bufs;              /* the pipeline's chunk buffers */
	double copy_gbps, h2d_gbps;
	double decode1[SCHEMES_MAX];   /* NaN until measured */
	struct row *rows;
	uint32_t n_rows;
	uint64_t rss_growth_max, rss_growth_pool;
	/* runs of every frame of every chunk into the destination (the check), and every
	 * chunk's copy as the pipeline plans it (the copy term) */
	struct shadow_copy_run *dst_runs;
	uint32_t *dst_n_runs;
	struct shadow__copy_plan *chunk_plans;
	struct shadow_copy_run *chunk_runs;
	struct shadow__copy_rect *chunk_rects;
};

static uint64_t round_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

static double gbps(uint64_t nbytes, double seconds)
{
	return seconds > 0.0 ? (double)nbytes / seconds * 1e-9 : NAN;
}

/* " %*.*f", or a right-aligned "-" in the same width for NaN (not measured). */
static void print_cell(double v, int width, int prec)
{
	if (isnan(v))
		printf(" %*s", width, "-");
	else
		printf(" %*.*f", width, prec, v);
}

/* ------------------------------------------------------------------------------------------ */
/* Command line                                                                               */
/* ------------------------------------------------------------------------------------------ */

static void usage(FILE *out, const char *prog)
{
	fprintf(out,
		"usage: %s [options] [DUMP.kvd[.xz] ...]\n"
		"Goodput of the data-plane pipeline (fetch -> decode -> copy) and CPU s per GB,\n"
		"against decode threads and codec scheme, from mem:// and redis://, beside the\n"
		"bound min(threads x one core's decode speed, store read bandwidth, copy bandwidth)\n"
		"measured in the same run. Without dumps: every *.kvd.xz of $SHADOW_SHARED_DIR/data/kv\n"
		"or ../shared/data/kv, else a synthetic KV.\n"
		"  --schemes LIST      codec schemes (default bf16planes+zstd1,int8+zstd1,\n"
		"                      pca-s0.09+zstd1; --cuda adds %s)\n"
		"  --threads LIST      decode thread counts (default 1,2,4,8; --quick 1,2); counts\n"
		"                      above --max-threads or the pipeline's CPUs are skipped\n"
		"  --max-threads N     cap on decode threads\n"
		"  --chunks N          distinct chunks in the store (default %u; --quick %u), rounded\n"
		"                      up to whole sequences (one dump's chunks)\n"
		"  --op-chunks K       chunks per fetch op, dividing a sequence (default: a sequence)\n"
		"  --inflight N        fetch ops kept in flight (default %u)\n"
		"  --gb X              bf16 GB per measurement (default %.2f; --quick %.2f)\n"
		"  --max-time SEC      stop a measurement early after this (default %.0f; --quick %.0f)\n"
		"  --min-time SEC      time each term of the bound this long (default %.1f; --quick %.1f)\n"
		"  --pool SIZE         the pipeline's pool (default 256MiB)\n"
		"  --fetch-threads N   the pipeline's fetch threads (default 1)\n"
		"  --copy-threads N    the pipeline's copy threads, and the copy term's (default 1)\n"
		"  --layers N          the dumps' layers repeated to N layers (default: as they are;\n"
		"                      32 for a Llama-3-8B-deep chunk: 2D copies of 64 lines)\n"
		"  --block-tokens N    tokens per KV block of the regions (default 16: 8 KiB per\n"
		"                      layer and kind for the dumps; 64: 32 KiB, as Llama-3-8B's)\n"
		"  --layout KIND       nhd, hnd or cross (cross-layer NHD) (default nhd)\n"
		"  --contiguous        each chunk's blocks in order (default: scattered, as paged)\n"
		"  --cuda              destination in GPU memory owned by a child process (CUDA IPC)\n"
		"  --device N          the GPU for --cuda (default 0)\n"
		"  --cpus LIST         CPUs of the pipeline's threads, e.g. 1-14 (default: all but the\n"
		"                      main thread's and the started redis-server's)\n"
		"  --no-pin            pin nothing\n"
		"  --stores LIST       any of mem,redis (default: both)\n"
		"  --no-redis          mem:// only: no redis-server needed\n"
		"  --redis URL         use this server instead of starting one; pin it yourself\n"
		"  --redis-cpu N       pin the started redis-server to CPU N (-1: do not pin it)\n"
		"  --redis-malloc-conf S  MALLOC_CONF of the started redis-server (default %s;\n"
		"                      \"\": as inherited)\n"
		"  --synthetic         a synthetic KV instead of the dumps\n"
		"  --csv PATH          rows store,scheme,decode_threads,goodput_gbps,cpu_s_per_gb,\n"
		"                      bound_gbps\n"
		"  --latency N         after each row, N fetch ops one at a time, of one chunk and of\n"
		"                      --op-chunks chunks: p50/p90/p99/max us, beside the per-chunk\n"
		"                      store, decode and copy times of the terms (default 0: off)\n"
		"  --latency-csv PATH  rows store,scheme,decode_threads,op_chunks,n,p50_us,p90_us,\n"
		"                      p99_us,max_us (needs --latency)\n"
		"  --alone             beside each row, T cores decoding alone at once (hot and\n"
		"                      cycled through pool-sized memory)\n"
		"  --quick             smoke test: few chunks, short measurements\n"
		"  -h, --help\n",
		prog, cuda_extra_scheme, DEFAULT_CHUNKS, QUICK_CHUNKS, DEFAULT_INFLIGHT, DEFAULT_GB,
		QUICK_GB, DEFAULT_MAX_TIME, QUICK_MAX_TIME, DEFAULT_MIN_TIME, QUICK_MIN_TIME,
		DEFAULT_MALLOC_CONF);
}

static int add_scheme(struct options *o, const char *name, size_t len)
{
	if (o->n_schemes == SCHEMES_MAX)
		return -E2BIG;
	return bench_strv_push(&o->schemes, &o->n_schemes, name, len);
}

static int add_scheme_cb(void *ctx, const char *name, size_t len)
{
	return add_scheme(ctx, name, len);
}

static void free_options(struct options *o)
{
	bench_strv_free(o->schemes, o->n_schemes);
	free(o->paths);
	o->schemes = NULL;
	o->n_schemes = 0;
	o->paths = NULL;
}



/* A CPU set as "0-3,8" into buf. */
static void cpu_set_text(const cpu_set_t *set, char *buf, size_t nbytes)
{
	size_t len = 0;

	buf[0] = '\0';
	for (int c = 0; c < CPU_SETSIZE && len < nbytes; c++) {
		if (!CPU_ISSET(c, set))
			continue;
		int e = c;
		while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set))
			e++;
		int n = e > c ? snprintf(buf + len, nbytes - len, "%s%d-%d", len ? "," : "", c, e)
			      : snprintf(buf + len, nbytes - len, "%s%d", len ? "," : "", c);
		if (n < 0)
			break;
		len += (size_t)n;
		c = e;
	}
}


static int parse_seconds(const char *prog, const char *name, const char *v, double lo, double *out)
{
	char *end;
	double t = strtod(v, &end);

	if (*v == '\0' || *end != '\0' || !(t >= lo && t <= 3600.0)) {
		fprintf(stderr, "%s: %s %s: want %g .. 3600\n", prog, name, v, lo);
		return 2;
	}
	*out = t;
	return 0;
}

/* Returns 0, 1 (out of memory), 2 (usage error) or -1 (done: --help). */
static int parse_args(int argc, char **argv, struct options *o)
{
	const char *schemes = NULL;
	bool gb_set = false, min_set = false, max_set = false, threads_set = false;
	bool chunks_set = false;

	memset(o, 0, sizeof(*o));
	o->prog = argc > 0 && argv[0] != NULL ? argv[0] : "bench_pipeline";
	o->n_chunks = DEFAULT_CHUNKS;
	o->inflight = DEFAULT_INFLIGHT;
	o->fetch_threads = 1;
	o->copy_threads = 1;
	o->block_tokens = BLOCK_TOKENS;
	o->max_threads = UINT32_MAX;
	o->pool_nbytes = DEFAULT_POOL;
	o->gb = DEFAULT_GB;
	o->min_time = DEFAULT_MIN_TIME;
	o->max_time = DEFAULT_MAX_TIME;
	o->malloc_conf = DEFAULT_MALLOC_CONF;
	o->redis_cpu = -2;
	o->layout = SHADOW_LAYOUT_NHD;
	o->pin = true;
	o->stores[ST_MEM] = o->stores[ST_REDIS] = true;
	o->paths = calloc(argc > 0 ? (size_t)argc : 1, sizeof(char *));
	if (o->paths == NULL)
		return 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v;
		bool missing = false;
		char *end;
		int rc;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, o->prog);
			return -1;
		} else if (strcmp(a, "--alone") == 0) {
			o->alone = true;
		} else if (strcmp(a, "--quick") == 0) {
			o->quick = true;
		} else if (strcmp(a, "--no-pin") == 0) {
			o->pin = false;
		} else if (strcmp(a, "--cuda") == 0) {
			o->cuda = true;
		} else if (strcmp(a, "--synthetic") == 0) {
			o->synthetic = true;
		} else if (strcmp(a, "--contiguous") == 0) {
			o->contiguous = true;
		} else if (strcmp(a, "--no-redis") == 0) {
			o->stores[ST_REDIS] = false;
		} else if ((v = bench_opt_value(argc, argv, &i, "--schemes", &missing)) != NULL) {
			schemes = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--threads", &missing)) != NULL) {
			if (bench_parse_u32_list(v, 1, THREADS_MAX, o->threads, THREADS_LIST_MAX,
						 &o->n_threads) < 0) {
				fprintf(stderr, "%s: --threads %s: want up to %u counts of 1..%u\n",
					o->prog, v, THREADS_LIST_MAX, THREADS_MAX);
				return 2;
			}
			threads_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--max-threads", &missing)) != NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < 1 || n > THREADS_MAX) {
				fprintf(stderr, "%s: --max-threads %s: want 1..%u\n", o->prog, v,
					THREADS_MAX);
				return 2;
			}
			o->max_threads = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--chunks", &missing)) != NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < 1 || n > 65536) {
				fprintf(stderr, "%s: --chunks %s: want 1..65536\n", o->prog, v);
				return 2;
			}
			o->n_chunks = (uint32_t)n;
			chunks_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--op-chunks", &missing)) != NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < 1 ||
			    n > SHADOW__OP_CHUNKS_MAX) {
				fprintf(stderr, "%s: --op-chunks %s: want 1..%u\n", o->prog, v,
					SHADOW__OP_CHUNKS_MAX);
				return 2;
			}
			o->op_chunks = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--inflight", &missing)) != NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < 1 || n > 256) {
				fprintf(stderr, "%s: --inflight %s: want 1..256\n", o->prog, v);
				return 2;
			}
			o->inflight = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--fetch-threads", &missing)) !=
			   NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < 1 || n > 8) {
				fprintf(stderr, "%s: --fetch-threads %s: want 1..8\n", o->prog, v);
				return 2;
			}
			o->fetch_threads = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--block-tokens", &missing)) !=
			   NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < BLOCK_TOKENS ||
			    n > SHADOW_DEFAULT_CHUNK_TOKENS || (n & (n - 1)) != 0) {
				fprintf(stderr, "%s: --block-tokens %s: want a power of two in %u..%u\n",
					o->prog, v, BLOCK_TOKENS, SHADOW_DEFAULT_CHUNK_TOKENS);
				return 2;
			}
			o->block_tokens = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--layers", &missing)) != NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < 1 || n > SHADOW_MAX_LAYERS) {
				fprintf(stderr, "%s: --layers %s: want 1..%u\n", o->prog, v,
					SHADOW_MAX_LAYERS);
				return 2;
			}
			o->layers = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--copy-threads", &missing)) !=
			   NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n < 1 || n > COPY_THREADS_MAX) {
				fprintf(stderr, "%s: --copy-threads %s: want 1..%u\n", o->prog, v,
					COPY_THREADS_MAX);
				return 2;
			}
			o->copy_threads = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--gb", &missing)) != NULL) {
			double x = strtod(v, &end);
			if (*v == '\0' || *end != '\0' || !(x > 0.0 && x <= 1000.0)) {
				fprintf(stderr, "%s: --gb %s: want 0 .. 1000\n", o->prog, v);
				return 2;
			}
			o->gb = x;
			gb_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--min-time", &missing)) != NULL) {
			if ((rc = parse_seconds(o->prog, a, v, 0.0, &o->min_time)) != 0)
				return rc;
			min_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--max-time", &missing)) != NULL) {
			if ((rc = parse_seconds(o->prog, a, v, 0.01, &o->max_time)) != 0)
				return rc;
			max_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--pool", &missing)) != NULL) {
			if (shadow_parse_size(v, &o->pool_nbytes) < 0 || o->pool_nbytes < 8 * MIB ||
			    o->pool_nbytes > (UINT64_C(1) << 40)) {
				fprintf(stderr, "%s: --pool %s: want a size of 8MiB .. 1TiB\n",
					o->prog, v);
				return 2;
			}
		} else if ((v = bench_opt_value(argc, argv, &i, "--layout", &missing)) != NULL) {
			if (strcmp(v, "nhd") == 0) {
				o->layout = SHADOW_LAYOUT_NHD;
			} else if (strcmp(v, "hnd") == 0) {
				o->layout = SHADOW_LAYOUT_HND;
			} else if (strcmp(v, "cross") == 0) {
				o->layout = SHADOW_LAYOUT_CROSS_LAYER_NHD;
			} else {
				fprintf(stderr, "%s: --layout %s: want nhd, hnd or cross\n", o->prog,
					v);
				return 2;
			}
		} else if ((v = bench_opt_value(argc, argv, &i, "--device", &missing)) != NULL) {
			long n = strtol(v, &end, 10);
			if (*v == '\0' || *end != '\0' || n < 0 || n > 255) {
				fprintf(stderr, "%s: --device %s: want 0..255\n", o->prog, v);
				return 2;
			}
			o->device = (int)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--cpus", &missing)) != NULL) {
			if (shadow__cpuset_parse(v, &o->cpus) < 0) {
				fprintf(stderr, "%s: --cpus %s: want a list such as 1-7,9\n", o->prog,
					v);
				return 2;
			}
			o->cpus_set = true;
		} else if ((v = bench_opt_value(argc, argv, &i, "--stores", &missing)) != NULL) {
			if (bench_parse_name_set(v, store_names, ST_COUNT, o->stores) < 0) {
				fprintf(stderr, "%s: --stores %s: want names of mem, redis\n", o->prog,
					v);
				return 2;
			}
		} else if ((v = bench_opt_value(argc, argv, &i, "--redis-cpu", &missing)) != NULL) {
			long n = strtol(v, &end, 10);
			if (*v == '\0' || *end != '\0' || n < -1 || n >= CPU_SETSIZE) {
				fprintf(stderr, "%s: --redis-cpu %s: want a CPU number or -1\n",
					o->prog, v);
				return 2;
			}
			o->redis_cpu = (int)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--redis-malloc-conf", &missing)) !=
			   NULL) {
			o->malloc_conf = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--redis", &missing)) != NULL) {
			if (strncmp(v, "redis://", 8) != 0) {
				fprintf(stderr, "%s: --redis %s: want a redis:// URL\n", o->prog, v);
				return 2;
			}
			o->redis_url = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--csv", &missing)) != NULL) {
			o->csv_path = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--latency", &missing)) != NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v < '0' || *v > '9' || *end != '\0' || n > 1000000) {
				fprintf(stderr, "%s: --latency %s: want 0..1000000\n", o->prog, v);
				return 2;
			}
			o->latency = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--latency-csv", &missing)) !=
			   NULL) {
			o->lat_csv_path = v;
		} else if (missing) {
			fprintf(stderr, "%s: %s needs a value\n", o->prog, a);
			return 2;
		} else if (a[0] == '-' && a[1] != '\0') {
			fprintf(stderr, "%s: unknown option '%s' (try --help)\n", o->prog, a);
			return 2;
		} else {
			o->paths[o->n_paths++] = argv[i];
		}
	}
	if (o->quick) {
		if (!chunks_set)
			o->n_chunks = QUICK_CHUNKS;
		if (!gb_set)
			o->gb = QUICK_GB;
		if (!min_set)
			o->min_time = QUICK_MIN_TIME;
		if (!max_set)
			o->max_time = QUICK_MAX_TIME;
	}
	if (!threads_set) {
		const uint32_t *t = o->quick ? quick_threads : default_threads;
		o->n_threads = o->quick ? SHADOW_ARRAY_SIZE(quick_threads)
					: SHADOW_ARRAY_SIZE(default_threads);
		memcpy(o->threads, t, o->n_threads * sizeof(*t));
	}
	int rc = 0;
	if (schemes != NULL) {
		rc = bench_split_schemes(schemes, add_scheme_cb, o);
	} else {
		for (size_t k = 0; k < SHADOW_ARRAY_SIZE(default_schemes) && rc == 0; k++)
			rc = add_scheme(o, default_schemes[k], strlen(default_schemes[k]));
		if (o->cuda && rc == 0)
			rc = add_scheme(o, cuda_extra_scheme, strlen(cuda_extra_scheme));
	}
	if (rc == -E2BIG) {
		fprintf(stderr, "%s: --schemes: at most %u schemes\n", o->prog, SCHEMES_MAX);
		return 2;
	}
	if (rc < 0)
		return 1;
	if (o->n_schemes == 0) {
		fprintf(stderr, "%s: --schemes: no scheme given\n", o->prog);
		return 2;
	}
	for (uint32_t k = 0; k < o->n_schemes; k++) {
		struct shadow_codec_options opts;
		rc = shadow_codec_options_parse(o->schemes[k], &opts);
		if (rc < 0) {
			fprintf(stderr, "%s: scheme '%s': %s\n", o->prog, o->schemes[k],
				shadow_strerror(rc));
			return 2;
		}
	}
	if (o->lat_csv_path != NULL && o->latency == 0) {
		fprintf(stderr, "%s: --latency-csv needs --latency N\n", o->prog);
		return 2;
	}
	if (!o->stores[ST_MEM] && !o->stores[ST_REDIS]) {
		fprintf(stderr, "%s: no store left to run (--stores, --no-redis)\n", o->prog);
		return 2;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Process helpers: CPUs, memory, CPU time                                                    */
/* ------------------------------------------------------------------------------------------ */

static int pin_self(int cpu)
{
	cpu_set_t one;

	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	return -pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
}

/*
 * The k-th CPU of the pipeline's set (wrapping), where helper thread k of a term runs: a
 * thread inherits its creator's CPUs, and the main thread measures pinned to one, so a term's
 * helpers left alone would all share that CPU. -1 when not pinned.
 */
static int set_cpu(const struct bench *b, uint32_t k)
{
	return b->pinned ? shadow__cpuset_nth(&b->pipe_cpus, k % b->n_pipe_cpus) : -1;
}

/* The first CPU of `cpu`'s core (from its thread_siblings_list, also copied into sib when
 * given), or `cpu` itself when sysfs does not say. */
static int cpu_core(int cpu, char *sib, size_t sib_nbytes)
{
	char path[128], line[256] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list",
		 cpu);
	f = fopen(path, "r");
	if (f != NULL) {
		if (fgets(line, sizeof(line), f) == NULL)
			line[0] = '\0';
		fclose(f);
	}
	line[strcspn(line, "\n")] = '\0';
	if (sib != NULL)
		snprintf(sib, sib_nbytes, "%s", line);
	char *end;
	long first = strtol(line, &end, 10);
	return end != line && first >= 0 && first < CPU_SETSIZE ? (int)first : cpu;
}


/* Resident bytes of this process outside shared memory (VmRSS - RssShmem); 0 if unknown. */
static uint64_t rss_private_nbytes(void)
{
	char line[256];
	unsigned long long rss = 0, shmem = 0, v;
	FILE *f = fopen("/proc/self/status", "r");

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "VmRSS: %llu kB", &v) == 1)
			rss = v;
		else if (sscanf(line, "RssShmem: %llu kB", &v) == 1)
			shmem = v;
	}
	fclose(f);
	return rss > shmem ? (uint64_t)(rss - shmem) * 1024u : 0;
}

static double rusage_cpu_s(const struct rusage *r)
{
	return (double)r->ru_utime.tv_sec + (double)r->ru_utime.tv_usec * 1e-6 +
	       (double)r->ru_stime.tv_sec + (double)r->ru_stime.tv_usec * 1e-6;
}

/* ------------------------------------------------------------------------------------------ */
/* The data set                                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * A memfd of nbytes, sealed against shrinking (the host backend takes no other: a file that
 * shrinks under its mapping would make a copy fault), mapped read-write; 0 or -errno (message
 * printed).
 */
static int memfd_region(const char *prog, const char *name, uint64_t nbytes, int *fd_ret,
			uint8_t **map_ret)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	void *map;

	if (fd < 0 || ftruncate(fd, (off_t)nbytes) != 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
		int err = errno;
		fprintf(stderr, "%s: memfd of %llu MiB: %s\n", prog,
			(unsigned long long)(nbytes / MIB), strerror(err));
		if (fd >= 0)
			close(fd);
		return -err;
	}
	map = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		int err = errno;
		fprintf(stderr, "%s: mmap of %llu MiB: %s\n", prog,
			(unsigned long long)(nbytes / MIB), strerror(err));
		close(fd);
		return -err;
	}
	*fd_ret = fd;
	*map_ret = map;
	return 0;
}

/* A host region of n_blocks blocks in layout `kind`, backed by a fresh memfd. */
static int region_make_host(const char *prog, const char *name, const struct shadow_kv_geometry *g,
			    enum shadow_layout_kind kind, uint32_t n_blocks, struct region *r)
{
	uint64_t block_nbytes = (uint64_t)g->block_tokens * g->n_kv_heads * g->head_dim *
				shadow_dtype_nbytes(g->dtype);
	uint64_t nbytes = 2ull * g->n_layers * n_blocks * block_nbytes;
	int rc;

	memset(r, 0, sizeof(*r));
	r->fd = -1;
	rc = shadow_layout_init(&r->spec.layout, g, kind, n_blocks, 0, nbytes);
	if (rc < 0) {
		fprintf(stderr, "%s: shadow_layout_init: %s\n", prog, shadow_strerror(rc));
		return rc;
	}
	rc = memfd_region(prog, name, nbytes, &r->fd, &r->map);
	if (rc < 0)
		return rc;
	r->spec.geom = *g;
	r->spec.mem.kind = SHADOW__COPY_HOST;
	r->spec.mem.fd = r->fd;
	r->spec.mem.nbytes = nbytes;
	return 0;
}

static void region_free(struct region *r)
{
	if (r->map != NULL)
		munmap(r->map, r->spec.mem.nbytes);
	if (r->fd >= 0)
		close(r->fd);
	r->map = NULL;
	r->fd = -1;
}

static int load_dumps(struct bench *b)
{
	const struct options *o = b->o;
	struct dataset *ds = &b->ds;
	char **paths = o->paths;
	size_t n = (size_t)o->n_paths;
	glob_t g;
	bool globbed = false;
	int rc = 0;

	if (!o->synthetic && n == 0)
		globbed = bench_kv_find_default(&g);
	if (globbed) {
		paths = g.gl_pathv;
		n = g.gl_pathc;
	}
	if (o->synthetic || n == 0) {
		ds->synthetic = true;
		rc = bench_kv_synthetic(o->prog, SYNTHETIC_TOKENS, &ds->kv[0]);
		if (rc == 0)
			ds->n_dumps = 1;
		return rc;
	}
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (ds->n_dumps == DUMPS_MAX) {
			fprintf(stderr, "%s: warning: using the first %d dumps\n", o->prog,
				DUMPS_MAX);
			break;
		}
		rc = bench_kv_load(o->prog, paths[i], &ds->kv[ds->n_dumps]);
		if (rc == 0)
			ds->n_dumps++;
	}
	if (globbed)
		globfree(&g);
	return rc;
}

/* --layers: the dump's layers repeated (layer l is the dump's l % n_layers) to n layers, for
 * the copy's shape of a deeper model; the queries are dropped. 0 or -1 (printed). */
static int tile_layers(const char *prog, struct bench_kv *kv, uint32_t n)
{
	const uint64_t per_layer = 2 * kv->plane_elems;
	uint16_t *t = malloc((size_t)(n * per_layer * sizeof(*t)));

	if (t == NULL) {
		fprintf(stderr, "%s: %s: out of memory for %u layers\n", prog, kv->path, n);
		return -1;
	}
	for (uint32_t l = 0; l < n; l++)
		memcpy(t + l * per_layer, kv->kv + (l % kv->n_layers) * per_layer,
		       per_layer * sizeof(*t));
	free(kv->kv);
	kv->kv = t;
	kv->n_layers = n;
	kv->has_queries = false;
	return 0;
}

/* The most copy runs a frame of `layout` can need: every block on its own (as the pipeline
 * sizes its plans, lib/pipeline/pipeline.c). */
static uint32_t layout_max_runs(const struct dataset *ds, const struct shadow_kv_layout *layout)
{
	uint32_t zeros[SHADOW_MAX_CHUNK_TOKENS / BLOCK_TOKENS] = { 0 }; /* bpc at most */
	size_t n = 0;
	int rc = shadow_layout_plan_frame(layout, &ds->geom, 0, SHADOW_KV_K, zeros, ds->bpc, NULL,
					  0, &n);

	return rc == 0 || rc == -ENOBUFS ? (uint32_t)n :
					    ds->bpc * ds->geom.block_tokens * ds->geom.n_kv_heads;
}

/* xorshift64*: the block permutation, fixed from run to run. */
static uint64_t rng_next(uint64_t *x)
{
	*x ^= *x >> 12;
	*x ^= *x << 25;
	*x ^= *x >> 27;
	return *x * UINT64_C(0x2545F4914F6CDD1D);
}

/*
 * Load the dumps, fill the source region, make the destination (host), the block tables and
 * the keys, size the pipeline's buffers for every scheme, and calibrate the PCA transform if
 * a scheme needs one. Returns 0, 2 (options that do not fit the data) or 1 (printed).
 */
static int dataset_build(struct bench *b)
{
	const struct options *o = b->o;
	struct dataset *ds = &b->ds;
	const uint32_t chunk = SHADOW_DEFAULT_CHUNK_TOKENS;
	uint32_t *tokens = NULL;
	int rc;

	if (load_dumps(b) < 0)
		return 1;
	for (int d = 0; d < ds->n_dumps && o->layers != 0; d++) {
		if (tile_layers(o->prog, &ds->kv[d], o->layers) < 0)
			return 1;
	}
	const struct bench_kv *kv0 = &ds->kv[0];
	ds->geom = (struct shadow_kv_geometry){
		.n_layers = kv0->n_layers,
		.n_kv_heads = kv0->n_kv_heads,
		.head_dim = kv0->head_dim,
		.dtype = SHADOW_DTYPE_BF16,
		.block_tokens = o->block_tokens,
		.chunk_tokens = chunk,
	};
	rc = shadow_geometry_validate(&ds->geom);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: geometry not usable: %s\n", o->prog, kv0->path,
			shadow_strerror(rc));
		return 1;
	}
	ds->seq_chunks = UINT32_MAX;
	for (int d = 0; d < ds->n_dumps; d++) {
		const struct bench_kv *kv = &ds->kv[d];
		if (kv->n_layers != kv0->n_layers || kv->n_kv_heads != kv0->n_kv_heads ||
		    kv->head_dim != kv0->head_dim) {
			fprintf(stderr, "%s: %s: another model's shape than %s\n", o->prog, kv->path,
				kv0->path);
			return 1;
		}
		ds->seq_chunks = SHADOW_MIN(ds->seq_chunks, kv->n_tokens / chunk);
	}
	if (ds->seq_chunks == 0) {
		fprintf(stderr, "%s: a dump holds fewer than %u tokens (one chunk)\n", o->prog, chunk);
		return 1;
	}
	ds->seq_chunks = SHADOW_MIN(ds->seq_chunks, SHADOW__OP_CHUNKS_MAX);
	if (o->op_chunks != 0 &&
	    (o->op_chunks > ds->seq_chunks || ds->seq_chunks % o->op_chunks != 0)) {
		fprintf(stderr, "%s: --op-chunks %u: must divide a sequence's %u chunks (an op "
				"never spans two sequences)\n", o->prog, o->op_chunks,
			ds->seq_chunks);
		return 2;
	}
	ds->bpc = chunk / ds->geom.block_tokens;
	ds->n_seqs = (o->n_chunks + ds->seq_chunks - 1) / ds->seq_chunks;
	ds->n_chunks = ds->n_seqs * ds->seq_chunks;
	ds->n_frames = 2 * ds->geom.n_layers;
	ds->frame_nbytes = shadow_geometry_frame_nbytes(&ds->geom);
	ds->chunk_nbytes = ds->n_frames * ds->frame_nbytes;

	/* Source: each dump once, dump d in blocks [d * S * bpc, (d + 1) * S * bpc). */
	uint32_t per_dump = ds->seq_chunks * ds->bpc;
	if (region_make_host(o->prog, "bench-pipeline-src", &ds->geom, o->layout,
			     (uint32_t)ds->n_dumps * per_dump, &ds->src) < 0)
		return 1;
	for (int d = 0; d < ds->n_dumps; d++) {
		/* bench_kv_to_region puts token t in block t / block_tokens: shift the bases so
		 * that block 0 of this layout is the dump's first block. */
		struct shadow_kv_layout shifted = ds->src.spec.layout;
		uint64_t shift = (uint64_t)d * per_dump * (uint64_t)shifted.block_stride;
		for (uint32_t l = 0; l < ds->geom.n_layers; l++)
			for (int kind = 0; kind < 2; kind++)
				shifted.base[l][kind] += shift;
		shifted.n_blocks = per_dump;
		if (bench_kv_to_region(o->prog, &ds->kv[d], ds->seq_chunks * chunk, &ds->geom,
				       &shifted, ds->src.map) < 0)
			return 1;
	}

	/* Destination (host): touched once here, as an engine's KV memory would be. */
	if (!o->cuda) {
		if (region_make_host(o->prog, "bench-pipeline-dst", &ds->geom, o->layout,
				     ds->n_chunks * ds->bpc, &ds->dst) < 0)
			return 1;
		memset(ds->dst.map, 0, ds->dst.spec.mem.nbytes);
		munmap(ds->dst.map, ds->dst.spec.mem.nbytes); /* the pipeline maps it itself */
		ds->dst.map = NULL;
	} else {
		uint64_t block_nbytes = (uint64_t)ds->geom.block_tokens * ds->geom.n_kv_heads *
					ds->geom.head_dim * 2u;
		uint64_t nbytes = 2ull * ds->geom.n_layers * ds->n_chunks * ds->bpc * block_nbytes;
		memset(&ds->dst, 0, sizeof(ds->dst));
		ds->dst.fd = -1;
		rc = shadow_layout_init(&ds->dst.spec.layout, &ds->geom, o->layout,
					ds->n_chunks * ds->bpc, 0, nbytes);
		if (rc < 0) {
			fprintf(stderr, "%s: shadow_layout_init: %s\n", o->prog, shadow_strerror(rc));
			return 1;
		}
		ds->dst.spec.geom = ds->geom;
		ds->dst.spec.mem.kind = SHADOW__COPY_CUDA;
		ds->dst.spec.mem.fd = -1;
		ds->dst.spec.mem.device = o->device;
		ds->dst.spec.mem.nbytes = nbytes;
	}

	/* Block tables and keys. */
	const uint64_t n_ids = (uint64_t)ds->n_chunks * ds->bpc;
	ds->src_ids = malloc(n_ids * sizeof(uint32_t));
	ds->dst_ids = malloc(n_ids * sizeof(uint32_t));
	ds->keys = malloc(ds->n_chunks * sizeof(*ds->keys));
	tokens = malloc((size_t)ds->seq_chunks * chunk * sizeof(uint32_t));
	if (ds->src_ids == NULL || ds->dst_ids == NULL || ds->keys == NULL || tokens == NULL) {
		fprintf(stderr, "%s: out of memory\n", o->prog);
		free(tokens);
		return 1;
	}
	uint64_t x = UINT64_C(0x9e3779b97f4a7c15);
	for (uint64_t i = 0; i < n_ids; i++)
		ds->dst_ids[i] = (uint32_t)i;
	for (uint64_t i = n_ids - 1; !o->contiguous && i > 0; i--) {
		uint64_t j = rng_next(&x) % (i + 1);
		uint32_t t = ds->dst_ids[i];
		ds->dst_ids[i] = ds->dst_ids[j];
		ds->dst_ids[j] = t;
	}
	for (uint32_t s = 0; s < ds->n_seqs; s++) {
		const uint32_t d = s % (uint32_t)ds->n_dumps;
		const struct bench_kv *kv = &ds->kv[d];
		struct shadow_chunk_key ns;
		char salt[32];
		size_t nk = 0;

		for (uint32_t c = 0; c < ds->seq_chunks * ds->bpc; c++)
			ds->src_ids[(uint64_t)s * ds->seq_chunks * ds->bpc + c] = d * per_dump + c;
		for (uint32_t t = 0; t < ds->seq_chunks * chunk; t++)
			tokens[t] = kv->ids != NULL ? kv->ids[t] : (uint32_t)((t * 2654435761u) >> 7);
		int n = snprintf(salt, sizeof(salt), "seq-%u", s);
		rc = shadow_key_namespace(KEY_MODEL_ID, &ds->geom, salt, (size_t)n, &ns);
		if (rc == 0)
			rc = shadow_key_chain(&ns, tokens, (size_t)ds->seq_chunks * chunk, chunk,
					      &ds->keys[(size_t)s * ds->seq_chunks], ds->seq_chunks,
					      &nk);
		if (rc == 0 && nk != ds->seq_chunks)
			rc = -EINVAL;
		if (rc < 0) {
			fprintf(stderr, "%s: chunk keys: %s\n", o->prog, shadow_strerror(rc));
			free(tokens);
			return 1;
		}
	}
	free(tokens);

	/* PCA: one transform, calibrated on the first dump (RoPE un-rotated for real dumps). */
	bool any_pca = false;
	for (uint32_t k = 0; k < o->n_schemes; k++) {
		struct shadow_codec_options opts;
		(void)shadow_codec_options_parse(o->schemes[k], &opts);
		any_pca |= opts.quant == SHADOW_QUANT_PCA;
	}
	if (any_pca) {
		float inv_freq[SHADOW_MAX_HEAD_DIM / 2];
		bool rope = !ds->synthetic &&
			    shadow_rope_inv_freq(ROPE_THETA, ds->geom.head_dim, inv_freq) == 0;
		uint64_t t0 = bench_now_ns();
		rc = shadow_transform_calibrate(&ds->geom, ds->src.map, &ds->src.spec.layout,
						ds->src_ids, per_dump, rope ? inv_freq : NULL,
						&ds->transform);
		ds->calib_s = bench_seconds(t0, bench_now_ns());
		if (rc < 0) {
			fprintf(stderr, "%s: warning: shadow_transform_calibrate: %s: PCA schemes "
					"skipped\n", o->prog, shadow_strerror(rc));
			ds->transform = NULL;
		}
	}

	/* Buffers: a receive buffer holds the largest container of any scheme, a staging area
	 * a chunk's frames and copy plan (as pipeline.c sizes it). */
	struct shadow_codec *codec = NULL;
	uint64_t bound = 0;
	rc = shadow_codec_create(&ds->geom, &codec);
	if (rc == 0 && ds->transform != NULL)
		rc = shadow_codec_set_transform(codec, ds->transform);
	for (uint32_t k = 0; k < o->n_schemes && rc == 0; k++) {
		struct shadow_codec_options opts;
		(void)shadow_codec_options_parse(o->schemes[k], &opts);
		if (opts.quant == SHADOW_QUANT_PCA && ds->transform == NULL)
			continue;
		uint64_t n = shadow_chunk_encode_bound(codec, &opts);
		if (n == 0) {
			fprintf(stderr, "%s: scheme '%s' does not fit the geometry\n", o->prog,
				o->schemes[k]);
			rc = 2;
		}
		bound = SHADOW_MAX(bound, n);
	}
	shadow_codec_free(codec);
	if (rc != 0) {
		if (rc < 0)
			fprintf(stderr, "%s: codec: %s\n", o->prog, shadow_strerror(rc));
		return rc > 0 ? rc : 1;
	}
	/* The save path gathers a whole chunk into a receive-buffer-sized block too. */
	ds->rx_nbytes = round_up(SHADOW_MAX(bound, ds->chunk_nbytes), RX_ALIGN);
	ds->max_runs = SHADOW_MAX(layout_max_runs(ds, &ds->src.spec.layout),
				  layout_max_runs(ds, &ds->dst.spec.layout));
	uint64_t stage_src = 0, pitch_src = 0;
	rc = shadow__pipeline_stage_size(&ds->geom, &ds->src.spec.layout, &stage_src, &pitch_src);
	if (rc == 0)
		rc = shadow__pipeline_stage_size(&ds->geom, &ds->dst.spec.layout, &ds->stage_nbytes,
						 &ds->frame_pitch);
	if (rc < 0) {
		fprintf(stderr, "%s: staging area: %s\n", o->prog, shadow_strerror(rc));
		return 1;
	}
	ds->stage_nbytes = SHADOW_MAX(ds->stage_nbytes, stage_src);
	return 0;
}

static void dataset_free(struct dataset *ds)
{
	for (int d = 0; d < ds->n_dumps; d++)
		bench_kv_free(&ds->kv[d]);
	region_free(&ds->src);
	region_free(&ds->dst);
	free(ds->src_ids);
	free(ds->dst_ids);
	free(ds->keys);
	shadow_transform_free(ds->transform);
	memset(ds, 0, sizeof(*ds));
	ds->src.fd = ds->dst.fd = -1;
}

/* ------------------------------------------------------------------------------------------ */
/* The CUDA child: the engine's side of a GPU destination                                     */
/* ------------------------------------------------------------------------------------------ */

struct cuda_msg {
	int32_t status;
	uint8_t handle[SHADOW__CUDA_IPC_HANDLE_NBYTES];
};

/* In the forked child: allocate, export, report, then hold the memory until the parent closes
 * its end of `rfd` (or dies). Never returns. */
static void cuda_child_main(int wfd, int rfd, uint64_t nbytes, int device)
{
	const struct shadow__gpu_ops *gpu = NULL;
	struct cuda_msg m;
	void *dev = NULL;
	char c;

	memset(&m, 0, sizeof(m));
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	m.status = shadow__gpu_ops(&gpu);
	if (m.status == 0)
		m.status = gpu->device_set(device);
	if (m.status == 0)
		m.status = gpu->dev_alloc(&dev, nbytes);
	if (m.status == 0)
		m.status = gpu->ipc_export(dev, m.handle);
	if (write(wfd, &m, sizeof(m)) != (ssize_t)sizeof(m))
		_exit(1);
	close(wfd);
	for (;;) {
		ssize_t n = read(rfd, &c, 1);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		break;
	}
	if (dev != NULL)
		(void)gpu->dev_free(dev);
	_exit(m.status == 0 ? 0 : 1);
}

/*
 * Fork the child (this process must not have called CUDA yet) and take its handle into the
 * destination's description. 0, or 1 (printed).
 */
static int cuda_child_start(struct bench *b)
{
	const struct options *o = b->o;
	struct region *dst = &b->ds.dst;
	int up[2], down[2];
	struct cuda_msg m;
	pid_t pid;

	if (pipe2(up, O_CLOEXEC) != 0)
		goto sys_fail;
	if (pipe2(down, O_CLOEXEC) != 0) {
		close(up[0]);
		close(up[1]);
		goto sys_fail;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		close(up[0]);
		close(up[1]);
		close(down[0]);
		close(down[1]);
		goto sys_fail;
	}
	if (pid == 0) {
		close(up[0]);
		close(down[1]);
		cuda_child_main(up[1], down[0], dst->spec.mem.nbytes, o->device);
	}
	close(up[1]);
	close(down[0]);
	b->child_pid = pid;
	b->child_done_fd = down[1];

	struct pollfd p = { .fd = up[0], .events = POLLIN };
	ssize_t n = -1;
	if (poll(&p, 1, CHILD_START_S * 1000) == 1)
		n = read(up[0], &m, sizeof(m));
	close(up[0]);
	if (n != (ssize_t)sizeof(m)) {
		fprintf(stderr, "%s: --cuda: the child process gave no IPC handle within %d s\n",
			o->prog, CHILD_START_S);
		return 1;
	}
	if (m.status != 0) {
		fprintf(stderr, "%s: --cuda: the child could not allocate and export %llu MiB on "
				"device %d: %s%s\n", o->prog,
			(unsigned long long)(dst->spec.mem.nbytes / MIB), o->device,
			shadow_strerror(m.status),
			m.status == SHADOW_ENOGPU ? " (set SHADOW_CUDA_MODULE to libshadow_cuda.so)"
						  : "");
		return 1;
	}
	memcpy(dst->spec.mem.ipc_handle, m.handle, sizeof(m.handle));
	return 0;
sys_fail:
	fprintf(stderr, "%s: --cuda: %s\n", o->prog, strerror(errno));
	return 1;
}

static void cuda_child_stop(struct bench *b)
{
	int status;

	if (b->child_pid <= 0)
		return;
	close(b->child_done_fd);
	while (waitpid(b->child_pid, &status, 0) < 0 && errno == EINTR)
		;
	b->child_pid = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Ops through the pipeline                                                                   */
/* ------------------------------------------------------------------------------------------ */

struct run;

struct run_op {
	struct shadow__op op;
	struct run *run;
	_Atomic int done;
	uint8_t *status;
};

struct run {
	sem_t sem;
	struct run_op *ops;
	uint8_t *status;
};

/* From a pipeline thread: short, as pipeline.h asks. */
static void run_on_done(struct shadow__op *op)
{
	struct run_op *ro = op->user;

	atomic_store_explicit(&ro->done, 1, memory_order_release); /* pairs with the exchange in
								      run_ops */
	sem_post(&ro->run->sem);
}

struct run_spec {
	bool save;
	uint32_t region;
	uint32_t op_chunks;    /* FETCH: chunks per op (divides a sequence); SAVE: a sequence */
	uint32_t inflight;
	uint64_t max_ops;      /* 0: no limit */
	uint64_t target_nbytes; /* stop submitting once this many decoded bytes were asked for */
	double max_time;       /* stop submitting after this long; 0: no limit */
};

struct run_result {
	uint64_t ops, bytes_in, bytes_out;
	double seconds, cpu_s, user_s;
};

/* Wait for the semaphore at most `s` seconds. 0 or -ETIMEDOUT. */
static int sem_wait_s(sem_t *sem, int s)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += s;
	for (;;) {
		if (sem_timedwait(sem, &ts) == 0)
			return 0;
		if (errno != EINTR)
			return -errno;
	}
}

/*
 * Keep up to rs->inflight ops on `pl`; op n covers window n mod (N / op_chunks), i.e. chunks
 * [w * K, (w + 1) * K). Stops submitting at max_ops, target_nbytes or max_time, or at the
 * first op with a chunk that is not OK, and returns when every op submitted has completed.
 * Returns 0, or -1 (printed).
 */
static int run_ops(struct bench *b, struct shadow__pipeline *pl, const struct run_spec *rs,
		   struct run_result *res)
{
	const struct dataset *ds = &b->ds;
	const char *what = rs->save ? "save" : "fetch";
	const uint32_t n_windows = ds->n_chunks / rs->op_chunks;
	struct run *run = calloc(1, sizeof(*run));
	uint64_t next = 0, asked = 0, t0, t_last;
	uint32_t active = 0;
	struct rusage r0, r1;
	int rc = 0;

	memset(res, 0, sizeof(*res));
	if (run == NULL)
		goto nomem;
	run->ops = calloc(rs->inflight, sizeof(*run->ops));
	run->status = calloc((size_t)rs->inflight * rs->op_chunks, 1);
	if (run->ops == NULL || run->status == NULL)
		goto nomem;
	sem_init(&run->sem, 0, 0);
	for (uint32_t k = 0; k < rs->inflight; k++) {
		run->ops[k].run = run;
		run->ops[k].status = run->status + (size_t)k * rs->op_chunks;
	}

	getrusage(RUSAGE_SELF, &r0);
	t0 = t_last = bench_now_ns();
	for (;;) {
		/* Submit into every free op while there is work left. */
		for (uint32_t j = 0; j < rs->inflight && rc == 0; j++) {
			struct run_op *ro = &run->ops[j];
			if (ro->op.on_done != NULL)
				continue; /* in flight */
			if ((rs->max_ops != 0 && next >= rs->max_ops) ||
			    (rs->target_nbytes != 0 && asked >= rs->target_nbytes) ||
			    (rs->max_time > 0.0 &&
			     bench_seconds(t0, bench_now_ns()) >= rs->max_time))
				break;
			const uint64_t i0 = (next % n_windows) * (uint64_t)rs->op_chunks;
			memset(&ro->op, 0, sizeof(ro->op));
			ro->op.kind = rs->save ? SHADOW__OP_SAVE : SHADOW__OP_FETCH;
			ro->op.region = rs->region;
			ro->op.n_chunks = rs->op_chunks;
			ro->op.first_chunk_index = (uint32_t)(i0 % ds->seq_chunks);
			ro->op.keys = &ds->keys[i0];
			ro->op.block_ids = (rs->save ? ds->src_ids : ds->dst_ids) + i0 * ds->bpc;
			ro->op.chunk_status = ro->status;
			ro->op.on_done = run_on_done;
			ro->op.user = ro;
			rc = shadow__pipeline_submit(pl, &ro->op);
			if (rc < 0) {
				fprintf(stderr, "%s: %s: submit: %s\n", b->o->prog, what,
					shadow_strerror(rc));
				ro->op.on_done = NULL;
				break;
			}
			active++;
			next++;
			asked += rs->op_chunks * ds->chunk_nbytes;
		}
		if (active == 0)
			break;
		if (sem_wait_s(&run->sem, STALL_S) < 0) {
			fprintf(stderr, "%s: %s: no op completed for %d s (%u in flight): "
					"cancelling them\n", b->o->prog, what, STALL_S, active);
			for (uint32_t j = 0; j < rs->inflight; j++)
				if (run->ops[j].op.on_done != NULL)
					shadow__pipeline_cancel(pl, &run->ops[j].op);
			rc = -ETIMEDOUT;
			while (active > 0 && sem_wait_s(&run->sem, 10) == 0)
				for (uint32_t j = 0; j < rs->inflight; j++)
					if (atomic_exchange_explicit(&run->ops[j].done, 0,
								     memory_order_acquire))
						active--;
			if (active > 0)
				return -1; /* the pipeline still holds ops: leave them be */
			break;
		}
		/* One post per completion; scan them all (a few ops, one pass). */
		for (uint32_t j = 0; j < rs->inflight; j++) {
			struct run_op *ro = &run->ops[j];
			if (!atomic_exchange_explicit(&ro->done, 0, memory_order_acquire))
				continue;
			struct shadow__op *op = &ro->op;
			active--;
			t_last = bench_now_ns();
			res->ops++;
			res->bytes_in += op->bytes_in;
			res->bytes_out += op->bytes_out;
			if ((op->status != 0 || op->n_ok != op->n_chunks) && rc == 0) {
				uint32_t bad = 0, first = 0;
				for (uint32_t c = op->n_chunks; c-- > 0;)
					if (op->chunk_status[c] != SHADOW_CHUNK_OK) {
						bad++;
						first = c;
					}
				fprintf(stderr, "%s: %s op: %s; %u of %u chunks not ok (first: chunk "
						"%u of the op, %s)\n", b->o->prog, what,
					op->status != 0 ? shadow_strerror(op->status) : "done", bad,
					op->n_chunks, first,
					shadow_chunk_status_name(op->chunk_status[first]));
				rc = -EIO;
			}
			op->on_done = NULL; /* free again */
		}
	}
	getrusage(RUSAGE_SELF, &r1);
	res->seconds = bench_seconds(t0, t_last);
	res->cpu_s = rusage_cpu_s(&r1) - rusage_cpu_s(&r0);
	res->user_s = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) +
		      (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) * 1e-6;
	sem_destroy(&run->sem);
	free(run->ops);
	free(run->status);
	free(run);
	return rc < 0 ? -1 : 0;
nomem:
	fprintf(stderr, "%s: %s: out of memory\n", b->o->prog, what);
	if (run != NULL) {
		free(run->ops);
		free(run->status);
	}
	free(run);
	return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Latency: ops one at a time                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* The one op of latency_ops(), alone in the pipeline. */
struct lat_op {
	struct shadow__op op;
	sem_t sem;
	_Atomic uint64_t t_done_ns;
};

/* Latency of ops of one size (row_latency()). */
struct lat_result {
	uint32_t op_chunks, n_ok, n_failed;
	double p50_us, p90_us, p99_us, max_us; /* NaN when no op completed OK */
};

/* From a pipeline thread: the completion time first, so that the waiter's wake-up is not
 * counted in the op's latency. */
static void lat_on_done(struct shadow__op *op)
{
	struct lat_op *lo = op->user;

	atomic_store_explicit(&lo->t_done_ns, bench_now_ns(), memory_order_release); /* pairs with
									the load in latency_ops */
	sem_post(&lo->sem);
}

static int cmp_u64(const void *a, const void *b)
{
	const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The p-th percentile (nearest rank) of n > 0 sorted nanosecond samples, in microseconds. */
static double pct_us(const uint64_t *sorted, uint32_t n, double p)
{
	uint32_t r = (uint32_t)ceil(p / 100.0 * n);

	return (double)sorted[r > 0 ? r - 1 : 0] * 1e-3;
}

/*
 * o->latency FETCH ops of op_chunks chunks into `region` of `pl`, one at a time (each
 * submitted once the last one completed), op k on window k mod (N / op_chunks) as run_ops;
 * each timed from just before its submit to the start of its on_done. Samples go into
 * samples[] (o->latency entries) and status[] (op_chunks entries), both the caller's: nothing
 * is allocated in the loop. A failed op is counted and left out of the percentiles, the first
 * one printed. Returns 0, -ENOMEM (printed), or -ETIMEDOUT (printed) when an op did not
 * come back even after a cancel: the pipeline still holds it, and its memory (status[]
 * included) is left to it.
 */
static int latency_ops(struct bench *b, struct shadow__pipeline *pl, uint32_t region,
		       uint32_t op_chunks, uint64_t *samples, uint8_t *status,
		       struct lat_result *res)
{
	const struct dataset *ds = &b->ds;
	const uint32_t n = b->o->latency, n_windows = ds->n_chunks / op_chunks;
	struct lat_op *lo = calloc(1, sizeof(*lo));
	bool said = false;
	int rc;

	*res = (struct lat_result){ .op_chunks = op_chunks, .p50_us = NAN, .p90_us = NAN,
				    .p99_us = NAN, .max_us = NAN };
	if (lo == NULL) {
		fprintf(stderr, "%s: latency: out of memory\n", b->o->prog);
		return -ENOMEM;
	}
	if (sem_init(&lo->sem, 0, 0) < 0) {
		fprintf(stderr, "%s: latency: sem_init: %s\n", b->o->prog, strerror(errno));
		free(lo);
		return -ENOMEM;
	}
	for (uint32_t k = 0; k < n; k++) {
		const uint64_t i0 = (k % n_windows) * (uint64_t)op_chunks;
		struct shadow__op *op = &lo->op;
		memset(op, 0, sizeof(*op));
		op->kind = SHADOW__OP_FETCH;
		op->region = region;
		op->n_chunks = op_chunks;
		op->first_chunk_index = (uint32_t)(i0 % ds->seq_chunks);
		op->keys = &ds->keys[i0];
		op->block_ids = ds->dst_ids + i0 * ds->bpc;
		op->chunk_status = status;
		op->on_done = lat_on_done;
		op->user = lo;
		const uint64_t t0 = bench_now_ns();
		rc = shadow__pipeline_submit(pl, op);
		if (rc < 0) {
			if (!said)
				fprintf(stderr, "%s: latency: submit: %s\n", b->o->prog,
					shadow_strerror(rc));
			said = true;
			res->n_failed++;
			continue;
		}
		if (sem_wait_s(&lo->sem, STALL_S) < 0) {
			fprintf(stderr, "%s: latency: an op of %u chunks did not complete in %d s: "
					"cancelling it\n", b->o->prog, op_chunks, STALL_S);
			shadow__pipeline_cancel(pl, op);
			if (sem_wait_s(&lo->sem, 10) < 0)
				return -ETIMEDOUT; /* the pipeline still holds lo: leave it be */
			res->n_failed++;
			said = true;
			continue;
		}
		const uint64_t t1 = atomic_load_explicit(&lo->t_done_ns, memory_order_acquire);
		if (op->status != 0 || op->n_ok != op->n_chunks) {
			uint32_t bad = 0, first = 0;
			for (uint32_t c = op->n_chunks; c-- > 0;)
				if (status[c] != SHADOW_CHUNK_OK) {
					bad++;
					first = c;
				}
			if (!said)
				fprintf(stderr, "%s: latency op: %s; %u of %u chunks not ok (first: "
						"chunk %u of the op, %s)\n", b->o->prog,
					op->status != 0 ? shadow_strerror(op->status) : "done", bad,
					op->n_chunks, first, shadow_chunk_status_name(status[first]));
			said = true;
			res->n_failed++;
			continue;
		}
		samples[res->n_ok++] = t1 - t0;
	}
	sem_destroy(&lo->sem);
	free(lo);
	if (res->n_ok > 0) {
		qsort(samples, res->n_ok, sizeof(*samples), cmp_u64);
		res->p50_us = pct_us(samples, res->n_ok, 50.0);
		res->p90_us = pct_us(samples, res->n_ok, 90.0);
		res->p99_us = pct_us(samples, res->n_ok, 99.0);
		res->max_us = (double)samples[res->n_ok - 1] * 1e-3;
	}
	return 0;
}

/*
 * A row's latency (--latency), on its pipeline right after its timed run: ops of one chunk
 * into lat[0], then, when op_chunks > 1, ops of op_chunks chunks into lat[1]. The number of
 * op sizes measured into *n_ret. 0 or -1 (printed).
 */
static int row_latency(struct bench *b, struct shadow__pipeline *pl, uint32_t region,
		       uint32_t op_chunks, struct lat_result lat[2], uint32_t *n_ret)
{
	uint64_t *samples = malloc((size_t)b->o->latency * sizeof(*samples));
	uint8_t *status = malloc(op_chunks);
	int rc = -1;

	*n_ret = 0;
	if (samples == NULL || status == NULL) {
		fprintf(stderr, "%s: latency: out of memory\n", b->o->prog);
		goto out;
	}
	/* Touched before the timed loop (not with zeros: see measure_store). */
	memset(samples, 0x5a, (size_t)b->o->latency * sizeof(*samples));
	rc = latency_ops(b, pl, region, 1, samples, status, &lat[0]);
	if (rc == 0)
		*n_ret = 1;
	if (rc == 0 && op_chunks > 1) {
		rc = latency_ops(b, pl, region, op_chunks, samples, status, &lat[1]);
		if (rc == 0)
			*n_ret = 2;
	}
out:
	free(samples);
	if (rc != -ETIMEDOUT)
		free(status); /* else an op the pipeline still holds writes into it */
	return rc < 0 ? -1 : 0;
}

/*
 * Print a row's latency beside the per-chunk times of its terms (GB/s of bf16, as goodput
 * counts: one = one core's decode, st = store, cp = copy), and write it to --latency-csv.
 * How the per-chunk times come from the terms, which measure throughput only:
 *   store   chunk bytes / st: st is container GB/s x the scheme's ratio, so this is the mean
 *           container's bytes / container GB/s, amortized over the term's GETs in flight;
 *   decode  chunk bytes / one on one core; / T in the pipeline, a chunk's frames decoding in
 *           parallel on its T decode threads;
 *   copy    chunk bytes / (cp / n): the term is n copy threads' aggregate (n = --copy-threads,
 *           each copying whole chunks), and the pipeline copies a chunk on one copy thread.
 * Returns the number of failed ops.
 */
static uint32_t print_latency(struct bench *b, const struct scheme_run *sr, uint32_t threads,
			      double one, double st, double cp, const struct lat_result *lat,
			      uint32_t n_lat)
{
	const struct dataset *ds = &b->ds;
	const double chunk_us = (double)ds->chunk_nbytes * 1e-3; /* bytes / (GB/s) -> us */
	const uint32_t n_copy = SHADOW_MIN(b->o->copy_threads, ds->n_chunks);
	const double store_us = chunk_us / st, dec1_us = chunk_us / one;
	const double dec_us = dec1_us / threads, copy_us = chunk_us / (cp / n_copy);
	const double sum_us = store_us + dec_us + copy_us;
	const double slow_us = fmax(store_us, fmax(dec_us, copy_us));
	uint32_t failed = 0;

	for (uint32_t m = 0; m < n_lat; m++) {
		const struct lat_result *l = &lat[m];
		printf("%*s latency, %u op(s) of %u chunk(s) one at a time: p50", 6, "",
		       b->o->latency, l->op_chunks);
		print_cell(l->p50_us, 0, 1);
		printf(" p90");
		print_cell(l->p90_us, 0, 1);
		printf(" p99");
		print_cell(l->p99_us, 0, 1);
		printf(" max");
		print_cell(l->max_us, 0, 1);
		printf(" us");
		if (l->op_chunks > 1)
			printf(" (p50 per chunk %.1f us)", l->p50_us / l->op_chunks);
		printf("; %u failed\n", l->n_failed);
		failed += l->n_failed;
		if (b->lat_csv == NULL)
			continue;
		fprintf(b->lat_csv, "%s,%s,%u,%u,%u", store_names[sr->store_kind], sr->scheme,
			threads, l->op_chunks, l->n_ok);
		if (l->n_ok > 0)
			fprintf(b->lat_csv, ",%.6g,%.6g,%.6g,%.6g\n", l->p50_us, l->p90_us,
				l->p99_us, l->max_us);
		else
			fprintf(b->lat_csv, ",,,,\n");
		fflush(b->lat_csv);
	}
	printf("%*s latency per chunk from the terms: store %.1f us (amortized over %u GETs in "
	       "flight) + decode %.1f / %u thread(s) = %.1f + copy %.1f = %.1f us; p50 beyond "
	       "that: 1 chunk %+.1f us", 6, "", store_us, SHADOW_MAX(b->n_bufs, 1u), dec1_us,
	       threads, dec_us, copy_us, sum_us, lat[0].p50_us - sum_us);
	if (n_lat > 1) {
		const uint32_t k = lat[1].op_chunks;
		const double ideal_us = sum_us + (k - 1) * slow_us;
		printf(", %u chunks %+.1f us (against %.1f + %u x %.1f, the slowest stage)", k,
		       lat[1].p50_us - ideal_us, sum_us, k - 1, slow_us);
	}
	printf("\n");
	fflush(stdout);
	return failed;
}

/* The pipeline's configuration for this run: `decode` threads, and saves with `sr`'s scheme. */
static void pipeline_config(const struct bench *b, const struct scheme_run *sr, uint32_t decode,
			    struct shadow__pipeline_config *cfg)
{
	const struct dataset *ds = &b->ds;

	shadow__pipeline_config_default(cfg);
	cfg->store_url = sr->url;
	cfg->store_opts = b->store_opts;
	cfg->pool_nbytes = b->o->pool_nbytes;
	cfg->stage_nbytes = ds->stage_nbytes;
	cfg->rx_nbytes = ds->rx_nbytes;
	cfg->fetch_threads = b->o->fetch_threads;
	cfg->copy_threads = b->o->copy_threads;
	cfg->decode_threads = decode;
	cfg->save_threads = 1;
	cfg->cpus = b->pinned ? &b->pipe_cpus : NULL;
	cfg->transform = ds->transform;
	cfg->save_scheme = sr->scheme;
	cfg->key_prefix = sr->prefix;
	cfg->pinned = b->o->cuda;
}

/* ------------------------------------------------------------------------------------------ */
/* The store: save, read back, GET bandwidth                                                  */
/* ------------------------------------------------------------------------------------------ */

/*
 * SAVE the whole data set with sr's scheme through a pipeline of its own (host source region,
 * one op per sequence, a save thread per CPU we may use). Untimed for the table; the time
 * is printed. 0 or -1 (printed).
 */
static int scheme_save(struct bench *b, struct scheme_run *sr)
{
	const struct dataset *ds = &b->ds;
	struct shadow__pipeline_config cfg;
	struct shadow__pipeline *pl = NULL;
	struct run_result res;
	uint32_t id;
	int rc;

	pipeline_config(b, sr, 1, &cfg);
	cfg.pinned = false;
	cfg.fetch_threads = 1;
	/* Untimed and alone: every CPU we may use (threads inherit the creator's affinity, and
	 * the main thread is pinned to one CPU, so the set is given explicitly). */
	cfg.cpus = &b->allowed_cpus;
	cfg.save_threads = SHADOW_MIN(SHADOW_MIN((uint32_t)CPU_COUNT(&b->allowed_cpus),
						 ds->n_seqs), 32u);
	cfg.pool_nbytes = round_up((2ull * cfg.save_threads + 1) * ds->rx_nbytes +
					   ds->stage_nbytes, MIB);
	sr->save_threads = cfg.save_threads;
	rc = shadow__pipeline_create(&cfg, &pl);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: save pipeline: %s\n", b->o->prog, sr->scheme,
			shadow_strerror(rc));
		return -1;
	}
	rc = shadow__pipeline_region_add(pl, &ds->src.spec, &id);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: source region: %s\n", b->o->prog, sr->scheme,
			shadow_strerror(rc));
		shadow__pipeline_destroy(pl);
		return -1;
	}
	struct run_spec rs = {
		.save = true,
		.region = id,
		.op_chunks = ds->seq_chunks,
		.inflight = SHADOW_MIN(ds->n_seqs, 256u),
		.max_ops = ds->n_seqs,
	};
	rc = run_ops(b, pl, &rs, &res);
	shadow__pipeline_destroy(pl);
	sr->save_s = res.seconds;
	return rc;
}

/* GET every container back through the held handle and parse it (the decode terms decode
 * them). */
static int scheme_read_back(struct bench *b, struct scheme_run *sr)
{
	const struct dataset *ds = &b->ds;

	sr->cont = malloc((size_t)ds->n_chunks * ds->rx_nbytes);
	sr->cont_nbytes = calloc(ds->n_chunks, sizeof(uint64_t));
	sr->views = calloc(ds->n_chunks, sizeof(*sr->views));
	if (sr->cont == NULL || sr->cont_nbytes == NULL || sr->views == NULL) {
		fprintf(stderr, "%s: out of memory for the containers\n", b->o->prog);
		return -1;
	}
	sr->cont_total = 0;
	for (uint32_t i = 0; i < ds->n_chunks; i++) {
		struct iovec iov = { sr->cont + (size_t)i * ds->rx_nbytes, ds->rx_nbytes };
		struct shadow_store_req req;
		int rc;

		memset(&req, 0, sizeof(req));
		req.op = SHADOW_STORE_GET;
		req.key = sr->key_text[i];
		req.iov = &iov;
		req.iov_count = 1;
		rc = shadow_store_submit(sr->store, &req);
		if (rc == 0)
			rc = shadow_store_wait(sr->store, &req);
		if (rc < 0) {
			fprintf(stderr, "%s: %s: GET %s: %s\n", b->o->prog, sr->scheme,
				sr->key_text[i], shadow_strerror(rc));
			return -1;
		}
		sr->cont_nbytes[i] = req.value_nbytes;
		sr->cont_total += req.value_nbytes;
		rc = shadow_chunk_parse(iov.iov_base, req.value_nbytes, &ds->keys[i], &ds->geom,
					&sr->views[i]);
		if (rc < 0) {
			fprintf(stderr, "%s: %s: parsing %s: %s\n", b->o->prog, sr->scheme,
				sr->key_text[i], shadow_strerror(rc));
			return -1;
		}
	}
	sr->ratio = (double)ds->n_chunks * (double)ds->chunk_nbytes / (double)sr->cont_total;
	return 0;
}

struct getter;

struct get_slot {
	struct shadow_store_req req;
	struct iovec iov;
	struct getter *g;
};

struct getter {
	struct shadow_store *store;
	char (*keys)[SHADOW_STORE_KEY_MAX];
	uint32_t n_keys, next;
	uint64_t t_end_ns, bytes;
	uint32_t active;
	int err;
};

static void getter_done(struct shadow_store_req *req);

static void getter_submit(struct getter *g, struct get_slot *s)
{
	int rc;

	memset(&s->req, 0, sizeof(s->req)); /* deadline_ns too: submit wrote the last one back */
	s->req.op = SHADOW_STORE_GET;
	s->req.key = g->keys[g->next];
	s->req.iov = &s->iov;
	s->req.iov_count = 1;
	s->req.on_done = getter_done;
	s->req.user = s;
	g->next = (g->next + 1) % g->n_keys;
	rc = shadow_store_submit(g->store, &s->req);
	if (rc < 0) {
		if (g->err == 0)
			g->err = rc;
		g->active--;
	}
}

/* From shadow_store_poll(): count, then keep the slot busy until t_end_ns. */
static void getter_done(struct shadow_store_req *req)
{
	struct get_slot *s = req->user;
	struct getter *g = s->g;

	if (req->status != 0) {
		if (g->err == 0)
			g->err = req->status;
		g->active--;
		return;
	}
	g->bytes += req->value_nbytes;
	if (g->err == 0 && bench_now_ns() < g->t_end_ns) {
		getter_submit(g, s);
		return;
	}
	g->active--;
}

/* One thread of the store term: its own handle (the first thread: the scheme's), its slots. */
struct store_getter {
	struct get_slot *slots;
	int cpu; /* pinned there first; -1: as created */
	uint32_t n_slots;
	struct getter g;
};

static void *store_getter_main(void *arg)
{
	struct store_getter *sg = arg;
	struct getter *g = &sg->g;

	if (sg->cpu >= 0 && (g->err = pin_self(sg->cpu)) < 0)
		return NULL;
	g->active = sg->n_slots;
	for (uint32_t i = 0; i < sg->n_slots; i++)
		getter_submit(g, &sg->slots[i]);
	while (g->active > 0) {
		int rc = shadow_store_poll(g->store, -1);
		if (rc < 0 && g->err == 0)
			g->err = rc;
		if (rc < 0)
			break;
	}
	return NULL;
}

/*
 * One pass of the store term: thread k keeps its share of the slots' GETs in flight through
 * sg[k] until run_ns after the start, then drains them (run_ns 0: one GET per slot). Bytes
 * read into *bytes_ret, seconds from the start to the last join into *s_ret. 0 or a negative
 * code (the first error; not printed).
 */
static int store_pass(struct bench *b, struct scheme_run *sr, struct store_getter *sg,
		      pthread_t *tid, uint32_t n, struct get_slot *slots, uint32_t n_slots,
		      uint8_t *bufs, uint64_t run_ns, uint64_t *bytes_ret, double *s_ret)
{
	const struct dataset *ds = &b->ds;
	uint64_t t0 = bench_now_ns(), bytes = 0;
	uint32_t started = 0;
	int err = 0;

	for (uint32_t k = 0; k < n; k++) {
		uint32_t first = k * n_slots / n, end = (k + 1) * n_slots / n;
		struct shadow_store *store = k == 0 ? sr->store : sg[k].g.store;
		sg[k] = (struct store_getter){ .slots = slots + first, .n_slots = end - first,
					       .cpu = set_cpu(b, k) };
		sg[k].g = (struct getter){ .store = store, .keys = sr->key_text,
					   .n_keys = ds->n_chunks,
					   .next = (uint32_t)((uint64_t)k * ds->n_chunks / n),
					   .t_end_ns = t0 + run_ns + 1 };
		for (uint32_t i = first; i < end; i++) {
			slots[i].g = &sg[k].g;
			slots[i].iov.iov_base = bufs + (size_t)i * ds->rx_nbytes;
			slots[i].iov.iov_len = ds->rx_nbytes;
		}
	}
	for (; started < n; started++) {
		err = -pthread_create(&tid[started], NULL, store_getter_main, &sg[started]);
		if (err < 0)
			break;
	}
	for (uint32_t k = 0; k < started; k++)
		pthread_join(tid[k], NULL);
	*s_ret = bench_seconds(t0, bench_now_ns());
	for (uint32_t k = 0; k < started; k++) {
		if (err == 0)
			err = sg[k].g.err;
		bytes += sg[k].g.bytes;
	}
	*bytes_ret = bytes;
	return err;
}

/*
 * The store term: GETs of the scheme's values for min_time, on as many threads as the
 * pipeline has fetch threads, each with a handle of its own opened with the pipeline's store
 * options (the first thread uses the held one), as many GETs in flight in all as the
 * pipeline has receive buffers, each into its own rx-sized buffer. Container GB/s into
 * sr->store_gbps. 0 or -1 (printed).
 *
 * An untimed pass of one GET per slot comes first. A redis-server builds the replies of all
 * the GETs it reads in one go before it writes any, so that n_slots values are in its memory
 * at once; the first time, it faults that memory in (64 x 1 MiB on the 2-CPU dev VM: 3 ms a
 * GET at ~12 us a 4 KiB page, no reply for 0.2 s), and a --quick term (0.1 s) timed that as
 * 0.3 GB/s of store bandwidth, 8x below the same store a moment later.
 */
static int measure_store(struct bench *b, struct scheme_run *sr)
{
	const struct dataset *ds = &b->ds;
	const uint32_t n_slots = SHADOW_MAX(b->n_bufs, 1u);
	const uint32_t n = SHADOW_MIN(b->o->fetch_threads, n_slots);
	struct get_slot *slots = calloc(n_slots, sizeof(*slots));
	struct store_getter *sg = calloc(n, sizeof(*sg));
	pthread_t *tid = calloc(n, sizeof(*tid));
	uint8_t *bufs = malloc((size_t)n_slots * ds->rx_nbytes);
	uint64_t bytes = 0;
	double s = 0;
	int err = 0;

	if (slots == NULL || sg == NULL || tid == NULL || bufs == NULL) {
		fprintf(stderr, "%s: out of memory for GET buffers\n", b->o->prog);
		err = -ENOMEM;
		goto out;
	}
	/* Touch every page outside the timed loop (not with zeros: gcc turns malloc + memset 0
	 * into calloc, which leaves fresh pages untouched). */
	memset(bufs, 0x5a, (size_t)n_slots * ds->rx_nbytes);
	for (uint32_t k = 1; k < n && err == 0; k++) {
		err = shadow_store_open(sr->url, &b->store_opts, &sg[k].g.store);
		if (err < 0) {
			sg[k].g.store = NULL;
			fprintf(stderr, "%s: %s: store term: cannot open %s: %s\n", b->o->prog,
				sr->scheme, sr->url, shadow_strerror(err));
		}
	}
	if (err < 0)
		goto out;
	err = store_pass(b, sr, sg, tid, n, slots, n_slots, bufs, 0, &bytes, &s);
	if (err == 0)
		err = store_pass(b, sr, sg, tid, n, slots, n_slots, bufs,
				 (uint64_t)(b->o->min_time * 1e9), &bytes, &s);
	if (err == 0)
		sr->store_gbps = gbps(bytes, s);
	else
		fprintf(stderr, "%s: %s: store term: GET: %s\n", b->o->prog, sr->scheme,
			shadow_strerror(err));
out:
	for (uint32_t k = 1; sg != NULL && k < n; k++)
		shadow_store_close(sg[k].g.store); /* NULL accepted */
	free(slots);
	free(sg);
	free(tid);
	free(bufs);
	return err < 0 ? -1 : 0;
}

/* DELETE the scheme's keys (Redis keeps them otherwise; a mem:// instance goes with its last
 * handle). */
static void scheme_delete_keys(struct bench *b, struct scheme_run *sr)
{
	for (uint32_t i = 0; i < b->ds.n_chunks; i++) {
		struct shadow_store_req req;
		memset(&req, 0, sizeof(req));
		req.op = SHADOW_STORE_DELETE;
		req.key = sr->key_text[i];
		if (shadow_store_submit(sr->store, &req) == 0)
			(void)shadow_store_wait(sr->store, &req);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* The other terms of the bound                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * The decode terms share one loop, decode_frames(): a codec of its own decodes every frame of
 * the scheme's containers with shadow_chunk_decode_frame() only, timed as bench/codec times
 * it (the sum of the calls), going round the chunks from chunk `first`, into dst: each frame
 * `stride` bytes after the last (0: one staging image, hot in cache), back to the start when
 * the next would pass dst_nbytes, as staging areas cycled FIFO through a pool would. Whole chunks
 * until every chunk was decoded once and min_time has passed (or, started at a gate, another
 * decoder's min_time did).
 */
struct start_gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t n, arrived;
	int state; /* 0: waiting for all n; 1: go; -1: abort (a decoder or a thread failed) */
	_Atomic bool done; /* a decoder passed min_time: the others stop at their next chunk */
};

struct decoder {
	struct bench *b;
	const struct scheme_run *sr;
	uint8_t *dst;
	uint64_t dst_nbytes, stride;
	uint32_t first;
	int cpu;                 /* decoder_main pins itself here first; -1: not pinned */
	double min_time;         /* seconds; 0: o->min_time */
	bool partial;            /* may stop before every chunk was decoded once */
	struct start_gate *gate; /* NULL: start at once */
	uint64_t bytes, ns;      /* decoded, and the time inside decode_frame */
};

/* The start barrier, with a way out: arrive with rc (< 0 aborts everyone); true: go. */
static bool gate_arrive(struct start_gate *g, int rc)
{
	bool go;

	pthread_mutex_lock(&g->mu);
	if (rc < 0)
		g->state = -1;
	else if (++g->arrived == g->n && g->state == 0)
		g->state = 1;
	pthread_cond_broadcast(&g->cv);
	while (g->state == 0)
		pthread_cond_wait(&g->cv, &g->mu);
	go = g->state > 0;
	pthread_mutex_unlock(&g->mu);
	return go;
}

/* Decode as above into d->bytes and d->ns. 0, or a codec error (not printed). */
static int decode_frames(struct decoder *d)
{
	const struct dataset *ds = &d->b->ds;
	struct shadow_codec *codec = NULL;
	uint64_t off = 0, t_start;
	int rc;

	d->bytes = d->ns = 0;
	rc = shadow_codec_create(&ds->geom, &codec);
	if (rc == 0 && ds->transform != NULL)
		rc = shadow_codec_set_transform(codec, ds->transform);
	/* Every page touched before the start, from the decoder's own CPU (not with zeros: see
	 * measure_store). */
	if (rc == 0)
		memset(d->dst, 0x5a, d->dst_nbytes);
	if (d->gate != NULL && !gate_arrive(d->gate, rc))
		goto out;
	t_start = bench_now_ns();
	for (uint64_t k = 0; rc == 0; k++) {
		const struct shadow_chunk_view *v = &d->sr->views[(d->first + k) % ds->n_chunks];
		for (uint32_t f = 0; f < ds->n_frames && rc == 0; f++) {
			uint64_t t0 = bench_now_ns();
			rc = shadow_chunk_decode_frame(codec, v, f, &ds->dst.spec.layout,
						       d->dst + off, ds->frame_nbytes);
			d->ns += bench_now_ns() - t0;
			d->bytes += ds->frame_nbytes;
			off += d->stride;
			if (off + ds->frame_nbytes > d->dst_nbytes)
				off = 0;
		}
		if (k + 1 < ds->n_chunks && !d->partial)
			continue;
		if (bench_seconds(t_start, bench_now_ns()) >=
		    (d->min_time > 0 ? d->min_time : d->b->o->min_time)) {
			if (d->gate != NULL)
				atomic_store_explicit(&d->gate->done, true, memory_order_relaxed);
			break;
		}
		if (d->gate != NULL && atomic_load_explicit(&d->gate->done, memory_order_relaxed))
			break;
	}
out:
	shadow_codec_free(codec);
	return rc;
}

/*
 * The decode term: decode_frames() on this thread into one staging image. Decoded GB/s.
 * min_time 0: o->min_time over every chunk at least once; else about min_time seconds,
 * whole chunks from the first.
 */
static int measure_decode(struct bench *b, const struct scheme_run *sr, double min_time,
			  double *gbps_ret)
{
	const uint64_t img = round_up(b->ds.frame_nbytes, 4096);
	struct decoder d = { .b = b, .sr = sr, .dst_nbytes = img, .cpu = -1,
			     .min_time = min_time, .partial = min_time > 0 };
	int rc = -ENOMEM;

	d.dst = aligned_alloc(4096, img);
	if (d.dst != NULL)
		rc = decode_frames(&d);
	free(d.dst);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: decode term: %s\n", b->o->prog, sr->scheme,
			shadow_strerror(rc));
		return -1;
	}
	*gbps_ret = gbps(d.bytes, (double)d.ns * 1e-9);
	return 0;
}

/* A thread of decode_alone(); prints its own failure. Returns its status as a pointer. */
static void *decoder_main(void *arg)
{
	struct decoder *d = arg;
	const char *what = "pinning";
	int rc = d->cpu >= 0 ? pin_self(d->cpu) : 0;

	if (rc < 0) {
		if (d->gate != NULL)
			(void)gate_arrive(d->gate, rc); /* the others must not wait for this one */
	} else if ((rc = decode_frames(d)) < 0) {
		what = "decoding";
	}
	if (rc < 0)
		fprintf(stderr, "%s: %s: decoders alone: %s on CPU %d: %s\n", d->b->o->prog,
			d->sr->scheme, what, d->cpu, shadow_strerror(rc));
	return rc < 0 ? arg : NULL;
}

/*
 * T cores alone: `threads` decoders at once, decoder k on cpus[k] (-1: not pinned), each from
 * its own place in the data set (so that no two read the same containers at the same time),
 * all started together; into its own staging image (hot) or frame after frame at the staging
 * pitch through its own pool / T bytes of memory of the pool's kind (cycled). Aggregate decoded GB/s: every
 * decoder's bytes / the longest decoder's time. 0 or -1 (printed).
 */
static int decode_alone(struct bench *b, const struct scheme_run *sr, const int *cpus,
			uint32_t threads, bool cycled, double *gbps_ret)
{
	const struct dataset *ds = &b->ds;
	const uint64_t per = cycled ? SHADOW_MAX(b->o->pool_nbytes / threads / ds->frame_pitch,
						 UINT64_C(1)) * ds->frame_pitch
				    : round_up(ds->frame_nbytes, 4096);
	struct start_gate gate = {
		.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .n = threads,
	};
	atomic_init(&gate.done, false);
	struct decoder *d = calloc(threads, sizeof(*d));
	pthread_t *tid = calloc(threads, sizeof(*tid));
	uint8_t *mem = NULL;
	uint64_t bytes = 0, ns = 0;
	uint32_t started = 0;
	int rc = 0;

	if (d == NULL || tid == NULL) {
		fprintf(stderr, "%s: %s: decoders alone: out of memory\n", b->o->prog, sr->scheme);
		rc = -ENOMEM;
		goto out;
	}
	rc = shadow__copy_pool_alloc(per * threads, b->o->cuda, (void **)&mem);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: decoders alone: %llu MiB of pool memory: %s\n", b->o->prog,
			sr->scheme, (unsigned long long)(per * threads / MIB), shadow_strerror(rc));
		goto out;
	}
	for (uint32_t k = 0; k < threads; k++) {
		d[k] = (struct decoder){
			.b = b,
			.sr = sr,
			.dst = mem + k * per,
			.dst_nbytes = per,
			.stride = cycled ? ds->frame_pitch : 0,
			.first = (uint32_t)((uint64_t)k * ds->n_chunks / threads),
			.cpu = cpus[k],
			.gate = &gate,
		};
		rc = -pthread_create(&tid[k], NULL, decoder_main, &d[k]);
		if (rc < 0) {
			fprintf(stderr, "%s: %s: decoders alone: pthread_create: %s\n", b->o->prog,
				sr->scheme, strerror(-rc));
			(void)gate_arrive(&gate, rc); /* the ones started wait for no more */
			break;
		}
		started++;
	}
	for (uint32_t k = 0; k < started; k++) {
		void *failed = NULL;
		(void)pthread_join(tid[k], &failed);
		if (failed != NULL && rc == 0)
			rc = -ECANCELED; /* printed by the thread */
		bytes += d[k].bytes;
		ns = SHADOW_MAX(ns, d[k].ns);
	}
	if (rc == 0)
		*gbps_ret = gbps(bytes, (double)ns * 1e-9);
out:
	if (mem != NULL)
		shadow__copy_pool_free(mem, per * threads, b->o->cuda);
	free(tid);
	free(d);
	return rc < 0 ? -1 : 0;
}

/*
 * Reap every finished job of ctx; the first failure into *err. With none finished, sleep
 * 20 us, as the pipeline's copy threads do: spinning on CUDA event queries takes the driver's
 * locks from the threads issuing copies.
 */
static void copy_reap_all(const struct shadow__copy_ops *ops, struct shadow__copy_ctx *ctx,
			  int *err)
{
	void *users[64];
	int st[64];
	uint32_t n, total = 0;

	while ((n = ops->reap(ctx, users, st, 64)) > 0) {
		for (uint32_t i = 0; i < n; i++)
			if (st[i] < 0 && *err == 0)
				*err = st[i];
		total += n;
	}
	if (total == 0 && ops->in_flight(ctx) > 0)
		(void)nanosleep(&(struct timespec){ .tv_nsec = 20000 }, NULL);
}

/*
 * Plan every frame of every chunk into the destination (the check), and every chunk's copy as
 * the pipeline plans it, frames at the staging pitch (the copy term).
 */
static int plan_dst_runs(struct bench *b)
{
	const struct dataset *ds = &b->ds;
	const uint64_t n_jobs = (uint64_t)ds->n_chunks * ds->n_frames;
	const uint64_t plan_runs = (uint64_t)ds->n_frames * ds->max_runs;
	const uint64_t plan_rects = (uint64_t)ds->geom.n_layers * ds->max_runs;
	struct shadow_copy_run *scratch_runs = malloc(ds->max_runs * sizeof(*scratch_runs));
	struct shadow__copy_rect *scratch_rects = malloc(ds->max_runs * sizeof(*scratch_rects));
	int rc = 0;

	b->dst_runs = malloc(n_jobs * ds->max_runs * sizeof(*b->dst_runs));
	b->dst_n_runs = malloc(n_jobs * sizeof(*b->dst_n_runs));
	b->chunk_plans = calloc(ds->n_chunks, sizeof(*b->chunk_plans));
	b->chunk_runs = malloc(ds->n_chunks * plan_runs * sizeof(*b->chunk_runs));
	b->chunk_rects = malloc(ds->n_chunks * plan_rects * sizeof(*b->chunk_rects));
	if (b->dst_runs == NULL || b->dst_n_runs == NULL || b->chunk_plans == NULL ||
	    b->chunk_runs == NULL || b->chunk_rects == NULL || scratch_runs == NULL ||
	    scratch_rects == NULL) {
		fprintf(stderr, "%s: out of memory for copy plans\n", b->o->prog);
		rc = -1;
	}
	for (uint32_t i = 0; i < ds->n_chunks && rc == 0; i++) {
		struct shadow__copy_plan *p = &b->chunk_plans[i];
		*p = (struct shadow__copy_plan){ .runs = b->chunk_runs + i * plan_runs,
						 .max_runs = plan_runs,
						 .rects = b->chunk_rects + i * plan_rects,
						 .max_rects = plan_rects };
		rc = shadow__copy_plan_chunk(&ds->dst.spec.layout, &ds->geom,
					     ds->dst_ids + (uint64_t)i * ds->bpc, ds->bpc,
					     ds->frame_pitch, scratch_runs, scratch_rects,
					     ds->max_runs, p);
		if (rc < 0) {
			fprintf(stderr, "%s: shadow__copy_plan_chunk: %s\n", b->o->prog,
				shadow_strerror(rc));
			rc = -1;
		}
	}
	free(scratch_runs);
	free(scratch_rects);
	if (rc < 0)
		return -1;
	for (uint64_t j = 0; j < n_jobs; j++) {
		const uint32_t i = (uint32_t)(j / ds->n_frames), f = (uint32_t)(j % ds->n_frames);
		size_t n = 0;
		rc = shadow_layout_plan_frame(&ds->dst.spec.layout, &ds->geom, f / 2,
					      (enum shadow_kv_kind)(f % 2),
					      ds->dst_ids + (uint64_t)i * ds->bpc, ds->bpc,
					      b->dst_runs + j * ds->max_runs, ds->max_runs, &n);
		if (rc < 0) {
			fprintf(stderr, "%s: shadow_layout_plan_frame: %s\n", b->o->prog,
				shadow_strerror(rc));
			return -1;
		}
		b->dst_n_runs[j] = (uint32_t)n;
	}
	return 0;
}

/*
 * One pass: every chunk from the staging images (cycled) into the destination, as the
 * pipeline's copy threads copy them; with `step` copy threads, this one's share: the chunks
 * first, first + step, ...
 */
static int copy_pass(struct bench *b, struct shadow__copy_ctx *ctx, struct shadow__copy_region *r,
		     const uint8_t *imgs, uint32_t n_img, uint64_t img_stride, uint32_t first,
		     uint32_t step)
{
	const struct dataset *ds = &b->ds;
	const struct shadow__copy_ops *ops = b->copy_ops;
	int rc = 0, err = 0;

	for (uint32_t j = first; j < ds->n_chunks && err == 0; j += step) {
		const struct shadow__copy_plan *p = &b->chunk_plans[j];
		struct shadow__copy_job job = {
			.region = r,
			.src = imgs + (j % n_img) * img_stride,
			.runs = p->runs,
			.n_runs = (uint32_t)p->n_runs,
			.rects = p->rects,
			.n_rects = (uint32_t)p->n_rects,
			.user = NULL,
		};
		while ((rc = ops->submit(ctx, &job)) == -EAGAIN) {
			(void)ops->flush(ctx); /* errors come back through reap */
			copy_reap_all(ops, ctx, &err);
		}
		if (rc < 0)
			err = rc;
		/* A flush per COPY_BURST chunks, as the copy thread drains its ring in bursts. */
		if ((j / step + 1) % COPY_BURST == 0)
			(void)ops->flush(ctx);
	}
	(void)ops->flush(ctx);
	return err;
}

/* Wait for every job of ctx; the first failure, or 0. */
static int copy_drain(const struct shadow__copy_ops *ops, struct shadow__copy_ctx *ctx, int err)
{
	(void)ops->flush(ctx);
	while (ops->in_flight(ctx) > 0)
		copy_reap_all(ops, ctx, &err);
	return err;
}

/* One thread of the copy term (copy_frames): its share of every pass, in a context of its own. */
struct copier {
	struct bench *b;
	struct shadow__copy_region *r;
	const uint8_t *imgs;
	uint32_t n_img, first, step;
	uint64_t img_stride;
	bool poison;
	struct start_gate *gate;  /* NULL: alone */
	int cpu;                  /* pinned there first; -1: as created */
	uint64_t jobs, t0, t1;    /* jobs copied in the timed passes, and when they ran */
	int rc;
};

static void *copier_main(void *arg)
{
	struct copier *c = arg;
	struct bench *b = c->b;
	const struct shadow__copy_ops *ops = b->copy_ops;
	const uint64_t share = (b->ds.n_chunks - c->first + c->step - 1) / c->step;
	struct shadow__copy_ctx *ctx = NULL;
	int rc = c->cpu >= 0 ? pin_self(c->cpu) : 0;

	if (rc == 0)
		rc = ops->ctx_create(c->step, &ctx);
	/* Untimed, as the fetch's first pass: our mapping of a host region is new, and a first
	 * touch costs a page fault (~20 us each on the dev VM); CUDA makes its stream. */
	if (rc == 0 && !c->poison)
		rc = copy_drain(ops, ctx, copy_pass(b, ctx, c->r, c->imgs, c->n_img, c->img_stride,
						    c->first, c->step));
	/* Everyone's first pass is done (or someone failed: leave at once). */
	if (c->gate != NULL && !gate_arrive(c->gate, rc) && rc == 0)
		rc = -ECANCELED;
	c->t0 = bench_now_ns();
	while (rc == 0) {
		rc = copy_pass(b, ctx, c->r, c->imgs, c->n_img, c->img_stride, c->first, c->step);
		c->jobs += share;
		if (c->poison || bench_seconds(c->t0, bench_now_ns()) >= b->o->min_time)
			break;
	}
	if (ctx != NULL) {
		rc = copy_drain(ops, ctx, rc);
		ops->ctx_destroy(ctx);
	}
	c->t1 = bench_now_ns();
	c->rc = rc;
	return NULL;
}

/*
 * The copy term (poison false): the destination's backend alone, copying chunk staging images
 * from pool memory (pinned for cuda; as many as the pipeline has chunk buffers) with the
 * pipeline's chunk plans, whole passes until min_time, on --copy-threads threads as the
 * pipeline's copy threads, each with a context of its own and every step-th chunk; decoded
 * GB/s (all their bytes / from the common start to the last end) into b->copy_gbps. Poison
 * (true): one pass of an image of 0xff bytes (bf16 NaN) on this thread, so that the check
 * after a run sees any frame the pipeline did not write. 0 or -1 (printed).
 */
static int copy_frames(struct bench *b, bool poison)
{
	const struct dataset *ds = &b->ds;
	const struct shadow__copy_ops *ops = b->copy_ops;
	const uint32_t n_img = poison ? 1u : SHADOW_MAX(SHADOW_MIN(ds->n_chunks, b->n_bufs), 1u);
	const uint32_t n = poison ? 1u : SHADOW_MIN(b->o->copy_threads, ds->n_chunks);
	const uint64_t img_stride = round_up(ds->n_frames * ds->frame_pitch, 4096);
	struct shadow__copy_region *r = NULL;
	struct copier c[COPY_THREADS_MAX];
	pthread_t tid[COPY_THREADS_MAX];
	struct start_gate gate = {
		.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .n = n,
	};
	uint8_t *imgs = NULL;
	uint32_t started = 0;
	int rc;

	rc = ops->region_open(&ds->dst.spec.mem, &r);
	if (rc == 0)
		rc = shadow__copy_pool_alloc(n_img * img_stride, b->o->cuda, (void **)&imgs);
	if (rc < 0)
		goto out;
	memset(imgs, poison ? 0xff : 0x3c, n_img * img_stride);
	atomic_init(&gate.done, false);
	for (uint32_t k = 0; k < n; k++) {
		c[k] = (struct copier){ .b = b, .r = r, .imgs = imgs, .n_img = n_img, .first = k,
					.step = n, .img_stride = img_stride, .poison = poison,
					.gate = n > 1 ? &gate : NULL,
					.cpu = n > 1 ? set_cpu(b, k) : -1 };
	}
	if (n == 1) {
		copier_main(&c[0]);
		started = 1;
	} else {
		for (; started < n; started++) {
			rc = -pthread_create(&tid[started], NULL, copier_main, &c[started]);
			if (rc < 0) {
				(void)gate_arrive(&gate, rc); /* the ones started wait for no more */
				break;
			}
		}
		for (uint32_t k = 0; k < started; k++)
			pthread_join(tid[k], NULL);
	}
	uint64_t jobs = 0, t0 = UINT64_MAX, t1 = 0;
	for (uint32_t k = 0; k < started; k++) {
		if (rc == 0)
			rc = c[k].rc;
		jobs += c[k].jobs;
		t0 = SHADOW_MIN(t0, c[k].t0);
		t1 = SHADOW_MAX(t1, c[k].t1);
	}
	if (rc == 0 && !poison)
		b->copy_gbps = gbps(jobs * ds->chunk_nbytes, bench_seconds(t0, t1));
out:
	if (rc < 0)
		fprintf(stderr, "%s: %s: %s backend: %s\n", b->o->prog,
			poison ? "poisoning the destination" : "copy term", ops->name,
			shadow_strerror(rc));
	if (imgs != NULL)
		shadow__copy_pool_free(imgs, n_img * img_stride, b->o->cuda);
	ops->region_close(r);
	return rc < 0 ? -1 : 0;
}

/*
 * The plain reference for --cuda: H2D_COPIES contiguous copies of H2D_COPY_NBYTES from pinned
 * memory into this process's own device memory on one stream, then a sync, until min_time.
 */
static int measure_h2d(struct bench *b)
{
	const struct shadow__gpu_ops *gpu;
	const size_t total = (size_t)H2D_COPIES * H2D_COPY_NBYTES;
	void *host = NULL, *dev = NULL, *stream = NULL;
	uint64_t bytes = 0, t0 = 0;
	int rc;

	rc = shadow__gpu_ops(&gpu);
	if (rc == 0)
		rc = gpu->device_set(b->o->device);
	if (rc == 0)
		rc = gpu->host_alloc(&host, total);
	if (rc == 0)
		rc = gpu->dev_alloc(&dev, total);
	if (rc == 0)
		rc = gpu->stream_create(&stream);
	if (rc < 0)
		goto out;
	memset(host, 0x5a, total);
	for (int pass = 0; rc == 0; pass++) {
		if (pass == 1) { /* pass 0 warms up */
			t0 = bench_now_ns();
			bytes = 0;
		}
		for (uint32_t k = 0; k < H2D_COPIES && rc == 0; k++) {
			void *dst = (uint8_t *)dev + k * H2D_COPY_NBYTES;
			const void *src = (const uint8_t *)host + k * H2D_COPY_NBYTES;
			size_t n = H2D_COPY_NBYTES;
			rc = gpu->memcpy_h2d_batch(stream, &dst, &src, &n, 1);
		}
		if (rc == 0)
			rc = gpu->stream_sync(stream);
		bytes += total;
		if (pass >= 1 && bench_seconds(t0, bench_now_ns()) >= b->o->min_time)
			break;
	}
	if (rc == 0)
		b->h2d_gbps = gbps(bytes, bench_seconds(t0, bench_now_ns()));
out:
	if (rc < 0)
		fprintf(stderr, "%s: pinned H2D reference: %s\n", b->o->prog, shadow_strerror(rc));
	if (stream != NULL)
		(void)gpu->stream_destroy(stream);
	if (dev != NULL)
		(void)gpu->dev_free(dev);
	if (host != NULL)
		(void)gpu->host_free(host);
	return rc < 0 ? -1 : 0;
}

/*
 * Read every frame of the destination back with its copy backend and compare it with the
 * source frame (same layout kind, so the same staging order). Lossless: bit for bit; lossy:
 * max |error| / max |value| into *rel_ret. 0, 1 (lossless mismatch, printed) or -1 (error).
 */
static float bf16_to_float(uint16_t v)
{
	uint32_t u = (uint32_t)v << 16;
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static int verify_dest(struct bench *b, const struct scheme_run *sr, double *rel_ret)
{
	const struct dataset *ds = &b->ds;
	const struct shadow__copy_ops *ops = b->copy_ops, *host = &shadow__copy_host_ops;
	struct shadow__copy_region *r = NULL, *src = NULL;
	struct shadow__copy_ctx *ctx = NULL, *hctx = NULL;
	struct shadow_copy_run *runs = malloc(ds->max_runs * sizeof(*runs));
	const size_t buf_nbytes = 2 * round_up(ds->frame_nbytes, 4096);
	uint16_t *want = NULL, *got = NULL;
	double worst = 0.0, mag = 0.0;
	int rc = -ENOMEM, result = 0;

	/* Pinned for cuda: the backend's read() copies device to host with the copy engine. */
	if (runs == NULL || shadow__copy_pool_alloc(buf_nbytes, b->o->cuda, (void **)&want) < 0)
		goto out;
	got = want + round_up(ds->frame_nbytes, 4096) / sizeof(*want);
	rc = ops->region_open(&ds->dst.spec.mem, &r);
	if (rc == 0)
		rc = ops->ctx_create(1, &ctx);
	if (rc == 0)
		rc = host->region_open(&ds->src.spec.mem, &src);
	if (rc == 0)
		rc = host->ctx_create(1, &hctx);
	for (uint32_t i = 0; i < ds->n_chunks && rc == 0 && result == 0; i++) {
		for (uint32_t f = 0; f < ds->n_frames && rc == 0 && result == 0; f++) {
			const uint64_t j = (uint64_t)i * ds->n_frames + f;
			size_t n = 0;
			rc = ops->read(ctx, r, b->dst_runs + j * ds->max_runs, b->dst_n_runs[j], got);
			if (rc == 0)
				rc = shadow_layout_plan_frame(&ds->src.spec.layout, &ds->geom, f / 2,
							      (enum shadow_kv_kind)(f % 2),
							      ds->src_ids + (uint64_t)i * ds->bpc,
							      ds->bpc, runs, ds->max_runs, &n);
			if (rc == 0)
				rc = host->read(hctx, src, runs, (uint32_t)n, want);
			if (rc < 0)
				break;
			if (sr->lossless) {
				if (memcmp(got, want, ds->frame_nbytes) != 0) {
					fprintf(stderr, "%s: %s: chunk %u frame %u in the "
							"destination differs from the source\n",
						b->o->prog, sr->scheme, i, f);
					result = 1;
					break;
				}
				continue;
			}
			for (uint64_t e = 0; e < ds->frame_nbytes / 2; e++) {
				double x = bf16_to_float(want[e]), y = bf16_to_float(got[e]);
				if (isnan(y) && !isnan(x)) {
					fprintf(stderr, "%s: %s: chunk %u frame %u of the "
							"destination was not written\n",
						b->o->prog, sr->scheme, i, f);
					result = 1;
					break;
				}
				worst = fmax(worst, fabs(x - y));
				mag = fmax(mag, fabs(x));
			}
		}
	}
	*rel_ret = mag > 0.0 ? worst / mag : worst;
out:
	if (rc < 0)
		fprintf(stderr, "%s: %s: reading the destination back: %s\n", b->o->prog,
			sr->scheme, shadow_strerror(rc));
	if (hctx != NULL)
		host->ctx_destroy(hctx);
	if (ctx != NULL)
		ops->ctx_destroy(ctx);
	host->region_close(src);
	ops->region_close(r);
	free(runs);
	if (want != NULL)
		shadow__copy_pool_free(want, buf_nbytes, b->o->cuda);
	return rc < 0 ? -1 : result;
}

/* ------------------------------------------------------------------------------------------ */
/* One measurement                                                                            */
/* ------------------------------------------------------------------------------------------ */

static void print_table_header(void)
{
	printf("%-6s %-18s %3s %8s %8s %6s %-7s %8s %8s %8s %8s %8s\n", "store", "scheme", "thr",
	       "goodput", "bound", "g/bnd", "limit", "dec/core", "store", "copy", "cpu s/GB",
	       "RSS+MiB");
	fflush(stdout);
}

static void print_row(const struct row *r)
{
	printf("%-6s %-18s %3u", r->store, r->scheme, r->threads);
	print_cell(r->goodput, 8, 3);
	print_cell(r->bound, 8, 3);
	print_cell(r->goodput / r->bound, 6, 2);
	printf(" %-7s", limit_names[r->limit]);
	print_cell(r->decode1, 8, 3);
	print_cell(r->store_gbps, 8, 3);
	print_cell(r->copy_gbps, 8, 3);
	print_cell(r->cpu_per_gb, 8, 3);
	print_cell(r->rss_mib, 8, 0);
	printf("\n");
	fflush(stdout);
}

/*
 * `n` CPUs of the pipeline's set for decoders alone into cpus[] (-1 each when not pinned):
 * one per core first (as the scheduler spreads floating threads over idle cores), then
 * hyperthread siblings. The set holds at least n CPUs.
 */
static void alone_cpus(const struct bench *b, uint32_t n, int *cpus)
{
	cpu_set_t taken, cores;
	uint32_t k = 0;

	if (!b->pinned) {
		for (k = 0; k < n; k++)
			cpus[k] = -1;
		return;
	}
	CPU_ZERO(&taken);
	CPU_ZERO(&cores);
	for (int pass = 0; pass < 2; pass++) {
		for (int c = 0; c < CPU_SETSIZE && k < n; c++) {
			if (!CPU_ISSET(c, &b->pipe_cpus) || CPU_ISSET(c, &taken))
				continue;
			int core = cpu_core(c, NULL, 0);
			if (pass == 0 && CPU_ISSET(core, &cores))
				continue;
			CPU_SET(core, &cores);
			CPU_SET(c, &taken);
			cpus[k++] = c;
		}
	}
}

/* One core's decode speed, alone, on each CPU of the pipeline's set (core_speeds()). */
struct core_speeds {
	double first;   /* on measure_cpu, the set's first CPU */
	double mean, lo, hi;
	double own;     /* the mean over the decode threads' CPUs; `mean` when they float */
	int own_first, own_last; /* those CPUs (-1: floating) */
	uint32_t n;
};

/*
 * One core's decode speed on each CPU of the pipeline's set in turn, each alone for a quarter
 * of min_time (whole chunks), into *cs; not pinned: once, wherever this thread runs. A row's
 * decode term is T x the mean over the CPUs its decode threads run on: the pipeline pins
 * each thread to a CPU of its own when the set has one for every thread (fetch, decode,
 * copy, save, in the set's order: lib/pipeline/pipeline.c), and T x the mean over the whole
 * set when they float. On the GPU host (a 16-vCPU guest) one vCPU decodes up to 1.5x faster
 * than another at the same moment, and the same vCPU changes speed within a minute (PCA 0.16
 * against 0.22-0.24 GB/s, bf16planes 0.9 against 1.4, two vCPUs measured at once), so T x
 * the first CPU's figure alone missed or overshot the pipeline's cores by as much as the
 * target's margin. 0 or -1 (printed).
 */
static int core_speeds(struct bench *b, const struct scheme_run *sr, uint32_t threads,
		       struct core_speeds *cs)
{
	const double t = fmax(b->o->min_time / 4, 0.05);
	struct shadow__pipeline_config cfg;
	cpu_set_t decoders, one;
	bool apart = b->pinned;
	double sum = 0.0, own = 0.0, v;
	int rc = 0;

	/* The CPUs the row's pipeline will pin its decode threads to, if one each. */
	pipeline_config(b, sr, threads, &cfg);
	CPU_ZERO(&decoders);
	CPU_ZERO(&one);
	for (uint32_t k = 0; k < threads && apart; k++) {
		apart = shadow__pipeline_thread_cpus(&cfg, cfg.fetch_threads + k, &one) &&
			CPU_COUNT(&one) == 1 && !CPU_EQUAL(&one, &b->pipe_cpus);
		CPU_OR(&decoders, &decoders, &one);
	}
	*cs = (struct core_speeds){ .first = NAN, .lo = INFINITY, .hi = 0.0, .own_first = -1,
				    .own_last = -1 };
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (b->pinned && !CPU_ISSET(c, &b->pipe_cpus))
			continue;
		const bool decoder = apart && CPU_ISSET(c, &decoders);
		if (b->pinned && (rc = pin_self(c)) < 0) {
			fprintf(stderr, "%s: cannot pin the main thread to CPU %d: %s\n",
				b->o->prog, c, strerror(-rc));
			break;
		}
		if ((rc = measure_decode(b, sr, t, &v)) < 0)
			break;
		if (cs->n++ == 0)
			cs->first = v;
		sum += v;
		if (decoder) {
			own += v;
			if (cs->own_first < 0)
				cs->own_first = c;
			cs->own_last = c;
		}
		cs->lo = fmin(cs->lo, v);
		cs->hi = fmax(cs->hi, v);
		if (!b->pinned)
			break;
	}
	if (b->pinned)
		(void)pin_self(b->main_cpu);
	if (rc < 0 || cs->n == 0)
		return -1;
	cs->mean = sum / cs->n;
	cs->own = apart ? own / threads : cs->mean;
	return 0;
}

/*
 * T cores alone (--alone), right before a row: T decoders at once, hot and cycled
 * (decode_alone), on the CPUs named into cpus_text. 0 or -1 (printed).
 */
static int row_alone(struct bench *b, const struct scheme_run *sr, uint32_t threads,
		     double *hot_ret, double *cycled_ret, char *cpus_text, size_t cpus_text_nbytes)
{
	int cpus[THREADS_MAX];
	cpu_set_t set;

	snprintf(cpus_text, cpus_text_nbytes, "any CPUs (not pinned)");
	if (threads > b->n_pipe_cpus || threads > THREADS_MAX)
		return 0; /* not run: NaN */
	alone_cpus(b, threads, cpus);
	if (b->pinned) {
		CPU_ZERO(&set);
		for (uint32_t k = 0; k < threads; k++)
			CPU_SET(cpus[k], &set);
		snprintf(cpus_text, cpus_text_nbytes, "CPUs ");
		cpu_set_text(&set, cpus_text + 5, cpus_text_nbytes - 5);
	}
	if (decode_alone(b, sr, cpus, threads, false, hot_ret) < 0 ||
	    decode_alone(b, sr, cpus, threads, true, cycled_ret) < 0)
		return -1;
	return 0;
}

/* The terms of a row's bound, measured once right before its run and once right after. */
struct row_terms {
	struct core_speeds cs; /* one core, on each CPU of the set */
	double store, copy;    /* GB/s of bf16, as goodput counts */
};

/*
 * Measure a row's terms: core_speeds(), then the store and copy terms on measure_cpu. The
 * copy term writes the destination: before a scheme's first (checked) run, poison it again.
 * 0 or -1 (printed).
 */
static int row_terms(struct bench *b, struct scheme_run *sr, uint32_t threads,
		     struct row_terms *t)
{
	int rc;

	if (core_speeds(b, sr, threads, &t->cs) < 0)
		return -1;
	if (b->pinned && (rc = pin_self(b->measure_cpu)) < 0) {
		fprintf(stderr, "%s: cannot pin the main thread to CPU %d: %s\n", b->o->prog,
			b->measure_cpu, strerror(-rc));
		return -1;
	}
	rc = measure_store(b, sr);
	if (rc == 0)
		rc = copy_frames(b, false);
	if (b->pinned)
		(void)pin_self(b->main_cpu);
	if (rc == 0 && !sr->checked)
		rc = copy_frames(b, true);
	t->store = sr->store_gbps * sr->ratio;
	t->copy = b->copy_gbps;
	return rc < 0 ? -1 : 0;
}

/*
 * Fetch with T decode threads: the row's terms, then create the pipeline, one untimed pass,
 * the timed run, the terms again; the row's bound takes each term's mean over the two
 * measurements (this host's cores drift within the minute, docs/results.md). The first run
 * of a scheme also checks the destination. 0 or -1 (printed).
 */
static int scheme_fetch(struct bench *b, struct scheme_run *sr, uint32_t threads)
{
	const struct options *o = b->o;
	const struct dataset *ds = &b->ds;
	const uint32_t op_chunks = o->op_chunks != 0 ? o->op_chunks : ds->seq_chunks;
	struct shadow__pipeline_config cfg;
	struct shadow__pipeline *pl = NULL;
	struct run_result warm, res;
	struct lat_result lat[2];
	uint64_t rss0, rss1;
	uint32_t id, n_lat = 0;
	double hot = NAN, cycled = NAN;
	struct row_terms t0, t1;
	char cpus[256];
	int rc;

	if (row_terms(b, sr, threads, &t0) < 0)
		return -1;
	if (o->alone && row_alone(b, sr, threads, &hot, &cycled, cpus, sizeof(cpus)) < 0)
		return -1;
	pipeline_config(b, sr, threads, &cfg);
	rss0 = rss_private_nbytes();
	rc = shadow__pipeline_create(&cfg, &pl);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: pipeline with %u decode threads: %s\n", o->prog, sr->scheme,
			threads, shadow_strerror(rc));
		return -1;
	}
	rc = shadow__pipeline_region_add(pl, &ds->dst.spec, &id);
	if (rc < 0) {
		fprintf(stderr, "%s: destination region: %s\n", o->prog, shadow_strerror(rc));
		shadow__pipeline_destroy(pl);
		return -1;
	}
	struct run_spec rs = {
		.region = id,
		.op_chunks = op_chunks,
		.inflight = o->inflight,
		.max_ops = ds->n_chunks / op_chunks,
	};
	struct shadow__pipeline_stats s0, s1;
	rc = run_ops(b, pl, &rs, &warm);
	if (rc == 0) {
		rs.max_ops = 0;
		rs.target_nbytes = (uint64_t)(o->gb * 1e9);
		rs.max_time = o->max_time;
		shadow__pipeline_stats(pl, &s0);
		rc = run_ops(b, pl, &rs, &res);
		shadow__pipeline_stats(pl, &s1);
	}
	rss1 = rss_private_nbytes();
	if (rc == 0 && o->latency > 0)
		rc = row_latency(b, pl, id, op_chunks, lat, &n_lat);
	(void)shadow__pipeline_region_remove(pl, id);
	shadow__pipeline_destroy(pl);
	if (rc < 0)
		return -1;

	if (!sr->checked) {
		double rel = 0.0;
		if (verify_dest(b, sr, &rel) != 0)
			return -1;
		if (sr->lossless)
			printf("  check: every frame of the destination equals the source, bit for "
			       "bit\n");
		else
			printf("  check: every frame written; max |error| / max |value| = %.4f "
			       "(lossy)\n", rel);
		sr->checked = true;
	}
	if (row_terms(b, sr, threads, &t1) < 0)
		return -1;

	struct row *row = &b->rows[b->n_rows++];
	const double one = (t0.cs.own + t1.cs.own) / 2, dec = one * threads;
	const double st = (t0.store + t1.store) / 2, cp = (t0.copy + t1.copy) / 2;
	row->store = store_names[sr->store_kind];
	row->scheme = sr->scheme;
	row->threads = threads;
	row->goodput = gbps(res.bytes_out, res.seconds);
	row->cpu_per_gb = res.bytes_out > 0 ? res.cpu_s / ((double)res.bytes_out * 1e-9) : NAN;
	row->decode1 = one;
	row->store_gbps = st;
	row->copy_gbps = cp;
	if (dec <= st && dec <= cp)
		row->limit = LIM_DECODE;
	else
		row->limit = st <= cp ? LIM_STORE : LIM_COPY;
	row->bound = fmin(dec, fmin(st, cp));
	row->rss_mib = rss1 > rss0 ? (double)(rss1 - rss0) / (double)MIB : 0.0;
	if (rss1 > rss0 && rss1 - rss0 > b->rss_growth_max)
		b->rss_growth_max = rss1 - rss0;
	print_row(row);
	/* Where the time went, for a row that misses its bound: the decode threads' own speed
	 * inside the pipeline (decode_frame + plan per frame, ns_decode), their busy share, and
	 * the process's kernel time. */
	const double dec_s = (double)(s1.ns_decode - s0.ns_decode) * 1e-9;
	printf("%*s in the pipeline: decode %.3f GB/s per busy thread, decode threads %.0f%% "
	       "busy; CPU %.2f s user + %.2f s sys; %.2f GB in %.2f s\n", 6, "",
	       gbps(s1.bytes_decoded - s0.bytes_decoded, dec_s),
	       100.0 * dec_s / (res.seconds * threads), res.user_s,
	       fmax(0.0, res.cpu_s - res.user_s), (double)res.bytes_out * 1e-9, res.seconds);
	/* The terms before / after the run, and what T x CPU 1's speed alone (the bound of the
	 * earlier runs) would have made of the row. */
	char own[64] = "floating";
	if (t0.cs.own_first >= 0)
		snprintf(own, sizeof(own), "on CPUs %d-%d", t0.cs.own_first, t0.cs.own_last);
	printf("%*s terms before / after: 1 core %.3f / %.3f GB/s (decode threads %s), all %u "
	       "CPUs %.3f / %.3f (%.3f-%.3f / %.3f-%.3f); store %.3f / %.3f; copy %.3f / %.3f; "
	       "CPU %d alone %.3f / %.3f, goodput / %u x that %.2f\n", 6, "", t0.cs.own,
	       t1.cs.own, own, t0.cs.n, t0.cs.mean, t1.cs.mean, t0.cs.lo, t0.cs.hi, t1.cs.lo,
	       t1.cs.hi, t0.store, t1.store, t0.copy, t1.copy, b->measure_cpu, t0.cs.first,
	       t1.cs.first, threads, row->goodput / ((t0.cs.first + t1.cs.first) / 2 * threads));
	/* Against it, decoders alone, measured before the run: what T cores at once cost each
	 * other (hot vs T x one core), and what cold slots would cost (cycled vs hot). */
	if (o->alone)
		printf("%*s decode alone: %u at once on %s: hot %.3f (%.3f per core), cycled %.3f "
		       "(%.3f per core)\n", 6, "", threads, cpus, hot, hot / threads, cycled,
		       cycled / threads);
	/* Failed latency ops are counted and printed; the run goes on, the bench exits 1. */
	if (n_lat > 0 && print_latency(b, sr, threads, one, st, cp, lat, n_lat) > 0)
		b->status = 1;
	if (b->csv != NULL) {
		fprintf(b->csv, "%s,%s,%u,%.6g,%.6g,%.6g\n", row->store, row->scheme, threads,
			row->goodput, row->cpu_per_gb, row->bound);
		fflush(b->csv);
	}
	return 0;
}

/* One (store, scheme): save, read back, the scheme's terms, then every thread count. */
static int run_scheme(struct bench *b, enum store_kind kind, uint32_t idx, const char *url_base)
{
	const struct options *o = b->o;
	const struct dataset *ds = &b->ds;
	struct scheme_run sr;
	int rc = -1;

	memset(&sr, 0, sizeof(sr));
	sr.store_kind = kind;
	sr.idx = idx;
	sr.scheme = o->schemes[idx];
	(void)shadow_codec_options_parse(sr.scheme, &sr.opts);
	sr.lossless = sr.opts.quant == SHADOW_QUANT_NONE || sr.opts.quant == SHADOW_QUANT_PLANES;
	sr.pca = sr.opts.quant == SHADOW_QUANT_PCA;
	if (sr.pca && ds->transform == NULL)
		return 0; /* said at the start */
	if (kind == ST_MEM)
		/* A fresh instance per scheme: its values go when the last handle closes. The
		 * capacity is the same string in every handle (a different one is -EINVAL). */
		snprintf(sr.url, sizeof(sr.url), "mem://bench-pipeline-%u?capacity=%lluMiB", idx,
			 (unsigned long long)(ds->n_chunks * ds->rx_nbytes / MIB + 64));
	else
		snprintf(sr.url, sizeof(sr.url), "%s", url_base);
	if (strlen(KEY_PREFIX) + 1 + strlen(sr.scheme) <= SHADOW_KEY_PREFIX_MAX)
		snprintf(sr.prefix, sizeof(sr.prefix), "%s:%s", KEY_PREFIX, sr.scheme);
	else
		snprintf(sr.prefix, sizeof(sr.prefix), "%s:%u", KEY_PREFIX, idx);
	sr.key_text = calloc(ds->n_chunks, sizeof(*sr.key_text));
	if (sr.key_text == NULL) {
		fprintf(stderr, "%s: out of memory\n", o->prog);
		return -1;
	}
	for (uint32_t i = 0; i < ds->n_chunks; i++)
		(void)shadow_key_format(&ds->keys[i], sr.prefix, sr.key_text[i], SHADOW_STORE_KEY_MAX);
	rc = shadow_store_open(sr.url, &b->store_opts, &sr.store);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: cannot open %s: %s\n", o->prog, sr.scheme, sr.url,
			shadow_strerror(rc));
		free(sr.key_text);
		return -1;
	}
	rc = scheme_save(b, &sr);
	if (rc == 0)
		rc = scheme_read_back(b, &sr);
	if (rc == 0 && b->pinned)
		rc = pin_self(b->measure_cpu);
	if (rc == 0 && isnan(b->decode1[idx]))
		rc = measure_decode(b, &sr, 0.0, &b->decode1[idx]);
	if (rc == 0)
		rc = measure_store(b, &sr);
	if (b->pinned)
		(void)pin_self(b->main_cpu);
	if (rc == 0) {
		printf("%s %s: ratio %.3f (%.1f MiB of containers for %u chunks), saved in %.2f s "
		       "by %u save threads;\n  terms: decode %.3f GB/s per core, store %.3f GB/s "
		       "(%.3f GB/s of containers, %u GETs in flight), copy %.3f GB/s\n",
		       store_names[kind], sr.scheme, sr.ratio, (double)sr.cont_total / (double)MIB,
		       ds->n_chunks, sr.save_s, sr.save_threads, b->decode1[idx],
		       sr.store_gbps * sr.ratio, sr.store_gbps, SHADOW_MAX(b->n_bufs, 1u),
		       b->copy_gbps);
		fflush(stdout);
	}
	if (rc == 0)
		rc = copy_frames(b, true); /* what the check reads back is this scheme's */
	for (uint32_t t = 0; t < o->n_threads && rc == 0; t++) {
		if (o->threads[t] > SHADOW_MIN(o->max_threads, b->n_pipe_cpus))
			continue;
		rc = scheme_fetch(b, &sr, o->threads[t]);
	}
	if (kind == ST_REDIS)
		scheme_delete_keys(b, &sr);
	shadow_store_close(sr.store);
	free(sr.views); /* the rows' decode terms are done with them */
	free(sr.cont);
	free(sr.cont_nbytes);
	free(sr.key_text);
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* The redis-server                                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Start the server with o->malloc_conf in its environment (ours is restored after). */
static int redis_start(const struct options *o, struct shadow_test_redis **server_ret)
{
	struct shadow_test_redis_options ro = {
		.malloc_conf = o->malloc_conf[0] != '\0' ? o->malloc_conf : NULL,
	};

	return shadow_test_redis_start(&ro, server_ret);
}

/* ------------------------------------------------------------------------------------------ */
/* Report                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void print_setup(const struct bench *b)
{
	const struct options *o = b->o;
	const struct dataset *ds = &b->ds;
	static const char *const layout_names[] = { "", "NHD", "HND", "cross-layer NHD" };
	char model[256], cpus[256];

	bench_cpu_model(model, sizeof(model));
	printf("pipeline benchmark (libshadow %s)\n", shadow_version());
	printf("cpu: %s, %ld online\n", model, sysconf(_SC_NPROCESSORS_ONLN));
	if (ds->synthetic) {
		printf("data: SYNTHETIC KV (no dump found or --synthetic): minillama-h128-shaped "
		       "gaussian, %u tokens\n", SYNTHETIC_TOKENS);
	} else {
		printf("data: %d real dump(s):", ds->n_dumps);
		for (int d = 0; d < ds->n_dumps; d++)
			printf("%s%s", d ? ", " : " ", ds->kv[d].name);
		printf("\n");
	}
	printf("geometry: %u layers, %u KV heads, head_dim %u, bf16; %u-token chunks of %.2f MiB, "
	       "%u-token blocks; %s layout\n", ds->geom.n_layers, ds->geom.n_kv_heads,
	       ds->geom.head_dim, ds->geom.chunk_tokens, (double)ds->chunk_nbytes / (double)MIB,
	       ds->geom.block_tokens, layout_names[o->layout]);
	printf("data set: %u chunks (%.0f MiB of bf16) = %u sequences of %u chunks, each a dump "
	       "under its own key chain\n", ds->n_chunks,
	       (double)ds->n_chunks * (double)ds->chunk_nbytes / (double)MIB, ds->n_seqs,
	       ds->seq_chunks);
	printf("fetch: ops of %u chunks, %u in flight; >= %.2f GB of bf16 per measurement (at "
	       "most %.0f s) after one untimed pass\n",
	       o->op_chunks != 0 ? o->op_chunks : ds->seq_chunks, o->inflight, o->gb, o->max_time);
	printf("destination: %s, %.0f MiB, chunk blocks %s\n",
	       o->cuda ? "GPU memory of a child process (CUDA IPC)" : "host memfd",
	       (double)ds->dst.spec.mem.nbytes / (double)MIB,
	       o->contiguous ? "in order" : "scattered (fixed random permutation)");
	printf("pipeline: pool %llu MiB%s, %u chunk buffers (%llu KiB receive + %llu KiB "
	       "staging), %u fetch thread(s), %u copy thread(s)\n",
	       (unsigned long long)(o->pool_nbytes / MIB), o->cuda ? " pinned" : "", b->n_bufs,
	       (unsigned long long)(ds->rx_nbytes >> 10),
	       (unsigned long long)(ds->stage_nbytes >> 10), o->fetch_threads, o->copy_threads);
	/* What the copy stage issues: the chunk plans against one copy per run of each frame. */
	uint64_t n_runs = 0, n_rects = 0, n_frame_runs = 0, n_line_rects = 0;
	for (uint32_t i = 0; i < ds->n_chunks; i++) {
		const struct shadow__copy_plan *p = &b->chunk_plans[i];
		n_runs += p->n_runs;
		n_rects += p->n_rects;
		for (size_t k = 0; k < p->n_rects; k++)
			n_line_rects += shadow__copy_cuda_rect_as_lines(o->copy_threads, &p->rects[k]);
	}
	for (uint64_t j = 0; j < (uint64_t)ds->n_chunks * ds->n_frames; j++)
		n_frame_runs += b->dst_n_runs[j];
	printf("copy plan per chunk: %.1f runs + %.1f rectangles (per-frame plans: %.1f runs)\n",
	       (double)n_runs / ds->n_chunks, (double)n_rects / ds->n_chunks,
	       (double)n_frame_runs / ds->n_chunks);
	if (o->cuda && getenv("SHADOW_CUDA_RECTS") != NULL)
		printf("cuda: rectangles as SHADOW_CUDA_RECTS=%s says (the model: %.1f per chunk "
		       "as lines from %u copy thread(s))\n", getenv("SHADOW_CUDA_RECTS"),
		       (double)n_line_rects / ds->n_chunks, o->copy_threads);
	else if (o->cuda)
		printf("cuda: %.1f rectangles per chunk copied as lines from %u copy thread(s), "
		       "the rest as 2D copies\n", (double)n_line_rects / ds->n_chunks,
		       o->copy_threads);
	if (b->pinned) {
		cpu_set_text(&b->pipe_cpus, cpus, sizeof(cpus));
		printf("cpus: main thread on %d; pipeline threads inside %s (%u CPUs); bound terms "
		       "measured on %d\n", b->main_cpu, cpus, b->n_pipe_cpus, b->measure_cpu);
	} else {
		printf("cpus: not pinned (--no-pin); %u CPUs\n", b->n_pipe_cpus);
	}
	if (b->pinned) {
		/* Hyperthreads: the decode term runs alone on its core; decode threads on two
		 * siblings share one, and each runs slower than the term says. */
		char sib[256];
		(void)cpu_core(b->measure_cpu, sib, sizeof(sib));
		if (strpbrk(sib, ",-") != NULL)
			printf("smt: CPU %d shares its core with hyperthread siblings (%s): decode "
			       "threads on siblings run slower than one core alone\n",
			       b->measure_cpu, sib);
	}
	if (ds->transform != NULL)
		printf("pca: transform calibrated in %.2f s on %s (%u tokens%s)\n", ds->calib_s,
		       ds->kv[0].name, ds->seq_chunks * ds->geom.chunk_tokens,
		       ds->synthetic ? "" : ", keys un-rotated with RoPE base 500000");
	bool skipped = false;
	for (uint32_t t = 0; t < o->n_threads; t++) {
		if (o->threads[t] <= SHADOW_MIN(o->max_threads, b->n_pipe_cpus))
			continue;
		printf("%s%u", skipped ? ", " : "decode threads skipped (above --max-threads or "
					       "the pipeline's CPUs): ", o->threads[t]);
		skipped = true;
	}
	if (skipped)
		printf("\n");
	fflush(stdout);
}

static void print_targets(const struct bench *b)
{
	const struct options *o = b->o;

	printf("\nTargets (this run):\n");
	for (uint32_t t = 0; t < o->n_threads; t++) {
		double lo = INFINITY;
		uint32_t n = 0;
		for (uint32_t i = 0; i < b->n_rows; i++) {
			const struct row *r = &b->rows[i];
			if (r->threads != o->threads[t] || isnan(r->goodput))
				continue;
			lo = fmin(lo, r->goodput / r->bound);
			n++;
		}
		if (n == 0)
			continue;
		printf("  goodput / bound, %u decode thread(s): min %.2f over %u rows (target >= "
		       "0.90): %s\n", o->threads[t], lo, n, lo >= 0.9 ? "met" : "missed");
	}
	if (o->cuda) {
		printf("  cuda copy backend alone: %.2f GB/s = %.0f%% of pinned H2D (%.2f GB/s, "
		       "%u x %llu MiB copies) (target >= 80%%)\n", b->copy_gbps,
		       100.0 * b->copy_gbps / b->h2d_gbps, b->h2d_gbps, H2D_COPIES,
		       (unsigned long long)(H2D_COPY_NBYTES / MIB));
		for (uint32_t i = 0; i < b->n_rows; i++) {
			const struct row *r = &b->rows[i];
			if (r->limit == LIM_DECODE)
				continue;
			printf("    codec not the bottleneck: %s %s %u threads: goodput %.2f GB/s = "
			       "%.0f%% of pinned H2D (limit: %s)\n", r->store, r->scheme,
			       r->threads, r->goodput, 100.0 * r->goodput / b->h2d_gbps,
			       limit_names[r->limit]);
		}
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("  pipeline resident memory: grew by at most %.0f MiB over a run, pool %llu MiB "
	       "(target <= pool + 64 MiB): %s\n", (double)b->rss_growth_max / (double)MIB,
	       (unsigned long long)(o->pool_nbytes / MIB),
	       b->rss_growth_max <= o->pool_nbytes + RSS_ALLOWANCE ? "met" : "missed");
	if (o->cuda)
		printf("    (--cuda: the pinned pool, cudaHostAlloc memory, does not show in RSS; the "
		       "figure is everything else; run without --cuda for the pool itself)\n");
	printf("  peak RSS of this process: %.0f MiB (data set, source region, store values, "
	       "read-back containers and GET buffers included)\n", (double)ru.ru_maxrss / 1024.0);
}

/* ------------------------------------------------------------------------------------------ */
/* Main                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Choose the CPUs (before pinning anything) and pin the main thread. */
static void cpus_setup(struct bench *b, bool redis_here)
{
	const struct options *o = b->o;
	cpu_set_t allowed;
	int last = -1, rc;

	if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
		CPU_ZERO(&allowed);
		CPU_SET(0, &allowed);
	}
	b->allowed_cpus = allowed;
	b->main_cpu = -1;
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, &allowed))
			continue;
		if (b->main_cpu < 0)
			b->main_cpu = c;
		last = c;
	}
	b->redis_cpu = -1;
	if (redis_here)
		b->redis_cpu = o->redis_cpu != -2 ? o->redis_cpu
			       : CPU_COUNT(&allowed) >= 3 ? last : b->main_cpu;
	if (!o->pin) {
		b->pipe_cpus = allowed;
		b->n_pipe_cpus = (uint32_t)CPU_COUNT(&allowed);
		return;
	}
	if (o->cpus_set) {
		b->pipe_cpus = o->cpus;
	} else {
		b->pipe_cpus = allowed;
		CPU_CLR(b->main_cpu, &b->pipe_cpus);
		if (b->redis_cpu >= 0)
			CPU_CLR(b->redis_cpu, &b->pipe_cpus);
		if (CPU_COUNT(&b->pipe_cpus) == 0)
			b->pipe_cpus = allowed; /* one CPU: everything shares it */
	}
	b->n_pipe_cpus = (uint32_t)CPU_COUNT(&b->pipe_cpus);
	b->measure_cpu = b->main_cpu;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &b->pipe_cpus)) {
			b->measure_cpu = c;
			break;
		}
	rc = pthread_getaffinity_np(pthread_self(), sizeof(b->saved_affinity),
				    &b->saved_affinity);
	if (rc == 0)
		rc = pin_self(b->main_cpu);
	if (rc != 0)
		fprintf(stderr, "%s: warning: cannot pin the main thread: %s\n", o->prog,
			strerror(rc < 0 ? -rc : rc));
	b->pinned = rc == 0;
}

/* The pipeline's chunk buffers for this configuration (for the store term's GETs in flight,
 * the copy term's staging areas and the report): a pipeline made and dropped. */
static int probe_pipeline(struct bench *b)
{
	struct shadow__pipeline_config cfg;
	struct shadow__pipeline *pl = NULL;
	struct shadow__pipeline_stats s;
	struct scheme_run sr;
	int rc;

	memset(&sr, 0, sizeof(sr));
	snprintf(sr.url, sizeof(sr.url), "mem://bench-pipeline-probe");
	snprintf(sr.prefix, sizeof(sr.prefix), "%s", KEY_PREFIX);
	sr.scheme = b->o->schemes[0];
	pipeline_config(b, &sr, 1, &cfg);
	rc = shadow__pipeline_create(&cfg, &pl);
	if (rc < 0) {
		fprintf(stderr, "%s: pipeline (pool %llu MiB, receive buffers %llu KiB, staging "
				"areas %llu KiB): %s\n", b->o->prog,
			(unsigned long long)(cfg.pool_nbytes / MIB),
			(unsigned long long)(cfg.rx_nbytes >> 10),
			(unsigned long long)(cfg.stage_nbytes >> 10), shadow_strerror(rc));
		return -1;
	}
	shadow__pipeline_stats(pl, &s);
	b->n_bufs = s.chunks_total;
	shadow__pipeline_destroy(pl);
	return 0;
}

int shadow_bench_pipeline_main(int argc, char **argv)
{
	struct options o;
	struct bench b;
	struct sigaction ign, old_pipe;
	bool redis_here = false, redis_missing = false;
	int rc;

	rc = parse_args(argc, argv, &o);
	if (rc != 0) {
		free_options(&o);
		return rc < 0 ? 0 : rc;
	}
	memset(&b, 0, sizeof(b));
	b.o = &o;
	b.ds.src.fd = b.ds.dst.fd = -1;
	b.child_done_fd = -1;
	for (uint32_t k = 0; k < SCHEMES_MAX; k++)
		b.decode1[k] = NAN;
	shadow_store_options_default(&b.store_opts);
	b.store_opts.request_timeout_ms = REQUEST_TIMEOUT_MS;

	memset(&ign, 0, sizeof(ign));
	ign.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &ign, &old_pipe);

	rc = dataset_build(&b);
	if (rc != 0) {
		b.status = rc;
		goto out;
	}
	b.rows = calloc((size_t)ST_COUNT * o.n_schemes * o.n_threads, sizeof(*b.rows));
	if (b.rows == NULL || plan_dst_runs(&b) < 0) {
		b.status = 1;
		goto out;
	}
	/* The CUDA child first: nothing here has called CUDA yet. */
	if (o.cuda) {
		if (cuda_child_start(&b) != 0) {
			b.status = 1;
			goto out;
		}
		rc = shadow__copy_cuda_ops(&b.copy_ops);
		if (rc < 0) {
			fprintf(stderr, "%s: --cuda: %s\n", o.prog, shadow_strerror(rc));
			b.status = 1;
			goto out;
		}
	} else {
		b.copy_ops = &shadow__copy_host_ops;
	}
	/* The server is started before we pin ourselves (a child inherits the affinity of the
	 * thread that forks it), then moved to its own CPU. */
	if (o.stores[ST_REDIS] && o.redis_url == NULL) {
		char path[4096];
		if (shadow_test_redis_find(path, sizeof(path)) < 0) {
			redis_missing = true;
		} else if ((rc = redis_start(&o, &b.server)) < 0) {
			fprintf(stderr, "%s: cannot start redis-server: %s\n", o.prog, strerror(-rc));
			b.status = 1;
		} else {
			redis_here = true;
			b.have_redis = true;
			snprintf(b.redis_url, sizeof(b.redis_url), "%s",
				 shadow_test_redis_url(b.server));
		}
	} else if (o.stores[ST_REDIS]) {
		b.have_redis = true;
		snprintf(b.redis_url, sizeof(b.redis_url), "%s", o.redis_url);
	}
	cpus_setup(&b, redis_here);
	if (probe_pipeline(&b) < 0) {
		b.status = 1;
		goto out;
	}
	print_setup(&b);
	if (redis_missing)
		printf("redis-server: %s: no redis rows\n", SHADOW_TEST_REDIS_MISSING);
	if (redis_here) {
		cpu_set_t one;
		printf("redis-server: started here (%s, pid %d), ", shadow_test_redis_addr(b.server),
		       (int)shadow_test_redis_pid(b.server));
		if (b.redis_cpu >= 0) {
			CPU_ZERO(&one);
			CPU_SET(b.redis_cpu, &one);
			rc = bench_pin_process(shadow_test_redis_pid(b.server), &one);
			if (rc < 0)
				printf("cannot pin it: %s\n", strerror(-rc));
			else
				printf("pinned to CPU %d%s\n", b.redis_cpu,
				       b.redis_cpu == b.main_cpu ? " (the main thread's: it sleeps "
								   "during runs)" : "");
		} else {
			printf("not pinned\n");
		}
		if (o.malloc_conf[0] != '\0')
			printf("redis-server: MALLOC_CONF=%s\n", o.malloc_conf);
	} else if (b.have_redis) {
		printf("redis-server: %s (--redis), not started here: pin it away from the "
		       "pipeline's CPUs yourself\n", b.redis_url);
	}
	for (uint32_t k = 0; k < o.n_schemes; k++) {
		struct shadow_codec_options opts;
		(void)shadow_codec_options_parse(o.schemes[k], &opts);
		if (opts.quant == SHADOW_QUANT_PCA && b.ds.transform == NULL)
			printf("scheme %s: skipped (no PCA transform)\n", o.schemes[k]);
	}
	if (o.csv_path != NULL &&
	    (b.csv = bench_csv_open(o.prog, o.csv_path, "store,scheme,decode_threads,goodput_gbps,"
				    "cpu_s_per_gb,bound_gbps")) == NULL) {
		b.status = 1;
		goto out;
	}
	if (o.lat_csv_path != NULL &&
	    (b.lat_csv = bench_csv_open(o.prog, o.lat_csv_path, "store,scheme,decode_threads,"
					"op_chunks,n,p50_us,p90_us,p99_us,max_us")) == NULL) {
		b.status = 1;
		goto out;
	}

	/* The copy term, once: it depends on the destination only. */
	if (b.pinned)
		(void)pin_self(b.measure_cpu);
	rc = copy_frames(&b, false);
	if (rc == 0 && o.cuda)
		rc = measure_h2d(&b);
	if (b.pinned)
		(void)pin_self(b.main_cpu);
	if (rc < 0) {
		b.status = 1;
		goto out;
	}
	printf("copy term: %s backend, %u thread(s), staging images into the destination: %.3f "
	       "GB/s", b.copy_ops->name, o.copy_threads, b.copy_gbps);
	if (o.cuda)
		printf("; plain pinned H2D (%u x %llu MiB on one stream): %.3f GB/s", H2D_COPIES,
		       (unsigned long long)(H2D_COPY_NBYTES / MIB), b.h2d_gbps);
	printf("\n");
	fflush(stdout);

	for (int k = 0; k < ST_COUNT; k++) {
		if (!o.stores[k] || (k == ST_REDIS && !b.have_redis))
			continue;
		printf("\n");
		bool header = false;
		for (uint32_t s = 0; s < o.n_schemes; s++) {
			if (!header) {
				print_table_header();
				header = true;
			}
			if (run_scheme(&b, (enum store_kind)k, s, b.redis_url) < 0) {
				b.status = 1;
				goto out;
			}
		}
	}
	print_targets(&b);

out:
	if (b.pinned)
		(void)pthread_setaffinity_np(pthread_self(), sizeof(b.saved_affinity),
					     &b.saved_affinity);
	shadow_test_redis_stop(b.server);
	cuda_child_stop(&b);
	sigaction(SIGPIPE, &old_pipe, NULL);
	if (b.csv != NULL && fclose(b.csv) != 0) {
		fprintf(stderr, "%s: %s: %s\n", o.prog, o.csv_path, strerror(errno));
		b.status = 1;
	}
	if (b.lat_csv != NULL && fclose(b.lat_csv) != 0) {
		fprintf(stderr, "%s: %s: %s\n", o.prog, o.lat_csv_path, strerror(errno));
		b.status = 1;
	}
	dataset_free(&b.ds);
	free(b.rows);
	free(b.dst_runs);
	free(b.dst_n_runs);
	free(b.chunk_plans);
	free(b.chunk_runs);
	free(b.chunk_rects);
	free_options(&o);
	return b.status;
}
