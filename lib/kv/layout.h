/*
 * layout.h - internal: the staging-image map of a layout, for code that writes every head
 * vector of a frame (the dequantizer) and must not revalidate the layout per vector.
 */
#ifndef SHADOW_KV_LAYOUT_H
#define SHADOW_KV_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/common.h"

/* Where (token_in_chunk, head) goes in the staging image; see shadow_layout_stage_offset(). */
struct shadow__stage_map {
	uint64_t vec_nbytes;   /* head_dim * element size */
	uint64_t image_nbytes; /* one block's image: block_tokens * n_kv_heads * vec_nbytes */
	uint32_t block_tokens;
	uint32_t n_kv_heads;
	bool token_major;      /* token-major: the image is [token][head]; else [head][token] per block */
};

/*
 * Fill *map_ret for a layout with positive token and head strides and a valid geometry.
 * Returns 0 or -EINVAL.
 */
int shadow__stage_map_init(const struct shadow_kv_layout *layout,
			   const struct shadow_kv_geometry *geom, struct shadow__stage_map *map_ret)
	SHADOW_INTERNAL;

/* The offset of (token_in_chunk, head); the caller keeps both in range. */
static inline uint64_t shadow__stage_map_offset(const struct shadow__stage_map *m,
						uint32_t token_in_chunk, uint32_t head)
{
	uint64_t block = token_in_chunk / m->block_tokens;
	uint64_t t = token_in_chunk % m->block_tokens;
	uint64_t rank = m->token_major ? t * m->n_kv_heads + head : head * (uint64_t)m->block_tokens + t;
	return block * m->image_nbytes + rank * m->vec_nbytes;
}

#endif /* SHADOW_KV_LAYOUT_H */
