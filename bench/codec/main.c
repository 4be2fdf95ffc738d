/*
 * bench_codec - the codec benchmark program; everything is in codec_bench.c so that
 * `shadowctl bench codec` runs the same code.
 */
#include "codec_bench.h"

int main(int argc, char **argv)
{
	return shadow_bench_codec_main(argc, argv);
}
