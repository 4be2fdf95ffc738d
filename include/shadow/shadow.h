/*
 * shadow.h - the public interface of libshadow, the ShadowServe library.
 *
 * ShadowServe fetches compressed KV-cache chunks of shared prompt prefixes from a store,
 * decodes them off the serving engine's GPU and CPU, and copies them into the engine's paged
 * KV memory. This header is the contract for everything the library exports: KV geometry and
 * paged layouts, chunk keys, the chunk container and its codecs, stores, status codes and
 * logging. (The pipeline section arrives with its subsystem.)
 *
 * Conventions, for every function below unless it says otherwise:
 *  - Functions that can fail return 0 on success or a negative status code: either -errno
 *    (e.g. -EINVAL for a bad argument, -ENOMEM) or one of the SHADOW_E* codes below.
 *    shadow_strerror() turns any of them into text.
 *  - Pointer arguments must not be NULL unless the description says NULL is accepted.
 *  - Output arguments come last and end in _ret; they are written only on success.
 *  - Sizes are named with their unit: _nbytes, _tokens.
 *  - Functions are thread-safe: they keep no hidden state, except where noted (logging setup).
 *  - Nothing here aborts the process on bad input or on a runtime failure.
 */
#ifndef SHADOW_SHADOW_H
#define SHADOW_SHADOW_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h> /* struct iovec */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SHADOW_BUILDING_LIB)
#define SHADOW_API __attribute__((visibility("default")))
#else
#define SHADOW_API
#endif

#define SHADOW_VERSION_MAJOR 0
#define SHADOW_VERSION_MINOR 1
#define SHADOW_VERSION_PATCH 0

/* The library's version as "MAJOR.MINOR.PATCH". The string is static. */
SHADOW_API const char *shadow_version(void);

/* ------------------------------------------------------------------------------------------ */
/* Status codes                                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * Project status codes. They live below -10000 so they never collide with -errno values,
 * which the library passes through unchanged (-EINVAL, -ENOMEM, -ETIMEDOUT, ...).
 */
enum shadow_status {
	SHADOW_OK = 0,
	SHADOW_ECORRUPT = -10001,     /* data failed a checksum or a structural check */
	SHADOW_ETRUNCATED = -10002,   /* input ended before the structure it describes */
	SHADOW_EVERSION = -10003,     /* unknown format or protocol version */
	SHADOW_EGEOMETRY = -10004,    /* KV geometry or layout invalid, or not the expected one */
	SHADOW_EKEYMISMATCH = -10005, /* a chunk was stored under another key */
	SHADOW_EMISS = -10006,        /* the key is not in the store */
	SHADOW_ENOGPU = -10007,       /* no CUDA module, no driver, or no GPU */
	SHADOW_ECUDA = -10008,        /* a CUDA call failed (the log says which) */
	SHADOW_EPROTO = -10009,       /* a peer broke the protocol */
	SHADOW_EUNSUPPORTED = -10010, /* well-formed, but not supported by this build */
	SHADOW_ELIMIT = -10011,       /* a configured limit would be exceeded */
	SHADOW_ECODEC = -10012,       /* a compression library failed (the log says which) */
	SHADOW_EUNKNOWN_NAME = -10013, /* a name (preset, scheme, URL scheme) is not known */
	SHADOW_ESERVER = -10014       /* a server answered with an error (the log says which) */
};

/*
 * Text for a status code: 0, any -errno value, or a SHADOW_E* code. Never returns NULL; an
 * unknown code gives "unknown error". The returned string is static and thread-safe to use.
 */
SHADOW_API const char *shadow_strerror(int status);

/* ------------------------------------------------------------------------------------------ */
/* Logging                                                                                    */
/* ------------------------------------------------------------------------------------------ */

enum shadow_log_level {
	SHADOW_LOG_ERROR = 0,
	SHADOW_LOG_WARN = 1,
	SHADOW_LOG_INFO = 2,
	SHADOW_LOG_DEBUG = 3
};

/*
 * Messages at or below `level` are emitted (default SHADOW_LOG_WARN, or the SHADOW_LOG_LEVEL
 * environment variable: error, warn, info or debug). May be called from any thread at any
 * time; takes effect for messages logged after it returns.
 */
SHADOW_API void shadow_log_set_level(enum shadow_log_level level);
SHADOW_API enum shadow_log_level shadow_log_get_level(void);

/*
 * Where log lines go. `fn` receives one complete line without a trailing newline; it may be
 * called from any library thread, concurrently, so it must be thread-safe. NULL restores the
 * default (stderr, one write(2) per line). `ctx` is passed through. Set this before starting
 * threads that log; it is not synchronised against concurrent logging.
 */
typedef void (*shadow_log_fn)(void *ctx, enum shadow_log_level level, const char *line);
SHADOW_API void shadow_log_set_handler(shadow_log_fn fn, void *ctx);

/* ------------------------------------------------------------------------------------------ */
/* KV geometry                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Element types of a KV cache. The numeric values are part of the key scheme and formats. */
enum shadow_dtype {
	SHADOW_DTYPE_BF16 = 1,
	SHADOW_DTYPE_FP16 = 2,
	SHADOW_DTYPE_FP32 = 3,
	SHADOW_DTYPE_FP8_E4M3 = 4
};

#define SHADOW_MAX_LAYERS 256u
#define SHADOW_MAX_KV_HEADS 256u
#define SHADOW_MAX_HEAD_DIM 1024u
#define SHADOW_MAX_BLOCK_TOKENS 4096u
#define SHADOW_MAX_CHUNK_TOKENS 65536u
#define SHADOW_DEFAULT_CHUNK_TOKENS 256u

/*
 * The shape of a model's KV cache. A "frame" is one layer's K or V for all tokens of one
 * chunk: chunk_tokens x n_kv_heads x head_dim elements.
 */
struct shadow_kv_geometry {
	uint32_t n_layers;     /* 1 .. SHADOW_MAX_LAYERS */
	uint32_t n_kv_heads;   /* 1 .. SHADOW_MAX_KV_HEADS */
	uint32_t head_dim;     /* 1 .. SHADOW_MAX_HEAD_DIM */
	uint32_t dtype;        /* enum shadow_dtype */
	uint32_t block_tokens; /* tokens per paged-cache block, 1 .. SHADOW_MAX_BLOCK_TOKENS */
	uint32_t chunk_tokens; /* tokens per chunk, a multiple of block_tokens, <= 65536 */
};

/* Size in bytes of one element of `dtype`, or 0 if `dtype` is not a known enum shadow_dtype. */
SHADOW_API size_t shadow_dtype_nbytes(uint32_t dtype);

/* "bf16", "fp16", "fp32", "fp8_e4m3", or NULL for an unknown dtype. Static string. */
SHADOW_API const char *shadow_dtype_name(uint32_t dtype);

/*
 * Fill *geom_ret with a named preset: "llama3-8b", "llama3-70b", "mistral-7b", "qwen2.5-7b",
 * "minillama-h128" (the model behind the shared real KV dumps). Presets use bf16, 16-token
 * blocks and SHADOW_DEFAULT_CHUNK_TOKENS-token chunks; callers may change those fields after.
 * Returns 0, or SHADOW_EUNKNOWN_NAME.
 */
SHADOW_API int shadow_geometry_preset(const char *name, struct shadow_kv_geometry *geom_ret);

/*
 * The names of the presets, for listing: *names_ret points to a static array of *count_ret
 * static strings.
 */
SHADOW_API void shadow_geometry_preset_names(const char *const **names_ret, size_t *count_ret);

/*
 * 0 if every field is in range and chunk_tokens is a multiple of block_tokens, else
 * SHADOW_EGEOMETRY. Every function taking a geometry validates it.
 */
SHADOW_API int shadow_geometry_validate(const struct shadow_kv_geometry *geom);

/* Bytes of one frame (chunk_tokens x n_kv_heads x head_dim elements); 0 if geom is invalid. */
SHADOW_API uint64_t shadow_geometry_frame_nbytes(const struct shadow_kv_geometry *geom);

/* Bytes of the KV of one token over all layers, K and V; 0 if geom is invalid. */
SHADOW_API uint64_t shadow_geometry_token_nbytes(const struct shadow_kv_geometry *geom);

/* ------------------------------------------------------------------------------------------ */
/* Paged KV layout                                                                            */
/* ------------------------------------------------------------------------------------------ */

/*
 * Where each element of a paged KV cache lives inside one memory region (a GPU allocation
 * exported by the engine, or shared host memory). All addresses are byte offsets from the
 * start of the region, so a descriptor means the same thing in every process that maps it.
 *
 * The element (layer l, kind kv, block b, token-in-block t, head h, element d) is at
 *
 *     base[l][kv] + b * block_stride + t * token_stride + h * head_stride + d * elem_stride
 *
 * which covers vLLM-style NHD ([block][token][head][dim]) and HND ([block][head][token][dim])
 * caches, one tensor per layer with K and V apart or together, and one cross-layer tensor
 * ([block][layer][kv][...]) whose per-layer bases differ by a fixed step. Strides are signed
 * only so that arithmetic on them is natural; a valid layout has all strides > 0.
 */
enum shadow_kv_kind { SHADOW_KV_K = 0, SHADOW_KV_V = 1 };

struct shadow_kv_layout {
	uint64_t region_nbytes; /* size of the region; every element must lie inside it */
	uint32_t n_layers;      /* must equal the geometry's n_layers */
	uint32_t n_blocks;      /* blocks in the cache: valid block ids are 0 .. n_blocks-1 */
	int64_t block_stride;   /* bytes between consecutive blocks */
	int64_t token_stride;   /* bytes between consecutive tokens of a block */
	int64_t head_stride;    /* bytes between consecutive KV heads */
	int64_t elem_stride;    /* bytes between elements of a head; must equal the dtype size */
	uint64_t base[SHADOW_MAX_LAYERS][2]; /* [layer][SHADOW_KV_K or SHADOW_KV_V]; entries
					      * for layers >= n_layers are ignored */
};

/* Standard layouts that shadow_layout_init() builds. */
enum shadow_layout_kind {
	/* one tensor per layer, [2][n_blocks][block_tokens][n_kv_heads][head_dim] (vLLM
	 * flash-attn); layer l's tensor starts at l * its size */
	SHADOW_LAYOUT_NHD = 1,
	/* one tensor per layer, [2][n_blocks][n_kv_heads][block_tokens][head_dim] */
	SHADOW_LAYOUT_HND = 2,
	/* one tensor for all layers, [n_blocks][n_layers][2][block_tokens][n_kv_heads][head_dim]:
	 * one block holds every layer's K and V for its tokens */
	SHADOW_LAYOUT_CROSS_LAYER_NHD = 3
};

/*
 * Build a standard layout for `n_blocks` blocks of `geom` in a region of `region_nbytes` bytes,
 * the cache starting at offset `region_offset` of it (docs/layout.md draws all three). Returns
 * 0, SHADOW_EGEOMETRY if geom is invalid or the cache does not fit in the region (or does not
 * end below 2^63), -EINVAL for an unknown kind or n_blocks 0. The result passes
 * shadow_layout_validate().
 */
SHADOW_API int shadow_layout_init(struct shadow_kv_layout *layout_ret,
				  const struct shadow_kv_geometry *geom,
				  enum shadow_layout_kind kind, uint32_t n_blocks,
				  uint64_t region_offset, uint64_t region_nbytes);

/*
 * Check a layout against a geometry: n_layers matches, n_blocks >= 1, strides are positive,
 * elem_stride is the dtype size, every element of every block lies inside the region and below
 * 2^63 (computed without overflow), and within one (layer, kind) no two head vectors overlap:
 * inside a block the vectors nest token-major (head_stride <= token_stride) or head-major, the
 * inner stride is at least one head vector and the outer stride at least one row of them, and
 * block_stride is at least a block's span (a dimension of extent 1 puts no limit on its stride).
 * Vectors of different layers or kinds may still overlap; that is the client's business.
 * Layouts come from clients, so the daemon calls this before trusting one; it is safe on any
 * input. Returns 0 or SHADOW_EGEOMETRY (also for a NULL layout or an invalid geometry).
 */
SHADOW_API int shadow_layout_validate(const struct shadow_kv_layout *layout,
				      const struct shadow_kv_geometry *geom);

/*
 * Byte offset in the region of element 0 of head `head` of token `token_in_block` of block
 * `block` for (layer, kind). The layout must have passed shadow_layout_validate(); returns
 * -EINVAL (as int64_t) if any index is out of range or geom is invalid.
 */
SHADOW_API int64_t shadow_layout_offset(const struct shadow_kv_layout *layout,
					const struct shadow_kv_geometry *geom, uint32_t layer,
					enum shadow_kv_kind kind, uint32_t block,
					uint32_t token_in_block, uint32_t head);

/*
 * The copy plan of one frame.
 *
 * The data plane decodes a frame (one layer's K or V of one chunk) into a staging buffer
 * whose bytes are arranged exactly as the destination wants them, then copies that buffer
 * into the region with a few large copies ("runs"). The staging image is the concatenation,
 * in block-table order, of each block's head vectors in the order of increasing address in
 * the region (the block-internal order of shadow_layout_validate), with the gaps between them
 * squeezed out: block i of the table fills bytes [i * B, (i + 1) * B) of the image, B =
 * block_tokens * n_kv_heads * head_dim * element size. Where a block's vectors for
 * (layer, kind) are contiguous in the region (NHD, HND and cross-layer caches all are), one
 * block is one run; otherwise a run is a maximal group of adjacent vectors. Consecutive runs
 * that are adjacent in the region too are merged into one. The runs are in image order and
 * cover the image exactly once; the plan depends only on its arguments.
 *
 * shadow_layout_stage_offset() says where the head vector (token, head) of a frame lies in
 * the staging image, so that the dequantizer writes it there directly.
 */
struct shadow_copy_run {
	uint64_t src_offset; /* offset in the staging image */
	uint64_t dst_offset; /* offset in the region */
	uint64_t nbytes;
};

/*
 * Plan the copy of frame (layer, kind) of a chunk whose tokens live in the blocks
 * `block_ids[0 .. n_block_ids-1]` (n_block_ids must equal chunk_tokens / block_tokens of the
 * geometry, each id < n_blocks). Writes at most `max_runs` runs into `runs_ret` and their
 * count into *n_runs_ret. The layout must have passed shadow_layout_validate() against geom.
 * runs_ret may be NULL when max_runs is 0 (to ask for the count). Allocates nothing; the work
 * is proportional to n_block_ids plus the number of runs. A block id may repeat (that block
 * is then copied twice).
 *
 * Returns 0; SHADOW_EGEOMETRY if geom is invalid; -EINVAL for an out-of-range argument or
 * block id; -ENOBUFS if more than max_runs runs are needed (*n_runs_ret then holds the number
 * needed and runs_ret[0 .. max_runs-1] are unspecified). A chunk never needs more than
 * n_block_ids * block_tokens * n_kv_heads runs.
 */
SHADOW_API int shadow_layout_plan_frame(const struct shadow_kv_layout *layout,
					const struct shadow_kv_geometry *geom, uint32_t layer,
					enum shadow_kv_kind kind, const uint32_t *block_ids,
					uint32_t n_block_ids, struct shadow_copy_run *runs_ret,
					size_t max_runs, size_t *n_runs_ret);

/*
 * Offset in the staging image of a frame (see shadow_layout_plan_frame) of element 0 of
 * (token_in_chunk, head); element d of that head vector follows at d * element size. That is
 * (token_in_chunk / block_tokens) * B + rank * head_dim * element size, where rank is
 * t * n_kv_heads + head for a token-major block and head * block_tokens + t for a head-major
 * one (t = token_in_chunk % block_tokens). Depends only on the layout's strides and the
 * geometry, not on block ids or the layer, so one table serves every frame of a registered
 * region. Returns -EINVAL (as int64_t) if an index is out of range, geom is invalid or a
 * stride is not positive.
 */
SHADOW_API int64_t shadow_layout_stage_offset(const struct shadow_kv_layout *layout,
					      const struct shadow_kv_geometry *geom,
					      uint32_t token_in_chunk, uint32_t head);

/* ------------------------------------------------------------------------------------------ */
/* Chunk keys (docs/keys.md is the specification)                                             */
/* ------------------------------------------------------------------------------------------ */

#define SHADOW_KEY_NBYTES 32u
/* Longest store key prefix accepted, and the printable store key size including the NUL. */
#define SHADOW_KEY_PREFIX_MAX 64u
#define SHADOW_STORE_KEY_MAX (SHADOW_KEY_PREFIX_MAX + 1u + 2u * SHADOW_KEY_NBYTES + 1u)
#define SHADOW_DEFAULT_KEY_PREFIX "shadow:v1"

struct shadow_chunk_key {
	uint8_t bytes[SHADOW_KEY_NBYTES]; /* a SHA-256 digest */
};

/*
 * The namespace key, key_{-1} = SHA-256 of the namespace record (docs/keys.md): it binds the
 * model id (1 .. 255 bytes of UTF-8, no NUL), the geometry's n_layers, n_kv_heads, head_dim,
 * dtype and chunk_tokens (not block_tokens: the paged layout does not change the data) and an
 * optional tenant salt (`salt` may be NULL when salt_nbytes is 0; at most 255 bytes).
 * Returns 0, -EINVAL for a bad model id (empty, too long, not well-formed UTF-8) or salt,
 * SHADOW_EGEOMETRY for a bad geometry, -ENOMEM if OpenSSL fails.
 */
SHADOW_API int shadow_key_namespace(const char *model_id, const struct shadow_kv_geometry *geom,
				    const void *salt, size_t salt_nbytes,
				    struct shadow_chunk_key *ns_ret);

/*
 * Chained chunk keys over a token sequence: key_i = SHA-256(key_{i-1} || tokens of chunk i as
 * uint32 little-endian), key_{-1} = *ns. Only full chunks get keys: the number of keys is
 * floor(n_tokens / chunk_tokens), capped at max_keys (keys_ret may be NULL when max_keys is 0).
 * *n_keys_ret receives the number written. `tokens` may be NULL when no key is asked for.
 * chunk_tokens should be the one the namespace was made with; nothing can check that here.
 * Returns 0, -EINVAL (chunk_tokens 0 or above SHADOW_MAX_CHUNK_TOKENS), or -ENOMEM if OpenSSL
 * fails (keys_ret is then partly written).
 */
SHADOW_API int shadow_key_chain(const struct shadow_chunk_key *ns, const uint32_t *tokens,
				size_t n_tokens, uint32_t chunk_tokens,
				struct shadow_chunk_key *keys_ret, size_t max_keys,
				size_t *n_keys_ret);

/*
 * The printable store key "<prefix>:<64 lowercase hex digits>" into buf (NUL-terminated).
 * prefix may be NULL for SHADOW_DEFAULT_KEY_PREFIX; it must be 1 .. SHADOW_KEY_PREFIX_MAX
 * printable ASCII characters other than space. Returns the key's length (without the NUL),
 * -EINVAL for a bad prefix, or -ENOBUFS if buf_nbytes is too small (SHADOW_STORE_KEY_MAX is
 * always enough).
 */
SHADOW_API int shadow_key_format(const struct shadow_chunk_key *key, const char *prefix,
				 char *buf, size_t buf_nbytes);

/*
 * Parse a store key written by shadow_key_format() with the same prefix (NULL for the
 * default): exactly "<prefix>:" then 64 lowercase hex digits then the NUL. Returns 0, or
 * -EINVAL if `text` is not such a key (uppercase hex included: a store key has one spelling)
 * or the prefix is invalid.
 */
SHADOW_API int shadow_key_parse(const char *text, const char *prefix,
				struct shadow_chunk_key *key_ret);

/* ------------------------------------------------------------------------------------------ */
/* Chunk container and codecs (docs/format.md is the specification)                           */
/* ------------------------------------------------------------------------------------------ */

/*
 * A chunk travels as one self-describing container: a header with the key and geometry, a
 * frame table, per-frame dequantization parameters, then one payload per frame (one layer's K
 * or V), in layer order. A reader can decode frame i as soon as the metadata and frame i's
 * payload have arrived. Every field is checked before use: a container is untrusted input.
 *
 * Encoding is two stages per frame:
 *  1. quantization: none (the dtype's bytes as they are), planes (bf16/fp16 split into a plane
 *     of high bytes then a plane of low bytes: lossless, and easier to entropy-code), uniform
 *     (b-bit integer symbols, 2 <= b <= 8, with one scale and offset per group of tokens x
 *     channels: keys per channel over the chunk by default, values per token), ECSQ
 *     (entropy-coded scalar quantization: a fixed step per group, unbounded signed symbols,
 *     no clipping; keys per channel, values per head by default), or PCA (ECSQ of the
 *     coefficients of a per-model struct shadow_transform, keys un-rotated first: the best
 *     ratio at a given fidelity, and the slowest to decode; docs/results.md);
 *  2. a lossless stage: none, raw DEFLATE (libdeflate; 32 KiB window, so hardware
 *     decompressors can decode it) or zstd.
 */
enum shadow_quant {
	SHADOW_QUANT_NONE = 0,
	SHADOW_QUANT_PLANES = 1,
	SHADOW_QUANT_UNIFORM = 2,
	SHADOW_QUANT_ECSQ = 3,
	SHADOW_QUANT_PCA = 4 /* ECSQ of the coefficients of a struct shadow_transform */
};

enum shadow_codec_id {
	SHADOW_CODEC_NONE = 0,
	SHADOW_CODEC_DEFLATE = 1,
	SHADOW_CODEC_ZSTD = 2
};

/* How the encoder picks each group's scale (the decoder does not care). */
enum shadow_scale_rule {
	SHADOW_SCALE_MINMAX = 0, /* [min, max] of the group onto [0, 2^b - 1] */
	SHADOW_SCALE_STD = 1     /* step = step_mul * std of the group, centred, clipped */
};

#define SHADOW_MAX_LAYER_BITS 8u

/*
 * Encoder options. Set sizeof_options = sizeof(struct shadow_codec_options); fields past the
 * size the caller was built with take their defaults, so the struct can grow. Fill with
 * shadow_codec_options_default() or shadow_codec_options_parse(), then adjust.
 */
struct shadow_codec_options {
	size_t sizeof_options;
	uint32_t quant;        /* enum shadow_quant */
	uint32_t codec;        /* enum shadow_codec_id */
	int32_t level;         /* DEFLATE 1..12, zstd 1..19; ignored for none */
	uint32_t k_bits;       /* uniform: bits of key symbols, 2..8 */
	uint32_t v_bits;       /* uniform: bits of value symbols, 2..8 */
	/* Scale groups (tiles of tokens x channels of one head); 0 = the default for the quant:
	 * keys all tokens x 1 channel; values 1 token x head_dim (uniform) or all tokens x
	 * head_dim (ECSQ). Channels must divide head_dim. */
	uint32_t k_group_tokens, k_group_channels;
	uint32_t v_group_tokens, v_group_channels;
	uint32_t scale_rule;   /* enum shadow_scale_rule; ECSQ always uses SHADOW_SCALE_STD */
	float step_mul;        /* SHADOW_SCALE_STD: step = step_mul * std of the group */
	/* Layer-group precision (CacheGen): layers [first_layer, next entry's first_layer) use
	 * these bits instead of k_bits/v_bits. Entries sorted by first_layer; 0 entries = none. */
	uint32_t n_layer_bits;
	struct {
		uint32_t first_layer;
		uint32_t k_bits;
		uint32_t v_bits;
	} layer_bits[SHADOW_MAX_LAYER_BITS];
};

/* Defaults: bf16 passthrough (SHADOW_QUANT_NONE), no lossless stage. */
SHADOW_API void shadow_codec_options_default(struct shadow_codec_options *opts_ret);

/*
 * Options from a scheme name "<quant>+<codec>" as used by benchmarks and CLIs:
 *   quant: bf16 | bf16planes | int8 | bits2 .. bits7 | ecsq, optionally followed by suffixes:
 *          -g<N> (keys: N tokens per scale group), -c<N> (values: N channels per group),
 *          -k<T>x<C> and -v<T>x<C> (key or value groups of T tokens x C channels),
 *          -s<X> (std rule with step_mul X, e.g. -s0.5; required for ecsq),
 *          -L<layer>=<kbits>/<vbits> (layer-group precision, uniform only; repeatable)
 *   codec: none | deflate[<level>] (default 6) | zstd<level> (e.g. zstd3)
 * For example "int8+zstd3", "bits4-g64+deflate", "bf16planes+zstd1". Returns 0, or
 * SHADOW_EUNKNOWN_NAME for anything else. `opts_ret` is fully written on success.
 */
SHADOW_API int shadow_codec_options_parse(const char *scheme,
					  struct shadow_codec_options *opts_ret);

/*
 * The canonical name of `opts` (the inverse of shadow_codec_options_parse) into buf. Returns
 * the length, -EINVAL for invalid options, -ENOBUFS if buf is too small (64 bytes is enough
 * without layer bits, 256 with them).
 */
SHADOW_API int shadow_codec_options_name(const struct shadow_codec_options *opts, char *buf,
					 size_t buf_nbytes);

/* A per-thread encoder or decoder: library contexts and scratch buffers, made once. */
struct shadow_codec;

/*
 * Make a codec context for chunks of `geom` (scratch sized for its frames). Returns 0,
 * SHADOW_EGEOMETRY, SHADOW_EUNSUPPORTED (fp32 or fp8 geometry), or -ENOMEM. A context is used
 * by one thread at a time; make one per thread. Free with shadow_codec_free().
 */
SHADOW_API int shadow_codec_create(const struct shadow_kv_geometry *geom,
				   struct shadow_codec **codec_ret);
SHADOW_API void shadow_codec_free(struct shadow_codec *codec); /* NULL is accepted */

/*
 * The most bytes shadow_chunk_encode() can write for chunks of this codec's geometry, or 0 if
 * the options are invalid for it (e.g. a channel group that does not divide head_dim).
 */
SHADOW_API uint64_t shadow_chunk_encode_bound(const struct shadow_codec *codec,
					      const struct shadow_codec_options *opts);

/*
 * Encode chunk number `chunk_index` of its sequence (its first token is at position
 * chunk_index * chunk_tokens: PCA keys need it to undo RoPE) whose KV lives in host memory `region` (described by `layout`, which must
 * have passed shadow_layout_validate() for the codec's geometry) in blocks
 * block_ids[0 .. chunk_tokens/block_tokens - 1], under `key`, into dst. *nbytes_ret receives
 * the container's size. Returns 0, -EINVAL (bad options or block ids, or SHADOW_QUANT_PCA
 * without a transform set), -ENOBUFS (dst_cap below
 * what is needed; shadow_chunk_encode_bound() is always enough), SHADOW_ECODEC.
 */
SHADOW_API int shadow_chunk_encode(struct shadow_codec *codec,
				   const struct shadow_codec_options *opts,
				   const struct shadow_chunk_key *key, uint32_t chunk_index,
				   const void *region,
				   const struct shadow_kv_layout *layout, const uint32_t *block_ids,
				   void *dst, size_t dst_cap, size_t *nbytes_ret);

/*
 * A KV transform: per model, for each (layer, KV head, K or V) a mean vector and an
 * orthonormal basis of head_dim x head_dim (the principal components of calibration KV), so
 * that ECSQ can quantize decorrelated coefficients (SHADOW_QUANT_PCA). Calibrated once per
 * model offline, shipped beside the model, loaded by every encoder and decoder of the fleet;
 * a container records the id of the transform it was encoded with and decodes only with it.
 * A transform is immutable once made: any number of threads and codecs may share it.
 */
struct shadow_transform;

/* How keys were rotated by the model (RoPE), so that the transform can undo it. */
enum shadow_rope {
	SHADOW_ROPE_NONE = 0, /* keys are coded as they are */
	SHADOW_ROPE_HALF = 1  /* rotate-half (Llama/HF): channels i and i + head_dim/2 pair up */
};

/*
 * Standard RoPE frequencies: inv_freq_ret[i] = theta^(-2i / head_dim) for i < head_dim / 2
 * (Llama 3: theta 500000; models with frequency scaling pass their own table instead).
 * Returns 0 or -EINVAL (theta <= 1, head_dim odd or out of range).
 */
SHADOW_API int shadow_rope_inv_freq(double theta, uint32_t head_dim, float *inv_freq_ret);

/*
 * Calibrate a transform from the KV of `n_block_ids` blocks of a host region (all their
 * tokens, every layer, K and V) described by `layout` (which must pass
 * shadow_layout_validate() for geom). The blocks hold one sequence in order: token k of it is
 * at position k. With `rope_inv_freq` (head_dim / 2 angular frequencies; NULL if keys carry
 * no RoPE) keys are un-rotated before they are modelled and coded, which decorrelates them far
 * better (bench/research: 3.33x vs 3.00x at 3% attention error). More tokens give a better
 * basis; a few thousand are enough for head_dim 128. Returns 0, -EINVAL, SHADOW_EGEOMETRY,
 * SHADOW_EUNSUPPORTED (dtype other than bf16/fp16), -ENOMEM. Free with
 * shadow_transform_free().
 */
SHADOW_API int shadow_transform_calibrate(const struct shadow_kv_geometry *geom,
					  const void *region, const struct shadow_kv_layout *layout,
					  const uint32_t *block_ids, size_t n_block_ids,
					  const float *rope_inv_freq,
					  struct shadow_transform **transform_ret);

/*
 * Serialize into buf (docs/format.md, "Transform file"). With buf NULL or too small, returns
 * -ENOBUFS and sets *nbytes_ret to the size needed. Returns 0 on success.
 */
SHADOW_API int shadow_transform_save(const struct shadow_transform *t, void *buf, size_t cap,
				     size_t *nbytes_ret);

/*
 * Load a serialized transform (untrusted: every field is checked, and its checksum). If geom
 * is non-NULL its n_layers, n_kv_heads and head_dim must match (SHADOW_EGEOMETRY). Returns 0,
 * SHADOW_ECORRUPT, SHADOW_ETRUNCATED, SHADOW_EVERSION, -ENOMEM.
 */
SHADOW_API int shadow_transform_load(const void *buf, size_t nbytes,
				     const struct shadow_kv_geometry *geom,
				     struct shadow_transform **transform_ret);

/* The transform's id (XXH3-64 of its serialized form): what containers record. */
SHADOW_API uint64_t shadow_transform_id(const struct shadow_transform *t);

SHADOW_API void shadow_transform_free(struct shadow_transform *t); /* NULL is accepted */

/*
 * Give a codec the transform that SHADOW_QUANT_PCA frames are encoded and decoded with (NULL
 * removes it). The codec keeps the pointer: the transform must outlive the codec's use of it.
 * Returns 0, or SHADOW_EGEOMETRY if the transform is of another geometry.
 */
SHADOW_API int shadow_codec_set_transform(struct shadow_codec *codec,
					  const struct shadow_transform *t);

/* Smallest prefix of a container from which shadow_chunk_parse() can read the metadata size. */
#define SHADOW_CHUNK_HEADER_NBYTES 96u

/*
 * A parsed container: points into the caller's buffer, which must stay valid and unchanged
 * while the view is used. Read the fields; don't write them.
 */
struct shadow_chunk_view {
	const uint8_t *base;     /* the container's first byte */
	uint64_t total_nbytes;   /* the whole container, as its header says */
	uint32_t meta_nbytes;    /* header + frame table + parameters: payloads start here */
	uint32_t n_frames;       /* 2 * n_layers; frame 2l is layer l's K, 2l+1 its V */
	uint32_t n_tokens;
	uint32_t chunk_index;    /* the chunk's place in its sequence (first token's position /
				  * chunk_tokens) */
	struct shadow_kv_geometry geom; /* block_tokens is 0: a container does not know it */
	struct shadow_chunk_key key;
};

/* One frame's table entry, decoded. */
struct shadow_frame_info {
	uint32_t layer;
	uint32_t kind;           /* enum shadow_kv_kind */
	uint32_t quant;          /* enum shadow_quant */
	uint32_t bits;           /* symbol bits (16 for none/planes of bf16/fp16, and ecsq) */
	uint32_t codec;          /* enum shadow_codec_id */
	uint64_t payload_offset; /* from the container's start */
	uint32_t payload_nbytes; /* encoded */
	uint32_t raw_nbytes;     /* after the lossless stage */
	uint64_t decoded_nbytes; /* in the geometry's dtype */
	uint64_t raw_checksum;   /* XXH3-64 of the raw bytes */
};

/*
 * Parse and verify a container's metadata from its first `avail_nbytes` bytes (payloads need
 * not have arrived: avail_nbytes >= meta_nbytes is enough). Checks the magic, version, metadata
 * checksum, every length, offset and count, and that the payloads tile
 * [meta_nbytes, total_nbytes) in frame order. If `expect_key` is non-NULL the key must match
 * (SHADOW_EKEYMISMATCH); if `expect_geom` is non-NULL its n_layers, n_kv_heads, head_dim,
 * dtype and chunk_tokens must match (SHADOW_EGEOMETRY).
 *
 * Returns 0; SHADOW_ETRUNCATED when avail_nbytes < meta_nbytes (shadow_chunk_peek() says how
 * many bytes to wait for); SHADOW_ECORRUPT, SHADOW_EVERSION, SHADOW_EKEYMISMATCH,
 * SHADOW_EGEOMETRY, SHADOW_EUNSUPPORTED. Never reads outside buf[0 .. avail_nbytes).
 */
SHADOW_API int shadow_chunk_parse(const void *buf, size_t avail_nbytes,
				  const struct shadow_chunk_key *expect_key,
				  const struct shadow_kv_geometry *expect_geom,
				  struct shadow_chunk_view *view_ret);

/*
 * From the first SHADOW_CHUNK_HEADER_NBYTES bytes of a container, its metadata size and total
 * size, so a streaming reader knows when it can parse and how large a buffer it needs. The
 * values are only range-checked (the checksum needs the whole metadata). Returns 0,
 * SHADOW_ETRUNCATED (avail_nbytes too small), SHADOW_ECORRUPT, SHADOW_EVERSION.
 */
SHADOW_API int shadow_chunk_peek(const void *buf, size_t avail_nbytes, uint32_t *meta_nbytes_ret,
				 uint64_t *total_nbytes_ret);

/* Frame `frame` of a parsed view into *info_ret. Returns 0 or -EINVAL (frame out of range). */
SHADOW_API int shadow_chunk_frame_info(const struct shadow_chunk_view *view, uint32_t frame,
				       struct shadow_frame_info *info_ret);

/*
 * Decode frame `frame` of a parsed view into a staging image `stage` of stage_nbytes bytes
 * laid out for `layout` (see shadow_layout_plan_frame; the layout must have passed
 * shadow_layout_validate() for the view's geometry with the layout's block size). The frame's
 * payload bytes must be present in the view's buffer. The payload is decompressed, its
 * checksum verified, then dequantized straight into the staging image.
 *
 * Returns 0; SHADOW_ECORRUPT (payload does not decode, or checksum mismatch: the staging image
 * may then hold partial data and must not be copied anywhere); SHADOW_EUNSUPPORTED (a PCA frame
 * coded with a transform this codec does not have); -EINVAL (frame out of range,
 * stage too small, layout of another geometry). Thread-safe across different codec contexts.
 */
SHADOW_API int shadow_chunk_decode_frame(struct shadow_codec *codec,
					 const struct shadow_chunk_view *view, uint32_t frame,
					 const struct shadow_kv_layout *layout, void *stage,
					 size_t stage_nbytes);

/*
 * Describe a container in text (header, then one line per frame) into buf, for shadowctl
 * inspect. Parses it first (any key); returns the text length or a parse error.
 */
SHADOW_API int shadow_chunk_describe(const void *buf, size_t nbytes, char *out, size_t out_nbytes);

/* ------------------------------------------------------------------------------------------ */
/* Stores                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* CLOCK_MONOTONIC in nanoseconds: the clock of every deadline below. Thread-safe. */
SHADOW_API uint64_t shadow_now_ns(void);

/*
 * A store maps keys (byte strings without NUL, normally shadow_key_format()'s) to opaque
 * values (chunk containers). The URL's scheme picks the backend (docs/stores.md):
 *
 *   mem://[NAME][?capacity=SIZE]          in-process LRU, bounded (default 1GiB); handles
 *                                         opened with the same NAME in one process share it
 *                                         (reopening it with another capacity is -EINVAL)
 *   file:///PATH[?capacity=SIZE]          a persistent directory store, bounded (default
 *                                         64GiB); one process at a time per directory
 *   redis://[[USER]:PASSWORD@]HOST:PORT[/DB][?connections=N&ttl=S]
 *   redis+cluster://HOST:PORT[,HOST:PORT...][?connections=N&ttl=S]
 *
 * SIZE is a number with an optional suffix B, KiB, MiB, GiB, TiB (or K, M, G, T; all binary).
 * Where the URL has no password, the environment variable SHADOW_REDIS_PASSWORD gives it (keeps
 * it out of process listings). A server that needs a password and gets none, or a wrong one,
 * fails the open with -EACCES.
 *
 * Requests are asynchronous. The caller owns a struct shadow_store_req, fills in its input
 * fields and submits it; shadow_store_poll() does the I/O and calls the request's callbacks;
 * on_done() is called exactly once per submitted request, always from shadow_store_poll() (or
 * shadow_store_close()), never from inside shadow_store_submit(). Until on_done() returns, the
 * request, its keys and its buffers belong to the store: do not change or free them. After it
 * returns the store never touches them again, even when a late reply arrives for a request
 * that timed out (the reply is read and thrown away).
 *
 * A GET streams the value into the caller's iovec in order and calls on_data() as bytes land,
 * so a consumer can start on the first bytes of a value before the last have arrived: once
 * on_data() reported landed_nbytes, bytes [0, landed_nbytes) of the value are in place and
 * never written again. Bytes beyond may be partly written at any time. on_data() is not
 * called for an empty value; a backend that verifies values (file://) reports the last bytes
 * only once the check passed. The final status is what counts: bytes reported landed by a
 * request that then fails are not to be used. A value larger than the iovec fails with
 * SHADOW_ELIMIT (value_nbytes tells the size; nothing is written).
 *
 * Threads: a handle is used by one thread at a time (submit, poll, cancel, stats, close); use
 * one handle per thread to go parallel (each has its own connections). Callbacks run on the
 * polling thread; they may submit and cancel requests on the same handle but must not poll or
 * close it. Different handles are independent, except that mem:// handles of one NAME, and
 * file:// handles of one directory, share their data (thread-safe, see docs/threads.md).
 */
struct shadow_store;

#define SHADOW_STORE_KEY_NBYTES_MAX 512u  /* longest key */
#define SHADOW_STORE_IOV_MAX 64u          /* most iovec entries in one request */
#define SHADOW_STORE_EXISTS_MAX 1024u     /* most keys in one EXISTS */
#define SHADOW_STORE_PENDING 1            /* req->status while the request is in flight */

enum shadow_store_op {
	SHADOW_STORE_GET = 1,    /* value of `key` into iov */
	SHADOW_STORE_PUT = 2,    /* iov (the value) under `key`, replacing any older value */
	SHADOW_STORE_DELETE = 3, /* remove `key`; n_found = 1 if it existed, else 0 */
	SHADOW_STORE_EXISTS = 4  /* n_found = how many of keys[0..] exist before the first that
				    does not (prefix semantics) */
};

struct shadow_store_req;

/* GET progress: bytes [0, landed_nbytes) of a value of value_nbytes are in place. */
typedef void (*shadow_store_data_fn)(struct shadow_store_req *req, uint64_t value_nbytes,
				     uint64_t landed_nbytes);
/* Completion; req->status holds the result. */
typedef void (*shadow_store_done_fn)(struct shadow_store_req *req);

struct shadow_store_req {
	/* Input, set by the caller before submitting. */
	uint32_t op;                /* enum shadow_store_op */
	uint32_t n_keys;            /* EXISTS: 1 .. SHADOW_STORE_EXISTS_MAX keys in `keys` */
	const char *key;            /* GET, PUT, DELETE: 1 .. SHADOW_STORE_KEY_NBYTES_MAX bytes */
	const char *const *keys;    /* EXISTS */
	const struct iovec *iov;    /* GET: the destination; PUT: the value (iov_len 0 allowed) */
	uint32_t iov_count;         /* 0 .. SHADOW_STORE_IOV_MAX */
	uint32_t ttl_s;             /* PUT: expiry in seconds where the backend has one; 0: the
				       handle's default (options or URL), which may be none */
	uint64_t deadline_ns;       /* absolute shadow_now_ns() time; 0: request_timeout_ms
				       from submission, written back here by submit (reset it
				       to 0 before resubmitting the request) */
	shadow_store_data_fn on_data; /* GET; NULL accepted */
	shadow_store_done_fn on_done; /* NULL accepted: then poll req->status */
	void *user;                 /* for the callbacks */

	/*
	 * Output. status is SHADOW_STORE_PENDING in flight, then 0 or a negative code:
	 * SHADOW_EMISS (no such key; GET only), SHADOW_ELIMIT (value larger than the iovec or
	 * than max_value_nbytes, or too large for the store), -ETIMEDOUT (deadline passed),
	 * -ECANCELED (shadow_store_cancel() or close), -ECONNREFUSED / -ECONNRESET / -EHOSTUNREACH
	 * (node unreachable or connection lost), -EACCES (authentication failed), SHADOW_EPROTO
	 * (the server broke RESP, or too many redirects), SHADOW_ESERVER (the server refused:
	 * WRONGTYPE, OOM, READONLY...), SHADOW_ECORRUPT (file:// entry failed its checksum; it is
	 * removed), -EIO / -ENOSPC and other -errno from the file system.
	 */
	int status;
	uint32_t n_found;           /* EXISTS, DELETE */
	uint64_t value_nbytes;      /* GET: the value's length once known */
	uint64_t landed_nbytes;     /* GET: bytes of the value in place */

	uintptr_t priv[6];          /* private to the store while in flight */
};

struct shadow_store_options {
	size_t size;                  /* sizeof(struct shadow_store_options) */
	uint32_t connections;         /* redis: connections per node, 1 .. 64 (default 2) */
	uint32_t connect_timeout_ms;  /* redis: TCP connect and handshake (default 1000) */
	uint32_t request_timeout_ms;  /* deadline of requests that give none (default 5000) */
	uint32_t max_requests;        /* requests in flight per handle, 1 .. 65536 (default 1024) */
	uint64_t max_value_nbytes;    /* longest value read or written (default 4 GiB) */
	uint32_t ttl_s;               /* default expiry of PUTs, 0 = none (redis) */
	uint32_t reconnect_min_ms;    /* first retry after a failed connect (default 10) */
	uint32_t reconnect_max_ms;    /* retries back off up to this (default 2000) */
};

/* Defaults for every field; size is set. */
SHADOW_API void shadow_store_options_default(struct shadow_store_options *opts_ret);

/*
 * Open the store at `url` (see above). `opts` may be NULL for the defaults; a caller built
 * against an older header passes its smaller `size` and gets defaults for the rest. Values in
 * the URL's query override `opts`. Redis backends connect to every node (the cluster's, after
 * reading its slot map) before returning and fail if none answers within connect_timeout_ms.
 * Returns 0; -EINVAL (malformed URL or option), SHADOW_EUNKNOWN_NAME (unknown scheme),
 * -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH, -EACCES (authentication), SHADOW_ESERVER,
 * -EBUSY (file:// directory in use by another process), -errno from the file system, -ENOMEM.
 */
SHADOW_API int shadow_store_open(const char *url, const struct shadow_store_options *opts,
				 struct shadow_store **store_ret);

/*
 * Close: every request still in flight completes with -ECANCELED (on_done is called from
 * here), connections are closed, memory is freed. NULL is accepted.
 */
SHADOW_API void shadow_store_close(struct shadow_store *store);

/*
 * Submit a request. On success req->status is SHADOW_STORE_PENDING and on_done will be called
 * from a later shadow_store_poll(). Returns 0; -EINVAL for a malformed request (nothing is
 * called back), -EBUSY when max_requests are in flight (poll, then retry).
 */
SHADOW_API int shadow_store_submit(struct shadow_store *store, struct shadow_store_req *req);

/*
 * Run I/O and callbacks, waiting up to timeout_ms (0: do not wait; -1: until at least one
 * request completes or progresses) when nothing is ready. Deadlines are honoured even with
 * timeout_ms -1: poll returns when the earliest deadline has passed. With no request in flight
 * it never waits, but still takes in what the handle's fd signalled (connections finishing or
 * closing), so that fd stops being readable. Returns the number of requests completed (>= 0),
 * or a negative code for a failure of the handle itself.
 */
SHADOW_API int shadow_store_poll(struct shadow_store *store, int timeout_ms);

/* Poll until `req` completes; returns its status. */
SHADOW_API int shadow_store_wait(struct shadow_store *store, struct shadow_store_req *req);

/*
 * Cancel a request in flight: it completes with -ECANCELED from the next poll (if it has not
 * completed already). A GET being streamed stops writing into its iovec at once. Returns 0, or
 * -ENOENT if `req` is not in flight on this handle (completed, or submitted to another).
 */
SHADOW_API int shadow_store_cancel(struct shadow_store *store, struct shadow_store_req *req);

/*
 * A file descriptor for an outer event loop: it becomes readable when shadow_store_poll() has
 * work, I/O or a timer (a request's deadline, a connect timeout) that came due since the last
 * poll. Poll after it turns readable, and after submitting. -1 for a backend without one
 * (mem://, file://: their poll does all its work at once and never waits). Valid until close.
 */
SHADOW_API int shadow_store_fd(const struct shadow_store *store);

struct shadow_store_stats {
	size_t size;               /* set by the caller: sizeof(struct shadow_store_stats) */
	/* Counters of this handle since it was opened. */
	uint64_t gets;             /* GETs completed */
	uint64_t hits;             /* GETs that delivered a value */
	uint64_t misses;           /* GETs of a key not there */
	uint64_t puts;             /* PUTs completed with success */
	uint64_t deletes;          /* DELETEs completed */
	uint64_t exists_keys;      /* keys asked about by EXISTS */
	uint64_t bytes_in;         /* value bytes delivered into GET buffers */
	uint64_t bytes_out;        /* value bytes put */
	uint64_t errors;           /* requests that failed other than by a miss */
	uint64_t timeouts;         /* ... of which by their deadline */
	uint64_t cancels;          /* ... of which cancelled */
	uint64_t oversize;         /* ... of which values too large (SHADOW_ELIMIT) */
	uint64_t protocol_errors;  /* replies that broke RESP (the connection was reset) */
	uint64_t server_errors;    /* error replies (SHADOW_ESERVER) */
	uint64_t connects;         /* connections established (redis) */
	uint64_t disconnects;      /* connections lost or reset (redis) */
	uint64_t moved;            /* MOVED redirects followed (redis cluster) */
	uint64_t asked;            /* ASK redirects followed (redis cluster) */
	uint64_t corrupt;          /* entries found torn or corrupt and removed (file) */
	/* State of the store behind the handle (mem:// and file:// only; 0 for redis). */
	uint64_t evictions;        /* entries evicted for capacity, by any handle */
	uint64_t items;            /* entries held */
	uint64_t used_nbytes;      /* bytes held (values and per-entry overhead) */
	uint64_t capacity_nbytes;  /* the bound */
	/* Now. */
	uint32_t in_flight;        /* requests submitted and not yet completed */
	uint32_t nodes;            /* redis: nodes known; 1 for a single server */
};

/*
 * Copy the handle's statistics into *stats_ret; stats_ret->size must be set by the caller
 * (older callers get the fields their size covers). Returns 0 or -EINVAL (size too small to
 * hold `size` itself).
 */
SHADOW_API int shadow_store_stats(const struct shadow_store *store,
				  struct shadow_store_stats *stats_ret);

/*
 * Parse a size such as "8GiB", "512M" or "4096" into bytes. Returns 0 or -EINVAL (not a size,
 * or above 2^63).
 */
SHADOW_API int shadow_parse_size(const char *text, uint64_t *nbytes_ret);

/* ------------------------------------------------------------------------------------------ */
/* Data plane results                                                                         */
/* ------------------------------------------------------------------------------------------ */

/*
 * The outcome of one chunk of a fetch or save (shadowd's pipeline, the client API). Anything
 * but SHADOW_CHUNK_OK means: recompute that chunk. A fetched chunk that is not OK may have
 * had some of its frames written into the destination blocks (each frame only after its own
 * checksum passed), never a frame that failed one.
 */
enum shadow_chunk_status {
	SHADOW_CHUNK_OK = 0,
	SHADOW_CHUNK_MISS = 1,     /* not in the store */
	SHADOW_CHUNK_CORRUPT = 2,  /* failed a checksum or structural check, or another key's */
	SHADOW_CHUNK_TIMEOUT = 3,  /* the operation's deadline passed first */
	SHADOW_CHUNK_ERROR = 4,    /* store, copy or codec failure (the daemon's log says which) */
	SHADOW_CHUNK_CANCELED = 5  /* cancelled, or its client or region went away */
};

/* "ok", "miss", "corrupt", "timeout", "error", "canceled"; "?" for anything else. */
SHADOW_API const char *shadow_chunk_status_name(int status);

/* ------------------------------------------------------------------------------------------ */
/* GPU module                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/*
 * Whether the CUDA module can be used: it loads libshadow_cuda.so (from SHADOW_CUDA_MODULE if
 * set, else beside libshadow, else the install libdir), which links the CUDA runtime, and asks
 * it how many GPUs the driver reports. On success *n_devices_ret is >= 1. Returns 0;
 * SHADOW_ENOGPU if the module, the driver or a GPU is missing (the log at INFO says which).
 * Loads once per process; thread-safe.
 */
SHADOW_API int shadow_gpu_probe(int *n_devices_ret);

#ifdef __cplusplus
}
#endif

#endif /* SHADOW_SHADOW_H */
