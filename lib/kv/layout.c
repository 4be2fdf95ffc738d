/*
 * layout.c - paged KV layouts: the standard layouts, the check that makes a client's layout
 * safe to copy into, element offsets, and the copy plan of one frame (docs/layout.md).
 *
 * DESIGN
 * A layout says where each head vector (head_dim contiguous elements) of every (layer, kind,
 * block, token, head) lives in the engine's region. The data plane never walks elements: it
 * decodes a frame into a staging image laid out like the destination blocks, then copies the
 * image with a few large runs. Copy granularity decides copy bandwidth (H100, 32 KiB blocks:
 * 10 GB/s one copy per block, 30 GB/s batched, 55 GB/s as one contiguous copy; DESIGN.md), so
 * a block whose vectors are dense is one run and runs adjacent in the region merge.
 *
 * Block-internal order. Inside one block of one (layer, kind) the vectors are ordered by
 * address. shadow_layout_validate() only accepts layouts where that order is one of two
 * nestings, picked by comparing the strides:
 *
 *   head_stride <= token_stride: token-major      head_stride > token_stride: head-major
 *     outer = token (block_tokens, token_stride)     outer = head  (n_kv_heads, head_stride)
 *     inner = head  (n_kv_heads,   head_stride)      inner = token (block_tokens, token_stride)
 *
 *   |t0h0|t0h1|..|t0hH|  gap  |t1h0|t1h1|..      |h0t0|h0t1|..|h0tT|  gap  |h1t0|h1t1|..
 *   <- inner stride ->                           <- inner stride ->
 *   <------- outer stride ------->               <------- outer stride ------->
 *
 * and requires inner_stride >= vec and outer_stride >= (inner_count - 1) * inner_stride + vec
 * (vec = head_dim * elem), so vectors never overlap and rank order equals address order. A
 * dimension of extent 1 puts no constraint on its stride (engines often leave such strides
 * arbitrary); for it the "normalized" stride below is what a dense layout would have.
 *
 * Hot path. shadow_layout_plan_frame() and shadow_layout_stage_offset() run per frame on the
 * data plane: no allocation, no validation of the layout beyond index checks (the daemon
 * validates a layout once, when the region is registered), and O(runs) work.
 */
#include <errno.h>
#include <string.h>

#include "core/common.h"
#include "kv/layout.h"

/* The nesting of one block's head vectors; see the DESIGN comment above. */
struct block_order {
	uint64_t vec_nbytes;   /* head_dim * elem: one head vector */
	uint64_t image_nbytes; /* block_tokens * n_kv_heads * vec_nbytes: a block's staging image */
	uint64_t inner_count;
	uint64_t inner_stride; /* normalized: vec_nbytes when inner_count is 1 */
	uint64_t outer_count;
	uint64_t outer_stride; /* as in the layout; meaningless when outer_count is 1 */
	bool token_major;
	bool dense; /* the block's vectors are one contiguous range of image_nbytes */
};

/*
 * Derive the block order. Needs a valid geometry and positive strides; the products are
 * bounded by the geometry limits (image <= 2^12 * 2^8 * 2^10 * 4 bytes), so they cannot wrap.
 */
static void block_order_get(const struct shadow_kv_layout *layout,
			    const struct shadow_kv_geometry *geom, struct block_order *o)
{
	o->vec_nbytes = (uint64_t)geom->head_dim * shadow_dtype_nbytes(geom->dtype);
	o->image_nbytes = (uint64_t)geom->block_tokens * geom->n_kv_heads * o->vec_nbytes;
	o->token_major = layout->head_stride <= layout->token_stride;
	if (o->token_major) {
		o->inner_count = geom->n_kv_heads;
		o->inner_stride = (uint64_t)layout->head_stride;
		o->outer_count = geom->block_tokens;
		o->outer_stride = (uint64_t)layout->token_stride;
	} else {
		o->inner_count = geom->block_tokens;
		o->inner_stride = (uint64_t)layout->token_stride;
		o->outer_count = geom->n_kv_heads;
		o->outer_stride = (uint64_t)layout->head_stride;
	}
	if (o->inner_count == 1)
		o->inner_stride = o->vec_nbytes;
	o->dense = o->inner_stride == o->vec_nbytes &&
		   (o->outer_count == 1 || o->outer_stride == o->inner_count * o->vec_nbytes);
}

int shadow_layout_init(struct shadow_kv_layout *layout_ret, const struct shadow_kv_geometry *geom,
		       enum shadow_layout_kind kind, uint32_t n_blocks, uint64_t region_offset,
		       uint64_t region_nbytes)
{
	struct shadow_kv_layout l;
	uint64_t elem, vec, kv_nbytes, total, end;
	int err;

	if (layout_ret == NULL)
		return -EINVAL;
	err = shadow_geometry_validate(geom);
	if (err != 0)
		return err;
	if (n_blocks == 0)
		return -EINVAL;
	if (kind != SHADOW_LAYOUT_NHD && kind != SHADOW_LAYOUT_HND &&
	    kind != SHADOW_LAYOUT_CROSS_LAYER_NHD)
		return -EINVAL;

	memset(&l, 0, sizeof(l));
	elem = shadow_dtype_nbytes(geom->dtype);
	vec = (uint64_t)geom->head_dim * elem;
	/* One block of one (layer, kind): bounded by the geometry limits, no overflow. */
	const uint64_t block_nbytes = (uint64_t)geom->block_tokens * geom->n_kv_heads * vec;

	l.region_nbytes = region_nbytes;
	l.n_layers = geom->n_layers;
	l.n_blocks = n_blocks;
	l.elem_stride = (int64_t)elem;
	if (kind == SHADOW_LAYOUT_HND) {
		l.head_stride = (int64_t)((uint64_t)geom->block_tokens * vec);
		l.token_stride = (int64_t)vec;
	} else {
		l.head_stride = (int64_t)vec;
		l.token_stride = (int64_t)((uint64_t)geom->n_kv_heads * vec);
	}

	if (kind == SHADOW_LAYOUT_CROSS_LAYER_NHD) {
		/* [n_blocks][n_layers][2][block]: a block is 2 * n_layers * block_nbytes. */
		uint64_t bs = 2u * geom->n_layers * block_nbytes; /* <= 2^39, fits */
		l.block_stride = (int64_t)bs;
		if (!shadow_mul_u64(bs, n_blocks, &total))
			return SHADOW_EGEOMETRY;
		for (uint32_t i = 0; i < geom->n_layers; i++) {
			l.base[i][SHADOW_KV_K] = region_offset + (2u * i) * block_nbytes;
			l.base[i][SHADOW_KV_V] = region_offset + (2u * i + 1u) * block_nbytes;
		}
	} else {
		/* Per layer [2][n_blocks][block]: K then V, layer after layer. */
		l.block_stride = (int64_t)block_nbytes;
		if (!shadow_mul_u64(block_nbytes, n_blocks, &kv_nbytes) ||
		    !shadow_mul_u64(kv_nbytes, 2u * geom->n_layers, &total))
			return SHADOW_EGEOMETRY;
		for (uint32_t i = 0; i < geom->n_layers; i++) {
			l.base[i][SHADOW_KV_K] = region_offset + (2u * i) * kv_nbytes;
			l.base[i][SHADOW_KV_V] = region_offset + (2u * i + 1u) * kv_nbytes;
		}
	}
	/* Every base is < region_offset + total, so checking the end covers them all. */
	if (!shadow_add_u64(region_offset, total, &end) || end > region_nbytes ||
	    end > (uint64_t)INT64_MAX)
		return SHADOW_EGEOMETRY;

	*layout_ret = l;
	return 0;
}

int shadow_layout_validate(const struct shadow_kv_layout *layout,
			   const struct shadow_kv_geometry *geom)
{
	struct block_order o;
	uint64_t block_span, span, t;

	if (layout == NULL || shadow_geometry_validate(geom) != 0)
		return SHADOW_EGEOMETRY;
	if (layout->n_layers != geom->n_layers || layout->n_blocks == 0)
		return SHADOW_EGEOMETRY;
	if (layout->block_stride <= 0 || layout->token_stride <= 0 || layout->head_stride <= 0 ||
	    layout->elem_stride <= 0)
		return SHADOW_EGEOMETRY;
	if ((uint64_t)layout->elem_stride != shadow_dtype_nbytes(geom->dtype))
		return SHADOW_EGEOMETRY;

	block_order_get(layout, geom, &o);

	/* One block: from its first element to the end of its last head vector. */
	if (!shadow_mul_u64(geom->block_tokens - 1u, (uint64_t)layout->token_stride, &block_span) ||
	    !shadow_mul_u64(geom->n_kv_heads - 1u, (uint64_t)layout->head_stride, &t) ||
	    !shadow_add_u64(block_span, t, &block_span) ||
	    !shadow_add_u64(block_span, o.vec_nbytes, &block_span))
		return SHADOW_EGEOMETRY;
	/* All blocks of one (layer, kind). */
	if (!shadow_mul_u64(layout->n_blocks - 1u, (uint64_t)layout->block_stride, &span) ||
	    !shadow_add_u64(span, block_span, &span))
		return SHADOW_EGEOMETRY;

	/*
	 * Offsets are returned as int64_t, so the whole cache must also lie below 2^63. Strides
	 * are positive, so the lowest element of (layer, kind) is at its base.
	 */
	for (uint32_t l = 0; l < geom->n_layers; l++) {
		for (int kv = 0; kv < 2; kv++) {
			uint64_t end;

			if (!shadow_add_u64(layout->base[l][kv], span, &end) ||
			    end > layout->region_nbytes || end > (uint64_t)INT64_MAX)
				return SHADOW_EGEOMETRY;
		}
	}

	/* Head vectors of one block do not overlap, and address order is rank order. */
	if (o.inner_count > 1 && o.inner_stride < o.vec_nbytes)
		return SHADOW_EGEOMETRY;
	if (o.outer_count > 1) {
		/* (inner_count - 1) * inner_stride <= block_span, which did not overflow. */
		uint64_t row = (o.inner_count - 1u) * o.inner_stride + o.vec_nbytes;
		if (o.outer_stride < row)
			return SHADOW_EGEOMETRY;
	}
	/* Blocks do not overlap each other. */
	if (layout->n_blocks > 1 && (uint64_t)layout->block_stride < block_span)
		return SHADOW_EGEOMETRY;
	return 0;
}

int64_t shadow_layout_offset(const struct shadow_kv_layout *layout,
			     const struct shadow_kv_geometry *geom, uint32_t layer,
			     enum shadow_kv_kind kind, uint32_t block, uint32_t token_in_block,
			     uint32_t head)
{
	if (layout == NULL || shadow_geometry_validate(geom) != 0)
		return -EINVAL;
	if (layer >= geom->n_layers || layer >= layout->n_layers ||
	    (kind != SHADOW_KV_K && kind != SHADOW_KV_V) || block >= layout->n_blocks ||
	    token_in_block >= geom->block_tokens || head >= geom->n_kv_heads)
		return -EINVAL;
	/* Unsigned arithmetic: a validated layout keeps this below 2^63; any other wraps, no UB. */
	uint64_t off = layout->base[layer][kind] + block * (uint64_t)layout->block_stride +
		       token_in_block * (uint64_t)layout->token_stride +
		       head * (uint64_t)layout->head_stride;
	return (int64_t)off;
}

int shadow__stage_map_init(const struct shadow_kv_layout *layout,
			   const struct shadow_kv_geometry *geom, struct shadow__stage_map *map_ret)
{
	struct block_order o;

	if (layout == NULL || shadow_geometry_validate(geom) != 0)
		return -EINVAL;
	if (layout->token_stride <= 0 || layout->head_stride <= 0)
		return -EINVAL;
	block_order_get(layout, geom, &o);
	map_ret->vec_nbytes = o.vec_nbytes;
	map_ret->image_nbytes = o.image_nbytes;
	map_ret->block_tokens = geom->block_tokens;
	map_ret->n_kv_heads = geom->n_kv_heads;
	map_ret->token_major = o.token_major;
	return 0;
}

int64_t shadow_layout_stage_offset(const struct shadow_kv_layout *layout,
				   const struct shadow_kv_geometry *geom, uint32_t token_in_chunk,
				   uint32_t head)
{
	struct shadow__stage_map m;

	if (shadow__stage_map_init(layout, geom, &m) != 0)
		return -EINVAL;
	if (token_in_chunk >= geom->chunk_tokens || head >= geom->n_kv_heads)
		return -EINVAL;
	/* < chunk_tokens * n_kv_heads * vec <= 2^36: no overflow. */
	return (int64_t)shadow__stage_map_offset(&m, token_in_chunk, head);
}

/* Run builder: the open run is kept aside so it can grow; closed runs go to the array. */
struct run_sink {
	struct shadow_copy_run *runs;
	size_t max_runs;
	size_t n_runs; /* closed runs, including those that did not fit */
	struct shadow_copy_run cur;
	bool open;
};

static inline void sink_add(struct run_sink *s, uint64_t src, uint64_t dst, uint64_t nbytes)
{
	if (s->open && s->cur.src_offset + s->cur.nbytes == src &&
	    s->cur.dst_offset + s->cur.nbytes == dst) {
		s->cur.nbytes += nbytes;
		return;
	}
	if (s->open) {
		if (s->n_runs < s->max_runs)
			s->runs[s->n_runs] = s->cur;
		s->n_runs++;
	}
	s->cur.src_offset = src;
	s->cur.dst_offset = dst;
	s->cur.nbytes = nbytes;
	s->open = true;
}

static inline void sink_close(struct run_sink *s)
{
	if (s->open) {
		if (s->n_runs < s->max_runs)
			s->runs[s->n_runs] = s->cur;
		s->n_runs++;
		s->open = false;
	}
}

int shadow_layout_plan_frame(const struct shadow_kv_layout *layout,
			     const struct shadow_kv_geometry *geom, uint32_t layer,
			     enum shadow_kv_kind kind, const uint32_t *block_ids,
			     uint32_t n_block_ids, struct shadow_copy_run *runs_ret,
			     size_t max_runs, size_t *n_runs_ret)
{
	struct block_order o;
	struct run_sink sink;
	int err;

	if (layout == NULL || block_ids == NULL || n_runs_ret == NULL ||
	    (runs_ret == NULL && max_runs != 0))
		return -EINVAL;
	err = shadow_geometry_validate(geom);
	if (err != 0)
		return err;
	if (layer >= geom->n_layers || layer >= layout->n_layers ||
	    (kind != SHADOW_KV_K && kind != SHADOW_KV_V) ||
	    n_block_ids != geom->chunk_tokens / geom->block_tokens)
		return -EINVAL;
	for (uint32_t i = 0; i < n_block_ids; i++) {
		if (block_ids[i] >= layout->n_blocks)
			return -EINVAL;
	}
	if (layout->token_stride <= 0 || layout->head_stride <= 0 || layout->block_stride <= 0)
		return -EINVAL;

	block_order_get(layout, geom, &o);
	sink.runs = runs_ret;
	sink.max_runs = max_runs;
	sink.n_runs = 0;
	sink.open = false;

	const uint64_t base = layout->base[layer][kind];
	const uint64_t row_nbytes = o.inner_count * o.vec_nbytes;
	uint64_t src = 0;
	for (uint32_t i = 0; i < n_block_ids; i++) {
		const uint64_t dst = base + block_ids[i] * (uint64_t)layout->block_stride;

		if (o.dense) {
			sink_add(&sink, src, dst, o.image_nbytes);
			src += o.image_nbytes;
		} else if (o.inner_stride == o.vec_nbytes) {
			/* Each outer row is contiguous; rows have gaps between them. */
			for (uint64_t r = 0; r < o.outer_count; r++) {
				sink_add(&sink, src, dst + r * o.outer_stride, row_nbytes);
				src += row_nbytes;
			}
		} else {
			/* Gaps between vectors; the last of a row may still touch the next row. */
			for (uint64_t r = 0; r < o.outer_count; r++) {
				for (uint64_t c = 0; c < o.inner_count; c++) {
					sink_add(&sink, src,
						 dst + r * o.outer_stride + c * o.inner_stride,
						 o.vec_nbytes);
					src += o.vec_nbytes;
				}
			}
		}
	}
	sink_close(&sink);

	*n_runs_ret = sink.n_runs;
	return sink.n_runs > max_runs ? -ENOBUFS : 0;
}
