/*
 * quant.h - quantization of one frame (encoder, save path) and its inverse (decoder, the data
 * plane's hot path). Pure functions over buffers: no stores, no pipeline, no GPU.
 *
 * DESIGN
 * Symbols. A uniform-quantized frame is one uint8 symbol per element, in canonical order
 * [token][head][channel] (token-major: measured to entropy-code better than channel-major for
 * int8 keys, 0.46 vs 0.47 of bf16 with zstd-3 on the shared dumps). When no lossless stage
 * follows, symbols are bit-packed, b bits each, LSB first, in the same order; with
 * head_dim = 128 and b >= 2 every (token, head) row starts on a byte boundary.
 *
 * Parameters. Each group has a scale and an offset ("bias"), stored as bf16, and an element
 * decodes as x = q * scale + bias, computed in float32 as a multiply then an add (no fused
 * multiply-add: every variant must give the same bits, and this file's users build with
 * -ffp-contract=off), then rounded to the geometry's dtype (bf16 or fp16) to nearest-even.
 * A NaN result (only non-finite parameters, i.e. hostile input, make one) is written as the
 * canonical quiet NaN, SHADOW_BF16_QNAN or SHADOW_FP16_QNAN, so that it too is the same in every
 * variant: its payload and sign would otherwise depend on operand order and on the ISA. The
 * kernels assume the default floating-point environment (round to nearest, no flush to zero).
 * Groups are tiles of group_tokens tokens x group_channels channels of one head, ordered
 * [token group][head][channel group]: n_groups = ceil(n_tokens / group_tokens) * n_kv_heads *
 * (head_dim / group_channels). Keys usually group per channel over the chunk's tokens
 * (group_channels 1: KIVI's per-channel scaling), values per token (group_tokens 1).
 * The parameter block of a frame is scale[n_groups] then bias[n_groups], bf16 little-endian.
 * The encoder quantizes against the stored (rounded) bf16 parameters, so their rounding moves
 * the grid but adds no error; it rounds so that the grid still covers the group's range.
 *
 * ECSQ (entropy-coded scalar quantization). Symbols are signed, q = round((x - bias) / scale)
 * clamped to [-32767, 32767], zigzag-mapped to u = (q << 1) ^ (q >> 15) (0, -1, 1, -2, ... ->
 * 0, 1, 2, 3, ...) and stored as two byte planes, all low bytes then all high bytes, so that
 * an entropy coder codes them near their entropy with no clipping: outliers cost bits, not
 * error (what KV's outlier channels need; clipping at 3.5 sigma raised attention error from
 * 2.9% to 4.0% in the research harness). Decoding is x = zz(u) * scale + bias.
 *
 * Planes. A lossless frame of 16-bit elements may be split into the high bytes of every
 * element, then the low bytes (canonical order), which entropy coders handle better.
 *
 * Kernels. The decode kernels are written once (dequant_template.h) and compiled for scalar,
 * AVX2, AVX-512 and NEON; shadow__dequant_kernels() picks the best the CPU has, once. In
 * SHADOW_TESTING builds SHADOW_FORCE_ISA=scalar|avx2|avx512|neon forces a lower one, and every
 * variant must produce identical bytes.
 */
#ifndef SHADOW_QUANT_QUANT_H
#define SHADOW_QUANT_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "core/common.h"

/* Output element types the kernels write (a subset of enum shadow_dtype). */
enum shadow__out_dtype {
	SHADOW_OUT_BF16 = SHADOW_DTYPE_BF16,
	SHADOW_OUT_FP16 = SHADOW_DTYPE_FP16,
	/* float32, unrounded: only the PCA row kernel writes it (keys are rotated after it) */
	SHADOW_OUT_F32 = SHADOW_DTYPE_FP32
};

/* What the kernels write for a NaN result (see the DESIGN comment). */
#define SHADOW_BF16_QNAN ((uint16_t)0x7fc0)
#define SHADOW_FP16_QNAN ((uint16_t)0x7e00)

/*
 * The decode kernels of one ISA. `out` is not required to be aligned (not even to 2 bytes);
 * n is any size (0 writes nothing). A kernel reads only its n inputs (unpack_bits: the
 * ceil(n * bits / 8) packed bytes) and writes only its n outputs, whatever its vector width.
 * Input and output must not overlap. Thread-safe: pure functions of their arguments.
 */
struct shadow__dequant_kernels {
	const char *isa; /* "scalar", "avx2", "avx512", "neon" */
	/* out[i] = round(q[i] * scale[i] + bias[i]) for i < n (per-channel parameters: keys) */
	void (*row_vec)(const uint8_t *q, const float *scale, const float *bias, void *out,
			size_t n, enum shadow__out_dtype dtype);
	/* row_vec on n_rows consecutive rows of n elements (row r at q + r * n, out + 2 * r * n)
	 * sharing the same scale[0..n) and bias[0..n): one key token group, token-major */
	void (*rows_vec)(const uint8_t *q, const float *scale, const float *bias, void *out,
			 size_t n_rows, size_t n, enum shadow__out_dtype dtype);
	/* row_scalar on n_rows consecutive rows of n elements, row r with the little-endian bf16
	 * scale at scale_bf16 + 2 r and bias at bias_bf16 + 2 r: a value frame, token-major */
	void (*rows_scalar)(const uint8_t *q, const uint8_t *scale_bf16, const uint8_t *bias_bf16,
			    void *out, size_t n_rows, size_t n, enum shadow__out_dtype dtype);
	/* out[i] = round(q[i] * scale + bias) for i < n (one group: values) */
	void (*row_scalar)(const uint8_t *q, float scale, float bias, void *out, size_t n,
			   enum shadow__out_dtype dtype);
	/* out[i] = (uint16_t)(hi[i] << 8 | lo[i]) for i < n */
	void (*merge_planes)(const uint8_t *hi, const uint8_t *lo, void *out, size_t n);
	/* q[i] = the i-th b-bit field of packed (LSB first), i < n, 2 <= bits <= 8 */
	void (*unpack_bits)(const uint8_t *packed, unsigned bits, uint8_t *q, size_t n);
	/* ECSQ: out[i] = round(zz(lo[i] | hi[i] << 8) * scale[i] + bias[i]) for i < n, where
	 * zz(u) = (int)(u >> 1) ^ -(int)(u & 1) */
	void (*row_vec_zz)(const uint8_t *lo, const uint8_t *hi, const float *scale,
			   const float *bias, void *out, size_t n, enum shadow__out_dtype dtype);
	/* ECSQ, one group: out[i] = round(zz(lo[i] | hi[i] << 8) * scale + bias) for i < n */
	void (*row_scalar_zz)(const uint8_t *lo, const uint8_t *hi, float scale, float bias,
			      void *out, size_t n, enum shadow__out_dtype dtype);
};

/*
 * The kernels for this CPU (and SHADOW_FORCE_ISA in test builds), chosen on the first call from
 * shadow__cpu_features(). Never NULL; the table is static. Thread-safe, one relaxed load after
 * the first call.
 */
const struct shadow__dequant_kernels *shadow__dequant_kernels(void) SHADOW_INTERNAL;

/*
 * A bf16 parameter is tame when it is zero, or finite and at least 2^-100 in magnitude. When
 * every scale and bias of a frame is tame, no result q * scale + bias is NaN or subnormal:
 * q * scale is exact in float (16-bit symbols times an 8-bit significand), and both terms are
 * multiples of 2^-107, so their sum is 0 or at least 2^-107 in magnitude (overflow gives
 * infinity, not NaN). Kernels may then round with instructions that treat NaN and subnormal
 * values their own way (AVX512-BF16's vcvtneps2bf16) and still give the reference's bytes.
 */
static inline bool shadow__bf16_tame(uint16_t h)
{
	uint16_t e = h & 0x7f80u;
	return (h & 0x7fffu) == 0 || (e >= (27u << 7) && e != 0x7f80u);
}

/*
 * The fastest kernels for frames whose parameters are all tame (see above): the AVX512-BF16
 * variant where the CPU has it, else shadow__dequant_kernels(). Chosen once, thread-safe.
 */
const struct shadow__dequant_kernels *shadow__dequant_kernels_tame(void) SHADOW_INTERNAL;

/*
 * Every variant valid for tame parameters that the CPU runs (shadow__dequant_variants(), then
 * those that need tame parameters), slowest first; returns the count. For tests.
 */
size_t shadow__dequant_tame_variants(const struct shadow__dequant_kernels **out, size_t max)
	SHADOW_INTERNAL;

#if defined(SHADOW_TESTING)
/*
 * Forget the choice, so that the next shadow__dequant_kernels() chooses again. To change
 * SHADOW_FORCE_ISA, call shadow__cpu_features_reset_for_testing() too.
 */
void shadow__dequant_reset_for_testing(void) SHADOW_INTERNAL;
#endif

/*
 * Every variant compiled into this build that the CPU can run (as shadow__cpu_features() says,
 * so SHADOW_FORCE_ISA narrows the list too), scalar first and slowest first, for tests and
 * benchmarks: writes up to max pointers, returns how many there are. shadow__dequant_kernels()
 * takes the last.
 */
size_t shadow__dequant_variants(const struct shadow__dequant_kernels **out, size_t max)
	SHADOW_INTERNAL;

/*
 * bf16 <-> float, and fp16 <-> float, rounding to nearest even (the scalar reference). Both
 * float -> 16-bit conversions keep a NaN's sign and top payload bits and make it quiet (as
 * F16C and AArch64 do); overflow gives infinity; fp16 subnormals are exact.
 */
static inline float shadow__bf16_to_float(uint16_t h)
{
	union {
		uint32_t u;
		float f;
	} v = { .u = (uint32_t)h << 16 };
	return v.f;
}

static inline uint16_t shadow__float_to_bf16(float f)
{
	union {
		float f;
		uint32_t u;
	} v = { .f = f };
	if ((v.u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
		return (uint16_t)((v.u >> 16) | 0x40u);
	v.u += 0x7fffu + ((v.u >> 16) & 1u);
	return (uint16_t)(v.u >> 16);
}

uint16_t shadow__float_to_fp16(float f) SHADOW_INTERNAL;
float shadow__fp16_to_float(uint16_t h) SHADOW_INTERNAL;

/* ---- encoder side (save path; scalar is enough) ---- */

struct shadow__quant_params {
	uint32_t n_tokens, n_heads, head_dim;
	uint32_t bits;            /* 2..8 (shadow__quantize_frame); ignored by the ECSQ quantizer */
	uint32_t group_tokens;    /* tokens per group, 1..n_tokens */
	uint32_t group_channels;  /* channels per group, divides head_dim */
	uint32_t scale_rule;      /* enum shadow_scale_rule; ECSQ requires SHADOW_SCALE_STD */
	float step_mul;           /* for SHADOW_SCALE_STD */
};

/*
 * Number of groups for these parameters (see the DESIGN comment); 0 if the parameters are
 * invalid (as shadow__quantize_frame checks them) or the count overflows.
 */
size_t shadow__quant_n_groups(const struct shadow__quant_params *p) SHADOW_INTERNAL;

/*
 * Quantize a frame given as float32 in canonical order ([token][head][channel]) into
 * symbols (one byte each, canonical order) and the parameter block (scale[n] then bias[n],
 * bf16). Returns 0 or -EINVAL for bad parameters. Non-finite inputs quantize to the group's
 * bias (and the caller should prefer a lossless scheme for such frames); group statistics use
 * only the finite ones. x and q hold n_tokens * n_heads * head_dim elements, params
 * 2 * shadow__quant_n_groups(p) values in native byte order (the container stores them
 * little-endian). No allocation; thread-safe.
 *
 * Scale rules: MINMAX: bias = min rounded down to bf16, scale = (max - bias) / (2^b - 1)
 * rounded up to bf16, so the grid covers [min, max]; every element decodes within scale / 2
 * (plus float rounding). STD: step = step_mul * (population) std rounded to bf16, bias =
 * mean - 2^(b-1) * step rounded to bf16; elements off the grid clip to 0 or 2^b - 1 (a step
 * beyond bf16's range falls back to MINMAX). A group with max == bias (MINMAX) or std == 0
 * (STD, then bias = the mean) gets scale 0 and symbols 0. Each symbol is the
 * grid point nearest x as the decoder computes it (q * scale + bias in float), ties to even.
 * A group whose range exceeds bf16's finite range gets clamped parameters (no UB, no bound).
 */
int shadow__quantize_frame(const struct shadow__quant_params *p, const float *x, uint8_t *q,
			   uint16_t *params) SHADOW_INTERNAL;

/*
 * ECSQ-quantize a frame (canonical order, like shadow__quantize_frame) into the low-byte plane
 * lo[n] and the high-byte plane hi[n] of its zigzag symbols, and the parameter block. Per
 * group: scale = step_mul * (population) std rounded to bf16 (clamped to bf16's finite range),
 * bias = mean rounded to bf16; a group with std 0 gets scale 0 and symbols 0. Each symbol is
 * the grid point nearest x as the decoder computes it, clamped to [-32767, 32767]. Returns 0
 * or -EINVAL (bad parameters, or scale_rule not SHADOW_SCALE_STD). No allocation.
 */
int shadow__quantize_frame_ecsq(const struct shadow__quant_params *p, const float *x,
				uint8_t *lo, uint8_t *hi, uint16_t *params) SHADOW_INTERNAL;

/*
 * Pack n symbols of `bits` bits (2..8), LSB first; returns the packed size, ceil(n * bits / 8),
 * or 0 for bits out of range. Only the low `bits` bits of each symbol are used.
 */
size_t shadow__pack_bits(const uint8_t *q, size_t n, unsigned bits, uint8_t *packed)
	SHADOW_INTERNAL;

/* Split n 16-bit elements into hi[n] and lo[n]. */
void shadow__split_planes(const uint16_t *x, size_t n, uint8_t *hi, uint8_t *lo) SHADOW_INTERNAL;

#endif /* SHADOW_QUANT_QUANT_H */
