/*
 * test_geometry.c - KV geometry: dtypes, the model presets, range validation (every field,
 * both edges of every range) and the frame / per-token sizes.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <shadow/shadow.h>

static void test_dtypes(void **state)
{
	(void)state;
	assert_int_equal(shadow_dtype_nbytes(SHADOW_DTYPE_BF16), 2);
	assert_int_equal(shadow_dtype_nbytes(SHADOW_DTYPE_FP16), 2);
	assert_int_equal(shadow_dtype_nbytes(SHADOW_DTYPE_FP32), 4);
	assert_int_equal(shadow_dtype_nbytes(SHADOW_DTYPE_FP8_E4M3), 1);
	assert_int_equal(shadow_dtype_nbytes(0), 0);
	assert_int_equal(shadow_dtype_nbytes(5), 0);
	assert_int_equal(shadow_dtype_nbytes(UINT32_MAX), 0);
	assert_string_equal(shadow_dtype_name(SHADOW_DTYPE_BF16), "bf16");
	assert_string_equal(shadow_dtype_name(SHADOW_DTYPE_FP16), "fp16");
	assert_string_equal(shadow_dtype_name(SHADOW_DTYPE_FP32), "fp32");
	assert_string_equal(shadow_dtype_name(SHADOW_DTYPE_FP8_E4M3), "fp8_e4m3");
	assert_null(shadow_dtype_name(0));
	assert_null(shadow_dtype_name(5));
	/* The numeric values are part of the key scheme and formats: they must never move. */
	assert_int_equal(SHADOW_DTYPE_BF16, 1);
	assert_int_equal(SHADOW_DTYPE_FP16, 2);
	assert_int_equal(SHADOW_DTYPE_FP32, 3);
	assert_int_equal(SHADOW_DTYPE_FP8_E4M3, 4);
}

static void check_preset(const char *name, uint32_t n_layers, uint32_t n_kv_heads,
			 uint32_t head_dim)
{
	struct shadow_kv_geometry g;

	memset(&g, 0xa5, sizeof(g));
	assert_int_equal(shadow_geometry_preset(name, &g), 0);
	assert_int_equal(g.n_layers, n_layers);
	assert_int_equal(g.n_kv_heads, n_kv_heads);
	assert_int_equal(g.head_dim, head_dim);
	assert_int_equal(g.dtype, SHADOW_DTYPE_BF16);
	assert_int_equal(g.block_tokens, 16);
	assert_int_equal(g.chunk_tokens, SHADOW_DEFAULT_CHUNK_TOKENS);
	assert_int_equal(SHADOW_DEFAULT_CHUNK_TOKENS, 256);
	assert_int_equal(shadow_geometry_validate(&g), 0);
}

static void test_presets(void **state)
{
	(void)state;
	check_preset("llama3-8b", 32, 8, 128);
	check_preset("llama3-70b", 80, 8, 128);
	check_preset("mistral-7b", 32, 8, 128);
	check_preset("qwen2.5-7b", 28, 4, 128);
	check_preset("minillama-h128", 6, 2, 128);

	struct shadow_kv_geometry g = { 0 };
	assert_int_equal(shadow_geometry_preset("llama3-9b", &g), SHADOW_EUNKNOWN_NAME);
	assert_int_equal(shadow_geometry_preset("", &g), SHADOW_EUNKNOWN_NAME);
	assert_int_equal(shadow_geometry_preset("LLAMA3-8B", &g), SHADOW_EUNKNOWN_NAME);
	assert_int_equal(shadow_geometry_preset("llama3-8b ", &g), SHADOW_EUNKNOWN_NAME);
	assert_int_equal(g.n_layers, 0); /* untouched on failure */
	assert_int_equal(shadow_geometry_preset(NULL, &g), -EINVAL);
}

static void test_preset_names(void **state)
{
	(void)state;
	const char *const *names = NULL;
	size_t n = 0;

	shadow_geometry_preset_names(&names, &n);
	assert_int_equal(n, 5);
	for (size_t i = 0; i < n; i++) {
		struct shadow_kv_geometry g;

		assert_non_null(names[i]);
		assert_int_equal(shadow_geometry_preset(names[i], &g), 0);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(names[i], names[j]);
	}
}

static struct shadow_kv_geometry good(void)
{
	struct shadow_kv_geometry g;

	assert_int_equal(shadow_geometry_preset("llama3-8b", &g), 0);
	return g;
}

#define EXPECT_BAD(field, value)                                                             \
	do {                                                                                 \
		struct shadow_kv_geometry g_ = good();                                        \
		g_.field = (value);                                                          \
		assert_int_equal(shadow_geometry_validate(&g_), SHADOW_EGEOMETRY);            \
		assert_int_equal(shadow_geometry_frame_nbytes(&g_), 0);                       \
		assert_int_equal(shadow_geometry_token_nbytes(&g_), 0);                       \
	} while (0)

#define EXPECT_GOOD(field, value)                                                            \
	do {                                                                                 \
		struct shadow_kv_geometry g_ = good();                                        \
		g_.field = (value);                                                          \
		assert_int_equal(shadow_geometry_validate(&g_), 0);                           \
	} while (0)

static void test_validate_each_field(void **state)
{
	(void)state;
	EXPECT_BAD(n_layers, 0);
	EXPECT_BAD(n_layers, SHADOW_MAX_LAYERS + 1);
	EXPECT_BAD(n_layers, UINT32_MAX);
	EXPECT_GOOD(n_layers, 1);
	EXPECT_GOOD(n_layers, SHADOW_MAX_LAYERS);

	EXPECT_BAD(n_kv_heads, 0);
	EXPECT_BAD(n_kv_heads, SHADOW_MAX_KV_HEADS + 1);
	EXPECT_BAD(n_kv_heads, UINT32_MAX);
	EXPECT_GOOD(n_kv_heads, 1);
	EXPECT_GOOD(n_kv_heads, SHADOW_MAX_KV_HEADS);

	EXPECT_BAD(head_dim, 0);
	EXPECT_BAD(head_dim, SHADOW_MAX_HEAD_DIM + 1);
	EXPECT_BAD(head_dim, UINT32_MAX);
	EXPECT_GOOD(head_dim, 1);
	EXPECT_GOOD(head_dim, SHADOW_MAX_HEAD_DIM);

	EXPECT_BAD(dtype, 0);
	EXPECT_BAD(dtype, 5);
	EXPECT_BAD(dtype, UINT32_MAX);
	EXPECT_GOOD(dtype, SHADOW_DTYPE_FP8_E4M3);
	EXPECT_GOOD(dtype, SHADOW_DTYPE_FP32);

	/* block_tokens must divide chunk_tokens (256) as well as be in range. */
	EXPECT_BAD(block_tokens, 0);
	EXPECT_BAD(block_tokens, 3);
	EXPECT_BAD(block_tokens, 512);
	EXPECT_BAD(block_tokens, SHADOW_MAX_BLOCK_TOKENS + 1);
	EXPECT_GOOD(block_tokens, 1);
	EXPECT_GOOD(block_tokens, 256);

	EXPECT_BAD(chunk_tokens, 0);
	EXPECT_BAD(chunk_tokens, 8);   /* below block_tokens */
	EXPECT_BAD(chunk_tokens, 264); /* not a multiple of 16 */
	EXPECT_BAD(chunk_tokens, SHADOW_MAX_CHUNK_TOKENS + 16);
	EXPECT_BAD(chunk_tokens, UINT32_MAX - 15); /* multiple of 16, far too big */
	EXPECT_GOOD(chunk_tokens, 16);
	EXPECT_GOOD(chunk_tokens, SHADOW_MAX_CHUNK_TOKENS);

	struct shadow_kv_geometry g = good();
	g.block_tokens = SHADOW_MAX_BLOCK_TOKENS;
	g.chunk_tokens = SHADOW_MAX_CHUNK_TOKENS;
	assert_int_equal(shadow_geometry_validate(&g), 0);
	g.block_tokens = SHADOW_MAX_CHUNK_TOKENS; /* too big a block even though it divides */
	assert_int_equal(shadow_geometry_validate(&g), SHADOW_EGEOMETRY);

	assert_int_equal(shadow_geometry_validate(NULL), SHADOW_EGEOMETRY);
	assert_int_equal(shadow_geometry_frame_nbytes(NULL), 0);
	assert_int_equal(shadow_geometry_token_nbytes(NULL), 0);
}

static void test_sizes(void **state)
{
	(void)state;
	struct shadow_kv_geometry g = good();

	/* DESIGN.md: Llama-3-8B holds 128 KiB of bf16 KV per token. */
	assert_int_equal(shadow_geometry_token_nbytes(&g), 128u * 1024u);
	assert_int_equal(shadow_geometry_frame_nbytes(&g), 256u * 8u * 128u * 2u);

	assert_int_equal(shadow_geometry_preset("minillama-h128", &g), 0);
	assert_int_equal(shadow_geometry_token_nbytes(&g), 2u * 6u * 2u * 128u * 2u);
	assert_int_equal(shadow_geometry_frame_nbytes(&g), 256u * 2u * 128u * 2u);

	assert_int_equal(shadow_geometry_preset("llama3-70b", &g), 0);
	assert_int_equal(shadow_geometry_token_nbytes(&g), 320u * 1024u);

	/* The largest geometry: sizes past 32 bits, still exact. */
	g.n_layers = SHADOW_MAX_LAYERS;
	g.n_kv_heads = SHADOW_MAX_KV_HEADS;
	g.head_dim = SHADOW_MAX_HEAD_DIM;
	g.dtype = SHADOW_DTYPE_FP32;
	g.block_tokens = SHADOW_MAX_BLOCK_TOKENS;
	g.chunk_tokens = SHADOW_MAX_CHUNK_TOKENS;
	assert_int_equal(shadow_geometry_validate(&g), 0);
	assert_true(shadow_geometry_frame_nbytes(&g) == (uint64_t)1 << 36);
	assert_true(shadow_geometry_token_nbytes(&g) == (uint64_t)1 << 29);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dtypes),
		cmocka_unit_test(test_presets),
		cmocka_unit_test(test_preset_names),
		cmocka_unit_test(test_validate_each_field),
		cmocka_unit_test(test_sizes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
