/*
 * options.c - codec options: defaults, scheme names ("bits4-g64+zstd3") and their inverse.
 *
 * Grammar (docs/format.md, "Scheme names"):
 *   scheme  = quant "+" codec
 *   quant   = ("bf16" | "bf16planes" | "int8" | "bits" 2..7 | "ecsq" | "pca") { suffix }
 *   suffix  = "-g" N      key scale group, tokens
 *           | "-c" N      value scale group, channels
 *           | "-k" T "x" C | "-v" T "x" C     key / value scale group, tokens x channels
 *           | "-s" X      std rule, step = X * std (required for ecsq and pca)
 * pca takes only -s: its groups are fixed (one step per head per frame).
 *           | "-L" layer "=" kbits "/" vbits     layer-group precision, from that layer on
 *   codec   = "none" | "deflate" [level] | "zstd" level
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/lossless.h"

void shadow_codec_options_default(struct shadow_codec_options *opts_ret)
{
	memset(opts_ret, 0, sizeof(*opts_ret));
	opts_ret->sizeof_options = sizeof(*opts_ret);
	opts_ret->quant = SHADOW_QUANT_NONE;
	opts_ret->codec = SHADOW_CODEC_NONE;
	opts_ret->k_bits = 8;
	opts_ret->v_bits = 8;
	opts_ret->scale_rule = SHADOW_SCALE_MINMAX;
	opts_ret->step_mul = 1.0f;
}

int shadow__codec_options_load(const struct shadow_codec_options *in,
			       struct shadow_codec_options *out)
{
	shadow_codec_options_default(out);
	if (in == NULL || in->sizeof_options < offsetof(struct shadow_codec_options, k_bits))
		return -EINVAL;
	size_t n = SHADOW_MIN(in->sizeof_options, sizeof(*out));
	memcpy(out, in, n);
	out->sizeof_options = sizeof(*out);

	if (out->quant > SHADOW_QUANT_PCA || out->codec > SHADOW_CODEC_ZSTD)
		return -EINVAL;
	if (out->quant == SHADOW_QUANT_PCA &&
	    (out->scale_rule != SHADOW_SCALE_STD || !(out->step_mul > 0.0f && out->step_mul < 1e6f) ||
	     out->k_group_tokens != 0 || out->k_group_channels != 0 || out->v_group_tokens != 0 ||
	     out->v_group_channels != 0 || out->n_layer_bits != 0))
		return -EINVAL;
	if (!shadow__lossless_level_ok((enum shadow__lossless)out->codec, out->level))
		return -EINVAL;
	if (out->quant == SHADOW_QUANT_UNIFORM || out->quant == SHADOW_QUANT_ECSQ) {
		if (out->scale_rule > SHADOW_SCALE_STD)
			return -EINVAL;
		if (out->quant == SHADOW_QUANT_ECSQ && out->scale_rule != SHADOW_SCALE_STD)
			return -EINVAL;
		if (out->scale_rule == SHADOW_SCALE_STD && !(out->step_mul > 0.0f && out->step_mul < 1e6f))
			return -EINVAL;
		if (out->k_group_tokens > 65535 || out->k_group_channels > 65535 ||
		    out->v_group_tokens > 65535 || out->v_group_channels > 65535)
			return -EINVAL;
	}
	if (out->quant == SHADOW_QUANT_UNIFORM) {
		if (out->k_bits < 2 || out->k_bits > 8 || out->v_bits < 2 || out->v_bits > 8)
			return -EINVAL;
		if (out->n_layer_bits > SHADOW_MAX_LAYER_BITS)
			return -EINVAL;
		for (uint32_t i = 0; i < out->n_layer_bits; i++) {
			uint32_t kb = out->layer_bits[i].k_bits, vb = out->layer_bits[i].v_bits;
			if (kb < 2 || kb > 8 || vb < 2 || vb > 8)
				return -EINVAL;
			if (i > 0 && out->layer_bits[i].first_layer <= out->layer_bits[i - 1].first_layer)
				return -EINVAL;
		}
	}
	return 0;
}

void shadow__codec_layer_bits(const struct shadow_codec_options *o, uint32_t layer,
			      uint32_t *k_bits_ret, uint32_t *v_bits_ret)
{
	*k_bits_ret = o->k_bits;
	*v_bits_ret = o->v_bits;
	for (uint32_t i = 0; i < o->n_layer_bits && o->layer_bits[i].first_layer <= layer; i++) {
		*k_bits_ret = o->layer_bits[i].k_bits;
		*v_bits_ret = o->layer_bits[i].v_bits;
	}
}

/* Parse an unsigned decimal at *s into *v (max `max`), advancing *s. */
static bool parse_uint(const char **s, uint32_t max, uint32_t *v)
{
	char *end;
	if (**s < '0' || **s > '9')
		return false;
	unsigned long x = strtoul(*s, &end, 10);
	if (x > max)
		return false;
	*s = end;
	*v = (uint32_t)x;
	return true;
}

static int parse_quant(const char *s, const char *end, struct shadow_codec_options *o)
{
	static const struct {
		const char *name;
		uint32_t quant, bits;
	} bases[] = {
		{ "bf16planes", SHADOW_QUANT_PLANES, 16 }, { "bf16", SHADOW_QUANT_NONE, 16 },
		{ "int8", SHADOW_QUANT_UNIFORM, 8 },	   { "bits", SHADOW_QUANT_UNIFORM, 0 },
		{ "ecsq", SHADOW_QUANT_ECSQ, 16 }, { "pca", SHADOW_QUANT_PCA, 16 },
	};
	size_t i;
	for (i = 0; i < SHADOW_ARRAY_SIZE(bases); i++) {
		size_t n = strlen(bases[i].name);
		if ((size_t)(end - s) >= n && strncmp(s, bases[i].name, n) == 0) {
			s += n;
			break;
		}
	}
	if (i == SHADOW_ARRAY_SIZE(bases))
		return SHADOW_EUNKNOWN_NAME;
	o->quant = bases[i].quant;
	o->k_bits = o->v_bits = bases[i].bits == 16 ? 8 : bases[i].bits;
	if (bases[i].bits == 0) { /* bitsN */
		uint32_t b;
		if (!parse_uint(&s, 7, &b) || b < 2)
			return SHADOW_EUNKNOWN_NAME;
		o->k_bits = o->v_bits = b;
	}
	while (s < end) {
		/* Variant suffixes apply to uniform, ECSQ and PCA quantization only. */
		if (*s++ != '-' || s >= end || o->quant < SHADOW_QUANT_UNIFORM)
			return SHADOW_EUNKNOWN_NAME;
		char tag = *s++;
		uint32_t v, layer, kb, vb, gt, gc;
		switch (tag) {
		case 'k':
		case 'v':
			/* 0 keeps that dimension's default */
			if (!parse_uint(&s, 65535, &gt) || s >= end || *s++ != 'x' ||
			    !parse_uint(&s, 65535, &gc))
				return SHADOW_EUNKNOWN_NAME;
			if (tag == 'k') {
				o->k_group_tokens = gt;
				o->k_group_channels = gc;
			} else {
				o->v_group_tokens = gt;
				o->v_group_channels = gc;
			}
			break;
		case 'g':
			if (!parse_uint(&s, 65535, &v) || v == 0)
				return SHADOW_EUNKNOWN_NAME;
			o->k_group_tokens = v;
			break;
		case 'c':
			if (!parse_uint(&s, 65535, &v) || v == 0)
				return SHADOW_EUNKNOWN_NAME;
			o->v_group_channels = v;
			break;
		case 's': {
			char *e;
			float x = strtof(s, &e);
			if (e == s || e > end || !(x > 0.0f && x < 1e6f))
				return SHADOW_EUNKNOWN_NAME;
			s = e;
			o->scale_rule = SHADOW_SCALE_STD;
			o->step_mul = x;
			break;
		}
		case 'L':
			if (o->quant != SHADOW_QUANT_UNIFORM || o->n_layer_bits == SHADOW_MAX_LAYER_BITS ||
			    !parse_uint(&s, SHADOW_MAX_LAYERS - 1, &layer) || s >= end || *s++ != '=' ||
			    !parse_uint(&s, 8, &kb) || s >= end || *s++ != '/' || !parse_uint(&s, 8, &vb))
				return SHADOW_EUNKNOWN_NAME;
			o->layer_bits[o->n_layer_bits].first_layer = layer;
			o->layer_bits[o->n_layer_bits].k_bits = kb;
			o->layer_bits[o->n_layer_bits].v_bits = vb;
			o->n_layer_bits++;
			break;
		default:
			return SHADOW_EUNKNOWN_NAME;
		}
	}
	return s == end ? 0 : SHADOW_EUNKNOWN_NAME;
}

static int parse_codec(const char *s, struct shadow_codec_options *o)
{
	uint32_t level;
	if (strcmp(s, "none") == 0) {
		o->codec = SHADOW_CODEC_NONE;
		o->level = 0;
		return 0;
	}
	if (strncmp(s, "deflate", 7) == 0) {
		s += 7;
		o->codec = SHADOW_CODEC_DEFLATE;
		level = 6;
		if (*s != '\0' && !parse_uint(&s, SHADOW_DEFLATE_LEVEL_MAX, &level))
			return SHADOW_EUNKNOWN_NAME;
	} else if (strncmp(s, "zstd", 4) == 0) {
		s += 4;
		o->codec = SHADOW_CODEC_ZSTD;
		if (!parse_uint(&s, SHADOW_ZSTD_LEVEL_MAX, &level))
			return SHADOW_EUNKNOWN_NAME;
	} else {
		return SHADOW_EUNKNOWN_NAME;
	}
	if (*s != '\0' || level == 0)
		return SHADOW_EUNKNOWN_NAME;
	o->level = (int32_t)level;
	return 0;
}

int shadow_codec_options_parse(const char *scheme, struct shadow_codec_options *opts_ret)
{
	struct shadow_codec_options o, checked;
	if (scheme == NULL || opts_ret == NULL)
		return -EINVAL;
	const char *plus = strchr(scheme, '+');
	if (plus == NULL)
		return SHADOW_EUNKNOWN_NAME;
	shadow_codec_options_default(&o);
	int err = parse_quant(scheme, plus, &o);
	if (err == 0)
		err = parse_codec(plus + 1, &o);
	if (err == 0 && shadow__codec_options_load(&o, &checked) != 0)
		err = SHADOW_EUNKNOWN_NAME;
	if (err != 0)
		return err;
	*opts_ret = checked;
	return 0;
}

int shadow_codec_options_name(const struct shadow_codec_options *opts, char *buf,
			      size_t buf_nbytes)
{
	struct shadow_codec_options o;
	size_t len = 0;
	if (buf == NULL || shadow__codec_options_load(opts, &o) != 0)
		return -EINVAL;

#define NAME(...)                                                                      \
	do {                                                                           \
		int n_ = snprintf(buf + len, buf_nbytes > len ? buf_nbytes - len : 0,  \
				  __VA_ARGS__);                                        \
		if (n_ < 0)                                                            \
			return -EINVAL;                                                \
		len += (size_t)n_;                                                     \
	} while (0)

	switch (o.quant) {
	case SHADOW_QUANT_NONE:
		NAME("bf16");
		break;
	case SHADOW_QUANT_PLANES:
		NAME("bf16planes");
		break;
	default:
		/* The base names the key width; a different value width is a layer-0 override. */
		if (o.quant == SHADOW_QUANT_PCA)
			NAME("pca");
		else if (o.quant == SHADOW_QUANT_ECSQ)
			NAME("ecsq");
		else if (o.k_bits == 8)
			NAME("int8");
		else
			NAME("bits%u", o.k_bits);
		if (o.k_group_channels != 0) /* -g alone cannot say it */
			NAME("-k%ux%u", o.k_group_tokens, o.k_group_channels);
		else if (o.k_group_tokens != 0)
			NAME("-g%u", o.k_group_tokens);
		if (o.v_group_tokens != 0) /* -c alone cannot say it */
			NAME("-v%ux%u", o.v_group_tokens, o.v_group_channels);
		else if (o.v_group_channels != 0)
			NAME("-c%u", o.v_group_channels);
		if (o.scale_rule == SHADOW_SCALE_STD)
			NAME("-s%g", (double)o.step_mul);
		if (o.quant != SHADOW_QUANT_UNIFORM)
			break;
		if (o.v_bits != o.k_bits && (o.n_layer_bits == 0 || o.layer_bits[0].first_layer != 0))
			NAME("-L0=%u/%u", o.k_bits, o.v_bits);
		for (uint32_t i = 0; i < o.n_layer_bits; i++)
			NAME("-L%u=%u/%u", o.layer_bits[i].first_layer, o.layer_bits[i].k_bits,
			     o.layer_bits[i].v_bits);
		break;
	}
	if (o.codec == SHADOW_CODEC_NONE)
		NAME("+none");
	else
		NAME("+%s%d", o.codec == SHADOW_CODEC_DEFLATE ? "deflate" : "zstd", o.level);
#undef NAME
	if (len >= buf_nbytes)
		return -ENOBUFS;
	return (int)len;
}
