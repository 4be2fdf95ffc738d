/*
 * bench_store - the store benchmark program; everything is in store_bench.c so that
 * `shadowctl bench store` runs the same code.
 */
#include "store_bench.h"

int main(int argc, char **argv)
{
	return shadow_bench_store_main(argc, argv);
}
