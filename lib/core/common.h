/*
 * common.h - small definitions every libshadow source may use: branch hints, cache-line size,
 * the internal assert, and helpers for checked arithmetic on untrusted sizes.
 *
 * Two kinds of checks, never mixed up:
 *  - input from a store, a socket, a file or a client is untrusted: check it with an always-on
 *    `if` that returns an error code (and counts it where a counter exists);
 *  - internal invariants use SHADOW_ASSERT, which is on in SHADOW_TESTING builds (tests,
 *    sanitizers, fuzzers) and compiled out otherwise. An assert never guards untrusted input.
 */
#ifndef SHADOW_CORE_COMMON_H
#define SHADOW_CORE_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <shadow/shadow.h>

#define SHADOW_CACHE_LINE 64

#define shadow_likely(x) __builtin_expect(!!(x), 1)
#define shadow_unlikely(x) __builtin_expect(!!(x), 0)

#define SHADOW_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define SHADOW_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#define SHADOW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SHADOW_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Internal (hidden) symbols are spelt shadow__*; this marks the ones shared across files. */
#define SHADOW_INTERNAL __attribute__((visibility("hidden")))

#if defined(SHADOW_TESTING)
void shadow__assert_fail(const char *expr, const char *file, int line, const char *func)
	__attribute__((noreturn)) SHADOW_INTERNAL;
#define SHADOW_ASSERT(expr) \
	(shadow_likely(expr) ? (void)0 : shadow__assert_fail(#expr, __FILE__, __LINE__, __func__))
#else
#define SHADOW_ASSERT(expr) ((void)0)
#endif

/* a + b into *sum_ret; false on uint64 overflow. For sizes read from untrusted input. */
static inline bool shadow_add_u64(uint64_t a, uint64_t b, uint64_t *sum_ret)
{
	return !__builtin_add_overflow(a, b, sum_ret);
}

/* a * b into *prod_ret; false on uint64 overflow. */
static inline bool shadow_mul_u64(uint64_t a, uint64_t b, uint64_t *prod_ret)
{
	return !__builtin_mul_overflow(a, b, prod_ret);
}

static inline bool shadow_is_pow2(uint64_t x)
{
	return x != 0 && (x & (x - 1)) == 0;
}

#endif /* SHADOW_CORE_COMMON_H */
