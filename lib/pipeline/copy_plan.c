/*
 * copy_plan.c - the copy of a whole staged chunk as few copy operations as its layout allows
 * (copy.h, shadow__copy_plan_chunk), and the checks every copy backend makes of a job.
 *
 * DESIGN
 *
 * Why. The copy engine is fast and each copy operation is not: the CUDA driver spends about
 * 1 us of the issuing thread per copy of a batch, so a chunk of 8 KiB blocks (16 tokens of
 * 2 KV heads) scattered frame by frame caps one copy thread at 8 GB/s, while one 2D copy
 * of the same 8 KiB lines at a regular pitch moved 54 GB/s on the H100 host
 * (bench/research/copy_lab.cu, docs/results.md). Within a frame nothing is regular: its
 * blocks go wherever the engine's block table says. Across frames there is a pattern: frame
 * f = 2 * layer + kind lands at base[layer][kind] + id * block_stride, so block i of every
 * frame moves by the same distance from one frame to the next wherever the layout's bases
 * are evenly spaced (one tensor for all layers: [layer][kind][block]... or
 * [block][layer][kind]...). The pipeline stages a chunk's frames at a fixed pitch, so the
 * source side is regular too, and block i of frames a .. b-1 is one rectangle:
 *
 *	staging (frame pitch P)                region
 *	+---------+ f=a     run i: src s_i      +----+ dst d_i
 *	|   [i]   |  ---------------------->    |[i] |
 *	+---------+ f=a+1                       +----+ d_i + D_i      lines of width w_i,
 *	|   [i]   |  ---------------------->    |[i] |                 src pitch P,
 *	+---------+ ...                         +----+ d_i + 2 D_i     dst pitch D_i >= w_i
 *
 * How. Frames are planned in order with shadow_layout_plan_frame. An open group (frames
 * a .. f-1) holds one rectangle per run of frame a; frame f joins it when its runs match the
 * group's one for one: the same count, the same widths and offsets in the frame, and each
 * run at the group's next line (for the group's second frame, any distance D_i >= w_i, which
 * becomes the rectangle's pitch). Otherwise the group is closed and frame f opens the next.
 * A closed group of one frame gives plain runs, of more frames rectangles. All of a frame's
 * runs join or none do: layouts give every run of a frame the same distance, and a frame
 * split across groups would only make more operations.
 *
 * Output order: group after group, run order within a group; the lines of one rectangle
 * never overlap (pitch >= width). Two runs of one chunk may overlap in the region where a
 * block id repeats in the block table or where the layout lets two (layer, kind) ranges
 * alias (validation allows it: the client's business); which one wins is then not defined (a
 * batch of CUDA copies runs in no set order anyway), and every write stays inside the
 * region.
 *
 * Hot path: runs once per chunk on a decode thread; no allocation (the caller's scratch),
 * O(frames x runs) work.
 */
#include <errno.h>
#include <string.h>

#include "core/log.h"
#include "pipeline/copy.h"

/* Close the open group: its rectangles of height 1 as runs, the others as rectangles. */
static int group_close(struct shadow__copy_plan *plan, const struct shadow__copy_rect *open,
		       size_t n_open)
{
	for (size_t i = 0; i < n_open; i++) {
		const struct shadow__copy_rect *g = &open[i];
		if (g->height == 1) {
			if (plan->n_runs == plan->max_runs)
				return -ENOBUFS;
			plan->runs[plan->n_runs++] = (struct shadow_copy_run){
				.src_offset = g->src_offset,
				.dst_offset = g->dst_offset,
				.nbytes = g->width,
			};
		} else {
			if (plan->n_rects == plan->max_rects)
				return -ENOBUFS;
			plan->rects[plan->n_rects++] = *g;
		}
	}
	return 0;
}

/* Whether frame f's runs (frame-relative sources) continue the open group, line by line. */
static bool group_takes(const struct shadow__copy_rect *open, size_t n_open,
			const struct shadow_copy_run *runs, size_t n_runs, uint64_t f,
			uint64_t frame_pitch)
{
	if (n_runs != n_open)
		return false;
	for (size_t i = 0; i < n_runs; i++) {
		const struct shadow__copy_rect *g = &open[i];
		uint64_t src = f * frame_pitch + runs[i].src_offset;

		if (runs[i].nbytes != g->width || src != g->src_offset + g->height * frame_pitch)
			return false;
		if (g->height == 1) {
			/* The second line sets the pitch: after the first, never onto it. */
			if (runs[i].dst_offset < g->dst_offset ||
			    runs[i].dst_offset - g->dst_offset < g->width)
				return false;
		} else if (runs[i].dst_offset != g->dst_offset + g->height * g->dst_pitch) {
			return false;
		}
	}
	return true;
}

int shadow__copy_plan_chunk(const struct shadow_kv_layout *layout,
			    const struct shadow_kv_geometry *geom, const uint32_t *block_ids,
			    uint32_t n_block_ids, uint64_t frame_pitch,
			    struct shadow_copy_run *scratch_runs,
			    struct shadow__copy_rect *scratch_rects, size_t max_frame_runs,
			    struct shadow__copy_plan *plan)
{
	uint64_t frame_nbytes;
	size_t n_open = 0;
	int err;

	if (layout == NULL || geom == NULL || block_ids == NULL || scratch_runs == NULL ||
	    scratch_rects == NULL || plan == NULL || (plan->max_runs > 0 && plan->runs == NULL) ||
	    (plan->max_rects > 0 && plan->rects == NULL))
		return -EINVAL;
	plan->n_runs = 0;
	plan->n_rects = 0;
	frame_nbytes = shadow_geometry_frame_nbytes(geom);
	if (frame_nbytes == 0 || frame_pitch < frame_nbytes)
		return -EINVAL;
	/* Every staging offset below 2 * n_layers * frame_pitch must not wrap. */
	uint64_t staged;
	if (!shadow_mul_u64(2 * (uint64_t)geom->n_layers, frame_pitch, &staged))
		return -EINVAL;

	for (uint32_t f = 0; f < 2 * geom->n_layers; f++) {
		size_t n_runs = 0;

		err = shadow_layout_plan_frame(layout, geom, f / 2, (enum shadow_kv_kind)(f % 2),
					       block_ids, n_block_ids, scratch_runs, max_frame_runs,
					       &n_runs);
		if (err != 0)
			return err;
		if (n_open > 0 &&
		    group_takes(scratch_rects, n_open, scratch_runs, n_runs, f, frame_pitch)) {
			for (size_t i = 0; i < n_open; i++) {
				struct shadow__copy_rect *g = &scratch_rects[i];
				if (g->height == 1)
					g->dst_pitch = scratch_runs[i].dst_offset - g->dst_offset;
				g->height++;
			}
			continue;
		}
		err = group_close(plan, scratch_rects, n_open);
		if (err != 0)
			return err;
		for (size_t i = 0; i < n_runs; i++) {
			scratch_rects[i] = (struct shadow__copy_rect){
				.src_offset = (uint64_t)f * frame_pitch + scratch_runs[i].src_offset,
				.dst_offset = scratch_runs[i].dst_offset,
				.width = scratch_runs[i].nbytes,
				.src_pitch = frame_pitch,
				.dst_pitch = scratch_runs[i].nbytes,
				.height = 1,
			};
		}
		n_open = n_runs;
	}
	return group_close(plan, scratch_rects, n_open);
}

bool shadow__copy_rect_fits(const struct shadow__copy_rect *rect, uint64_t region_nbytes)
{
	uint64_t last, end;

	/* The last line starts at dst_offset + (height - 1) * dst_pitch; lines never overlap. */
	return rect->height > 0 && rect->width > 0 && rect->dst_pitch >= rect->width &&
	       rect->src_pitch >= rect->width &&
	       shadow_mul_u64(rect->height - 1, rect->dst_pitch, &last) &&
	       shadow_add_u64(rect->dst_offset, last, &last) &&
	       shadow_add_u64(last, rect->width, &end) && end <= region_nbytes;
}

bool shadow__copy_runs_fit(const struct shadow_copy_run *runs, uint32_t n_runs,
			   uint64_t region_nbytes)
{
	for (uint32_t i = 0; i < n_runs; i++) {
		uint64_t end;

		if (!shadow_add_u64(runs[i].dst_offset, runs[i].nbytes, &end) ||
		    end > region_nbytes)
			return false;
	}
	return true;
}

int shadow__copy_job_check(const struct shadow__copy_job *job, uint64_t region_nbytes,
			   const char *backend)
{
	if ((job->n_runs > 0 && (job->runs == NULL || job->src == NULL)) ||
	    (job->n_rects > 0 && (job->rects == NULL || job->src == NULL)))
		return -EINVAL;
	if (!shadow__copy_runs_fit(job->runs, job->n_runs, region_nbytes)) {
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
				       "%s copy: a run ends beyond the %llu-byte region", backend,
				       (unsigned long long)region_nbytes);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < job->n_rects; i++) {
		if (!shadow__copy_rect_fits(&job->rects[i], region_nbytes)) {
			SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR,
					       "%s copy: a malformed rectangle, or one that ends "
					       "beyond the %llu-byte region", backend,
					       (unsigned long long)region_nbytes);
			return -EINVAL;
		}
	}
	return 0;
}
