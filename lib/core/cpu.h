/*
 * cpu.h - which SIMD instruction sets this CPU and OS can run, for picking kernels at startup.
 *
 * A kernel is written once as a template, compiled per ISA with target attributes, and chosen
 * once through a function pointer from shadow__cpu_features() (STYLE.md, "CPU dispatch").
 *
 * A flag is set only when the CPU has the instructions AND the kernel saves their registers on
 * context switch (XCR0, read with xgetbv). The flags are also made consistent so that a kernel
 * can rely on the levels below its own: AVX2 and FMA imply AVX state enabled, and no AVX-512
 * flag is reported without AVX2 (and no BW/VL without F).
 *
 * SHADOW_FORCE_ISA (SHADOW_TESTING builds only): scalar | avx2 | avx512 | neon masks the
 * detected features down to that level, so tests can run every variant a CPU supports. It can
 * only remove features, never add one the CPU or OS lacks: "avx512" on an AVX2-only CPU gives
 * the AVX2 features, "neon" on x86 gives none. An unknown value is ignored with a warning. The
 * variable is read once, with the features; shadow__cpu_features_reset_for_testing() forgets
 * both.
 */
#ifndef SHADOW_CORE_CPU_H
#define SHADOW_CORE_CPU_H

#include <stdint.h>

#include "core/common.h"

/* x86 */
#define SHADOW_CPU_SSE42 (1u << 0)
#define SHADOW_CPU_AVX2 (1u << 1)
#define SHADOW_CPU_FMA (1u << 2)
#define SHADOW_CPU_BMI2 (1u << 3)
#define SHADOW_CPU_F16C (1u << 4)
#define SHADOW_CPU_AVX512F (1u << 5)
#define SHADOW_CPU_AVX512BW (1u << 6)
#define SHADOW_CPU_AVX512VL (1u << 7)
#define SHADOW_CPU_AVX512BF16 (1u << 8) /* vcvtneps2bf16 */
/* arm64 */
#define SHADOW_CPU_NEON (1u << 16)

/* What SHADOW_FORCE_ISA=avx2 keeps; "avx512" keeps these plus the AVX-512 flags (not BF16:
 * forcing avx512 runs the kernels every AVX-512 CPU runs). */
#define SHADOW_CPU_X86_AVX2_LEVEL \
	(SHADOW_CPU_SSE42 | SHADOW_CPU_AVX2 | SHADOW_CPU_FMA | SHADOW_CPU_BMI2 | SHADOW_CPU_F16C)
#define SHADOW_CPU_X86_AVX512_LEVEL \
	(SHADOW_CPU_X86_AVX2_LEVEL | SHADOW_CPU_AVX512F | SHADOW_CPU_AVX512BW | SHADOW_CPU_AVX512VL)

/* AVX-512 kernels in libshadow need all three. */
#define SHADOW_CPU_AVX512 (SHADOW_CPU_AVX512F | SHADOW_CPU_AVX512BW | SHADOW_CPU_AVX512VL)

/*
 * The SHADOW_CPU_* flags usable here, detected on the first call and cached; thread-safe and
 * cheap after the first call (one relaxed load).
 */
uint32_t shadow__cpu_features(void) SHADOW_INTERNAL;

/*
 * The flags as text, e.g. "sse4.2 avx2 fma bmi2 f16c", or "none". The string lives in a
 * thread-local buffer, valid until this thread's next call.
 */
const char *shadow__cpu_features_string(uint32_t features) SHADOW_INTERNAL;

/*
 * For kernel families compiled for several ISAs (lib/quant): needs[i] is the SHADOW_CPU_* set
 * variant i's target attribute names (0 for the scalar reference), variants listed slowest
 * first. Writes the indexes of those this CPU runs, as shadow__cpu_features() reports (so
 * SHADOW_FORCE_ISA narrows them), in order, into idx_ret (room for n); returns how many.
 */
size_t shadow__cpu_runnable(const uint32_t *needs, size_t n, size_t *idx_ret) SHADOW_INTERNAL;

#if defined(SHADOW_TESTING)
/* Forget the cached features so that the next call detects again and rereads SHADOW_FORCE_ISA. */
void shadow__cpu_features_reset_for_testing(void) SHADOW_INTERNAL;
#endif

#endif /* SHADOW_CORE_CPU_H */
