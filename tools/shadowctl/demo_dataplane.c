/*
 * demo_dataplane.c - the data-plane part of `shadowctl demo`: the real thing, end to end.
 *
 * It starts shadowd (beside this program, or $SHADOW_SHADOWD) on a private unix socket with an
 * embedded mem:// store, or a local redis-server when one is installed, and then acts as an
 * engine would, through the client API only (libshadow_client):
 *   1. registers two host KV regions (sealed memfds) of one geometry in different paged
 *      layouts (NHD and HND);
 *   2. fills region A with the real KV of a shared dump (synthetic KV when absent) and SAVEs
 *      its chunks, named by the dump's token ids;
 *   3. LOOKs UP how many chunks of the prompt the store holds;
 *   4. FETCHes them into region B at other, shuffled block ids, timed;
 *   5. checks every head vector of B against A (the save scheme is lossless: bit-exact), and
 *      prints goodput, the compression ratio on the wire and shadowd's per-stage times (its
 *      /metrics).
 * Nothing is canned: every figure is measured in this run.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <shadow/client.h>
#include <shadow/shadow.h>

#include "kvdump.h"
#include "shadowctl.h"
#include "support/redis_server.h"

#define DEMO_TOKENS_MAX 8192u  /* the prompt: at most this many tokens of the dump */
#define DEMO_POOL_MIB 192u
#define DEMO_RX_MIB 8u

struct demo_region {
	struct shadow_kv_layout layout;
	int fd;
	uint8_t *map;
	uint64_t nbytes;
	uint32_t id;
};

struct demo_daemon {
	pid_t pid;
	FILE *out;              /* its stdout: the ready line */
	char dir[64];           /* private directory of the socket */
	char endpoint[128];
	char metrics[128];      /* host:port of /metrics */
};

/* shadowd: $SHADOW_SHADOWD, else beside this program in the build tree or the install. */
static int find_shadowd(char *path, size_t n)
{
	const char *env = getenv("SHADOW_SHADOWD");
	char self[PATH_MAX];
	ssize_t len;

	if (env != NULL && env[0] != '\0') {
		snprintf(path, n, "%s", env);
		return access(path, X_OK) == 0 ? 0 : -ENOENT;
	}
	len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len <= 0)
		return -ENOENT;
	self[len] = '\0';
	char *slash = strrchr(self, '/');
	if (slash == NULL)
		return -ENOENT;
	*slash = '\0';
	static const char *const rel[] = { "../../daemons/shadowd/shadowd", "shadowd",
					   "../sbin/shadowd" };
	for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
		snprintf(path, n, "%s/%s", self, rel[i]);
		if (access(path, X_OK) == 0)
			return 0;
	}
	return -ENOENT;
}

static int daemon_start(struct demo_daemon *d, const char *store_url)
{
	char shadowd[PATH_MAX + 64];
	char line[1024];
	int pipefd[2];

	if (find_shadowd(shadowd, sizeof(shadowd)) < 0) {
		fprintf(stderr, "shadowctl: demo: shadowd not found (build it, or set SHADOW_SHADOWD)\n");
		return -ENOENT;
	}
	snprintf(d->dir, sizeof(d->dir), "/tmp/shadow-demo-XXXXXX");
	if (mkdtemp(d->dir) == NULL)
		return -errno;
	snprintf(d->endpoint, sizeof(d->endpoint), "unix:%s/shadowd.sock", d->dir);
	if (pipe(pipefd) < 0)
		return -errno;
	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		char pool[16], rx[16];
		snprintf(pool, sizeof(pool), "%u", DEMO_POOL_MIB);
		snprintf(rx, sizeof(rx), "%uMiB", DEMO_RX_MIB);
		dup2(pipefd[1], STDOUT_FILENO);
		close(pipefd[0]);
		close(pipefd[1]);
		execl(shadowd, "shadowd", "--store", store_url, "--listen", d->endpoint, "--pool",
		      pool, "--rx-size", rx, "--fetch-threads", "1", "--decode-threads", "2",
		      "--save-scheme", "bf16planes+zstd1", "--metrics", "127.0.0.1:0",
		      "--log-level", "warn", (char *)NULL);
		_exit(127);
	}
	close(pipefd[1]);
	d->out = fdopen(pipefd[0], "r");
	if (d->out == NULL)
		return -errno;
	/* The one status line says it is ready (and where its metrics are). */
	if (fgets(line, sizeof(line), d->out) == NULL || strncmp(line, "shadowd: ready", 14) != 0) {
		fprintf(stderr, "shadowctl: demo: shadowd did not start\n");
		return -ECHILD;
	}
	line[strcspn(line, "\n")] = '\0';
	printf("  %s\n", line);
	const char *m = strstr(line, "metrics=");
	if (m != NULL)
		snprintf(d->metrics, sizeof(d->metrics), "%s", m + 8);
	return 0;
}

/* SIGTERM: shadowd drains and exits 0. */
static int daemon_stop(struct demo_daemon *d)
{
	int status = 0;

	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		waitpid(d->pid, &status, 0);
	}
	if (d->out != NULL)
		fclose(d->out);
	if (d->dir[0] != '\0') {
		char sock[128];
		snprintf(sock, sizeof(sock), "%s/shadowd.sock", d->dir);
		unlink(sock);
		rmdir(d->dir);
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* One value of shadowd's /metrics (an exact series name with labels), or -1. */
static double metric(const struct demo_daemon *d, const char *series)
{
	char host[128], *colon, buf[16384];
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
	double v = -1.0;
	size_t got = 0;
	ssize_t n;
	int fd;

	snprintf(host, sizeof(host), "%s", d->metrics);
	colon = strrchr(host, ':');
	if (colon == NULL)
		return -1.0;
	*colon = '\0';
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		return -1.0;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
		static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
		if (write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1)) {
			while (got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
				got += (size_t)n;
		}
	}
	if (fd >= 0)
		close(fd);
	freeaddrinfo(ai);
	buf[got] = '\0';
	for (char *l = strtok(buf, "\n"); l != NULL; l = strtok(NULL, "\n")) {
		size_t k = strlen(series);
		if (strncmp(l, series, k) == 0 && l[k] == ' ')
			v = strtod(l + k + 1, NULL);
	}
	return v;
}

static int region_make(struct demo_region *r, const struct shadow_kv_geometry *g,
		       enum shadow_layout_kind kind, uint32_t n_blocks)
{
	r->nbytes = 2 * (uint64_t)g->n_layers * n_blocks * g->block_tokens * g->n_kv_heads *
		    g->head_dim * shadow_dtype_nbytes(g->dtype);
	int rc = shadow_layout_init(&r->layout, g, kind, n_blocks, 0, r->nbytes);
	if (rc < 0)
		return rc;
	r->fd = memfd_create("shadow-demo-kv", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (r->fd < 0 || ftruncate(r->fd, (off_t)r->nbytes) < 0)
		return -errno;
	r->map = mmap(NULL, r->nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	return r->map == MAP_FAILED ? -errno : 0;
}

static void region_free(struct demo_region *r)
{
	if (r->map != NULL && r->map != MAP_FAILED)
		munmap(r->map, r->nbytes);
	if (r->fd > 0)
		close(r->fd);
}

/* Submit one request and wait for its completion. */
static int request(struct shadow_client *c, int op, const struct shadow_client_request *req,
		   struct shadow_client_completion *done)
{
	uint64_t ticket;
	int rc = op == SHADOW_CLIENT_SAVE  ? shadow_client_save(c, req, &ticket) :
		 op == SHADOW_CLIENT_FETCH ? shadow_client_fetch(c, req, &ticket) :
					     shadow_client_lookup(c, req, &ticket);
	if (rc < 0)
		return rc;
	for (;;) {
		rc = shadow_client_poll(c, done, 1);
		if (rc == 1)
			return done->status;
		if (rc < 0)
			return rc;
		rc = shadow_client_wait(c, 30000);
		if (rc == 0)
			return -ETIMEDOUT;
		if (rc < 0)
			return rc;
	}
}

/* Every head vector of the n_chunks chunks: A's blocks ida against B's blocks idb. */
static uint64_t compare(const struct shadow_kv_geometry *g, const struct demo_region *a,
			const uint32_t *ida, const struct demo_region *b, const uint32_t *idb,
			uint32_t n_blocks)
{
	uint64_t vec = g->head_dim * shadow_dtype_nbytes(g->dtype), bad = 0;

	for (uint32_t l = 0; l < g->n_layers; l++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t i = 0; i < n_blocks; i++)
				for (uint32_t t = 0; t < g->block_tokens; t++)
					for (uint32_t h = 0; h < g->n_kv_heads; h++) {
						int64_t oa = shadow_layout_offset(&a->layout, g, l, kv, ida[i], t, h);
						int64_t ob = shadow_layout_offset(&b->layout, g, l, kv, idb[i], t, h);
						bad += oa < 0 || ob < 0 ||
						       memcmp(a->map + oa, b->map + ob, vec) != 0;
					}
	return bad;
}

int shadowctl_demo_dataplane(void)
{
	struct shadow_kv_geometry g;
	struct bench_kv kv = { 0 };
	struct demo_daemon d = { 0 };
	struct demo_region ra = { .fd = -1 }, rb = { .fd = -1 };
	struct shadow_client *c = NULL;
	struct shadow_test_redis *redis = NULL;
	uint32_t *ida = NULL, *idb = NULL, *synth_ids = NULL;
	char store_url[256], path[4200];
	int rc, exit_code = 1;

	rc = shadow_geometry_preset("minillama-h128", &g);
	if (rc < 0)
		return 1;
	/* The store: a local redis-server when installed (started here), else embedded. */
	if (shadow_test_redis_find(path, sizeof(path)) == 0) {
		/* Large values: keep jemalloc from purging (docs/stores.md). */
		struct shadow_test_redis_options ro = { .malloc_conf = SHADOW_TEST_REDIS_MALLOC_CONF };
		rc = shadow_test_redis_start(&ro, &redis);
	}
	if (redis != NULL)
		snprintf(store_url, sizeof(store_url), "%s", shadow_test_redis_url(redis));
	else
		snprintf(store_url, sizeof(store_url), "mem://demo?capacity=1GiB");

	/* The prompt's KV: a shared dump, or synthetic KV. */
	const char *dir = shadowctl_kv_data_dir();
	rc = -ENOENT;
	if (dir != NULL) {
		snprintf(path, sizeof(path), "%s/shared_linuxdoc_cgroup-v2.kvd.xz", dir);
		rc = bench_kv_load("shadowctl demo", path, &kv);
	}
	if (rc < 0)
		rc = bench_kv_synthetic("shadowctl demo", 4096, &kv);
	if (rc < 0)
		goto out;
	uint32_t n_tokens = kv.n_tokens < DEMO_TOKENS_MAX ? kv.n_tokens : DEMO_TOKENS_MAX;
	uint32_t bpc = g.chunk_tokens / g.block_tokens;
	uint32_t n_chunks = n_tokens / g.chunk_tokens;
	uint32_t n_blocks = n_chunks * bpc;
	n_tokens = n_chunks * g.chunk_tokens;
	uint32_t *tokens = kv.ids;
	if (tokens == NULL) {
		synth_ids = malloc(n_tokens * sizeof(*synth_ids));
		if (synth_ids == NULL)
			goto out;
		for (uint32_t i = 0; i < n_tokens; i++)
			synth_ids[i] = (i * 2654435761u) % 32000u;
		tokens = synth_ids;
	}
	printf("\ndata plane: shadowd + client API, %s store\n",
	       redis != NULL ? "a local redis-server" : "the embedded mem://");
	printf("  prompt: %u tokens = %u chunks of %u (%s)\n", n_tokens, n_chunks, g.chunk_tokens,
	       kv.synthetic ? "synthetic KV" : kv.name);

	rc = daemon_start(&d, store_url);
	if (rc < 0) {
		rc = 0; /* said already */
		goto out;
	}
	rc = shadow_client_connect(d.endpoint, NULL, &c);
	if (rc < 0) {
		fprintf(stderr, "shadowctl: demo: connect: %s\n", shadow_client_strerror(rc));
		goto out;
	}
	if ((rc = region_make(&ra, &g, SHADOW_LAYOUT_NHD, n_blocks)) < 0 ||
	    (rc = region_make(&rb, &g, SHADOW_LAYOUT_HND, n_blocks)) < 0)
		goto out;
	rc = bench_kv_to_region("shadowctl demo", &kv, n_tokens, &g, &ra.layout, ra.map);
	if (rc < 0)
		goto out;
	struct shadow_client_memory mem = { .size = sizeof(mem), .kind = SHADOW_CLIENT_MEM_HOST };
	mem.fd = ra.fd;
	rc = shadow_client_register_kv(c, &g, &ra.layout, &mem, &ra.id);
	mem.fd = rb.fd;
	if (rc == 0)
		rc = shadow_client_register_kv(c, &g, &rb.layout, &mem, &rb.id);
	if (rc < 0) {
		fprintf(stderr, "shadowctl: demo: register: %s\n", shadow_client_strerror(rc));
		goto out;
	}

	/* Block tables: A's in order, B's shuffled (a paged cache's blocks are anywhere). */
	ida = malloc(n_blocks * sizeof(*ida));
	idb = malloc(n_blocks * sizeof(*idb));
	if (ida == NULL || idb == NULL)
		goto out;
	for (uint32_t i = 0; i < n_blocks; i++) {
		ida[i] = i;
		idb[i] = (i * 7919u + 13u) % n_blocks; /* a permutation: 7919 is prime */
	}
	struct shadow_chunk_key ns;
	rc = shadow_client_namespace(c, ra.id, "minillama-h128", NULL, 0, &ns);
	if (rc < 0)
		goto out;

	struct shadow_client_request req = { .size = sizeof(req), .region = ra.id,
					     .n_chunks = n_chunks, .tokens = tokens,
					     .n_tokens = n_tokens, .ns = &ns,
					     .block_ids = ida, .n_block_ids = n_blocks };
	struct shadow_client_completion done;
	uint64_t t0 = shadow_client_now_ns();
	rc = request(c, SHADOW_CLIENT_SAVE, &req, &done);
	double save_s = (double)(shadow_client_now_ns() - t0) / 1e9;
	if (rc < 0 || done.n_ok != n_chunks) {
		fprintf(stderr, "shadowctl: demo: save: %s, %u of %u chunks\n",
			shadow_client_strerror(rc), done.n_ok, n_chunks);
		goto out;
	}
	uint64_t raw = (uint64_t)n_tokens * shadow_geometry_token_nbytes(&g);
	printf("  save:   %u chunks, %.1f MiB of KV -> %.1f MiB stored (bf16planes+zstd1), %.3f s\n",
	       n_chunks, raw / 1048576.0, done.bytes_out / 1048576.0, save_s);

	req.region = rb.id;
	rc = request(c, SHADOW_CLIENT_LOOKUP, &req, &done);
	if (rc < 0) {
		fprintf(stderr, "shadowctl: demo: lookup: %s\n", shadow_client_strerror(rc));
		goto out;
	}
	printf("  lookup: %u of %u chunks cached (%u tokens)\n", done.n_found, n_chunks,
	       done.n_tokens);

	req.block_ids = idb;
	t0 = shadow_client_now_ns();
	rc = request(c, SHADOW_CLIENT_FETCH, &req, &done);
	double fetch_s = (double)(shadow_client_now_ns() - t0) / 1e9;
	if (rc < 0 || done.n_ok != n_chunks) {
		fprintf(stderr, "shadowctl: demo: fetch: %s, %u of %u chunks\n",
			shadow_client_strerror(rc), done.n_ok, n_chunks);
		goto out;
	}
	uint64_t bad = compare(&g, &ra, ida, &rb, idb, n_blocks);
	printf("  fetch:  %u chunks into other blocks of an HND cache, %.3f s: %.2f GB/s of KV "
	       "delivered, %.2fx fewer bytes on the wire (%.1f MiB)\n",
	       n_chunks, fetch_s, done.bytes_out / fetch_s / 1e9,
	       (double)done.bytes_out / (double)done.bytes_in, done.bytes_in / 1048576.0);
	printf("  verify: %s (%llu head vectors differ)\n", bad == 0 ? "bit-exact" : "MISMATCH",
	       (unsigned long long)bad);
	if (d.metrics[0] != '\0') {
		/* shadowd's per-stage counters: fetch = GET time per chunk, decode and save = time
		 * spent decoding / encoding, copy = submit-to-completion per chunk; each summed. */
		printf("  shadowd stage seconds, summed over chunks: fetch %.3f, decode %.3f, "
		       "copy %.3f, save %.3f\n",
		       metric(&d, "shadowd_pipeline_seconds_total{stage=\"fetch\"}"),
		       metric(&d, "shadowd_pipeline_seconds_total{stage=\"decode\"}"),
		       metric(&d, "shadowd_pipeline_seconds_total{stage=\"copy\"}"),
		       metric(&d, "shadowd_pipeline_seconds_total{stage=\"save\"}"));
	}
	exit_code = bad == 0 ? 0 : 1;
out:
	if (rc < 0 && exit_code != 0)
		fprintf(stderr, "shadowctl: demo: %s\n", shadow_client_strerror(rc));
	fflush(stdout);
	shadow_client_close(c);
	if (d.pid != 0) {
		int st = daemon_stop(&d);
		if (st != 0) {
			fprintf(stderr, "shadowctl: demo: shadowd exited with %d\n", st);
			exit_code = 1;
		} else {
			printf("  shadowd: SIGTERM, drained, exit 0\n");
		}
	}
	region_free(&ra);
	region_free(&rb);
	free(ida);
	free(idb);
	free(synth_ids);
	bench_kv_free(&kv);
	shadow_test_redis_stop(redis);
	return exit_code;
}
