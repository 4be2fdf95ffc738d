#!/bin/sh
# bench.sh BUILD_DIR - run every benchmark with its default arguments. Benchmarks print figures
# (with a reference measured in the same run); they never pass or fail on speed. CSV copies go
# to BUILD_DIR/bench/results/. The programs: bench_codec, bench_kernels, bench_store and
# bench_pipeline (both start their own redis-server, or skip the Redis part without one).
set -eu
build=$1
out="$build/bench/results"
mkdir -p "$out"
echo "bench: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for b in "$build"/bench/bench_*; do
	[ -x "$b" ] || continue
	name=$(basename "$b")
	echo "== $name"
	"$b" --csv "$out/$name.csv"
done
