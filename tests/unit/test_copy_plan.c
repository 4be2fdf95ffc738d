/*
 * test_copy_plan.c - shadow__copy_plan_chunk (lib/pipeline/copy_plan.c): for every standard
 * layout, block ids in order and scattered, and layouts whose bases are not evenly spaced,
 * the chunk plan moves exactly the bytes the per-frame plans move (both applied to regions
 * with memcpy and compared byte for byte), with as few operations as the layout allows; its
 * rectangles are well formed; errors for bad arguments and arrays too small; and
 * shadow__copy_rect_fits on the edges.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/copy.h"
#include "test_rng.h"

#define N_BLOCKS 40u
#define PITCH_PAD 192u /* frames staged this far apart beyond their size, as a pipeline may */

struct scene {
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout layout;
	uint32_t bpc, n_frames, max_runs;
	uint64_t frame_nbytes, pitch;
	uint32_t ids[64];
	uint8_t *stage;               /* n_frames frames at `pitch` */
	uint8_t *want, *got;          /* two regions */
	struct shadow_copy_run *runs; /* the plan's arrays */
	struct shadow__copy_rect *rects;
	struct shadow_copy_run *scratch_runs;
	struct shadow__copy_rect *scratch_rects;
	struct shadow__copy_plan plan;
};

static void scene_init(struct scene *s, enum shadow_layout_kind kind)
{
	memset(s, 0, sizeof(*s));
	assert_int_equal(shadow_geometry_preset("minillama-h128", &s->geom), 0);
	s->geom.n_layers = 3;
	s->geom.chunk_tokens = 64;
	s->bpc = s->geom.chunk_tokens / s->geom.block_tokens;
	s->n_frames = 2 * s->geom.n_layers;
	s->frame_nbytes = shadow_geometry_frame_nbytes(&s->geom);
	s->pitch = s->frame_nbytes + PITCH_PAD;
	/* Room for the region, whatever the layout: every block of every frame. */
	uint64_t region = (uint64_t)N_BLOCKS * s->n_frames * (s->frame_nbytes / s->bpc) + 4096;
	assert_int_equal(shadow_layout_init(&s->layout, &s->geom, kind, N_BLOCKS, 0, region), 0);
	/* Every block on its own, heads apart: the most runs a frame can need. */
	s->max_runs = s->bpc * s->geom.block_tokens * s->geom.n_kv_heads;
	s->stage = malloc(s->n_frames * s->pitch);
	s->want = calloc(1, region);
	s->got = calloc(1, region);
	s->runs = calloc((size_t)s->n_frames * s->max_runs, sizeof(*s->runs));
	s->rects = calloc((size_t)s->geom.n_layers * s->max_runs, sizeof(*s->rects));
	s->scratch_runs = calloc(s->max_runs, sizeof(*s->scratch_runs));
	s->scratch_rects = calloc(s->max_runs, sizeof(*s->scratch_rects));
	assert_non_null(s->stage);
	assert_non_null(s->want);
	assert_non_null(s->got);
	assert_non_null(s->runs);
	assert_non_null(s->rects);
	assert_non_null(s->scratch_runs);
	assert_non_null(s->scratch_rects);
	for (uint64_t i = 0; i < s->n_frames * s->pitch; i++)
		s->stage[i] = (uint8_t)(rnd() >> 56);
	s->plan = (struct shadow__copy_plan){ .runs = s->runs,
					      .max_runs = (size_t)s->n_frames * s->max_runs,
					      .rects = s->rects,
					      .max_rects = (size_t)s->geom.n_layers * s->max_runs };
}

static void scene_free(struct scene *s)
{
	free(s->stage);
	free(s->want);
	free(s->got);
	free(s->runs);
	free(s->rects);
	free(s->scratch_runs);
	free(s->scratch_rects);
}

static void ids_in_order(struct scene *s, uint32_t first)
{
	for (uint32_t i = 0; i < s->bpc; i++)
		s->ids[i] = first + i;
}

static void ids_scattered(struct scene *s)
{
	for (uint32_t i = 0; i < s->bpc; i++)
		s->ids[i] = (i * 7 + 5) % N_BLOCKS;
}

static int plan(struct scene *s)
{
	return shadow__copy_plan_chunk(&s->layout, &s->geom, s->ids, s->bpc, s->pitch,
				       s->scratch_runs, s->scratch_rects, s->max_runs, &s->plan);
}

/*
 * Apply the per-frame plans to `want` and the chunk plan to `got`, and compare the regions;
 * check every rectangle is well formed and inside the region. Returns the operations the
 * chunk plan made, and the per-frame runs into *per_frame_ret.
 */
static size_t apply_and_compare(struct scene *s, size_t *per_frame_ret)
{
	size_t per_frame = 0;

	assert_int_equal(plan(s), 0);
	for (uint32_t f = 0; f < s->n_frames; f++) {
		size_t n = 0;
		assert_int_equal(shadow_layout_plan_frame(&s->layout, &s->geom, f / 2,
							  (enum shadow_kv_kind)(f % 2), s->ids,
							  s->bpc, s->scratch_runs, s->max_runs, &n),
				 0);
		for (size_t i = 0; i < n; i++) {
			const struct shadow_copy_run *r = &s->scratch_runs[i];
			memcpy(s->want + r->dst_offset, s->stage + f * s->pitch + r->src_offset,
			       r->nbytes);
		}
		per_frame += n;
	}
	for (size_t i = 0; i < s->plan.n_runs; i++) {
		const struct shadow_copy_run *r = &s->plan.runs[i];
		memcpy(s->got + r->dst_offset, s->stage + r->src_offset, r->nbytes);
	}
	for (size_t i = 0; i < s->plan.n_rects; i++) {
		const struct shadow__copy_rect *q = &s->plan.rects[i];
		assert_true(q->height >= 2);
		assert_int_equal(q->src_pitch, s->pitch);
		assert_true(shadow__copy_rect_fits(q, s->layout.region_nbytes));
		for (uint64_t j = 0; j < q->height; j++)
			memcpy(s->got + q->dst_offset + j * q->dst_pitch,
			       s->stage + q->src_offset + j * q->src_pitch, q->width);
	}
	assert_memory_equal(s->want, s->got, s->layout.region_nbytes);
	*per_frame_ret = per_frame;
	return s->plan.n_runs + s->plan.n_rects;
}

/* NHD and HND tensors per layer at a fixed size: block i of every frame is one rectangle. */
static void test_per_layer_scattered(void **state)
{
	static const enum shadow_layout_kind kinds[] = { SHADOW_LAYOUT_NHD, SHADOW_LAYOUT_HND };
	struct scene s;
	size_t per_frame;
	(void)state;

	for (size_t k = 0; k < 2; k++) {
		scene_init(&s, kinds[k]);
		ids_scattered(&s);
		size_t ops = apply_and_compare(&s, &per_frame);
		/* HND blocks are as dense as NHD ones here: one run per block and frame. */
		assert_int_equal(per_frame, (size_t)s.n_frames * s.bpc);
		assert_int_equal(ops, s.bpc);
		assert_int_equal(s.plan.n_runs, 0);
		for (size_t i = 0; i < s.plan.n_rects; i++) {
			assert_int_equal(s.plan.rects[i].height, s.n_frames);
			assert_int_equal(s.plan.rects[i].width, s.frame_nbytes / s.bpc);
			/* K to V to the next layer's K: one kind's tensor apart */
			assert_int_equal(s.plan.rects[i].dst_pitch,
					 s.layout.base[0][SHADOW_KV_V] - s.layout.base[0][SHADOW_KV_K]);
		}
		scene_free(&s);
	}
}

/* Consecutive block ids: a frame is one run, the chunk one rectangle. */
static void test_per_layer_in_order(void **state)
{
	struct scene s;
	size_t per_frame;
	(void)state;

	scene_init(&s, SHADOW_LAYOUT_NHD);
	ids_in_order(&s, 9);
	assert_int_equal(apply_and_compare(&s, &per_frame), 1);
	assert_int_equal(per_frame, s.n_frames);
	assert_int_equal(s.plan.rects[0].width, s.frame_nbytes);
	assert_int_equal(s.plan.rects[0].height, s.n_frames);
	scene_free(&s);
}

/* Cross-layer: a block's frames are adjacent in the region, so its rectangle's lines are too. */
static void test_cross_layer(void **state)
{
	struct scene s;
	size_t per_frame;
	(void)state;

	scene_init(&s, SHADOW_LAYOUT_CROSS_LAYER_NHD);
	ids_scattered(&s);
	assert_int_equal(apply_and_compare(&s, &per_frame), s.bpc);
	assert_int_equal(per_frame, (size_t)s.n_frames * s.bpc);
	for (size_t i = 0; i < s.plan.n_rects; i++)
		assert_int_equal(s.plan.rects[i].dst_pitch, s.plan.rects[i].width);
	scene_free(&s);
}

/*
 * Bases not evenly spaced: layer 1 moved up by a block's span. Frames 0-1 and 2-3 still pair
 * up (K to V is regular within a layer), and the groups break where the distance changes; a
 * layout whose frames go backwards gives plain runs only.
 */
static void test_uneven_bases(void **state)
{
	struct scene s;
	size_t per_frame;
	(void)state;

	scene_init(&s, SHADOW_LAYOUT_NHD);
	ids_scattered(&s);
	uint64_t span = s.layout.base[1][SHADOW_KV_K] - s.layout.base[0][SHADOW_KV_K];
	s.layout.region_nbytes += span; /* room for the move */
	free(s.want);
	free(s.got);
	s.want = calloc(1, s.layout.region_nbytes);
	s.got = calloc(1, s.layout.region_nbytes);
	assert_non_null(s.want);
	assert_non_null(s.got);
	s.layout.base[2][SHADOW_KV_K] += span;
	s.layout.base[2][SHADOW_KV_V] += span;
	assert_int_equal(shadow_layout_validate(&s.layout, &s.geom), 0);
	size_t ops = apply_and_compare(&s, &per_frame);
	assert_true(ops > s.bpc && ops < per_frame);

	/* Backwards: layer l at (n_layers - 1 - l) spans, V below K. */
	for (uint32_t l = 0; l < s.geom.n_layers; l++) {
		s.layout.base[l][SHADOW_KV_K] = (2 * (s.geom.n_layers - 1 - l) + 1) * span / 2;
		s.layout.base[l][SHADOW_KV_V] = (2 * (s.geom.n_layers - 1 - l)) * span / 2;
	}
	assert_int_equal(shadow_layout_validate(&s.layout, &s.geom), 0);
	memset(s.want, 0, s.layout.region_nbytes);
	memset(s.got, 0, s.layout.region_nbytes);
	assert_int_equal(apply_and_compare(&s, &per_frame), per_frame);
	assert_int_equal(s.plan.n_rects, 0);
	scene_free(&s);
}

static void test_errors(void **state)
{
	struct scene s;
	(void)state;

	scene_init(&s, SHADOW_LAYOUT_NHD);
	ids_scattered(&s);
	/* Frames closer than their size, or a pitch whose staging offsets would wrap. */
	assert_int_equal(shadow__copy_plan_chunk(&s.layout, &s.geom, s.ids, s.bpc,
						 s.frame_nbytes - 1, s.scratch_runs,
						 s.scratch_rects, s.max_runs, &s.plan),
			 -EINVAL);
	assert_int_equal(shadow__copy_plan_chunk(&s.layout, &s.geom, s.ids, s.bpc,
						 UINT64_MAX / 2, s.scratch_runs, s.scratch_rects,
						 s.max_runs, &s.plan),
			 -EINVAL);
	assert_int_equal(shadow__copy_plan_chunk(NULL, &s.geom, s.ids, s.bpc, s.pitch,
						 s.scratch_runs, s.scratch_rects, s.max_runs,
						 &s.plan),
			 -EINVAL);
	assert_int_equal(shadow__copy_plan_chunk(&s.layout, &s.geom, s.ids, s.bpc, s.pitch,
						 NULL, s.scratch_rects, s.max_runs, &s.plan),
			 -EINVAL);
	/* A block id past the cache, and a wrong count of ids. */
	s.ids[3] = N_BLOCKS;
	assert_int_equal(plan(&s), -EINVAL);
	ids_scattered(&s);
	assert_int_equal(shadow__copy_plan_chunk(&s.layout, &s.geom, s.ids, s.bpc - 1, s.pitch,
						 s.scratch_runs, s.scratch_rects, s.max_runs,
						 &s.plan),
			 -EINVAL);
	/* Scratch smaller than a frame's runs. */
	assert_int_equal(shadow__copy_plan_chunk(&s.layout, &s.geom, s.ids, s.bpc, s.pitch,
						 s.scratch_runs, s.scratch_rects, s.bpc - 1,
						 &s.plan),
			 -ENOBUFS);
	/* Plan arrays too small: rectangles here, runs when the layout gives no rectangles. */
	s.plan.max_rects = s.bpc - 1;
	assert_int_equal(plan(&s), -ENOBUFS);
	s.plan.max_rects = 0;
	s.plan.rects = NULL;
	assert_int_equal(plan(&s), -ENOBUFS);
	s.plan.rects = s.rects;
	s.plan.max_rects = (size_t)s.geom.n_layers * s.max_runs;
	s.plan.max_runs = 0;
	assert_int_equal(plan(&s), 0); /* no runs needed */
	assert_int_equal(s.plan.n_runs, 0);
	scene_free(&s);
}

static void test_rect_fits(void **state)
{
	const struct shadow__copy_rect ok = { .src_offset = 0, .dst_offset = 100, .width = 10,
					      .src_pitch = 10, .dst_pitch = 30, .height = 4 };
	struct shadow__copy_rect q;
	(void)state;

	assert_true(shadow__copy_rect_fits(&ok, 100 + 3 * 30 + 10)); /* ends at the end */
	assert_false(shadow__copy_rect_fits(&ok, 100 + 3 * 30 + 9));
	q = ok;
	q.height = 0;
	assert_false(shadow__copy_rect_fits(&q, UINT64_MAX));
	q = ok;
	q.width = 0;
	assert_false(shadow__copy_rect_fits(&q, UINT64_MAX));
	q = ok;
	q.dst_pitch = 9; /* lines would overlap */
	assert_false(shadow__copy_rect_fits(&q, UINT64_MAX));
	q = ok;
	q.src_pitch = 9;
	assert_false(shadow__copy_rect_fits(&q, UINT64_MAX));
	q = ok;
	q.height = UINT64_MAX; /* (height - 1) x pitch wraps */
	assert_false(shadow__copy_rect_fits(&q, UINT64_MAX));
	q = ok;
	q.dst_offset = UINT64_MAX - 50; /* the last line's end wraps */
	assert_false(shadow__copy_rect_fits(&q, UINT64_MAX));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_per_layer_scattered),
		cmocka_unit_test(test_per_layer_in_order),
		cmocka_unit_test(test_cross_layer),
		cmocka_unit_test(test_uneven_bases),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_rect_fits),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
