/*
 * resp.c - RESP encoding and scanning for the test-support code (resp.h).
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "support/resp.h"

#define RESP_DEPTH_MAX 16

size_t shadow_test_resp_encode(char *out, size_t out_nbytes, int argc, const char *const *argv,
			       const size_t *lens)
{
	char head[32];
	size_t n = 0;
	int h;

	h = snprintf(head, sizeof(head), "*%d\r\n", argc);
	if (n + (size_t)h <= out_nbytes)
		memcpy(out + n, head, (size_t)h);
	n += (size_t)h;
	for (int i = 0; i < argc; i++) {
		size_t len = lens != NULL ? lens[i] : strlen(argv[i]);

		h = snprintf(head, sizeof(head), "$%zu\r\n", len);
		if (n + (size_t)h + len + 2 <= out_nbytes) {
			memcpy(out + n, head, (size_t)h);
			memcpy(out + n + (size_t)h, argv[i], len);
			memcpy(out + n + (size_t)h + len, "\r\n", 2);
		}
		n += (size_t)h + len + 2;
	}
	return n;
}

/* End of the line starting at buf[pos] (index of its '\r'), or -1 if there is no CRLF yet. */
static ssize_t line_end(const char *buf, size_t nbytes, size_t pos)
{
	for (size_t i = pos; i + 1 < nbytes; i++) {
		if (buf[i] == '\r')
			return buf[i + 1] == '\n' ? (ssize_t)i : -2;
	}
	return -1;
}

/* A signed decimal in buf[pos, end); false if it is not one (or does not fit). */
static bool parse_int(const char *buf, size_t pos, size_t end, long long *v)
{
	bool neg = false;
	long long x = 0;

	if (pos < end && buf[pos] == '-') {
		neg = true;
		pos++;
	}
	if (pos >= end)
		return false;
	for (; pos < end; pos++) {
		if (!isdigit((unsigned char)buf[pos]) || x > (INT64_MAX - 9) / 10)
			return false;
		x = x * 10 + (buf[pos] - '0');
	}
	*v = neg ? -x : x;
	return true;
}

/* Scan one value at buf[pos]; returns its end (> pos), 0 if incomplete, -1 if malformed. */
static ssize_t scan_at(const char *buf, size_t nbytes, size_t pos, int depth)
{
	ssize_t e;
	long long n;

	if (depth > RESP_DEPTH_MAX)
		return -1;
	if (pos >= nbytes)
		return 0;
	e = line_end(buf, nbytes, pos + 1);
	if (e == -2)
		return -1;
	if (e < 0)
		return 0;
	size_t after = (size_t)e + 2;
	switch (buf[pos]) {
	case '+': case '-': case ':': case '_': case '#': case ',': case '(':
		return (ssize_t)after;
	case '$': case '!': case '=':
		if (!parse_int(buf, pos + 1, (size_t)e, &n) || n < -1)
			return -1;
		if (n == -1)
			return (ssize_t)after;
		if ((unsigned long long)n > SIZE_MAX - after - 2)
			return -1;
		if (after + (size_t)n + 2 > nbytes)
			return 0;
		if (buf[after + n] != '\r' || buf[after + n + 1] != '\n')
			return -1;
		return (ssize_t)(after + (size_t)n + 2);
	case '*': case '~': case '>': case '%': case '|':
		if (!parse_int(buf, pos + 1, (size_t)e, &n) || n < -1 || n > (1LL << 32))
			return -1;
		if (buf[pos] == '%' || buf[pos] == '|')
			n *= 2;
		for (long long i = 0; i < n; i++) {
			ssize_t r = scan_at(buf, nbytes, after, depth + 1);
			if (r <= 0)
				return r;
			after = (size_t)r;
		}
		return (ssize_t)after;
	default:
		return -1;
	}
}

ssize_t shadow_test_resp_scan(const char *buf, size_t nbytes)
{
	return scan_at(buf, nbytes, 0, 0);
}

static ssize_t parse_inline(const char *buf, size_t nbytes, const char **argv, size_t *lens,
			    int max_args, int *argc_ret)
{
	const char *nl = memchr(buf, '\n', nbytes);
	size_t end, i = 0;
	int argc = 0;

	if (nl == NULL)
		return 0;
	end = (size_t)(nl - buf);
	if (end > 0 && buf[end - 1] == '\r')
		end--;
	while (i < end) {
		while (i < end && buf[i] == ' ')
			i++;
		if (i == end)
			break;
		size_t start = i;
		while (i < end && buf[i] != ' ')
			i++;
		if (argc == max_args)
			return -1;
		argv[argc] = buf + start;
		lens[argc] = i - start;
		argc++;
	}
	*argc_ret = argc;
	return nl - buf + 1;
}

ssize_t shadow_test_resp_parse_command(const char *buf, size_t nbytes, const char **argv,
				       size_t *lens, int max_args, int *argc_ret)
{
	ssize_t e;
	long long n;

	if (nbytes == 0)
		return 0;
	if (buf[0] != '*')
		return parse_inline(buf, nbytes, argv, lens, max_args, argc_ret);
	e = line_end(buf, nbytes, 1);
	if (e == -2)
		return -1;
	if (e < 0)
		return 0;
	if (!parse_int(buf, 1, (size_t)e, &n) || n < 1 || n > max_args)
		return -1;
	size_t pos = (size_t)e + 2;
	for (long long i = 0; i < n; i++) {
		long long len;

		if (pos >= nbytes)
			return 0;
		if (buf[pos] != '$')
			return -1;
		e = line_end(buf, nbytes, pos + 1);
		if (e == -2)
			return -1;
		if (e < 0)
			return 0;
		if (!parse_int(buf, pos + 1, (size_t)e, &len) || len < 0 ||
		    (unsigned long long)len > SIZE_MAX / 2)
			return -1;
		pos = (size_t)e + 2;
		if (pos + (size_t)len + 2 > nbytes)
			return 0;
		if (buf[pos + len] != '\r' || buf[pos + len + 1] != '\n')
			return -1;
		argv[i] = buf + pos;
		lens[i] = (size_t)len;
		pos += (size_t)len + 2;
	}
	*argc_ret = (int)n;
	return (ssize_t)pos;
}
