/*
 * cpuset.h - CPU lists such as "0-3,8,10-11" into a cpu_set_t: the --cpus flags of shadowd,
 * linkem and the benchmarks; and the k-th CPU of a set. Header-only (static inline), so that a program linking only the
 * public library (linkem) can use it too. Input comes from command lines and the environment:
 * every character is checked.
 */
#ifndef SHADOW_CORE_CPUSET_H
#define SHADOW_CORE_CPUSET_H

#include <errno.h>
#include <sched.h>
#include <stdlib.h>

/*
 * Parse `text`, comma-separated CPU numbers and ranges A-B (A <= B), into *set. Returns 0, or
 * -EINVAL for anything else: an empty list or element, a sign or space, a range out of order,
 * a CPU >= CPU_SETSIZE. *set is undefined after an error.
 */
static inline int shadow__cpuset_parse(const char *text, cpu_set_t *set)
{
	const char *p = text;

	CPU_ZERO(set);
	for (;;) {
		char *end;
		unsigned long a, b;

		if (*p < '0' || *p > '9') /* strtoul would take a sign or spaces */
			return -EINVAL;
		a = b = strtoul(p, &end, 10);
		if (*end == '-') {
			p = end + 1;
			if (*p < '0' || *p > '9')
				return -EINVAL;
			b = strtoul(p, &end, 10);
		}
		if (a > b || b >= CPU_SETSIZE)
			return -EINVAL;
		for (unsigned long c = a; c <= b; c++)
			CPU_SET(c, set);
		if (*end == '\0')
			return 0;
		if (*end != ',')
			return -EINVAL;
		p = end + 1;
	}
}

/* The k-th CPU (from 0, in increasing order) of `set`, or -1 when it has k or fewer. */
static inline int shadow__cpuset_nth(const cpu_set_t *set, unsigned k)
{
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (CPU_ISSET(c, set) && k-- == 0)
			return c;
	}
	return -1;
}

#endif /* SHADOW_CORE_CPUSET_H */
