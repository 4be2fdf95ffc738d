/*
 * test_layout.c - paged KV layouts: the standard layouts against hand-written tensor index
 * formulas, the copy plan (scatter through the plan == writing every element at its
 * shadow_layout_offset), run merging, -ENOBUFS, and shadow_layout_validate on hostile and
 * random layouts (it must reject without overflowing, and whatever it accepts must plan
 * correctly).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <shadow/shadow.h>

#define N_BLOCKS 6u
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* 3 layers, 2 KV heads, head_dim 4, bf16, 4-token blocks, 16-token chunks (4 blocks/chunk). */
static struct shadow_kv_geometry small_geom(void)
{
	struct shadow_kv_geometry g = {
		.n_layers = 3,
		.n_kv_heads = 2,
		.head_dim = 4,
		.dtype = SHADOW_DTYPE_BF16,
		.block_tokens = 4,
		.chunk_tokens = 16,
	};
	return g;
}

static const enum shadow_layout_kind all_kinds[] = {
	SHADOW_LAYOUT_NHD,
	SHADOW_LAYOUT_HND,
	SHADOW_LAYOUT_CROSS_LAYER_NHD,
};

/*
 * Reference: byte offset of element (l, kv, b, t, h, d) computed as the index of a row-major
 * tensor of the shape the header documents for each kind.
 */
static uint64_t ref_offset(enum shadow_layout_kind kind, const struct shadow_kv_geometry *g,
			   uint32_t n_blocks, uint64_t region_offset, uint32_t l, uint32_t kv,
			   uint32_t b, uint32_t t, uint32_t h, uint32_t d)
{
	uint64_t L = g->n_layers, NB = n_blocks, T = g->block_tokens, H = g->n_kv_heads;
	uint64_t D = g->head_dim, idx;

	switch (kind) {
	case SHADOW_LAYOUT_NHD: /* per layer [2][NB][T][H][D] */
		idx = ((((l * 2ull + kv) * NB + b) * T + t) * H + h) * D + d;
		break;
	case SHADOW_LAYOUT_HND: /* per layer [2][NB][H][T][D] */
		idx = ((((l * 2ull + kv) * NB + b) * H + h) * T + t) * D + d;
		break;
	default: /* [NB][L][2][T][H][D] */
		idx = (((((b * L + l) * 2ull + kv) * T + t) * H + h) * D) + d;
		break;
	}
	return region_offset + idx * shadow_dtype_nbytes(g->dtype);
}

static uint64_t cache_nbytes(const struct shadow_kv_geometry *g, uint32_t n_blocks)
{
	return 2ull * g->n_layers * n_blocks * g->block_tokens * g->n_kv_heads * g->head_dim *
	       shadow_dtype_nbytes(g->dtype);
}

static void test_init_strides(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom();
	struct shadow_kv_layout L;
	const uint64_t off = 1000, total = cache_nbytes(&g, N_BLOCKS); /* 2304 */

	assert_int_equal(total, 2304);
	/* vec = 8 bytes, block of one (layer, kind) = 64 bytes */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, N_BLOCKS, off, off + total),
			 0);
	assert_int_equal(L.n_layers, 3);
	assert_int_equal(L.n_blocks, N_BLOCKS);
	assert_int_equal(L.region_nbytes, off + total);
	assert_int_equal(L.elem_stride, 2);
	assert_int_equal(L.head_stride, 8);
	assert_int_equal(L.token_stride, 16);
	assert_int_equal(L.block_stride, 64);
	for (uint32_t l = 0; l < 3; l++) {
		assert_int_equal(L.base[l][SHADOW_KV_K], off + (2 * l) * 384);
		assert_int_equal(L.base[l][SHADOW_KV_V], off + (2 * l + 1) * 384);
	}
	assert_int_equal(L.base[3][0], 0);
	assert_int_equal(shadow_layout_validate(&L, &g), 0);

	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_HND, N_BLOCKS, off, off + total),
			 0);
	assert_int_equal(L.elem_stride, 2);
	assert_int_equal(L.head_stride, 32);
	assert_int_equal(L.token_stride, 8);
	assert_int_equal(L.block_stride, 64);
	assert_int_equal(L.base[2][SHADOW_KV_V], off + 5 * 384);
	assert_int_equal(shadow_layout_validate(&L, &g), 0);

	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_CROSS_LAYER_NHD, N_BLOCKS, off,
					    off + total),
			 0);
	assert_int_equal(L.head_stride, 8);
	assert_int_equal(L.token_stride, 16);
	assert_int_equal(L.block_stride, 2 * 3 * 64);
	for (uint32_t l = 0; l < 3; l++) {
		assert_int_equal(L.base[l][SHADOW_KV_K], off + (2 * l) * 64);
		assert_int_equal(L.base[l][SHADOW_KV_V], off + (2 * l + 1) * 64);
	}
	assert_int_equal(shadow_layout_validate(&L, &g), 0);
}

static void test_offsets_match_reference(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom();
	const uint64_t offs[] = { 0, 4096 };

	for (size_t k = 0; k < 3; k++) {
		for (size_t o = 0; o < 2; o++) {
			enum shadow_layout_kind kind = all_kinds[k];
			uint64_t region = offs[o] + cache_nbytes(&g, N_BLOCKS);
			struct shadow_kv_layout L;

			int err = shadow_layout_init(&L, &g, kind, N_BLOCKS, offs[o], region);
			assert_int_equal(err, 0);
			assert_int_equal(shadow_layout_validate(&L, &g), 0);
			for (uint32_t l = 0; l < g.n_layers; l++)
			for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t b = 0; b < N_BLOCKS; b++)
			for (uint32_t t = 0; t < g.block_tokens; t++)
			for (uint32_t h = 0; h < g.n_kv_heads; h++) {
				enum shadow_kv_kind k_ = (enum shadow_kv_kind)kv;
				int64_t got = shadow_layout_offset(&L, &g, l, k_, b, t, h);
				assert_true(got >= 0);
				for (uint32_t d = 0; d < g.head_dim; d++) {
					uint64_t want = ref_offset(kind, &g, N_BLOCKS, offs[o], l,
								   kv, b, t, h, d);
					uint64_t e_ = (uint64_t)L.elem_stride;
					assert_int_equal((uint64_t)got + d * e_, want);
				}
			}
			/* Exactly fits; one byte less does not. */
			assert_int_equal(shadow_layout_init(&L, &g, kind, N_BLOCKS, offs[o],
							    region - 1),
					 SHADOW_EGEOMETRY);
		}
	}

	struct shadow_kv_layout L;
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, N_BLOCKS, 0, 1 << 20), 0);
	assert_int_equal(shadow_layout_offset(&L, &g, 3, SHADOW_KV_K, 0, 0, 0), -EINVAL);
	assert_int_equal(shadow_layout_offset(&L, &g, 0, (enum shadow_kv_kind)2, 0, 0, 0), -EINVAL);
	assert_int_equal(shadow_layout_offset(&L, &g, 0, SHADOW_KV_V, N_BLOCKS, 0, 0), -EINVAL);
	assert_int_equal(shadow_layout_offset(&L, &g, 0, SHADOW_KV_V, 0, 4, 0), -EINVAL);
	assert_int_equal(shadow_layout_offset(&L, &g, 0, SHADOW_KV_V, 0, 0, 2), -EINVAL);
	uint64_t want = ref_offset(SHADOW_LAYOUT_NHD, &g, N_BLOCKS, 0, 2, 1, N_BLOCKS - 1, 3, 1, 0);
	assert_int_equal(shadow_layout_offset(&L, &g, 2, SHADOW_KV_V, N_BLOCKS - 1, 3, 1), want);
}

static void test_init_errors(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom();
	struct shadow_kv_layout L;

	memset(&L, 0x5a, sizeof(L));
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, 0, 0, 1 << 20), -EINVAL);
	assert_int_equal(shadow_layout_init(&L, &g, (enum shadow_layout_kind)0, 4, 0, 1 << 20),
			 -EINVAL);
	assert_int_equal(shadow_layout_init(&L, &g, (enum shadow_layout_kind)4, 4, 0, 1 << 20),
			 -EINVAL);
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, 4, 0, 100),
			 SHADOW_EGEOMETRY);
	/* region_offset + size wraps around */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, 4, UINT64_MAX - 10,
					    UINT64_MAX),
			 SHADOW_EGEOMETRY);
	/* fits a uint64 region but not below 2^63, where int64_t offsets could not say it */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_HND, 4, (uint64_t)INT64_MAX,
					    UINT64_MAX),
			 SHADOW_EGEOMETRY);
	/* the biggest cache: no overflow in the size computation */
	struct shadow_kv_geometry big = {
		.n_layers = SHADOW_MAX_LAYERS, .n_kv_heads = SHADOW_MAX_KV_HEADS,
		.head_dim = SHADOW_MAX_HEAD_DIM, .dtype = SHADOW_DTYPE_FP32,
		.block_tokens = SHADOW_MAX_BLOCK_TOKENS, .chunk_tokens = SHADOW_MAX_CHUNK_TOKENS,
	};
	assert_int_equal(shadow_layout_init(&L, &big, SHADOW_LAYOUT_CROSS_LAYER_NHD, UINT32_MAX, 0,
					    UINT64_MAX),
			 SHADOW_EGEOMETRY);
	assert_int_equal(shadow_layout_init(&L, &big, SHADOW_LAYOUT_NHD, UINT32_MAX, 0,
					    UINT64_MAX),
			 SHADOW_EGEOMETRY);
	assert_int_equal(L.n_layers, 0x5a5a5a5a); /* untouched on failure */
	assert_int_equal(shadow_layout_init(&L, &big, SHADOW_LAYOUT_NHD, 2, 0, UINT64_MAX), 0);
	assert_int_equal(shadow_layout_validate(&L, &big), 0);

	g.chunk_tokens = 6; /* not a multiple of block_tokens */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, 4, 0, 1 << 20),
			 SHADOW_EGEOMETRY);
}

/* ------------------------------------------------------------------------------------------ */
/* Scatter check: the plan moves every staged byte to its element's offset, and nothing else. */

static uint8_t pattern(uint32_t tok, uint32_t h, uint32_t d, uint32_t byte)
{
	return (uint8_t)(tok * 31u + h * 7u + d * 3u + byte * 101u + 1u);
}

/* Returns the number of runs the plan used. */
static size_t check_scatter(const struct shadow_kv_layout *L, const struct shadow_kv_geometry *g,
			    uint32_t layer, enum shadow_kv_kind kind, const uint32_t *ids)
{
	const uint32_t n_ids = g->chunk_tokens / g->block_tokens;
	const uint64_t e = shadow_dtype_nbytes(g->dtype), vec = g->head_dim * e;
	const uint64_t image = (uint64_t)g->chunk_tokens * g->n_kv_heads * vec;
	const size_t max_runs = (size_t)g->chunk_tokens * g->n_kv_heads;
	uint8_t *stage = malloc(image), *seen = calloc(image, 1);
	uint8_t *a = malloc(L->region_nbytes), *b = malloc(L->region_nbytes);
	struct shadow_copy_run *runs = calloc(max_runs, sizeof(*runs));
	size_t n_runs = 0;

	assert_non_null(stage);
	assert_non_null(seen);
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(runs);
	memset(a, 0xee, L->region_nbytes);
	memset(b, 0xee, L->region_nbytes);
	memset(stage, 0, image);

	/* Stage the frame through stage_offset; it must be a bijection onto the image. */
	for (uint32_t tok = 0; tok < g->chunk_tokens; tok++) {
		for (uint32_t h = 0; h < g->n_kv_heads; h++) {
			int64_t so = shadow_layout_stage_offset(L, g, tok, h);
			assert_true(so >= 0 && (uint64_t)so + vec <= image);
			assert_int_equal((uint64_t)so % vec, 0);
			for (uint64_t i = 0; i < vec; i++) {
				assert_int_equal(seen[so + i], 0);
				seen[so + i] = 1;
				uint32_t d = (uint32_t)(i / e), by = (uint32_t)(i % e);
				stage[so + i] = pattern(tok, h, d, by);
			}
		}
	}

	/* The plan: runs in image order, covering it exactly once, maximally merged. */
	assert_int_equal(shadow_layout_plan_frame(L, g, layer, kind, ids, n_ids, runs, max_runs,
						  &n_runs),
			 0);
	assert_true(n_runs >= 1 && n_runs <= max_runs);
	uint64_t src = 0;
	for (size_t r = 0; r < n_runs; r++) {
		assert_int_equal(runs[r].src_offset, src);
		assert_true(runs[r].nbytes > 0 && runs[r].nbytes % vec == 0);
		assert_true(runs[r].dst_offset <= L->region_nbytes &&
			    runs[r].nbytes <= L->region_nbytes - runs[r].dst_offset);
		if (r > 0)
			assert_true(runs[r - 1].dst_offset + runs[r - 1].nbytes !=
				    runs[r].dst_offset);
		memcpy(a + runs[r].dst_offset, stage + runs[r].src_offset, runs[r].nbytes);
		src += runs[r].nbytes;
	}
	assert_int_equal(src, image);

	/* Reference: every element written at its own offset. */
	for (uint32_t tok = 0; tok < g->chunk_tokens; tok++) {
		for (uint32_t h = 0; h < g->n_kv_heads; h++) {
			int64_t off = shadow_layout_offset(L, g, layer, kind,
							   ids[tok / g->block_tokens],
							   tok % g->block_tokens, h);
			assert_true(off >= 0);
			for (uint32_t d = 0; d < g->head_dim; d++)
				for (uint32_t by = 0; by < e; by++)
					b[off + d * (uint64_t)L->elem_stride + by] =
						pattern(tok, h, d, by);
		}
	}
	assert_memory_equal(a, b, L->region_nbytes);

	/* Deterministic: the same arguments give the same plan. */
	struct shadow_copy_run *again = calloc(max_runs, sizeof(*again));
	size_t n_again = 0;
	assert_non_null(again);
	assert_int_equal(shadow_layout_plan_frame(L, g, layer, kind, ids, n_ids, again, max_runs,
						  &n_again),
			 0);
	assert_int_equal(n_again, n_runs);
	assert_memory_equal(again, runs, n_runs * sizeof(*runs));

	free(again);
	free(runs);
	free(b);
	free(a);
	free(seen);
	free(stage);
	return n_runs;
}

static const uint32_t id_tables[][4] = {
	{ 0, 1, 2, 3 }, { 3, 2, 1, 0 }, { 5, 0, 1, 4 }, { 2, 3, 5, 4 }, { 1, 2, 3, 5 },
};

static void test_plan_standard_layouts(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom();
	struct shadow_kv_layout L;

	for (size_t k = 0; k < 3; k++) {
		assert_int_equal(shadow_layout_init(&L, &g, all_kinds[k], N_BLOCKS, 128,
						    128 + cache_nbytes(&g, N_BLOCKS) + 64),
				 0);
		for (size_t t = 0; t < ARRAY_LEN(id_tables); t++)
			for (uint32_t l = 0; l < g.n_layers; l++)
				for (int kv = 0; kv < 2; kv++)
					check_scatter(&L, &g, l, (enum shadow_kv_kind)kv,
						      id_tables[t]);
	}
}

static void test_plan_merging(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom();
	struct shadow_kv_layout L;
	struct shadow_copy_run runs[16];
	size_t n = 0;
	const uint64_t B = 64; /* one block of one (layer, kind) */

	for (size_t k = 0; k < 2; k++) { /* NHD and HND blocks are dense */
		assert_int_equal(shadow_layout_init(&L, &g, all_kinds[k], N_BLOCKS, 0,
						    cache_nbytes(&g, N_BLOCKS)),
				 0);
		assert_int_equal(check_scatter(&L, &g, 1, SHADOW_KV_V, id_tables[0]), 1);
		assert_int_equal(shadow_layout_plan_frame(&L, &g, 1, SHADOW_KV_V, id_tables[0], 4,
							  runs, 16, &n),
				 0);
		assert_int_equal(n, 1);
		assert_int_equal(runs[0].src_offset, 0);
		assert_int_equal(runs[0].dst_offset, L.base[1][SHADOW_KV_V]);
		assert_int_equal(runs[0].nbytes, 4 * B);
		assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[1]), 4);
		assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[2]), 3);
		assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[3]), 3);
		assert_int_equal(check_scatter(&L, &g, 2, SHADOW_KV_K, id_tables[4]), 2);
		const uint32_t ids[4] = { 2, 3, 0, 1 };
		assert_int_equal(shadow_layout_plan_frame(&L, &g, 2, SHADOW_KV_K, ids, 4, runs, 16,
							  &n),
				 0);
		assert_int_equal(n, 2);
		assert_int_equal(runs[0].dst_offset, L.base[2][SHADOW_KV_K] + 2 * B);
		assert_int_equal(runs[0].nbytes, 2 * B);
		assert_int_equal(runs[1].src_offset, 2 * B);
		assert_int_equal(runs[1].dst_offset, L.base[2][SHADOW_KV_K]);
		assert_int_equal(runs[1].nbytes, 2 * B);
	}

	/* Cross-layer: a block holds every layer, so one frame's blocks are never adjacent. */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_CROSS_LAYER_NHD, N_BLOCKS, 0,
					    cache_nbytes(&g, N_BLOCKS)),
			 0);
	assert_int_equal(check_scatter(&L, &g, 1, SHADOW_KV_V, id_tables[0]), 4);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 1, SHADOW_KV_V, id_tables[0], 4, runs, 16,
						  &n),
			 0);
	for (size_t r = 0; r < 4; r++) {
		assert_int_equal(runs[r].nbytes, B);
		assert_int_equal(runs[r].src_offset, r * B);
		assert_int_equal(runs[r].dst_offset, (uint64_t)r * 6 * B + 3 * B);
	}

	/* A real shape: Llama-3-8B NHD, 16 consecutive blocks of 32 KiB = one 512 KiB run. */
	struct shadow_kv_geometry l8;
	uint32_t ids[16];
	assert_int_equal(shadow_geometry_preset("llama3-8b", &l8), 0);
	assert_int_equal(shadow_layout_init(&L, &l8, SHADOW_LAYOUT_NHD, 1024, 0, 1ull << 40), 0);
	assert_int_equal(shadow_layout_validate(&L, &l8), 0);
	for (uint32_t i = 0; i < 16; i++)
		ids[i] = 100 + i;
	assert_int_equal(shadow_layout_plan_frame(&L, &l8, 31, SHADOW_KV_V, ids, 16, runs, 16, &n),
			 0);
	assert_int_equal(n, 1);
	assert_int_equal(runs[0].nbytes, shadow_geometry_frame_nbytes(&l8));
	assert_int_equal(runs[0].dst_offset, L.base[31][SHADOW_KV_V] + 100 * 32768ull);
	ids[8] = 500; /* one hole splits it in three */
	assert_int_equal(shadow_layout_plan_frame(&L, &l8, 31, SHADOW_KV_V, ids, 16, runs, 16, &n),
			 0);
	assert_int_equal(n, 3);
	assert_int_equal(runs[1].nbytes, 32768);
}

/* Layouts the standard ones don't produce: padding, gaps, extent-1 dimensions. */
static void test_plan_non_dense(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom(); /* vec 8, 2 heads, 4 tokens, 4 blocks/chunk */
	struct shadow_kv_layout L;

	/* a. padded heads, token-major: no two vectors adjacent: one run per vector */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, N_BLOCKS, 0, 1 << 16), 0);
	L.head_stride = 8 + 4;
	L.token_stride = 2 * 12;
	L.block_stride = 4 * 24 + 16;
	for (uint32_t l = 0; l < 3; l++) {
		L.base[l][0] = 10 + l * 2000;
		L.base[l][1] = 1010 + l * 2000;
	}
	assert_int_equal(shadow_layout_validate(&L, &g), 0);
	for (size_t t = 0; t < ARRAY_LEN(id_tables); t++)
		assert_int_equal(check_scatter(&L, &g, 2, SHADOW_KV_V, id_tables[t]), 32);

	/* b. dense rows (one token's heads), gaps between tokens: one run per token */
	L.head_stride = 8;
	L.token_stride = 16 + 6;
	L.block_stride = 4 * 22;
	assert_int_equal(shadow_layout_validate(&L, &g), 0);
	assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[0]), 16);
	assert_int_equal(check_scatter(&L, &g, 1, SHADOW_KV_V, id_tables[3]), 16);

	/* c. head-major with a gap between heads: one run per head */
	L.token_stride = 8;
	L.head_stride = 4 * 8 + 2;
	L.block_stride = 2 * 34;
	assert_int_equal(shadow_layout_validate(&L, &g), 0);
	assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[0]), 8);

	/*
	 * d. gaps between a token's heads, but the next token starts right after the last head:
	 * rows merge end to start (per block 8 vectors, 3 joins = 5 runs); with block_stride
	 * equal to the span, consecutive blocks join too.
	 */
	L.head_stride = 8 + 8;
	L.token_stride = 16 + 8; /* (2 - 1) * 16 + 8 */
	L.block_stride = 3 * 24 + 16 + 8 + 100;
	assert_int_equal(shadow_layout_validate(&L, &g), 0);
	assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[0]), 4 * 5);
	L.block_stride = 3 * 24 + 16 + 8;
	assert_int_equal(shadow_layout_validate(&L, &g), 0);
	assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[0]), 4 * 5 - 3);
	assert_int_equal(check_scatter(&L, &g, 0, SHADOW_KV_K, id_tables[1]), 4 * 5);

	/* e. one KV head: its stride is arbitrary (even above token_stride) and blocks are dense */
	struct shadow_kv_geometry g1 = g;
	g1.n_kv_heads = 1;
	assert_int_equal(shadow_layout_init(&L, &g1, SHADOW_LAYOUT_NHD, N_BLOCKS, 0, 1 << 16), 0);
	L.head_stride = 12345;
	assert_int_equal(shadow_layout_validate(&L, &g1), 0);
	assert_int_equal(check_scatter(&L, &g1, 1, SHADOW_KV_K, id_tables[0]), 1);
	L.head_stride = 1;
	assert_int_equal(shadow_layout_validate(&L, &g1), 0);
	assert_int_equal(check_scatter(&L, &g1, 1, SHADOW_KV_K, id_tables[2]), 3);

	/* f. one token per block: the token stride is arbitrary */
	struct shadow_kv_geometry gt = g;
	gt.block_tokens = 1;
	gt.chunk_tokens = 4;
	assert_int_equal(shadow_layout_init(&L, &gt, SHADOW_LAYOUT_HND, N_BLOCKS, 0, 1 << 16), 0);
	L.token_stride = 3;
	assert_int_equal(shadow_layout_validate(&L, &gt), 0);
	assert_int_equal(check_scatter(&L, &gt, 0, SHADOW_KV_V, id_tables[0]), 1);
	L.token_stride = 1 << 20; /* the span ignores it too */
	assert_int_equal(shadow_layout_validate(&L, &gt), 0);
	assert_int_equal(check_scatter(&L, &gt, 0, SHADOW_KV_V, id_tables[1]), 4);
}

static void test_plan_enobufs_and_args(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom();
	struct shadow_kv_layout L;
	struct shadow_copy_run runs[8];
	size_t n = 12345;

	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, N_BLOCKS, 0,
					    cache_nbytes(&g, N_BLOCKS)),
			 0);
	memset(runs, 0x77, sizeof(runs));
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, id_tables[1], 4, runs, 3,
						  &n),
			 -ENOBUFS);
	assert_int_equal(n, 4);
	for (size_t i = 3; i < 8; i++) /* nothing written past max_runs */
		assert_int_equal(runs[i].nbytes, 0x7777777777777777ull);
	n = 0;
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, id_tables[1], 4, NULL, 0,
						  &n),
			 -ENOBUFS);
	assert_int_equal(n, 4);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, id_tables[1], 4, runs, 4,
						  &n),
			 0);
	assert_int_equal(n, 4);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, id_tables[0], 4, runs, 1,
						  &n),
			 0);
	assert_int_equal(n, 1);

	const uint32_t bad_ids[4] = { 0, 1, N_BLOCKS, 2 };
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, bad_ids, 4, runs, 8, &n),
			 -EINVAL);
	const uint32_t huge_ids[4] = { 0, UINT32_MAX, 1, 2 };
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, huge_ids, 4, runs, 8, &n),
			 -EINVAL);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, id_tables[0], 3, runs, 8,
						  &n),
			 -EINVAL);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, id_tables[0], 0, runs, 8,
						  &n),
			 -EINVAL);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 3, SHADOW_KV_K, id_tables[0], 4, runs, 8,
						  &n),
			 -EINVAL);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, (enum shadow_kv_kind)2, id_tables[0],
						  4, runs, 8, &n),
			 -EINVAL);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, NULL, 4, runs, 8, &n),
			 -EINVAL);
	assert_int_equal(shadow_layout_plan_frame(&L, &g, 0, SHADOW_KV_K, id_tables[0], 4, NULL, 8,
						  &n),
			 -EINVAL);
	struct shadow_kv_geometry bad = g;
	bad.head_dim = 0;
	assert_int_equal(shadow_layout_plan_frame(&L, &bad, 0, SHADOW_KV_K, id_tables[0], 4, runs,
						  8, &n),
			 SHADOW_EGEOMETRY);
}

static void test_stage_offset(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = small_geom();
	struct shadow_kv_layout L;
	const int64_t B = 64, vec = 8;

	/* NHD: token-major, rank = t * n_kv_heads + h */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_NHD, N_BLOCKS, 0, 1 << 16), 0);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 0, 0), 0);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 0, 1), vec);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 1, 0), 2 * vec);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 6, 1), B + (2 * 2 + 1) * vec);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 15, 1), 3 * B + 7 * vec);
	/* HND: head-major, rank = h * block_tokens + t */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_HND, N_BLOCKS, 0, 1 << 16), 0);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 0, 1), 4 * vec);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 1, 0), vec);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 6, 1), B + (1 * 4 + 2) * vec);
	/* cross-layer blocks are NHD inside */
	assert_int_equal(shadow_layout_init(&L, &g, SHADOW_LAYOUT_CROSS_LAYER_NHD, N_BLOCKS, 0,
					    1 << 16),
			 0);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 6, 1), B + 5 * vec);

	assert_int_equal(shadow_layout_stage_offset(&L, &g, 16, 0), -EINVAL);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 0, 2), -EINVAL);
	assert_int_equal(shadow_layout_stage_offset(&L, &g, UINT32_MAX, UINT32_MAX), -EINVAL);
	L.head_stride = 0;
	assert_int_equal(shadow_layout_stage_offset(&L, &g, 0, 0), -EINVAL);
}

/* ------------------------------------------------------------------------------------------ */
/* Hostile layouts */

static struct shadow_kv_geometry hg;
static struct shadow_kv_layout hl;

static struct shadow_kv_layout *fresh(enum shadow_layout_kind kind)
{
	hg = small_geom();
	assert_int_equal(shadow_layout_init(&hl, &hg, kind, N_BLOCKS, 64,
					    64 + cache_nbytes(&hg, N_BLOCKS)),
			 0);
	assert_int_equal(shadow_layout_validate(&hl, &hg), 0);
	return &hl;
}

#define REJECT(kind, stmt)                                                                   \
	do {                                                                                 \
		struct shadow_kv_layout *L = fresh(kind);                                    \
		stmt;                                                                        \
		assert_int_equal(shadow_layout_validate(L, &hg), SHADOW_EGEOMETRY);           \
	} while (0)
#define ACCEPT(kind, stmt)                                                                   \
	do {                                                                                 \
		struct shadow_kv_layout *L = fresh(kind);                                    \
		stmt;                                                                        \
		assert_int_equal(shadow_layout_validate(L, &hg), 0);                          \
	} while (0)

static void test_validate_hostile(void **state)
{
	(void)state;
	const enum shadow_layout_kind N = SHADOW_LAYOUT_NHD, H = SHADOW_LAYOUT_HND;
	const enum shadow_layout_kind X = SHADOW_LAYOUT_CROSS_LAYER_NHD;

	/* geometry and counts */
	REJECT(N, L->n_layers = 2);
	REJECT(N, L->n_layers = 4);
	REJECT(N, L->n_layers = 0);
	REJECT(N, L->n_layers = UINT32_MAX);
	REJECT(N, hg.n_layers = 4);
	REJECT(N, L->n_blocks = 0);
	REJECT(N, L->n_blocks = N_BLOCKS + 1);
	REJECT(N, L->n_blocks = UINT32_MAX);
	REJECT(N, hg.dtype = 9);
	ACCEPT(N, L->base[3][0] = UINT64_MAX; L->base[255][1] = UINT64_MAX); /* unused layers */

	/* strides: zero, negative, wrong element size */
	int64_t *strides[4];
	for (int s = 0; s < 4; s++) {
		const int64_t bad[] = { 0, -1, -8, INT64_MIN };
		for (size_t v = 0; v < ARRAY_LEN(bad); v++) {
			struct shadow_kv_layout *L = fresh(s % 2 ? N : H);
			strides[0] = &L->block_stride;
			strides[1] = &L->token_stride;
			strides[2] = &L->head_stride;
			strides[3] = &L->elem_stride;
			*strides[s] = bad[v];
			assert_int_equal(shadow_layout_validate(L, &hg), SHADOW_EGEOMETRY);
		}
	}
	REJECT(N, L->elem_stride = 1);
	REJECT(N, L->elem_stride = 4);
	REJECT(N, hg.dtype = SHADOW_DTYPE_FP32);

	/* out of the region */
	REJECT(N, L->region_nbytes -= 1);
	REJECT(X, L->region_nbytes -= 1);
	REJECT(N, L->region_nbytes = 0);
	REJECT(N, L->base[2][1] += 1);
	REJECT(X, L->base[2][1] += 1);
	REJECT(N, L->base[0][0] = L->region_nbytes);
	REJECT(N, L->base[1][0] = UINT64_MAX);
	REJECT(N, L->base[1][1] = UINT64_MAX - 100);
	REJECT(N, L->base[0][0] = (uint64_t)INT64_MAX + 1; L->region_nbytes = UINT64_MAX);
	REJECT(N, L->region_nbytes = UINT64_MAX; L->base[0][1] = (uint64_t)INT64_MAX - 10);
	ACCEPT(N, L->region_nbytes = UINT64_MAX; L->base[0][1] = (uint64_t)INT64_MAX - 1000);

	/* strides that overflow the span computation */
	REJECT(N, L->block_stride = INT64_MAX);
	REJECT(N, L->block_stride = INT64_MAX / 4);
	REJECT(N, L->token_stride = INT64_MAX);
	REJECT(H, L->head_stride = INT64_MAX);
	REJECT(N, L->block_stride = INT64_MAX; L->region_nbytes = UINT64_MAX);
	REJECT(N, L->token_stride = INT64_MAX / 2; L->region_nbytes = UINT64_MAX);
	REJECT(N, L->head_stride = INT64_MAX / 2 + 1; L->token_stride = INT64_MAX;
	       L->region_nbytes = UINT64_MAX);

	/* overlapping vectors inside a block */
	REJECT(N, L->head_stride = 6);           /* heads overlap (vec is 8) */
	REJECT(N, L->token_stride = 8);          /* == head_stride: token 1 is head 1 */
	REJECT(N, L->token_stride = 14);         /* token 1 overlaps head 1 of token 0 */
	REJECT(H, L->token_stride = 7);          /* tokens overlap */
	REJECT(H, L->head_stride = 30);          /* head 1 overlaps token 3 of head 0 */
	REJECT(X, L->head_stride = 16; L->token_stride = 16);
	ACCEPT(N, L->token_stride = 17; L->block_stride = 4 * 17; L->region_nbytes += 1000);
	ACCEPT(H, L->head_stride = 32 + 5; L->block_stride = 2 * 37; L->region_nbytes += 1000);
	REJECT(N, L->token_stride = 17; L->block_stride = 4 * 17); /* the gaps push it out */

	/* blocks overlapping each other */
	REJECT(N, L->block_stride = 63);
	REJECT(X, L->block_stride = 63);
	REJECT(N, L->block_stride = 1);
	ACCEPT(N, L->n_blocks = 1; L->block_stride = 1); /* one block: stride unused */
	ACCEPT(X, L->block_stride = 64);                /* K of layer l+1 overlaps: allowed */

	assert_int_equal(shadow_layout_validate(NULL, &hg), SHADOW_EGEOMETRY);
	assert_int_equal(shadow_layout_validate(fresh(N), NULL), SHADOW_EGEOMETRY);
}

/* ------------------------------------------------------------------------------------------ */
/* Random layouts: validate never faults (UBSan watches the arithmetic), and whatever it
 * accepts keeps every element in the region, never overlaps within a (layer, kind), and
 * plans correctly. */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static uint64_t rnd_below(uint64_t n)
{
	return rnd() % n;
}

static int64_t rnd_stride(int64_t natural)
{
	switch (rnd_below(12)) {
	case 0:
		return 0;
	case 1:
		return -(int64_t)rnd_below(100) - 1;
	case 2:
		return INT64_MAX - (int64_t)rnd_below(4);
	case 3:
		return INT64_MIN + (int64_t)rnd_below(4);
	case 4:
		return (int64_t)(rnd() >> 1);
	case 5:
	case 6:
		return (int64_t)rnd_below(300) + 1;
	case 7:
		return (int64_t)((uint64_t)natural + rnd_below(17) - 8); /* wraps, no UB */
	default:
		return natural;
	}
}

static void check_accepted(const struct shadow_kv_layout *L, const struct shadow_kv_geometry *g)
{
	const uint64_t vec = (uint64_t)g->head_dim * shadow_dtype_nbytes(g->dtype);
	uint8_t *map = malloc(L->region_nbytes);

	assert_non_null(map);
	for (uint32_t l = 0; l < g->n_layers; l++) {
		for (uint32_t kv = 0; kv < 2; kv++) {
			memset(map, 0, L->region_nbytes);
			for (uint32_t b = 0; b < L->n_blocks; b++)
			for (uint32_t t = 0; t < g->block_tokens; t++)
			for (uint32_t h = 0; h < g->n_kv_heads; h++) {
				int64_t off = shadow_layout_offset(L, g, l, (enum shadow_kv_kind)kv,
								   b, t, h);
				assert_true(off >= 0);
				assert_true((uint64_t)off + vec <= L->region_nbytes);
				for (uint64_t i = 0; i < vec; i++) {
					assert_int_equal(map[off + i], 0);
					map[off + i] = 1;
				}
			}
		}
	}
	free(map);

	/* plan a frame into distinct random blocks, if there are enough */
	uint32_t n_ids = g->chunk_tokens / g->block_tokens, ids[64];
	if (n_ids > L->n_blocks || n_ids > 64)
		return;
	for (uint32_t i = 0; i < n_ids; i++) {
		bool dup;
		do {
			ids[i] = (uint32_t)rnd_below(L->n_blocks);
			dup = false;
			for (uint32_t j = 0; j < i; j++)
				dup = dup || ids[j] == ids[i];
		} while (dup);
	}
	check_scatter(L, g, (uint32_t)rnd_below(g->n_layers), (enum shadow_kv_kind)rnd_below(2),
		      ids);
}

static void test_validate_random(void **state)
{
	(void)state;
	unsigned accepted = 0, rejected = 0;

	for (int iter = 0; iter < 20000; iter++) {
		struct shadow_kv_geometry g = {
			.n_layers = 1 + (uint32_t)rnd_below(3),
			.n_kv_heads = 1 + (uint32_t)rnd_below(3),
			.head_dim = 1 + (uint32_t)rnd_below(6),
			.dtype = 1 + (uint32_t)rnd_below(4),
			.block_tokens = 1 + (uint32_t)rnd_below(4),
		};
		g.chunk_tokens = g.block_tokens * (1 + (uint32_t)rnd_below(3));
		uint32_t n_blocks = 1 + (uint32_t)rnd_below(6);
		uint64_t off = rnd_below(64);
		struct shadow_kv_layout L;

		uint64_t region = off + cache_nbytes(&g, n_blocks) + rnd_below(64);
		assert_int_equal(shadow_layout_init(&L, &g, all_kinds[rnd_below(3)], n_blocks, off,
						    region),
				 0);
		/* perturb a few fields */
		int n_mut = (int)rnd_below(4);
		for (int m = 0; m < n_mut; m++) {
			switch (rnd_below(9)) {
			case 0:
				L.block_stride = rnd_stride(L.block_stride);
				break;
			case 1:
				L.token_stride = rnd_stride(L.token_stride);
				break;
			case 2:
				L.head_stride = rnd_stride(L.head_stride);
				break;
			case 3:
				L.elem_stride = rnd_stride(L.elem_stride);
				break;
			case 4:
				L.n_blocks = (uint32_t)rnd_below(8);
				break;
			case 5:
				L.base[rnd_below(g.n_layers)][rnd_below(2)] =
					rnd_below(2) ? rnd() : rnd_below(L.region_nbytes + 1);
				break;
			case 6:
				L.region_nbytes += rnd_below(400);
				break;
			case 7:
				L.region_nbytes = rnd_below(L.region_nbytes + 1);
				break;
			default:
				L.n_layers = (uint32_t)rnd_below(5);
				break;
			}
		}
		if (L.region_nbytes > (1u << 16))
			L.region_nbytes = 1u << 16; /* keep the byte maps small */
		if (shadow_layout_validate(&L, &g) == 0) {
			accepted++;
			check_accepted(&L, &g);
		} else {
			rejected++;
		}
	}
	printf("# random layouts: %u accepted, %u rejected\n", accepted, rejected);
	assert_true(accepted > 5000 && rejected > 2000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_strides),
		cmocka_unit_test(test_offsets_match_reference),
		cmocka_unit_test(test_init_errors),
		cmocka_unit_test(test_plan_standard_layouts),
		cmocka_unit_test(test_plan_merging),
		cmocka_unit_test(test_plan_non_dense),
		cmocka_unit_test(test_plan_enobufs_and_args),
		cmocka_unit_test(test_stage_offset),
		cmocka_unit_test(test_validate_hostile),
		cmocka_unit_test(test_validate_random),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
