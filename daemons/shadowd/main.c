/*
 * shadowd - ShadowServe's data-plane daemon: it fetches compressed KV chunks from a store,
 * decodes them on its own cores and copies them into serving engines' paged KV memory, and
 * saves engines' KV back to the store. Engines talk to it through libshadow_client
 * (include/shadow/client.h, docs/protocol.md).
 *
 *   shadowd [--store URL] [--listen unix:PATH|tcp:HOST:PORT] [--cpus LIST] [--pool MIB] ...
 *
 * Every flag has a SHADOW_* environment variable (flags win). When ready it prints one line,
 *   shadowd: ready listen=... store=... pool=...MiB fetch=N decode=N copy=N cuda=yes|no
 *   [metrics=H:P]
 * on stdout. SIGTERM (or SIGINT) drains: no new connections, new requests refused, requests
 * in flight finish (bounded by their deadlines and --drain-timeout), then exit 0.
 *
 * Threads (docs/threads.md): this main thread becomes the control thread (server.c); the
 * pipeline's fetch, decode, copy and save threads and the metrics thread are started from here
 * after the main thread pinned itself into --cpus, so every thread inherits the set (the
 * pipeline pins its own again: one CPU each when the set has one for every pipeline thread,
 * the control and metrics threads then floating over the set). SIGTERM and SIGINT are
 * blocked in every thread and read
 * through a signalfd by the control thread.
 *
 * Exit status: 0 after a drain, 1 on a runtime failure, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <shadow/shadow.h>

#include "core/clock.h"
#include "core/cpuset.h"
#include "pipeline/pipeline.h"
#include "shadowd.h"

#define DEFAULT_LISTEN "unix:/tmp/shadowd.sock"
#define DEFAULT_STORE "mem://"

struct opts {
	const char *store, *listen, *cpus, *pool, *stage_size, *rx_size, *metrics, *log_level;
	const char *save_scheme, *key_prefix, *transform;
	const char *fetch_threads, *decode_threads, *copy_threads, *save_threads, *max_clients;
	const char *drain_timeout;
	const char *spin_us;
	bool no_pinned;
};

static int usage(FILE *out)
{
	fprintf(out,
		"usage: shadowd [OPTIONS]\n"
		"  --store URL            store (SHADOW_STORE; default " DEFAULT_STORE "):\n"
		"                         mem://, file:///DIR, redis://HOST:PORT, redis+cluster://...\n"
		"  --listen ENDPOINT      unix:PATH or tcp:HOST:PORT (SHADOW_LISTEN;\n"
		"                         default " DEFAULT_LISTEN ")\n"
		"  --cpus LIST            pin every thread inside these CPUs, e.g. 2-5,8 (SHADOW_CPUS)\n"
		"  --pool MIB             data-plane memory in MiB, or a size like 512MiB\n"
		"                         (SHADOW_POOL; default 1024)\n"
		"  --stage-size SIZE      a chunk's staging area, >= its decoded KV and copy plan\n"
		"                         (SHADOW_STAGE_SIZE; default 64MiB)\n"
		"  --rx-size SIZE         chunk receive buffer, >= the largest chunk\n"
		"                         (SHADOW_RX_SIZE; default 64MiB)\n"
		"  --fetch-threads N      (SHADOW_FETCH_THREADS; default 1)\n"
		"  --decode-threads N     (SHADOW_DECODE_THREADS; default 2)\n"
		"  --copy-threads N       threads issuing copies, each with its own CUDA stream\n"
		"                         (SHADOW_COPY_THREADS; default 1; 2-4 for GPU blocks\n"
		"                         of 32 KiB and more in models of few layers, copied\n"
		"                         as batched lines then: docs/results.md)\n"
		"  --save-threads N       (SHADOW_SAVE_THREADS; default 1)\n"
		"  --save-scheme SCHEME   codec of saves, e.g. bf16planes+zstd1, int8+zstd3\n"
		"                         (SHADOW_SAVE_SCHEME; default bf16planes+zstd1)\n"
		"  --key-prefix PREFIX    store key prefix (SHADOW_KEY_PREFIX; default "
		SHADOW_DEFAULT_KEY_PREFIX ")\n"
		"  --transform FILE       PCA transform for pca schemes (SHADOW_TRANSFORM)\n"
		"  --metrics HOST:PORT    serve /metrics and /healthz over HTTP (SHADOW_METRICS)\n"
		"  --max-clients N        (SHADOW_MAX_CLIENTS; default 64)\n"
		"  --drain-timeout MS     SIGTERM: longest wait for requests in flight\n"
		"                         (SHADOW_DRAIN_TIMEOUT_MS; default 30000)\n"
		"  --spin-us US           while requests run, look for work this long before\n"
		"                         sleeping, so busy clients need no doorbell (SHADOW_SPIN_US;\n"
		"                         default 50; 0: sleep at once)\n"
		"  --no-pinned            pageable pool even with a GPU (SHADOW_NO_PINNED=1)\n"
		"  --log-level LEVEL      error, warn, info or debug (SHADOW_LOG_LEVEL; default warn)\n"
		"  --version, --help\n");
	return out == stderr ? 2 : 0;
}

static int parse_u32(const char *what, const char *text, uint32_t lo, uint32_t hi, uint32_t *v)
{
	char *end;
	unsigned long x;

	errno = 0;
	x = strtoul(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || x < lo || x > hi) {
		fprintf(stderr, "shadowd: %s '%s': want an integer in %u .. %u\n", what, text, lo, hi);
		return -EINVAL;
	}
	*v = (uint32_t)x;
	return 0;
}

/* A size: a plain number is in `unit` bytes (MiB for --pool), else shadow_parse_size. */
static int parse_size(const char *what, const char *text, uint64_t unit, uint64_t *v)
{
	char *end;
	unsigned long long x;

	errno = 0;
	x = strtoull(text, &end, 10);
	if (errno == 0 && end != text && *end == '\0') {
		if (x == 0 || x > UINT64_MAX / unit)
			goto bad;
		*v = x * unit;
		return 0;
	}
	if (shadow_parse_size(text, v) == 0 && *v > 0)
		return 0;
bad:
	fprintf(stderr, "shadowd: %s '%s': not a size\n", what, text);
	return -EINVAL;
}

/* --cpus: "0-3,8,10-11" into *set. */
static int parse_cpus(const char *text, cpu_set_t *set)
{
	if (shadow__cpuset_parse(text, set) < 0) {
		fprintf(stderr, "shadowd: --cpus '%s': want a list like 2-5,8\n", text);
		return -EINVAL;
	}
	return 0;
}

static int parse_level(const char *text, enum shadow_log_level *level)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };

	for (int i = 0; i < 4; i++) {
		if (strcasecmp(text, names[i]) == 0) {
			*level = (enum shadow_log_level)i;
			return 0;
		}
	}
	fprintf(stderr, "shadowd: --log-level '%s': want error, warn, info or debug\n", text);
	return -EINVAL;
}

/* The store URL without a password, for printing. */
static void redact_url(const char *url, char *out, size_t n)
{
	const char *scheme_end = strstr(url, "://");
	const char *at = scheme_end != NULL ? strchr(scheme_end + 3, '@') : NULL;
	const char *slash = scheme_end != NULL ? strchr(scheme_end + 3, '/') : NULL;

	if (at == NULL || (slash != NULL && slash < at)) {
		snprintf(out, n, "%s", url);
		return;
	}
	snprintf(out, n, "%.*s***%s", (int)(scheme_end + 3 - url), url, at);
}

static int load_transform(const char *path, struct shadow_transform **t_ret)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	void *buf = NULL;
	int rc;

	if (f == NULL)
		return -errno;
	if (fstat(fileno(f), &st) < 0 || st.st_size <= 0 || st.st_size > (1 << 30)) {
		rc = -EINVAL;
		goto out;
	}
	buf = malloc((size_t)st.st_size);
	if (buf == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
		rc = -EIO;
		goto out;
	}
	rc = shadow_transform_load(buf, (size_t)st.st_size, NULL, t_ret);
out:
	free(buf);
	fclose(f);
	return rc;
}

static const char *env(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && v[0] != '\0' ? v : NULL;
}

int main(int argc, char **argv)
{
	enum {
		O_STORE = 256, O_LISTEN, O_CPUS, O_POOL, O_STAGE, O_RX, O_FETCH, O_DECODE, O_COPY, O_SAVE,
		O_SCHEME, O_PREFIX, O_TRANSFORM, O_METRICS, O_MAXCL, O_DRAIN, O_SPIN, O_NOPIN, O_LOG,
		O_VERSION, O_HELP
	};
	static const struct option options[] = {
		{ "store", required_argument, NULL, O_STORE },
		{ "listen", required_argument, NULL, O_LISTEN },
		{ "cpus", required_argument, NULL, O_CPUS },
		{ "pool", required_argument, NULL, O_POOL },
		{ "stage-size", required_argument, NULL, O_STAGE },
		{ "rx-size", required_argument, NULL, O_RX },
		{ "fetch-threads", required_argument, NULL, O_FETCH },
		{ "decode-threads", required_argument, NULL, O_DECODE },
		{ "copy-threads", required_argument, NULL, O_COPY },
		{ "save-threads", required_argument, NULL, O_SAVE },
		{ "save-scheme", required_argument, NULL, O_SCHEME },
		{ "key-prefix", required_argument, NULL, O_PREFIX },
		{ "transform", required_argument, NULL, O_TRANSFORM },
		{ "metrics", required_argument, NULL, O_METRICS },
		{ "max-clients", required_argument, NULL, O_MAXCL },
		{ "drain-timeout", required_argument, NULL, O_DRAIN },
		{ "spin-us", required_argument, NULL, O_SPIN },
		{ "no-pinned", no_argument, NULL, O_NOPIN },
		{ "log-level", required_argument, NULL, O_LOG },
		{ "version", no_argument, NULL, O_VERSION },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = {
		.store = env("SHADOW_STORE"),
		.listen = env("SHADOW_LISTEN"),
		.cpus = env("SHADOW_CPUS"),
		.pool = env("SHADOW_POOL"),
		.stage_size = env("SHADOW_STAGE_SIZE"),
		.rx_size = env("SHADOW_RX_SIZE"),
		.fetch_threads = env("SHADOW_FETCH_THREADS"),
		.decode_threads = env("SHADOW_DECODE_THREADS"),
		.copy_threads = env("SHADOW_COPY_THREADS"),
		.save_threads = env("SHADOW_SAVE_THREADS"),
		.save_scheme = env("SHADOW_SAVE_SCHEME"),
		.key_prefix = env("SHADOW_KEY_PREFIX"),
		.transform = env("SHADOW_TRANSFORM"),
		.metrics = env("SHADOW_METRICS"),
		.max_clients = env("SHADOW_MAX_CLIENTS"),
		.drain_timeout = env("SHADOW_DRAIN_TIMEOUT_MS"),
		.spin_us = env("SHADOW_SPIN_US"),
		.log_level = env("SHADOW_LOG_LEVEL"),
		.no_pinned = env("SHADOW_NO_PINNED") != NULL &&
			     strcmp(env("SHADOW_NO_PINNED"), "0") != 0,
	};
	int opt;

	while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (opt) {
		case O_STORE: o.store = optarg; break;
		case O_LISTEN: o.listen = optarg; break;
		case O_CPUS: o.cpus = optarg; break;
		case O_POOL: o.pool = optarg; break;
		case O_STAGE: o.stage_size = optarg; break;
		case O_RX: o.rx_size = optarg; break;
		case O_FETCH: o.fetch_threads = optarg; break;
		case O_DECODE: o.decode_threads = optarg; break;
		case O_COPY: o.copy_threads = optarg; break;
		case O_SAVE: o.save_threads = optarg; break;
		case O_SCHEME: o.save_scheme = optarg; break;
		case O_PREFIX: o.key_prefix = optarg; break;
		case O_TRANSFORM: o.transform = optarg; break;
		case O_METRICS: o.metrics = optarg; break;
		case O_MAXCL: o.max_clients = optarg; break;
		case O_DRAIN: o.drain_timeout = optarg; break;
		case O_SPIN: o.spin_us = optarg; break;
		case O_NOPIN: o.no_pinned = true; break;
		case O_LOG: o.log_level = optarg; break;
		case O_VERSION: printf("shadowd %s\n", shadow_version()); return 0;
		case O_HELP: case 'h': return usage(stdout);
		default: return usage(stderr);
		}
	}
	if (optind != argc)
		return usage(stderr);

	/* Parse everything before starting anything. */
	struct shadow__pipeline_config pc;
	struct shadowd_config sc = { .max_clients = 64, .drain_timeout_ns = 30 * SHADOW_NS_PER_SEC };
	cpu_set_t cpus;
	uint32_t drain_ms = 30000, spin_us = 50;
	enum shadow_log_level level = SHADOW_LOG_WARN;
	struct shadow_codec_options scheme;

	shadow__pipeline_config_default(&pc);
	pc.store_url = o.store != NULL ? o.store : DEFAULT_STORE;
	sc.listen = o.listen != NULL ? o.listen : DEFAULT_LISTEN;
	if ((o.pool != NULL && parse_size("--pool", o.pool, 1u << 20, &pc.pool_nbytes) < 0) ||
	    (o.stage_size != NULL &&
	     parse_size("--stage-size", o.stage_size, 1, &pc.stage_nbytes) < 0) ||
	    (o.rx_size != NULL && parse_size("--rx-size", o.rx_size, 1, &pc.rx_nbytes) < 0) ||
	    (o.fetch_threads != NULL &&
	     parse_u32("--fetch-threads", o.fetch_threads, 1, 32, &pc.fetch_threads) < 0) ||
	    (o.decode_threads != NULL &&
	     parse_u32("--decode-threads", o.decode_threads, 1, 32, &pc.decode_threads) < 0) ||
	    (o.copy_threads != NULL &&
	     parse_u32("--copy-threads", o.copy_threads, 1, 8, &pc.copy_threads) < 0) ||
	    (o.save_threads != NULL &&
	     parse_u32("--save-threads", o.save_threads, 1, 16, &pc.save_threads) < 0) ||
	    (o.max_clients != NULL &&
	     parse_u32("--max-clients", o.max_clients, 1, 4096, &sc.max_clients) < 0) ||
	    (o.drain_timeout != NULL &&
	     parse_u32("--drain-timeout", o.drain_timeout, 0, 3600000, &drain_ms) < 0) ||
	    (o.spin_us != NULL && parse_u32("--spin-us", o.spin_us, 0, 100000, &spin_us) < 0) ||
	    (o.cpus != NULL && parse_cpus(o.cpus, &cpus) < 0) ||
	    (o.log_level != NULL && parse_level(o.log_level, &level) < 0))
		return 2;
	if (o.save_scheme != NULL && shadow_codec_options_parse(o.save_scheme, &scheme) < 0) {
		fprintf(stderr, "shadowd: --save-scheme '%s': unknown scheme\n", o.save_scheme);
		return 2;
	}
	if (pc.stage_nbytes % 4096 != 0 || pc.rx_nbytes % 4096 != 0) {
		fprintf(stderr, "shadowd: --stage-size and --rx-size must be multiples of 4 KiB\n");
		return 2;
	}
	sc.drain_timeout_ns = (uint64_t)drain_ms * SHADOW_NS_PER_MS;
	sc.spin_ns = (uint64_t)spin_us * SHADOW_NS_PER_US;
	pc.save_scheme = o.save_scheme;
	pc.key_prefix = o.key_prefix;
	pc.cpus = o.cpus != NULL ? &cpus : NULL;
	shadow_log_set_level(level);

	/* Signals: SIGTERM/SIGINT for the control thread's signalfd only; no SIGPIPE anywhere.
	 * Blocked before any thread starts, so every thread inherits the mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Pin this thread first: every thread started from here on inherits the set. */
	if (o.cpus != NULL && sched_setaffinity(0, sizeof(cpus), &cpus) < 0) {
		fprintf(stderr, "shadowd: --cpus '%s': %s\n", o.cpus, strerror(errno));
		return 1;
	}

	struct shadow_transform *transform = NULL;
	if (o.transform != NULL) {
		int rc = load_transform(o.transform, &transform);
		if (rc < 0) {
			fprintf(stderr, "shadowd: --transform %s: %s\n", o.transform,
				shadow_strerror(rc));
			return 1;
		}
		pc.transform = transform;
	}

	int n_gpus = 0;
	sc.cuda = shadow_gpu_probe(&n_gpus) == 0;
	pc.pinned = sc.cuda && !o.no_pinned;

	struct shadow__pipeline *pl = NULL;
	struct shadowd_server *srv = NULL;
	struct shadowd_metrics *metrics = NULL;
	const char *metrics_at = NULL;
	int rc = shadow__pipeline_create(&pc, &pl);
	if (rc < 0) {
		fprintf(stderr, "shadowd: pipeline on %s: %s\n", pc.store_url, shadow_strerror(rc));
		goto out;
	}
	rc = shadowd_server_create(&sc, pl, &srv);
	if (rc < 0) {
		fprintf(stderr, "shadowd: listen on %s: %s\n", sc.listen, shadow_strerror(rc));
		goto out;
	}
	if (o.metrics != NULL) {
		rc = shadowd_metrics_start(o.metrics, srv, &metrics, &metrics_at);
		if (rc < 0) {
			fprintf(stderr, "shadowd: --metrics %s: %s\n", o.metrics,
				shadow_strerror(rc));
			goto out;
		}
	}

	char store_text[512];
	redact_url(pc.store_url, store_text, sizeof(store_text));
	printf("shadowd: ready listen=%s store=%s pool=%lluMiB fetch=%u decode=%u copy=%u "
	       "cuda=%s", shadowd_server_endpoint(srv), store_text,
	       (unsigned long long)(pc.pool_nbytes >> 20), pc.fetch_threads, pc.decode_threads,
	       pc.copy_threads, sc.cuda ? "yes" : "no");
	if (metrics_at != NULL)
		printf(" metrics=%s", metrics_at);
	printf("\n");
	fflush(stdout);

	rc = shadowd_server_run(srv);
out:
	shadowd_metrics_stop(metrics);
	/* The pipeline first: it completes what is left into the server's ring. */
	shadow__pipeline_destroy(pl);
	shadowd_server_destroy(srv);
	shadow_transform_free(transform);
	return rc < 0 ? 1 : 0;
}
