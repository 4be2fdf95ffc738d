/*
 * key.c - chunk keys: the namespace key, the chained per-chunk SHA-256 keys, and the printable
 * store key. docs/keys.md is the specification; scripts/keyvectors.py is an independent
 * implementation of it that produced the test vectors in tests/unit/test_key.c.
 *
 * Keys must be the same in every process, machine and engine that uses the same model, so
 * everything hashed is spelled out byte by byte (little-endian integers, no padding, no
 * struct images) and nothing depends on the host.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/common.h"

/* Namespace record: see docs/keys.md ("Namespace record"). */
#define NS_MAGIC "shadowserve-kv-ns"
#define NS_MAGIC_NBYTES (sizeof(NS_MAGIC) - 1u)
#define NS_VERSION 1u
#define NS_MAX_MODEL_ID 255u
#define NS_MAX_SALT 255u
#define NS_RECORD_MAX (NS_MAGIC_NBYTES + 4u + 4u + NS_MAX_MODEL_ID + 5u * 4u + 4u + NS_MAX_SALT)

/* Tokens converted per round on the portable (byte-by-byte) path. */
#define TOKEN_BATCH 256u

static uint8_t *put_u32le(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
	return p + 4;
}

/* Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = s[i];
		size_t len;
		uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */

		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			if (c == 0xe0)
				lo = 0xa0; /* overlong */
			else if (c == 0xed)
				hi = 0x9f; /* surrogates */
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			if (c == 0xf0)
				lo = 0x90; /* overlong */
			else if (c == 0xf4)
				hi = 0x8f; /* above U+10FFFF */
		} else {
			return false;
		}
		if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k < len; k++) {
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return false;
		}
		i += len;
	}
	return true;
}

/* The host stores uint32 little-endian, so token arrays can be hashed in place. */
static bool tokens_hash_in_place(void)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#if defined(SHADOW_TESTING)
	/* Test builds can force the portable path so that it runs on little-endian CI too. */
	if (getenv("SHADOW_KEY_FORCE_BYTEWISE") != NULL)
		return false;
#endif
	return true;
#else
	return false;
#endif
}

int shadow_key_namespace(const char *model_id, const struct shadow_kv_geometry *geom,
			 const void *salt, size_t salt_nbytes, struct shadow_chunk_key *ns_ret)
{
	uint8_t rec[NS_RECORD_MAX];
	uint8_t *p = rec;
	size_t id_nbytes;
	int err;

	if (model_id == NULL || ns_ret == NULL)
		return -EINVAL;
	/* Bounded scan: an id longer than the limit is rejected without reading all of it. */
	id_nbytes = 0;
	while (id_nbytes <= NS_MAX_MODEL_ID && model_id[id_nbytes] != '\0')
		id_nbytes++;
	if (id_nbytes == 0 || id_nbytes > NS_MAX_MODEL_ID ||
	    !utf8_valid((const uint8_t *)model_id, id_nbytes))
		return -EINVAL;
	if (salt_nbytes > NS_MAX_SALT || (salt == NULL && salt_nbytes != 0))
		return -EINVAL;
	err = shadow_geometry_validate(geom);
	if (err != 0)
		return err;

	memcpy(p, NS_MAGIC, NS_MAGIC_NBYTES);
	p += NS_MAGIC_NBYTES;
	p = put_u32le(p, NS_VERSION);
	p = put_u32le(p, (uint32_t)id_nbytes);
	memcpy(p, model_id, id_nbytes);
	p += id_nbytes;
	p = put_u32le(p, geom->n_layers);
	p = put_u32le(p, geom->n_kv_heads);
	p = put_u32le(p, geom->head_dim);
	p = put_u32le(p, geom->dtype);
	p = put_u32le(p, geom->chunk_tokens);
	p = put_u32le(p, (uint32_t)salt_nbytes);
	if (salt_nbytes != 0)
		memcpy(p, salt, salt_nbytes);
	p += salt_nbytes;
	SHADOW_ASSERT((size_t)(p - rec) <= sizeof(rec));

	EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (md == NULL)
		return -ENOMEM;
	unsigned int out_nbytes = 0;
	int ok = EVP_Digest(rec, (size_t)(p - rec), ns_ret->bytes, &out_nbytes, md, NULL);
	EVP_MD_free(md);
	if (ok != 1 || out_nbytes != SHADOW_KEY_NBYTES)
		return -ENOMEM;
	return 0;
}

/* Feed n tokens to the digest as uint32 little-endian. */
static int hash_tokens(EVP_MD_CTX *ctx, const uint32_t *tokens, size_t n, bool in_place)
{
	if (in_place)
		return EVP_DigestUpdate(ctx, tokens, n * sizeof(uint32_t));

	uint8_t buf[TOKEN_BATCH * 4u];
	while (n > 0) {
		size_t m = SHADOW_MIN(n, (size_t)TOKEN_BATCH);
		uint8_t *p = buf;

		for (size_t i = 0; i < m; i++)
			p = put_u32le(p, tokens[i]);
		if (EVP_DigestUpdate(ctx, buf, m * 4u) != 1)
			return 0;
		tokens += m;
		n -= m;
	}
	return 1;
}

/*
 * One digest context serves the whole chain. (OpenSSL 3.0's EVP_DigestInit_ex2 still
 * allocates a provider context per call inside libcrypto; this file allocates nothing per
 * chunk.)
 */
int shadow_key_chain(const struct shadow_chunk_key *ns, const uint32_t *tokens, size_t n_tokens,
		     uint32_t chunk_tokens, struct shadow_chunk_key *keys_ret, size_t max_keys,
		     size_t *n_keys_ret)
{
	size_t n_keys;
	int err = 0;

	if (ns == NULL || n_keys_ret == NULL || chunk_tokens == 0 ||
	    chunk_tokens > SHADOW_MAX_CHUNK_TOKENS || (keys_ret == NULL && max_keys != 0))
		return -EINVAL;
	n_keys = SHADOW_MIN(n_tokens / chunk_tokens, max_keys);
	if (n_keys == 0) {
		*n_keys_ret = 0;
		return 0;
	}
	if (tokens == NULL)
		return -EINVAL;

	EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (md == NULL || ctx == NULL) {
		err = -ENOMEM;
		goto out_free;
	}

	const bool in_place = tokens_hash_in_place();
	const uint8_t *prev = ns->bytes;
	for (size_t i = 0; i < n_keys; i++) {
		const uint32_t *chunk = tokens + i * (size_t)chunk_tokens;
		unsigned int out_nbytes = 0;

		if (EVP_DigestInit_ex2(ctx, md, NULL) != 1 ||
		    EVP_DigestUpdate(ctx, prev, SHADOW_KEY_NBYTES) != 1 ||
		    hash_tokens(ctx, chunk, chunk_tokens, in_place) != 1 ||
		    EVP_DigestFinal_ex(ctx, keys_ret[i].bytes, &out_nbytes) != 1 ||
		    out_nbytes != SHADOW_KEY_NBYTES) {
			err = -ENOMEM;
			goto out_free;
		}
		prev = keys_ret[i].bytes;
	}
	*n_keys_ret = n_keys;

out_free:
	EVP_MD_CTX_free(ctx);
	EVP_MD_free(md);
	return err;
}

/* Length of a valid prefix (1 .. SHADOW_KEY_PREFIX_MAX printable ASCII, no space), or 0. */
static size_t prefix_len(const char *prefix)
{
	size_t n = 0;

	while (prefix[n] != '\0') {
		unsigned char c = (unsigned char)prefix[n];

		if (c < 0x21 || c > 0x7e || n == SHADOW_KEY_PREFIX_MAX)
			return 0;
		n++;
	}
	return n;
}

int shadow_key_format(const struct shadow_chunk_key *key, const char *prefix, char *buf,
		      size_t buf_nbytes)
{
	static const char hex[] = "0123456789abcdef";
	size_t plen, len;

	if (key == NULL)
		return -EINVAL;
	if (prefix == NULL)
		prefix = SHADOW_DEFAULT_KEY_PREFIX;
	plen = prefix_len(prefix);
	if (plen == 0)
		return -EINVAL;
	len = plen + 1u + 2u * SHADOW_KEY_NBYTES;
	if (buf == NULL || buf_nbytes < len + 1u)
		return -ENOBUFS;

	memcpy(buf, prefix, plen);
	buf[plen] = ':';
	char *p = buf + plen + 1;
	for (size_t i = 0; i < SHADOW_KEY_NBYTES; i++) {
		*p++ = hex[key->bytes[i] >> 4];
		*p++ = hex[key->bytes[i] & 0x0f];
	}
	*p = '\0';
	return (int)len;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1; /* uppercase too: the store key is a byte string, one spelling only */
}

int shadow_key_parse(const char *text, const char *prefix, struct shadow_chunk_key *key_ret)
{
	struct shadow_chunk_key key;
	size_t plen;

	if (text == NULL || key_ret == NULL)
		return -EINVAL;
	if (prefix == NULL)
		prefix = SHADOW_DEFAULT_KEY_PREFIX;
	plen = prefix_len(prefix);
	if (plen == 0)
		return -EINVAL;
	/* strncmp stops at text's NUL, so a short text never reads past its end. */
	if (strncmp(text, prefix, plen) != 0 || text[plen] != ':')
		return -EINVAL;
	const char *h = text + plen + 1;
	for (size_t i = 0; i < SHADOW_KEY_NBYTES; i++) {
		int hi = hex_digit(h[2 * i]);
		if (hi < 0)
			return -EINVAL;
		int lo = hex_digit(h[2 * i + 1]);
		if (lo < 0)
			return -EINVAL;
		key.bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	if (h[2 * SHADOW_KEY_NBYTES] != '\0')
		return -EINVAL;
	*key_ret = key;
	return 0;
}
