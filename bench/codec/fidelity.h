/*
 * fidelity.h - how far decoded KV is from the original: relative RMSE and max |error| of K and
 * V, and the attention-output error of ../shared/data/kv/README.md, all in double.
 *
 * Attention-output error: for every layer and query head h (KV head h / (q_heads / n_kv_heads)),
 * each query at position p = q_start + i attends causally to KV positions 0..p with scale
 * 1/sqrt(head_dim): O = softmax(q K^T / sqrt(d)) V over the original KV, O' over the decoded
 * KV, and the error is sqrt(sum |O' - O|^2 / sum |O|^2) over layers, heads and queries. The
 * sums are kept apart (struct bench_err) so per-layer, per-file and pooled figures all come
 * from the same numbers.
 */
#ifndef SHADOW_BENCH_FIDELITY_H
#define SHADOW_BENCH_FIDELITY_H

#include <stddef.h>
#include <stdint.h>

#include "kvdump.h"

/* Error sums; relative errors are sqrt(num / den). a_den is 0 when there are no queries. */
struct bench_err {
	double k_num, k_den, v_num, v_den;
	double k_max, v_max;
	double a_num, a_den;
};

void bench_err_add(struct bench_err *acc, const struct bench_err *e);
/* sqrt(num / den), NaN if den is 0. */
double bench_rel(double num, double den);

/* Per-file attention state: the reference outputs over the original KV, and scratch. */
struct bench_attn {
	const struct bench_kv *kv;
	uint32_t n_ctx;  /* q_start + n_q: the KV positions any query sees */
	double *o_ref;   /* [layer][n_q][q_heads][head_dim] over the original KV */
	double *kd, *vd; /* [n_kv_heads][n_ctx][head_dim] */
	double *qd, *scores, *o;
};

/*
 * Compute the reference outputs of a dump that has queries (kv->has_queries; the positions
 * must lie below kv->n_tokens). Returns 0 or -ENOMEM. `kv` must outlive `a`.
 */
int bench_attn_init(struct bench_attn *a, const struct bench_kv *kv);
void bench_attn_free(struct bench_attn *a);

/*
 * Errors of one layer whose decoded K and V planes (dump order, kv->plane_elems apart is not
 * required: each is [n_tokens][n_kv_heads][head_dim]) are `k` and `v`, against the dump's,
 * over kv->n_tokens tokens; plus the attention error when `a` is non-NULL. Overwrites *e.
 */
void bench_layer_errors(struct bench_attn *a, const struct bench_kv *kv, uint32_t layer,
			const uint16_t *k, const uint16_t *v, struct bench_err *e);

/*
 * The README's baseline, computed by the benchmark itself (not the library): plain min/max
 * `bits`-bit quantization per chunk of chunk_tokens tokens (keys per channel, values per token
 * over all KV heads), dequantized in float and rounded to bf16; symbols one per byte in
 * token-major order, raw DEFLATE (libdeflate level 6) per frame, plus 4 bytes of parameters
 * (a 16-bit scale and offset) per group.
 * Pooled errors into *err_ret and the encoded bytes into *nbytes_ret. Returns 0 or -ENOMEM.
 */
int bench_reference_minmax(struct bench_attn *a, const struct bench_kv *kv,
			   uint32_t chunk_tokens, unsigned bits, struct bench_err *err_ret,
			   uint64_t *nbytes_ret);

#endif /* SHADOW_BENCH_FIDELITY_H */
