#!/bin/bash
# setup.sh - sourced by final.sh and sweep1.sh: builds the research harness and unpacks the
# shared KV dumps into a scratch folder (WORK, default /tmp/kvquant_lab), then cds there.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data=${SHADOW_SHARED_DIR:-$here/../../../shared}/data/kv
work=${WORK:-/tmp/kvquant_lab}
mkdir -p "$work"
gcc -std=c11 -O2 -march=native -fopenmp -o "$work/lab" "$here/kvquant_lab.c" -lzstd -ldeflate -lm
for name in shared_linuxdoc_cgroup-v2 shared_pydoc_tutorial-classes; do
	[ -f "$work/$name.kvd" ] || xz -dc "$data/$name.kvd.xz" > "$work/$name.kvd"
	cp "$data/$name.qtl" "$work/"
done
cd "$work"
