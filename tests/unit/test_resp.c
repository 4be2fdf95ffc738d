/*
 * test_resp.c - RESP2 line and tree parsing (lib/store/resp.c) on well-formed, incomplete and
 * hostile input, command encoding, and cluster key slots against values Redis documents.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store/resp.h"

static int parse(const char *s, struct shadow__resp_line *l)
{
	return shadow__resp_parse_line(s, strlen(s), l);
}

static void test_lines(void **state)
{
	struct shadow__resp_line l;

	(void)state;
	assert_int_equal(parse("+OK\r\n", &l), 0);
	assert_int_equal(l.type, '+');
	assert_int_equal(l.text_nbytes, 2);
	assert_memory_equal(l.text, "OK", 2);
	assert_int_equal(l.line_nbytes, 5);

	assert_int_equal(parse("-ERR wrong\r\n+tail", &l), 0);
	assert_int_equal(l.type, '-');
	assert_int_equal(l.line_nbytes, 12);

	assert_int_equal(parse(":-42\r\n", &l), 0);
	assert_int_equal(l.n, -42);
	assert_int_equal(parse("$-1\r\n", &l), 0);
	assert_int_equal(l.n, -1);
	assert_int_equal(parse("$0\r\n", &l), 0);
	assert_int_equal(l.n, 0);
	assert_int_equal(parse("*3\r\n", &l), 0);
	assert_int_equal(l.n, 3);
	assert_int_equal(parse(":9223372036854775807\r\n", &l), 0);
	assert_true(l.n == INT64_MAX);
}

static void test_incomplete_lines(void **state)
{
	struct shadow__resp_line l;
	const char *full = "$16777216\r\n";

	(void)state;
	/* Every proper prefix of a line is "need more", never an error or a result. */
	for (size_t n = 0; n < strlen(full); n++)
		assert_int_equal(shadow__resp_parse_line(full, n, &l), -EAGAIN);
	assert_int_equal(shadow__resp_parse_line(full, strlen(full), &l), 0);
	assert_int_equal(l.n, 16777216);
}

static void test_bad_lines(void **state)
{
	static const char *const bad[] = {
		"?what\r\n",           /* unknown type */
		"$-2\r\n",             /* lengths are -1 or >= 0 */
		"*-5\r\n",
		"$abc\r\n",
		"$\r\n",
		":\r\n",
		":12a\r\n",
		"$99999999999999999999\r\n", /* does not fit */
		"$4611686018427387905\r\n",  /* above 2^62 */
		":-\r\n",
		"+OK\rX",              /* CR without LF */
		"+O\nK\r\n",           /* bare LF */
		"\r\n",                /* empty line */
	};
	struct shadow__resp_line l;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(parse(bad[i], &l), SHADOW_EPROTO);

	/* A line that never ends is refused once it passes the limit, not waited for. */
	size_t n = SHADOW__RESP_LINE_MAX + 10;
	char *big = malloc(n);
	assert_non_null(big);
	big[0] = '+';
	memset(big + 1, 'x', n - 1);
	assert_int_equal(shadow__resp_parse_line(big, SHADOW__RESP_LINE_MAX - 1, &l), -EAGAIN);
	assert_int_equal(shadow__resp_parse_line(big, n, &l), SHADOW_EPROTO);
	free(big);
}

static void test_tree(void **state)
{
	const char *r = "*3\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$-1\r\n+extra";
	struct shadow__resp_node *t = NULL;

	(void)state;
	int64_t n = shadow__resp_parse_tree(r, strlen(r), &t);
	assert_int_equal(n, (int64_t)strlen(r) - (int64_t)strlen("+extra"));
	assert_non_null(t);
	assert_int_equal(t->type, '*');
	assert_int_equal(t->n, 3);
	assert_int_equal(t->elems[0].str_nbytes, 5);
	assert_memory_equal(t->elems[0].str, "slots", 5);
	assert_int_equal(t->elems[1].n, 2);
	assert_int_equal(t->elems[1].elems[1].n, 16383);
	assert_int_equal(t->elems[2].n, -1);
	free(t);

	/* Every prefix is incomplete. */
	for (size_t i = 0; i + strlen("+extra") < strlen(r); i++)
		assert_int_equal(shadow__resp_parse_tree(r, i, &t), -EAGAIN);
}

static void test_bad_trees(void **state)
{
	struct shadow__resp_node *t = NULL;

	(void)state;
	/* Bulk payload not followed by CRLF. */
	assert_int_equal(shadow__resp_parse_tree("$3\r\nabcde", 9, &t), SHADOW_EPROTO);
	/* Nesting deeper than the limit. */
	char deep[64] = "";
	for (unsigned i = 0; i <= SHADOW__RESP_DEPTH_MAX + 1; i++)
		strcat(deep, "*1\r\n");
	strcat(deep, ":1\r\n");
	assert_int_equal(shadow__resp_parse_tree(deep, strlen(deep), &t), SHADOW_EPROTO);
	/* A count beyond the element limit is refused at once, without allocating. */
	assert_int_equal(shadow__resp_parse_tree("*4611686018427387904\r\n", 22, &t), SHADOW_EPROTO);
	/* A large but allowed count with few bytes behind it waits (no allocation). */
	assert_int_equal(shadow__resp_parse_tree("*1000\r\n:1\r\n", 11, &t), -EAGAIN);
}

static void test_key_slot(void **state)
{
	(void)state;
	/* 0x31C3 is the specification's CRC16 check value; the rest from `CLUSTER KEYSLOT`
	 * of redis-server 7.0. */
	assert_int_equal(shadow__resp_key_slot("123456789", 9), 0x31C3 & 16383);
	assert_int_equal(shadow__resp_key_slot("foo", 3), 12182);
	assert_int_equal(shadow__resp_key_slot("bar", 3), 5061);
	/* Hash tags: only the tag is hashed; an empty tag hashes the whole key. */
	assert_int_equal(shadow__resp_key_slot("{foo}.x", 7), 12182);
	assert_int_equal(shadow__resp_key_slot("a{foo}b{bar}", 12), 12182);
	assert_int_equal(shadow__resp_key_slot("{}foo", 5), 9500);
	assert_int_equal(shadow__resp_key_slot("{foo", 4), 13308); /* no closing brace */
}

static void test_encode(void **state)
{
	char buf[32];

	(void)state;
	assert_int_equal(shadow__resp_put_len(buf, sizeof(buf), '*', 3), 4);
	assert_memory_equal(buf, "*3\r\n", 4);
	assert_int_equal(shadow__resp_put_bulk(buf, sizeof(buf), "GET", 3), 9);
	assert_memory_equal(buf, "$3\r\nGET\r\n", 9);
	assert_int_equal(shadow__resp_put_bulk(buf, 8, "GET", 3), 0); /* too small */
	assert_int_equal(shadow__resp_put_len(buf, sizeof(buf), '$', UINT64_MAX), 23);
	assert_memory_equal(buf, "$18446744073709551615\r\n", 23);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_incomplete_lines),
		cmocka_unit_test(test_bad_lines),
		cmocka_unit_test(test_tree),
		cmocka_unit_test(test_bad_trees),
		cmocka_unit_test(test_key_slot),
		cmocka_unit_test(test_encode),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
