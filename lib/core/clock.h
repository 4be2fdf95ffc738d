/*
 * clock.h - monotonic time in nanoseconds, and sleeping.
 *
 * Every timestamp and timeout inside libshadow is a uint64_t count of nanoseconds of
 * CLOCK_MONOTONIC (it never jumps with the wall clock; 2^64 ns is 584 years of uptime). These
 * are out of line so that callers need no POSIX feature macros; clock_gettime() is a vDSO call
 * of about 20 ns, against which the call costs nothing.
 */
#ifndef SHADOW_CORE_CLOCK_H
#define SHADOW_CORE_CLOCK_H

#include <stdint.h>

#include "core/common.h"

#define SHADOW_NS_PER_US 1000ull
#define SHADOW_NS_PER_MS 1000000ull
#define SHADOW_NS_PER_SEC 1000000000ull

/* CLOCK_MONOTONIC in ns. Thread-safe. */
uint64_t shadow__now_ns(void) SHADOW_INTERNAL;

/*
 * CLOCK_MONOTONIC_COARSE in ns: the time of the last timer tick (1 to 4 ms resolution), read
 * without touching the clock source. For rate limits and coarse timeouts on hot paths, where
 * a few ms do not matter. Never behind shadow__now_ns() by more than one tick.
 */
uint64_t shadow__now_coarse_ns(void) SHADOW_INTERNAL;

/* Sleep at least `ns` nanoseconds of CLOCK_MONOTONIC, resuming after signals. */
void shadow__sleep_ns(uint64_t ns) SHADOW_INTERNAL;

/* now + timeout_ns, saturating at UINT64_MAX ("never"). */
static inline uint64_t shadow__deadline_ns(uint64_t now_ns, uint64_t timeout_ns)
{
	uint64_t d;

	return shadow_add_u64(now_ns, timeout_ns, &d) ? d : UINT64_MAX;
}

#endif /* SHADOW_CORE_CLOCK_H */
