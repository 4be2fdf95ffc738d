/*
 * log.c - the logging sink behind log.h and shadow_log_set_level/get_level/set_handler.
 *
 * State: the level (one atomic int, -1 until first use), and the handler (two atomic pointers).
 * The first use of the level reads SHADOW_LOG_LEVEL and installs it with a CAS from -1, so a
 * concurrent shadow_log_set_level() always wins over the environment and no lock or
 * pthread_once is needed; the environment is parsed at most a few times in a race, with the
 * same result each time.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

_Atomic int shadow__log_level = -1;

/*
 * The handler. shadow.h says it is not synchronised against concurrent logging; the atomics
 * only keep each pointer untorn. set_handler stores ctx before fn (release) and log loads fn
 * (acquire, pairs with that release) before ctx, so a handler installed before threads start
 * is always seen with its own ctx.
 */
static _Atomic(shadow_log_fn) shadow_log_handler_fn;
static _Atomic(void *) shadow_log_handler_ctx;

static const char *const shadow_log_level_names[] = { "error", "warn", "info", "debug" };

static int shadow_log_level_from_env(void)
{
	const char *env = getenv("SHADOW_LOG_LEVEL");

	if (env == NULL || env[0] == '\0')
		return SHADOW_LOG_WARN;
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(shadow_log_level_names); i++) {
		if (strcasecmp(env, shadow_log_level_names[i]) == 0)
			return (int)i;
	}
	if (strcasecmp(env, "warning") == 0)
		return SHADOW_LOG_WARN;
	if (env[0] >= '0' && env[0] <= '3' && env[1] == '\0')
		return env[0] - '0';
	/* Can't log about it through the normal path: that would recurse into this function. */
	return SHADOW_LOG_WARN;
}

int shadow__log_level_init(void)
{
	int expected = -1;
	int level = shadow_log_level_from_env();

	/*
	 * relaxed: only the level's own value matters. Fails if another thread initialised it or
	 * shadow_log_set_level() ran first; either way `expected` then holds the current level.
	 */
	if (atomic_compare_exchange_strong_explicit(&shadow__log_level, &expected, level,
						    memory_order_relaxed, memory_order_relaxed))
		return level;
	return expected;
}

void shadow_log_set_level(enum shadow_log_level level)
{
	int l = (int)level;

	if (l < SHADOW_LOG_ERROR)
		l = SHADOW_LOG_ERROR;
	if (l > SHADOW_LOG_DEBUG)
		l = SHADOW_LOG_DEBUG;
	atomic_store_explicit(&shadow__log_level, l, memory_order_relaxed);
}

enum shadow_log_level shadow_log_get_level(void)
{
	int cur = atomic_load_explicit(&shadow__log_level, memory_order_relaxed);

	if (cur < 0)
		cur = shadow__log_level_init();
	return (enum shadow_log_level)cur;
}

void shadow_log_set_handler(shadow_log_fn fn, void *ctx)
{
	if (fn == NULL) {
		atomic_store_explicit(&shadow_log_handler_fn, NULL, memory_order_release);
		atomic_store_explicit(&shadow_log_handler_ctx, NULL, memory_order_relaxed);
		return;
	}
	atomic_store_explicit(&shadow_log_handler_ctx, ctx, memory_order_relaxed);
	/* release: pairs with the acquire load in shadow_log_emit(), publishing ctx with fn. */
	atomic_store_explicit(&shadow_log_handler_fn, fn, memory_order_release);
}

#if defined(SHADOW_TESTING)
void shadow__log_reset_for_testing(void)
{
	atomic_store_explicit(&shadow__log_level, -1, memory_order_relaxed);
}
#endif

/* Write all of buf to stderr, retrying short writes and EINTR; errors are dropped. */
static void shadow_log_write_stderr(const char *buf, size_t nbytes)
{
	while (nbytes > 0) {
		ssize_t n = write(STDERR_FILENO, buf, nbytes);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		nbytes -= (size_t)n;
	}
}

static void shadow_log_emit(enum shadow_log_level level, uint32_t n_suppressed, const char *fmt,
			    va_list ap) __attribute__((format(printf, 3, 0)));

static void shadow_log_emit(enum shadow_log_level level, uint32_t n_suppressed, const char *fmt,
			    va_list ap)
{
	/* +2: room for the '\n' of the stderr path and the NUL. */
	char line[SHADOW_LOG_LINE_MAX + 2];
	char note[48] = "";
	size_t cap = SHADOW_LOG_LINE_MAX;
	int saved_errno = errno;
	unsigned lvl = (unsigned)level < SHADOW_ARRAY_SIZE(shadow_log_level_names) ? level : 0;
	size_t len, note_len = 0;
	int n;

	if (n_suppressed > 0) {
		n = snprintf(note, sizeof(note), " (%u similar messages suppressed)",
			     (unsigned)n_suppressed);
		note_len = n > 0 ? SHADOW_MIN((size_t)n, sizeof(note) - 1) : 0;
		cap -= note_len; /* the note survives truncation of the message */
	}
	n = snprintf(line, cap + 1, "shadow: %s: ", shadow_log_level_names[lvl]);
	len = n > 0 ? (size_t)n : 0;
	n = vsnprintf(line + len, cap + 1 - len, fmt, ap);
	if (n < 0)
		n = 0;
	if (len + (size_t)n > cap) {
		len = cap;
		memcpy(line + cap - 3, "...", 3);
	} else {
		len += (size_t)n;
	}
	/* One line per call: drop trailing newlines that a caller may have added. */
	while (len > 0 && line[len - 1] == '\n')
		len--;
	memcpy(line + len, note, note_len);
	len += note_len;
	line[len] = '\0';

	/* acquire: pairs with the release store of the handler in shadow_log_set_handler(). */
	shadow_log_fn fn = atomic_load_explicit(&shadow_log_handler_fn, memory_order_acquire);
	if (fn != NULL) {
		void *ctx = atomic_load_explicit(&shadow_log_handler_ctx, memory_order_relaxed);

		fn(ctx, level, line);
	} else {
		line[len] = '\n';
		shadow_log_write_stderr(line, len + 1);
	}
	errno = saved_errno;
}

void shadow__log(enum shadow_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	shadow_log_emit(level, 0, fmt, ap);
	va_end(ap);
}

#define SHADOW_LOG_RL_COUNT_BITS 24
#define SHADOW_LOG_RL_COUNT_MASK ((UINT64_C(1) << SHADOW_LOG_RL_COUNT_BITS) - 1)

SHADOW_STATIC_ASSERT(SHADOW_LOG_RATELIMIT_BURST < SHADOW_LOG_RL_COUNT_MASK,
		     "the burst must fit the count field");

/* Whether one more line may go out now; counts it in the window if so. */
static bool shadow_log_ratelimit_admit(struct shadow__log_ratelimit *rl)
{
	/* +1 so that a window starting at ms 0 is not mistaken for "no window". */
	uint64_t now_ms = shadow__now_coarse_ns() / 1000000u + 1;
	uint64_t interval_ms = SHADOW_LOG_RATELIMIT_INTERVAL_NS / 1000000u;
	/* relaxed: the word carries no other data; the CAS below orders updates to it. */
	uint64_t old = atomic_load_explicit(&rl->window, memory_order_relaxed);
	uint64_t next;

	do {
		uint64_t start_ms = old >> SHADOW_LOG_RL_COUNT_BITS;
		uint64_t count = old & SHADOW_LOG_RL_COUNT_MASK;

		if (start_ms == 0 || now_ms - start_ms >= interval_ms)
			next = (now_ms << SHADOW_LOG_RL_COUNT_BITS) | 1;
		else if (count < SHADOW_LOG_RATELIMIT_BURST)
			next = old + 1;
		else
			return false;
	} while (!atomic_compare_exchange_weak_explicit(&rl->window, &old, next,
							memory_order_relaxed,
							memory_order_relaxed));
	return true;
}

void shadow__log_ratelimited(struct shadow__log_ratelimit *rl, enum shadow_log_level level,
			     const char *fmt, ...)
{
	va_list ap;
	uint32_t n_suppressed;

	if (!shadow_log_ratelimit_admit(rl)) {
		/* relaxed: a counter; whoever exchanges it next reports it. */
		atomic_fetch_add_explicit(&rl->suppressed, 1, memory_order_relaxed);
		return;
	}
	/* relaxed: pairs with nothing; the count is only reported, never used to order data. */
	n_suppressed = atomic_exchange_explicit(&rl->suppressed, 0, memory_order_relaxed);
	va_start(ap, fmt);
	shadow_log_emit(level, n_suppressed, fmt, ap);
	va_end(ap);
}
