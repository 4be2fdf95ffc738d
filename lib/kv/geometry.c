/*
 * geometry.c - KV geometry: element types, the model presets, range checks, and the frame and
 * per-token sizes that every other subsystem derives its buffer sizes from.
 *
 * A geometry reaches the library from a client, a config file or a chunk header, so
 * shadow_geometry_validate() is the one place that decides what is in range; the size helpers
 * call it and return 0 for anything invalid, so a caller that forgot to validate gets an
 * obviously unusable size instead of a wrapped one.
 */
#include <errno.h>
#include <string.h>

#include "core/common.h"

/*
 * The presets. Shapes are the published model configs (num_hidden_layers,
 * num_key_value_heads, head_dim = hidden_size / num_attention_heads):
 *   Llama-3-8B      32 layers, 8 KV heads, 128   (hidden 4096, 32 query heads)
 *   Llama-3-70B     80 layers, 8 KV heads, 128   (hidden 8192, 64 query heads)
 *   Mistral-7B      32 layers, 8 KV heads, 128   (hidden 4096, 32 query heads)
 *   Qwen2.5-7B      28 layers, 4 KV heads, 128   (hidden 3584, 28 query heads)
 *   minillama-h128   6 layers, 2 KV heads, 128   (the model behind /shared/data/kv dumps)
 */
#define PRESET(n_layers_, n_kv_heads_, head_dim_)                                             \
	{ .n_layers = (n_layers_), .n_kv_heads = (n_kv_heads_), .head_dim = (head_dim_),      \
	  .dtype = SHADOW_DTYPE_BF16, .block_tokens = 16,                                    \
	  .chunk_tokens = SHADOW_DEFAULT_CHUNK_TOKENS }

static const char *const shadow_preset_names[] = {
	"llama3-8b", "llama3-70b", "mistral-7b", "qwen2.5-7b", "minillama-h128",
};

/* Same order as shadow_preset_names. */
static const struct shadow_kv_geometry shadow_presets[] = {
	PRESET(32, 8, 128),
	PRESET(80, 8, 128),
	PRESET(32, 8, 128),
	PRESET(28, 4, 128),
	PRESET(6, 2, 128),
};

SHADOW_STATIC_ASSERT(SHADOW_ARRAY_SIZE(shadow_preset_names) == SHADOW_ARRAY_SIZE(shadow_presets),
		     "every preset needs a name");

size_t shadow_dtype_nbytes(uint32_t dtype)
{
	switch (dtype) {
	case SHADOW_DTYPE_BF16:
	case SHADOW_DTYPE_FP16:
		return 2;
	case SHADOW_DTYPE_FP32:
		return 4;
	case SHADOW_DTYPE_FP8_E4M3:
		return 1;
	default:
		return 0;
	}
}

const char *shadow_dtype_name(uint32_t dtype)
{
	switch (dtype) {
	case SHADOW_DTYPE_BF16:
		return "bf16";
	case SHADOW_DTYPE_FP16:
		return "fp16";
	case SHADOW_DTYPE_FP32:
		return "fp32";
	case SHADOW_DTYPE_FP8_E4M3:
		return "fp8_e4m3";
	default:
		return NULL;
	}
}

int shadow_geometry_preset(const char *name, struct shadow_kv_geometry *geom_ret)
{
	if (name == NULL || geom_ret == NULL)
		return -EINVAL;
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(shadow_presets); i++) {
		if (strcmp(name, shadow_preset_names[i]) == 0) {
			*geom_ret = shadow_presets[i];
			return 0;
		}
	}
	return SHADOW_EUNKNOWN_NAME;
}

void shadow_geometry_preset_names(const char *const **names_ret, size_t *count_ret)
{
	*names_ret = shadow_preset_names;
	*count_ret = SHADOW_ARRAY_SIZE(shadow_preset_names);
}

int shadow_geometry_validate(const struct shadow_kv_geometry *geom)
{
	if (geom == NULL)
		return SHADOW_EGEOMETRY;
	if (geom->n_layers < 1 || geom->n_layers > SHADOW_MAX_LAYERS)
		return SHADOW_EGEOMETRY;
	if (geom->n_kv_heads < 1 || geom->n_kv_heads > SHADOW_MAX_KV_HEADS)
		return SHADOW_EGEOMETRY;
	if (geom->head_dim < 1 || geom->head_dim > SHADOW_MAX_HEAD_DIM)
		return SHADOW_EGEOMETRY;
	if (shadow_dtype_nbytes(geom->dtype) == 0)
		return SHADOW_EGEOMETRY;
	if (geom->block_tokens < 1 || geom->block_tokens > SHADOW_MAX_BLOCK_TOKENS)
		return SHADOW_EGEOMETRY;
	if (geom->chunk_tokens < 1 || geom->chunk_tokens > SHADOW_MAX_CHUNK_TOKENS)
		return SHADOW_EGEOMETRY;
	if (geom->chunk_tokens % geom->block_tokens != 0)
		return SHADOW_EGEOMETRY;
	return 0;
}

/*
 * The limits bound a frame by 2^16 * 2^8 * 2^10 * 4 = 2^36 bytes and a token by
 * 2 * 2^8 * 2^8 * 2^10 * 4 = 2^29 bytes, so these products cannot overflow once the geometry is
 * valid; the checked multiplies keep that true if a limit is ever raised.
 */
uint64_t shadow_geometry_frame_nbytes(const struct shadow_kv_geometry *geom)
{
	uint64_t n;

	if (shadow_geometry_validate(geom) != 0)
		return 0;
	if (!shadow_mul_u64(geom->chunk_tokens, geom->n_kv_heads, &n) ||
	    !shadow_mul_u64(n, geom->head_dim, &n) ||
	    !shadow_mul_u64(n, shadow_dtype_nbytes(geom->dtype), &n))
		return 0;
	return n;
}

uint64_t shadow_geometry_token_nbytes(const struct shadow_kv_geometry *geom)
{
	uint64_t n;

	if (shadow_geometry_validate(geom) != 0)
		return 0;
	if (!shadow_mul_u64(2, geom->n_layers, &n) || !shadow_mul_u64(n, geom->n_kv_heads, &n) ||
	    !shadow_mul_u64(n, geom->head_dim, &n) ||
	    !shadow_mul_u64(n, shadow_dtype_nbytes(geom->dtype), &n))
		return 0;
	return n;
}
