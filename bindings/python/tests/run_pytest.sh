#!/bin/sh
# run_pytest.sh - run the shadowserve tests (bindings/python/tests) with the first Python that
# has pytest and numpy: $SHADOW_PYTHON, then python3 on PATH, then /usr/bin/python3 (a pyenv
# or venv python3 first on PATH often lacks Debian's python3-pytest and python3-numpy).
#
#   bindings/python/tests/run_pytest.sh [pytest arguments]
#
# SHADOW_PYTEST_DIR names another folder of tests to run instead (bench/engine/tests).
# CTest runs it (bindings/python/CMakeLists.txt) with SHADOW_LIB_DIR, SHADOW_SHADOWD and
# SHADOW_PY_ABI_DUMP set. Exit status: pytest's, except 77 (skip) when no such Python exists
# or when nothing passed and nothing failed (every test skipped; tests/conftest.py).
case "$0" in
*/*) here=$(cd "${0%/*}" && pwd) || exit 1 ;;
*) here=$(pwd) ;;
esac
for py in ${SHADOW_PYTHON:-} python3 /usr/bin/python3; do
	command -v "$py" >/dev/null 2>&1 || continue
	if "$py" -c "import pytest, numpy" >/dev/null 2>&1; then
		echo "run_pytest.sh: $(command -v "$py") ($("$py" --version 2>&1))"
		SHADOW_PYTEST_SKIP_RC=77 PYTHONDONTWRITEBYTECODE=1 \
			exec "$py" -m pytest -p no:cacheprovider -ra "${SHADOW_PYTEST_DIR:-$here}" "$@"
	fi
done
echo "run_pytest.sh: skipped: no python3 with pytest and numpy" \
     "(Debian: python3 python3-pytest python3-numpy; scripts/deps.sh installs them)"
exit 77
