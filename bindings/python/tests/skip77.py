"""skip77.py - pytest hooks shared by the project's Python test folders: when
SHADOW_PYTEST_SKIP_RC is set (77), a run in which nothing passed and nothing failed exits
with it, so CTest reports the entry as skipped rather than passed. A conftest.py imports both
hooks into its namespace (its folder on sys.path)."""
import os

_outcomes = {"passed": 0, "failed": 0}


def pytest_runtest_logreport(report):
    if report.passed and report.when == "call":
        _outcomes["passed"] += 1
    elif report.failed:
        _outcomes["failed"] += 1


def pytest_sessionfinish(session, exitstatus):
    rc = os.environ.get("SHADOW_PYTEST_SKIP_RC")
    if rc and int(exitstatus) in (0, 5) and _outcomes["passed"] == 0 and \
            _outcomes["failed"] == 0:
        session.exitstatus = int(rc)
