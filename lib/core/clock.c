/* clock.c - CLOCK_MONOTONIC readers and an absolute-deadline sleep (see clock.h). */
#include <errno.h>
#include <time.h>

#include "core/clock.h"

static uint64_t shadow_ts_to_ns(const struct timespec *ts)
{
	return (uint64_t)ts->tv_sec * SHADOW_NS_PER_SEC + (uint64_t)ts->tv_nsec;
}

uint64_t shadow__now_ns(void)
{
	struct timespec ts;

	/* Cannot fail for CLOCK_MONOTONIC with a valid pointer. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return shadow_ts_to_ns(&ts);
}

uint64_t shadow__now_coarse_ns(void)
{
	struct timespec ts;

#if defined(CLOCK_MONOTONIC_COARSE)
	if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
		return shadow_ts_to_ns(&ts);
#endif
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return shadow_ts_to_ns(&ts);
}

void shadow__sleep_ns(uint64_t ns)
{
	/* An absolute deadline, so that EINTR restarts do not stretch the sleep. */
	uint64_t deadline = shadow__deadline_ns(shadow__now_ns(), ns);
	struct timespec ts = {
		.tv_sec = (time_t)(deadline / SHADOW_NS_PER_SEC),
		.tv_nsec = (long)(deadline % SHADOW_NS_PER_SEC),
	};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}
