/*
 * pca_kernels.c - the SHADOW_QUANT_PCA decode row (pca.h) for scalar, AVX2+FMA, AVX-512 and
 * NEON: the primitives of each ISA, each followed by an inclusion of pca_kernels_template.h,
 * then the choice of variant for this CPU (as quant/dequant.c does).
 *
 * Every variant must give the scalar reference's bits: accumulation is only ever a fused
 * multiply-add (fmaf, vfmadd231ps, fmla), never a multiply then an add, so this file's
 * floating-point contraction setting does not matter; the bf16 store rounds in integer
 * registers (+0x7fff + lsb) and fp16 converts with round-to-nearest-even (vcvtps2ph imm 0,
 * fcvtn under the default FPCR), NaN replaced by the canonical quiet NaN first, as the
 * dequant kernels do (quant.h, DESIGN). The default floating-point environment is assumed.
 *
 * Measured (one core of a 2-vCPU AMD EPYC VM with AVX-512, head_dim 128, 4096 rows over one
 * basis, bf16 or fp16 out alike): AVX-512 0.84 GB/s of output with 50% zero coefficients,
 * 0.40 GB/s with none; AVX2 0.70 / 0.37; scalar (libm fmaf calls) 0.016 / 0.009; memcpy of the
 * same output 53 GB/s. The row is O(head_dim^2): each nonzero coefficient streams one 512-byte
 * basis row, and the 64 KiB basis of a head lives in L2, whose bandwidth (~32 B/cycle) is the
 * limit, not the FMA units. Decoding several rows per basis pass would divide that traffic.
 */
#include <stdatomic.h>

#include "core/cpu.h"
#include "core/log.h"
#include "quant/round_simd.h"
#include "quant/pca_kernels_template.h" /* the shared part */

extern const struct shadow__pca_kernel shadow__pca_kernel_scalar SHADOW_INTERNAL;

/* ---- scalar: 16 columns per span, one float accumulator each ---- */
#define PK_VW 1
#define PK_TILE 16
typedef float pk_vf_scalar;

static inline pk_vf_scalar pk_load_scalar(const float *p)
{
	return *p;
}

static inline pk_vf_scalar pk_splat_scalar(float x)
{
	return x;
}

static inline pk_vf_scalar pk_fma_scalar(pk_vf_scalar b, pk_vf_scalar c, pk_vf_scalar acc)
{
	return fmaf(b, c, acc);
}

static inline void pk_store_bf16_scalar(uint8_t *out, pk_vf_scalar x)
{
	pk_put16(out, pk_out_bf16(x));
}

static inline void pk_store_fp16_scalar(uint8_t *out, pk_vf_scalar x)
{
	pk_put16(out, pk_out_fp16(x));
}

#define pk_vf pk_vf_scalar
#define pk_load pk_load_scalar
#define pk_splat pk_splat_scalar
#define pk_fma pk_fma_scalar
#define pk_store_bf16 pk_store_bf16_scalar
#define pk_store_fp16 pk_store_fp16_scalar
#define pk_store_f32(out, x) memcpy((out), &(x), sizeof(float))
#define PK_SUFFIX scalar
#define PK_ISA "scalar"
#define PK_ATTR
#include "quant/pca_kernels_template.h"

#if defined(__x86_64__)
#include <immintrin.h>

extern const struct shadow__pca_kernel shadow__pca_kernel_avx2 SHADOW_INTERNAL;
extern const struct shadow__pca_kernel shadow__pca_kernel_avx512 SHADOW_INTERNAL;

/* ---- AVX2 + FMA + F16C: 8 floats per ymm, spans of 8 ymm (64 columns) ---- */
#define PK_ATTR __attribute__((target("avx2,fma,f16c")))
#define PK_VW 8
#define PK_TILE 8
typedef __m256 pk_vf_avx2;

PK_ATTR static inline pk_vf_avx2 pk_load_avx2(const float *p)
{
	return _mm256_loadu_ps(p);
}

PK_ATTR static inline pk_vf_avx2 pk_splat_avx2(float x)
{
	return _mm256_set1_ps(x);
}

PK_ATTR static inline pk_vf_avx2 pk_fma_avx2(pk_vf_avx2 b, pk_vf_avx2 c, pk_vf_avx2 acc)
{
	return _mm256_fmadd_ps(b, c, acc);
}




#define pk_vf pk_vf_avx2
#define pk_load pk_load_avx2
#define pk_splat pk_splat_avx2
#define pk_fma pk_fma_avx2
#define pk_store_bf16 shadow__store_bf16_256
#define pk_store_fp16 shadow__store_fp16_256
#define pk_store_f32(out, x) _mm256_storeu_ps((float *)(void *)(out), (x))
#define PK_SUFFIX avx2
#define PK_ISA "avx2"
#include "quant/pca_kernels_template.h"

/* ---- AVX-512 F/BW/VL: 16 floats per zmm, spans of 8 zmm (128 columns) ---- */
#define PK_ATTR __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
#define PK_VW 16
#define PK_TILE 8
typedef __m512 pk_vf_avx512;

PK_ATTR static inline pk_vf_avx512 pk_load_avx512(const float *p)
{
	return _mm512_loadu_ps(p);
}

PK_ATTR static inline pk_vf_avx512 pk_splat_avx512(float x)
{
	return _mm512_set1_ps(x);
}

PK_ATTR static inline pk_vf_avx512 pk_fma_avx512(pk_vf_avx512 b, pk_vf_avx512 c, pk_vf_avx512 acc)
{
	return _mm512_fmadd_ps(b, c, acc);
}




#define pk_vf pk_vf_avx512
#define pk_load pk_load_avx512
#define pk_splat pk_splat_avx512
#define pk_fma pk_fma_avx512
#define pk_store_bf16 shadow__store_bf16_512
#define pk_store_fp16 shadow__store_fp16_512
#define pk_store_f32(out, x) _mm512_storeu_ps((float *)(void *)(out), (x))
#define PK_SUFFIX avx512
#define PK_ISA "avx512"
#include "quant/pca_kernels_template.h"
#endif /* __x86_64__ */

#if defined(__aarch64__)
#include <arm_neon.h>

extern const struct shadow__pca_kernel shadow__pca_kernel_neon SHADOW_INTERNAL;

/* ---- NEON: 4 floats per q register, spans of 16 (64 columns); stores via uint8_t * ---- */
#define PK_ATTR
#define PK_VW 4
#define PK_TILE 16
typedef float32x4_t pk_vf_neon;

static inline pk_vf_neon pk_load_neon(const float *p)
{
	return vld1q_f32(p);
}

static inline pk_vf_neon pk_splat_neon(float x)
{
	return vdupq_n_f32(x);
}

static inline pk_vf_neon pk_fma_neon(pk_vf_neon b, pk_vf_neon c, pk_vf_neon acc)
{
	return vfmaq_f32(acc, b, c); /* acc + b * c, one rounding */
}




#define pk_vf pk_vf_neon
#define pk_load pk_load_neon
#define pk_splat pk_splat_neon
#define pk_fma pk_fma_neon
#define pk_store_bf16(out, x) vst1_u8((out), vreinterpret_u8_u16(shadow__bf16x4(x)))
#define pk_store_fp16(out, x) vst1_u8((out), vreinterpret_u8_u16(shadow__fp16x4(x)))
#define pk_store_f32(out, x) vst1q_f32((float *)(void *)(out), (x))
#define PK_SUFFIX neon
#define PK_ISA "neon"
#include "quant/pca_kernels_template.h"
#endif /* __aarch64__ */

/* ---- dispatch ---- */

/* The variants, slowest first, and the features each one's target attribute names. */
static const struct shadow__pca_kernel *const pk_all[] = {
	&shadow__pca_kernel_scalar,
#if defined(__x86_64__)
	&shadow__pca_kernel_avx2,
	&shadow__pca_kernel_avx512,
#elif defined(__aarch64__)
	&shadow__pca_kernel_neon,
#endif
};

static const uint32_t pk_needs[] = {
	0,
#if defined(__x86_64__)
	SHADOW_CPU_AVX2 | SHADOW_CPU_FMA | SHADOW_CPU_F16C,
	SHADOW_CPU_AVX2 | SHADOW_CPU_FMA | SHADOW_CPU_F16C | SHADOW_CPU_AVX512,
#elif defined(__aarch64__)
	SHADOW_CPU_NEON,
#endif
};

SHADOW_STATIC_ASSERT(SHADOW_ARRAY_SIZE(pk_all) == SHADOW_ARRAY_SIZE(pk_needs),
		     "one feature set per variant");

size_t shadow__pca_kernel_variants(const struct shadow__pca_kernel **out, size_t max)
{
	size_t idx[SHADOW_ARRAY_SIZE(pk_all)];
	size_t n = shadow__cpu_runnable(pk_needs, SHADOW_ARRAY_SIZE(idx), idx);

	for (size_t i = 0; i < n && i < max; i++)
		out[i] = pk_all[idx[i]];
	return n;
}

/* One atomic pointer to constant tables: a relaxed load is enough (see quant/dequant.c). */
static _Atomic(const struct shadow__pca_kernel *) shadow_pca_chosen;

const struct shadow__pca_kernel *shadow__pca_kernel(void)
{
	const struct shadow__pca_kernel *k =
		atomic_load_explicit(&shadow_pca_chosen, memory_order_relaxed);
	const struct shadow__pca_kernel *v[4];

	if (shadow_likely(k != NULL))
		return k;
	k = v[shadow__pca_kernel_variants(v, SHADOW_ARRAY_SIZE(v)) - 1]; /* fastest last */
	atomic_store_explicit(&shadow_pca_chosen, k, memory_order_relaxed);
	SHADOW_LOGD("pca kernel: %s", k->isa);
	return k;
}

#if defined(SHADOW_TESTING)
void shadow__pca_kernel_reset_for_testing(void)
{
	atomic_store_explicit(&shadow_pca_chosen, NULL, memory_order_relaxed);
}
#endif
