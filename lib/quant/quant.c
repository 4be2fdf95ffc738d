/*
 * quant.c - the encoder side of quant.h: group parameters, symbols (uniform and ECSQ), bit
 * packing, byte planes.
 *
 * A group's parameters come from its statistics (min and max, or mean and population std, in
 * double, over its finite elements), are rounded to bf16, and the elements are quantized
 * against the rounded values: the symbol is the grid point nearest x as the decoder computes
 * it, (float)q * scale + bias in float (no FMA: this file is built with -ffp-contract=off like
 * the kernels). (x - bias) * (1 / scale) in double, rounded to nearest even, is the answer
 * unless it lies within the decoder's rounding error of a half-integer (struct shadow_grid,
 * `sure`); only then the exact quotient is taken and its neighbours are checked with the
 * decoder's arithmetic. (With bf16 parameters, q * scale is exact in float and x is a float,
 * so the check has not been seen to change a symbol in 18M near-tie trials; it makes the
 * property hold by construction rather than by that argument.) The same grid serves both
 * symbol kinds: uniform q in [0, 2^b - 1], ECSQ q in [-32767, 32767].
 *
 * Groups are tiles of group_tokens tokens x group_channels channels (quant.h). A frame is
 * walked one token group and one block of whole groups of at most SHADOW_QUANT_COLS channels
 * (or one group, if it is wider) at a time, so that every pass reads rows of contiguous floats
 * and the statistics of the block's groups live on the stack (no allocation, no strided
 * walks): per-channel key groups make blocks of SHADOW_QUANT_COLS groups of one channel over
 * the token group's rows, per-token value groups of head_dim 128 blocks of one row of one
 * group, 16 x 32 tiles blocks of four groups over 16 rows.
 *
 * Measured (one core of an AMD EPYC, -O2, frames of 256 tokens x 8 heads x 128 channels, 4
 * bits, Melem/s): uniform MINMAX / STD: keys (256 x 1) 300 / 229, values (1 x 128) 300 / 218,
 * (1 x 32) 257 / 164, 16 x 32 tiles 329 / 245, whole head-frames 334 / 259; ECSQ: keys 192,
 * values 195, 16 x 32 215, whole 219. (The per-axis code before tiles: keys 263 / 211, values
 * 288 / 216, (1 x 32) 224 / 162.)
 */
#include <errno.h>
#include <string.h>

#include "quant/quant.h"

/* Groups (and, unless one group is wider, channels) per block: their statistics and grids on
 * the stack (~9 KiB). */
#define SHADOW_QUANT_COLS 128

/* ECSQ symbols: q in [-SHADOW_ECSQ_QMAX, SHADOW_ECSQ_QMAX], so that zigzag gives 0..65534. */
#define SHADOW_ECSQ_QMAX 32767

#define SHADOW_BF16_MAX 0x7f7fu /* largest finite bf16, 3.3895e38 */

/* A group's grid: the stored parameters as floats, and what quantizing needs. */
struct shadow_grid {
	float scale, bias;
	double inv;  /* 1 / scale, 0 when scale is 0 */
	double sure; /* |t - round(t)| up to this needs no check of the neighbours */
	double qmin, qmax; /* the symbols' range: [0, 2^b - 1] or [-32767, 32767] */
};

/* Statistics over a group's finite elements. */
struct shadow_stats {
	double sum, m2; /* m2: sum of squared deviations from the mean (second pass) */
	float mn;
	uint32_t n;
	float mx; /* not next to mn: see shadow_stats_block */
};

static inline bool shadow_isfinite(float x)
{
	return x - x == 0.0f; /* NaN for inf and NaN */
}

/* The largest bf16 <= f, for finite f; -inf beyond bf16's range is clamped to its max. */
static uint16_t shadow_bf16_down(float f)
{
	uint16_t h = shadow__float_to_bf16(f);

	if (shadow__bf16_to_float(h) > f) {
		if ((h & 0x7fffu) == 0)
			h = 0x8001u; /* below +-0: the smallest negative subnormal */
		else if (h & 0x8000u)
			h++;
		else
			h--;
	}
	if ((h & 0x7fffu) > SHADOW_BF16_MAX)
		h = (uint16_t)((h & 0x8000u) | SHADOW_BF16_MAX);
	return h;
}

/* The smallest bf16 >= d, for d >= 0 (clamped to bf16's largest finite value). */
static uint16_t shadow_bf16_up(double d)
{
	uint16_t h;

	if (d > 3.3895313892515355e38) /* bf16 max */
		return SHADOW_BF16_MAX;
	h = shadow__float_to_bf16((float)d);
	if ((double)shadow__bf16_to_float(h) < d)
		h++; /* both roundings were to nearest: one bf16 step is enough */
	return h;
}

/* Nearest bf16 to d (ties to even), clamped to the finite range. */
static uint16_t shadow_bf16_near(double d)
{
	if (d > 3.3895313892515355e38)
		return SHADOW_BF16_MAX;
	if (d < -3.3895313892515355e38)
		return 0x8000u | SHADOW_BF16_MAX;
	uint16_t h = shadow__float_to_bf16((float)d), sign = h & 0x8000u, m = h & 0x7fffu;

	if (m > SHADOW_BF16_MAX) /* (float)d rounded up to bf16 infinity */
		return (uint16_t)(sign | SHADOW_BF16_MAX);
	/*
	 * Rounding twice (to float, then to bf16) misses by one bf16 step when (float)d lands on a
	 * bf16 half-way point that d is not on: then a neighbour is strictly nearer.
	 */
	double ad = d < 0 ? -d : d, e = ad - shadow__bf16_to_float(m);

	if (m > 0 && e < 0 && ad - shadow__bf16_to_float((uint16_t)(m - 1)) < -e)
		m--;
	else if (m < SHADOW_BF16_MAX && e > 0 &&
		 shadow__bf16_to_float((uint16_t)(m + 1)) - ad < e)
		m++;
	return (uint16_t)(sign | m);
}

/* sqrt for v >= 0 without libm: Newton's method from a bit-level first guess. */
static double shadow_sqrt(double v)
{
	uint64_t u;
	double r;

	if (!(v > 0))
		return 0;
	memcpy(&u, &v, sizeof(u));
	u = (u >> 1) + (0x3ffull << 51); /* halves the exponent: within a factor of 2 */
	memcpy(&r, &u, sizeof(r));
	for (int i = 0; i < 6; i++) /* quadratic convergence: 6 steps exceed 53 bits */
		r = 0.5 * (r + v / r);
	return r;
}

static void shadow_stats_init(struct shadow_stats *s)
{
	s->mn = __builtin_inff();
	s->mx = -__builtin_inff();
	s->sum = 0;
	s->m2 = 0;
	s->n = 0;
}

static inline void shadow_stats_add(struct shadow_stats *s, float x)
{
	if (!shadow_isfinite(x))
		return;
	s->mn = x < s->mn ? x : s->mn;
	s->mx = x > s->mx ? x : s->mx;
	s->sum += x;
	s->n++;
}

static inline void shadow_stats_add2(struct shadow_stats *s, double mean, float x)
{
	if (shadow_isfinite(x))
		s->m2 += ((double)x - mean) * ((double)x - mean);
}

static void shadow_grid_set(struct shadow_grid *g, uint16_t scale_h, uint16_t bias_h,
			    int32_t qmin, int32_t qmax)
{
	g->scale = shadow__bf16_to_float(scale_h);
	g->bias = shadow__bf16_to_float(bias_h);
	g->inv = g->scale > 0 ? 1.0 / g->scale : 0.0;
	g->qmin = qmin;
	g->qmax = qmax;
	/*
	 * The decoder's q * scale + bias is off the exact value by at most
	 * 2^-24 * (2 * |q| * scale + |bias|) + 2^-149 (two roundings, relative or subnormal),
	 * d = 2^-24 * (2 * |q| + |bias| / scale) + 2^-149 / scale in units of scale, |q| up to
	 * qabs. Rounding t (exact to ~2^-52) then picks the decoder's nearest point unless t is
	 * within d of a half-integer; allow four times that. When d is large (a bias huge against
	 * the scale), or a grid point may overflow to infinity in float (parameters near bf16's
	 * limit), every symbol gets its neighbours checked, clipped ones included.
	 */
	double abs_bias = g->bias < 0 ? -(double)g->bias : g->bias;
	double qabs = qmax > -qmin ? qmax : -(double)qmin;
	double d = 0x1p-24 * (2.0 * qabs + abs_bias * g->inv) + 0x1p-149 * g->inv;
	bool finite = qabs * g->scale + abs_bias <= 3.4028234663852886e38; /* FLT_MAX */

	g->sure = g->scale > 0 && d < 0x1p-4 && finite ? 0.5 - 4 * d : -1.0;
}

static void shadow_grid_minmax(const struct shadow_stats *s, uint32_t maxq, uint16_t *scale_ret,
			       uint16_t *bias_ret)
{
	uint16_t bias_h = shadow_bf16_down(s->mn), scale_h = 0;
	double bias = shadow__bf16_to_float(bias_h), d = ((double)s->mx - bias) / maxq;

	if (d > 0) {
		scale_h = shadow_bf16_up(d);
		/* The division rounded: make sure bias + maxq * scale >= max (in double). */
		while (scale_h < SHADOW_BF16_MAX &&
		       bias + (double)maxq * shadow__bf16_to_float(scale_h) < s->mx)
			scale_h++;
	}
	*bias_ret = bias_h;
	*scale_ret = scale_h;
}

/*
 * The uniform grid of a group from its statistics (the second pass done for STD). Writes the
 * stored bf16 parameters and sets *g from them.
 */
static void shadow_grid_make(const struct shadow__quant_params *p, const struct shadow_stats *s,
			     uint16_t *scale_ret, uint16_t *bias_ret, struct shadow_grid *g)
{
	uint32_t maxq = (1u << p->bits) - 1u;
	uint16_t scale_h = 0, bias_h = 0;

	if (s->n == 0) {
		/* nothing finite: scale 0, bias 0 */
	} else if (p->scale_rule == SHADOW_SCALE_MINMAX) {
		shadow_grid_minmax(s, maxq, &scale_h, &bias_h);
	} else {
		double mean = s->sum / s->n, std = shadow_sqrt(s->m2 / s->n);
		double step = (double)p->step_mul * std;

		if (step > 3.3895313892515355e38 || !(step == step)) {
			shadow_grid_minmax(s, maxq, &scale_h, &bias_h); /* no usable step */
		} else {
			scale_h = shadow_bf16_near(step);
			if ((scale_h & 0x7fffu) == 0) { /* std 0, or below bf16's range */
				scale_h = 0;
				bias_h = shadow_bf16_near(mean);
			} else {
				double zero = (double)(1u << (p->bits - 1));
				double step_b = shadow__bf16_to_float(scale_h);

				bias_h = shadow_bf16_near(mean - zero * step_b);
			}
		}
	}
	*scale_ret = scale_h;
	*bias_ret = bias_h;
	shadow_grid_set(g, scale_h, bias_h, 0, (int32_t)maxq);
}

/*
 * The ECSQ grid of a group from its statistics (both passes done). The step is rounded to the
 * nearest bf16, as the uniform STD rule does: step_mul is a rate knob, and nearest keeps the
 * step within 2^-9 of what was asked, neither coarser nor finer on average. Two exceptions: a
 * step beyond bf16's range clamps to its largest finite value (then nothing clips: every
 * |x - bias| is below 2 * 3.4e38), and a nonzero std never rounds to scale 0 (which would decode
 * the whole group as its mean) but to the smallest positive bf16, 2^-133.
 */
static void shadow_grid_ecsq(const struct shadow__quant_params *p, const struct shadow_stats *s,
			     uint16_t *scale_ret, uint16_t *bias_ret, struct shadow_grid *g)
{
	uint16_t scale_h = 0, bias_h = 0;

	if (s->n != 0) { /* else nothing finite: scale 0, bias 0 */
		double mean = s->sum / s->n, std = shadow_sqrt(s->m2 / s->n);

		bias_h = shadow_bf16_near(mean);
		if (std > 0) {
			scale_h = shadow_bf16_near((double)p->step_mul * std); /* >= +0 */
			if (scale_h == 0)
				scale_h = 1;
		}
	}
	*scale_ret = scale_h;
	*bias_ret = bias_h;
	shadow_grid_set(g, scale_h, bias_h, -SHADOW_ECSQ_QMAX, SHADOW_ECSQ_QMAX);
}

/* |decoded(q) - x|, with the decoder's arithmetic (q an integer, |q| < 2^24). */
static inline double shadow_grid_err(const struct shadow_grid *g, double q, float x)
{
	float y = (float)q * g->scale + g->bias;
	double e = (double)y - x;

	return e < 0 ? -e : e;
}

/* round(t) to nearest even, clamped to [qmin, qmax]; NaN gives qmin. In double: no int
 * conversions on the fast path. */
static inline double shadow_round_clamp(double t, double qmin, double qmax)
{
	if (!(t > qmin))
		return qmin;
	if (t >= qmax)
		return qmax;
	/* Adding and removing 1.5 * 2^52 rounds |t| < 2^51 to nearest even, without libm. */
	return (t + 0x1.8p52) - 0x1.8p52;
}

static inline int32_t shadow_quant1(const struct shadow_grid *g, float x)
{
	if (g->scale == 0 || !shadow_isfinite(x))
		return 0;
	/* Fast: the product by 1 / scale is within a few 2^-52 of the quotient. */
	double t = ((double)x - g->bias) * g->inv;
	double q = shadow_round_clamp(t, g->qmin, g->qmax);
	double r = t - q;

	if (r <= g->sure && r >= -g->sure)
		return (int32_t)q;
	if (g->sure >= 0 && (t <= g->qmin || t >= g->qmax))
		return (int32_t)q; /* off the grid: its end is nearest */
	/*
	 * Near a tie: the exact quotient (x - bias is exact in double for any x within 2^29 of
	 * bias's magnitude), so that a true tie goes to even; then the decoder's arithmetic
	 * decides between neighbours (a point that overflows to infinity is never nearer).
	 */
	q = shadow_round_clamp(((double)x - g->bias) / g->scale, g->qmin, g->qmax);
	double e = shadow_grid_err(g, q, x);

	if (q > g->qmin && shadow_grid_err(g, q - 1, x) < e)
		q -= 1;
	else if (q < g->qmax && shadow_grid_err(g, q + 1, x) < e)
		q += 1;
	return (int32_t)q;
}

/*
 * Checks p for shadow__quantize_frame (ecsq false) or shadow__quantize_frame_ecsq (true);
 * returns 0 with the element and group counts, or -EINVAL.
 */
static int shadow_quant_check(const struct shadow__quant_params *p, bool ecsq,
			      size_t *n_elems_ret, size_t *n_groups_ret)
{
	uint64_t row, elems, groups;

	if (p == NULL || p->n_tokens == 0 || p->n_heads == 0 || p->head_dim == 0)
		return -EINVAL;
	if (!ecsq && (p->bits < 2 || p->bits > 8))
		return -EINVAL;
	if (p->scale_rule == SHADOW_SCALE_STD) {
		/* finite and > 0 (NaN fails the first test, inf the second) */
		if (!(p->step_mul > 0) || !shadow_isfinite(p->step_mul))
			return -EINVAL;
	} else if (ecsq || p->scale_rule != SHADOW_SCALE_MINMAX) {
		return -EINVAL;
	}
	if (p->group_tokens == 0 || p->group_tokens > p->n_tokens || p->group_channels == 0 ||
	    p->head_dim % p->group_channels != 0)
		return -EINVAL;
	if (!shadow_mul_u64(p->n_heads, p->head_dim, &row) ||
	    !shadow_mul_u64(row, p->n_tokens, &elems) ||
	    !shadow_mul_u64((p->n_tokens - 1) / p->group_tokens + 1, row / p->group_channels,
			    &groups))
		return -EINVAL;
	/* The caller's buffers are sized from these: refuse what size_t cannot address. */
	if (elems > SIZE_MAX / sizeof(float) || groups > SIZE_MAX / 4)
		return -EINVAL;
	*n_elems_ret = (size_t)elems;
	*n_groups_ret = (size_t)groups;
	return 0;
}

size_t shadow__quant_n_groups(const struct shadow__quant_params *p)
{
	size_t n_elems, n_groups;

	return shadow_quant_check(p, false, &n_elems, &n_groups) == 0 ? n_groups : 0;
}

/* Where the symbols go: q (uniform), or the planes lo and hi (ECSQ, q NULL). */
struct shadow_quant_out {
	uint8_t *q, *lo, *hi;
};

/*
 * The statistics of a block: ng groups of gc channels at column c0 of rows [t0, t1) of C
 * floats, over their finite elements; st[0, ng) initialized. Per-channel groups (gc 1) are
 * walked row by row, one independent chain per channel; wider groups one at a time, each row's
 * gc floats in turn, with the statistics in locals that start from constants. Those locals,
 * and mn and mx apart in struct shadow_stats, keep GCC 12 from packing min and max into one
 * vector register with shuffles on the loop's dependency chain (value groups ran 20-45%
 * slower that way).
 */
static void shadow_stats_block(struct shadow_stats *st, const float *x, size_t C, size_t t0,
			       size_t t1, size_t c0, size_t ng, size_t gc)
{
	if (gc == 1) {
		for (size_t t = t0; t < t1; t++) {
			const float *row = x + t * C + c0;

			for (size_t g = 0; g < ng; g++)
				shadow_stats_add(&st[g], row[g]);
		}
		return;
	}
	for (size_t g = 0; g < ng; g++) {
		float mn = __builtin_inff(), mx = -__builtin_inff();
		double sum = 0;
		uint32_t n = 0;

		for (size_t t = t0; t < t1; t++) {
			const float *row = x + t * C + c0 + g * gc;

			for (size_t c = 0; c < gc; c++) {
				float v = row[c];

				if (!shadow_isfinite(v))
					continue;
				mn = v < mn ? v : mn;
				mx = v > mx ? v : mx;
				sum += v;
				n++;
			}
		}
		st[g].mn = mn;
		st[g].mx = mx;
		st[g].sum = sum;
		st[g].n = n;
	}
}

/* The second pass of the block for STD and ECSQ: m2 from each group's mean. */
static void shadow_stats_block2(struct shadow_stats *st, const float *x, size_t C, size_t t0,
				size_t t1, size_t c0, size_t ng, size_t gc)
{
	double mean[SHADOW_QUANT_COLS];

	for (size_t g = 0; g < ng; g++)
		mean[g] = st[g].n ? st[g].sum / st[g].n : 0;
	if (gc == 1) {
		for (size_t t = t0; t < t1; t++) {
			const float *row = x + t * C + c0;

			for (size_t g = 0; g < ng; g++)
				shadow_stats_add2(&st[g], mean[g], row[g]);
		}
		return;
	}
	for (size_t g = 0; g < ng; g++) {
		double m2 = 0, mg = mean[g];

		for (size_t t = t0; t < t1; t++) {
			const float *row = x + t * C + c0 + g * gc;

			for (size_t c = 0; c < gc; c++)
				if (shadow_isfinite(row[c]))
					m2 += ((double)row[c] - mg) * ((double)row[c] - mg);
		}
		st[g].m2 = m2;
	}
}

/* ECSQ symbol: zigzag in 32 bits (no signed shift), u = (q << 1) ^ (q >> 15) for |q| < 2^15. */
static inline void shadow_zigzag_put(int32_t q, uint8_t *lo, uint8_t *hi)
{
	uint32_t uq = (uint32_t)q, u = (uint32_t)(uq << 1) ^ (0u - (uq >> 31));

	*lo = (uint8_t)u;
	*hi = (uint8_t)(u >> 8);
}

/*
 * One block: token group [t0, t1) x channels [c0, c0 + ng * gc) of rows of C floats, i.e. ng
 * groups of gc channels, whose parameters go to scale[0, ng) and bias[0, ng).
 */
static void shadow_quant_block(const struct shadow__quant_params *p, const float *x,
			       const struct shadow_quant_out *o, size_t C, size_t t0, size_t t1,
			       size_t c0, size_t ng, size_t gc, uint16_t *scale, uint16_t *bias)
{
	struct shadow_stats st[SHADOW_QUANT_COLS];
	struct shadow_grid g[SHADOW_QUANT_COLS];

	SHADOW_ASSERT(ng >= 1 && ng <= SHADOW_QUANT_COLS);
	for (size_t k = 0; k < ng; k++)
		shadow_stats_init(&st[k]);
	shadow_stats_block(st, x, C, t0, t1, c0, ng, gc);
	if (o->q == NULL || p->scale_rule == SHADOW_SCALE_STD)
		shadow_stats_block2(st, x, C, t0, t1, c0, ng, gc);
	for (size_t k = 0; k < ng; k++) {
		if (o->q != NULL)
			shadow_grid_make(p, &st[k], &scale[k], &bias[k], &g[k]);
		else
			shadow_grid_ecsq(p, &st[k], &scale[k], &bias[k], &g[k]);
	}
	for (size_t t = t0; t < t1; t++) {
		const float *row = x + t * C + c0;
		size_t i0 = t * C + c0;

		if (o->q != NULL && gc == 1) { /* per-channel groups */
			for (size_t c = 0; c < ng; c++)
				o->q[i0 + c] = (uint8_t)shadow_quant1(&g[c], row[c]);
		} else if (o->q != NULL) {
			uint8_t *qrow = o->q + i0;

			for (size_t k = 0, c = 0; k < ng; k++) {
				const struct shadow_grid gk = g[k]; /* in registers */

				for (size_t e = c + gc; c < e; c++)
					qrow[c] = (uint8_t)shadow_quant1(&gk, row[c]);
			}
		} else if (gc == 1) {
			for (size_t c = 0; c < ng; c++)
				shadow_zigzag_put(shadow_quant1(&g[c], row[c]), &o->lo[i0 + c],
						  &o->hi[i0 + c]);
		} else {
			uint8_t *lo = o->lo + i0, *hi = o->hi + i0;

			for (size_t k = 0, c = 0; k < ng; k++) {
				const struct shadow_grid gk = g[k];

				for (size_t e = c + gc; c < e; c++)
					shadow_zigzag_put(shadow_quant1(&gk, row[c]), &lo[c],
							  &hi[c]);
			}
		}
	}
}

/*
 * Walks the frame's tiles in blocks (see the file comment): rows of a token group, whole
 * groups of a head's channels; the parameters of group (token group tg, channel j / gc) are at
 * tg * (C / gc) + j / gc, which is the [token group][head][channel group] order.
 */
static void shadow_quant_walk(const struct shadow__quant_params *p, const float *x,
			      const struct shadow_quant_out *o, size_t n_groups, uint16_t *params)
{
	uint16_t *scale = params, *bias = params + n_groups;
	size_t C = (size_t)p->n_heads * p->head_dim, gc = p->group_channels, row_groups = C / gc;
	size_t block = gc >= SHADOW_QUANT_COLS ? 1 : SHADOW_QUANT_COLS / gc; /* groups */

	for (size_t t0 = 0, tg = 0; t0 < p->n_tokens; t0 += p->group_tokens, tg++) {
		size_t t1 = SHADOW_MIN(t0 + p->group_tokens, (size_t)p->n_tokens);

		for (size_t g0 = 0; g0 < row_groups; g0 += block) {
			size_t ng = SHADOW_MIN(block, row_groups - g0), gi = tg * row_groups + g0;

			shadow_quant_block(p, x, o, C, t0, t1, g0 * gc, ng, gc, scale + gi,
					   bias + gi);
		}
	}
}

int shadow__quantize_frame(const struct shadow__quant_params *p, const float *x, uint8_t *q,
			   uint16_t *params)
{
	size_t n_elems, n_groups;
	int err = shadow_quant_check(p, false, &n_elems, &n_groups);

	if (err != 0)
		return err;
	shadow_quant_walk(p, x, &(struct shadow_quant_out){ .q = q }, n_groups, params);
	return 0;
}

int shadow__quantize_frame_ecsq(const struct shadow__quant_params *p, const float *x,
				uint8_t *lo, uint8_t *hi, uint16_t *params)
{
	size_t n_elems, n_groups;
	int err = shadow_quant_check(p, true, &n_elems, &n_groups);

	if (err != 0)
		return err;
	shadow_quant_walk(p, x, &(struct shadow_quant_out){ .lo = lo, .hi = hi }, n_groups,
			  params);
	return 0;
}

size_t shadow__pack_bits(const uint8_t *q, size_t n, unsigned bits, uint8_t *packed)
{
	uint32_t acc = 0, mask;
	unsigned have = 0;
	size_t o = 0;

	if (bits < 2 || bits > 8)
		return 0;
	mask = (1u << bits) - 1u;
	if (bits == 8) {
		memcpy(packed, q, n);
		return n;
	}
	for (size_t i = 0; i < n; i++) {
		acc |= (q[i] & mask) << have;
		have += bits;
		if (have >= 8) {
			packed[o++] = (uint8_t)acc;
			acc >>= 8;
			have -= 8;
		}
	}
	if (have > 0)
		packed[o++] = (uint8_t)acc;
	return o;
}

void shadow__split_planes(const uint16_t *x, size_t n, uint8_t *hi, uint8_t *lo)
{
	for (size_t i = 0; i < n; i++) {
		hi[i] = (uint8_t)(x[i] >> 8);
		lo[i] = (uint8_t)x[i];
	}
}
