/*
 * chunk.c - parsing and sealing the chunk container (docs/format.md is the specification).
 *
 * Everything here reads untrusted bytes from a store. The rules:
 *  - nothing is dereferenced before the length that covers it has been checked against what
 *    the caller says is available;
 *  - every size is recomputed from the geometry and compared, never trusted (one rule for
 *    encoder and parser: shadow__frame_sizes());
 *  - sums are done in uint64 from uint32 fields, so they cannot wrap;
 *  - the metadata checksum is checked before any frame entry is interpreted, so a flipped bit
 *    is reported as SHADOW_ECORRUPT rather than as some stranger error further on.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation */
#include <xxhash.h>
#if defined(__x86_64__)
/* libxxhash's run-time dispatch to its AVX2/AVX-512 code: the same hash, 4x faster than the
 * baseline build's (64 KiB: 71 vs 17 GB/s here). Every frame is checksummed on decode. */
#include <xxh_x86dispatch.h>
#endif

#include "format/chunk.h"
#include "quant/quant.h"

SHADOW_STATIC_ASSERT(SHADOW_CHUNK_HEADER_NBYTES == CHUNK_OFF_CHECKSUM + 8, "header layout");

uint64_t shadow__raw_checksum(const void *raw, size_t nbytes)
{
	return XXH3_64bits(raw, nbytes);
}

/* XXH3-64 of meta[0 .. meta_nbytes) with the checksum field read as zero. */
static uint64_t meta_checksum(const uint8_t *meta, uint32_t meta_nbytes)
{
	static const uint8_t zero[8];
	XXH3_state_t state;

	XXH3_64bits_reset(&state);
	XXH3_64bits_update(&state, meta, CHUNK_OFF_CHECKSUM);
	XXH3_64bits_update(&state, zero, sizeof(zero));
	XXH3_64bits_update(&state, meta + SHADOW_CHUNK_HEADER_NBYTES,
			   meta_nbytes - SHADOW_CHUNK_HEADER_NBYTES);
	return XXH3_64bits_digest(&state);
}

int shadow__frame_sizes(const struct shadow_kv_geometry *geom, uint32_t n_tokens,
			const struct shadow__frame_entry *e, uint32_t *raw_nbytes_ret,
			uint32_t *params_nbytes_ret)
{
	uint64_t elem = shadow_dtype_nbytes(geom->dtype);
	uint64_t n = (uint64_t)n_tokens * geom->n_kv_heads * geom->head_dim;
	uint64_t raw, params = 0;
	bool grouped = e->quant == SHADOW_QUANT_UNIFORM || e->quant == SHADOW_QUANT_ECSQ ||
		       e->quant == SHADOW_QUANT_PCA;

	if (!grouped && (e->flags != 0 || e->group_tokens != 0 || e->group_channels != 0))
		return SHADOW_ECORRUPT;
	if (grouped) {
		if (geom->dtype != SHADOW_DTYPE_BF16 && geom->dtype != SHADOW_DTYPE_FP16)
			return SHADOW_ECORRUPT;
		if (e->group_tokens == 0 || e->group_tokens > n_tokens || e->group_channels == 0 ||
		    geom->head_dim % e->group_channels != 0)
			return SHADOW_ECORRUPT;
		struct shadow__quant_params p = {
			.n_tokens = n_tokens,
			.n_heads = geom->n_kv_heads,
			.head_dim = geom->head_dim,
			.bits = 8,
			.group_tokens = e->group_tokens,
			.group_channels = e->group_channels,
		};
		params = 4 * (uint64_t)shadow__quant_n_groups(&p);
		if (params == 0)
			return SHADOW_ECORRUPT;
	}
	switch (e->quant) {
	case SHADOW_QUANT_NONE:
		if (e->bits != 8 * elem)
			return SHADOW_ECORRUPT;
		raw = n * elem;
		break;
	case SHADOW_QUANT_PLANES:
		if (elem != 2 || e->bits != 16)
			return SHADOW_ECORRUPT;
		raw = n * elem;
		break;
	case SHADOW_QUANT_UNIFORM:
		if (e->bits < 2 || e->bits > 8 || (e->flags & ~SHADOW_CHUNK_FLAG_PACKED) != 0)
			return SHADOW_ECORRUPT;
		/* Packed rows must start on a byte: the decoder unpacks row by row. */
		if ((e->flags & SHADOW_CHUNK_FLAG_PACKED) && (geom->head_dim * e->bits) % 8 != 0)
			return SHADOW_ECORRUPT;
		raw = e->flags & SHADOW_CHUNK_FLAG_PACKED ? (n * e->bits + 7) / 8 : n;
		break;
	case SHADOW_QUANT_ECSQ:
		if (e->bits != 16 || e->flags != 0)
			return SHADOW_ECORRUPT;
		raw = 2 * n; /* low-byte plane, then high-byte plane */
		break;
	case SHADOW_QUANT_PCA:
		/* One step per head over the chunk, then the transform's id. */
		if (e->bits != 16 || e->flags != 0 || e->group_tokens != n_tokens ||
		    e->group_channels != geom->head_dim)
			return SHADOW_ECORRUPT;
		raw = 2 * n;
		params += 8;
		break;
	default:
		return SHADOW_ECORRUPT;
	}
	if (raw > UINT32_MAX || params > UINT32_MAX)
		return SHADOW_ECORRUPT;
	*raw_nbytes_ret = (uint32_t)raw;
	*params_nbytes_ret = (uint32_t)params;
	return 0;
}

void shadow__frame_entry_read(const struct shadow_chunk_view *view, uint32_t i,
			      struct shadow__frame_entry *e)
{
	const uint8_t *p = view->base + SHADOW_CHUNK_HEADER_NBYTES + (size_t)i * SHADOW_CHUNK_ENTRY_NBYTES;

	e->payload_offset = shadow__load_le64(p + 0);
	e->payload_nbytes = shadow__load_le32(p + 8);
	e->raw_nbytes = shadow__load_le32(p + 12);
	e->params_offset = shadow__load_le32(p + 16);
	e->params_nbytes = shadow__load_le32(p + 20);
	e->quant = p[24];
	e->bits = p[25];
	e->codec = p[26];
	e->flags = p[27];
	e->group_tokens = shadow__load_le16(p + 28);
	e->group_channels = shadow__load_le16(p + 30);
	e->raw_checksum = shadow__load_le64(p + 32);
}

void shadow__frame_entry_write(uint8_t *base, uint32_t i, const struct shadow__frame_entry *e)
{
	uint8_t *p = base + SHADOW_CHUNK_HEADER_NBYTES + (size_t)i * SHADOW_CHUNK_ENTRY_NBYTES;

	shadow__store_le64(p + 0, e->payload_offset);
	shadow__store_le32(p + 8, e->payload_nbytes);
	shadow__store_le32(p + 12, e->raw_nbytes);
	shadow__store_le32(p + 16, e->params_offset);
	shadow__store_le32(p + 20, e->params_nbytes);
	p[24] = e->quant;
	p[25] = e->bits;
	p[26] = e->codec;
	p[27] = e->flags;
	shadow__store_le16(p + 28, e->group_tokens);
	shadow__store_le16(p + 30, e->group_channels);
	shadow__store_le64(p + 32, e->raw_checksum);
}

void shadow__chunk_seal(uint8_t *base, const struct shadow_chunk_view *f)
{
	shadow__store_le32(base + CHUNK_OFF_MAGIC, SHADOW_CHUNK_MAGIC);
	shadow__store_le16(base + CHUNK_OFF_VERSION, SHADOW_CHUNK_VERSION);
	shadow__store_le16(base + CHUNK_OFF_HEADER_NBYTES, SHADOW_CHUNK_HEADER_NBYTES);
	shadow__store_le32(base + CHUNK_OFF_META_NBYTES, f->meta_nbytes);
	shadow__store_le32(base + CHUNK_OFF_FLAGS, 0);
	shadow__store_le64(base + CHUNK_OFF_TOTAL_NBYTES, f->total_nbytes);
	memcpy(base + CHUNK_OFF_KEY, f->key.bytes, SHADOW_KEY_NBYTES);
	shadow__store_le32(base + CHUNK_OFF_N_LAYERS, f->geom.n_layers);
	shadow__store_le32(base + CHUNK_OFF_N_KV_HEADS, f->geom.n_kv_heads);
	shadow__store_le32(base + CHUNK_OFF_HEAD_DIM, f->geom.head_dim);
	shadow__store_le32(base + CHUNK_OFF_DTYPE, f->geom.dtype);
	shadow__store_le32(base + CHUNK_OFF_CHUNK_TOKENS, f->geom.chunk_tokens);
	shadow__store_le32(base + CHUNK_OFF_N_TOKENS, f->n_tokens);
	shadow__store_le32(base + CHUNK_OFF_N_FRAMES, f->n_frames);
	shadow__store_le32(base + CHUNK_OFF_CHUNK_INDEX, f->chunk_index);
	shadow__store_le64(base + CHUNK_OFF_CHECKSUM, meta_checksum(base, f->meta_nbytes));
}

int shadow_chunk_peek(const void *buf, size_t avail_nbytes, uint32_t *meta_nbytes_ret,
		      uint64_t *total_nbytes_ret)
{
	const uint8_t *p = buf;

	if (buf == NULL || meta_nbytes_ret == NULL || total_nbytes_ret == NULL)
		return -EINVAL;
	if (avail_nbytes < SHADOW_CHUNK_HEADER_NBYTES)
		return SHADOW_ETRUNCATED;
	if (shadow__load_le32(p + CHUNK_OFF_MAGIC) != SHADOW_CHUNK_MAGIC)
		return SHADOW_ECORRUPT;
	if (shadow__load_le16(p + CHUNK_OFF_VERSION) != SHADOW_CHUNK_VERSION)
		return SHADOW_EVERSION;
	uint32_t meta = shadow__load_le32(p + CHUNK_OFF_META_NBYTES);
	uint64_t total = shadow__load_le64(p + CHUNK_OFF_TOTAL_NBYTES);
	if (shadow__load_le16(p + CHUNK_OFF_HEADER_NBYTES) != SHADOW_CHUNK_HEADER_NBYTES ||
	    meta < SHADOW_CHUNK_HEADER_NBYTES || meta > SHADOW_CHUNK_META_MAX || total < meta)
		return SHADOW_ECORRUPT;
	*meta_nbytes_ret = meta;
	*total_nbytes_ret = total;
	return 0;
}

/* The geometry fields of the header, checked for range. */
static int parse_geometry(const uint8_t *p, struct shadow_kv_geometry *g, uint32_t *n_tokens,
			  uint32_t *n_frames)
{
	g->n_layers = shadow__load_le32(p + CHUNK_OFF_N_LAYERS);
	g->n_kv_heads = shadow__load_le32(p + CHUNK_OFF_N_KV_HEADS);
	g->head_dim = shadow__load_le32(p + CHUNK_OFF_HEAD_DIM);
	g->dtype = shadow__load_le32(p + CHUNK_OFF_DTYPE);
	g->chunk_tokens = shadow__load_le32(p + CHUNK_OFF_CHUNK_TOKENS);
	/* A container knows no block size; 1 divides every chunk size, for validation. */
	g->block_tokens = 1;
	*n_tokens = shadow__load_le32(p + CHUNK_OFF_N_TOKENS);
	*n_frames = shadow__load_le32(p + CHUNK_OFF_N_FRAMES);
	if (shadow_geometry_validate(g) != 0)
		return SHADOW_ECORRUPT;
	/* v1 stores whole chunks only: keys exist only for full chunks (docs/keys.md). */
	if (*n_tokens != g->chunk_tokens || *n_frames != 2 * g->n_layers)
		return SHADOW_ECORRUPT;
	if (shadow__load_le32(p + CHUNK_OFF_FLAGS) != 0)
		return SHADOW_ECORRUPT;
	return 0;
}

/* Check frame i's entry against the geometry and the running payload offset. */
static int check_entry(const struct shadow_chunk_view *v, uint32_t i, uint64_t *next_payload)
{
	struct shadow__frame_entry e;
	uint32_t raw, params;
	uint64_t table_end = SHADOW_CHUNK_HEADER_NBYTES + (uint64_t)v->n_frames * SHADOW_CHUNK_ENTRY_NBYTES;

	shadow__frame_entry_read(v, i, &e);
	if (e.codec > SHADOW_CODEC_ZSTD)
		return SHADOW_ECORRUPT;
	if (shadow__frame_sizes(&v->geom, v->n_tokens, &e, &raw, &params) != 0)
		return SHADOW_ECORRUPT;
	if (e.raw_nbytes != raw || e.params_nbytes != params)
		return SHADOW_ECORRUPT;
	if (params != 0 && (e.params_offset < table_end ||
			    (uint64_t)e.params_offset + params > v->meta_nbytes))
		return SHADOW_ECORRUPT;
	if (e.codec == SHADOW_CODEC_NONE && e.payload_nbytes != raw)
		return SHADOW_ECORRUPT;
	if (e.payload_offset != *next_payload || e.payload_nbytes == 0)
		return SHADOW_ECORRUPT;
	*next_payload += e.payload_nbytes;
	return 0;
}

int shadow_chunk_parse(const void *buf, size_t avail_nbytes, const struct shadow_chunk_key *expect_key,
		       const struct shadow_kv_geometry *expect_geom, struct shadow_chunk_view *view_ret)
{
	struct shadow_chunk_view v;
	uint64_t next_payload;
	int err;

	if (view_ret == NULL)
		return -EINVAL;
	err = shadow_chunk_peek(buf, avail_nbytes, &v.meta_nbytes, &v.total_nbytes);
	if (err != 0)
		return err;
	if (avail_nbytes < v.meta_nbytes)
		return SHADOW_ETRUNCATED;
	v.base = buf;
	if (meta_checksum(v.base, v.meta_nbytes) != shadow__load_le64(v.base + CHUNK_OFF_CHECKSUM))
		return SHADOW_ECORRUPT;
	err = parse_geometry(v.base, &v.geom, &v.n_tokens, &v.n_frames);
	if (err != 0)
		return err;
	if (SHADOW_CHUNK_HEADER_NBYTES + (uint64_t)v.n_frames * SHADOW_CHUNK_ENTRY_NBYTES > v.meta_nbytes)
		return SHADOW_ECORRUPT;
	memcpy(v.key.bytes, v.base + CHUNK_OFF_KEY, SHADOW_KEY_NBYTES);
	v.chunk_index = shadow__load_le32(v.base + CHUNK_OFF_CHUNK_INDEX);

	next_payload = v.meta_nbytes;
	for (uint32_t i = 0; i < v.n_frames; i++) {
		err = check_entry(&v, i, &next_payload);
		if (err != 0)
			return err;
	}
	if (next_payload != v.total_nbytes)
		return SHADOW_ECORRUPT;

	/* The container is well-formed; now is it the one the caller asked for? */
	if (expect_key != NULL && memcmp(expect_key->bytes, v.key.bytes, SHADOW_KEY_NBYTES) != 0)
		return SHADOW_EKEYMISMATCH;
	if (expect_geom != NULL &&
	    (expect_geom->n_layers != v.geom.n_layers || expect_geom->n_kv_heads != v.geom.n_kv_heads ||
	     expect_geom->head_dim != v.geom.head_dim || expect_geom->dtype != v.geom.dtype ||
	     expect_geom->chunk_tokens != v.geom.chunk_tokens))
		return SHADOW_EGEOMETRY;
	v.geom.block_tokens = 0;
	*view_ret = v;
	return 0;
}

int shadow_chunk_frame_info(const struct shadow_chunk_view *view, uint32_t frame,
			    struct shadow_frame_info *info_ret)
{
	struct shadow__frame_entry e;

	if (view == NULL || info_ret == NULL || frame >= view->n_frames)
		return -EINVAL;
	shadow__frame_entry_read(view, frame, &e);
	info_ret->layer = frame / 2;
	info_ret->kind = frame % 2;
	info_ret->quant = e.quant;
	info_ret->bits = e.bits;
	info_ret->codec = e.codec;
	info_ret->payload_offset = e.payload_offset;
	info_ret->payload_nbytes = e.payload_nbytes;
	info_ret->raw_nbytes = e.raw_nbytes;
	info_ret->decoded_nbytes = (uint64_t)view->n_tokens * view->geom.n_kv_heads *
				   view->geom.head_dim * shadow_dtype_nbytes(view->geom.dtype);
	info_ret->raw_checksum = e.raw_checksum;
	return 0;
}

static const char *quant_name(uint32_t q)
{
	static const char *const names[] = { "none", "planes", "uniform", "ecsq", "pca" };
	return q < SHADOW_ARRAY_SIZE(names) ? names[q] : "?";
}

static const char *codec_name(uint32_t c)
{
	static const char *const names[] = { "none", "deflate", "zstd" };
	return c < SHADOW_ARRAY_SIZE(names) ? names[c] : "?";
}

int shadow_chunk_describe(const void *buf, size_t nbytes, char *out, size_t out_nbytes)
{
	struct shadow_chunk_view v;
	char key[2 * SHADOW_KEY_NBYTES + 1];
	size_t len = 0;
	int err;

	if (out == NULL || out_nbytes == 0)
		return -EINVAL;
	err = shadow_chunk_parse(buf, nbytes, NULL, NULL, &v);
	if (err != 0)
		return err;
	for (unsigned i = 0; i < SHADOW_KEY_NBYTES; i++)
		snprintf(key + 2 * i, 3, "%02x", v.key.bytes[i]);

#define DESCRIBE(...)                                                                  \
	do {                                                                           \
		int n_ = snprintf(out + len, out_nbytes - len, __VA_ARGS__);           \
		if (n_ < 0 || (size_t)n_ >= out_nbytes - len)                          \
			return -ENOBUFS;                                               \
		len += (size_t)n_;                                                     \
	} while (0)

	DESCRIBE("chunk v%u key %s index %u\n", SHADOW_CHUNK_VERSION, key, v.chunk_index);
	DESCRIBE("geometry: %u layers, %u kv heads, head_dim %u, %s, %u tokens\n", v.geom.n_layers,
		 v.geom.n_kv_heads, v.geom.head_dim, shadow_dtype_name(v.geom.dtype), v.n_tokens);
	DESCRIBE("size: %llu bytes (metadata %u), %u frames\n", (unsigned long long)v.total_nbytes,
		 v.meta_nbytes, v.n_frames);
	for (uint32_t i = 0; i < v.n_frames; i++) {
		struct shadow__frame_entry e;
		shadow__frame_entry_read(&v, i, &e);
		DESCRIBE("frame %3u  layer %3u %c  %-7s %2u bits  group %3ux%-3u%s  %-7s "
			 "payload %8u @%-9llu raw %8u  params %6u  xxh3 %016llx\n",
			 i, i / 2, i % 2 ? 'V' : 'K', quant_name(e.quant), e.bits, e.group_tokens,
			 e.group_channels,
			 e.flags & SHADOW_CHUNK_FLAG_PACKED ? " packed" : "", codec_name(e.codec),
			 e.payload_nbytes, (unsigned long long)e.payload_offset, e.raw_nbytes,
			 e.params_nbytes, (unsigned long long)e.raw_checksum);
	}
#undef DESCRIBE
	return (int)len;
}
