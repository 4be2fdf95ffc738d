/* watchdog.c - the per-test alarm (watchdog.h). */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "support/watchdog.h"

static char wd_msg[160] = "test: a test hung: aborting\n";
static size_t wd_len = sizeof("test: a test hung: aborting\n") - 1;
static unsigned wd_seconds = 60;

static void on_alarm(int sig)
{
	(void)sig;
	ssize_t w = write(2, wd_msg, wd_len);
	(void)w;
	_exit(1);
}

void test_watchdog_init(const char *prog, unsigned seconds)
{
	int n = snprintf(wd_msg, sizeof(wd_msg), "%s: a test hung (over %u s): aborting\n", prog,
			 seconds);

	wd_len = n < 0 ? 0 : (size_t)n < sizeof(wd_msg) ? (size_t)n : sizeof(wd_msg) - 1;
	wd_seconds = seconds > 0 ? seconds : 1;
}

int test_watchdog_arm(void **state)
{
	(void)state;
	signal(SIGALRM, on_alarm);
	alarm(wd_seconds);
	return 0;
}

int test_watchdog_disarm(void **state)
{
	(void)state;
	alarm(0);
	return 0;
}
