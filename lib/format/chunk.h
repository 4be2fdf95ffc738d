/*
 * chunk.h - internal: the chunk container's wire format (docs/format.md), shared by the
 * parser (chunk.c) and the encoder (codec/chunk_codec.c). Byte layout:
 *
 *   0                     96                 96 + 40 n          meta_nbytes        total_nbytes
 *   +---------------------+------------------+------------------+-----+-----+-...-+
 *   | header              | frame table      | params (per      | payload 0 | ... |
 *   | magic, version, key,| n = 2 n_layers   | frame: bf16 scale| (L0 K)    |     |
 *   | geometry, sizes,    | entries of 40 B  | then bias), 8-B  |           |     |
 *   | metadata checksum   |                  | aligned end      |           |     |
 *   +---------------------+------------------+------------------+-----------+-...-+
 *   <------------------ metadata: one XXH3-64 ------------------> <- each payload: XXH3-64
 *                                                                    of its raw bytes ->
 */
#ifndef SHADOW_FORMAT_CHUNK_H
#define SHADOW_FORMAT_CHUNK_H

#include <stdint.h>
#include <string.h>

#include "core/common.h"
#include "core/endian.h"

#define SHADOW_CHUNK_MAGIC 0x434b4853u /* "SHKC" */
#define SHADOW_CHUNK_VERSION 1u
#define SHADOW_CHUNK_ENTRY_NBYTES 40u
/* Metadata larger than this is refused before anything else is read. */
#define SHADOW_CHUNK_META_MAX (16u << 20)
#define SHADOW_CHUNK_FLAG_PACKED 1u /* uniform symbols are bit-packed */

/* Header field offsets. */
enum {
	CHUNK_OFF_MAGIC = 0,
	CHUNK_OFF_VERSION = 4,
	CHUNK_OFF_HEADER_NBYTES = 6,
	CHUNK_OFF_META_NBYTES = 8,
	CHUNK_OFF_FLAGS = 12,
	CHUNK_OFF_TOTAL_NBYTES = 16,
	CHUNK_OFF_KEY = 24,
	CHUNK_OFF_N_LAYERS = 56,
	CHUNK_OFF_N_KV_HEADS = 60,
	CHUNK_OFF_HEAD_DIM = 64,
	CHUNK_OFF_DTYPE = 68,
	CHUNK_OFF_CHUNK_TOKENS = 72,
	CHUNK_OFF_N_TOKENS = 76,
	CHUNK_OFF_N_FRAMES = 80,
	CHUNK_OFF_CHUNK_INDEX = 84,
	CHUNK_OFF_CHECKSUM = 88,
};

/* One frame table entry, as numbers. */
struct shadow__frame_entry {
	uint64_t payload_offset;
	uint32_t payload_nbytes;
	uint32_t raw_nbytes;
	uint32_t params_offset;
	uint32_t params_nbytes;
	uint8_t quant;
	uint8_t bits;
	uint8_t codec;
	uint8_t flags;
	uint16_t group_tokens;   /* uniform, ecsq: tokens per scale group; else 0 */
	uint16_t group_channels; /* uniform, ecsq: channels per scale group; else 0 */
	uint64_t raw_checksum;
};

/*
 * The sizes a frame must have: the one rule both the encoder and the parser follow. For a
 * frame with these fields (quant, bits, flags, group_tokens, group_channels as in the entry)
 * in a chunk of n_tokens tokens of `geom`, sets *raw_nbytes_ret (after the lossless stage) and
 * *params_nbytes_ret. Returns 0, or SHADOW_ECORRUPT when the combination is not a valid v1
 * frame (unknown quant, bits out of range, a group that does not fit, flags on a quant that
 * has none).
 */
int shadow__frame_sizes(const struct shadow_kv_geometry *geom, uint32_t n_tokens,
			const struct shadow__frame_entry *e, uint32_t *raw_nbytes_ret,
			uint32_t *params_nbytes_ret) SHADOW_INTERNAL;

/* Read entry i of a parsed view (the parser has validated every entry). */
void shadow__frame_entry_read(const struct shadow_chunk_view *view, uint32_t i,
			      struct shadow__frame_entry *e) SHADOW_INTERNAL;

/* Write entry i into a container being built at `base`. */
void shadow__frame_entry_write(uint8_t *base, uint32_t i, const struct shadow__frame_entry *e)
	SHADOW_INTERNAL;

/*
 * Write the header of a container being built at `base` for view fields (key, geometry,
 * n_tokens, n_frames, meta_nbytes, total_nbytes), then the metadata checksum over the header,
 * the frame table and the params already in place. Call last, once every entry is written.
 */
void shadow__chunk_seal(uint8_t *base, const struct shadow_chunk_view *fields) SHADOW_INTERNAL;

/* XXH3-64 of a frame's raw bytes (the frame checksum). */
uint64_t shadow__raw_checksum(const void *raw, size_t nbytes) SHADOW_INTERNAL;

#endif /* SHADOW_FORMAT_CHUNK_H */
