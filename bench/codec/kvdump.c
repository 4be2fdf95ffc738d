/*
 * kvdump.c - readers for the benchmark's input files (KVD1 dumps, QTL1 query tails, token
 * ids) and the synthetic KV. Formats: ../shared/data/kv/README.md.
 *
 * Untrusted input: a header is parsed field by field from little-endian bytes, every count is
 * range-checked, the sizes it implies are computed with overflow checks, and the file (or the
 * decompressed stream) must be exactly that long. An xz stream is decoded in memory with a
 * memory limit, into a buffer sized from the validated header, and must end exactly there.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lzma.h>

#include <shadow/shadow.h>

#include "bench_util.h"
#include "kvdump.h"
#include "core/endian.h"
#include "quant/quant.h" /* bf16 conversions */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "bench_codec reads little-endian bf16 in place: little-endian hosts only"
#endif

#define KVD_HEADER_NBYTES 24u
#define QTL_HEADER_NBYTES 28u
#define KV_MAX_TOKENS (1u << 24)
#define QTL_MAX_HEADS 4096u
#define XZ_MAX_COMPRESSED_NBYTES (8ull << 30)
#define XZ_MEMLIMIT (512ull << 20)

static const uint8_t xz_magic[6] = { 0xfd, '7', 'z', 'X', 'Z', 0x00 };


static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);

	if (d != NULL)
		memcpy(d, s, n);
	return d;
}

/* path without a trailing ".xz" and then ".kvd", plus `suffix`; malloc()ed, NULL on OOM. */
static char *companion_path(const char *path, const char *suffix)
{
	size_t n = strlen(path);
	char *out;

	if (n > 3 && strcmp(path + n - 3, ".xz") == 0)
		n -= 3;
	if (n > 4 && strncmp(path + n - 4, ".kvd", 4) == 0)
		n -= 4;
	out = malloc(n + strlen(suffix) + 1);
	if (out == NULL)
		return NULL;
	memcpy(out, path, n);
	strcpy(out + n, suffix);
	return out;
}

/* Validate a KVD1 header; fill the geometry of kv and the total file size. */
static int kvd_parse_header(const char *prog, const char *path, const uint8_t *h,
			    struct bench_kv *kv, uint64_t *total_ret)
{
	uint32_t n_layers, n_kv_heads, head_dim, n_tokens, dtype;
	uint64_t plane, total;

	if (memcmp(h, "KVD1", 4) != 0) {
		fprintf(stderr, "%s: %s: not a KVD1 dump (bad magic)\n", prog, path);
		return SHADOW_ECORRUPT;
	}
	n_layers = shadow__load_le32(h + 4);
	n_kv_heads = shadow__load_le32(h + 8);
	head_dim = shadow__load_le32(h + 12);
	n_tokens = shadow__load_le32(h + 16);
	dtype = shadow__load_le32(h + 20);
	if (n_layers < 1 || n_layers > SHADOW_MAX_LAYERS) {
		fprintf(stderr, "%s: %s: n_layers %u out of range 1..%u\n", prog, path, n_layers,
			SHADOW_MAX_LAYERS);
		return SHADOW_ECORRUPT;
	}
	if (n_kv_heads < 1 || n_kv_heads > SHADOW_MAX_KV_HEADS) {
		fprintf(stderr, "%s: %s: n_kv_heads %u out of range 1..%u\n", prog, path,
			n_kv_heads, SHADOW_MAX_KV_HEADS);
		return SHADOW_ECORRUPT;
	}
	if (head_dim < 1 || head_dim > SHADOW_MAX_HEAD_DIM) {
		fprintf(stderr, "%s: %s: head_dim %u out of range 1..%u\n", prog, path, head_dim,
			SHADOW_MAX_HEAD_DIM);
		return SHADOW_ECORRUPT;
	}
	if (n_tokens < 1 || n_tokens > KV_MAX_TOKENS) {
		fprintf(stderr, "%s: %s: n_tokens %u out of range 1..%u\n", prog, path, n_tokens,
			KV_MAX_TOKENS);
		return SHADOW_ECORRUPT;
	}
	if (dtype != SHADOW_DTYPE_BF16) {
		fprintf(stderr, "%s: %s: dtype %u not supported (only 1 = bf16)\n", prog, path,
			dtype);
		return SHADOW_EUNSUPPORTED;
	}
	/* Bounded by the checks above (2^8 * 2^10 * 2^24 * 2 * 2 * 2^8 < 2^64), but check anyway. */
	if (__builtin_mul_overflow((uint64_t)n_tokens * n_kv_heads, (uint64_t)head_dim * 2u,
				   &plane) ||
	    __builtin_mul_overflow(plane, 2ull * n_layers, &total) ||
	    total > BENCH_KV_MAX_NBYTES) {
		fprintf(stderr, "%s: %s: dump of %u layers x %u heads x %u dims x %u tokens is "
				"larger than the %llu GiB this benchmark accepts\n",
			prog, path, n_layers, n_kv_heads, head_dim, n_tokens,
			BENCH_KV_MAX_NBYTES >> 30);
		return SHADOW_ELIMIT;
	}
	kv->n_layers = n_layers;
	kv->n_kv_heads = n_kv_heads;
	kv->head_dim = head_dim;
	kv->n_tokens = n_tokens;
	kv->plane_elems = plane / 2u;
	*total_ret = KVD_HEADER_NBYTES + total;
	return 0;
}

static const char *lzma_ret_text(lzma_ret r)
{
	switch (r) {
	case LZMA_MEM_ERROR: return "out of memory";
	case LZMA_MEMLIMIT_ERROR: return "needs more memory than the limit";
	case LZMA_FORMAT_ERROR: return "not an xz stream";
	case LZMA_OPTIONS_ERROR: return "unsupported xz options";
	case LZMA_DATA_ERROR: return "corrupt xz data";
	case LZMA_BUF_ERROR: return "truncated xz stream";
	case LZMA_STREAM_END: return "xz stream ended early";
	default: return "xz decoder error";
	}
}

/*
 * Decode exactly n bytes into out. Returns 0, or the lzma_ret that stopped it
 * (LZMA_STREAM_END when the stream ended first); *ended_ret is set when the stream ended.
 */
static lzma_ret xz_fill(lzma_stream *s, uint8_t *out, size_t n, int *ended_ret)
{
	s->next_out = out;
	s->avail_out = n;
	while (s->avail_out > 0) {
		lzma_ret r = lzma_code(s, LZMA_FINISH);
		if (r == LZMA_STREAM_END) {
			*ended_ret = 1;
			return s->avail_out == 0 ? LZMA_OK : LZMA_STREAM_END;
		}
		if (r != LZMA_OK)
			return r;
	}
	return LZMA_OK;
}

static int kvd_load_xz(const char *prog, const char *path, struct bench_kv *kv)
{
	lzma_stream s = LZMA_STREAM_INIT;
	uint8_t *comp = NULL;
	size_t comp_nbytes;
	uint8_t header[KVD_HEADER_NBYTES];
	uint64_t total;
	int ended = 0;
	lzma_ret r;
	int err;

	err = bench_read_file(path, XZ_MAX_COMPRESSED_NBYTES, &comp, &comp_nbytes);
	if (err < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, shadow_strerror(err));
		return err;
	}
	r = lzma_stream_decoder(&s, XZ_MEMLIMIT, LZMA_CONCATENATED);
	if (r != LZMA_OK) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, lzma_ret_text(r));
		err = -ENOMEM;
		goto out_free;
	}
	s.next_in = comp;
	s.avail_in = comp_nbytes;
	r = xz_fill(&s, header, sizeof(header), &ended);
	if (r != LZMA_OK) {
		fprintf(stderr, "%s: %s: %s before the end of the KVD1 header\n", prog, path,
			lzma_ret_text(r));
		err = SHADOW_ECORRUPT;
		goto out_end;
	}
	err = kvd_parse_header(prog, path, header, kv, &total);
	if (err < 0)
		goto out_end;
	kv->kv = malloc(total - KVD_HEADER_NBYTES);
	if (kv->kv == NULL) {
		fprintf(stderr, "%s: %s: out of memory for %llu bytes\n", prog, path,
			(unsigned long long)total);
		err = -ENOMEM;
		goto out_end;
	}
	r = ended ? LZMA_STREAM_END
		  : xz_fill(&s, (uint8_t *)kv->kv, total - KVD_HEADER_NBYTES, &ended);
	if (r != LZMA_OK) {
		fprintf(stderr, "%s: %s: %s: the header says %llu bytes\n", prog, path,
			lzma_ret_text(r), (unsigned long long)total);
		err = SHADOW_ECORRUPT;
		goto out_end;
	}
	if (!ended) {
		uint8_t sink;
		r = xz_fill(&s, &sink, 1, &ended);
		if (r == LZMA_OK) {
			fprintf(stderr, "%s: %s: decompresses to more than the %llu bytes its "
					"header says\n", prog, path, (unsigned long long)total);
			err = SHADOW_ECORRUPT;
			goto out_end;
		}
		if (r != LZMA_STREAM_END) {
			fprintf(stderr, "%s: %s: unexpected data after the dump (%s)\n", prog,
				path, lzma_ret_text(r));
			err = SHADOW_ECORRUPT;
			goto out_end;
		}
	}
	err = 0;
out_end:
	lzma_end(&s);
out_free:
	free(comp);
	return err;
}

static int kvd_load_plain(const char *prog, const char *path, FILE *f, const uint8_t *header,
			  uint64_t file_nbytes, struct bench_kv *kv)
{
	uint64_t total;
	int err = kvd_parse_header(prog, path, header, kv, &total);

	if (err < 0)
		return err;
	if (file_nbytes != total) {
		fprintf(stderr, "%s: %s: file has %llu bytes, its header says %llu\n", prog, path,
			(unsigned long long)file_nbytes, (unsigned long long)total);
		return SHADOW_ECORRUPT;
	}
	kv->kv = malloc(total - KVD_HEADER_NBYTES);
	if (kv->kv == NULL) {
		fprintf(stderr, "%s: %s: out of memory\n", prog, path);
		return -ENOMEM;
	}
	if (fread(kv->kv, 1, total - KVD_HEADER_NBYTES, f) != total - KVD_HEADER_NBYTES) {
		fprintf(stderr, "%s: %s: read error\n", prog, path);
		return -EIO;
	}
	return 0;
}

/* The query tail beside a dump, if any. Absent: 0 with has_queries false. */
static int qtl_load(const char *prog, struct bench_kv *kv)
{
	uint8_t h[QTL_HEADER_NBYTES];
	uint32_t n_layers, q_heads, head_dim, n_q, q_start, dtype;
	uint64_t body, elems;
	struct stat st;
	int err = 0;
	FILE *f;

	kv->q_path = companion_path(kv->path, ".qtl");
	if (kv->q_path == NULL)
		return -ENOMEM;
	f = fopen(kv->q_path, "rb");
	if (f == NULL) {
		if (errno == ENOENT)
			return 0;
		err = -errno;
		fprintf(stderr, "%s: %s: %s\n", prog, kv->q_path, shadow_strerror(err));
		return err;
	}
	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "%s: %s: not a regular file\n", prog, kv->q_path);
		err = -EINVAL;
		goto out_close;
	}
	if (fread(h, 1, sizeof(h), f) != sizeof(h)) {
		fprintf(stderr, "%s: %s: shorter than a QTL1 header\n", prog, kv->q_path);
		err = SHADOW_ETRUNCATED;
		goto out_close;
	}
	n_layers = shadow__load_le32(h + 4);
	q_heads = shadow__load_le32(h + 8);
	head_dim = shadow__load_le32(h + 12);
	n_q = shadow__load_le32(h + 16);
	q_start = shadow__load_le32(h + 20);
	dtype = shadow__load_le32(h + 24);
	err = SHADOW_ECORRUPT;
	if (memcmp(h, "QTL1", 4) != 0) {
		fprintf(stderr, "%s: %s: not a QTL1 query file (bad magic)\n", prog, kv->q_path);
		goto out_close;
	}
	if (n_layers != kv->n_layers || head_dim != kv->head_dim) {
		fprintf(stderr, "%s: %s: %u layers x head_dim %u, but the dump has %u x %u\n",
			prog, kv->q_path, n_layers, head_dim, kv->n_layers, kv->head_dim);
		goto out_close;
	}
	if (q_heads < kv->n_kv_heads || q_heads > QTL_MAX_HEADS || q_heads % kv->n_kv_heads) {
		fprintf(stderr, "%s: %s: %u query heads is not a multiple of the dump's %u KV "
				"heads (at most %u)\n",
			prog, kv->q_path, q_heads, kv->n_kv_heads, QTL_MAX_HEADS);
		goto out_close;
	}
	if (n_q < 1 || (uint64_t)q_start + n_q > kv->n_tokens) {
		fprintf(stderr, "%s: %s: queries at positions %u..%llu, but the dump has %u "
				"tokens\n",
			prog, kv->q_path, q_start, (unsigned long long)q_start + n_q - 1,
			kv->n_tokens);
		goto out_close;
	}
	if (dtype != SHADOW_DTYPE_BF16) {
		fprintf(stderr, "%s: %s: dtype %u not supported (only 1 = bf16)\n", prog,
			kv->q_path, dtype);
		err = SHADOW_EUNSUPPORTED;
		goto out_close;
	}
	elems = (uint64_t)n_layers * n_q * q_heads * head_dim; /* < 2^8+24+12+10 */
	body = elems * 2u;
	if ((uint64_t)st.st_size != QTL_HEADER_NBYTES + body) {
		fprintf(stderr, "%s: %s: file has %llu bytes, its header says %llu\n", prog,
			kv->q_path, (unsigned long long)st.st_size,
			(unsigned long long)(QTL_HEADER_NBYTES + body));
		goto out_close;
	}
	if (body > BENCH_KV_MAX_NBYTES) {
		fprintf(stderr, "%s: %s: too large\n", prog, kv->q_path);
		err = SHADOW_ELIMIT;
		goto out_close;
	}
	kv->q = malloc(body);
	if (kv->q == NULL) {
		err = -ENOMEM;
		fprintf(stderr, "%s: %s: out of memory\n", prog, kv->q_path);
		goto out_close;
	}
	if (fread(kv->q, 1, body, f) != body) {
		fprintf(stderr, "%s: %s: read error\n", prog, kv->q_path);
		err = -EIO;
		goto out_close;
	}
	kv->q_heads = q_heads;
	kv->n_q = n_q;
	kv->q_start = q_start;
	kv->has_queries = true;
	err = 0;
out_close:
	fclose(f);
	return err;
}

/* Token ids beside a dump, if any and of the right size (else a warning). */
static int ids_load(const char *prog, struct bench_kv *kv)
{
	uint8_t *buf;
	size_t n;
	int err;

	kv->ids_path = companion_path(kv->path, ".ids.u32");
	if (kv->ids_path == NULL)
		return -ENOMEM;
	if (!bench_file_exists(kv->ids_path))
		return 0;
	err = bench_read_file(kv->ids_path, (uint64_t)kv->n_tokens * 4u, &buf, &n);
	if (err == -EFBIG || (err == 0 && n != (size_t)kv->n_tokens * 4u)) {
		fprintf(stderr, "%s: warning: %s: not %u token ids; using synthetic tokens for the "
				"chunk keys\n", prog, kv->ids_path, kv->n_tokens);
		if (err == 0)
			free(buf);
		return 0;
	}
	if (err < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, kv->ids_path, shadow_strerror(err));
		return err;
	}
	kv->ids = (uint32_t *)(void *)buf; /* malloc()ed: aligned; little-endian host */
	return 0;
}

int bench_kv_load(const char *prog, const char *path, struct bench_kv *kv)
{
	uint8_t header[KVD_HEADER_NBYTES];
	struct stat st;
	size_t got;
	int err;
	FILE *f;

	memset(kv, 0, sizeof(*kv));
	kv->path = xstrdup(path);
	if (kv->path == NULL)
		return -ENOMEM;
	kv->name = strrchr(kv->path, '/') ? strrchr(kv->path, '/') + 1 : kv->path;

	f = fopen(path, "rb");
	if (f == NULL) {
		err = -errno;
		fprintf(stderr, "%s: %s: %s\n", prog, path, shadow_strerror(err));
		goto fail;
	}
	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "%s: %s: not a regular file\n", prog, path);
		fclose(f);
		err = -EINVAL;
		goto fail;
	}
	got = fread(header, 1, sizeof(header), f);
	if (got >= sizeof(xz_magic) && memcmp(header, xz_magic, sizeof(xz_magic)) == 0) {
		fclose(f);
		err = kvd_load_xz(prog, path, kv);
	} else if (got < sizeof(header)) {
		fprintf(stderr, "%s: %s: shorter than a KVD1 header (%zu bytes)\n", prog, path,
			got);
		fclose(f);
		err = SHADOW_ETRUNCATED;
	} else {
		err = kvd_load_plain(prog, path, f, header, (uint64_t)st.st_size, kv);
		fclose(f);
	}
	if (err < 0)
		goto fail;
	err = qtl_load(prog, kv);
	if (err < 0)
		goto fail;
	err = ids_load(prog, kv);
	if (err < 0)
		goto fail;
	return 0;
fail:
	bench_kv_free(kv);
	return err;
}

/* ---- synthetic KV ---- */

struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double rng_uniform(struct rng *r) /* (0, 1) */
{
	return ((double)(rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double rng_gauss(struct rng *r)
{
	double u = rng_uniform(r), v = rng_uniform(r);
	return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

int bench_kv_synthetic(const char *prog, uint32_t n_tokens, struct bench_kv *kv)
{
	const uint32_t n_layers = 6, n_kv = 2, dim = 128, q_heads = 6;
	const uint32_t channels = n_kv * dim;
	struct rng rng = { 0x5eed5eedull };
	double *scale = NULL, *offset = NULL;
	int err = -ENOMEM;

	memset(kv, 0, sizeof(*kv));
	kv->path = xstrdup("synthetic");
	if (kv->path == NULL)
		goto fail;
	kv->name = kv->path;
	kv->synthetic = true;
	kv->n_layers = n_layers;
	kv->n_kv_heads = n_kv;
	kv->head_dim = dim;
	kv->n_tokens = n_tokens;
	kv->plane_elems = (uint64_t)n_tokens * channels;
	kv->kv = malloc(kv->plane_elems * 2u * n_layers * sizeof(uint16_t));
	scale = malloc(channels * sizeof(double));
	offset = malloc(channels * sizeof(double));
	if (kv->kv == NULL || scale == NULL || offset == NULL)
		goto fail;
	for (uint32_t l = 0; l < n_layers; l++) {
		for (unsigned kind = 0; kind < 2; kind++) {
			uint16_t *p = bench_kv_plane(kv, l, kind);
			for (uint32_t c = 0; c < channels; c++) {
				/* keys: per-channel scale 0.5-2, ~3% outlier channels at 6x and
				 * a per-channel offset; values: 0.5-1, centred */
				scale[c] = kind == 0 ? 0.5 + 1.5 * rng_uniform(&rng)
						     : 0.5 + 0.5 * rng_uniform(&rng);
				offset[c] = kind == 0 ? 0.5 * rng_gauss(&rng) : 0.0;
				if (kind == 0 && l > 0 && rng_uniform(&rng) < 0.03)
					scale[c] *= 6.0;
			}
			for (uint32_t t = 0; t < n_tokens; t++)
				for (uint32_t c = 0; c < channels; c++)
					p[(size_t)t * channels + c] = shadow__float_to_bf16(
						(float)(offset[c] + scale[c] * rng_gauss(&rng)));
		}
	}
	/* Synthetic queries: unit gaussians at the last positions. */
	kv->n_q = n_tokens < 256 ? n_tokens : 256;
	kv->q_start = n_tokens - kv->n_q;
	kv->q_heads = q_heads;
	kv->q = malloc((size_t)n_layers * kv->n_q * q_heads * dim * sizeof(uint16_t));
	if (kv->q == NULL)
		goto fail;
	for (size_t i = 0; i < (size_t)n_layers * kv->n_q * q_heads * dim; i++)
		kv->q[i] = shadow__float_to_bf16((float)rng_gauss(&rng));
	kv->has_queries = true;
	kv->queries_synthetic = true;
	free(scale);
	free(offset);
	return 0;
fail:
	fprintf(stderr, "%s: synthetic KV: out of memory\n", prog);
	free(scale);
	free(offset);
	bench_kv_free(kv);
	return err;
}

void bench_kv_free(struct bench_kv *kv)
{
	free(kv->path);
	free(kv->kv);
	free(kv->q_path);
	free(kv->q);
	free(kv->ids_path);
	free(kv->ids);
	memset(kv, 0, sizeof(*kv));
}

int bench_kv_to_region(const char *prog, const struct bench_kv *kv, uint32_t n_tokens,
		       const struct shadow_kv_geometry *geom, const struct shadow_kv_layout *layout,
		       uint8_t *region)
{
	const uint64_t vec_nbytes = (uint64_t)kv->head_dim * 2u;

	for (uint32_t l = 0; l < kv->n_layers; l++)
		for (unsigned kind = 0; kind < 2; kind++) {
			const uint16_t *src = bench_kv_plane(kv, l, kind);
			for (uint32_t t = 0; t < n_tokens; t++)
				for (uint32_t h = 0; h < kv->n_kv_heads; h++) {
					int64_t off = shadow_layout_offset(
						layout, geom, l, (enum shadow_kv_kind)kind,
						t / geom->block_tokens, t % geom->block_tokens, h);
					if (off < 0 || (uint64_t)off + vec_nbytes > layout->region_nbytes) {
						fprintf(stderr, "%s: shadow_layout_offset: %s\n", prog,
							shadow_strerror(off < 0 ? (int)off : -EINVAL));
						return off < 0 ? (int)off : -EINVAL;
					}
					memcpy(region + off,
					       src + ((size_t)t * kv->n_kv_heads + h) * kv->head_dim,
					       vec_nbytes);
				}
		}
	return 0;
}

bool bench_kv_find_default(glob_t *g)
{
	char dirs[3][4096];
	const char *env = getenv("SHADOW_SHARED_DIR");
	size_t n_dirs = 0;

	if (env != NULL && *env != '\0')
		snprintf(dirs[n_dirs++], sizeof(dirs[0]), "%s/data/kv", env);
	snprintf(dirs[n_dirs++], sizeof(dirs[0]), "../shared/data/kv");
#ifdef SHADOW_BENCH_SOURCE_DIR
	snprintf(dirs[n_dirs++], sizeof(dirs[0]), "%s/../shared/data/kv", SHADOW_BENCH_SOURCE_DIR);
#endif
	for (size_t i = 0; i < n_dirs; i++) {
		char pattern[4200];
		snprintf(pattern, sizeof(pattern), "%.4000s/*.kvd.xz", dirs[i]);
		memset(g, 0, sizeof(*g));
		if (glob(pattern, 0, NULL, g) == 0 && g->gl_pathc > 0)
			return true;
		globfree(g);
	}
	return false;
}
