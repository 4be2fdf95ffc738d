/*
 * resp.h - the few pieces of RESP (the Redis protocol) that the test-support code needs on
 * both sides of a socket: encode a command, find where a reply ends, split a command into its
 * arguments. Independent of libshadow's own client on purpose, so that a bug there cannot
 * hide behind the same bug here.
 *
 * Everything here is pure (no I/O, no allocation) and thread-safe.
 */
#ifndef SHADOW_TEST_RESP_H
#define SHADOW_TEST_RESP_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Encode the command argv[0..argc) as a RESP array of bulk strings into out[0..out_nbytes).
 * lens may be NULL (then every argument is a C string); else lens[i] is argv[i]'s length.
 * Returns the encoded length, which may exceed out_nbytes: then nothing useful was written
 * and the caller retries with a buffer of that size.
 */
size_t shadow_test_resp_encode(char *out, size_t out_nbytes, int argc, const char *const *argv,
			       const size_t *lens);

/*
 * Length of the first complete RESP value in buf[0..nbytes): > 0 when complete, 0 when more
 * bytes are needed, -1 when the bytes are not RESP. Knows RESP2 and the RESP3 types; nesting
 * deeper than 16 counts as malformed.
 */
ssize_t shadow_test_resp_scan(const char *buf, size_t nbytes);

/* The most arguments shadow_test_resp_parse_command() splits out; more is malformed. */
#define SHADOW_TEST_RESP_ARGS_MAX 64

/*
 * Split the first command in buf[0..nbytes) (an array of bulk strings, or an inline command:
 * words up to CRLF) into argv/lens, which point into buf. At most max_args arguments.
 * Returns the bytes the command takes (> 0), 0 when incomplete, -1 when malformed or with
 * more than max_args arguments. *argc_ret may be 0 for an empty inline line.
 */
ssize_t shadow_test_resp_parse_command(const char *buf, size_t nbytes, const char **argv,
				       size_t *lens, int max_args, int *argc_ret);

#endif /* SHADOW_TEST_RESP_H */
