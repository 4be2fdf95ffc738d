/*
 * test_key.c - chunk keys against the vectors of docs/keys.md, which scripts/keyvectors.py
 * computed independently (Python hashlib/struct, written from the spec), plus the chain's
 * edge cases and the printable store key.
 *
 * The vector over the real token ids reads $SHADOW_SHARED_DIR/data/kv/...ids.u32 and skips
 * only itself when the file is absent. Every vector also runs with SHADOW_KEY_FORCE_BYTEWISE
 * set, which makes test builds hash tokens through the portable (big-endian) path.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <shadow/shadow.h>

/* ---- vectors (scripts/keyvectors.py) ---- */

/* V1: minillama-h128 geometry, model id "minillama-h128", no salt */
static const char V1_NS[] = "2ebd4cc4269b14c5e462a4054103095468aee2998e721c92eddaf3de413ac5d9";
/* V2: as V1 with salt "tenant-a" */
static const char V2_NS[] = "c4932ca61806e1303f9b53adbce19798b6aea0ec8e830349efaae726159df86e";
/* V3: llama3-8b geometry, model id "meta-llama/Meta-Llama-3-8B", no salt, tokens 0..511 */
static const char V3_NS[] = "f800bdbd4571f431c23f09429192ebb83af19f056e06c569c118320e00df27f8";
static const char *const V3_KEYS[] = {
	"56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
	"842b1adb5a896ee5c7b41efbacb55bee9146b4fc9b0c6868776854b95b52e5e8",
};
/* V4: namespace V1, the 2048 token ids of shared_linuxdoc_cgroup-v2.ids.u32, 8 chunks */
static const char *const V4_KEYS[] = {
	"215c13ae38d864e762626d272df3a5f445dcf4f936ba527aa62fd57c5dff943c",
	"06bb853ec2538f4bed0cd4d538a550686276516d18d27058f2682e7a95076a06",
	"f5408c19933171bbb9ae256adc511fc1b1ab09b67781f8b7c0a172e57c0b0534",
	"f7ff41c253216146800abb0a5430be94a8ff03def26471e1efe5cd14337400d7",
	"69f6e5e1a99673dea615f310bad3510c972ce09517debc234d0c3267b54ac7b9",
	"e7af20215b9ad342dc5d80a2078305fc8ac9d67902e8f6f97fa71ba305de8376",
	"da45210ba2ea136a053c578be87854434cc057c2c20a35a049589b2ebd2d036b",
	"ec68a52c8d0488f169bf3058705a41b1c8de7707724687b8981caac1a01cf8b9",
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void assert_key_hex(const struct shadow_chunk_key *k, const char *hex)
{
	char buf[2 * SHADOW_KEY_NBYTES + 1];

	for (size_t i = 0; i < SHADOW_KEY_NBYTES; i++)
		snprintf(buf + 2 * i, 3, "%02x", k->bytes[i]);
	assert_string_equal(buf, hex);
}

static struct shadow_kv_geometry preset(const char *name)
{
	struct shadow_kv_geometry g;

	assert_int_equal(shadow_geometry_preset(name, &g), 0);
	return g;
}

static struct shadow_chunk_key ns_of(const char *model, const char *geom_name, const char *salt)
{
	struct shadow_kv_geometry g = preset(geom_name);
	struct shadow_chunk_key ns;

	assert_int_equal(shadow_key_namespace(model, &g, salt, salt ? strlen(salt) : 0, &ns), 0);
	return ns;
}

/* Run each vector test twice: tokens hashed in place, then byte by byte. */
static int force_bytewise_setup(void **state)
{
	(void)state;
	return setenv("SHADOW_KEY_FORCE_BYTEWISE", "1", 1);
}

static int force_bytewise_teardown(void **state)
{
	(void)state;
	return unsetenv("SHADOW_KEY_FORCE_BYTEWISE");
}

static void test_namespace_vectors(void **state)
{
	(void)state;
	struct shadow_chunk_key ns = ns_of("minillama-h128", "minillama-h128", NULL);
	assert_key_hex(&ns, V1_NS);
	ns = ns_of("minillama-h128", "minillama-h128", "tenant-a");
	assert_key_hex(&ns, V2_NS);
	ns = ns_of("meta-llama/Meta-Llama-3-8B", "llama3-8b", NULL);
	assert_key_hex(&ns, V3_NS);
}

static void test_chain_synthetic_vector(void **state)
{
	(void)state;
	struct shadow_chunk_key ns = ns_of("meta-llama/Meta-Llama-3-8B", "llama3-8b", NULL);
	struct shadow_chunk_key keys[4];
	uint32_t tokens[512];
	size_t n = 99;

	for (uint32_t i = 0; i < 512; i++)
		tokens[i] = i;
	assert_int_equal(shadow_key_chain(&ns, tokens, 512, 256, keys, 4, &n), 0);
	assert_int_equal(n, 2);
	assert_key_hex(&keys[0], V3_KEYS[0]);
	assert_key_hex(&keys[1], V3_KEYS[1]);

	/* A partial last chunk gets no key: 511 tokens -> 1 key, 255 -> none. */
	memset(keys, 0, sizeof(keys));
	assert_int_equal(shadow_key_chain(&ns, tokens, 511, 256, keys, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_key_hex(&keys[0], V3_KEYS[0]);
	assert_int_equal(shadow_key_chain(&ns, tokens, 255, 256, keys, 4, &n), 0);
	assert_int_equal(n, 0);
}

static uint32_t *read_ids(size_t *n_ret)
{
	const char *dir = getenv("SHADOW_SHARED_DIR");
	char path[4096];
	uint8_t raw[8192];
	size_t got;
	FILE *f;

	if (dir == NULL)
		return NULL;
	snprintf(path, sizeof(path), "%s/data/kv/shared_linuxdoc_cgroup-v2.ids.u32", dir);
	f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	got = fread(raw, 1, sizeof(raw), f);
	fclose(f);
	assert_int_equal(got, sizeof(raw));

	uint32_t *ids = malloc(sizeof(raw));
	assert_non_null(ids);
	for (size_t i = 0; i < got / 4; i++)
		ids[i] = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
			 (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24;
	*n_ret = got / 4;
	return ids;
}

static void test_chain_real_ids_vector(void **state)
{
	(void)state;
	size_t n_ids = 0;
	uint32_t *ids = read_ids(&n_ids);

	if (ids == NULL) {
		printf("# SHADOW_SHARED_DIR/data/kv/shared_linuxdoc_cgroup-v2.ids.u32 absent\n");
		skip();
	}
	assert_int_equal(n_ids, 2048);
	assert_int_equal(ids[0], 1); /* BOS */

	struct shadow_chunk_key ns = ns_of("minillama-h128", "minillama-h128", NULL);
	struct shadow_chunk_key keys[9];
	size_t n = 0;
	assert_int_equal(shadow_key_chain(&ns, ids, n_ids, 256, keys, 9, &n), 0);
	assert_int_equal(n, 8);
	for (size_t i = 0; i < 8; i++)
		assert_key_hex(&keys[i], V4_KEYS[i]);

	/* max_keys caps the count; the keys are the same prefix of the chain. */
	struct shadow_chunk_key few[3];
	assert_int_equal(shadow_key_chain(&ns, ids, n_ids, 256, few, 3, &n), 0);
	assert_int_equal(n, 3);
	assert_memory_equal(few, keys, sizeof(few));

	/* A prefix of the tokens gives a prefix of the keys, whatever follows it. */
	assert_int_equal(shadow_key_chain(&ns, ids, 1024 + 17, 256, few, 3, &n), 0);
	assert_int_equal(n, 3);
	assert_memory_equal(few, keys, sizeof(few));

	/* Changing one token of chunk 1 changes key 1 and every later key, not key 0. */
	struct shadow_chunk_key changed[8];
	ids[300] ^= 1;
	assert_int_equal(shadow_key_chain(&ns, ids, n_ids, 256, changed, 8, &n), 0);
	assert_memory_equal(&changed[0], &keys[0], sizeof(keys[0]));
	for (size_t i = 1; i < 8; i++)
		assert_memory_not_equal(&changed[i], &keys[i], sizeof(keys[i]));
	free(ids);
}

static void test_namespace_binds_fields(void **state)
{
	(void)state;
	const struct shadow_kv_geometry base = preset("llama3-8b");
	struct shadow_chunk_key ref, k;
	struct shadow_kv_geometry g;

	assert_int_equal(shadow_key_namespace("m", &base, NULL, 0, &ref), 0);
#define CHANGES(stmt)                                                                        \
	do {                                                                                 \
		g = base;                                                                    \
		stmt;                                                                        \
		assert_int_equal(shadow_key_namespace("m", &g, NULL, 0, &k), 0);              \
		assert_memory_not_equal(&k, &ref, sizeof(k));                                 \
	} while (0)
	CHANGES(g.n_layers = 31);
	CHANGES(g.n_kv_heads = 4);
	CHANGES(g.head_dim = 64);
	CHANGES(g.dtype = SHADOW_DTYPE_FP16);
	CHANGES(g.chunk_tokens = 512);
#undef CHANGES
	/* block_tokens is a property of the engine's cache, not of the data */
	g = base;
	g.block_tokens = 32;
	assert_int_equal(shadow_key_namespace("m", &g, NULL, 0, &k), 0);
	assert_memory_equal(&k, &ref, sizeof(k));

	/* no salt: NULL or an empty one; salts are bytes, NUL included */
	assert_int_equal(shadow_key_namespace("m", &base, "", 0, &k), 0);
	assert_memory_equal(&k, &ref, sizeof(k));
	struct shadow_chunk_key a, ab;
	assert_int_equal(shadow_key_namespace("m", &base, "a\0b", 1, &a), 0);
	assert_int_equal(shadow_key_namespace("m", &base, "a\0b", 3, &ab), 0);
	assert_memory_not_equal(&a, &ab, sizeof(a));
	assert_memory_not_equal(&a, &ref, sizeof(a));
	/* the model id is bound too, lengths make the fields unambiguous */
	assert_int_equal(shadow_key_namespace("n", &base, NULL, 0, &k), 0);
	assert_memory_not_equal(&k, &ref, sizeof(k));
	assert_int_equal(shadow_key_namespace("ma", &base, NULL, 0, &k), 0);
	assert_memory_not_equal(&k, &ref, sizeof(k));
}

static void test_namespace_rejects(void **state)
{
	(void)state;
	const struct shadow_kv_geometry g = preset("minillama-h128");
	struct shadow_chunk_key k;
	char id[300];

	memset(&k, 0x11, sizeof(k));
	memset(id, 'x', sizeof(id));
	id[255] = '\0';
	assert_int_equal(shadow_key_namespace(id, &g, NULL, 0, &k), 0);
	id[255] = 'x';
	id[256] = '\0';
	assert_int_equal(shadow_key_namespace(id, &g, NULL, 0, &k), -EINVAL);
	id[299] = '\0';
	assert_int_equal(shadow_key_namespace(id, &g, NULL, 0, &k), -EINVAL);
	assert_int_equal(shadow_key_namespace("", &g, NULL, 0, &k), -EINVAL);
	assert_int_equal(shadow_key_namespace(NULL, &g, NULL, 0, &k), -EINVAL);

	/* model ids are well-formed UTF-8 */
	assert_int_equal(shadow_key_namespace("mod\xc3\xa8le-7b", &g, NULL, 0, &k), 0);
	assert_int_equal(shadow_key_namespace("\xe6\xa8\xa1\xe5\x9e\x8b", &g, NULL, 0, &k), 0);
	assert_int_equal(shadow_key_namespace("smile-\xf0\x9f\x98\x80", &g, NULL, 0, &k), 0);
	const char *const bad_utf8[] = {
		"\xff", "a\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x9f\xbf", "\xed\xa0\x80",
		"\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xe2\x82", "\xf0\x9f\x98", "\xe2\x28\xa1",
	};
	for (size_t i = 0; i < ARRAY_LEN(bad_utf8); i++)
		assert_int_equal(shadow_key_namespace(bad_utf8[i], &g, NULL, 0, &k), -EINVAL);

	char salt[256];
	memset(salt, 's', sizeof(salt));
	assert_int_equal(shadow_key_namespace("m", &g, salt, 255, &k), 0);
	assert_int_equal(shadow_key_namespace("m", &g, salt, 256, &k), -EINVAL);
	assert_int_equal(shadow_key_namespace("m", &g, NULL, 1, &k), -EINVAL);

	struct shadow_kv_geometry bad = g;
	bad.chunk_tokens = 100; /* not a multiple of 16 */
	assert_int_equal(shadow_key_namespace("m", &bad, NULL, 0, &k), SHADOW_EGEOMETRY);
	bad = g;
	bad.dtype = 0;
	assert_int_equal(shadow_key_namespace("m", &bad, NULL, 0, &k), SHADOW_EGEOMETRY);
	assert_int_equal(shadow_key_namespace("m", NULL, NULL, 0, &k), SHADOW_EGEOMETRY);
}

static void test_chain_args(void **state)
{
	(void)state;
	struct shadow_chunk_key ns = ns_of("m", "llama3-8b", NULL), keys[2];
	uint32_t tokens[600] = { 0 };
	size_t n = 99;

	assert_int_equal(shadow_key_chain(&ns, tokens, 600, 256, NULL, 0, &n), 0);
	assert_int_equal(n, 0);
	n = 99;
	assert_int_equal(shadow_key_chain(&ns, NULL, 0, 256, keys, 2, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(shadow_key_chain(&ns, tokens, 600, 0, keys, 2, &n), -EINVAL);
	assert_int_equal(shadow_key_chain(&ns, tokens, 600, SHADOW_MAX_CHUNK_TOKENS + 1, keys, 2,
					  &n),
			 -EINVAL);
	assert_int_equal(shadow_key_chain(&ns, tokens, 600, SHADOW_MAX_CHUNK_TOKENS, keys, 2, &n),
			 0);
	assert_int_equal(n, 0);
	assert_int_equal(shadow_key_chain(NULL, tokens, 600, 256, keys, 2, &n), -EINVAL);
	assert_int_equal(shadow_key_chain(&ns, tokens, 600, 256, NULL, 2, &n), -EINVAL);
	assert_int_equal(shadow_key_chain(&ns, NULL, 600, 256, keys, 2, &n), -EINVAL);
	assert_int_equal(shadow_key_chain(&ns, tokens, 600, 256, keys, 2, NULL), -EINVAL);
	/* chunk of 1 token: one key per token */
	assert_int_equal(shadow_key_chain(&ns, tokens, 2, 1, keys, 2, &n), 0);
	assert_int_equal(n, 2);
	assert_memory_not_equal(&keys[0], &keys[1], sizeof(keys[0]));
}

/* The in-place and the portable byte-by-byte paths agree, across several token batches. */
static void test_chain_paths_agree(void **state)
{
	(void)state;
	struct shadow_chunk_key ns = ns_of("m", "qwen2.5-7b", "t"), a[3], b[3];
	const size_t n_tokens = 3 * 1000 + 5;
	uint32_t *tokens = malloc(n_tokens * sizeof(*tokens));
	uint32_t x = 12345;
	size_t na = 0, nb = 0;

	assert_non_null(tokens);
	for (size_t i = 0; i < n_tokens; i++) {
		x = x * 1664525u + 1013904223u;
		tokens[i] = x;
	}
	assert_int_equal(unsetenv("SHADOW_KEY_FORCE_BYTEWISE"), 0);
	assert_int_equal(shadow_key_chain(&ns, tokens, n_tokens, 1000, a, 3, &na), 0);
	assert_int_equal(setenv("SHADOW_KEY_FORCE_BYTEWISE", "1", 1), 0);
	assert_int_equal(shadow_key_chain(&ns, tokens, n_tokens, 1000, b, 3, &nb), 0);
	assert_int_equal(unsetenv("SHADOW_KEY_FORCE_BYTEWISE"), 0);
	assert_int_equal(na, 3);
	assert_int_equal(nb, 3);
	assert_memory_equal(a, b, sizeof(a));
	free(tokens);
}

static void test_format_parse(void **state)
{
	(void)state;
	struct shadow_chunk_key k, back;
	char buf[SHADOW_STORE_KEY_MAX];
	const char *want =
		"shadow:v1:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773";

	for (size_t i = 0; i < SHADOW_KEY_NBYTES; i++)
		sscanf(V3_KEYS[0] + 2 * i, "%2hhx", &k.bytes[i]);
	assert_int_equal(shadow_key_format(&k, NULL, buf, sizeof(buf)), 74);
	assert_string_equal(buf, want);
	assert_int_equal(shadow_key_format(&k, SHADOW_DEFAULT_KEY_PREFIX, buf, sizeof(buf)), 74);
	assert_string_equal(buf, want);
	memset(&back, 0, sizeof(back));
	assert_int_equal(shadow_key_parse(buf, NULL, &back), 0);
	assert_memory_equal(&back, &k, sizeof(k));

	/* prefixes may contain ':'; 64 characters is the most */
	const char *prefix = "tenant:a:b";
	assert_int_equal(shadow_key_format(&k, prefix, buf, sizeof(buf)), 10 + 1 + 64);
	assert_int_equal(shadow_key_parse(buf, prefix, &back), 0);
	assert_memory_equal(&back, &k, sizeof(k));
	assert_int_equal(shadow_key_parse(buf, NULL, &back), -EINVAL);
	assert_int_equal(shadow_key_parse(buf, "tenant:a", &back), -EINVAL);

	char p64[65], p65[66];
	memset(p64, '~', 64);
	p64[64] = '\0';
	memset(p65, '!', 65);
	p65[65] = '\0';
	assert_int_equal(shadow_key_format(&k, p64, buf, sizeof(buf)), 129);
	assert_int_equal(SHADOW_STORE_KEY_MAX, 130);
	assert_int_equal(shadow_key_parse(buf, p64, &back), 0);
	assert_memory_equal(&back, &k, sizeof(k));
	assert_int_equal(shadow_key_format(&k, p65, buf, sizeof(buf)), -EINVAL);
	assert_int_equal(shadow_key_parse(buf, p65, &back), -EINVAL);

	/* bad prefixes */
	const char *const bad_prefixes[] = { "", "a b", " ", "a\tb", "a\x7f", "caf\xc3\xa9", "\n" };
	for (size_t i = 0; i < ARRAY_LEN(bad_prefixes); i++) {
		assert_int_equal(shadow_key_format(&k, bad_prefixes[i], buf, sizeof(buf)), -EINVAL);
		assert_int_equal(shadow_key_parse(want, bad_prefixes[i], &back), -EINVAL);
	}

	/* buffer sizes: the NUL must fit */
	assert_int_equal(shadow_key_format(&k, NULL, buf, 74), -ENOBUFS);
	assert_int_equal(shadow_key_format(&k, NULL, buf, 75), 74);
	assert_int_equal(shadow_key_format(&k, NULL, NULL, 0), -ENOBUFS);
	assert_int_equal(shadow_key_format(&k, NULL, buf, 0), -ENOBUFS);

	/* rejected texts, and the output is untouched */
	const char *const bad_texts[] = {
		"",
		"shadow:v1",
		"shadow:v1:",
		"shadow:v1;56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
		"shadow:v2:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
		"shadow:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
		"shadow:v1:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f77",
		"shadow:v1:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f7733",
		"shadow:v1:56600C337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
		"shadow:v1:56600g337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
		"shadow:v1:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773\n",
		"shadow:v1: 56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f77",
		"Shadow:v1:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
		"xshadow:v1:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
	};
	memset(&back, 0x42, sizeof(back));
	struct shadow_chunk_key untouched = back;
	for (size_t i = 0; i < ARRAY_LEN(bad_texts); i++)
		assert_int_equal(shadow_key_parse(bad_texts[i], NULL, &back), -EINVAL);
	assert_memory_equal(&back, &untouched, sizeof(back));
	assert_int_equal(shadow_key_parse(NULL, NULL, &back), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_namespace_vectors),
		cmocka_unit_test(test_chain_synthetic_vector),
		cmocka_unit_test(test_chain_real_ids_vector),
		cmocka_unit_test_setup_teardown(test_chain_synthetic_vector, force_bytewise_setup,
						force_bytewise_teardown),
		cmocka_unit_test_setup_teardown(test_chain_real_ids_vector, force_bytewise_setup,
						force_bytewise_teardown),
		cmocka_unit_test(test_namespace_binds_fields),
		cmocka_unit_test(test_namespace_rejects),
		cmocka_unit_test(test_chain_args),
		cmocka_unit_test(test_chain_paths_agree),
		cmocka_unit_test(test_format_parse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
