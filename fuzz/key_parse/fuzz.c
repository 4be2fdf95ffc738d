/*
 * fuzz/key_parse - store keys come back from stores (SCAN, listings): parse arbitrary text,
 * and check that whatever parses formats back to the same text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <shadow/shadow.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char text[512];
	if (size >= sizeof(text))
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	struct shadow_chunk_key key;
	if (shadow_key_parse(text, NULL, &key) != 0)
		return 0;
	char again[SHADOW_STORE_KEY_MAX];
	int n = shadow_key_format(&key, NULL, again, sizeof(again));
	if (n < 0 || strcmp(again, text) != 0)
		abort();
	return 0;
}
