/* status.c - the one table that turns status codes into text (shadow_strerror). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

static const struct {
	int code;
	const char *text;
} shadow_status_text[] = {
	{ SHADOW_OK, "success" },
	{ SHADOW_ECORRUPT, "data failed a checksum or structural check" },
	{ SHADOW_ETRUNCATED, "input truncated" },
	{ SHADOW_EVERSION, "unsupported format or protocol version" },
	{ SHADOW_EGEOMETRY, "invalid or mismatched KV geometry or layout" },
	{ SHADOW_EKEYMISMATCH, "chunk was stored under another key" },
	{ SHADOW_EMISS, "key not in store" },
	{ SHADOW_ENOGPU, "no usable GPU or CUDA module" },
	{ SHADOW_ECUDA, "CUDA call failed" },
	{ SHADOW_EPROTO, "protocol error from peer" },
	{ SHADOW_EUNSUPPORTED, "not supported by this build" },
	{ SHADOW_ELIMIT, "configured limit exceeded" },
	{ SHADOW_ECODEC, "compression library failed" },
	{ SHADOW_EUNKNOWN_NAME, "unknown name" },
	{ SHADOW_ESERVER, "server answered with an error" },
};

const char *shadow_version(void)
{
	return "0.1.0";
}

SHADOW_STATIC_ASSERT(SHADOW_VERSION_MAJOR == 0 && SHADOW_VERSION_MINOR == 1 &&
			     SHADOW_VERSION_PATCH == 0,
		     "shadow_version() must match the header");

const char *shadow_strerror(int status)
{
	for (size_t i = 0; i < SHADOW_ARRAY_SIZE(shadow_status_text); i++) {
		if (shadow_status_text[i].code == status)
			return shadow_status_text[i].text;
	}
	/* -errno: strerrordesc_np() returns a static, thread-safe string (glibc >= 2.32). */
	if (status < 0 && status > -4096) {
		const char *text = strerrordesc_np(-status);
		if (text != NULL)
			return text;
	}
	return "unknown error";
}

const char *shadow_chunk_status_name(int status)
{
	static const char *const names[] = { "ok", "miss", "corrupt", "timeout", "error",
					     "canceled" };

	if (status < 0 || (size_t)status >= SHADOW_ARRAY_SIZE(names))
		return "?";
	return names[status];
}

#if defined(SHADOW_TESTING)
void shadow__assert_fail(const char *expr, const char *file, int line, const char *func)
{
	fprintf(stderr, "shadow: assertion failed: %s (%s:%d, %s)\n", expr, file, line, func);
	abort();
}
#endif
