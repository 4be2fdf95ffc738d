/*
 * test_log.c - logging: handler, level filtering, SHADOW_LOG_LEVEL, the stderr path, and rate
 * limiting.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/clock.h"
#include "core/log.h"

#define CAP_LINES 256

static struct {
	pthread_mutex_t lock;
	int n;
	enum shadow_log_level level[CAP_LINES];
	char line[CAP_LINES][SHADOW_LOG_LINE_MAX + 1];
} cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void capture(void *ctx, enum shadow_log_level level, const char *line)
{
	assert_ptr_equal(ctx, &cap);
	pthread_mutex_lock(&cap.lock);
	if (cap.n < CAP_LINES) {
		cap.level[cap.n] = level;
		snprintf(cap.line[cap.n], sizeof(cap.line[0]), "%s", line);
	}
	cap.n++;
	pthread_mutex_unlock(&cap.lock);
}

static int setup(void **state)
{
	(void)state;
	cap.n = 0;
	unsetenv("SHADOW_LOG_LEVEL");
	shadow__log_reset_for_testing();
	shadow_log_set_handler(capture, &cap);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	shadow_log_set_handler(NULL, NULL);
	unsetenv("SHADOW_LOG_LEVEL");
	shadow__log_reset_for_testing();
	return 0;
}

static void test_default_level(void **state)
{
	(void)state;
	assert_int_equal(shadow_log_get_level(), SHADOW_LOG_WARN);
}

static void test_handler_receives_lines(void **state)
{
	(void)state;
	SHADOW_LOGE("disk %d on fire", 3);
	SHADOW_LOGW("low %s", "memory");
	assert_int_equal(cap.n, 2);
	assert_string_equal(cap.line[0], "shadow: error: disk 3 on fire");
	assert_int_equal(cap.level[0], SHADOW_LOG_ERROR);
	assert_string_equal(cap.line[1], "shadow: warn: low memory");
	assert_int_equal(cap.level[1], SHADOW_LOG_WARN);
}

static int side_effects;

static int count_call(void)
{
	return ++side_effects;
}

static void test_level_filtering(void **state)
{
	(void)state;
	shadow_log_set_level(SHADOW_LOG_WARN);
	SHADOW_LOGI("hidden %d", 1);
	SHADOW_LOGD("hidden %d", 2);
	assert_int_equal(cap.n, 0);

	shadow_log_set_level(SHADOW_LOG_ERROR);
	SHADOW_LOGW("hidden");
	SHADOW_LOGE("shown");
	assert_int_equal(cap.n, 1);
	assert_string_equal(cap.line[0], "shadow: error: shown");

	shadow_log_set_level(SHADOW_LOG_DEBUG);
	assert_int_equal(shadow_log_get_level(), SHADOW_LOG_DEBUG);
	SHADOW_LOGD("dbg %d", count_call());
	SHADOW_LOGI("info");
	assert_int_equal(cap.n, 3);
	assert_string_equal(cap.line[1], "shadow: debug: dbg 1");
	assert_string_equal(cap.line[2], "shadow: info: info");

	/* Out-of-range levels are clamped. */
	shadow_log_set_level((enum shadow_log_level)99);
	assert_int_equal(shadow_log_get_level(), SHADOW_LOG_DEBUG);
	shadow_log_set_level((enum shadow_log_level)-5);
	assert_int_equal(shadow_log_get_level(), SHADOW_LOG_ERROR);
}

static void expect_env_level(const char *value, enum shadow_log_level want)
{
	setenv("SHADOW_LOG_LEVEL", value, 1);
	shadow__log_reset_for_testing();
	assert_int_equal(shadow_log_get_level(), want);
}

static void test_env_parsing(void **state)
{
	(void)state;
	expect_env_level("error", SHADOW_LOG_ERROR);
	expect_env_level("warn", SHADOW_LOG_WARN);
	expect_env_level("warning", SHADOW_LOG_WARN);
	expect_env_level("info", SHADOW_LOG_INFO);
	expect_env_level("debug", SHADOW_LOG_DEBUG);
	expect_env_level("DEBUG", SHADOW_LOG_DEBUG);
	expect_env_level("0", SHADOW_LOG_ERROR);
	expect_env_level("3", SHADOW_LOG_DEBUG);
	expect_env_level("", SHADOW_LOG_WARN);
	expect_env_level("verbose", SHADOW_LOG_WARN);
	expect_env_level("7", SHADOW_LOG_WARN);

	/* The first use reads the variable; it is not reread, and set_level overrides it. */
	expect_env_level("info", SHADOW_LOG_INFO);
	setenv("SHADOW_LOG_LEVEL", "error", 1);
	assert_int_equal(shadow_log_get_level(), SHADOW_LOG_INFO);
	shadow_log_set_level(SHADOW_LOG_DEBUG);
	assert_int_equal(shadow_log_get_level(), SHADOW_LOG_DEBUG);

	/* set_level before any use wins over the environment. */
	setenv("SHADOW_LOG_LEVEL", "error", 1);
	shadow__log_reset_for_testing();
	shadow_log_set_level(SHADOW_LOG_INFO);
	assert_int_equal(shadow_log_get_level(), SHADOW_LOG_INFO);

	/* The lazy read also happens through the macros. */
	setenv("SHADOW_LOG_LEVEL", "debug", 1);
	shadow__log_reset_for_testing();
	SHADOW_LOGD("via env");
	assert_int_equal(cap.n, 1);
}

static void test_truncation_and_newline(void **state)
{
	(void)state;
	char big[3 * SHADOW_LOG_LINE_MAX];

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	SHADOW_LOGE("%s", big);
	SHADOW_LOGE("trailing newline\n");
	assert_int_equal(cap.n, 2);
	assert_int_equal(strlen(cap.line[0]), SHADOW_LOG_LINE_MAX);
	assert_memory_equal(cap.line[0] + SHADOW_LOG_LINE_MAX - 3, "...", 3);
	assert_string_equal(cap.line[1], "shadow: error: trailing newline");
}

static void test_errno_preserved(void **state)
{
	(void)state;
	errno = EAGAIN;
	SHADOW_LOGE("x");
	assert_int_equal(errno, EAGAIN);
	shadow_log_set_handler(NULL, NULL);
	int saved = dup(STDERR_FILENO), devnull = open("/dev/null", O_WRONLY);

	assert_true(saved >= 0 && devnull >= 0);
	dup2(devnull, STDERR_FILENO);
	errno = ENOSPC;
	SHADOW_LOGE("y");
	assert_int_equal(errno, ENOSPC);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(devnull);
}

/* The default sink: exactly one line with a newline, on fd 2. */
static void test_stderr_default(void **state)
{
	(void)state;
	int fds[2], saved;
	char buf[256];
	ssize_t n;

	shadow_log_set_handler(NULL, NULL);
	assert_int_equal(pipe(fds), 0);
	saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	dup2(fds[1], STDERR_FILENO);
	SHADOW_LOGW("to stderr %d", 42);
	SHADOW_LOGI("filtered");
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_string_equal(buf, "shadow: warn: to stderr 42\n");
}

static void log_hot(int i)
{
	SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "hot error %d", i);
}

static void test_ratelimit(void **state)
{
	(void)state;
	/* One call site, 20 calls well within one second: 5 lines, 15 counted. */
	for (int i = 0; i < 20; i++)
		log_hot(i);
	assert_int_equal(cap.n, (int)SHADOW_LOG_RATELIMIT_BURST);
	for (int i = 0; i < (int)SHADOW_LOG_RATELIMIT_BURST; i++) {
		char want[64];

		snprintf(want, sizeof(want), "shadow: error: hot error %d", i);
		assert_string_equal(cap.line[i], want);
	}

	/* Another call site has its own budget. */
	SHADOW_LOG_RATELIMITED(SHADOW_LOG_WARN, "other site");
	assert_int_equal(cap.n, (int)SHADOW_LOG_RATELIMIT_BURST + 1);
	assert_string_equal(cap.line[cap.n - 1], "shadow: warn: other site");

	/* After the window, the next line reports what was dropped, once. */
	shadow__sleep_ns(SHADOW_LOG_RATELIMIT_INTERVAL_NS + 50 * SHADOW_NS_PER_MS);
	log_hot(100);
	log_hot(101);
	assert_int_equal(cap.n, (int)SHADOW_LOG_RATELIMIT_BURST + 3);
	assert_string_equal(cap.line[cap.n - 2],
			    "shadow: error: hot error 100 (15 similar messages suppressed)");
	assert_string_equal(cap.line[cap.n - 1], "shadow: error: hot error 101");

	/* Filtered by level: not counted as suppressed either. */
	shadow_log_set_level(SHADOW_LOG_ERROR);
	for (int i = 0; i < 10; i++)
		SHADOW_LOG_RATELIMITED(SHADOW_LOG_INFO, "filtered");
	assert_int_equal(cap.n, (int)SHADOW_LOG_RATELIMIT_BURST + 3);
}

static void log_big(const char *big)
{
	SHADOW_LOG_RATELIMITED(SHADOW_LOG_ERROR, "%s", big);
}

/* A long message loses its tail, never the suppression note. */
static void test_ratelimit_note_survives_truncation(void **state)
{
	(void)state;
	static char big[2 * SHADOW_LOG_LINE_MAX];

	memset(big, 'y', sizeof(big) - 1);
	for (int i = 0; i < 8; i++)
		log_big(big);
	shadow__sleep_ns(SHADOW_LOG_RATELIMIT_INTERVAL_NS + 50 * SHADOW_NS_PER_MS);
	for (int i = 0; i < 8; i++)
		log_big(big);
	/* 5 + 5 lines; the first after the pause carries the note. */
	assert_int_equal(cap.n, 2 * (int)SHADOW_LOG_RATELIMIT_BURST);
	const char *l = cap.line[SHADOW_LOG_RATELIMIT_BURST];
	const char *note = "... (3 similar messages suppressed)";

	assert_int_equal(strlen(l), SHADOW_LOG_LINE_MAX);
	assert_string_equal(l + strlen(l) - strlen(note), note);
}

#define N_THREADS 4
#define N_PER_THREAD 200

static struct shadow__log_ratelimit shared_rl;

static void *log_thread(void *arg)
{
	int id = (int)(intptr_t)arg;

	for (int i = 0; i < N_PER_THREAD; i++) {
		SHADOW_LOGE("thread %d line %d", id, i);
		/* Everyone hammers one rate-limit state. */
		shadow__log_ratelimited(&shared_rl, SHADOW_LOG_WARN, "rl %d", id);
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	(void)state;
	pthread_t t[N_THREADS];
	uint64_t t0 = shadow__now_ns(), windows;
	int n_rl = 0;

	for (int i = 0; i < N_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, log_thread, (void *)(intptr_t)i), 0);
	for (int i = 0; i < N_THREADS; i++)
		pthread_join(t[i], NULL);
	windows = (shadow__now_ns() - t0) / SHADOW_LOG_RATELIMIT_INTERVAL_NS + 2;

	/* Every line arrived whole (the capture keeps the first CAP_LINES). */
	for (int i = 0; i < SHADOW_MIN(cap.n, CAP_LINES); i++) {
		if (strncmp(cap.line[i], "shadow: warn: rl ", 17) == 0)
			n_rl++;
		else if (strncmp(cap.line[i], "shadow: error: thread ", 22) != 0)
			fail_msg("unexpected line '%s'", cap.line[i]);
	}
	assert_true(n_rl >= 1);
	/* All plain lines, and the rate-limited ones within the budget of the elapsed windows. */
	assert_true(cap.n > N_THREADS * N_PER_THREAD);
	assert_true((uint64_t)(cap.n - N_THREADS * N_PER_THREAD) <=
		    windows * SHADOW_LOG_RATELIMIT_BURST);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_default_level, setup, teardown),
		cmocka_unit_test_setup_teardown(test_handler_receives_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
		cmocka_unit_test_setup_teardown(test_env_parsing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncation_and_newline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errno_preserved, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stderr_default, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ratelimit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ratelimit_note_survives_truncation, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
