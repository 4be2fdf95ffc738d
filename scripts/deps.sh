#!/bin/sh
# deps.sh - install ShadowServe's build and test dependencies from Debian 12's packages.
#
#   scripts/deps.sh           what `make demo` and `make test` need
#   scripts/deps.sh fuzz      also clang and libFuzzer, for `make fuzz`
#   scripts/deps.sh --check   only report what is missing (exit 1 if anything is)
#
# Installs only what is missing. As root it runs `apt-get update` (a fresh machine's package
# lists are empty) and `apt-get install`; as another user it prints the exact command and fails.
set -eu

base="build-essential cmake pkg-config xz-utils liblzma-dev libdeflate-dev libzstd-dev libxxhash-dev
      libssl-dev libcmocka-dev redis-server redis-tools libhiredis-dev
      python3 python3-numpy python3-pytest python3-torch"
fuzz="clang libclang-rt-14-dev"

want="$base"
check_only=0
for arg in "$@"; do
	case "$arg" in
	fuzz) want="$want $fuzz" ;;
	--check) check_only=1 ;;
	*) echo "deps.sh: unknown argument '$arg'" >&2; exit 2 ;;
	esac
done

missing=""
for pkg in $want; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $pkg"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$check_only" = 1 ]; then
	echo "deps.sh: missing:$missing" >&2
	exit 1
fi
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing Debian packages:$missing" >&2
	echo "deps.sh: run as root:  $cmd" >&2
	exit 1
fi
echo "deps.sh: installing:$missing" >&2
sh -c "$cmd" >&2
