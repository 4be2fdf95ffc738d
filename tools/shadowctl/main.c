/*
 * shadowctl - ShadowServe's operator CLI.
 *
 *   shadowctl geometry [PRESET]                 presets and their per-chunk sizes
 *   shadowctl keys [options] TOKENS.u32         chunk keys of a token file (docs/keys.md)
 *   shadowctl inspect FILE                      describe a chunk container or transform file
 *   shadowctl calibrate [options] -o OUT DUMP   make a PCA transform file from a KV dump
 *   shadowctl bench codec [ARGS]                the codec benchmark (bench_codec --help)
 *   shadowctl bench store [ARGS]                the store benchmark (bench_store --help)
 *   shadowctl bench pipeline [ARGS]             the pipeline benchmark (bench_pipeline --help)
 *   shadowctl cpu                               CPU features the data plane will use
 *   shadowctl gpu                               whether the CUDA module and a GPU are usable
 *   shadowctl demo                              the end-to-end demo (`make demo`)
 *
 * Exit status: 0 on success, 1 on a runtime failure, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <shadow/shadow.h>

#include "codec_bench.h"
#include "core/cpu.h"
#include "kvdump.h"
#include "pipeline_bench.h"
#include "shadowctl.h"
#include "store_bench.h"

static int usage(FILE *out)
{
	fprintf(out,
		"usage: shadowctl COMMAND [ARGS]\n"
		"  geometry [PRESET]                 list presets, or describe one\n"
		"  keys [--preset P] [--model ID] [--salt S] [--prefix P] [--chunk N] TOKENS.u32\n"
		"                                    print the chunk keys of a token file\n"
		"  inspect FILE                      describe a chunk container or transform file\n"
		"  calibrate [--rope-theta X] -o OUT DUMP.kvd[.xz]\n"
		"                                    make a PCA transform file from a KV dump\n"
		"  bench codec [ARGS]                codec benchmark (see bench_codec --help)\n"
		"  bench store [ARGS]                store benchmark (see bench_store --help)\n"
		"  bench pipeline [ARGS]             pipeline benchmark (see bench_pipeline --help)\n"
		"  cpu                               CPU features used by the codecs\n"
		"  gpu                               probe the CUDA module and GPUs\n"
		"  demo                              run the end-to-end demo\n");
	return out == stderr ? 2 : 0;
}

static void print_geometry(const char *name, const struct shadow_kv_geometry *g)
{
	uint64_t frame = shadow_geometry_frame_nbytes(g);
	uint64_t token = shadow_geometry_token_nbytes(g);
	printf("%-16s layers %3u  kv_heads %2u  head_dim %4u  %-5s  block %3u  chunk %4u  "
	       "%6.1f KiB/token  %7.1f MiB/chunk  %6.1f KiB/frame\n",
	       name, g->n_layers, g->n_kv_heads, g->head_dim, shadow_dtype_name(g->dtype),
	       g->block_tokens, g->chunk_tokens, token / 1024.0,
	       (double)token * g->chunk_tokens / (1024.0 * 1024.0), frame / 1024.0);
}

static int cmd_geometry(int argc, char **argv)
{
	const char *const *names;
	size_t n;
	shadow_geometry_preset_names(&names, &n);
	for (size_t i = 0; i < n; i++) {
		if (argc > 1 && strcmp(argv[1], names[i]) != 0)
			continue;
		struct shadow_kv_geometry g;
		if (shadow_geometry_preset(names[i], &g) == 0)
			print_geometry(names[i], &g);
		if (argc > 1)
			return 0;
	}
	if (argc > 1) {
		fprintf(stderr, "shadowctl: unknown preset '%s'\n", argv[1]);
		return 2;
	}
	return 0;
}

int shadowctl_read_tokens(const char *path, uint32_t **tokens_ret, size_t *n_tokens_ret)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -errno;
	int err = 0;
	struct stat st;
	if (fstat(fileno(f), &st) != 0) {
		err = -errno;
		goto out_close;
	}
	if (st.st_size % 4 != 0 || st.st_size == 0 || st.st_size > (1 << 30)) {
		err = -EINVAL;
		goto out_close;
	}
	size_t n = (size_t)st.st_size / 4;
	uint8_t *raw = malloc((size_t)st.st_size);
	uint32_t *tokens = malloc(n * sizeof(*tokens));
	if (raw == NULL || tokens == NULL) {
		err = -ENOMEM;
		goto out_free;
	}
	if (fread(raw, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
		err = -EIO;
		goto out_free;
	}
	for (size_t i = 0; i < n; i++) {
		const uint8_t *p = raw + 4 * i;
		tokens[i] = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
			    (uint32_t)p[3] << 24;
	}
	*tokens_ret = tokens;
	*n_tokens_ret = n;
	tokens = NULL;
out_free:
	free(tokens);
	free(raw);
out_close:
	fclose(f);
	return err;
}

const char *shadowctl_kv_data_dir(void)
{
	static char path[4096];
	struct stat st;
	const char *shared = getenv("SHADOW_SHARED_DIR");
	if (shared != NULL && shared[0] != '\0') {
		snprintf(path, sizeof(path), "%s/data/kv", shared);
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
			return path;
	}
	snprintf(path, sizeof(path), "../shared/data/kv");
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return path;
	return NULL;
}

static int cmd_keys(int argc, char **argv)
{
	static const struct option options[] = {
		{ "preset", required_argument, NULL, 'g' }, { "model", required_argument, NULL, 'm' },
		{ "salt", required_argument, NULL, 's' },   { "prefix", required_argument, NULL, 'p' },
		{ "chunk", required_argument, NULL, 'c' },  { NULL, 0, NULL, 0 },
	};
	const char *preset = "minillama-h128", *model = NULL, *salt = NULL, *prefix = NULL;
	unsigned long chunk = 0;
	int opt;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'g': preset = optarg; break;
		case 'm': model = optarg; break;
		case 's': salt = optarg; break;
		case 'p': prefix = optarg; break;
		case 'c': chunk = strtoul(optarg, NULL, 10); break;
		default: return usage(stderr);
		}
	}
	if (optind != argc - 1)
		return usage(stderr);

	struct shadow_kv_geometry g;
	int err = shadow_geometry_preset(preset, &g);
	if (err != 0) {
		fprintf(stderr, "shadowctl: preset '%s': %s\n", preset, shadow_strerror(err));
		return 2;
	}
	if (chunk != 0)
		g.chunk_tokens = (uint32_t)chunk;
	struct shadow_chunk_key ns;
	err = shadow_key_namespace(model != NULL ? model : preset, &g, salt,
				   salt != NULL ? strlen(salt) : 0, &ns);
	if (err != 0) {
		fprintf(stderr, "shadowctl: namespace: %s\n", shadow_strerror(err));
		return 2;
	}
	uint32_t *tokens;
	size_t n_tokens;
	err = shadowctl_read_tokens(argv[optind], &tokens, &n_tokens);
	if (err != 0) {
		fprintf(stderr, "shadowctl: %s: %s\n", argv[optind], shadow_strerror(err));
		return 1;
	}
	size_t max_keys = n_tokens / g.chunk_tokens, n_keys = 0;
	struct shadow_chunk_key *keys = calloc(max_keys + 1, sizeof(*keys));
	if (keys == NULL) {
		free(tokens);
		return 1;
	}
	err = shadow_key_chain(&ns, tokens, n_tokens, g.chunk_tokens, keys, max_keys, &n_keys);
	if (err == 0) {
		char text[SHADOW_STORE_KEY_MAX];
		for (size_t i = 0; i < n_keys && err >= 0; i++) {
			err = shadow_key_format(&keys[i], prefix, text, sizeof(text));
			if (err >= 0)
				printf("%zu\t%zu-%zu\t%s\n", i, i * g.chunk_tokens,
				       (i + 1) * g.chunk_tokens - 1, text);
		}
	}
	free(keys);
	free(tokens);
	if (err < 0) {
		fprintf(stderr, "shadowctl: keys: %s\n", shadow_strerror(err));
		return 1;
	}
	return 0;
}

/* Read a whole file of at most max_nbytes into a malloc()ed buffer. Returns 0 or -errno. */
static int read_file(const char *path, size_t max_nbytes, uint8_t **buf_ret, size_t *n_ret)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -errno;
	int err = 0;
	struct stat st;
	uint8_t *buf = NULL;
	if (fstat(fileno(f), &st) != 0) {
		err = -errno;
	} else if (st.st_size < 0 || (uint64_t)st.st_size > max_nbytes) {
		err = -EFBIG;
	} else if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		err = -ENOMEM;
	} else if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
		err = -EIO;
	}
	fclose(f);
	if (err != 0) {
		free(buf);
		return err;
	}
	*buf_ret = buf;
	*n_ret = (size_t)st.st_size;
	return 0;
}

static int cmd_inspect(int argc, char **argv)
{
	if (argc != 2)
		return usage(stderr);
	uint8_t *buf = NULL;
	size_t n = 0;
	int err = read_file(argv[1], (size_t)1 << 32, &buf, &n);
	if (err != 0) {
		fprintf(stderr, "shadowctl: %s: %s\n", argv[1], shadow_strerror(err));
		return 1;
	}
	if (n >= 4 && memcmp(buf, "SHKT", 4) == 0) { /* a transform file */
		struct shadow_transform *t;
		err = shadow_transform_load(buf, n, NULL, &t);
		if (err == 0) {
			printf("transform id %016llx, %zu bytes\n",
			       (unsigned long long)shadow_transform_id(t), n);
			shadow_transform_free(t);
		} else {
			fprintf(stderr, "shadowctl: %s: not a valid transform: %s\n", argv[1],
				shadow_strerror(err));
		}
		free(buf);
		return err == 0 ? 0 : 1;
	}
	size_t text_nbytes = 1 << 20;
	char *text = malloc(text_nbytes);
	err = text != NULL ? shadow_chunk_describe(buf, n, text, text_nbytes) : -ENOMEM;
	if (err >= 0)
		fputs(text, stdout);
	else
		fprintf(stderr, "shadowctl: %s: not a valid chunk: %s\n", argv[1], shadow_strerror(err));
	free(text);
	free(buf);
	return err >= 0 ? 0 : 1;
}

/*
 * A PCA transform (docs/format.md, "Transform file") from the KV of one dump, every token of
 * it, in 16-token blocks. Calibrate on text other than what will be served; the
 * transform is per model, shared by every encoder and decoder of a fleet.
 */
static int cmd_calibrate(int argc, char **argv)
{
	static const struct option options[] = {
		{ "rope-theta", required_argument, NULL, 'r' },
		{ "out", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	const char *out = NULL;
	double theta = 0;
	int opt;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "o:", options, NULL)) != -1) {
		switch (opt) {
		case 'r': theta = strtod(optarg, NULL); break;
		case 'o': out = optarg; break;
		default: return usage(stderr);
		}
	}
	if (out == NULL || optind != argc - 1)
		return usage(stderr);

	struct bench_kv kv;
	int err = bench_kv_load("shadowctl", argv[optind], &kv);
	if (err != 0)
		return 1;
	struct shadow_kv_geometry g = {
		.n_layers = kv.n_layers, .n_kv_heads = kv.n_kv_heads, .head_dim = kv.head_dim,
		.dtype = SHADOW_DTYPE_BF16, .block_tokens = 16, .chunk_tokens = 16,
	};
	uint32_t n_blocks = kv.n_tokens / g.block_tokens;
	struct shadow_kv_layout layout;
	struct shadow_transform *t = NULL;
	uint8_t *region = NULL, *file = NULL;
	uint32_t *ids = NULL;
	float inv_freq[SHADOW_MAX_HEAD_DIM / 2];
	size_t file_nbytes = 0;
	uint64_t region_nbytes = (uint64_t)n_blocks * g.block_tokens * shadow_geometry_token_nbytes(&g);

	err = n_blocks == 0 ? -EINVAL : 0;
	if (err == 0)
		err = shadow_layout_init(&layout, &g, SHADOW_LAYOUT_NHD, n_blocks, 0, region_nbytes);
	if (err == 0 && theta != 0)
		err = shadow_rope_inv_freq(theta, g.head_dim, inv_freq);
	if (err == 0) {
		region = malloc(region_nbytes);
		ids = malloc(n_blocks * sizeof(*ids));
		err = region != NULL && ids != NULL ? 0 : -ENOMEM;
	}
	if (err == 0)
		err = bench_kv_to_region("shadowctl", &kv, n_blocks * g.block_tokens, &g, &layout,
					 region);
	for (uint32_t i = 0; err == 0 && i < n_blocks; i++)
		ids[i] = i;
	if (err == 0)
		err = shadow_transform_calibrate(&g, region, &layout, ids, n_blocks,
						 theta != 0 ? inv_freq : NULL, &t);
	if (err == 0 && shadow_transform_save(t, NULL, 0, &file_nbytes) != -ENOBUFS)
		err = -EINVAL;
	if (err == 0)
		err = (file = malloc(file_nbytes)) != NULL ? 0 : -ENOMEM;
	if (err == 0)
		err = shadow_transform_save(t, file, file_nbytes, &file_nbytes);
	if (err == 0) {
		FILE *f = fopen(out, "wb");
		if (f == NULL || fwrite(file, 1, file_nbytes, f) != file_nbytes || fclose(f) != 0)
			err = -EIO;
	}
	if (err == 0)
		printf("%s: transform id %016llx from %u tokens of %s (%u layers, %u KV heads, "
		       "head_dim %u), keys %s, %zu bytes\n",
		       out, (unsigned long long)shadow_transform_id(t), n_blocks * g.block_tokens,
		       kv.name, g.n_layers, g.n_kv_heads, g.head_dim,
		       theta != 0 ? "un-rotated (RoPE)" : "as they are (no --rope-theta)",
		       file_nbytes);
	else
		fprintf(stderr, "shadowctl: calibrate: %s\n", shadow_strerror(err));
	free(file);
	free(ids);
	free(region);
	shadow_transform_free(t);
	bench_kv_free(&kv);
	return err == 0 ? 0 : 1;
}

static int cmd_bench(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "codec") == 0)
		return shadow_bench_codec_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "store") == 0)
		return shadow_bench_store_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "pipeline") == 0)
		return shadow_bench_pipeline_main(argc - 1, argv + 1);
	fprintf(stderr, "shadowctl: bench: expected 'codec', 'store' or 'pipeline'\n");
	return 2;
}

static int cmd_cpu(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	printf("%s\n", shadow__cpu_features_string(shadow__cpu_features()));
	return 0;
}

static int cmd_gpu(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	int n = 0;
	int err = shadow_gpu_probe(&n);
	if (err != 0) {
		printf("no GPU: %s\n", shadow_strerror(err));
		return 1;
	}
	printf("%d CUDA device(s)\n", n);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int argc, char **argv);
	} commands[] = {
		{ "geometry", cmd_geometry }, { "keys", cmd_keys },	    { "inspect", cmd_inspect },
		{ "bench", cmd_bench },	      { "calibrate", cmd_calibrate }, { "cpu", cmd_cpu },
		{ "gpu", cmd_gpu },
		{ "demo", shadowctl_demo },
	};
	if (argc < 2)
		return usage(stderr);
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)
		return usage(stdout);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name) == 0)
			return commands[i].fn(argc - 1, argv + 1);
	}
	fprintf(stderr, "shadowctl: unknown command '%s'\n", argv[1]);
	return usage(stderr);
}
