"""conftest.py - the engine tests' shared set-up: the bindings and the engine on sys.path,
and the hooks that make an all-skipped run exit 77 (bindings/python/tests/skip77.py)."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.join(_HERE, "..", "..", "..")
for _p in (os.path.join(_HERE, ".."), os.path.join(_ROOT, "bindings", "python"),
           os.path.join(_ROOT, "bindings", "python", "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from skip77 import pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402,F401 (hooks)
