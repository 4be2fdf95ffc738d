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
#include "quant/quant.h"

struct shadow_codec {
	struct shadow_kv_geometry geom;
	size_t elem;          /* bytes per element of the geometry's dtype */
	size_t frame_elems;   /* chunk_tokens * n_kv_heads * head_dim */
	struct shadow__lossless_ctx *lossless;
	const struct shadow__dequant_kernels *kernels;
	/* decoder scratch */
	uint8_t *raw;         /* frame_elems * elem: the largest raw frame */
	float *scale, *bias;  /* frame_elems each: one group per element at the finest grouping */
	uint8_t *row;         /* head_dim: one unpacked row of symbols */
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
	err = shadow__lossless_ctx_create(&c->lossless);
	if (err != 0)
		goto fail;
	c->raw = shadow__alloc_aligned(c->frame_elems * c->elem, SHADOW_CACHE_LINE);
	c->scale = shadow__alloc_aligned(c->frame_elems * sizeof(float), SHADOW_CACHE_LINE);
	c->bias = shadow__alloc_aligned(c->frame_elems * sizeof(float), SHADOW_CACHE_LINE);
	c->row = shadow__alloc_aligned(geom->head_dim, SHADOW_CACHE_LINE);
	if (c->raw == NULL || c->scale == NULL || c->bias == NULL || c->row == NULL) {
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
	shadow__free_aligned(c->canon);
	shadow__free_aligned(c->xf);
	shadow__free_aligned(c->sym);
	free(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Encoder                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* How one frame will be written. */
struct frame_plan {
	uint32_t quant, bits, flags, group, codec;
	uint32_t raw_nbytes, params_nbytes;
};

static int plan_frame(const struct shadow_codec *c, const struct shadow_codec_options *o,
		      uint32_t frame, struct frame_plan *p)
{
	uint32_t layer = frame / 2, kind = frame % 2, k_bits, v_bits;

	p->quant = o->quant;
	p->codec = o->codec;
	p->flags = 0;
	p->group = 0;
	p->bits = (uint32_t)(8 * c->elem);
	if (o->quant == SHADOW_QUANT_UNIFORM) {
		shadow__codec_layer_bits(o, layer, &k_bits, &v_bits);
		p->bits = kind == SHADOW_KV_K ? k_bits : v_bits;
		if (kind == SHADOW_KV_K)
			p->group = o->k_group_tokens != 0 ? SHADOW_MIN(o->k_group_tokens, c->geom.chunk_tokens)
							  : c->geom.chunk_tokens;
		else
			p->group = o->v_group_channels != 0 ? o->v_group_channels : c->geom.head_dim;
		/* Without an entropy stage, symbols below 8 bits are bit-packed, provided every
		 * row starts on a byte (head_dim * bits a multiple of 8: any head_dim of 8k). */
		if (o->codec == SHADOW_CODEC_NONE && p->bits < 8 && (c->geom.head_dim * p->bits) % 8 == 0)
			p->flags = SHADOW_CHUNK_FLAG_PACKED;
	}
	if (p->group > 65535)
		return -EINVAL;
	if (shadow__frame_sizes(&c->geom, c->geom.chunk_tokens, kind, p->quant, p->bits, p->flags,
				p->group, &p->raw_nbytes, &p->params_nbytes) != 0)
		return -EINVAL; /* e.g. a value group that does not divide head_dim */
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
	struct frame_plan p;
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
		     const struct frame_plan *p, uint32_t kind, uint8_t *params,
		     const uint8_t **raw_ret)
{
	const uint16_t *x = c->canon;
	size_t n = c->frame_elems;

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
		.bits = p->bits,
		.axis = kind == SHADOW_KV_K ? SHADOW_GROUP_KEYS : SHADOW_GROUP_VALUES,
		.group_tokens = kind == SHADOW_KV_K ? p->group : 0,
		.group_channels = kind == SHADOW_KV_V ? p->group : 0,
		.scale_rule = o->scale_rule,
		.step_mul = o->step_mul,
	};
	/* Parameters come back in native order; the decoder arrays (4 bytes per element, at most
	 * 4 bytes of parameters per element) hold them until they are stored little-endian. */
	uint16_t *par = (uint16_t *)(void *)c->scale;
	int err = shadow__quantize_frame(&qp, c->xf, c->sym, par);
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
 * The lossless stage of one frame. Planes are compressed as two streams, high bytes then low
 * bytes, behind a u32 size of the first: one stream per plane keeps a Huffman table per plane
 * (zstd-1 on the shared dumps: 1.51-1.54x as two streams, 1.38-1.40x as one).
 */
static int compress_raw(struct shadow_codec *c, const struct frame_plan *p, int level,
			const uint8_t *raw, uint8_t *dst, size_t dst_cap, size_t *nbytes_ret)
{
	enum shadow__lossless codec = (enum shadow__lossless)p->codec;
	size_t hi_nbytes, lo_nbytes, half = p->raw_nbytes / 2;
	int err;

	if (p->quant != SHADOW_QUANT_PLANES || codec == SHADOW_LOSSLESS_NONE)
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

	if (e->quant != SHADOW_QUANT_PLANES)
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
			const struct shadow_chunk_key *key, const void *region,
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
		struct frame_plan p;
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
		struct frame_plan p;
		struct shadow__frame_entry e = { 0 };
		const uint8_t *raw;
		size_t payload_nbytes;

		plan_frame(c, &o, f, &p); /* succeeded above */
		err = gather_frame(c, region, layout, block_ids, f / 2, f % 2);
		if (err == 0)
			err = build_raw(c, &o, &p, f % 2, out + params_at, &raw);
		if (err != 0)
			return err;
		e.codec = (uint8_t)p.codec;
		err = compress_raw(c, &p, o.level, raw, out + payload_at, dst_cap - payload_at,
				   &payload_nbytes);
		/* A frame that does not shrink (or does not fit compressed) is stored raw. */
		if (p.codec != SHADOW_CODEC_NONE &&
		    ((err == 0 && payload_nbytes >= p.raw_nbytes) || err == -ENOBUFS)) {
			e.codec = SHADOW_CODEC_NONE;
			err = shadow__lossless_compress(c->lossless, SHADOW_LOSSLESS_NONE, 0, raw,
							p.raw_nbytes, out + payload_at,
							dst_cap - payload_at, &payload_nbytes);
		}
		if (err != 0)
			return err;
		e.payload_offset = payload_at;
		e.payload_nbytes = (uint32_t)payload_nbytes;
		e.raw_nbytes = p.raw_nbytes;
		e.params_offset = p.params_nbytes != 0 ? (uint32_t)params_at : 0;
		e.params_nbytes = p.params_nbytes;
		e.quant = (uint8_t)p.quant;
		e.bits = (uint8_t)p.bits;
		e.flags = (uint8_t)p.flags;
		e.group = (uint16_t)p.group;
		e.raw_checksum = shadow__raw_checksum(raw, p.raw_nbytes);
		shadow__frame_entry_write(out, f, &e);
		params_at += p.params_nbytes;
		payload_at += payload_nbytes;
	}

	memset(&fields, 0, sizeof(fields));
	fields.key = *key;
	fields.geom = c->geom;
	fields.n_tokens = c->geom.chunk_tokens;
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

static void unpack_uniform(struct shadow_codec *c, const struct shadow__stage_map *m,
			   const struct shadow__frame_entry *e, uint32_t kind, const uint8_t *params,
			   const uint8_t *raw, uint8_t *stage)
{
	const struct shadow__dequant_kernels *k = c->kernels;
	enum shadow__out_dtype dt = (enum shadow__out_dtype)c->geom.dtype;
	uint32_t d = c->geom.head_dim, heads = c->geom.n_kv_heads;
	uint32_t n_groups = e->params_nbytes / 4;
	bool packed = e->flags & SHADOW_CHUNK_FLAG_PACKED;
	size_t row_packed = (size_t)d * e->bits / 8; /* head_dim * bits is a multiple of 8 */

	for (uint32_t i = 0; i < n_groups; i++) {
		c->scale[i] = shadow__bf16_to_float(shadow__load_le16(params + 2 * i));
		c->bias[i] = shadow__bf16_to_float(shadow__load_le16(params + 2 * (n_groups + i)));
	}
	for (uint32_t t = 0; t < c->geom.chunk_tokens; t++) {
		for (uint32_t h = 0; h < heads; h++) {
			size_t row = (size_t)t * heads + h;
			const uint8_t *q = raw + row * d;
			uint8_t *out = stage + shadow__stage_map_offset(m, t, h);
			if (packed) {
				k->unpack_bits(raw + row * row_packed, e->bits, c->row, d);
				q = c->row;
			}
			if (kind == SHADOW_KV_K) {
				size_t g = ((size_t)(t / e->group) * heads + h) * d;
				k->row_vec(q, c->scale + g, c->bias + g, out, d, dt);
			} else {
				uint32_t per_head = d / e->group;
				size_t g = row * per_head;
				for (uint32_t j = 0; j < per_head; j++)
					k->row_scalar(q + j * e->group, c->scale[g + j], c->bias[g + j],
						      out + (size_t)j * e->group * c->elem, e->group, dt);
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
	default:
		unpack_uniform(c, &m, &e, frame % 2, view->base + e.params_offset, raw, stage);
		break;
	}
	return 0;
}
