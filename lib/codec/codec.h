/*
 * codec.h - internal: what the chunk encoder/decoder (chunk_codec.c) and the options code
 * (options.c) share.
 */
#ifndef SHADOW_CODEC_CODEC_H
#define SHADOW_CODEC_CODEC_H

#include "core/common.h"

/*
 * Copy caller options into *out: fields beyond in->sizeof_options take their defaults; then
 * check every field. Returns 0 or -EINVAL.
 */
int shadow__codec_options_load(const struct shadow_codec_options *in,
			       struct shadow_codec_options *out) SHADOW_INTERNAL;

/* The key and value bits of `layer` under layer-group precision. */
void shadow__codec_layer_bits(const struct shadow_codec_options *o, uint32_t layer,
			      uint32_t *k_bits_ret, uint32_t *v_bits_ret) SHADOW_INTERNAL;

#endif /* SHADOW_CODEC_CODEC_H */
