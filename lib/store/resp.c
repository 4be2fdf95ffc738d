/* resp.c - RESP2 line and tree parsing, command encoding pieces and the cluster key slot. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store/resp.h"

#define RESP_N_MAX (INT64_C(1) << 62)

/* Parse a decimal integer (optional '-') spanning exactly s[0, n). */
static int parse_i64(const char *s, size_t n, int64_t *v_ret)
{
	bool neg = false;
	uint64_t v = 0;

	if (n > 0 && s[0] == '-') {
		neg = true;
		s++;
		n--;
	}
	if (n == 0 || n > 19)
		return SHADOW_EPROTO;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return SHADOW_EPROTO;
		v = v * 10 + (uint64_t)(s[i] - '0'); /* 19 digits cannot overflow uint64 */
	}
	if (v > (uint64_t)INT64_MAX)
		return SHADOW_EPROTO;
	*v_ret = neg ? -(int64_t)v : (int64_t)v;
	return 0;
}

int shadow__resp_parse_line(const void *buf, size_t avail, struct shadow__resp_line *line_ret)
{
	const char *b = buf;
	size_t lim = SHADOW_MIN(avail, (size_t)SHADOW__RESP_LINE_MAX);
	const char *cr;

	if (avail == 0)
		return -EAGAIN;
	cr = memchr(b, '\r', lim);
	if (cr == NULL) {
		if (memchr(b, '\n', lim) != NULL || avail >= SHADOW__RESP_LINE_MAX)
			return SHADOW_EPROTO;
		return -EAGAIN;
	}
	size_t body = (size_t)(cr - b);
	if (body + 1 >= avail)
		return -EAGAIN; /* the LF has not arrived */
	if (cr[1] != '\n' || memchr(b, '\n', body) != NULL || body == 0)
		return SHADOW_EPROTO;

	struct shadow__resp_line l = { .type = b[0], .line_nbytes = body + 2 };
	switch (b[0]) {
	case SHADOW__RESP_SIMPLE:
	case SHADOW__RESP_ERROR:
		l.text = b + 1;
		l.text_nbytes = body - 1;
		break;
	case SHADOW__RESP_INT:
		if (parse_i64(b + 1, body - 1, &l.n) < 0)
			return SHADOW_EPROTO;
		break;
	case SHADOW__RESP_BULK:
	case SHADOW__RESP_ARRAY:
		if (parse_i64(b + 1, body - 1, &l.n) < 0 || l.n < -1 || l.n > RESP_N_MAX)
			return SHADOW_EPROTO;
		break;
	default:
		return SHADOW_EPROTO;
	}
	*line_ret = l;
	return 0;
}

/*
 * Tree parsing runs twice over the reply: a first pass checks it is complete and well formed
 * and counts its nodes (no allocation for an incomplete reply, which is the common case while
 * bytes arrive); the second fills one block of nodes. Both passes are one recursive walk.
 */
struct tree_ctx {
	const char *buf;
	size_t avail;
	size_t pos;
	uint64_t nodes;       /* counted (pass 1) or handed out (pass 2) */
	struct shadow__resp_node *pool; /* NULL in pass 1 */
};

static int tree_walk(struct tree_ctx *c, struct shadow__resp_node *out, unsigned depth)
{
	struct shadow__resp_line l;
	int rc;

	if (depth > SHADOW__RESP_DEPTH_MAX)
		return SHADOW_EPROTO;
	rc = shadow__resp_parse_line(c->buf + c->pos, c->avail - c->pos, &l);
	if (rc < 0)
		return rc;
	c->pos += l.line_nbytes;
	if (out != NULL) {
		out->type = l.type;
		out->n = l.n;
		out->str = l.text;
		out->str_nbytes = l.text_nbytes;
		out->elems = NULL;
	}
	if (l.type == SHADOW__RESP_BULK && l.n >= 0) {
		uint64_t need = (uint64_t)l.n + 2;
		if (c->avail - c->pos < need)
			return -EAGAIN;
		if (c->buf[c->pos + (size_t)l.n] != '\r' || c->buf[c->pos + (size_t)l.n + 1] != '\n')
			return SHADOW_EPROTO;
		if (out != NULL) {
			out->str = c->buf + c->pos;
			out->str_nbytes = (size_t)l.n;
		}
		c->pos += (size_t)need;
	} else if (l.type == SHADOW__RESP_ARRAY && l.n > 0) {
		/* Every element takes at least 3 bytes (a line has a type byte and a CRLF), so a
		 * count beyond a third of the bytes present cannot be complete yet: wait without
		 * allocating. Counts no buffer could hold are refused. */
		if ((uint64_t)l.n > SHADOW__RESP_ELEMS_MAX || c->nodes + (uint64_t)l.n >
		    SHADOW__RESP_ELEMS_MAX)
			return SHADOW_EPROTO;
		if ((uint64_t)l.n * 3 > c->avail - c->pos)
			return -EAGAIN;
		struct shadow__resp_node *elems = NULL;
		if (c->pool != NULL) {
			elems = c->pool + c->nodes;
			out->elems = elems;
		}
		c->nodes += (uint64_t)l.n;
		for (int64_t i = 0; i < l.n; i++) {
			rc = tree_walk(c, elems != NULL ? &elems[i] : NULL, depth + 1);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

int64_t shadow__resp_parse_tree(const void *buf, size_t avail, struct shadow__resp_node **tree_ret)
{
	struct tree_ctx c = { .buf = buf, .avail = avail, .nodes = 1 };
	int rc = tree_walk(&c, NULL, 0);

	if (rc < 0)
		return rc;
	struct shadow__resp_node *pool = calloc(c.nodes, sizeof(*pool));
	if (pool == NULL)
		return -ENOMEM;
	size_t len = c.pos;
	c = (struct tree_ctx){ .buf = buf, .avail = avail, .nodes = 1, .pool = pool };
	rc = tree_walk(&c, &pool[0], 0);
	SHADOW_ASSERT(rc == 0 && c.pos == len);
	(void)rc;
	*tree_ret = pool;
	return (int64_t)len;
}

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), the hash of Redis Cluster's key slots. */
static uint16_t crc16_xmodem(const uint8_t *p, size_t n)
{
	uint16_t crc = 0;

	for (size_t i = 0; i < n; i++) {
		crc ^= (uint16_t)(p[i] << 8);
		for (int b = 0; b < 8; b++)
			crc = (uint16_t)((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
	}
	return crc;
}

uint32_t shadow__resp_key_slot(const char *key, size_t key_nbytes)
{
	const char *open = memchr(key, '{', key_nbytes);

	/* A hash tag: the bytes between the first '{' and the next '}', if not empty. */
	if (open != NULL) {
		size_t from = (size_t)(open - key) + 1;
		const char *close = memchr(key + from, '}', key_nbytes - from);
		if (close != NULL && close > key + from)
			return crc16_xmodem((const uint8_t *)key + from, (size_t)(close - key) - from) &
			       (SHADOW__CLUSTER_SLOTS - 1);
	}
	return crc16_xmodem((const uint8_t *)key, key_nbytes) & (SHADOW__CLUSTER_SLOTS - 1);
}

size_t shadow__resp_put_len(char *dst, size_t cap, char c, uint64_t v)
{
	char tmp[24];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	if (cap < n + 3)
		return 0;
	dst[0] = c;
	for (size_t i = 0; i < n; i++)
		dst[1 + i] = tmp[n - 1 - i];
	dst[n + 1] = '\r';
	dst[n + 2] = '\n';
	return n + 3;
}

size_t shadow__resp_put_bulk(char *dst, size_t cap, const void *s, size_t s_nbytes)
{
	size_t h = shadow__resp_put_len(dst, cap, '$', s_nbytes);

	if (h == 0 || cap - h < s_nbytes + 2)
		return 0;
	memcpy(dst + h, s, s_nbytes);
	dst[h + s_nbytes] = '\r';
	dst[h + s_nbytes + 1] = '\n';
	return h + s_nbytes + 2;
}
