/*
 * fuzz/resp - Redis replies are untrusted network input: parse arbitrary bytes as a stream of
 * reply lines and as one reply tree, and check that neither reads past the input, that every
 * consumed length is within it, and that every parsed string lies inside it.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_tree(const struct shadow__resp_node *n, const uint8_t *buf, size_t len,
		       unsigned depth)
{
	if (depth > SHADOW__RESP_DEPTH_MAX)
		abort();
	if (n->str != NULL && ((const uint8_t *)n->str < buf ||
			       (const uint8_t *)n->str + n->str_nbytes > buf + len))
		abort();
	if (n->type == SHADOW__RESP_ARRAY) {
		for (int64_t i = 0; i < n->n; i++)
			check_tree(&n->elems[i], buf, len, depth + 1);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A copy of exactly `size` bytes, so ASan sees any read past the end. */
	uint8_t *buf = malloc(size ? size : 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);

	size_t pos = 0;
	while (pos < size) {
		struct shadow__resp_line l;
		int rc = shadow__resp_parse_line(buf + pos, size - pos, &l);
		if (rc != 0) {
			if (rc != -EAGAIN && rc != SHADOW_EPROTO)
				abort();
			break;
		}
		if (l.line_nbytes == 0 || l.line_nbytes > size - pos)
			abort();
		pos += l.line_nbytes;
	}

	struct shadow__resp_node *tree = NULL;
	int64_t n = shadow__resp_parse_tree(buf, size, &tree);
	if (n > 0) {
		if ((uint64_t)n > size)
			abort();
		check_tree(tree, buf, size, 0);
		free(tree);
	} else if (n != -EAGAIN && n != SHADOW_EPROTO && n != -ENOMEM) {
		abort();
	}
	(void)shadow__resp_key_slot((const char *)buf, size);
	free(buf);
	return 0;
}
