/* shadowctl.h - what the shadowctl subcommand files share. */
#ifndef SHADOWCTL_H
#define SHADOWCTL_H

#include <stddef.h>
#include <stdint.h>

/* Each subcommand gets argv without the program name (argv[0] is the subcommand). */
int shadowctl_demo(int argc, char **argv);
/* The data-plane stage of the demo (demo_dataplane.c): 0 on success, 1 on failure. */
int shadowctl_demo_dataplane(void);

/*
 * Read a file of little-endian uint32 token ids into a malloc()ed array. Returns 0 or -errno;
 * on success the caller frees *tokens_ret.
 */
int shadowctl_read_tokens(const char *path, uint32_t **tokens_ret, size_t *n_tokens_ret);

/* The directory of the shared real KV data, or NULL: $SHADOW_SHARED_DIR/data/kv, else
 * ../shared/data/kv relative to the working directory. Static string. */
const char *shadowctl_kv_data_dir(void);

#endif
