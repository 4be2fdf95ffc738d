#!/bin/sh
# fuzz.sh BUILD_DIR SECONDS - run every libFuzzer target built in BUILD_DIR/fuzz for SECONDS
# each, starting from its seed corpus in fuzz/<target>/corpus. New inputs go to a scratch
# corpus under BUILD_DIR, never into the repo. Fails on the first crash, leak or timeout.
set -eu
build=$1
seconds=$2
root=$(cd "$(dirname "$0")/.." && pwd)
found=0
for target in "$build"/fuzz/fuzz_*; do
	[ -x "$target" ] || continue
	found=1
	name=$(basename "$target" | sed 's/^fuzz_//')
	work="$build/corpus-run/$name"
	mkdir -p "$work"
	echo "fuzz: $name for ${seconds}s"
	"$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 "$work" "$root/fuzz/$name/corpus"
done
if [ "$found" = 0 ]; then
	echo "fuzz: no targets in $build/fuzz" >&2
	exit 1
fi
