/*
 * test_chunk.c - the chunk container and codecs: round trips for every quantization and
 * lossless stage into NHD and HND staging images, and bad input of every kind (truncation,
 * every single-bit flip, forged sizes with a valid checksum, wrong key, wrong geometry).
 *
 * With SHADOW_WRITE_SEEDS=DIR set, it also writes small containers of the fuzz target's
 * geometry (FUZZ_GEOMETRY in fuzz/chunk_decode/fuzz.c) as its seed corpus.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "format/chunk.h"
#include "quant/quant.h"
#include <shadow/shadow.h>

#define N_BLOCKS 64u

struct fixture {
	struct shadow_kv_geometry geom;
	struct shadow_kv_layout nhd, hnd;
	uint8_t *region_nhd, *region_hnd; /* source KV, written in both layouts */
	uint8_t *out_nhd, *out_hnd;       /* where decoded frames are scattered */
	uint32_t block_ids[64];
	struct shadow_chunk_key key;
	uint32_t chunk_index; /* what encode() records; PCA keys with RoPE depend on it */
	struct shadow_codec *codec;
	uint8_t *stage;
	size_t stage_nbytes;
	uint8_t *buf;
	size_t buf_cap;
};

static float gauss(uint64_t *s)
{
	/* Box-Muller over a 64-bit LCG: deterministic across machines. */
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	double u1 = ((*s >> 11) + 1.0) / 9007199254740993.0;
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	double u2 = (*s >> 11) / 9007199254740992.0;
	return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(shadow_geometry_preset("minillama-h128", &f->geom), 0);
	f->geom.n_layers = 3; /* small, but keys and values of several layers */
	size_t elem = 2;
	uint64_t region = (uint64_t)N_BLOCKS * f->geom.block_tokens * f->geom.n_kv_heads *
			  f->geom.head_dim * elem * 2 * f->geom.n_layers;
	assert_int_equal(shadow_layout_init(&f->nhd, &f->geom, SHADOW_LAYOUT_NHD, N_BLOCKS, 0, region), 0);
	assert_int_equal(shadow_layout_init(&f->hnd, &f->geom, SHADOW_LAYOUT_HND, N_BLOCKS, 0, region), 0);
	f->region_nhd = calloc(1, region);
	f->region_hnd = calloc(1, region);
	f->out_nhd = calloc(1, region);
	f->out_hnd = calloc(1, region);
	assert_non_null(f->region_nhd);
	assert_non_null(f->region_hnd);
	assert_non_null(f->out_nhd);
	assert_non_null(f->out_hnd);

	/* Blocks of the chunk out of order, as a paged cache has them. */
	uint32_t n_ids = f->geom.chunk_tokens / f->geom.block_tokens;
	for (uint32_t i = 0; i < n_ids; i++)
		f->block_ids[i] = (i * 37u + 5u) % N_BLOCKS;

	/* KV with per-channel scales and an outlier channel in keys, like real KV. */
	uint64_t seed = 42;
	for (uint32_t l = 0; l < f->geom.n_layers; l++)
		for (uint32_t kv = 0; kv < 2; kv++)
			for (uint32_t t = 0; t < f->geom.chunk_tokens; t++)
				for (uint32_t h = 0; h < f->geom.n_kv_heads; h++) {
					int64_t on = shadow_layout_offset(&f->nhd, &f->geom, l, kv,
							f->block_ids[t / 16], t % 16, h);
					int64_t oh = shadow_layout_offset(&f->hnd, &f->geom, l, kv,
							f->block_ids[t / 16], t % 16, h);
					assert_true(on >= 0 && oh >= 0);
					for (uint32_t d = 0; d < f->geom.head_dim; d++) {
						float scale = kv == 0 ? 0.5f + (d % 7) * 0.3f : 0.8f;
						if (kv == 0 && d == 3)
							scale = 8.0f;
						uint16_t b = shadow__float_to_bf16(gauss(&seed) * scale);
						memcpy(f->region_nhd + on + 2 * d, &b, 2);
						memcpy(f->region_hnd + oh + 2 * d, &b, 2);
					}
				}
	f->key.bytes[0] = 0xab;
	assert_int_equal(shadow_codec_create(&f->geom, &f->codec), 0);
	f->stage_nbytes = (size_t)f->geom.chunk_tokens * f->geom.n_kv_heads * f->geom.head_dim * elem;
	f->stage = malloc(f->stage_nbytes);
	f->buf_cap = 8u << 20;
	f->buf = malloc(f->buf_cap);
	assert_non_null(f->stage);
	assert_non_null(f->buf);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	shadow_codec_free(f->codec);
	free(f->region_nhd);
	free(f->region_hnd);
	free(f->out_nhd);
	free(f->out_hnd);
	free(f->stage);
	free(f->buf);
	free(f);
	return 0;
}

static size_t encode(struct fixture *f, const char *scheme)
{
	struct shadow_codec_options o;
	size_t n = 0;
	assert_int_equal(shadow_codec_options_parse(scheme, &o), 0);
	uint64_t bound = shadow_chunk_encode_bound(f->codec, &o);
	assert_true(bound > 0 && bound <= f->buf_cap);
	assert_int_equal(shadow_chunk_encode(f->codec, &o, &f->key, f->chunk_index, f->region_nhd,
					     &f->nhd, f->block_ids, f->buf, f->buf_cap, &n), 0);
	assert_true(n <= bound);

	return n;
}

/* Decode every frame into `layout`'s staging image and scatter it into out via the plan. */
static int decode_all(struct fixture *f, const struct shadow_chunk_view *v,
		      const struct shadow_kv_layout *layout, uint8_t *out)
{
	struct shadow_copy_run runs[64];
	for (uint32_t fr = 0; fr < v->n_frames; fr++) {
		int err = shadow_chunk_decode_frame(f->codec, v, fr, layout, f->stage, f->stage_nbytes);
		if (err != 0)
			return err;
		size_t n_runs;
		assert_int_equal(shadow_layout_plan_frame(layout, &f->geom, fr / 2, fr % 2, f->block_ids,
							  f->geom.chunk_tokens / f->geom.block_tokens,
							  runs, 64, &n_runs), 0);
		for (size_t i = 0; i < n_runs; i++)
			memcpy(out + runs[i].dst_offset, f->stage + runs[i].src_offset, runs[i].nbytes);
	}
	return 0;
}

/* Largest |decoded - original| over the chunk, comparing element by element via offsets. */
static double max_abs_error(struct fixture *f, const struct shadow_kv_layout *layout,
			    const uint8_t *src, const uint8_t *out, int kv)
{
	double worst = 0;
	for (uint32_t l = 0; l < f->geom.n_layers; l++)
		for (uint32_t t = 0; t < f->geom.chunk_tokens; t++)
			for (uint32_t h = 0; h < f->geom.n_kv_heads; h++) {
				int64_t o = shadow_layout_offset(layout, &f->geom, l, kv,
								 f->block_ids[t / 16], t % 16, h);
				for (uint32_t d = 0; d < f->geom.head_dim; d++) {
					uint16_t a, b;
					memcpy(&a, src + o + 2 * d, 2);
					memcpy(&b, out + o + 2 * d, 2);
					double e = fabs((double)shadow__bf16_to_float(a) -
							shadow__bf16_to_float(b));
					if (e > worst)
						worst = e;
				}
			}
	return worst;
}

static void roundtrip(struct fixture *f, const char *scheme, double k_bound, double v_bound)
{
	size_t n = encode(f, scheme);
	struct shadow_chunk_view v;
	assert_int_equal(shadow_chunk_parse(f->buf, n, &f->key, &f->geom, &v), 0);
	assert_int_equal(v.total_nbytes, n);
	assert_int_equal(v.n_frames, 2 * f->geom.n_layers);

	memset(f->out_nhd, 0, f->nhd.region_nbytes);
	memset(f->out_hnd, 0, f->hnd.region_nbytes);
	assert_int_equal(decode_all(f, &v, &f->nhd, f->out_nhd), 0);
	assert_int_equal(decode_all(f, &v, &f->hnd, f->out_hnd), 0);
	for (int kv = 0; kv < 2; kv++) {
		double bound = kv == 0 ? k_bound : v_bound;
		double e_nhd = max_abs_error(f, &f->nhd, f->region_nhd, f->out_nhd, kv);
		double e_hnd = max_abs_error(f, &f->hnd, f->region_hnd, f->out_hnd, kv);
		if (e_nhd > bound || e_hnd > bound)
			fail_msg("%s %c: max error %g / %g > %g", scheme, kv ? 'V' : 'K', e_nhd,
				 e_hnd, bound);
		/* The same container decodes to the same values in both layouts. */
		assert_true(e_nhd == e_hnd);
	}
	if (k_bound == 0 && v_bound == 0) /* lossless: the regions are byte-identical */
		assert_memory_equal(f->out_nhd, f->region_nhd, f->nhd.region_nbytes);
}

static void test_lossless_roundtrip(void **state)
{
	struct fixture *f = *state;
	static const char *const schemes[] = {
		"bf16+none", "bf16+deflate1", "bf16+zstd3", "bf16planes+none",
		"bf16planes+deflate6", "bf16planes+zstd1", "bf16planes+zstd19",
	};
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
		roundtrip(f, schemes[i], 0, 0);
}

static void test_lossy_roundtrip(void **state)
{
	struct fixture *f = *state;
	/* Bounds: half a step of the coarsest group (range ~ +-5 sigma; the key outlier channel
	 * has sigma 8) plus bf16 rounding. Loose on purpose: tight per-element bounds are
	 * test_quant's job; this checks that the right parameters meet the right symbols. */
	roundtrip(f, "int8+none", 0.25, 0.05);
	roundtrip(f, "int8+zstd1", 0.25, 0.05);
	roundtrip(f, "bits4+none", 4.0, 0.6);
	roundtrip(f, "bits4+deflate", 4.0, 0.6);
	roundtrip(f, "bits3-g64-c32+zstd3", 8.0, 1.2);
	roundtrip(f, "bits5-L1=7/6+none", 2.0, 0.3);
	roundtrip(f, "bits2-g16-c64+none", 20.0, 3.0);
	/* The std rule clips outliers: its error is bounded by the clip, not by the range. */
	roundtrip(f, "bits4-s0.5+zstd1", 40.0, 6.0);
	/* ECSQ never clips: half a step (0.05 std: 0.2 for the sigma-8 key channel) plus bf16
	 * output rounding (values up to ~40: 0.125). */
	roundtrip(f, "ecsq-s0.05+zstd1", 0.3, 0.1);
	roundtrip(f, "ecsq-s0.05+none", 0.3, 0.1);
	roundtrip(f, "ecsq-s0.3-k64x1-v16x32+deflate1", 1.5, 0.3);
	roundtrip(f, "bits6-k32x4-v8x16+zstd1", 2.0, 0.3);
}

static void test_pca_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct shadow_transform *t, *other;
	uint32_t n_ids = f->geom.chunk_tokens / f->geom.block_tokens;

	/* Without a transform PCA cannot encode. */
	struct shadow_codec_options o;
	size_t n;
	assert_int_equal(shadow_codec_options_parse("pca-s0.05+zstd1", &o), 0);
	assert_int_equal(shadow_chunk_encode(f->codec, &o, &f->key, 0, f->region_nhd, &f->nhd,
					     f->block_ids, f->buf, f->buf_cap, &n), -EINVAL);

	assert_int_equal(shadow_transform_calibrate(&f->geom, f->region_nhd, &f->nhd, f->block_ids,
						    n_ids, NULL, &t), 0);
	assert_int_equal(shadow_codec_set_transform(f->codec, t), 0);
	/* Half a step per coefficient over 128 orthonormal directions, plus bf16 rounding. */
	roundtrip(f, "pca-s0.05+zstd1", 1.0, 0.5);
	roundtrip(f, "pca-s0.05+none", 1.0, 0.5);

	/* A container coded with one transform does not decode with another, nor with none. */
	n = encode(f, "pca-s0.2+deflate1");
	struct shadow_chunk_view v;
	assert_int_equal(shadow_chunk_parse(f->buf, n, &f->key, &f->geom, &v), 0);
	assert_int_equal(shadow_transform_calibrate(&f->geom, f->region_nhd, &f->nhd, f->block_ids,
						    n_ids / 2, NULL, &other), 0);
	assert_true(shadow_transform_id(other) != shadow_transform_id(t));
	assert_int_equal(shadow_codec_set_transform(f->codec, other), 0);
	assert_int_equal(shadow_chunk_decode_frame(f->codec, &v, 0, &f->nhd, f->stage,
						   f->stage_nbytes), SHADOW_EUNSUPPORTED);
	assert_int_equal(shadow_codec_set_transform(f->codec, NULL), 0);
	assert_int_equal(shadow_chunk_decode_frame(f->codec, &v, 1, &f->nhd, f->stage,
						   f->stage_nbytes), SHADOW_EUNSUPPORTED);

	/* Keys un-rotated with RoPE frequencies, at a chunk far into the sequence: the rotation
	 * is an isometry, so the same bound holds, and the chunk index travels in the header. */
	float inv_freq[64];
	struct shadow_transform *rt;
	assert_int_equal(shadow_rope_inv_freq(500000.0, f->geom.head_dim, inv_freq), 0);
	assert_int_equal(shadow_transform_calibrate(&f->geom, f->region_nhd, &f->nhd, f->block_ids,
						    n_ids, inv_freq, &rt), 0);
	assert_int_equal(shadow_codec_set_transform(f->codec, rt), 0);
	f->chunk_index = 37;
	roundtrip(f, "pca-s0.05+zstd1", 1.0, 0.5);
	n = encode(f, "pca-s0.05+zstd1");
	assert_int_equal(shadow_chunk_parse(f->buf, n, &f->key, &f->geom, &v), 0);
	assert_int_equal(v.chunk_index, 37);
	f->chunk_index = 0;
	assert_int_equal(shadow_codec_set_transform(f->codec, NULL), 0);
	shadow_transform_free(rt);

	/* A transform of another geometry is refused. */
	struct shadow_kv_geometry g2 = f->geom;
	g2.n_layers = 1;
	struct shadow_codec *c2;
	assert_int_equal(shadow_codec_create(&g2, &c2), 0);
	assert_int_equal(shadow_codec_set_transform(c2, t), SHADOW_EGEOMETRY);
	shadow_codec_free(c2);
	shadow_transform_free(other);
	shadow_transform_free(t);
}

static void test_parse_rejects_truncation(void **state)
{
	struct fixture *f = *state;
	size_t n = encode(f, "bits4+zstd1");
	struct shadow_chunk_view v;
	uint32_t meta;
	uint64_t total;
	assert_int_equal(shadow_chunk_peek(f->buf, n, &meta, &total), 0);
	assert_int_equal(total, n);
	for (size_t cut = 0; cut < meta; cut += (cut < 200 ? 1 : 97))
		assert_int_equal(shadow_chunk_parse(f->buf, cut, NULL, NULL, &v), SHADOW_ETRUNCATED);
	/* Metadata complete, payloads not yet: parse succeeds (streaming). */
	assert_int_equal(shadow_chunk_parse(f->buf, meta, NULL, NULL, &v), 0);
}

static void test_every_bit_flip_is_caught(void **state)
{
	struct fixture *f = *state;
	size_t n = encode(f, "bits4-g64+deflate1");
	uint8_t *copy = malloc(n);
	assert_non_null(copy);
	size_t caught_parse = 0, caught_decode = 0, harmless = 0;
	uint32_t meta;
	uint64_t total;
	assert_int_equal(shadow_chunk_peek(f->buf, n, &meta, &total), 0);

	/* What the pristine container decodes to. */
	struct shadow_chunk_view v;
	assert_int_equal(shadow_chunk_parse(f->buf, n, &f->key, &f->geom, &v), 0);
	memset(f->out_nhd, 0, f->nhd.region_nbytes);
	assert_int_equal(decode_all(f, &v, &f->nhd, f->out_nhd), 0);

	/* Every bit of the metadata, and a sample of payload bits. */
	for (size_t bit = 0; bit < 8 * n; bit += bit < 8 * (size_t)meta ? 1 : 211) {
		memcpy(copy, f->buf, n);
		copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		int err = shadow_chunk_parse(copy, n, &f->key, &f->geom, &v);
		if (err != 0) {
			assert_true(err == SHADOW_ECORRUPT || err == SHADOW_EVERSION ||
				    err == SHADOW_ETRUNCATED);
			caught_parse++;
			continue;
		}
		memset(f->out_hnd, 0, f->nhd.region_nbytes);
		err = decode_all(f, &v, &f->nhd, f->out_hnd);
		if (err == SHADOW_ECORRUPT) {
			caught_decode++;
			continue;
		}
		/* A flip the decoder cannot see (DEFLATE's padding bits after the final block)
		 * must leave the decoded KV exactly as it was. */
		assert_int_equal(err, 0);
		if (memcmp(f->out_hnd, f->out_nhd, f->nhd.region_nbytes) != 0)
			fail_msg("bit %zu flipped (byte %zu of %zu) changed KV undetected", bit,
				 bit / 8, n);
		harmless++;
	}
	assert_true(caught_parse >= 8 * (size_t)meta);
	assert_true(caught_decode > 0);
	assert_true(harmless < caught_decode / 100 + 1);
	free(copy);
}

/* Rewrite a header field and reseal the checksum: a forged container a checksum can't catch. */
static void forge(uint8_t *buf, size_t off, uint32_t value)
{
	uint32_t meta;
	uint64_t total;
	shadow__store_le32(buf + off, value);
	if (shadow_chunk_peek(buf, SHADOW_CHUNK_HEADER_NBYTES, &meta, &total) != 0)
		return;
	struct shadow_chunk_view fields = { 0 };
	fields.meta_nbytes = meta;
	fields.total_nbytes = total;
	memcpy(fields.key.bytes, buf + CHUNK_OFF_KEY, SHADOW_KEY_NBYTES);
	fields.geom.n_layers = shadow__load_le32(buf + CHUNK_OFF_N_LAYERS);
	fields.geom.n_kv_heads = shadow__load_le32(buf + CHUNK_OFF_N_KV_HEADS);
	fields.geom.head_dim = shadow__load_le32(buf + CHUNK_OFF_HEAD_DIM);
	fields.geom.dtype = shadow__load_le32(buf + CHUNK_OFF_DTYPE);
	fields.geom.chunk_tokens = shadow__load_le32(buf + CHUNK_OFF_CHUNK_TOKENS);
	fields.n_tokens = shadow__load_le32(buf + CHUNK_OFF_N_TOKENS);
	fields.n_frames = shadow__load_le32(buf + CHUNK_OFF_N_FRAMES);
	shadow__chunk_seal(buf, &fields);
}

static void test_forged_fields_are_rejected(void **state)
{
	struct fixture *f = *state;
	size_t n = encode(f, "bits4+zstd1");
	uint8_t *copy = malloc(n);
	assert_non_null(copy);
	static const struct {
		size_t off;
		uint32_t value;
	} forged[] = {
		{ CHUNK_OFF_N_FRAMES, 0xffffffffu }, { CHUNK_OFF_N_FRAMES, 4 },
		{ CHUNK_OFF_N_LAYERS, 100000 },      { CHUNK_OFF_N_TOKENS, 255 },
		{ CHUNK_OFF_HEAD_DIM, 0 },           { CHUNK_OFF_HEAD_DIM, 64 },
		{ CHUNK_OFF_DTYPE, 9 },              { CHUNK_OFF_CHUNK_TOKENS, 0 },
		{ CHUNK_OFF_META_NBYTES, 0xffffff00u }, { CHUNK_OFF_META_NBYTES, 100 },
		{ CHUNK_OFF_TOTAL_NBYTES, 1 },
		/* frame 0's entry: payload offset, sizes, quant, bits, group */
		{ SHADOW_CHUNK_HEADER_NBYTES + 0, 5 }, { SHADOW_CHUNK_HEADER_NBYTES + 8, 0x7fffffffu },
		{ SHADOW_CHUNK_HEADER_NBYTES + 12, 12 }, { SHADOW_CHUNK_HEADER_NBYTES + 16, 3 },
		{ SHADOW_CHUNK_HEADER_NBYTES + 20, 0xfffffff0u },
		{ SHADOW_CHUNK_HEADER_NBYTES + 24, 0x0009ff02u }, /* quant 2, bits 0xff */
		{ SHADOW_CHUNK_HEADER_NBYTES + 28, 0 },            /* group 0 */
		{ SHADOW_CHUNK_HEADER_NBYTES + 28, 0xffff },       /* group > tokens */
	};
	for (size_t i = 0; i < sizeof(forged) / sizeof(forged[0]); i++) {
		memcpy(copy, f->buf, n);
		forge(copy, forged[i].off, forged[i].value);
		struct shadow_chunk_view v;
		int err = shadow_chunk_parse(copy, n, NULL, NULL, &v);
		if (err == 0)
			fail_msg("forged field at %zu = %#x accepted", forged[i].off, forged[i].value);
	}
	free(copy);
}

static void test_wrong_key_and_geometry(void **state)
{
	struct fixture *f = *state;
	size_t n = encode(f, "int8+zstd1");
	struct shadow_chunk_view v;
	struct shadow_chunk_key other = f->key;
	other.bytes[31] ^= 1;
	assert_int_equal(shadow_chunk_parse(f->buf, n, &other, NULL, &v), SHADOW_EKEYMISMATCH);
	struct shadow_kv_geometry g = f->geom;
	g.n_layers++;
	assert_int_equal(shadow_chunk_parse(f->buf, n, &f->key, &g, &v), SHADOW_EGEOMETRY);
	g = f->geom;
	g.chunk_tokens = 512;
	assert_int_equal(shadow_chunk_parse(f->buf, n, &f->key, &g, &v), SHADOW_EGEOMETRY);
	/* A view of another geometry does not decode with this codec. */
	assert_int_equal(shadow_chunk_parse(f->buf, n, NULL, NULL, &v), 0);
	v.geom.head_dim = 64;
	assert_int_equal(shadow_chunk_decode_frame(f->codec, &v, 0, &f->nhd, f->stage,
						   f->stage_nbytes), -EINVAL);
	assert_int_equal(shadow_chunk_parse(f->buf, n, NULL, NULL, &v), 0);
	assert_int_equal(shadow_chunk_decode_frame(f->codec, &v, v.n_frames, &f->nhd, f->stage,
						   f->stage_nbytes), -EINVAL);
	assert_int_equal(shadow_chunk_decode_frame(f->codec, &v, 0, &f->nhd, f->stage,
						   f->stage_nbytes - 1), -EINVAL);
}

static void test_options_names(void **state)
{
	(void)state;
	static const char *const good[] = {
		"bf16+none", "bf16planes+zstd1", "int8+zstd3", "bits4-g64+deflate6",
		"bits3-g32-c64-s0.75+zstd1", "bits5-L0=8/8-L2=4/4+none", "int8-L0=8/6+zstd19",
		"ecsq-s0.25+zstd1", "ecsq-s0.5-k16x1-v256x128+deflate", "bits4-k64x2-v1x64+none",
		"pca-s0.08+zstd1",
		"bits4-k0x2+none",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct shadow_codec_options o, o2;
		char name[256];
		assert_int_equal(shadow_codec_options_parse(good[i], &o), 0);
		int len = shadow_codec_options_name(&o, name, sizeof(name));
		assert_true(len > 0);
		assert_int_equal(shadow_codec_options_parse(name, &o2), 0);
		assert_memory_equal(&o, &o2, sizeof(o));
	}
	static const char *const bad[] = {
		"", "bf16", "+none", "bf16+", "bf16+zstd", "bf16+zstd0", "bf16+zstd20",
		"bits1+none", "bits8+none", "bits9+none", "int4+none", "bf16-g4+none",
		"bits4-g0+none", "bits4-x3+none", "bits4-L0=9/4+none", "bits4-L2=4/4-L1=4/4+none",
		"bits4+deflate13", "bits4+lz4", "bits4-s-1+none", "bf16+none ",
		"ecsq+zstd1", "ecsq-L1=4/4-s0.5+none", "bits4-k4+none", "bits4-v4x+none",
		"pca+zstd1", "pca-g4-s0.5+zstd1",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct shadow_codec_options o;
		if (shadow_codec_options_parse(bad[i], &o) == 0)
			fail_msg("scheme '%s' accepted", bad[i]);
	}
	char small[4];
	struct shadow_codec_options o;
	assert_int_equal(shadow_codec_options_parse("int8+zstd3", &o), 0);
	assert_int_equal(shadow_codec_options_name(&o, small, sizeof(small)), -ENOBUFS);
	/* An old caller's smaller struct: later fields take defaults. */
	o.sizeof_options = offsetof(struct shadow_codec_options, k_group_tokens);
	struct shadow_kv_geometry g;
	struct shadow_codec *c;
	assert_int_equal(shadow_geometry_preset("minillama-h128", &g), 0);
	assert_int_equal(shadow_codec_create(&g, &c), 0);
	assert_true(shadow_chunk_encode_bound(c, &o) > 0);
	o.sizeof_options = 4;
	assert_int_equal(shadow_chunk_encode_bound(c, &o), 0);
	shadow_codec_free(c);
}

static void test_describe(void **state)
{
	struct fixture *f = *state;
	size_t n = encode(f, "bits4+zstd1");
	char text[8192];
	int len = shadow_chunk_describe(f->buf, n, text, sizeof(text));
	assert_true(len > 0);
	assert_non_null(strstr(text, "uniform"));
	assert_non_null(strstr(text, "zstd"));
	assert_int_equal(shadow_chunk_describe(f->buf, n, text, 16), -ENOBUFS);
}

/* Seeds for fuzz/chunk_decode: 2 layers, 1 KV head, head_dim 32, 32-token chunks. */
static void write_fuzz_seeds(const char *dir)
{
	static const char *const schemes[] = {
		"bf16+none", "bf16+deflate1", "bf16planes+zstd1", "int8+zstd1", "bits4+none",
		"bits3-g8-c16+deflate6", "bits5-s0.5-L1=3/3+zstd3", "ecsq-s0.1+zstd1",
		"ecsq-s0.5-k8x4-v16x8+none",
	};
	struct shadow_kv_geometry g = { .n_layers = 2, .n_kv_heads = 1, .head_dim = 32,
					.dtype = SHADOW_DTYPE_BF16, .block_tokens = 16,
					.chunk_tokens = 32 };
	struct shadow_kv_layout layout;
	struct shadow_codec *c;
	uint64_t region_nbytes = 4ull * 16 * 32 * 2 * 2 * 2;
	uint8_t *region = malloc(region_nbytes), buf[65536];
	uint32_t ids[2] = { 3, 1 };
	struct shadow_chunk_key key = { { 7 } };
	uint64_t seed = 1;

	if (region == NULL || shadow_layout_init(&layout, &g, SHADOW_LAYOUT_NHD, 4, 0, region_nbytes) != 0 ||
	    shadow_codec_create(&g, &c) != 0)
		abort();
	for (uint64_t i = 0; i < region_nbytes / 2; i++) {
		uint16_t b = shadow__float_to_bf16(gauss(&seed));
		memcpy(region + 2 * i, &b, 2);
	}
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		struct shadow_codec_options o;
		size_t n;
		char path[512];
		int err = shadow_codec_options_parse(schemes[i], &o);
		if (err == 0)
			err = shadow_chunk_encode(c, &o, &key, 0, region, &layout, ids, buf, sizeof(buf), &n);
		if (err != 0) {
			fprintf(stderr, "seed %s: %s\n", schemes[i], shadow_strerror(err));
			exit(1);
		}
		int len = snprintf(path, sizeof(path), "%s/", dir);
		for (const char *p = schemes[i]; *p != '\0' && len < (int)sizeof(path) - 1; p++)
			path[len++] = *p == '/' ? '_' : *p; /* "L1=3/3" is not a file name */
		path[len] = '\0';
		FILE *fp = fopen(path, "wb");
		if (fp == NULL || fwrite(buf, 1, n, fp) != n)
			abort();
		fclose(fp);
	}
	shadow_codec_free(c);
	free(region);
}

int main(void)
{
	const char *seeds = getenv("SHADOW_WRITE_SEEDS");
	if (seeds != NULL)
		write_fuzz_seeds(seeds);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_options_names),
		cmocka_unit_test_setup_teardown(test_lossless_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lossy_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pca_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_parse_rejects_truncation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_every_bit_flip_is_caught, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forged_fields_are_rejected, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_key_and_geometry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_describe, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
