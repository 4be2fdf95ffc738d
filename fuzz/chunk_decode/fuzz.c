/*
 * fuzz/chunk_decode - a container read from a store is untrusted: parse it, then decode every
 * frame into NHD and HND staging images. Nothing may read or write outside the input or the
 * staging buffer, crash, or hang; a frame that decodes must have matched its checksum.
 *
 * Seeds: containers of several schemes in a small geometry (2 layers, 1 KV head, head_dim 32,
 * 32-token chunks), written by `SHADOW_WRITE_SEEDS=DIR test_chunk`. Inputs of another geometry
 * are parsed (the parser must reject or accept them safely) but not decoded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <shadow/shadow.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct shadow_codec *codec;
static struct shadow_kv_geometry geom;
static struct shadow_kv_layout nhd, hnd;
static uint8_t *stage;
static size_t stage_nbytes;

static int init(void)
{
	geom = (struct shadow_kv_geometry){ .n_layers = 2, .n_kv_heads = 1, .head_dim = 32,
					    .dtype = SHADOW_DTYPE_BF16, .block_tokens = 16,
					    .chunk_tokens = 32 };
	uint64_t region = 4ull * 16 * 32 * 2 * 2 * 2;
	if (shadow_layout_init(&nhd, &geom, SHADOW_LAYOUT_NHD, 4, 0, region) != 0 ||
	    shadow_layout_init(&hnd, &geom, SHADOW_LAYOUT_HND, 4, 0, region) != 0 ||
	    shadow_codec_create(&geom, &codec) != 0)
		return -1;
	stage_nbytes = (size_t)geom.chunk_tokens * geom.n_kv_heads * geom.head_dim * 2;
	stage = malloc(stage_nbytes);
	return stage != NULL ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready = -1;
	if (ready < 0)
		ready = init() == 0;
	if (!ready)
		abort();

	/* A private copy, so an overread past `size` is caught by ASan. */
	uint8_t *buf = malloc(size ? size : 1);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);

	struct shadow_chunk_view v;
	uint32_t meta;
	uint64_t total;
	(void)shadow_chunk_peek(buf, size, &meta, &total);
	if (shadow_chunk_parse(buf, size, NULL, &geom, &v) == 0 && v.total_nbytes <= size) {
		for (uint32_t f = 0; f < v.n_frames; f++) {
			struct shadow_frame_info info;
			if (shadow_chunk_frame_info(&v, f, &info) != 0)
				abort();
			(void)shadow_chunk_decode_frame(codec, &v, f, f % 2 ? &hnd : &nhd, stage,
							stage_nbytes);
		}
		char text[4096];
		(void)shadow_chunk_describe(buf, size, text, sizeof(text));
	}
	free(buf);
	return 0;
}
