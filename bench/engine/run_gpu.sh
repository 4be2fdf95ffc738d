#!/bin/sh
# run_gpu.sh - run engine.py on the GPU machine with its store, link and data plane.
#
#   bench/engine/run_gpu.sh BUILD DEBS OUT [engine.py arguments...]
#
# BUILD: a release build with the CUDA module (shadowd, linkem, libshadow*.so); DEBS: a folder
# of Debian's redis-server, redis-tools, libjemalloc2 and liblzf1 .debs (the GPU machine has no
# package registry: they are unpacked into a temporary folder, never into /); OUT: where the
# logs go. Cores are split so interference is measured, not guessed: the engine on 0-7,
# shadowd on 8-13, redis-server on 14, linkem on 15 (override with ENGINE_CPUS etc.).
set -eu
B=$(cd "$1" && pwd); DEBS=$2; OUT=$3; shift 3
ENGINE_CPUS=${ENGINE_CPUS:-0-7}; SHADOWD_CPUS=${SHADOWD_CPUS:-8-13}
REDIS_CPUS=${REDIS_CPUS:-14}; LINK_CPUS=${LINK_CPUS:-15}; REDIS_PORT=${REDIS_PORT:-6390}
R=${REDIS_ROOT:-/tmp/redis-root}
if [ ! -x "$R/usr/bin/redis-server" ]; then
	mkdir -p "$R"
	for d in "$DEBS"/*.deb; do dpkg -x "$d" "$R"; done
fi
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$B/lib:$B/lib/client:${EXTRA_LIBS:-}:$R/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export SHADOW_LIB_DIR="$B/lib"
export SHADOW_CUDA_MODULE="$B/lib/libshadow_cuda.so"
RD=$(mktemp -d)
# jemalloc's purging makes Redis page-fault on every large reply (docs/stores.md).
MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1 taskset -c "$REDIS_CPUS" \
	"$R/usr/bin/redis-server" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
	--appendonly no --dir "$RD" --databases 4 >"$OUT/redis.log" 2>&1 &
RPID=$!
trap 'kill $RPID 2>/dev/null; wait $RPID 2>/dev/null; rm -rf "$RD"' EXIT INT TERM
for _ in $(seq 100); do
	"$R/usr/bin/redis-cli" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
	sleep 0.1
done
python3 "$(dirname "$0")/engine.py" --redis-port "$REDIS_PORT" \
	--linkem "$B/tools/linkem/linkem" --shadowd "$B/daemons/shadowd/shadowd" \
	--cpus-engine "$ENGINE_CPUS" --cpus-shadowd "$SHADOWD_CPUS" --cpus-link "$LINK_CPUS" "$@"
