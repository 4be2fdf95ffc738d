/*
 * demo.c - `shadowctl demo`, what `make demo` runs: the end-to-end path.
 *
 * Today that is
 *  1. prefix matching by chunk key: two requests share a real document's first tokens (the
 *     shared KV data's token ids when present, synthetic ids otherwise) and the demo shows
 *     which chunks the second request would find cached;
 *  2. the codec path a prefix hit takes: the real KV of the shared dumps (synthetic KV when
 *     they are absent) encoded chunk by chunk into containers, parsed and decoded frame by
 *     frame into a paged KV region, and checked against the original: bit-exact for the
 *     lossless scheme, attention-output error for the lossy ones. This is bench/codec with
 *     three schemes and one timed pass each.
 *  3. the data plane (demo_dataplane.c): shadowd started on a private socket with a store,
 *     and the client API saving the real KV, looking it up and fetching it into another
 *     paged region, verified bit-exact, with goodput, wire ratio and per-stage times.
 * It never prints canned output.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shadow/shadow.h>

#include "codec_bench.h"
#include "shadowctl.h"

#define DEMO_SYNTHETIC_TOKENS 2048u

/* Leading keys two chains share: the prefix hit, in chunks. */
static size_t shared_prefix_chunks(const struct shadow_chunk_key *a, size_t n_a,
				   const struct shadow_chunk_key *b, size_t n_b)
{
	size_t i = 0;
	while (i < n_a && i < n_b && memcmp(a[i].bytes, b[i].bytes, SHADOW_KEY_NBYTES) == 0)
		i++;
	return i;
}

static int demo_prefix_hit(const struct shadow_kv_geometry *g, const uint32_t *tokens,
			   size_t n_tokens)
{
	struct shadow_chunk_key ns;
	int err = shadow_key_namespace("minillama-h128", g, NULL, 0, &ns);
	if (err != 0)
		return err;

	/* Request B: the same document up to a point inside chunk 5, then a different tail. */
	size_t diverge = 5 * (size_t)g->chunk_tokens + g->chunk_tokens / 2;
	if (diverge >= n_tokens)
		diverge = n_tokens / 2;
	uint32_t *other = malloc(n_tokens * sizeof(*other));
	size_t max_keys = n_tokens / g->chunk_tokens;
	struct shadow_chunk_key *ka = calloc(max_keys + 1, sizeof(*ka));
	struct shadow_chunk_key *kb = calloc(max_keys + 1, sizeof(*kb));
	if (other == NULL || ka == NULL || kb == NULL) {
		err = -ENOMEM;
		goto out;
	}
	memcpy(other, tokens, n_tokens * sizeof(*other));
	for (size_t i = diverge; i < n_tokens; i++)
		other[i] = tokens[i] ^ 0x5a5u;

	size_t n_a = 0, n_b = 0;
	err = shadow_key_chain(&ns, tokens, n_tokens, g->chunk_tokens, ka, max_keys, &n_a);
	if (err == 0)
		err = shadow_key_chain(&ns, other, n_tokens, g->chunk_tokens, kb, max_keys, &n_b);
	if (err != 0)
		goto out;

	char text[SHADOW_STORE_KEY_MAX];
	printf("request A: %zu tokens -> %zu chunk keys\n", n_tokens, n_a);
	for (size_t i = 0; i < n_a; i++) {
		if (shadow_key_format(&ka[i], NULL, text, sizeof(text)) < 0)
			break;
		printf("  chunk %zu  tokens %5zu..%-5zu  %s\n", i, i * g->chunk_tokens,
		       (i + 1) * g->chunk_tokens - 1, text);
	}
	size_t hit = shared_prefix_chunks(ka, n_a, kb, n_b);
	uint64_t hit_bytes = (uint64_t)hit * g->chunk_tokens * shadow_geometry_token_nbytes(g);
	printf("request B: same first %zu tokens, then different -> prefix hit of %zu chunks "
	       "(%zu tokens, %.1f MiB of bf16 KV to fetch instead of recompute)\n",
	       diverge, hit, hit * g->chunk_tokens, hit_bytes / (1024.0 * 1024.0));
out:
	free(kb);
	free(ka);
	free(other);
	return err;
}

int shadowctl_demo(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	struct shadow_kv_geometry g;
	int err = shadow_geometry_preset("minillama-h128", &g);
	if (err != 0)
		return 1;
	printf("ShadowServe %s demo: geometry minillama-h128 (%u layers, %u KV heads, head_dim %u, "
	       "%u-token chunks)\n",
	       shadow_version(), g.n_layers, g.n_kv_heads, g.head_dim, g.chunk_tokens);

	uint32_t *tokens = NULL;
	size_t n_tokens = 0;
	const char *dir = shadowctl_kv_data_dir();
	char path[4200];
	if (dir != NULL) {
		snprintf(path, sizeof(path), "%s/shared_linuxdoc_cgroup-v2.ids.u32", dir);
		err = shadowctl_read_tokens(path, &tokens, &n_tokens);
		if (err == 0)
			printf("tokens: %s (%zu real token ids)\n", path, n_tokens);
	}
	if (tokens == NULL) {
		n_tokens = DEMO_SYNTHETIC_TOKENS;
		tokens = malloc(n_tokens * sizeof(*tokens));
		if (tokens == NULL)
			return 1;
		for (size_t i = 0; i < n_tokens; i++)
			tokens[i] = (uint32_t)((i * 2654435761u) % 8192u);
		printf("tokens: synthetic (%zu ids; shared KV data not found)\n", n_tokens);
	}
	err = demo_prefix_hit(&g, tokens, n_tokens);
	free(tokens);
	if (err != 0) {
		fprintf(stderr, "shadowctl: demo: %s\n", shadow_strerror(err));
		return 1;
	}

	/* Lossless; ~3% and ~10% attention error (docs/results.md). */
	printf("\ncodec: encode each 256-token chunk, decode each frame into a paged KV region, "
	       "verify\n");
	fflush(stdout);
	char *bench_argv[] = {
		"shadowctl demo", "--schemes", "bf16planes+zstd1,pca-s0.09+zstd1,pca-s0.3+zstd1",
		"--min-time", "0", "--no-reference", NULL,
	};
	err = shadow_bench_codec_main(6, bench_argv);
	if (err != 0)
		return err;
	fflush(stdout);
	return shadowctl_demo_dataplane();
}
