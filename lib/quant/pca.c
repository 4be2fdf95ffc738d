/*
 * pca.c - the KV transform (struct shadow_transform, pca.h): calibration, the transform file
 * (docs/format.md, "Transform file"), and the encoder of SHADOW_QUANT_PCA frames. The decode
 * kernels are in pca_kernels.c.
 *
 * DESIGN
 * A transform is immutable once made, so any number of threads may read it without locks.
 * Its arrays are one 64-byte aligned allocation of float32, one entry per (layer, kind, head)
 * in the order of the file, e = (layer * 2 + kind) * n_kv_heads + head:
 *
 *   data + e * entry_floats:
 *   +--------------------------+----------------------------------------------+
 *   | mean[head_dim], padded   | basis[head_dim][head_dim] (row j = component |
 *   | to 16 floats (64 bytes)  | j), padded to 16 floats                      |
 *   +--------------------------+----------------------------------------------+
 *
 * so that every mean and every basis starts on a cache line (the kernels load basis rows).
 *
 * Calibration, per (layer, kind, head): the mean in double over every (token, head) row of
 * every block (rows with a non-finite element are left out), then the covariance of the rows
 * minus that mean, in double, then its eigenvectors. The eigensolver is Householder
 * tridiagonalization then the implicit QL algorithm (EISPACK tred2/tql2, as in JAMA): about
 * 7 n^3 flops, where cyclic Jacobi (bench/research/kvquant_lab.c) took ~25 n^3 per sweep and 8+
 * sweeps for n = 128. The eigenvectors come out as products of rotations and reflections, so
 * they are orthonormal whatever the data (zero, constant, rank-deficient: the basis is then
 * completed arbitrarily but still orthonormal). They are sorted by descending eigenvalue (ties
 * by index), and each is signed so that its largest-magnitude component (the first such) is
 * positive: the same data always give the same bytes, hence the same id.
 *
 * The id is the file's trailing XXH3-64 checksum, computed over the serialized bytes before
 * it; calibrate computes it by streaming the would-be file through the hash, load takes it from
 * the verified file, and save writes it, so save(load(f)) == f and ids agree everywhere.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "core/alloc.h"
#include "core/endian.h"
#include "core/log.h"
#include "quant/pca.h"

/* ---- the file format (docs/format.md, "Transform file") ---- */

#define TF_MAGIC "SHKT"
#define TF_VERSION 1u
#define TF_HEADER_NBYTES 24u
#define TF_CHECKSUM_NBYTES 8u
/* A basis component of a unit row is at most 1; allow rounding. */
#define TF_BASIS_ABS_MAX 1.0009765625f
/* |row norm^2 - 1| allowed on load (float rounding of an orthonormal basis gives ~1e-6). */
#define TF_ROW_NORM2_TOL 1e-3

struct shadow_transform {
	uint32_t n_layers, n_kv_heads, head_dim;
	uint32_t rope;       /* SHADOW_ROPE_NONE or SHADOW_ROPE_HALF: keys are un-rotated first */
	float *inv_freq;     /* rope: head_dim / 2 angular frequencies, radians per position */
	uint64_t id;
	size_t mean_floats;  /* head_dim rounded up to 16 */
	size_t entry_floats; /* mean_floats + head_dim^2 rounded up to 16 */
	size_t n_entries;    /* n_layers * 2 * n_kv_heads */
	float *data;         /* n_entries * entry_floats, 64-byte aligned */
};

static size_t round16(size_t n)
{
	return (n + 15u) & ~(size_t)15u;
}

static size_t entry_index(const struct shadow_transform *t, uint32_t layer, uint32_t kind,
			  uint32_t head)
{
	return ((size_t)layer * 2u + kind) * t->n_kv_heads + head;
}

const float *shadow__transform_mean(const struct shadow_transform *t, uint32_t layer,
				    uint32_t kind, uint32_t head)
{
	SHADOW_ASSERT(layer < t->n_layers && kind < 2u && head < t->n_kv_heads);
	return t->data + entry_index(t, layer, kind, head) * t->entry_floats;
}

const float *shadow__transform_basis(const struct shadow_transform *t, uint32_t layer,
				     uint32_t kind, uint32_t head)
{
	return shadow__transform_mean(t, layer, kind, head) + t->mean_floats;
}

void shadow__transform_shape(const struct shadow_transform *t, uint32_t *n_layers,
			     uint32_t *n_kv_heads, uint32_t *head_dim)
{
	*n_layers = t->n_layers;
	*n_kv_heads = t->n_kv_heads;
	*head_dim = t->head_dim;
}

uint64_t shadow_transform_id(const struct shadow_transform *t)
{
	return t->id;
}

void shadow_transform_free(struct shadow_transform *t)
{
	if (t == NULL)
		return;
	shadow__free_aligned(t->data);
	free(t->inv_freq);
	free(t);
}

static bool shape_ok(uint32_t n_layers, uint32_t n_kv_heads, uint32_t head_dim)
{
	return n_layers >= 1u && n_layers <= SHADOW_MAX_LAYERS && n_kv_heads >= 1u &&
	       n_kv_heads <= SHADOW_MAX_KV_HEADS && head_dim >= 1u &&
	       head_dim <= SHADOW_MAX_HEAD_DIM;
}

/* Serialized size for a valid shape (cannot overflow: at most ~2^39 bytes). */
static uint64_t file_nbytes(uint32_t n_layers, uint32_t n_kv_heads, uint32_t head_dim,
			    uint32_t rope)
{
	uint64_t per_entry = ((uint64_t)head_dim + (uint64_t)head_dim * head_dim) * 4u;
	uint64_t rope_nbytes = rope == SHADOW_ROPE_HALF ? (uint64_t)head_dim / 2u * 4u : 0;

	return TF_HEADER_NBYTES + rope_nbytes + (uint64_t)n_layers * 2u * n_kv_heads * per_entry +
	       TF_CHECKSUM_NBYTES;
}

static int transform_alloc(uint32_t n_layers, uint32_t n_kv_heads, uint32_t head_dim,
			   uint32_t rope, struct shadow_transform **t_ret)
{
	struct shadow_transform *t = calloc(1, sizeof(*t));
	uint64_t floats;

	if (t == NULL)
		return -ENOMEM;
	t->n_layers = n_layers;
	t->n_kv_heads = n_kv_heads;
	t->head_dim = head_dim;
	t->rope = rope;
	if (rope == SHADOW_ROPE_HALF) {
		t->inv_freq = calloc(head_dim / 2u, sizeof(float));
		if (t->inv_freq == NULL) {
			free(t);
			return -ENOMEM;
		}
	}
	t->mean_floats = round16(head_dim);
	t->entry_floats = t->mean_floats + round16((size_t)head_dim * head_dim);
	t->n_entries = (size_t)n_layers * 2u * n_kv_heads;
	if (!shadow_mul_u64(t->n_entries, t->entry_floats, &floats) ||
	    !shadow_mul_u64(floats, sizeof(float), &floats) || floats > SIZE_MAX) {
		shadow_transform_free(t);
		return -ENOMEM;
	}
	/* zeroed padding: nothing uninitialized is ever read, even by a vector kernel */
	t->data = shadow__alloc_aligned((size_t)floats, SHADOW_CACHE_LINE);
	if (t->data == NULL) {
		shadow_transform_free(t);
		return -ENOMEM;
	}
	memset(t->data, 0, (size_t)floats);
	*t_ret = t;
	return 0;
}

/* ---- little-endian fields ---- */

static void put_f32(uint8_t *p, float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	shadow__store_le32(p, u);
}

static float get_f32(const uint8_t *p)
{
	uint32_t u = shadow__load_le32(p);
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static void write_header(const struct shadow_transform *t, uint8_t *h)
{
	memcpy(h, TF_MAGIC, 4);
	shadow__store_le16(h + 4, TF_VERSION);
	shadow__store_le16(h + 6, TF_HEADER_NBYTES);
	shadow__store_le32(h + 8, t->n_layers);
	shadow__store_le32(h + 12, t->n_kv_heads);
	shadow__store_le32(h + 16, t->head_dim);
	shadow__store_le32(h + 20, t->rope);
}

/*
 * Visit the serialized bytes after the header, in file order, in pieces of at most 4 KiB (so
 * that the hash can be streamed without the whole file in memory).
 */
static void for_each_body_piece(const struct shadow_transform *t,
				void (*fn)(void *ctx, const uint8_t *p, size_t nbytes), void *ctx)
{
	uint8_t buf[4096];
	size_t per_entry = (size_t)t->head_dim + (size_t)t->head_dim * t->head_dim;

	if (t->rope == SHADOW_ROPE_HALF) { /* head_dim / 2 <= 512 floats: one piece */
		for (size_t i = 0; i < t->head_dim / 2u; i++)
			put_f32(buf + 4 * i, t->inv_freq[i]);
		fn(ctx, buf, 4 * (t->head_dim / 2u));
	}

	for (size_t e = 0; e < t->n_entries; e++) {
		const float *mean = t->data + e * t->entry_floats;
		const float *basis = mean + t->mean_floats;

		for (size_t i = 0; i < per_entry;) {
			size_t k = 0;

			for (; k < sizeof(buf) / 4 && i < per_entry; k++, i++)
				put_f32(buf + 4 * k, i < t->head_dim ? mean[i] : basis[i - t->head_dim]);
			fn(ctx, buf, 4 * k);
		}
	}
}

static void hash_piece(void *ctx, const uint8_t *p, size_t nbytes)
{
	XXH3_64bits_update(ctx, p, nbytes);
}

static uint64_t compute_id(const struct shadow_transform *t)
{
	uint8_t h[TF_HEADER_NBYTES];
	XXH3_state_t state;

	write_header(t, h);
	XXH3_64bits_reset(&state);
	XXH3_64bits_update(&state, h, sizeof(h));
	for_each_body_piece(t, hash_piece, &state);
	return XXH3_64bits_digest(&state);
}

struct copy_ctx {
	uint8_t *p;
};

static void copy_piece(void *ctx, const uint8_t *p, size_t nbytes)
{
	struct copy_ctx *c = ctx;

	memcpy(c->p, p, nbytes);
	c->p += nbytes;
}

int shadow_transform_save(const struct shadow_transform *t, void *buf, size_t cap,
			  size_t *nbytes_ret)
{
	uint64_t need;
	struct copy_ctx c;

	if (t == NULL || nbytes_ret == NULL)
		return -EINVAL;
	need = file_nbytes(t->n_layers, t->n_kv_heads, t->head_dim, t->rope);
	if (need > SIZE_MAX)
		return -ENOMEM;
	*nbytes_ret = (size_t)need;
	if (buf == NULL || cap < need)
		return -ENOBUFS;
	write_header(t, buf);
	c.p = (uint8_t *)buf + TF_HEADER_NBYTES;
	for_each_body_piece(t, copy_piece, &c);
	SHADOW_ASSERT(XXH3_64bits(buf, (size_t)need - TF_CHECKSUM_NBYTES) == t->id);
	shadow__store_le64(c.p, t->id);
	return 0;
}

int shadow_transform_load(const void *buf, size_t nbytes, const struct shadow_kv_geometry *geom,
			  struct shadow_transform **transform_ret)
{
	const uint8_t *b = buf;
	struct shadow_transform *t;
	uint32_t n_layers, n_kv_heads, head_dim, rope;
	uint64_t total, id;
	int err;

	if (transform_ret == NULL || (buf == NULL && nbytes != 0))
		return -EINVAL;
	*transform_ret = NULL;
	if (geom != NULL && shadow_geometry_validate(geom) != 0)
		return SHADOW_EGEOMETRY;
	/* Every field is checked before the next is trusted: magic, version, header size,
	 * shape, exact length, checksum, then the values. */
	for (size_t i = 0; i < nbytes && i < 4; i++)
		if (b[i] != (uint8_t)TF_MAGIC[i])
			return SHADOW_ECORRUPT;
	if (nbytes < 6)
		return SHADOW_ETRUNCATED;
	if (shadow__load_le16(b + 4) != TF_VERSION)
		return SHADOW_EVERSION;
	if (nbytes < TF_HEADER_NBYTES)
		return SHADOW_ETRUNCATED;
	if (shadow__load_le16(b + 6) != TF_HEADER_NBYTES)
		return SHADOW_ECORRUPT;
	n_layers = shadow__load_le32(b + 8);
	n_kv_heads = shadow__load_le32(b + 12);
	head_dim = shadow__load_le32(b + 16);
	rope = shadow__load_le32(b + 20);
	if (!shape_ok(n_layers, n_kv_heads, head_dim))
		return SHADOW_ECORRUPT;
	if (rope > SHADOW_ROPE_HALF || (rope == SHADOW_ROPE_HALF && head_dim % 2u != 0))
		return SHADOW_ECORRUPT;
	total = file_nbytes(n_layers, n_kv_heads, head_dim, rope);
	if (nbytes < total)
		return SHADOW_ETRUNCATED;
	if (nbytes > total)
		return SHADOW_ECORRUPT;
	id = XXH3_64bits(b, nbytes - TF_CHECKSUM_NBYTES);
	if (id != shadow__load_le64(b + nbytes - TF_CHECKSUM_NBYTES))
		return SHADOW_ECORRUPT;
	if (geom != NULL && (geom->n_layers != n_layers || geom->n_kv_heads != n_kv_heads ||
			     geom->head_dim != head_dim))
		return SHADOW_EGEOMETRY;

	err = transform_alloc(n_layers, n_kv_heads, head_dim, rope, &t);
	if (err != 0)
		return err;
	t->id = id;
	b += TF_HEADER_NBYTES;
	for (size_t i = 0; rope == SHADOW_ROPE_HALF && i < head_dim / 2u; i++, b += 4) {
		t->inv_freq[i] = get_f32(b);
		if (!(t->inv_freq[i] >= 0.0f && t->inv_freq[i] <= 1e3f)) /* also false for NaN */
			goto corrupt;
	}
	for (size_t e = 0; e < t->n_entries; e++) {
		float *mean = t->data + e * t->entry_floats, *basis = mean + t->mean_floats;

		for (size_t i = 0; i < head_dim; i++, b += 4) {
			mean[i] = get_f32(b);
			if (!isfinite(mean[i]))
				goto corrupt;
		}
		for (size_t j = 0; j < head_dim; j++) {
			double norm2 = 0;

			for (size_t i = 0; i < head_dim; i++, b += 4) {
				float v = get_f32(b);

				/* also false for NaN */
				if (!(fabsf(v) <= TF_BASIS_ABS_MAX))
					goto corrupt;
				basis[j * head_dim + i] = v;
				norm2 += (double)v * v;
			}
			if (fabs(norm2 - 1.0) > TF_ROW_NORM2_TOL)
				goto corrupt;
		}
	}
	*transform_ret = t;
	return 0;

corrupt:
	shadow_transform_free(t);
	return SHADOW_ECORRUPT;
}

/* ---- RoPE ---- */

/*
 * The rotation angles of consecutive positions, for the encoder and calibration, which walk a
 * sequence token by token: cos and sin of pos * inv_freq[i] advance by one rotation per
 * position (in double: 65536 steps lose ~1e-12), so libm is called per walk, not per vector.
 */
struct rope_walk {
	size_t half;
	double c[SHADOW_MAX_HEAD_DIM / 2], s[SHADOW_MAX_HEAD_DIM / 2];
	double cw[SHADOW_MAX_HEAD_DIM / 2], sw[SHADOW_MAX_HEAD_DIM / 2];
};

static void rope_walk_start(struct rope_walk *w, const struct shadow_transform *t, uint64_t pos)
{
	w->half = t->head_dim / 2u;
	for (size_t i = 0; i < w->half; i++) {
		double f = t->inv_freq[i], th = (double)pos * f;

		w->c[i] = cos(th);
		w->s[i] = sin(th);
		w->cw[i] = cos(f);
		w->sw[i] = sin(f);
	}
}

static void rope_walk_next(struct rope_walk *w)
{
	for (size_t i = 0; i < w->half; i++) {
		double c = w->c[i] * w->cw[i] - w->s[i] * w->sw[i];

		w->s[i] = w->s[i] * w->cw[i] + w->c[i] * w->sw[i];
		w->c[i] = c;
	}
}

/*
 * Undo rotate-half RoPE on a key head vector at the walk's position (HF convention: channel i
 * and i + n/2 are rotated together by pos * inv_freq[i]): x1 = x1' cos + x2' sin,
 * x2 = x2' cos - x1' sin, in double.
 */
static void unrope_row(const struct rope_walk *w, float *x)
{
	size_t half = w->half;

	for (size_t i = 0; i < half; i++) {
		double a = x[i], b = x[i + half];

		x[i] = (float)(a * w->c[i] + b * w->s[i]);
		x[i + half] = (float)(b * w->c[i] - a * w->s[i]);
	}
}

bool shadow__transform_has_rope(const struct shadow_transform *t)
{
	return t->rope == SHADOW_ROPE_HALF;
}

void shadow__rope_table(const struct shadow_transform *t, uint64_t first_position,
			uint32_t n_tokens, float *cs)
{
	size_t half = t->head_dim / 2u;

	/* cos and sin of (first_position + k) * w by rotation from the first, in double: 256
	 * steps lose ~1e-14, far below float's resolution, and cost no libm call per entry. */
	for (size_t i = 0; i < half; i++) {
		double w = t->inv_freq[i], th0 = (double)first_position * w;
		double c = cos(th0), sn = sin(th0), cw = cos(w), sw = sin(w);

		for (uint32_t k = 0; k < n_tokens; k++) {
			float *row = cs + (size_t)k * 2u * half;
			double c2;

			row[i] = (float)c;
			row[half + i] = (float)sn;
			c2 = c * cw - sn * sw;
			sn = sn * cw + c * sw;
			c = c2;
		}
	}
}

void shadow__rope_apply_round(const float *x, const float *cs, void *out, size_t n,
			      enum shadow__out_dtype dtype)
{
	size_t half = n / 2u;
	uint8_t *o = out;

	for (size_t i = 0; i < n; i++) {
		size_t k = i < half ? i : i - half;
		float c = cs[k], sn = cs[half + k], a = x[k], b = x[k + half];
		/* x1 = a c - b s, x2 = b c + a s: separate multiplies and an add (this file is
		 * built with -ffp-contract=off), the same on every machine */
		float y = i < half ? a * c - b * sn : b * c + a * sn;
		uint16_t v;

		if (dtype == SHADOW_OUT_BF16)
			v = y != y ? SHADOW_BF16_QNAN : shadow__float_to_bf16(y);
		else
			v = y != y ? SHADOW_FP16_QNAN : shadow__float_to_fp16(y);
		memcpy(o + 2 * i, &v, sizeof(v));
	}
}

int shadow_rope_inv_freq(double theta, uint32_t head_dim, float *inv_freq_ret)
{
	if (inv_freq_ret == NULL || !(theta > 1.0) || head_dim < 2 || head_dim % 2u != 0 ||
	    head_dim > SHADOW_MAX_HEAD_DIM)
		return -EINVAL;
	for (uint32_t i = 0; i < head_dim / 2u; i++)
		inv_freq_ret[i] = (float)pow(theta, -2.0 * i / head_dim);
	return 0;
}

/* ---- calibration ---- */

/*
 * Eigen-decomposition of the symmetric n x n matrix A (row-major, destroyed) by cyclic Jacobi
 * rotations: each zeroes one off-diagonal pair, W (rows: eigenvectors) accumulates them. Slow
 * next to Householder + QL (O(n^3) per sweep, about 8 sweeps for the shared dumps' 128 x 128
 * covariances, ~0.1 s each here) but short, obviously right, and calibration runs offline.
 * W stays a product of rotations, so the basis is orthonormal even if a sweep limit is hit.
 * On return d[i] is the eigenvalue of row i of W.
 */
#define JACOBI_MAX_SWEEPS 60

static void jacobi_eigen(double *A, double *W, double *d, size_t n)
{
	memset(W, 0, n * n * sizeof(*W));
	for (size_t i = 0; i < n; i++)
		W[i * n + i] = 1.0;
	for (int sweep = 0; sweep < JACOBI_MAX_SWEEPS; sweep++) {
		double off = 0, diag = 0;

		for (size_t p = 0; p < n; p++) {
			diag += A[p * n + p] * A[p * n + p];
			for (size_t q = p + 1; q < n; q++)
				off += A[p * n + q] * A[p * n + q];
		}
		if (!(off > 1e-24 * diag)) /* converged (or all zero / NaN-free by construction) */
			break;
		for (size_t p = 0; p + 1 < n; p++) {
			for (size_t q = p + 1; q < n; q++) {
				double apq = A[p * n + q];

				if (fabs(apq) <= 1e-300)
					continue;
				/* tan of the rotation angle, the smaller root: |angle| <= pi/4 */
				double theta = (A[q * n + q] - A[p * n + p]) / (2.0 * apq);
				double t = (theta >= 0 ? 1.0 : -1.0) /
					   (fabs(theta) + sqrt(theta * theta + 1.0));
				double c = 1.0 / sqrt(t * t + 1.0), sn = t * c;

				/* A = J^T A J on rows and columns p, q */
				for (size_t k = 0; k < n; k++) {
					double akp = A[k * n + p], akq = A[k * n + q];
					A[k * n + p] = c * akp - sn * akq;
					A[k * n + q] = sn * akp + c * akq;
				}
				for (size_t k = 0; k < n; k++) {
					double apk = A[p * n + k], aqk = A[q * n + k];
					A[p * n + k] = c * apk - sn * aqk;
					A[q * n + k] = sn * apk + c * aqk;
				}
				/* W = J^T W: rows p and q */
				for (size_t k = 0; k < n; k++) {
					double wp = W[p * n + k], wq = W[q * n + k];
					W[p * n + k] = c * wp - sn * wq;
					W[q * n + k] = sn * wp + c * wq;
				}
			}
		}
	}
	for (size_t i = 0; i < n; i++)
		d[i] = A[i * n + i];
}

/* Scratch of one calibration: n = head_dim. */
struct calib_work {
	double *cov;  /* n * n */
	double *w;    /* n * n: eigenvectors as rows */
	double *mean; /* n */
	double *d;    /* n */
	double *z;    /* 4 * n: centred rows */
	float *row;   /* n */
	size_t *order; /* n */
	struct rope_walk rope;
};

/* One head row as float: false if an element is not finite. */
static bool read_row(const uint8_t *p, uint32_t dtype, size_t n, float *row)
{
	bool finite = true;

	for (size_t i = 0; i < n; i++) {
		uint16_t h;

		memcpy(&h, p + 2 * i, 2);
		row[i] = dtype == SHADOW_DTYPE_BF16 ? shadow__bf16_to_float(h) :
						      shadow__fp16_to_float(h);
		finite &= isfinite(row[i]) != 0;
	}
	return finite;
}

/* cov[a][b] += sum over the k rows z of z[a] * z[b], lower triangle (b <= a). */
static void cov_update(double *cov, const double *z, size_t k, size_t n)
{
	const double *z0 = z, *z1 = z + n, *z2 = z + 2 * n, *z3 = z + 3 * n;

	for (size_t a = 0; a < n; a++) {
		double *c = cov + a * n;
		double a0 = z0[a], a1 = k > 1 ? z1[a] : 0, a2 = k > 2 ? z2[a] : 0,
		       a3 = k > 3 ? z3[a] : 0;

		/* rows past k are zero (see calib_head), so the 4-row form is always valid */
		for (size_t b = 0; b <= a; b++)
			c[b] += a0 * z0[b] + a1 * z1[b] + a2 * z2[b] + a3 * z3[b];
	}
}

static void calib_head(struct shadow_transform *t, const struct shadow_kv_geometry *geom,
		       const uint8_t *region, const struct shadow_kv_layout *layout,
		       const uint32_t *block_ids, size_t n_block_ids, uint32_t layer,
		       uint32_t kind, uint32_t head, struct calib_work *w)
{
	size_t n = geom->head_dim, n_used = 0, k = 0;
	float *mean_out = (float *)shadow__transform_mean(t, layer, kind, head);
	float *basis_out = (float *)shadow__transform_basis(t, layer, kind, head);

	bool rope = kind == SHADOW_KV_K && t->rope == SHADOW_ROPE_HALF;

	/* pass 1: the mean */
	memset(w->mean, 0, n * sizeof(double));
	if (rope)
		rope_walk_start(&w->rope, t, 0);
	for (size_t bi = 0; bi < n_block_ids; bi++)
		for (uint32_t tok = 0; tok < geom->block_tokens; tok++) {
			int64_t off = shadow_layout_offset(layout, geom, layer, kind, block_ids[bi],
							   tok, head);

			SHADOW_ASSERT(off >= 0);
			bool finite = read_row(region + off, geom->dtype, n, w->row);
			if (rope) {
				if (finite)
					unrope_row(&w->rope, w->row);
				rope_walk_next(&w->rope); /* position bi * block_tokens + tok + 1 */
			}
			if (!finite)
				continue;
			for (size_t i = 0; i < n; i++)
				w->mean[i] += w->row[i];
			n_used++;
		}
	for (size_t i = 0; i < n; i++) {
		if (n_used > 0)
			w->mean[i] /= (double)n_used;
		mean_out[i] = (float)w->mean[i];
	}

	/* pass 2: the covariance (its scale does not matter: sums, not averages) */
	memset(w->cov, 0, n * n * sizeof(double));
	memset(w->z, 0, 4 * n * sizeof(double));
	if (rope)
		rope_walk_start(&w->rope, t, 0);
	for (size_t bi = 0; bi < n_block_ids; bi++)
		for (uint32_t tok = 0; tok < geom->block_tokens; tok++) {
			int64_t off = shadow_layout_offset(layout, geom, layer, kind, block_ids[bi],
							   tok, head);

			bool finite = read_row(region + off, geom->dtype, n, w->row);
			if (rope) {
				if (finite)
					unrope_row(&w->rope, w->row);
				rope_walk_next(&w->rope);
			}
			if (!finite)
				continue;
			for (size_t i = 0; i < n; i++)
				w->z[k * n + i] = (double)w->row[i] - w->mean[i];
			if (++k == 4) {
				cov_update(w->cov, w->z, 4, n);
				k = 0;
			}
		}
	if (k > 0) {
		memset(w->z + k * n, 0, (4 - k) * n * sizeof(double));
		cov_update(w->cov, w->z, k, n);
	}
	for (size_t a = 0; a < n; a++)
		for (size_t b = 0; b < a; b++)
			w->cov[b * n + a] = w->cov[a * n + b];

	/* eigenvectors: rows of w->w */
	jacobi_eigen(w->cov, w->w, w->d, n);

	/* descending eigenvalue, ties by index (insertion sort: stable) */
	for (size_t i = 0; i < n; i++) {
		size_t j = i;

		while (j > 0 && w->d[w->order[j - 1]] < w->d[i]) {
			w->order[j] = w->order[j - 1];
			j--;
		}
		w->order[j] = i;
	}
	for (size_t r = 0; r < n; r++) {
		const double *v = w->w + w->order[r] * n;
		size_t imax = 0;
		double sign;

		for (size_t i = 1; i < n; i++)
			if (fabs(v[i]) > fabs(v[imax]))
				imax = i;
		sign = v[imax] < 0 ? -1.0 : 1.0;
		for (size_t i = 0; i < n; i++)
			basis_out[r * n + i] = (float)(sign * v[i]);
	}
}

int shadow_transform_calibrate(const struct shadow_kv_geometry *geom, const void *region,
			       const struct shadow_kv_layout *layout, const uint32_t *block_ids,
			       size_t n_block_ids, const float *rope_inv_freq,
			       struct shadow_transform **transform_ret)
{
	struct shadow_transform *t = NULL;
	struct calib_work w = { 0 };
	size_t n;
	int err;

	if (transform_ret == NULL)
		return -EINVAL;
	*transform_ret = NULL;
	if (geom == NULL || region == NULL || layout == NULL || block_ids == NULL ||
	    n_block_ids == 0)
		return -EINVAL;
	if (shadow_geometry_validate(geom) != 0)
		return SHADOW_EGEOMETRY;
	if (geom->dtype != SHADOW_DTYPE_BF16 && geom->dtype != SHADOW_DTYPE_FP16)
		return SHADOW_EUNSUPPORTED;
	if (shadow_layout_validate(layout, geom) != 0)
		return SHADOW_EGEOMETRY;
	for (size_t i = 0; i < n_block_ids; i++)
		if (block_ids[i] >= layout->n_blocks)
			return -EINVAL;

	if (rope_inv_freq != NULL) {
		if (geom->head_dim % 2u != 0)
			return -EINVAL;
		for (size_t i = 0; i < geom->head_dim / 2u; i++)
			if (!(rope_inv_freq[i] >= 0.0f && rope_inv_freq[i] <= 1e3f))
				return -EINVAL;
	}
	err = transform_alloc(geom->n_layers, geom->n_kv_heads, geom->head_dim,
			      rope_inv_freq != NULL ? SHADOW_ROPE_HALF : SHADOW_ROPE_NONE, &t);
	if (err != 0)
		return err;
	if (rope_inv_freq != NULL)
		memcpy(t->inv_freq, rope_inv_freq, geom->head_dim / 2u * sizeof(float));
	n = geom->head_dim;
	w.cov = malloc(n * n * sizeof(double));
	w.w = malloc(n * n * sizeof(double));
	w.mean = malloc(n * sizeof(double));
	w.d = malloc(n * sizeof(double));
	w.z = malloc(4 * n * sizeof(double));
	w.row = malloc(n * sizeof(float));
	w.order = malloc(n * sizeof(size_t));
	if (!w.cov || !w.w || !w.mean || !w.d || !w.z || !w.row || !w.order) {
		err = -ENOMEM;
		goto free_work;
	}
	for (uint32_t l = 0; l < geom->n_layers; l++)
		for (uint32_t kind = 0; kind < 2u; kind++)
			for (uint32_t h = 0; h < geom->n_kv_heads; h++)
				calib_head(t, geom, region, layout, block_ids, n_block_ids, l, kind,
					   h, &w);
	t->id = compute_id(t);
	*transform_ret = t;
	t = NULL;
	err = 0;
free_work:
	free(w.cov);
	free(w.w);
	free(w.mean);
	free(w.d);
	free(w.z);
	free(w.row);
	free(w.order);
	shadow_transform_free(t);
	return err;
}

/* ---- encoder ---- */

/* y[j] = sum_d B[j][d] * (x[d] - m[d]) in double; false if x has a non-finite element. */
static bool project_row(const float *x, const float *mean, const float *basis, size_t n,
			double *z, double *y)
{
	for (size_t d = 0; d < n; d++) {
		if (!isfinite(x[d]))
			return false;
		z[d] = (double)x[d] - (double)mean[d];
	}
	for (size_t j = 0; j < n; j++) {
		const float *b = basis + j * n;
		/* four independent sums: one chain of n dependent adds was the encoder's bottleneck */
		double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
		size_t d = 0;

		for (; d + 4 <= n; d += 4) {
			s0 += (double)b[d] * z[d];
			s1 += (double)b[d + 1] * z[d + 1];
			s2 += (double)b[d + 2] * z[d + 2];
			s3 += (double)b[d + 3] * z[d + 3];
		}
		for (; d < n; d++)
			s0 += (double)b[d] * z[d];
		y[j] = (s0 + s1) + (s2 + s3);
	}
	return true;
}

/* Nearest integer, ties to even, for |r| <= 2^51 (the default rounding mode assumed). */
static double round_even(double r)
{
	return r >= 0 ? (r + 0x1p52) - 0x1p52 : -((-r + 0x1p52) - 0x1p52);
}

/*
 * Row tok of head h for projection: keys un-rotated into `buf` when `rope` (a walk at this
 * token's position) is given. Non-finite rows are returned as they are (project_row rejects
 * them).
 */
static const float *frame_row(const struct shadow_transform *t, const struct rope_walk *rope,
			      const float *x, uint32_t tok, uint32_t h, float *buf)
{
	const float *row = x + ((size_t)tok * t->n_kv_heads + h) * t->head_dim;

	if (rope == NULL)
		return row;
	memcpy(buf, row, t->head_dim * sizeof(float));
	unrope_row(rope, buf);
	return buf;
}

int shadow__pca_quantize_frame(const struct shadow_transform *t, uint32_t layer, uint32_t kind,
			       uint64_t first_position, uint32_t n_tokens, const float *x,
			       float step_mul, uint8_t *lo, uint8_t *hi, uint16_t *steps)
{
	size_t n, row_n;
	double z[SHADOW_MAX_HEAD_DIM], y[SHADOW_MAX_HEAD_DIM];
	float rbuf[SHADOW_MAX_HEAD_DIM];
	struct rope_walk walk;
	bool rope;

	if (t == NULL || x == NULL || lo == NULL || hi == NULL || steps == NULL ||
	    layer >= t->n_layers || kind > 1u || n_tokens == 0 || !isfinite(step_mul) ||
	    !(step_mul > 0))
		return -EINVAL;
	n = t->head_dim;
	row_n = (size_t)t->n_kv_heads * n;
	rope = kind == SHADOW_KV_K && t->rope == SHADOW_ROPE_HALF;
	walk.half = 0; /* set by rope_walk_start() whenever it is read */
	for (uint32_t h = 0; h < t->n_kv_heads; h++) {
		const float *mean = shadow__transform_mean(t, layer, kind, h);
		const float *basis = shadow__transform_basis(t, layer, kind, h);
		double sum2 = 0, rms;
		size_t count = 0;
		float stepf;
		uint16_t sb;

		/* pass 1: rms of the coefficients of the finite rows */
		if (rope)
			rope_walk_start(&walk, t, first_position);
		for (uint32_t tok = 0; tok < n_tokens; tok++) {
			bool finite = project_row(frame_row(t, rope ? &walk : NULL, x, tok, h, rbuf),
						  mean, basis, n, z, y);
			if (rope)
				rope_walk_next(&walk);
			if (!finite)
				continue;
			for (size_t j = 0; j < n; j++)
				sum2 += y[j] * y[j];
			count += n;
		}
		rms = count > 0 ? sqrt(sum2 / (double)count) : 0.0;
		/* the step as stored: bf16, nearest; beyond bf16's finite range it clamps */
		sb = shadow__float_to_bf16((float)fmin((double)step_mul * rms, 0x1.fep127));
		if (sb == 0x7f80u)
			sb = 0x7f7fu;
		steps[h] = sb;
		stepf = shadow__bf16_to_float(sb);

		/* pass 2: symbols against the stored step (same arithmetic as pass 1) */
		if (rope)
			rope_walk_start(&walk, t, first_position);
		for (uint32_t tok = 0; tok < n_tokens; tok++) {
			size_t base = tok * row_n + h * n;
			bool finite = project_row(frame_row(t, rope ? &walk : NULL, x, tok, h, rbuf),
						  mean, basis, n, z, y);

			if (rope)
				rope_walk_next(&walk);

			for (size_t j = 0; j < n; j++) {
				int32_t q = 0;
				uint32_t u;

				if (finite && stepf > 0) {
					double r = y[j] / (double)stepf;

					r = r > 32767.0 ? 32767.0 : r < -32767.0 ? -32767.0 : r;
					q = (int32_t)round_even(r);
				}
				u = q >= 0 ? (uint32_t)q << 1 : ((uint32_t)(-q) << 1) - 1u;
				lo[base + j] = (uint8_t)u;
				hi[base + j] = (uint8_t)(u >> 8);
			}
		}
	}
	return 0;
}
