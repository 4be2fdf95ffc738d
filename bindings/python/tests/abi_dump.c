/*
 * abi_dump.c - print the size of every C struct that shadowserve/types.py mirrors, and the
 * offset of each of its fields, one "NAME VALUE" line each ("shadow_kv_layout 4144",
 * "shadow_kv_layout.base 48"). test_types.py compares them with ctypes' layout, so a field
 * added to, moved in or retyped in a public header fails the Python tests instead of
 * corrupting memory. Then the constants, "const NAME VALUE" with NAME as in types.py.
 * Built by bindings/python/CMakeLists.txt (SHADOW_PY_ABI_DUMP), or by the test with cc.
 */
#include <stddef.h>
#include <stdio.h>

#include <shadow/client.h>
#include <shadow/shadow.h>

#define SIZE(s) printf("%s %zu\n", #s, sizeof(struct s))
#define OFF(s, f) printf("%s.%s %zu\n", #s, #f, offsetof(struct s, f))

int main(void)
{
	SIZE(shadow_kv_geometry);
	OFF(shadow_kv_geometry, n_layers);
	OFF(shadow_kv_geometry, n_kv_heads);
	OFF(shadow_kv_geometry, head_dim);
	OFF(shadow_kv_geometry, dtype);
	OFF(shadow_kv_geometry, block_tokens);
	OFF(shadow_kv_geometry, chunk_tokens);

	SIZE(shadow_kv_layout);
	OFF(shadow_kv_layout, region_nbytes);
	OFF(shadow_kv_layout, n_layers);
	OFF(shadow_kv_layout, n_blocks);
	OFF(shadow_kv_layout, block_stride);
	OFF(shadow_kv_layout, token_stride);
	OFF(shadow_kv_layout, head_stride);
	OFF(shadow_kv_layout, elem_stride);
	OFF(shadow_kv_layout, base);

	SIZE(shadow_chunk_key);
	OFF(shadow_chunk_key, bytes);

	SIZE(shadow_copy_run);
	OFF(shadow_copy_run, src_offset);
	OFF(shadow_copy_run, dst_offset);
	OFF(shadow_copy_run, nbytes);

	SIZE(shadow_codec_options);
	OFF(shadow_codec_options, sizeof_options);
	OFF(shadow_codec_options, quant);
	OFF(shadow_codec_options, codec);
	OFF(shadow_codec_options, level);
	OFF(shadow_codec_options, k_bits);
	OFF(shadow_codec_options, v_bits);
	OFF(shadow_codec_options, k_group_tokens);
	OFF(shadow_codec_options, k_group_channels);
	OFF(shadow_codec_options, v_group_tokens);
	OFF(shadow_codec_options, v_group_channels);
	OFF(shadow_codec_options, scale_rule);
	OFF(shadow_codec_options, step_mul);
	OFF(shadow_codec_options, n_layer_bits);
	OFF(shadow_codec_options, layer_bits);

	SIZE(shadow_chunk_view);
	OFF(shadow_chunk_view, base);
	OFF(shadow_chunk_view, total_nbytes);
	OFF(shadow_chunk_view, meta_nbytes);
	OFF(shadow_chunk_view, n_frames);
	OFF(shadow_chunk_view, n_tokens);
	OFF(shadow_chunk_view, chunk_index);
	OFF(shadow_chunk_view, geom);
	OFF(shadow_chunk_view, key);

	SIZE(shadow_frame_info);
	OFF(shadow_frame_info, layer);
	OFF(shadow_frame_info, kind);
	OFF(shadow_frame_info, quant);
	OFF(shadow_frame_info, bits);
	OFF(shadow_frame_info, codec);
	OFF(shadow_frame_info, payload_offset);
	OFF(shadow_frame_info, payload_nbytes);
	OFF(shadow_frame_info, raw_nbytes);
	OFF(shadow_frame_info, decoded_nbytes);
	OFF(shadow_frame_info, raw_checksum);

	SIZE(shadow_client_options);
	OFF(shadow_client_options, size);
	OFF(shadow_client_options, max_inflight);
	OFF(shadow_client_options, slot_nbytes);
	OFF(shadow_client_options, connect_timeout_ms);
	OFF(shadow_client_options, call_timeout_ms);
	OFF(shadow_client_options, name);

	SIZE(shadow_client_cuda_ipc);
	OFF(shadow_client_cuda_ipc, handle);
	OFF(shadow_client_cuda_ipc, device);

	SIZE(shadow_client_memory);
	OFF(shadow_client_memory, size);
	OFF(shadow_client_memory, kind);
	OFF(shadow_client_memory, fd);
	OFF(shadow_client_memory, fd_offset);
	OFF(shadow_client_memory, cuda);

	SIZE(shadow_client_request);
	OFF(shadow_client_request, size);
	OFF(shadow_client_request, region);
	OFF(shadow_client_request, n_chunks);
	OFF(shadow_client_request, first_chunk);
	OFF(shadow_client_request, n_block_ids);
	OFF(shadow_client_request, keys);
	OFF(shadow_client_request, tokens);
	OFF(shadow_client_request, n_tokens);
	OFF(shadow_client_request, ns);
	OFF(shadow_client_request, block_ids);
	OFF(shadow_client_request, deadline_ns);
	OFF(shadow_client_request, chunk_status);
	OFF(shadow_client_request, user);

	SIZE(shadow_client_completion);
	OFF(shadow_client_completion, ticket);
	OFF(shadow_client_completion, user);
	OFF(shadow_client_completion, chunk_status);
	OFF(shadow_client_completion, status);
	OFF(shadow_client_completion, op);
	OFF(shadow_client_completion, n_chunks);
	OFF(shadow_client_completion, n_ok);
	OFF(shadow_client_completion, n_found);
	OFF(shadow_client_completion, n_tokens);
	OFF(shadow_client_completion, bytes_in);
	OFF(shadow_client_completion, bytes_out);
	OFF(shadow_client_completion, daemon_ns);

	SIZE(shadow_client_stats);
	OFF(shadow_client_stats, size);
	OFF(shadow_client_stats, submitted);
	OFF(shadow_client_stats, completed);
	OFF(shadow_client_stats, failed);
	OFF(shadow_client_stats, cancels);
	OFF(shadow_client_stats, chunks_ok);
	OFF(shadow_client_stats, chunks_failed);
	OFF(shadow_client_stats, doorbells);
	OFF(shadow_client_stats, sleeps);
	OFF(shadow_client_stats, in_flight);
	OFF(shadow_client_stats, regions);
	OFF(shadow_client_stats, client_id);
	OFF(shadow_client_stats, daemon_in_flight);
	OFF(shadow_client_stats, daemon_requests);
	OFF(shadow_client_stats, daemon_rejected);
	OFF(shadow_client_stats, daemon_completed);
	OFF(shadow_client_stats, daemon_bytes_in);
	OFF(shadow_client_stats, daemon_bytes_out);
	OFF(shadow_client_stats, daemon_doorbells);

	/* Constants, under their names in shadowserve.types ("const NAME VALUE"). */
	printf("const OK %lld\n", (long long)SHADOW_OK);
	printf("const ECORRUPT %lld\n", (long long)SHADOW_ECORRUPT);
	printf("const ETRUNCATED %lld\n", (long long)SHADOW_ETRUNCATED);
	printf("const EVERSION %lld\n", (long long)SHADOW_EVERSION);
	printf("const EGEOMETRY %lld\n", (long long)SHADOW_EGEOMETRY);
	printf("const EKEYMISMATCH %lld\n", (long long)SHADOW_EKEYMISMATCH);
	printf("const EMISS %lld\n", (long long)SHADOW_EMISS);
	printf("const ENOGPU %lld\n", (long long)SHADOW_ENOGPU);
	printf("const ECUDA %lld\n", (long long)SHADOW_ECUDA);
	printf("const EPROTO %lld\n", (long long)SHADOW_EPROTO);
	printf("const EUNSUPPORTED %lld\n", (long long)SHADOW_EUNSUPPORTED);
	printf("const ELIMIT %lld\n", (long long)SHADOW_ELIMIT);
	printf("const ECODEC %lld\n", (long long)SHADOW_ECODEC);
	printf("const EUNKNOWN_NAME %lld\n", (long long)SHADOW_EUNKNOWN_NAME);
	printf("const ESERVER %lld\n", (long long)SHADOW_ESERVER);
	printf("const DTYPE_BF16 %lld\n", (long long)SHADOW_DTYPE_BF16);
	printf("const DTYPE_FP16 %lld\n", (long long)SHADOW_DTYPE_FP16);
	printf("const DTYPE_FP32 %lld\n", (long long)SHADOW_DTYPE_FP32);
	printf("const DTYPE_FP8_E4M3 %lld\n", (long long)SHADOW_DTYPE_FP8_E4M3);
	printf("const MAX_LAYERS %lld\n", (long long)SHADOW_MAX_LAYERS);
	printf("const MAX_KV_HEADS %lld\n", (long long)SHADOW_MAX_KV_HEADS);
	printf("const MAX_HEAD_DIM %lld\n", (long long)SHADOW_MAX_HEAD_DIM);
	printf("const MAX_BLOCK_TOKENS %lld\n", (long long)SHADOW_MAX_BLOCK_TOKENS);
	printf("const MAX_CHUNK_TOKENS %lld\n", (long long)SHADOW_MAX_CHUNK_TOKENS);
	printf("const DEFAULT_CHUNK_TOKENS %lld\n", (long long)SHADOW_DEFAULT_CHUNK_TOKENS);
	printf("const KV_K %lld\n", (long long)SHADOW_KV_K);
	printf("const KV_V %lld\n", (long long)SHADOW_KV_V);
	printf("const LAYOUT_NHD %lld\n", (long long)SHADOW_LAYOUT_NHD);
	printf("const LAYOUT_HND %lld\n", (long long)SHADOW_LAYOUT_HND);
	printf("const LAYOUT_CROSS_LAYER_NHD %lld\n", (long long)SHADOW_LAYOUT_CROSS_LAYER_NHD);
	printf("const KEY_NBYTES %lld\n", (long long)SHADOW_KEY_NBYTES);
	printf("const KEY_PREFIX_MAX %lld\n", (long long)SHADOW_KEY_PREFIX_MAX);
	printf("const STORE_KEY_MAX %lld\n", (long long)SHADOW_STORE_KEY_MAX);
	printf("const QUANT_NONE %lld\n", (long long)SHADOW_QUANT_NONE);
	printf("const QUANT_PLANES %lld\n", (long long)SHADOW_QUANT_PLANES);
	printf("const QUANT_UNIFORM %lld\n", (long long)SHADOW_QUANT_UNIFORM);
	printf("const QUANT_ECSQ %lld\n", (long long)SHADOW_QUANT_ECSQ);
	printf("const QUANT_PCA %lld\n", (long long)SHADOW_QUANT_PCA);
	printf("const CODEC_NONE %lld\n", (long long)SHADOW_CODEC_NONE);
	printf("const CODEC_DEFLATE %lld\n", (long long)SHADOW_CODEC_DEFLATE);
	printf("const CODEC_ZSTD %lld\n", (long long)SHADOW_CODEC_ZSTD);
	printf("const SCALE_MINMAX %lld\n", (long long)SHADOW_SCALE_MINMAX);
	printf("const SCALE_STD %lld\n", (long long)SHADOW_SCALE_STD);
	printf("const MAX_LAYER_BITS %lld\n", (long long)SHADOW_MAX_LAYER_BITS);
	printf("const CHUNK_HEADER_NBYTES %lld\n", (long long)SHADOW_CHUNK_HEADER_NBYTES);
	printf("const CHUNK_OK %lld\n", (long long)SHADOW_CHUNK_OK);
	printf("const CHUNK_MISS %lld\n", (long long)SHADOW_CHUNK_MISS);
	printf("const CHUNK_CORRUPT %lld\n", (long long)SHADOW_CHUNK_CORRUPT);
	printf("const CHUNK_TIMEOUT %lld\n", (long long)SHADOW_CHUNK_TIMEOUT);
	printf("const CHUNK_ERROR %lld\n", (long long)SHADOW_CHUNK_ERROR);
	printf("const CHUNK_CANCELED %lld\n", (long long)SHADOW_CHUNK_CANCELED);
	printf("const LOG_ERROR %lld\n", (long long)SHADOW_LOG_ERROR);
	printf("const LOG_WARN %lld\n", (long long)SHADOW_LOG_WARN);
	printf("const LOG_INFO %lld\n", (long long)SHADOW_LOG_INFO);
	printf("const LOG_DEBUG %lld\n", (long long)SHADOW_LOG_DEBUG);
	printf("const CLIENT_MEM_HOST %lld\n", (long long)SHADOW_CLIENT_MEM_HOST);
	printf("const CLIENT_MEM_CUDA %lld\n", (long long)SHADOW_CLIENT_MEM_CUDA);
	printf("const CLIENT_CUDA_IPC_NBYTES %lld\n", (long long)SHADOW_CLIENT_CUDA_IPC_NBYTES);
	printf("const OP_LOOKUP %lld\n", (long long)SHADOW_CLIENT_LOOKUP);
	printf("const OP_FETCH %lld\n", (long long)SHADOW_CLIENT_FETCH);
	printf("const OP_SAVE %lld\n", (long long)SHADOW_CLIENT_SAVE);
	printf("const NO_REGION %lld\n", (long long)SHADOW_CLIENT_NO_REGION);
	return 0;
}
