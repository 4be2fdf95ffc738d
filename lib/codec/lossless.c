/*
 * lossless.c - none, raw DEFLATE (libdeflate) and zstd behind one interface; see lossless.h.
 *
 * The libraries are used as they are: libdeflate and zstd's one-shot APIs decode straight
 * into the caller's buffer with no intermediate copy, so hand-written decoders would buy
 * nothing here.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "codec/lossless.h"
#include "core/log.h"

struct shadow__lossless_ctx {
	/* Compressors are per level and created on first use (the save path, not the hot path). */
	struct libdeflate_compressor *deflate_c[SHADOW_DEFLATE_LEVEL_MAX + 1];
	struct libdeflate_decompressor *deflate_d;
	ZSTD_CCtx *zstd_c;
	ZSTD_DCtx *zstd_d;
};

int shadow__lossless_ctx_create(struct shadow__lossless_ctx **ctx_ret)
{
	struct shadow__lossless_ctx *ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL)
		return -ENOMEM;
	ctx->deflate_d = libdeflate_alloc_decompressor();
	ctx->zstd_c = ZSTD_createCCtx();
	ctx->zstd_d = ZSTD_createDCtx();
	if (ctx->deflate_d == NULL || ctx->zstd_c == NULL || ctx->zstd_d == NULL)
		goto fail;
	if (ZSTD_isError(ZSTD_DCtx_setParameter(ctx->zstd_d, ZSTD_d_windowLogMax,
						SHADOW_ZSTD_WINDOW_LOG_MAX)))
		goto fail;
	*ctx_ret = ctx;
	return 0;
fail:
	shadow__lossless_ctx_free(ctx);
	return -ENOMEM;
}

void shadow__lossless_ctx_free(struct shadow__lossless_ctx *ctx)
{
	if (ctx == NULL)
		return;
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(ctx->deflate_c); i++)
		libdeflate_free_compressor(ctx->deflate_c[i]);
	libdeflate_free_decompressor(ctx->deflate_d);
	ZSTD_freeCCtx(ctx->zstd_c);
	ZSTD_freeDCtx(ctx->zstd_d);
	free(ctx);
}

bool shadow__lossless_level_ok(enum shadow__lossless codec, int level)
{
	switch (codec) {
	case SHADOW_LOSSLESS_NONE:
		return true;
	case SHADOW_LOSSLESS_DEFLATE:
		return level >= 1 && level <= SHADOW_DEFLATE_LEVEL_MAX;
	case SHADOW_LOSSLESS_ZSTD:
		return level >= 1 && level <= SHADOW_ZSTD_LEVEL_MAX;
	}
	return false;
}

static struct libdeflate_compressor *deflate_compressor(struct shadow__lossless_ctx *ctx,
							int level)
{
	if (ctx->deflate_c[level] == NULL)
		ctx->deflate_c[level] = libdeflate_alloc_compressor(level);
	return ctx->deflate_c[level];
}

size_t shadow__lossless_bound(struct shadow__lossless_ctx *ctx, enum shadow__lossless codec,
			      size_t src_nbytes)
{
	switch (codec) {
	case SHADOW_LOSSLESS_NONE:
		return src_nbytes;
	case SHADOW_LOSSLESS_DEFLATE:
		/* NULL compressor: libdeflate's bound valid for every level. */
		return libdeflate_deflate_compress_bound(NULL, src_nbytes);
	case SHADOW_LOSSLESS_ZSTD:
		return ZSTD_compressBound(src_nbytes);
	}
	(void)ctx;
	return 0;
}

int shadow__lossless_compress(struct shadow__lossless_ctx *ctx, enum shadow__lossless codec,
			      int level, const void *src, size_t src_nbytes, void *dst,
			      size_t dst_cap, size_t *dst_nbytes_ret)
{
	if (!shadow__lossless_level_ok(codec, level))
		return -EINVAL;
	switch (codec) {
	case SHADOW_LOSSLESS_NONE:
		if (dst_cap < src_nbytes)
			return -ENOBUFS;
		memcpy(dst, src, src_nbytes);
		*dst_nbytes_ret = src_nbytes;
		return 0;
	case SHADOW_LOSSLESS_DEFLATE: {
		struct libdeflate_compressor *c = deflate_compressor(ctx, level);
		if (c == NULL)
			return -ENOMEM;
		size_t n = libdeflate_deflate_compress(c, src, src_nbytes, dst, dst_cap);
		if (n == 0)
			return -ENOBUFS;
		*dst_nbytes_ret = n;
		return 0;
	}
	case SHADOW_LOSSLESS_ZSTD: {
		size_t n = ZSTD_compressCCtx(ctx->zstd_c, dst, dst_cap, src, src_nbytes, level);
		if (ZSTD_isError(n)) {
			if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall)
				return -ENOBUFS;
			SHADOW_LOGE("zstd compress: %s", ZSTD_getErrorName(n));
			return SHADOW_ECODEC;
		}
		*dst_nbytes_ret = n;
		return 0;
	}
	}
	return -EINVAL;
}

int shadow__lossless_decompress(struct shadow__lossless_ctx *ctx, enum shadow__lossless codec,
				const void *src, size_t src_nbytes, void *dst, size_t dst_nbytes)
{
	switch (codec) {
	case SHADOW_LOSSLESS_NONE:
		if (src_nbytes != dst_nbytes)
			return SHADOW_ECORRUPT;
		memcpy(dst, src, dst_nbytes);
		return 0;
	case SHADOW_LOSSLESS_DEFLATE: {
		/* Passing NULL for actual_out: anything but exactly dst_nbytes is SHORT_OUTPUT. */
		enum libdeflate_result r = libdeflate_deflate_decompress(ctx->deflate_d, src,
									 src_nbytes, dst,
									 dst_nbytes, NULL);
		return r == LIBDEFLATE_SUCCESS ? 0 : SHADOW_ECORRUPT;
	}
	case SHADOW_LOSSLESS_ZSTD: {
		size_t n = ZSTD_decompressDCtx(ctx->zstd_d, dst, dst_nbytes, src, src_nbytes);
		return !ZSTD_isError(n) && n == dst_nbytes ? 0 : SHADOW_ECORRUPT;
	}
	}
	return -EINVAL;
}
