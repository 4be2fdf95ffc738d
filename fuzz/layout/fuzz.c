/*
 * fuzz/layout - a client-supplied KV layout descriptor is untrusted: validate it, and where it
 * passes, plan every frame of a chunk, plan the whole chunk as runs and rectangles
 * (shadow__copy_plan_chunk, as the pipeline does) and compute every staging offset. Nothing
 * may read or write out of bounds, overflow, or produce a run or a rectangle's line outside
 * the region or the staging image, and the chunk plan must move exactly the chunk's bytes.
 *
 * Input: the geometry (6 x u32) then the layout's scalar fields and per-layer bases, raw.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <shadow/shadow.h>

#include "pipeline/copy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_RUNS 4096
#define FUZZ_PITCH_PAD 192 /* frames staged apart by more than their size */

/* The whole chunk's plan (up to 8 layers): every line inside the region and inside its
 * frame's staging image, and as many bytes as the chunk has. */
static void check_chunk_plan(const struct shadow_kv_layout *layout,
			     const struct shadow_kv_geometry *g, const uint32_t *block_ids,
			     uint32_t n_blocks, uint64_t image)
{
	static struct shadow_copy_run scratch_runs[FUZZ_MAX_RUNS], runs[8 * 2 * FUZZ_MAX_RUNS];
	static struct shadow__copy_rect scratch_rects[FUZZ_MAX_RUNS], rects[8 * FUZZ_MAX_RUNS];
	const uint64_t pitch = image + FUZZ_PITCH_PAD;
	struct shadow__copy_plan plan = { .runs = runs, .max_runs = 2 * g->n_layers * FUZZ_MAX_RUNS,
					  .rects = rects, .max_rects = g->n_layers * FUZZ_MAX_RUNS };
	uint64_t covered = 0;

	if (g->n_layers > 8 ||
	    shadow__copy_plan_chunk(layout, g, block_ids, n_blocks, pitch, scratch_runs,
				    scratch_rects, FUZZ_MAX_RUNS, &plan) != 0)
		return;
	for (size_t i = 0; i < plan.n_runs; i++) {
		uint64_t f = runs[i].src_offset / pitch, in = runs[i].src_offset % pitch;
		if (runs[i].dst_offset + runs[i].nbytes > layout->region_nbytes ||
		    f >= 2 * g->n_layers || in + runs[i].nbytes > image)
			abort();
		covered += runs[i].nbytes;
	}
	for (size_t i = 0; i < plan.n_rects; i++) {
		const struct shadow__copy_rect *q = &rects[i];
		uint64_t f = q->src_offset / pitch, in = q->src_offset % pitch;
		if (!shadow__copy_rect_fits(q, layout->region_nbytes) || q->height < 2 ||
		    q->src_pitch != pitch || f + q->height > 2 * g->n_layers ||
		    in + q->width > image)
			abort();
		covered += q->width * q->height;
	}
	if (covered != 2 * g->n_layers * image)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct shadow_kv_geometry g;
	static struct shadow_kv_layout layout;
	static struct shadow_copy_run runs[FUZZ_MAX_RUNS];

	if (size < sizeof(g))
		return 0;
	memcpy(&g, data, sizeof(g));
	data += sizeof(g);
	size -= sizeof(g);
	/* Keep the per-chunk work small enough for the fuzzer to explore. */
	if (shadow_geometry_validate(&g) != 0 || g.chunk_tokens > 1024 || g.n_kv_heads > 16)
		return 0;

	memset(&layout, 0, sizeof(layout));
	memcpy(&layout, data, size < sizeof(layout) ? size : sizeof(layout));
	if (shadow_layout_validate(&layout, &g) != 0)
		return 0;

	uint32_t n_blocks = g.chunk_tokens / g.block_tokens;
	uint32_t block_ids[1024];
	for (uint32_t i = 0; i < n_blocks; i++)
		block_ids[i] = (layout.n_blocks - 1 - i * 7919u % layout.n_blocks);
	size_t elem = shadow_dtype_nbytes(g.dtype);
	uint64_t image = (uint64_t)g.chunk_tokens * g.n_kv_heads * g.head_dim * elem;

	for (uint32_t layer = 0; layer < g.n_layers && layer < 4; layer++) {
		for (int kv = 0; kv < 2; kv++) {
			size_t n_runs = 0;
			int err = shadow_layout_plan_frame(&layout, &g, layer, (enum shadow_kv_kind)kv,
							   block_ids, n_blocks, runs, FUZZ_MAX_RUNS,
							   &n_runs);
			if (err != 0)
				continue;
			uint64_t covered = 0;
			for (size_t i = 0; i < n_runs; i++) {
				if (runs[i].dst_offset + runs[i].nbytes > layout.region_nbytes ||
				    runs[i].src_offset + runs[i].nbytes > image)
					abort();
				covered += runs[i].nbytes;
			}
			if (covered != image)
				abort();
		}
	}
	check_chunk_plan(&layout, &g, block_ids, n_blocks, image);
	for (uint32_t t = 0; t < g.chunk_tokens; t += 1 + t / 3) {
		for (uint32_t h = 0; h < g.n_kv_heads; h++) {
			int64_t off = shadow_layout_stage_offset(&layout, &g, t, h);
			if (off < 0 || (uint64_t)off + g.head_dim * elem > image)
				abort();
		}
	}
	return 0;
}
