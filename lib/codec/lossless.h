/*
 * lossless.h - the lossless (entropy) stage of a frame: none, raw DEFLATE, or zstd.
 *
 * DESIGN
 * One context per thread holds the library state each codec needs (libdeflate compressors and
 * a decompressor, zstd compression and decompression contexts), created once when the thread
 * starts, so that compressing or decompressing a frame allocates nothing. A context must not
 * be used by two threads at once; different contexts are independent.
 *
 * Decompression writes exactly `dst_nbytes` bytes or fails: a frame whose payload does not
 * decode to the size its container records is corrupt. The input is untrusted; the libraries
 * bound their reads by the input size and their writes by the output size. zstd's window is
 * capped (SHADOW_ZSTD_WINDOW_LOG_MAX) so a hostile frame cannot make it allocate.
 *
 * DEFLATE is raw (RFC 1951, no zlib or gzip wrapper) with libdeflate; its window is 32 KiB by
 * definition, which the BlueField-3 and Blackwell hardware decompressors accept.
 */
#ifndef SHADOW_CODEC_LOSSLESS_H
#define SHADOW_CODEC_LOSSLESS_H

#include <stddef.h>
#include <stdint.h>

#include "core/common.h"

/* Codec ids as stored in the container (docs/format.md). */
enum shadow__lossless {
	SHADOW_LOSSLESS_NONE = 0,
	SHADOW_LOSSLESS_DEFLATE = 1,
	SHADOW_LOSSLESS_ZSTD = 2,
};

#define SHADOW_DEFLATE_LEVEL_MAX 12
#define SHADOW_ZSTD_LEVEL_MAX 19
#define SHADOW_ZSTD_WINDOW_LOG_MAX 24

struct shadow__lossless_ctx;

/* A context for one thread. Returns 0 or -ENOMEM. */
int shadow__lossless_ctx_create(struct shadow__lossless_ctx **ctx_ret) SHADOW_INTERNAL;
/* NULL is accepted. */
void shadow__lossless_ctx_free(struct shadow__lossless_ctx *ctx) SHADOW_INTERNAL;

/* Whether `level` is valid for `codec` (ignored for none). */
bool shadow__lossless_level_ok(enum shadow__lossless codec, int level) SHADOW_INTERNAL;

/* Largest compressed size of `src_nbytes` bytes; 0 for an unknown codec. */
size_t shadow__lossless_bound(struct shadow__lossless_ctx *ctx, enum shadow__lossless codec,
			      size_t src_nbytes) SHADOW_INTERNAL;

/*
 * Compress src into dst (capacity dst_cap, at least shadow__lossless_bound()); *dst_nbytes_ret
 * gets the compressed size. Returns 0, -EINVAL (unknown codec or level), -ENOBUFS (dst too
 * small), -ENOMEM, or SHADOW_ECODEC (the library failed; logged).
 */
int shadow__lossless_compress(struct shadow__lossless_ctx *ctx, enum shadow__lossless codec,
			      int level, const void *src, size_t src_nbytes, void *dst,
			      size_t dst_cap, size_t *dst_nbytes_ret) SHADOW_INTERNAL;

/*
 * Decompress exactly dst_nbytes bytes from src. Returns 0, -EINVAL (unknown codec), or
 * SHADOW_ECORRUPT when the input is malformed or decodes to another size. Allocates nothing.
 */
int shadow__lossless_decompress(struct shadow__lossless_ctx *ctx, enum shadow__lossless codec,
				const void *src, size_t src_nbytes, void *dst,
				size_t dst_nbytes) SHADOW_INTERNAL;

#endif /* SHADOW_CODEC_LOSSLESS_H */
