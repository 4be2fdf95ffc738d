#!/bin/sh
# shadowctl calibrate writes a transform file that shadowctl inspect reads back with the same
# id, and refuses a missing dump. Skips (77) without the shared KV dumps.
# usage: shadowctl_calibrate.sh SHADOWCTL SHARED_DIR
set -u
ctl=$1
dump=$2/data/kv/shared_pydoc_tutorial-classes.kvd.xz
if [ ! -f "$dump" ]; then
	echo "SKIP: $dump not found"
	exit 77
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
made=$("$ctl" calibrate --rope-theta 500000 -o "$out/t.shkt" "$dump") || exit 1
echo "$made"
id=$(echo "$made" | sed -n 's/.*transform id \([0-9a-f]*\).*/\1/p')
[ -n "$id" ] || { echo "FAIL: no id printed"; exit 1; }
seen=$("$ctl" inspect "$out/t.shkt") || exit 1
echo "$seen"
case "$seen" in
*"transform id $id,"*) ;;
*) echo "FAIL: inspect shows another id"; exit 1 ;;
esac
# a corrupt file is refused
printf 'SHKTxxxx' > "$out/bad.shkt"
if "$ctl" inspect "$out/bad.shkt" 2>/dev/null; then
	echo "FAIL: corrupt transform accepted"
	exit 1
fi
if "$ctl" calibrate -o "$out/x.shkt" "$out/missing.kvd" 2>/dev/null; then
	echo "FAIL: missing dump accepted"
	exit 1
fi
echo "1 passed, 0 failed"
