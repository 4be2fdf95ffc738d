/*
 * resp.h - RESP2 (the Redis protocol) parsing pieces, pure functions over buffers so they can
 * be tested and fuzzed alone: one reply line at a time for the data path (which streams bulk
 * payloads straight into the caller's memory and so never parses a bulk payload here), a
 * whole-reply tree for the control path (CLUSTER SHARDS / SLOTS), and the cluster key slot.
 *
 * Everything parsed here comes from the network: every length and count is checked.
 */
#ifndef SHADOW_STORE_RESP_H
#define SHADOW_STORE_RESP_H

#include <stddef.h>
#include <stdint.h>

#include "core/common.h"

/* Longest line ("+OK", "-ERR ...", "$123", ...) accepted, CRLF included. */
#define SHADOW__RESP_LINE_MAX 4096u
/* Control-path trees: nesting depth and total elements. */
#define SHADOW__RESP_DEPTH_MAX 8u
#define SHADOW__RESP_ELEMS_MAX (1u << 20)
#define SHADOW__CLUSTER_SLOTS 16384u

enum shadow__resp_type {
	SHADOW__RESP_SIMPLE = '+',
	SHADOW__RESP_ERROR = '-',
	SHADOW__RESP_INT = ':',
	SHADOW__RESP_BULK = '$',  /* n = payload length; -1 is a null bulk */
	SHADOW__RESP_ARRAY = '*', /* n = element count; -1 is a null array */
};

/* One parsed line. For simple strings and errors, text points into the caller's buffer. */
struct shadow__resp_line {
	int type;          /* enum shadow__resp_type */
	int64_t n;         /* integer value, bulk length or array count */
	const char *text;  /* SIMPLE, ERROR: the text after the type byte (not NUL-terminated) */
	size_t text_nbytes;
	size_t line_nbytes; /* bytes the line took, CRLF included */
};

/*
 * Parse one line at the start of buf[0, avail). Returns 0 (*line_ret filled), -EAGAIN when the
 * line is not complete yet, or SHADOW_EPROTO: an unknown type byte, a line longer than
 * SHADOW__RESP_LINE_MAX, a malformed or out-of-range integer (bulk lengths and array counts
 * must be -1 or >= 0, at most 2^62), a bare CR or LF.
 */
int shadow__resp_parse_line(const void *buf, size_t avail, struct shadow__resp_line *line_ret)
	SHADOW_INTERNAL;

/* A node of a parsed reply tree. */
struct shadow__resp_node {
	int type;                               /* enum shadow__resp_type */
	int64_t n;                              /* as in a line; for BULK the length (-1 null) */
	const char *str;                        /* SIMPLE, ERROR, BULK: bytes (not terminated) */
	size_t str_nbytes;
	const struct shadow__resp_node *elems;  /* ARRAY: n elements */
};

/*
 * Parse one complete reply at the start of buf[0, avail) into a tree allocated in one block
 * (*tree_ret; free() it). Strings point into buf, which must outlive the tree. Returns the
 * number of bytes the reply took (> 0), -EAGAIN if it is not complete yet, SHADOW_EPROTO (see
 * above, and nesting deeper than SHADOW__RESP_DEPTH_MAX or more than SHADOW__RESP_ELEMS_MAX
 * elements), or -ENOMEM.
 */
int64_t shadow__resp_parse_tree(const void *buf, size_t avail,
				struct shadow__resp_node **tree_ret) SHADOW_INTERNAL;

/* The cluster slot of a key: CRC16 (XMODEM) of the key, or of its {hash tag}, mod 16384. */
uint32_t shadow__resp_key_slot(const char *key, size_t key_nbytes) SHADOW_INTERNAL;

/*
 * Append "$<len>\r\n<bytes>\r\n" for `s` to dst; returns bytes written or 0 if cap is too
 * small. For command encoding.
 */
size_t shadow__resp_put_bulk(char *dst, size_t cap, const void *s, size_t s_nbytes)
	SHADOW_INTERNAL;

/* Append "<c><decimal v>\r\n" (c is '*' or '$'); returns bytes written or 0 if cap is short. */
size_t shadow__resp_put_len(char *dst, size_t cap, char c, uint64_t v) SHADOW_INTERNAL;

#endif /* SHADOW_STORE_RESP_H */
