/*
 * watchdog.h - a per-test alarm for cmocka suites whose tests talk to other processes
 * (shadowd, linkem, redis-server): a test that hangs despite its own deadlines ends the whole
 * program with a message and exit status 1 instead of stalling CI until its timeout. Part of
 * shadow_testsupport (no cmocka dependency: the arm/disarm functions just have cmocka's
 * setup/teardown signature).
 *
 *	test_watchdog_init("test_shadowd", 120);              (in main, before the tests)
 *	cmocka_unit_test_setup_teardown(f, test_watchdog_arm, test_watchdog_disarm)
 *
 * Single-threaded use: arm and disarm run on the thread that runs the tests; the alarm's
 * handler only write()s its prepared message and _exit()s (async-signal-safe).
 */
#ifndef SHADOW_TESTS_SUPPORT_WATCHDOG_H
#define SHADOW_TESTS_SUPPORT_WATCHDOG_H

/* Name the program in the message and set the per-test limit (seconds, at least 1). */
void test_watchdog_init(const char *prog, unsigned seconds);

/* Start the limit for one test (SIGALRM); always 0. */
int test_watchdog_arm(void **state);

/* Stop it; always 0. */
int test_watchdog_disarm(void **state);

#endif /* SHADOW_TESTS_SUPPORT_WATCHDOG_H */
