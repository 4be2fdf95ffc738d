/*
 * kvdump.h - the codec benchmark's inputs: KV dumps in the KVD1 format (plain or xz), the query
 * tails beside them (QTL1), token ids (.ids.u32), and a deterministic synthetic KV.
 *
 * The formats are specified in ../shared/data/kv/README.md. Every file is untrusted: each
 * header field is range-checked and each size is computed without overflow and compared with
 * the file's real size before anything is allocated or read. A failure prints one line naming
 * the file and what is wrong, and returns a negative code.
 *
 * In memory a dump keeps the KVD1 order: for each layer, K then V, each
 * [n_tokens][n_kv_heads][head_dim] bf16 (host byte order; the host must be little-endian).
 */
#ifndef SHADOW_BENCH_KVDUMP_H
#define SHADOW_BENCH_KVDUMP_H

#include <glob.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <shadow/shadow.h>

/* Largest decompressed dump accepted (the shared ones are 12.6 MB). */
#define BENCH_KV_MAX_NBYTES (8ull << 30)

struct bench_kv {
	char *path;         /* as given, or "synthetic" */
	const char *name;   /* basename of path, for tables */
	bool synthetic;
	uint32_t n_layers, n_kv_heads, head_dim, n_tokens;
	uint64_t plane_elems; /* n_tokens * n_kv_heads * head_dim: one layer's K or V */
	uint16_t *kv;         /* [layer][K, V][token][head][dim] bf16 */

	/* query tail (fidelity); absent when has_queries is false */
	bool has_queries;
	bool queries_synthetic;
	char *q_path;
	uint32_t q_heads, n_q, q_start;
	uint16_t *q;          /* [layer][n_q][q_heads][head_dim] bf16 */

	/* token ids (chunk keys); NULL when absent */
	char *ids_path;
	uint32_t *ids;        /* n_tokens ids */
};

/* One layer's K (kind 0) or V (kind 1) plane. */
static inline uint16_t *bench_kv_plane(const struct bench_kv *kv, uint32_t layer,
				       unsigned kind)
{
	return kv->kv + ((size_t)2 * layer + kind) * kv->plane_elems;
}

/*
 * Load a KVD1 dump (plain, or xz-compressed: recognised by its magic, decoded in memory), and
 * beside it NAME.qtl (queries) and NAME.ids.u32 (token ids) if they exist, where NAME is the
 * path without ".xz" and ".kvd". A malformed dump or query file is an error; a token file of
 * the wrong size is ignored with a warning. Returns 0 or a negative code (message printed,
 * prefixed by prog).
 */
int bench_kv_load(const char *prog, const char *path, struct bench_kv *kv_ret);

/*
 * A deterministic synthetic KV shaped like minillama-h128 (6 layers, 2 KV heads, head_dim
 * 128) with n_tokens tokens: gaussian with a per-channel scale and offset, a few outlier key
 * channels, and synthetic queries (6 heads, the last min(256, n_tokens) positions).
 */
int bench_kv_synthetic(const char *prog, uint32_t n_tokens, struct bench_kv *kv_ret);

void bench_kv_free(struct bench_kv *kv);

/*
 * The default inputs of the benchmarks: every *.kvd.xz of the first of $SHADOW_SHARED_DIR/
 * data/kv, ../shared/data/kv and the source tree's ../shared/data/kv that has any, in g
 * (globfree() it when done). Returns whether any was found (g is then set; else left freed).
 */
bool bench_kv_find_default(glob_t *g);

/*
 * Copy the first n_tokens tokens of the dump into a paged region described by layout/geom
 * (block b holds tokens b * block_tokens ..; the region must hold them). Returns 0 or a
 * negative code (message printed, prefixed by prog).
 */
int bench_kv_to_region(const char *prog, const struct bench_kv *kv, uint32_t n_tokens,
		       const struct shadow_kv_geometry *geom, const struct shadow_kv_layout *layout,
		       uint8_t *region);

#endif /* SHADOW_BENCH_KVDUMP_H */
