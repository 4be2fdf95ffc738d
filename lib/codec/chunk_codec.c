/*
 * chunk_codec.c - encode a chunk of paged KV into a container, and decode one frame of a
 * container into a staging image laid out like its destination.
 *
 * DESIGN
 * A struct shadow_codec belongs to one thread at a time and owns everything a frame needs:
 * the lossless library contexts and scratch buffers sized for the largest frame of its
 * geometry, allocated once by shadow_codec_create() (the encoder's extra scratch on its first
 * encode). Decoding a frame therefore allocates nothing, takes no lock and makes no syscall.
 *
 * Decode data flow, per frame (the data plane's hot path):
 *
 *   payload (in the fetch buffer) --lossless--> raw (scratch) --XXH3 check--> dequantize
 *       --> staging image (the slot the copy stage reads, in the destination's layout)
 *
 * With codec "none" the lossless step is skipped and the payload itself is the raw bytes, so
 * a byte is still written on the host only once after it arrives. Nothing reaches the staging
 * image before the checksum has matched.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/lossless.h"
#include "core/alloc.h"
#include "format/chunk.h"
#include "kv/layout.h"
#include "quant/pca.h"
#include "quant/quant.h"

struct shadow_codec {
	struct shadow_kv_geometry geom;
	size_t elem;          /* bytes per element of the geometry's dtype */
	size_t frame_elems;   /* chunk_tokens * n_kv_heads * head_dim */
	struct shadow__lossless_ctx *lossless;
	const struct shadow__dequant_kernels *kernels;
	const struct shadow__dequant_kernels *kernels_tame; /* for frames of tame parameters */
	const struct shadow__pca_kernel *pca;
	const struct shadow_transform *transform; /* for SHADOW_QUANT_PCA frames; not owned */
	uint64_t transform_id;
	/* decoder scratch */
	uint8_t *raw;         /* frame_elems * elem: the largest raw frame */
	float *scale, *bias;  /* frame_elems each: one group per element at the finest grouping */
	uint8_t *row;         /* head_dim: one unpacked row of symbols */
	float *rowf;          /* head_dim: one PCA key row before its rotation */
	float *rope_cs;       /* chunk_tokens x head_dim: cos/sin table of rope_position */
	uint64_t rope_position, rope_id; /* what rope_cs holds (rope_id 0: nothing) */
	/* encoder scratch, allocated on first encode */
	void *canon;          /* frame_elems * elem: the frame gathered in canonical order */
	float *xf;            /* frame_elems floats */
	uint8_t *sym;         /* frame_elems symbols (or the two planes of a lossless frame) */
};

int shadow_codec_create(const struct shadow_kv_geometry *geom, struct shadow_codec **codec_ret)
{
	struct shadow_codec *c;
	int err;

	if (geom == NULL || codec_ret == NULL)
		return -EINVAL;
	err = shadow_geometry_validate(geom);
	if (err != 0)
		return err;
	if (geom->dtype != SHADOW_DTYPE_BF16 && geom->dtype != SHADOW_DTYPE_FP16)
		return SHADOW_EUNSUPPORTED;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->geom = *geom;
	c->elem = shadow_dtype_nbytes(geom->dtype);
	c->frame_elems = (size_t)geom->chunk_tokens * geom->n_kv_heads * geom->head_dim;
	c->kernels = shadow__dequant_kernels();
	c->kernels_tame = shadow__dequant_kernels_tame();
	c->pca = shadow__pca_kernel();
	err = shadow__lossless_ctx_create(&c->lossless);
	if (err != 0)
		goto fail;
	c->raw = shadow__alloc_aligned(c->frame_elems * c->elem, SHADOW_CACHE_LINE);
	c->scale = shadow__alloc_aligned(c->frame_elems * sizeof(float), SHADOW_CACHE_LINE);
	c->bias = shadow__alloc_aligned(c->frame_elems * sizeof(float), SHADOW_CACHE_LINE);
	c->row = shadow__alloc_aligned(geom->head_dim, SHADOW_CACHE_LINE);
	c->rowf = shadow__alloc_aligned(geom->head_dim * sizeof(float), SHADOW_CACHE_LINE);
	c->rope_cs = shadow__alloc_aligned((size_t)geom->chunk_tokens * geom->head_dim *
					   sizeof(float), SHADOW_CACHE_LINE);
	if (c->raw == NULL || c->scale == NULL || c->bias == NULL || c->row == NULL ||
	    c->rowf == NULL || c->rope_cs == NULL) {
		err = -ENOMEM;
		goto fail;
	}
	*codec_ret = c;
	return 0;
fail:
	shadow_codec_free(c);
	return err;
}

void shadow_codec_free(struct shadow_codec *c)
{
	if (c == NULL)
		return;
	shadow__lossless_ctx_free(c->lossless);
	shadow__free_aligned(c->raw);
	shadow__free_aligned(c->scale);
	shadow__free_aligned(c->bias);
	shadow__free_aligned(c->row);
	shadow__free_aligned(c->rowf);
	shadow__free_aligned(c->rope_cs);
	shadow__free_aligned(c->canon);
	shadow__free_aligned(c->xf);
	shadow__free_aligned(c->sym);
	free(c);
}

int shadow_codec_set_transform(struct shadow_codec *c, const struct shadow_transform *t)
{
	uint32_t n_layers, n_kv_heads, head_dim;

	if (c == NULL)
		return -EINVAL;
	if (t != NULL) {
		shadow__transform_shape(t, &n_layers, &n_kv_heads, &head_dim);
		if (n_layers != c->geom.n_layers || n_kv_heads != c->geom.n_kv_heads ||
		    head_dim != c->geom.head_dim)
			return SHADOW_EGEOMETRY;
	}
	c->transform = t;
	c->transform_id = t != NULL ? shadow_transform_id(t) : 0;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoder                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/*
 * How one frame will be written: its table entry as far as the options decide it (quant,
 * bits, flags, groups, codec, raw and params sizes); offsets, payload size and checksum are
 * filled in as it is written.
 */
static uint32_t group_or(uint32_t asked, uint32_t dflt, uint32_t max)
{
	return asked == 0 ? dflt : SHADOW_MIN(asked, max);
}

static int plan_frame(const struct shadow_codec *c, const struct shadow_codec_options *o,
		      uint32_t frame, struct shadow__frame_entry *e)
{
	const struct shadow_kv_geometry *g = &c->geom;
	uint32_t layer = frame / 2, kind = frame % 2, k_bits, v_bits, gt, gc;

	memset(e, 0, sizeof(*e));
	e->quant = (uint8_t)o->quant;
	e->codec = (uint8_t)o->codec;
	e->bits = (uint8_t)(8 * c->elem);
	if (o->quant == SHADOW_QUANT_PCA) {
		/* One step per head over the chunk (the format fixes it). */
		e->group_tokens = (uint16_t)g->chunk_tokens;
		e->group_channels = (uint16_t)g->head_dim;
		e->bits = 16;
	} else if (o->quant == SHADOW_QUANT_UNIFORM || o->quant == SHADOW_QUANT_ECSQ) {
		/* Defaults: keys per channel over the chunk (KIVI); values per token (uniform) or
		 * per head over the chunk (ECSQ: with no clipping, one step serves every token). */
		if (kind == SHADOW_KV_K) {
			gt = group_or(o->k_group_tokens, g->chunk_tokens, g->chunk_tokens);
			gc = group_or(o->k_group_channels, 1, g->head_dim);
		} else {
			gt = group_or(o->v_group_tokens, o->quant == SHADOW_QUANT_ECSQ ? g->chunk_tokens : 1,
				      g->chunk_tokens);
			gc = group_or(o->v_group_channels, g->head_dim, g->head_dim);
		}
		if (gt > 65535 || gc > 65535)
			return -EINVAL;
		e->group_tokens = (uint16_t)gt;
		e->group_channels = (uint16_t)gc;
	}
	if (o->quant == SHADOW_QUANT_UNIFORM) {
		shadow__codec_layer_bits(o, layer, &k_bits, &v_bits);
		e->bits = (uint8_t)(kind == SHADOW_KV_K ? k_bits : v_bits);
		/* Without an entropy stage, symbols below 8 bits are bit-packed, provided every
		 * row starts on a byte (head_dim * bits a multiple of 8: any head_dim of 8k). */
		if (o->codec == SHADOW_CODEC_NONE && e->bits < 8 && (g->head_dim * e->bits) % 8 == 0)
			e->flags = SHADOW_CHUNK_FLAG_PACKED;
	}
	if (o->quant == SHADOW_QUANT_ECSQ)
		e->bits = 16;
	if (shadow__frame_sizes(g, g->chunk_tokens, e, &e->raw_nbytes, &e->params_nbytes) != 0)
		return -EINVAL; /* e.g. a channel group that does not divide head_dim */
	return 0;
}

static size_t align8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

uint64_t shadow_chunk_encode_bound(const struct shadow_codec *c,
				   const struct shadow_codec_options *opts)
{
	struct shadow_codec_options o;
	struct shadow__frame_entry p;
	uint64_t meta, total = 0;

	if (c == NULL || shadow__codec_options_load(opts, &o) != 0)
		return 0;
	meta = SHADOW_CHUNK_HEADER_NBYTES + (uint64_t)2 * c->geom.n_layers * SHADOW_CHUNK_ENTRY_NBYTES;
	for (uint32_t f = 0; f < 2 * c->geom.n_layers; f++) {
		if (plan_frame(c, &o, f, &p) != 0)
			return 0;
		meta += p.params_nbytes;
		/* A frame that would not shrink is stored raw, so raw size bounds every payload. */
		total += p.raw_nbytes;
	}
	return align8(meta) + total;
}

static int ensure_encoder_scratch(struct shadow_codec *c)
{
	if (c->canon != NULL)
		return 0;
	c->canon = shadow__alloc_aligned(c->frame_elems * c->elem, SHADOW_CACHE_LINE);
	c->xf = shadow__alloc_aligned(c->frame_elems * sizeof(float), SHADOW_CACHE_LINE);
	c->sym = shadow__alloc_aligned(c->frame_elems * c->elem, SHADOW_CACHE_LINE);
	if (c->canon == NULL || c->xf == NULL || c->sym == NULL) {
		shadow__free_aligned(c->canon);
		shadow__free_aligned(c->xf);
		shadow__free_aligned(c->sym);
		c->canon = c->xf = NULL;
		c->sym = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Gather frame (layer, kind) of the chunk into c->canon in canonical [token][head][dim]. */
static int gather_frame(struct shadow_codec *c, const uint8_t *region,
			const struct shadow_kv_layout *layout, const uint32_t *block_ids,
			uint32_t layer, uint32_t kind)
{
	const struct shadow_kv_geometry *g = &c->geom;
	size_t vec = (size_t)g->head_dim * c->elem;
	uint8_t *dst = c->canon;

	for (uint32_t t = 0; t < g->chunk_tokens; t++) {
		for (uint32_t h = 0; h < g->n_kv_heads; h++) {
			int64_t off = shadow_layout_offset(layout, g, layer, (enum shadow_kv_kind)kind,
							   block_ids[t / g->block_tokens],
							   t % g->block_tokens, h);
			if (off < 0)
				return -EINVAL;
			memcpy(dst, region + off, vec);
			dst += vec;
		}
	}
	return 0;
}

static float elem_to_float(const struct shadow_codec *c, const uint16_t *x, size_t i)
{
	return c->geom.dtype == SHADOW_DTYPE_BF16 ? shadow__bf16_to_float(x[i])
						  : shadow__fp16_to_float(x[i]);
}

/*
 * Build a frame's raw bytes from c->canon, writing uniform quantization parameters at
 * `params` in the container. *raw_ret points at the raw bytes (scratch owned by c).
 */
static int build_raw(struct shadow_codec *c, const struct shadow_codec_options *o,
		     const struct shadow__frame_entry *p, uint32_t layer, uint32_t kind,
		     uint64_t first_position, uint8_t *params, const uint8_t **raw_ret)
{
	const uint16_t *x = c->canon;
	size_t n = c->frame_elems;
	int err;

	switch (p->quant) {
	case SHADOW_QUANT_NONE:
		*raw_ret = c->canon;
		return 0;
	case SHADOW_QUANT_PLANES:
		shadow__split_planes(x, n, c->sym, c->sym + n);
		*raw_ret = c->sym;
		return 0;
	default:
		break;
	}
	for (size_t i = 0; i < n; i++)
		c->xf[i] = elem_to_float(c, x, i);
	struct shadow__quant_params qp = {
		.n_tokens = c->geom.chunk_tokens,
		.n_heads = c->geom.n_kv_heads,
		.head_dim = c->geom.head_dim,
		.bits = p->quant == SHADOW_QUANT_UNIFORM ? p->bits : 8,
		.group_tokens = p->group_tokens,
		.group_channels = p->group_channels,
		.scale_rule = o->scale_rule,
		.step_mul = o->step_mul,
	};
	/* Parameters come back in native order; the decoder arrays (4 bytes per element, at most
	 * 4 bytes of parameters per element) hold them until they are stored little-endian. */
	uint16_t *par = (uint16_t *)(void *)c->scale;
	if (p->quant == SHADOW_QUANT_PCA) {
		uint32_t heads = c->geom.n_kv_heads;
		err = shadow__pca_quantize_frame(c->transform, layer, kind, first_position,
						 c->geom.chunk_tokens, c->xf, o->step_mul, c->sym,
						 c->sym + n, par);
		if (err != 0)
			return err;
		/* scale[h] = the step, bias[h] = 0, then the transform's id */
		memset(par + heads, 0, heads * sizeof(*par));
		for (uint32_t i = 0; i < 2 * heads; i++)
			shadow__store_le16(params + 2 * i, par[i]);
		shadow__store_le64(params + 4 * heads, c->transform_id);
		*raw_ret = c->sym;
		return 0;
	}
	if (p->quant == SHADOW_QUANT_ECSQ)
		err = shadow__quantize_frame_ecsq(&qp, c->xf, c->sym, c->sym + n, par);
	else
		err = shadow__quantize_frame(&qp, c->xf, c->sym, par);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < p->params_nbytes / 2; i++)
		shadow__store_le16(params + 2 * i, par[i]);
	if (p->flags & SHADOW_CHUNK_FLAG_PACKED) {
		shadow__pack_bits(c->sym, n, p->bits, c->raw);
		*raw_ret = c->raw;
	} else {
		*raw_ret = c->sym;
	}
	return 0;
}

/*
 * The lossless stage of one frame. Byte planes (planes, ECSQ) are compressed as two streams,
 * one per plane, behind a u32 size of the first: a Huffman table per plane (zstd-1 on the
 * shared dumps, planes: 1.51-1.54x as two streams, 1.38-1.40x as one).
 */
static bool two_streams(uint32_t quant)
{
	return quant == SHADOW_QUANT_PLANES || quant == SHADOW_QUANT_ECSQ || quant == SHADOW_QUANT_PCA;
}

static int compress_raw(struct shadow_codec *c, const struct shadow__frame_entry *p, int level,
			const uint8_t *raw, uint8_t *dst, size_t dst_cap, size_t *nbytes_ret)
{
	enum shadow__lossless codec = (enum shadow__lossless)p->codec;
	size_t hi_nbytes, lo_nbytes, half = p->raw_nbytes / 2;
	int err;

	if (!two_streams(p->quant) || codec == SHADOW_LOSSLESS_NONE)
		return shadow__lossless_compress(c->lossless, codec, level, raw, p->raw_nbytes, dst,
						 dst_cap, nbytes_ret);
	if (dst_cap < 4)
		return -ENOBUFS;
	err = shadow__lossless_compress(c->lossless, codec, level, raw, half, dst + 4, dst_cap - 4,
					&hi_nbytes);
	if (err == 0)
		err = shadow__lossless_compress(c->lossless, codec, level, raw + half, half,
						dst + 4 + hi_nbytes, dst_cap - 4 - hi_nbytes,
						&lo_nbytes);
	if (err != 0)
		return err;
	shadow__store_le32(dst, (uint32_t)hi_nbytes);
	*nbytes_ret = 4 + hi_nbytes + lo_nbytes;
	return 0;
}

/* The inverse of compress_raw() into c->raw. Returns 0 or SHADOW_ECORRUPT. */
static int decompress_raw(struct shadow_codec *c, const struct shadow__frame_entry *e,
			  const uint8_t *payload)
{
	enum shadow__lossless codec = (enum shadow__lossless)e->codec;
	size_t half = e->raw_nbytes / 2;

	if (!two_streams(e->quant))
		return shadow__lossless_decompress(c->lossless, codec, payload, e->payload_nbytes,
						   c->raw, e->raw_nbytes) == 0 ? 0 : SHADOW_ECORRUPT;
	if (e->payload_nbytes < 4)
		return SHADOW_ECORRUPT;
	uint64_t hi_nbytes = shadow__load_le32(payload);
	if (hi_nbytes > e->payload_nbytes - 4u)
		return SHADOW_ECORRUPT;
	if (shadow__lossless_decompress(c->lossless, codec, payload + 4, hi_nbytes, c->raw, half) != 0 ||
	    shadow__lossless_decompress(c->lossless, codec, payload + 4 + hi_nbytes,
					e->payload_nbytes - 4 - hi_nbytes, c->raw + half, half) != 0)
		return SHADOW_ECORRUPT;
	return 0;
}

int shadow_chunk_encode(struct shadow_codec *c, const struct shadow_codec_options *opts,
			const struct shadow_chunk_key *key, uint32_t chunk_index, const void *region,
			const struct shadow_kv_layout *layout, const uint32_t *block_ids, void *dst,
			size_t dst_cap, size_t *nbytes_ret)
{
	struct shadow_codec_options o;
	struct shadow_chunk_view fields;
	uint8_t *out = dst;
	uint32_t n_frames, n_block_ids;
	size_t meta, params_at, payload_at;
	int err;

	if (c == NULL || key == NULL || region == NULL || layout == NULL || block_ids == NULL ||
	    dst == NULL || nbytes_ret == NULL)
		return -EINVAL;
	if (shadow__codec_options_load(opts, &o) != 0)
		return -EINVAL;
	if (o.quant == SHADOW_QUANT_PCA && c->transform == NULL)
		return -EINVAL;
	err = shadow_layout_validate(layout, &c->geom);
	if (err != 0)
		return err;
	n_block_ids = c->geom.chunk_tokens / c->geom.block_tokens;
	for (uint32_t i = 0; i < n_block_ids; i++)
		if (block_ids[i] >= layout->n_blocks)
			return -EINVAL;
	err = ensure_encoder_scratch(c);
	if (err != 0)
		return err;

	/* Metadata size first: the parameters sit between the frame table and the payloads. */
	n_frames = 2 * c->geom.n_layers;
	meta = SHADOW_CHUNK_HEADER_NBYTES + (size_t)n_frames * SHADOW_CHUNK_ENTRY_NBYTES;
	params_at = meta;
	for (uint32_t f = 0; f < n_frames; f++) {
		struct shadow__frame_entry p;
		err = plan_frame(c, &o, f, &p);
		if (err != 0)
			return err;
		meta += p.params_nbytes;
	}
	meta = align8(meta);
	if (meta > SHADOW_CHUNK_META_MAX)
		return -EINVAL;
	if (dst_cap < meta)
		return -ENOBUFS;
	memset(out, 0, meta);

	payload_at = meta;
	for (uint32_t f = 0; f < n_frames; f++) {
		struct shadow__frame_entry e;
		const uint8_t *raw;
		size_t payload_nbytes;

		plan_frame(c, &o, f, &e); /* succeeded above */
		err = gather_frame(c, region, layout, block_ids, f / 2, f % 2);
		if (err == 0)
			err = build_raw(c, &o, &e, f / 2, f % 2,
					(uint64_t)chunk_index * c->geom.chunk_tokens, out + params_at,
					&raw);
		if (err != 0)
			return err;
		err = compress_raw(c, &e, o.level, raw, out + payload_at, dst_cap - payload_at,
				   &payload_nbytes);
		/* A frame that does not shrink (or does not fit compressed) is stored raw. */
		if (e.codec != SHADOW_CODEC_NONE &&
		    ((err == 0 && payload_nbytes >= e.raw_nbytes) || err == -ENOBUFS)) {
			e.codec = SHADOW_CODEC_NONE;
			err = shadow__lossless_compress(c->lossless, SHADOW_LOSSLESS_NONE, 0, raw,
							e.raw_nbytes, out + payload_at,
							dst_cap - payload_at, &payload_nbytes);
		}
		if (err != 0)
			return err;
		e.payload_offset = payload_at;
		e.payload_nbytes = (uint32_t)payload_nbytes;
		e.params_offset = e.params_nbytes != 0 ? (uint32_t)params_at : 0;
		e.raw_checksum = shadow__raw_checksum(raw, e.raw_nbytes);
		shadow__frame_entry_write(out, f, &e);
		params_at += e.params_nbytes;
		payload_at += payload_nbytes;
	}

	memset(&fields, 0, sizeof(fields));
	fields.key = *key;
	fields.geom = c->geom;
	fields.n_tokens = c->geom.chunk_tokens;
	fields.chunk_index = chunk_index;
	fields.n_frames = n_frames;
	fields.meta_nbytes = (uint32_t)meta;
	fields.total_nbytes = payload_at;
	shadow__chunk_seal(out, &fields);
	*nbytes_ret = payload_at;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Decoder                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Raw bytes -> staging image, for each quantization. The raw bytes have been verified. */
static void unpack_none(const struct shadow_codec *c, const struct shadow__stage_map *m,
			const uint8_t *raw, uint8_t *stage)
{
	size_t vec = m->vec_nbytes;
	for (uint32_t t = 0; t < c->geom.chunk_tokens; t++)
		for (uint32_t h = 0; h < c->geom.n_kv_heads; h++, raw += vec)
			memcpy(stage + shadow__stage_map_offset(m, t, h), raw, vec);
}

static void unpack_planes(const struct shadow_codec *c, const struct shadow__stage_map *m,
			  const uint8_t *raw, uint8_t *stage)
{
	const uint8_t *hi = raw, *lo = raw + c->frame_elems;
	uint32_t d = c->geom.head_dim;
	for (uint32_t t = 0; t < c->geom.chunk_tokens; t++)
		for (uint32_t h = 0; h < c->geom.n_kv_heads; h++, hi += d, lo += d)
			c->kernels->merge_planes(hi, lo, stage + shadow__stage_map_offset(m, t, h), d);
}

/*
 * PCA frames: each (token, head) row of coefficient symbols goes through the inverse
 * transform of its (layer, kind, head) straight into the staging image.
 */
static int unpack_pca(struct shadow_codec *c, const struct shadow__stage_map *m,
		      const struct shadow__frame_entry *e, uint32_t layer, uint32_t kind,
		      uint64_t first_position, const uint8_t *params, const uint8_t *raw,
		      uint8_t *stage)
{
	enum shadow__out_dtype dt = (enum shadow__out_dtype)c->geom.dtype;
	uint32_t d = c->geom.head_dim, heads = c->geom.n_kv_heads;
	const uint8_t *hi_plane = raw + c->frame_elems;
	bool rope = kind == SHADOW_KV_K && shadow__transform_has_rope(c->transform);

	(void)e;
	/* Coded with another transform (or none here): undecodable, which the engine treats
	 * as a miss. */
	if (c->transform == NULL || shadow__load_le64(params + 4 * heads) != c->transform_id)
		return SHADOW_EUNSUPPORTED;
	for (uint32_t h = 0; h < heads; h++)
		c->scale[h] = shadow__bf16_to_float(shadow__load_le16(params + 2 * h));
	/* The rotation table of this chunk's positions: made once per chunk and transform, and
	 * kept for the chunk's other key frames. */
	if (rope && (c->rope_id != c->transform_id || c->rope_position != first_position)) {
		shadow__rope_table(c->transform, first_position, c->geom.chunk_tokens, c->rope_cs);
		c->rope_id = c->transform_id;
		c->rope_position = first_position;
	}
	for (uint32_t t = 0; t < c->geom.chunk_tokens; t++) {
		for (uint32_t h = 0; h < heads; h++) {
			size_t row = ((size_t)t * heads + h) * d;
			const float *mean = shadow__transform_mean(c->transform, layer, kind, h);
			const float *basis = shadow__transform_basis(c->transform, layer, kind, h);
			uint8_t *out = stage + shadow__stage_map_offset(m, t, h);

			if (!rope) {
				c->pca->row(raw + row, hi_plane + row, c->scale[h], mean, basis, out,
					    d, dt);
				continue;
			}
			c->pca->row(raw + row, hi_plane + row, c->scale[h], mean, basis, c->rowf, d,
				    SHADOW_OUT_F32);
			shadow__rope_apply_round(c->rowf, c->rope_cs + (size_t)t * d, out, d, dt);
		}
	}
	return 0;
}

/*
 * Per-channel parameters (group_channels 1: the vector kernels) as floats in c->scale and
 * c->bias. Returns whether all are tame (quant.h): then the faster tame kernels give the same
 * bytes. A hostile container with NaN or tiny parameters simply takes the general kernels.
 */
static bool load_params(struct shadow_codec *c, uint32_t n_groups, const uint8_t *params)
{
	bool tame = true;

	for (uint32_t i = 0; i < n_groups; i++) {
		uint16_t s = shadow__load_le16(params + 2 * i);
		uint16_t b = shadow__load_le16(params + 2 * (n_groups + i));
		c->scale[i] = shadow__bf16_to_float(s);
		c->bias[i] = shadow__bf16_to_float(b);
		if (!shadow__bf16_tame(s) || !shadow__bf16_tame(b))
			tame = false;
	}
	return tame;
}

/*
 * Uniform and ECSQ frames: one (token, head) row of head_dim symbols at a time, dequantized
 * straight into its place in the staging image. Groups are tiles of group_tokens x
 * group_channels ordered [token group][head][channel group]: per-channel groups use the vector
 * kernels (a scale per element, converted once per frame), wider ones the scalar kernels, one
 * call per group with its parameters read where they lie (values have a group per token and
 * head: converting them all first cost a quarter of int8's decode time).
 */
static void unpack_grouped(struct shadow_codec *c, const struct shadow__stage_map *m,
			   const struct shadow__frame_entry *e, const uint8_t *params,
			   const uint8_t *raw, uint8_t *stage)
{
	enum shadow__out_dtype dt = (enum shadow__out_dtype)c->geom.dtype;
	uint32_t d = c->geom.head_dim, heads = c->geom.n_kv_heads, gc = e->group_channels;
	uint32_t per_row = d / gc, n_groups = e->params_nbytes / 4;
	bool ecsq = e->quant == SHADOW_QUANT_ECSQ;
	bool packed = e->flags & SHADOW_CHUNK_FLAG_PACKED;
	size_t row_packed = (size_t)d * e->bits / 8; /* head_dim * bits is a multiple of 8 */
	const uint8_t *hi_plane = raw + c->frame_elems; /* ECSQ: high bytes after the low bytes */
	const struct shadow__dequant_kernels *kv = c->kernels;

	if (gc == 1 && load_params(c, n_groups, params))
		kv = c->kernels_tame;
	/*
	 * Per-channel uniform groups in a token-major image (NHD caches): the image is the frame
	 * in canonical order, so a whole token group is one rows_vec call, its parameters held in
	 * registers across its rows (int8 keys: 512 row calls per minillama frame become 1).
	 */
	if (gc == 1 && !ecsq && !packed && m->token_major) {
		size_t row_n = (size_t)heads * d;
		for (uint32_t t0 = 0; t0 < c->geom.chunk_tokens; t0 += e->group_tokens) {
			uint32_t rows = SHADOW_MIN(e->group_tokens, c->geom.chunk_tokens - t0);
			size_t g = (size_t)(t0 / e->group_tokens) * row_n;
			kv->rows_vec(raw + t0 * row_n, c->scale + g, c->bias + g,
				     stage + shadow__stage_map_offset(m, t0, 0), rows, row_n, dt);
		}
		return;
	}
	/* Per-token value groups (the default), token-major: one rows_scalar call per frame, the
	 * parameters read where they lie. */
	if (gc == d && e->group_tokens == 1 && !ecsq && !packed && m->token_major) {
		bool tame = true;
		for (uint32_t i = 0; i < 2 * n_groups; i++)
			tame &= shadow__bf16_tame(shadow__load_le16(params + 2 * i));
		(tame ? c->kernels_tame : c->kernels)
			->rows_scalar(raw, params, params + 2 * (size_t)n_groups, stage, n_groups, d,
				      dt);
		return;
	}
	for (uint32_t t = 0; t < c->geom.chunk_tokens; t++) {
		size_t group_row = (size_t)(t / e->group_tokens) * heads;
		for (uint32_t h = 0; h < heads; h++) {
			size_t row = (size_t)t * heads + h;
			size_t g = (group_row + h) * per_row;
			const uint8_t *q = raw + row * d, *hi = hi_plane + row * d;
			uint8_t *out = stage + shadow__stage_map_offset(m, t, h);

			if (packed) {
				c->kernels->unpack_bits(raw + row * row_packed, e->bits, c->row, d);
				q = c->row;
			}
			if (gc == 1) {
				if (ecsq)
					kv->row_vec_zz(q, hi, c->scale + g, c->bias + g, out, d, dt);
				else
					kv->row_vec(q, c->scale + g, c->bias + g, out, d, dt);
				continue;
			}
			for (uint32_t j = 0; j < per_row; j++) {
				size_t at = (size_t)j * gc;
				uint16_t sh = shadow__load_le16(params + 2 * (g + j));
				uint16_t bh = shadow__load_le16(params + 2 * (n_groups + g + j));
				float sf = shadow__bf16_to_float(sh), bf = shadow__bf16_to_float(bh);
				const struct shadow__dequant_kernels *k =
					shadow__bf16_tame(sh) && shadow__bf16_tame(bh) ? c->kernels_tame
										: c->kernels;
				uint8_t *o = out + at * c->elem;
				if (ecsq)
					k->row_scalar_zz(q + at, hi + at, sf, bf, o, gc, dt);
				else
					k->row_scalar(q + at, sf, bf, o, gc, dt);
			}
		}
	}
}

int shadow_chunk_decode_frame(struct shadow_codec *c, const struct shadow_chunk_view *view,
			      uint32_t frame, const struct shadow_kv_layout *layout, void *stage,
			      size_t stage_nbytes)
{
	const struct shadow_kv_geometry *g;
	struct shadow__stage_map m;
	struct shadow__frame_entry e;
	const uint8_t *raw;

	if (c == NULL || view == NULL || layout == NULL || stage == NULL || frame >= view->n_frames)
		return -EINVAL;
	g = &c->geom;
	if (view->geom.n_layers != g->n_layers || view->geom.n_kv_heads != g->n_kv_heads ||
	    view->geom.head_dim != g->head_dim || view->geom.dtype != g->dtype ||
	    view->geom.chunk_tokens != g->chunk_tokens)
		return -EINVAL;
	if (shadow__stage_map_init(layout, g, &m) != 0)
		return -EINVAL;
	if (stage_nbytes < (uint64_t)(g->chunk_tokens / g->block_tokens) * m.image_nbytes)
		return -EINVAL;

	shadow__frame_entry_read(view, frame, &e);
	raw = view->base + e.payload_offset;
	if (e.codec != SHADOW_CODEC_NONE) {
		/* raw_nbytes <= frame_elems * elem: shadow_chunk_parse() checked it against the
		 * geometry, which equals ours. */
		int err = decompress_raw(c, &e, raw);
		if (err != 0)
			return err;
		raw = c->raw;
	}
	if (shadow__raw_checksum(raw, e.raw_nbytes) != e.raw_checksum)
		return SHADOW_ECORRUPT;

	switch (e.quant) {
	case SHADOW_QUANT_NONE:
		unpack_none(c, &m, raw, stage);
		break;
	case SHADOW_QUANT_PLANES:
		unpack_planes(c, &m, raw, stage);
		break;
	case SHADOW_QUANT_PCA:
		return unpack_pca(c, &m, &e, frame / 2, frame % 2,
				  (uint64_t)view->chunk_index * g->chunk_tokens,
				  view->base + e.params_offset, raw, stage);
	default:
		unpack_grouped(c, &m, &e, view->base + e.params_offset, raw, stage);
		break;
	}
	return 0;
}
