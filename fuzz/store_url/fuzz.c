/*
 * fuzz/store_url - store URLs come from flags, environment and configuration files: parse
 * arbitrary text as a URL and as a size; whatever parses must point inside the parsed copy.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A parsed string lies in the URL's buffer (an absent path is the literal ""). */
static void inside(const struct shadow__url *u, const char *s)
{
	if (s != NULL && s[0] != '\0' && (s < u->buf || s >= u->buf + sizeof(u->buf) || memchr(s, '\0',
		(size_t)(u->buf + sizeof(u->buf) - s)) == NULL))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct shadow__url url;
	char text[SHADOW__URL_MAX + 64];

	if (size >= sizeof(text))
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	if (shadow__url_parse(text, &url) == 0) {
		inside(&url, url.scheme);
		inside(&url, url.user);
		inside(&url, url.password);
		inside(&url, url.path);
		if (url.n_hosts > SHADOW__URL_HOSTS_MAX || url.n_query > SHADOW__URL_QUERY_MAX)
			abort();
		for (uint32_t i = 0; i < url.n_hosts; i++)
			inside(&url, url.hosts[i].host);
		for (uint32_t i = 0; i < url.n_query; i++) {
			inside(&url, url.query[i].name);
			inside(&url, url.query[i].value);
		}
	}
	uint64_t v;
	if (shadow_parse_size(text, &v) == 0 && v > (UINT64_C(1) << 63))
		abort();
	return 0;
}
