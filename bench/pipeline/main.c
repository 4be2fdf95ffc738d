/*
 * bench_pipeline - the pipeline benchmark program; everything is in pipeline_bench.c so that
 * `shadowctl bench pipeline` runs the same code.
 */
#include "pipeline_bench.h"

int main(int argc, char **argv)
{
	return shadow_bench_pipeline_main(argc, argv);
}
