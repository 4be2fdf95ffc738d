/*
 * codec_bench.c - the codec benchmark: ratio, single-core encode/decode throughput and
 * fidelity of each scheme on real (or synthetic) KV caches. Issue 3, item 7.
 *
 * DESIGN
 * One thread, pinned to the CPU it starts on (figures are per core). For each input file the
 * dump's KV is copied, through shadow_layout_offset(), into a host region in the NHD paged
 * layout (16-token blocks); chunk i owns blocks [i * bpc, (i + 1) * bpc) and is keyed by
 * shadow_key_chain() over the dump's token ids (NAME.ids.u32) or a synthetic sequence.
 *
 * For each scheme, over all files:
 *   encode   every chunk with shadow_chunk_encode(); encode_gbps = bf16 bytes / the summed
 *            time of those calls (best pass of those run within --min-time);
 *   decode   every chunk: shadow_chunk_parse() with the expected key and geometry, then every
 *            frame: shadow_chunk_decode_frame() into a staging image, scattered into an
 *            output region by shadow_layout_plan_frame() runs (one memcpy per run). Only the
 *            decode_frame calls are timed; the whole pass repeats until --min-time has
 *            elapsed and the best pass counts;
 *   memcpy   the same bytes, frame by frame, from a source as large as the output (the
 *            original region, so it streams from memory as the containers do) into the
 *            staging buffer, as decode_frame writes it: the in-run reference;
 *   fidelity the output region is read back into dump order and compared with the dump:
 *            relative RMSE and max |error| of K and V, and the attention-output error of the
 *            query tail (fidelity.c). Lossless schemes must round-trip bit for bit.
 * ratio = bf16 bytes / container bytes (metadata included). The output region is poisoned
 * (0xff: bf16 NaN) before each scheme so that a frame the decoder never wrote shows up.
 *
 * Memory: per file the dump, two regions of its size, the containers of one scheme (at most
 * shadow_chunk_encode_bound() per chunk) and the attention scratch (2 x n_kv_heads x n_ctx x
 * head_dim doubles).
 */
#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <shadow/shadow.h>

#include "bench_util.h"
#include "codec_bench.h"
#include "core/cpu.h"
#include "fidelity.h"
#include "kvdump.h"
#include "quant/quant.h"

/*
 * Schemes run by default, in table order. Edit freely; names are parsed by
 * shadow_codec_options_parse() (docs/format.md, "Scheme names"):
 * <quant>[-g<N>][-c<N>][-k<T>x<C>][-v<T>x<C>][-s<X>][-L<layer>=<k>/<v>]...
 *   + none | deflate[<level>] | zstd<level>.
 */
static const char *const default_schemes[] = {
	/* lossless */
	"bf16+none", "bf16+zstd1", "bf16planes+zstd1", "bf16planes+zstd3", "bf16planes+deflate",
	/* int8: keys per channel over the chunk, values per token */
	"int8+none", "int8+zstd1", "int8+zstd3", "int8+deflate",
	/* b-bit symbols, min/max scaling (bit-packed when the codec is none) */
	"bits7+zstd1", "bits7+deflate", "bits6+zstd1", "bits6+deflate",
	"bits5+zstd1", "bits5+deflate", "bits4+zstd1", "bits4+deflate",
	"bits3+zstd1", "bits3+deflate", "bits2+zstd1", "bits2+deflate",
	"bits4+none",
	/* variants: smaller groups, std-rule steps, layer-group precision (to be tuned) */
	"bits4-g64+zstd1", "bits4-c32+zstd1", "bits4-g32-c32+zstd1",
	"bits2-s1+zstd1", "bits3-s0.7+zstd1", "bits4-s0.5+zstd1", "bits5-s0.25+zstd1",
	"bits3-L0=5/5-L1=3/3+zstd1",
	/* ECSQ: fixed step per group, no clipping (keys per channel, values per head) */
	"ecsq-s0.028+zstd1", "ecsq-s0.084+zstd1", "ecsq-s0.28+zstd1", "ecsq-s0.084+deflate",
	/* PCA-ECSQ: the transform calibrated on another file (keys un-rotated), one step per
	 * head and frame; steps chosen for 1%, 3% and 10% attention error on the shared dumps */
	"pca-s0.03+zstd1", "pca-s0.09+zstd1", "pca-s0.3+zstd1", "pca-s0.03+deflate",
	"pca-s0.09+deflate", "pca-s0.3+deflate",
};

/* --quick: one of each kind, one pass each. */
static const char *const quick_schemes[] = {
	"bf16+none", "bf16planes+zstd1", "int8+none", "bits4+deflate",
};

/* Bit widths of the plain min/max baseline (README table). */
static const unsigned reference_bits[] = { 8, 6, 5, 4, 3 };

#define BLOCK_TOKENS 16u
#define DEFAULT_MIN_TIME 0.3
/* The shared dumps' model, minillama-h128, uses RoPE base 500000 (../shared/data/kv/README). */
#define DEFAULT_ROPE_THETA 500000.0
#define MAX_PASSES 1000
#define KEY_MODEL_ID "bench-codec"

struct options {
	const char *prog;
	char **paths;
	int n_paths;
	char **schemes; /* malloc()ed copies */
	size_t n_schemes;
	uint32_t chunk_tokens;
	const char *csv_path, *csv_layers_path;
	bool quick, synthetic, reference, pin, per_file;
	double min_time;
	double rope_theta; /* PCA keys: RoPE base of the dumps' model; 0 = keys not un-rotated */
};

/* One input file and everything the runs need for it. */
struct file_state {
	struct bench_kv kv;
	struct bench_attn attn;
	bool has_attn;
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout layout;
	uint32_t n_chunks, bpc;
	uint64_t frame_nbytes, region_nbytes;
	uint8_t *region, *out, *stage;
	uint16_t *canon; /* one layer's decoded K then V, dump order */
	uint32_t *block_ids;
	struct shadow_chunk_key *keys;
	struct shadow_codec *codec;
	struct shadow_transform *transform; /* calibrated on this file; PCA codes other files */
	struct shadow_copy_run *runs;
	size_t max_runs;
	/* the current scheme */
	uint8_t *cont;
	size_t cont_cap, cont_alloc;
	size_t *cont_nbytes;
	uint64_t *layer_nbytes;
};

/* Results of one scheme on one file, and pooled. */
struct result {
	uint64_t bf16_nbytes, enc_nbytes;
	double enc_s, dec_s, mcpy_s; /* best pass */
	struct bench_err err;
};

static void *alloc_pages(uint64_t nbytes)
{
	size_t n = (size_t)((nbytes + 4095u) & ~(uint64_t)4095u);
	void *p = aligned_alloc(4096, n ? n : 4096);

	if (p != NULL)
		memset(p, 0, n ? n : 4096); /* touch every page outside the timed loops */
	return p;
}

/* ------------------------------------------------------------------------------------------ */
/* Command line                                                                               */
/* ------------------------------------------------------------------------------------------ */

static void usage(FILE *out, const char *prog)
{
	fprintf(out,
		"usage: %s [options] [DUMP.kvd[.xz] ...]\n"
		"Encode/decode KV dumps (KVD1, plain or xz) with each scheme; report ratio,\n"
		"single-core GB/s (bf16 bytes) against memcpy, K/V errors and, when NAME.qtl sits\n"
		"beside a dump, the attention-output error. Without dumps: every *.kvd.xz of\n"
		"$SHADOW_SHARED_DIR/data/kv or ../shared/data/kv, else --synthetic.\n"
		"  --schemes LIST     comma-separated scheme names (default: the built-in list;\n"
		"                     see --list-schemes); a piece starting with a digit continues\n"
		"                     the previous name\n"
		"  --list-schemes     print the default schemes and exit\n"
		"  --chunk N          tokens per chunk (default %u, a multiple of %u)\n"
		"  --csv PATH         one row per scheme over all files (attn_rel_err is nan\n"
		"                     when no file has queries)\n"
		"  --csv-layers PATH  one row per scheme, file and layer\n"
		"  --synthetic        add a synthetic KV (minillama-h128-like, 2048 tokens,\n"
		"                     synthetic queries)\n"
		"  --quick            few schemes, one pass each, no baseline check\n"
		"  --min-time SEC     time each measurement at least this long (default %.1f)\n"
		"  --rope-theta X     RoPE base of the dumps' model, for PCA keys (default %.0f,\n"
		"                     minillama-h128; 0: code keys as they are)\n"
		"  --per-file         also print each file's figures under each scheme\n"
		"  --no-reference     skip the plain min/max baseline (README table)\n"
		"  --no-pin           do not pin to the current CPU\n"
		"  -h, --help\n",
		prog, SHADOW_DEFAULT_CHUNK_TOKENS, BLOCK_TOKENS, DEFAULT_MIN_TIME, DEFAULT_ROPE_THETA);
}


static int add_scheme(struct options *o, const char *name, size_t len)
{
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
}

/* Returns 0, 1 (runtime error), 2 (usage error) or -1 (done: --help, --list-schemes). */
static int parse_args(int argc, char **argv, struct options *o)
{
	const char *schemes = NULL;

	memset(o, 0, sizeof(*o));
	o->prog = argc > 0 && argv[0] != NULL ? argv[0] : "bench_codec";
	o->chunk_tokens = SHADOW_DEFAULT_CHUNK_TOKENS;
	o->reference = true;
	o->pin = true;
	o->min_time = DEFAULT_MIN_TIME;
	o->rope_theta = DEFAULT_ROPE_THETA;
	o->paths = calloc(argc > 0 ? (size_t)argc : 1, sizeof(char *));
	if (o->paths == NULL)
		return 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v;
		bool missing = false;
		char *end;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, o->prog);
			return -1;
		} else if (strcmp(a, "--list-schemes") == 0) {
			for (size_t k = 0; k < SHADOW_ARRAY_SIZE(default_schemes); k++)
				printf("%s\n", default_schemes[k]);
			return -1;
		} else if (strcmp(a, "--quick") == 0) {
			o->quick = true;
		} else if (strcmp(a, "--synthetic") == 0) {
			o->synthetic = true;
		} else if (strcmp(a, "--per-file") == 0) {
			o->per_file = true;
		} else if (strcmp(a, "--no-reference") == 0) {
			o->reference = false;
		} else if (strcmp(a, "--no-pin") == 0) {
			o->pin = false;
		} else if ((v = bench_opt_value(argc, argv, &i, "--schemes", &missing)) != NULL) {
			schemes = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--csv", &missing)) != NULL) {
			o->csv_path = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--csv-layers", &missing)) != NULL) {
			o->csv_layers_path = v;
		} else if ((v = bench_opt_value(argc, argv, &i, "--chunk", &missing)) != NULL) {
			unsigned long n = strtoul(v, &end, 10);
			if (*v == '\0' || *end != '\0' || n == 0 || n % BLOCK_TOKENS != 0 ||
			    n > SHADOW_MAX_CHUNK_TOKENS) {
				fprintf(stderr, "%s: --chunk %s: want a multiple of %u up to %u\n",
					o->prog, v, BLOCK_TOKENS, SHADOW_MAX_CHUNK_TOKENS);
				return 2;
			}
			o->chunk_tokens = (uint32_t)n;
		} else if ((v = bench_opt_value(argc, argv, &i, "--rope-theta", &missing)) != NULL) {
			double t = strtod(v, &end);
			if (*v == '\0' || *end != '\0' || !(t == 0.0 || (t > 1.0 && t < 1e12))) {
				fprintf(stderr, "%s: --rope-theta %s: want 0 or a base > 1\n",
					o->prog, v);
				return 2;
			}
			o->rope_theta = t;
		} else if ((v = bench_opt_value(argc, argv, &i, "--min-time", &missing)) != NULL) {
			double t = strtod(v, &end);
			if (*v == '\0' || *end != '\0' || !(t >= 0.0 && t <= 600.0)) {
				fprintf(stderr, "%s: --min-time %s: want 0 .. 600 seconds\n",
					o->prog, v);
				return 2;
			}
			o->min_time = t;
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
	if (schemes != NULL) {
		if (bench_split_schemes(schemes, add_scheme_cb, o) < 0)
			return 1;
	} else {
		const char *const *list = o->quick ? quick_schemes : default_schemes;
		size_t n = o->quick ? SHADOW_ARRAY_SIZE(quick_schemes)
				    : SHADOW_ARRAY_SIZE(default_schemes);
		for (size_t k = 0; k < n; k++)
			if (add_scheme(o, list[k], strlen(list[k])) < 0)
				return 1;
	}
	if (o->n_schemes == 0) {
		fprintf(stderr, "%s: --schemes: no scheme given\n", o->prog);
		return 2;
	}
	for (size_t k = 0; k < o->n_schemes; k++) {
		struct shadow_codec_options opts;
		int rc = shadow_codec_options_parse(o->schemes[k], &opts);
		if (rc < 0) {
			fprintf(stderr, "%s: scheme '%s': %s\n", o->prog, o->schemes[k],
				shadow_strerror(rc));
			return 2;
		}
	}
	if (o->quick)
		o->reference = false;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Per-file setup                                                                             */
/* ------------------------------------------------------------------------------------------ */

static void file_free(struct file_state *f)
{
	bench_attn_free(&f->attn);
	bench_kv_free(&f->kv);
	free(f->region);
	free(f->out);
	free(f->stage);
	free(f->canon);
	free(f->block_ids);
	free(f->keys);
	shadow_codec_free(f->codec);
	shadow_transform_free(f->transform);
	free(f->runs);
	free(f->cont);
	free(f->cont_nbytes);
	free(f->layer_nbytes);
	memset(f, 0, sizeof(*f));
}

/* Build the paged region, block table, keys and codec of a loaded dump. */
static int file_setup(const struct options *o, struct file_state *f)
{
	struct bench_kv *kv = &f->kv;
	const uint32_t chunk = o->chunk_tokens;
	struct shadow_chunk_key ns;
	uint32_t *tokens = NULL;
	size_t n_keys;
	int rc;

	f->n_chunks = kv->n_tokens / chunk;
	if (f->n_chunks == 0) {
		fprintf(stderr, "%s: %s: %u tokens, fewer than one %u-token chunk\n", o->prog,
			kv->path, kv->n_tokens, chunk);
		return SHADOW_EGEOMETRY;
	}
	if (kv->n_tokens % chunk != 0) {
		fprintf(stderr, "%s: warning: %s: using the first %u of %u tokens (whole chunks)\n",
			o->prog, kv->path, f->n_chunks * chunk, kv->n_tokens);
		kv->n_tokens = f->n_chunks * chunk;
		if (kv->has_queries && kv->q_start + kv->n_q > kv->n_tokens) {
			fprintf(stderr, "%s: warning: %s: queries reach past the chunks used: no "
					"attention error\n", o->prog, kv->path);
			kv->has_queries = false;
		}
	}
	f->geom = (struct shadow_kv_geometry){
		.n_layers = kv->n_layers,
		.n_kv_heads = kv->n_kv_heads,
		.head_dim = kv->head_dim,
		.dtype = SHADOW_DTYPE_BF16,
		.block_tokens = BLOCK_TOKENS,
		.chunk_tokens = chunk,
	};
	rc = shadow_geometry_validate(&f->geom);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: geometry not usable: %s\n", o->prog, kv->path,
			shadow_strerror(rc));
		return rc;
	}
	f->bpc = chunk / BLOCK_TOKENS;
	f->frame_nbytes = shadow_geometry_frame_nbytes(&f->geom);
	f->region_nbytes = 2ull * kv->n_layers * f->n_chunks * f->frame_nbytes;
	rc = shadow_layout_init(&f->layout, &f->geom, SHADOW_LAYOUT_NHD, f->n_chunks * f->bpc, 0,
				f->region_nbytes);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: shadow_layout_init: %s\n", o->prog, kv->path,
			shadow_strerror(rc));
		return rc;
	}
	f->region = alloc_pages(f->region_nbytes);
	f->out = alloc_pages(f->region_nbytes);
	f->stage = alloc_pages(f->frame_nbytes);
	f->canon = malloc(2 * kv->plane_elems * sizeof(uint16_t));
	f->block_ids = malloc((size_t)f->n_chunks * f->bpc * sizeof(uint32_t));
	f->keys = malloc(f->n_chunks * sizeof(*f->keys));
	f->max_runs = (size_t)f->bpc * BLOCK_TOKENS * kv->n_kv_heads;
	f->runs = malloc(f->max_runs * sizeof(*f->runs));
	f->cont_nbytes = malloc(f->n_chunks * sizeof(size_t));
	f->layer_nbytes = malloc(kv->n_layers * sizeof(uint64_t));
	tokens = malloc((size_t)kv->n_tokens * sizeof(uint32_t));
	if (f->region == NULL || f->out == NULL || f->stage == NULL || f->canon == NULL ||
	    f->block_ids == NULL || f->keys == NULL || f->runs == NULL ||
	    f->cont_nbytes == NULL || f->layer_nbytes == NULL || tokens == NULL) {
		fprintf(stderr, "%s: %s: out of memory\n", o->prog, kv->path);
		rc = -ENOMEM;
		goto out;
	}

	/* The dump into the paged region, head vector by head vector. */
	rc = bench_kv_to_region(o->prog, kv, kv->n_tokens, &f->geom, &f->layout, f->region);
	if (rc < 0)
		goto out;
	for (uint32_t i = 0; i < f->n_chunks * f->bpc; i++)
		f->block_ids[i] = i;

	/* Chunk keys over the dump's token ids, or a fixed synthetic sequence. */
	for (uint32_t t = 0; t < kv->n_tokens; t++)
		tokens[t] = kv->ids != NULL ? kv->ids[t] : (uint32_t)((t * 2654435761u) >> 19);
	rc = shadow_key_namespace(KEY_MODEL_ID, &f->geom, NULL, 0, &ns);
	if (rc == 0)
		rc = shadow_key_chain(&ns, tokens, kv->n_tokens, chunk, f->keys, f->n_chunks,
				      &n_keys);
	if (rc == 0 && n_keys != f->n_chunks)
		rc = -EINVAL;
	if (rc < 0) {
		fprintf(stderr, "%s: %s: chunk keys: %s\n", o->prog, kv->path,
			shadow_strerror(rc));
		goto out;
	}
	rc = shadow_codec_create(&f->geom, &f->codec);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: shadow_codec_create: %s\n", o->prog, kv->path,
			shadow_strerror(rc));
		goto out;
	}
	if (kv->has_queries) {
		rc = bench_attn_init(&f->attn, kv);
		if (rc < 0) {
			fprintf(stderr, "%s: %s: attention reference: %s\n", o->prog, kv->path,
				shadow_strerror(rc));
			goto out;
		}
		f->has_attn = true;
	}
	rc = 0;
out:
	free(tokens);
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* One scheme                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static bool keep_going(const struct options *o, uint64_t t_start, int passes)
{
	if (o->quick || passes >= MAX_PASSES)
		return false;
	return bench_seconds(t_start, bench_now_ns()) < o->min_time;
}

static int encode_pass(const struct options *o, const char *scheme,
		       const struct shadow_codec_options *opts, struct file_state *files,
		       int n_files, double *seconds_ret)
{
	uint64_t ns = 0;

	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *f = &files[fi];
		for (uint32_t c = 0; c < f->n_chunks; c++) {
			uint64_t t0 = bench_now_ns(), t1;
			int rc = shadow_chunk_encode(f->codec, opts, &f->keys[c], c, f->region,
						     &f->layout, &f->block_ids[(size_t)c * f->bpc],
						     f->cont + c * f->cont_cap, f->cont_cap,
						     &f->cont_nbytes[c]);
			t1 = bench_now_ns();
			ns += t1 - t0;
			if (rc < 0) {
				fprintf(stderr, "%s: %s: %s: chunk %u: shadow_chunk_encode: %s\n",
					o->prog, scheme, f->kv.name, c, shadow_strerror(rc));
				return rc;
			}
			if (f->cont_nbytes[c] == 0 || f->cont_nbytes[c] > f->cont_cap) {
				fprintf(stderr, "%s: %s: %s: chunk %u: shadow_chunk_encode says %zu "
						"bytes, bound %zu\n", o->prog, scheme, f->kv.name,
					c, f->cont_nbytes[c], f->cont_cap);
				return SHADOW_ECODEC;
			}
		}
	}
	*seconds_ret = ns * 1e-9;
	return 0;
}

/*
 * Decode every frame of every chunk of every file and scatter it into the output region.
 * `first` also checks the containers' metadata and counts each layer's payload bytes.
 */
static int decode_pass(const struct options *o, const char *scheme, struct file_state *files,
		       int n_files, bool first, double *seconds_ret)
{
	uint64_t ns = 0;

	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *f = &files[fi];
		const uint32_t n_frames = 2u * f->kv.n_layers;

		if (first)
			memset(f->layer_nbytes, 0, f->kv.n_layers * sizeof(uint64_t));
		for (uint32_t c = 0; c < f->n_chunks; c++) {
			const uint8_t *buf = f->cont + c * f->cont_cap;
			const uint32_t *blocks = &f->block_ids[(size_t)c * f->bpc];
			struct shadow_chunk_view view;
			int rc = shadow_chunk_parse(buf, f->cont_nbytes[c], &f->keys[c], &f->geom,
						    &view);
			if (rc < 0) {
				fprintf(stderr, "%s: %s: %s: chunk %u: shadow_chunk_parse: %s\n",
					o->prog, scheme, f->kv.name, c, shadow_strerror(rc));
				return rc;
			}
			if (first && (view.n_frames != n_frames ||
				      view.n_tokens != o->chunk_tokens ||
				      view.total_nbytes != f->cont_nbytes[c])) {
				fprintf(stderr, "%s: %s: %s: chunk %u: parsed view has %u frames, "
						"%u tokens, %llu bytes; want %u, %u, %zu\n",
					o->prog, scheme, f->kv.name, c, view.n_frames,
					view.n_tokens, (unsigned long long)view.total_nbytes,
					n_frames, o->chunk_tokens, f->cont_nbytes[c]);
				return SHADOW_ECORRUPT;
			}
			for (uint32_t fr = 0; fr < n_frames; fr++) {
				const uint32_t layer = fr / 2u;
				const enum shadow_kv_kind kind = (enum shadow_kv_kind)(fr % 2u);
				uint64_t t0, t1;
				size_t n_runs;

				if (first) {
					struct shadow_frame_info info;
					rc = shadow_chunk_frame_info(&view, fr, &info);
					if (rc < 0 || info.layer != layer || info.kind != kind ||
					    info.decoded_nbytes != f->frame_nbytes) {
						fprintf(stderr, "%s: %s: %s: chunk %u frame %u: "
								"frame info: %s\n", o->prog, scheme,
							f->kv.name, c, fr,
							rc < 0 ? shadow_strerror(rc)
							       : "unexpected layer/kind/size");
						return rc < 0 ? rc : SHADOW_ECORRUPT;
					}
					f->layer_nbytes[layer] += info.payload_nbytes;
				}
				t0 = bench_now_ns();
				rc = shadow_chunk_decode_frame(f->codec, &view, fr, &f->layout,
							       f->stage, f->frame_nbytes);
				t1 = bench_now_ns();
				ns += t1 - t0;
				if (rc < 0) {
					fprintf(stderr, "%s: %s: %s: chunk %u frame %u: "
							"shadow_chunk_decode_frame: %s\n", o->prog,
						scheme, f->kv.name, c, fr, shadow_strerror(rc));
					return rc;
				}
				rc = shadow_layout_plan_frame(&f->layout, &f->geom, layer, kind,
							      blocks, f->bpc, f->runs, f->max_runs,
							      &n_runs);
				if (rc < 0) {
					fprintf(stderr, "%s: shadow_layout_plan_frame: %s\n",
						o->prog, shadow_strerror(rc));
					return rc;
				}
				for (size_t r = 0; r < n_runs; r++) {
					const struct shadow_copy_run *run = &f->runs[r];
					if (run->src_offset + run->nbytes > f->frame_nbytes ||
					    run->dst_offset + run->nbytes > f->region_nbytes) {
						fprintf(stderr, "%s: copy run outside its buffers\n",
							o->prog);
						return -EINVAL;
					}
					memcpy(f->out + run->dst_offset, f->stage + run->src_offset,
					       run->nbytes);
				}
			}
		}
	}
	*seconds_ret = ns * 1e-9;
	return 0;
}

/* The reference: the same bytes, frame by frame, from a region-sized source into the stage. */
static double memcpy_pass(struct file_state *files, int n_files)
{
	uint64_t ns = 0;

	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *f = &files[fi];
		uint64_t t0 = bench_now_ns();
		for (uint64_t off = 0; off < f->region_nbytes; off += f->frame_nbytes) {
			memcpy(f->stage, f->region + off, f->frame_nbytes);
			__asm__ __volatile__("" : : "r"(f->stage) : "memory");
		}
		ns += bench_now_ns() - t0;
	}
	return ns * 1e-9;
}

/* The output region back into dump order (f->canon), one layer. */
static int gather_layer(const struct options *o, struct file_state *f, uint32_t layer)
{
	const struct bench_kv *kv = &f->kv;
	const uint64_t vec_nbytes = (uint64_t)kv->head_dim * 2u;

	for (unsigned kind = 0; kind < 2; kind++) {
		uint16_t *dst = f->canon + kind * kv->plane_elems;
		for (uint32_t t = 0; t < kv->n_tokens; t++)
			for (uint32_t h = 0; h < kv->n_kv_heads; h++) {
				int64_t off = shadow_layout_offset(&f->layout, &f->geom, layer,
								   (enum shadow_kv_kind)kind,
								   t / BLOCK_TOKENS,
								   t % BLOCK_TOKENS, h);
				if (off < 0) {
					fprintf(stderr, "%s: shadow_layout_offset: %s\n", o->prog,
						shadow_strerror((int)off));
					return (int)off;
				}
				memcpy(dst + ((size_t)t * kv->n_kv_heads + h) * kv->head_dim,
				       f->out + off, vec_nbytes);
			}
	}
	return 0;
}

static void print_row(const char *label, const struct result *r, bool timed)
{
	double ratio = (double)r->bf16_nbytes / (double)r->enc_nbytes;

	printf("%-28s %7.3f", label, ratio);
	if (timed)
		printf(" %8.3f %8.3f %8.3f", r->bf16_nbytes / r->enc_s * 1e-9,
		       r->bf16_nbytes / r->dec_s * 1e-9, r->bf16_nbytes / r->mcpy_s * 1e-9);
	else
		printf(" %8s %8s %8s", "-", "-", "-");
	printf("  %9.3e %9.3e %8.4f %8.4f", bench_rel(r->err.k_num, r->err.k_den),
	       bench_rel(r->err.v_num, r->err.v_den), r->err.k_max, r->err.v_max);
	if (r->err.a_den > 0.0)
		printf("  %8.5f\n", bench_rel(r->err.a_num, r->err.a_den));
	else
		printf("  %8s\n", "-");
}

/*
 * Run one scheme over all files: fills *pooled and per_file[]. Returns 0, a negative library
 * or system code (message printed), or 1 for a lossless scheme that did not round-trip.
 */
static int run_scheme(const struct options *o, const char *scheme, struct file_state *files,
		      int n_files, FILE *csv_layers, struct result *pooled,
		      struct result *per_file)
{
	struct shadow_codec_options opts;
	uint64_t t_start;
	int passes, rc;
	bool lossless;
	double s;

	rc = shadow_codec_options_parse(scheme, &opts);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: %s\n", o->prog, scheme, shadow_strerror(rc));
		return rc;
	}
	lossless = opts.quant == SHADOW_QUANT_NONE || opts.quant == SHADOW_QUANT_PLANES;
	memset(pooled, 0, sizeof(*pooled));
	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *f = &files[fi];
		uint64_t bound = shadow_chunk_encode_bound(f->codec, &opts);
		if (bound == 0 || bound > SIZE_MAX / f->n_chunks) {
			fprintf(stderr, "%s: %s: %s: shadow_chunk_encode_bound gave %llu\n",
				o->prog, scheme, f->kv.name, (unsigned long long)bound);
			return -EINVAL;
		}
		f->cont_cap = (size_t)bound;
		if (f->cont_alloc < f->cont_cap * f->n_chunks) {
			free(f->cont);
			f->cont_alloc = 0;
			f->cont = alloc_pages((uint64_t)f->cont_cap * f->n_chunks);
			if (f->cont == NULL) {
				fprintf(stderr, "%s: %s: out of memory for containers\n", o->prog,
					scheme);
				return -ENOMEM;
			}
			f->cont_alloc = f->cont_cap * f->n_chunks;
		}
		memset(f->out, 0xff, f->region_nbytes);
		memset(&per_file[fi], 0, sizeof(per_file[fi]));
		per_file[fi].bf16_nbytes = f->region_nbytes;
		pooled->bf16_nbytes += f->region_nbytes;
	}

	/* encode */
	pooled->enc_s = INFINITY;
	t_start = bench_now_ns();
	passes = 0;
	do {
		rc = encode_pass(o, scheme, &opts, files, n_files, &s);
		if (rc < 0)
			return rc;
		pooled->enc_s = s < pooled->enc_s ? s : pooled->enc_s;
		passes++;
	} while (keep_going(o, t_start, passes));
	for (int fi = 0; fi < n_files; fi++)
		for (uint32_t c = 0; c < files[fi].n_chunks; c++)
			per_file[fi].enc_nbytes += files[fi].cont_nbytes[c];

	/* decode */
	pooled->dec_s = INFINITY;
	t_start = bench_now_ns();
	passes = 0;
	do {
		rc = decode_pass(o, scheme, files, n_files, passes == 0, &s);
		if (rc < 0)
			return rc;
		pooled->dec_s = s < pooled->dec_s ? s : pooled->dec_s;
		passes++;
	} while (keep_going(o, t_start, passes));

	/* memcpy reference, same run */
	pooled->mcpy_s = INFINITY;
	t_start = bench_now_ns();
	passes = 0;
	do {
		s = memcpy_pass(files, n_files);
		pooled->mcpy_s = s < pooled->mcpy_s ? s : pooled->mcpy_s;
		passes++;
	} while (keep_going(o, t_start, passes) || passes < 3);

	/* fidelity */
	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *f = &files[fi];
		struct result *r = &per_file[fi];

		if (lossless && memcmp(f->out, f->region, f->region_nbytes) != 0) {
			size_t at = 0;
			while (f->out[at] == f->region[at])
				at++;
			fprintf(stderr, "%s: %s: %s: lossless scheme did not round-trip (first "
					"difference at region byte %zu)\n",
				o->prog, scheme, f->kv.name, at);
			rc = 1;
		}
		for (uint32_t l = 0; l < f->kv.n_layers; l++) {
			struct bench_err e;
			int grc = gather_layer(o, f, l);
			if (grc < 0)
				return grc;
			bench_layer_errors(f->has_attn ? &f->attn : NULL, &f->kv, l, f->canon,
					   f->canon + f->kv.plane_elems, &e);
			bench_err_add(&r->err, &e);
			if (csv_layers != NULL)
				fprintf(csv_layers, "%s,%s,%u,%.6g,%.6g,%.6g,%llu\n", scheme,
					f->kv.name, l, bench_rel(e.k_num, e.k_den),
					bench_rel(e.v_num, e.v_den), bench_rel(e.a_num, e.a_den),
					(unsigned long long)f->layer_nbytes[l]);
		}
		pooled->enc_nbytes += r->enc_nbytes;
		bench_err_add(&pooled->err, &r->err);
	}
	if (csv_layers != NULL)
		fflush(csv_layers);
	return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Report                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void print_machine(const struct options *o, int pinned_cpu)
{
	const struct shadow__dequant_kernels *k = shadow__dequant_kernels();
	char model[256];

	bench_cpu_model(model, sizeof(model));
	printf("codec benchmark (libshadow %s), one thread\n", shadow_version());
	printf("cpu: %s; ", model);
	if (pinned_cpu >= 0)
		printf("pinned to CPU %d (single core)\n", pinned_cpu);
	else
		printf("not pinned\n");
	printf("cpu features: %s; dequant kernels: %s\n",
	       shadow__cpu_features_string(shadow__cpu_features()),
	       k != NULL && k->isa != NULL ? k->isa : "unknown");
	printf("chunks of %u tokens, %u-token blocks, NHD layout; %s\n", o->chunk_tokens,
	       BLOCK_TOKENS,
	       o->quick ? "--quick: one pass per measurement"
			: "best pass of those in --min-time per measurement");
}

static void print_file(const struct file_state *f)
{
	const struct bench_kv *kv = &f->kv;

	printf("file: %s%s\n", kv->path, kv->synthetic ? " (SYNTHETIC KV)" : "");
	printf("      %u layers x %u KV heads x %u dims x %u tokens, bf16, %.2f MiB; %u chunks\n",
	       kv->n_layers, kv->n_kv_heads, kv->head_dim, kv->n_tokens,
	       f->region_nbytes / 1048576.0, f->n_chunks);
	if (kv->has_queries)
		printf("      queries: %u heads x %u positions from %u (%s)\n", kv->q_heads,
		       kv->n_q, kv->q_start,
		       kv->queries_synthetic ? "SYNTHETIC queries" : kv->q_path);
	else
		printf("      queries: none (no attention error)\n");
	printf("      chunk keys over %s\n", kv->ids != NULL ? kv->ids_path : "synthetic tokens");
}

static void print_header(void)
{
	printf("\n%-28s %7s %8s %8s %8s  %9s %9s %8s %8s  %8s\n", "scheme", "ratio", "enc",
	       "dec", "memcpy", "K rRMSE", "V rRMSE", "K maxabs", "V maxabs", "attn err");
	printf("%-28s %7s %8s %8s %8s\n", "", "x bf16", "GB/s", "GB/s", "GB/s");
}

/* The README's plain min/max baseline, next to the library's bitsN+deflate where it ran. */
static int run_reference(const struct options *o, struct file_state *files, int n_files,
			 struct result *const *per_file_by_scheme)
{
	printf("\nbaseline check: plain min/max per %u-token chunk (K per channel, V per token "
	       "over all heads),\nquantized by this benchmark, symbols one per byte + "
	       "DEFLATE-6, 4 B of parameters per group.\nREADME, cgroup-v2: ratio 2.17 / 2.88 / "
	       "3.28 / 3.97 / 5.45, attn 0.0075 / 0.030 / 0.062 / 0.128 / 0.275\nat 8 / 6 / 5 / 4 "
	       "/ 3 bits. The library groups V per token and head (finer).\n", o->chunk_tokens);
	print_header();
	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *f = &files[fi];
		if (!f->has_attn)
			continue;
		printf("%s\n", f->kv.name);
		for (size_t b = 0; b < SHADOW_ARRAY_SIZE(reference_bits); b++) {
			struct result r;
			char label[64], lib[32];
			int rc;

			memset(&r, 0, sizeof(r));
			r.bf16_nbytes = f->region_nbytes;
			rc = bench_reference_minmax(&f->attn, &f->kv, o->chunk_tokens,
						    reference_bits[b], &r.err, &r.enc_nbytes);
			if (rc < 0) {
				fprintf(stderr, "%s: baseline: %s\n", o->prog, shadow_strerror(rc));
				return rc;
			}
			snprintf(label, sizeof(label), "  baseline minmax%u+deflate",
				 reference_bits[b]);
			print_row(label, &r, false);
			if (reference_bits[b] == 8)
				snprintf(lib, sizeof(lib), "int8+deflate");
			else
				snprintf(lib, sizeof(lib), "bits%u+deflate", reference_bits[b]);
			for (size_t s = 0; s < o->n_schemes; s++)
				if (strcmp(o->schemes[s], lib) == 0 && per_file_by_scheme[s] != NULL) {
					snprintf(label, sizeof(label), "  library %s", lib);
					print_row(label, &per_file_by_scheme[s][fi], false);
				}
		}
	}
	return 0;
}

int shadow_bench_codec_main(int argc, char **argv)
{
	struct options o;
	struct file_state *files = NULL;
	struct result **per_file = NULL; /* [scheme][file] */
	FILE *csv = NULL, *csv_layers = NULL;
	glob_t g;
	bool have_glob = false, pinned = false;
	cpu_set_t saved;
	int pinned_cpu = -1, n_files = 0, status = 0, rc;

	rc = parse_args(argc, argv, &o);
	if (rc != 0) {
		free_options(&o);
		return rc < 0 ? 0 : rc;
	}
	if (o.n_paths == 0 && !o.synthetic) {
		have_glob = bench_kv_find_default(&g);
		if (have_glob) {
			char **p = realloc(o.paths, g.gl_pathc * sizeof(*p));
			if (p == NULL) {
				fprintf(stderr, "%s: out of memory\n", o.prog);
				globfree(&g);
				free_options(&o);
				return 1;
			}
			o.paths = p;
			for (size_t k = 0; k < g.gl_pathc; k++)
				o.paths[o.n_paths++] = g.gl_pathv[k];
		} else {
			fprintf(stderr, "%s: no KV dumps given or found in $SHADOW_SHARED_DIR/data/kv "
					"or ../shared/data/kv: using a synthetic KV\n", o.prog);
			o.synthetic = true;
		}
	}
	if (o.csv_path != NULL &&
	    (csv = bench_csv_open(o.prog, o.csv_path, "scheme,ratio,encode_gbps,decode_gbps,"
				  "memcpy_gbps,k_rel_rmse,v_rel_rmse,k_max_abs,v_max_abs,"
				  "attn_rel_err")) == NULL) {
		status = 1;
		goto out;
	}
	if (o.csv_layers_path != NULL &&
	    (csv_layers = bench_csv_open(o.prog, o.csv_layers_path, "scheme,file,layer,k_rel_rmse,"
					 "v_rel_rmse,attn_rel_err,encoded_nbytes")) == NULL) {
		status = 1;
		goto out;
	}

	files = calloc((size_t)o.n_paths + 1, sizeof(*files));
	per_file = calloc(o.n_schemes, sizeof(*per_file));
	if (files == NULL || per_file == NULL) {
		status = 1;
		goto out;
	}
	for (int i = 0; i < o.n_paths + (o.synthetic ? 1 : 0); i++) {
		struct file_state *f = &files[n_files];
		rc = i < o.n_paths ? bench_kv_load(o.prog, o.paths[i], &f->kv)
				   : bench_kv_synthetic(o.prog, 2048, &f->kv);
		if (rc < 0) {
			status = 1;
			goto out;
		}
		n_files++;
		rc = file_setup(&o, f);
		if (rc < 0) {
			status = 1;
			goto out;
		}
	}

	/* PCA transforms: each file is coded with the transform calibrated on the next file (a
	 * static per-model table, as in deployment: never the data it codes), or on itself when
	 * there is only one file, which flatters PCA and is said so. */
	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *f = &files[fi];
		float inv_freq[SHADOW_MAX_HEAD_DIM / 2];
		bool rope = o.rope_theta != 0.0 &&
			    shadow_rope_inv_freq(o.rope_theta, f->geom.head_dim, inv_freq) == 0;
		rc = shadow_transform_calibrate(&f->geom, f->region, &f->layout, f->block_ids,
						(size_t)f->n_chunks * f->bpc, rope ? inv_freq : NULL,
						&f->transform);
		if (rc < 0) {
			fprintf(stderr, "%s: %s: shadow_transform_calibrate: %s\n", o.prog,
				f->kv.path, shadow_strerror(rc));
			status = 1;
			goto out;
		}
	}
	for (int fi = 0; fi < n_files; fi++) {
		struct file_state *src = &files[(fi + 1) % n_files];
		rc = shadow_codec_set_transform(files[fi].codec, src->transform);
		if (rc < 0) {
			fprintf(stderr, "%s: %s: no PCA transform from %s: %s\n", o.prog,
				files[fi].kv.path, src->kv.path, shadow_strerror(rc));
			status = 1;
			goto out;
		}
		printf("pca transform for %s: calibrated on %s%s, keys %s\n", files[fi].kv.name,
		       src->kv.name,
		       n_files == 1 ? " itself (optimistic: a deployment calibrates on other data)"
				    : "",
		       o.rope_theta != 0.0 ? "un-rotated (RoPE)" : "as they are");
	}

	if (o.pin) {
		rc = bench_pin_current_cpu(&saved, &pinned_cpu);
		if (rc < 0)
			fprintf(stderr, "%s: warning: cannot pin to a CPU: %s\n", o.prog,
				strerror(-rc));
		pinned = rc == 0;
	}
	print_machine(&o, pinned ? pinned_cpu : -1);
	for (int fi = 0; fi < n_files; fi++)
		print_file(&files[fi]);
	printf("throughput: GB/s (1e9 B/s) of bf16 KV per core; dec = decode_frame calls only;\n"
	       "memcpy = the same bytes frame by frame into the staging buffer; errors pooled "
	       "over all files\n");
	print_header();
	fflush(stdout);

	for (size_t s = 0; s < o.n_schemes; s++) {
		struct result pooled;
		per_file[s] = calloc((size_t)n_files, sizeof(struct result));
		if (per_file[s] == NULL) {
			status = 1;
			goto out;
		}
		rc = run_scheme(&o, o.schemes[s], files, n_files, csv_layers, &pooled,
				per_file[s]);
		if (rc < 0) {
			printf("%-28s FAILED: %s\n", o.schemes[s], shadow_strerror(rc));
			free(per_file[s]);
			per_file[s] = NULL;
			status = 1;
			continue;
		}
		if (rc > 0)
			status = 1; /* lossless mismatch: reported, figures still printed */
		print_row(o.schemes[s], &pooled, true);
		if (o.per_file && n_files > 1)
			for (int fi = 0; fi < n_files; fi++) {
				char label[64];
				snprintf(label, sizeof(label), "  %.26s", files[fi].kv.name);
				print_row(label, &per_file[s][fi], false);
			}
		fflush(stdout);
		if (csv != NULL) {
			fprintf(csv, "%s,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n",
				o.schemes[s], (double)pooled.bf16_nbytes / pooled.enc_nbytes,
				pooled.bf16_nbytes / pooled.enc_s * 1e-9,
				pooled.bf16_nbytes / pooled.dec_s * 1e-9,
				pooled.bf16_nbytes / pooled.mcpy_s * 1e-9,
				bench_rel(pooled.err.k_num, pooled.err.k_den),
				bench_rel(pooled.err.v_num, pooled.err.v_den), pooled.err.k_max,
				pooled.err.v_max, bench_rel(pooled.err.a_num, pooled.err.a_den));
			fflush(csv);
		}
	}
	if (o.reference && run_reference(&o, files, n_files, per_file) < 0)
		status = 1;

out:
	if (pinned)
		bench_unpin(&saved);
	if (csv != NULL && fclose(csv) != 0) {
		fprintf(stderr, "%s: %s: %s\n", o.prog, o.csv_path, strerror(errno));
		status = 1;
	}
	if (csv_layers != NULL && fclose(csv_layers) != 0) {
		fprintf(stderr, "%s: %s: %s\n", o.prog, o.csv_layers_path, strerror(errno));
		status = 1;
	}
	for (int fi = 0; fi < n_files; fi++)
		file_free(&files[fi]);
	free(files);
	if (per_file != NULL)
		for (size_t s = 0; s < o.n_schemes; s++)
			free(per_file[s]);
	free(per_file);
	if (have_glob)
		globfree(&g);
	free_options(&o);
	return status;
}
