/*
 * quant.c - the encoder side of quant.h: group parameters, symbols, bit packing, byte planes.
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
 * property hold by construction rather than by that argument.) 150-220 Melem/s on one core.
 *
 * Keys group over tokens, per channel: a frame is walked one token group and one block of
 * SHADOW_QUANT_COLS channels at a time, so that every pass reads rows of contiguous floats and
 * the per-channel statistics live on the stack (no allocation, no strided walks).
 */
#include <errno.h>
#include <string.h>

#include "quant/quant.h"

/* Channels per block of a key frame: statistics and grids for them on the stack (~9 KiB). */
#define SHADOW_QUANT_COLS 128

#define SHADOW_BF16_MAX 0x7f7fu /* largest finite bf16, 3.3895e38 */

/* A group's grid: the stored parameters as floats, and what quantizing needs. */
struct shadow_grid {
	float scale, bias;
	double inv;  /* 1 / scale, 0 when scale is 0 */
	double sure; /* |t - round(t)| up to this needs no check of the neighbours */
	uint32_t maxq;
};

/* Statistics over a group's finite elements. */
struct shadow_stats {
	float mn, mx;
	double sum, m2; /* m2: sum of squared deviations from the mean (second pass) */
	uint32_t n;
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

/* Nearest bf16, clamped to the finite range. */
static uint16_t shadow_bf16_near(double d)
{
	if (d > 3.3895313892515355e38)
		return SHADOW_BF16_MAX;
	if (d < -3.3895313892515355e38)
		return 0x8000u | SHADOW_BF16_MAX;
	uint16_t h = shadow__float_to_bf16((float)d);

	if ((h & 0x7fffu) > SHADOW_BF16_MAX) /* (float)d rounded up to bf16 infinity */
		h = (uint16_t)((h & 0x8000u) | SHADOW_BF16_MAX);
	return h;
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
			    uint32_t maxq)
{
	g->scale = shadow__bf16_to_float(scale_h);
	g->bias = shadow__bf16_to_float(bias_h);
	g->inv = g->scale > 0 ? 1.0 / g->scale : 0.0;
	g->maxq = maxq;
	/*
	 * The decoder's q * scale + bias is off the exact value by at most
	 * 2^-24 * (2 * maxq * scale + |bias|) + 2^-149 (two roundings, relative or subnormal),
	 * d = 2^-24 * (2 * maxq + |bias| / scale) + 2^-149 / scale in units of scale. Rounding t
	 * (exact to ~2^-52) then picks the decoder's nearest point unless t is within d of a
	 * half-integer; allow four times that. When d is large (a bias huge against the scale)
	 * every symbol gets its neighbours checked, clipped ones included.
	 */
	double abs_bias = g->bias < 0 ? -(double)g->bias : g->bias;
	double d = 0x1p-24 * (2.0 * maxq + abs_bias * g->inv) + 0x1p-149 * g->inv;

	g->sure = g->scale > 0 && d < 0x1p-4 ? 0.5 - 4 * d : -1.0;
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
 * The grid of a group from its statistics (the second pass done for STD). Writes the stored
 * bf16 parameters and sets *g from them.
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
	shadow_grid_set(g, scale_h, bias_h, maxq);
}

/* |decoded(q) - x|, with the decoder's arithmetic. */
static inline double shadow_grid_err(const struct shadow_grid *g, uint32_t q, float x)
{
	float y = (float)q * g->scale + g->bias;
	double e = (double)y - x;

	return e < 0 ? -e : e;
}

/* round(t) to nearest even, clamped to [0, maxq]; NaN gives 0. */
static inline uint32_t shadow_round_clamp(double t, uint32_t maxq)
{
	if (!(t > 0))
		return 0;
	if (t >= maxq)
		return maxq;
	/* Adding and removing 2^52 rounds 0 < t < 2^52 to nearest even, without libm. */
	return (uint32_t)((t + 0x1p52) - 0x1p52);
}

static inline uint8_t shadow_quant1(const struct shadow_grid *g, float x)
{
	if (g->scale == 0 || !shadow_isfinite(x))
		return 0;
	/* Fast: the product by 1 / scale is within a few 2^-52 of the quotient. */
	double t = ((double)x - g->bias) * g->inv;
	uint32_t q = shadow_round_clamp(t, g->maxq);
	double r = t - q;

	if (r <= g->sure && r >= -g->sure)
		return (uint8_t)q;
	if (g->sure >= 0 && (t <= 0 || t >= g->maxq))
		return (uint8_t)q; /* off the grid: its end is nearest */
	/*
	 * Near a tie: the exact quotient (x - bias is exact in double for any x within 2^29 of
	 * bias's magnitude), so that a true tie goes to even; then the decoder's arithmetic
	 * decides between neighbours.
	 */
	q = shadow_round_clamp(((double)x - g->bias) / g->scale, g->maxq);
	double e = shadow_grid_err(g, q, x);

	if (q > 0 && shadow_grid_err(g, q - 1, x) < e)
		q--;
	else if (q < g->maxq && shadow_grid_err(g, q + 1, x) < e)
		q++;
	return (uint8_t)q;
}

/* Checks p; returns 0 with the element and group counts, or -EINVAL. */
static int shadow_quant_check(const struct shadow__quant_params *p, size_t *n_elems_ret,
			      size_t *n_groups_ret)
{
	uint64_t row, elems, groups;

	if (p == NULL || p->n_tokens == 0 || p->n_heads == 0 || p->head_dim == 0 || p->bits < 2 ||
	    p->bits > 8)
		return -EINVAL;
	if (p->scale_rule == SHADOW_SCALE_STD) {
		/* finite and > 0 (NaN fails the first test, inf the second) */
		if (!(p->step_mul > 0) || !shadow_isfinite(p->step_mul))
			return -EINVAL;
	} else if (p->scale_rule != SHADOW_SCALE_MINMAX) {
		return -EINVAL;
	}
	if (!shadow_mul_u64(p->n_heads, p->head_dim, &row) ||
	    !shadow_mul_u64(row, p->n_tokens, &elems))
		return -EINVAL;
	switch (p->axis) {
	case SHADOW_GROUP_KEYS:
		if (p->group_tokens == 0 || p->group_tokens > p->n_tokens)
			return -EINVAL;
		if (!shadow_mul_u64((p->n_tokens - 1) / p->group_tokens + 1, row, &groups))
			return -EINVAL;
		break;
	case SHADOW_GROUP_VALUES:
		if (p->group_channels == 0 || p->head_dim % p->group_channels != 0)
			return -EINVAL;
		groups = elems / p->group_channels;
		break;
	default:
		return -EINVAL;
	}
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

	return shadow_quant_check(p, &n_elems, &n_groups) == 0 ? n_groups : 0;
}

/* Keys: one token group [t0, t1), channels [c0, c0 + nc) of rows of C floats. */
static void shadow_quant_key_block(const struct shadow__quant_params *p, const float *x,
				   uint8_t *q, size_t C, size_t t0, size_t t1, size_t c0, size_t nc,
				   uint16_t *scale, uint16_t *bias)
{
	struct shadow_stats st[SHADOW_QUANT_COLS];
	struct shadow_grid g[SHADOW_QUANT_COLS];
	double mean[SHADOW_QUANT_COLS];

	for (size_t c = 0; c < nc; c++)
		shadow_stats_init(&st[c]);
	for (size_t t = t0; t < t1; t++) {
		const float *row = x + t * C + c0;

		for (size_t c = 0; c < nc; c++)
			shadow_stats_add(&st[c], row[c]);
	}
	if (p->scale_rule == SHADOW_SCALE_STD) {
		for (size_t c = 0; c < nc; c++)
			mean[c] = st[c].n ? st[c].sum / st[c].n : 0;
		for (size_t t = t0; t < t1; t++) {
			const float *row = x + t * C + c0;

			for (size_t c = 0; c < nc; c++)
				shadow_stats_add2(&st[c], mean[c], row[c]);
		}
	}
	for (size_t c = 0; c < nc; c++)
		shadow_grid_make(p, &st[c], &scale[c0 + c], &bias[c0 + c], &g[c]);
	for (size_t t = t0; t < t1; t++) {
		const float *row = x + t * C + c0;
		uint8_t *qrow = q + t * C + c0;

		for (size_t c = 0; c < nc; c++)
			qrow[c] = shadow_quant1(&g[c], row[c]);
	}
}

/* Values: one group of n contiguous elements. */
static void shadow_quant_value_group(const struct shadow__quant_params *p, const float *x,
				     uint8_t *q, size_t n, uint16_t *scale, uint16_t *bias)
{
	struct shadow_stats st;
	struct shadow_grid g;

	shadow_stats_init(&st);
	for (size_t i = 0; i < n; i++)
		shadow_stats_add(&st, x[i]);
	if (p->scale_rule == SHADOW_SCALE_STD && st.n != 0) {
		double mean = st.sum / st.n;

		for (size_t i = 0; i < n; i++)
			shadow_stats_add2(&st, mean, x[i]);
	}
	shadow_grid_make(p, &st, scale, bias, &g);
	for (size_t i = 0; i < n; i++)
		q[i] = shadow_quant1(&g, x[i]);
}

int shadow__quantize_frame(const struct shadow__quant_params *p, const float *x, uint8_t *q,
			   uint16_t *params)
{
	size_t n_elems, n_groups;
	int err = shadow_quant_check(p, &n_elems, &n_groups);

	if (err != 0)
		return err;
	uint16_t *scale = params, *bias = params + n_groups;
	size_t C = (size_t)p->n_heads * p->head_dim;

	if (p->axis == SHADOW_GROUP_KEYS) {
		for (size_t t0 = 0, tg = 0; t0 < p->n_tokens; t0 += p->group_tokens, tg++) {
			size_t t1 = SHADOW_MIN(t0 + p->group_tokens, (size_t)p->n_tokens);

			for (size_t c0 = 0; c0 < C; c0 += SHADOW_QUANT_COLS) {
				size_t nc = SHADOW_MIN((size_t)SHADOW_QUANT_COLS, C - c0);

				shadow_quant_key_block(p, x, q, C, t0, t1, c0, nc, scale + tg * C,
						       bias + tg * C);
			}
		}
	} else {
		size_t gc = p->group_channels;

		for (size_t i = 0, g = 0; i < n_elems; i += gc, g++)
			shadow_quant_value_group(p, x + i, q + i, gc, &scale[g], &bias[g]);
	}
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
