/*
 * log.h - internal logging: level-filtered, one line per call, and a rate-limited variant for
 * errors that can repeat on the hot path.
 *
 *	SHADOW_LOGE("redis GET %s: %s", key, shadow_strerror(rc));
 *	SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "chunk %s: bad checksum", key);
 *
 * A line reads "shadow: <level>: <message>" and goes, whole, either to the handler set with
 * shadow_log_set_handler() or to stderr with a single write(2), so lines from different threads
 * never interleave. The message is formatted into a stack buffer and truncated (ending in "...")
 * beyond SHADOW_LOG_LINE_MAX bytes; logging never allocates and never changes errno.
 *
 * The level test is one relaxed atomic load and happens before any argument is formatted, so a
 * disabled SHADOW_LOG_DEBUG costs a load and a branch (its arguments are still evaluated).
 *
 * Rate limiting: each SHADOW_LOG_RATELIMITED call site owns a static state and emits at most
 * SHADOW_LOG_RATELIMIT_BURST lines per SHADOW_LOG_RATELIMIT_INTERVAL_NS window; the window
 * starts at the first line let through. Lines dropped in between are counted, and the next line
 * let through ends in "(N similar messages suppressed)". The state is two atomics updated with
 * CAS, no mutex, so the macro is safe from any thread.
 */
#ifndef SHADOW_CORE_LOG_H
#define SHADOW_CORE_LOG_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/common.h"

/* Longest line, including "shadow: <level>: " and the suppression note, without the newline. */
#define SHADOW_LOG_LINE_MAX 1024

#define SHADOW_LOG_RATELIMIT_BURST 5u
#define SHADOW_LOG_RATELIMIT_INTERVAL_NS 1000000000ull

/* The current level; -1 until the first use reads SHADOW_LOG_LEVEL (see log.c). */
extern _Atomic int shadow__log_level SHADOW_INTERNAL;

int shadow__log_level_init(void) SHADOW_INTERNAL;

static inline bool shadow__log_enabled(enum shadow_log_level level)
{
	/* relaxed: the level is a standalone flag; no other data is published with it. */
	int cur = atomic_load_explicit(&shadow__log_level, memory_order_relaxed);

	if (shadow_unlikely(cur < 0))
		cur = shadow__log_level_init();
	return (int)level <= cur;
}

/* Format and emit one line unconditionally (the caller has checked the level). */
void shadow__log(enum shadow_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3))) SHADOW_INTERNAL;

/*
 * Per-call-site state of SHADOW_LOG_RATELIMITED. Zero-initialised static storage is the valid
 * initial state.
 *   window: bits 63..24 = start of the current window in ms of CLOCK_MONOTONIC_COARSE + 1
 *           (0 = no window yet), bits 23..0 = lines let through in that window.
 *   suppressed: lines dropped since the last line let through.
 */
struct shadow__log_ratelimit {
	_Atomic uint64_t window;
	_Atomic uint32_t suppressed;
};

void shadow__log_ratelimited(struct shadow__log_ratelimit *rl, enum shadow_log_level level,
			     const char *fmt, ...)
	__attribute__((format(printf, 3, 4))) SHADOW_INTERNAL;

#define SHADOW_LOG_AT(level, ...)                       \
	do {                                            \
		if (shadow__log_enabled(level))         \
			shadow__log((level), __VA_ARGS__); \
	} while (0)

/*
 * SHADOW_LOG_WARN/INFO/DEBUG are also the names of enum shadow_log_level constants; being
 * function-like, the macros expand only when followed by '(', so both uses coexist.
 */
#define SHADOW_LOGE(...) SHADOW_LOG_AT(SHADOW_LOG_ERROR, __VA_ARGS__)
#define SHADOW_LOGW(...) SHADOW_LOG_AT(SHADOW_LOG_WARN, __VA_ARGS__)
#define SHADOW_LOGI(...) SHADOW_LOG_AT(SHADOW_LOG_INFO, __VA_ARGS__)
#define SHADOW_LOGD(...) SHADOW_LOG_AT(SHADOW_LOG_DEBUG, __VA_ARGS__)

#define SHADOW_LOG_RATELIMITED(level, ...)                                              \
	do {                                                                            \
		static struct shadow__log_ratelimit shadow__log_rl_;                    \
		if (shadow__log_enabled(level))                                         \
			shadow__log_ratelimited(&shadow__log_rl_, (level), __VA_ARGS__); \
	} while (0)

#if defined(SHADOW_TESTING)
/* Forget the level so that the next use reads SHADOW_LOG_LEVEL again. */
void shadow__log_reset_for_testing(void) SHADOW_INTERNAL;
#endif

#endif /* SHADOW_CORE_LOG_H */
