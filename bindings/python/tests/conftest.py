"""conftest.py - fixtures of the shadowserve tests: the libraries, a real shadowd, helpers.

Environment (CTest sets all of them, see bindings/python/CMakeLists.txt):
  SHADOW_LIB_DIR        where libshadow.so and libshadow_client.so are (else the build trees)
  SHADOW_SHADOWD        the shadowd binary (else build/ or build-release/ of this checkout)
  SHADOW_PY_ABI_DUMP    the abi_dump helper (else test_types.py compiles it with cc)
  SHADOW_PYTEST_SKIP_RC when set (77), the exit status of a run in which nothing passed and
                        nothing failed: CTest then reports the test as skipped
Tests that need something absent skip and say what.
"""
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # bindings/python

import shadowserve as ss  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

# The test geometry (as tests/integration/test_shadowd.c): 2 layers, 2 KV heads, head_dim 128,
# bf16, 16-token blocks, 64-token chunks: 4 blocks per chunk, 32 KiB frames.
N_BLOCKS = 64


def small_geom():
    return ss.geometry(2, 2, 128, ss.DTYPE_BF16, block_tokens=16, chunk_tokens=64)


# --------------------------------------------------------------------------------------------
# Exit status 77 when everything skipped
# --------------------------------------------------------------------------------------------

from skip77 import pytest_runtest_logreport, pytest_sessionfinish  # noqa: E402,F401 (hooks)


# --------------------------------------------------------------------------------------------
# Libraries
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shadow_lib():
    try:
        return ss._lib.shadow()
    except ss.LibraryNotFound as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def client_lib():
    try:
        return ss._lib.client()
    except ss.LibraryNotFound as e:
        pytest.skip(str(e))


# --------------------------------------------------------------------------------------------
# shadowd
# --------------------------------------------------------------------------------------------


def find_shadowd():
    p = os.environ.get("SHADOW_SHADOWD")
    if p:
        return p if os.access(p, os.X_OK) else None
    for b in ("build", "build-release"):
        p = os.path.join(REPO, b, "daemons", "shadowd", "shadowd")
        if os.access(p, os.X_OK):
            return p
    return None


def _die_with_parent():
    # The daemon must not outlive a test run that crashed.
    libc = ctypes.CDLL(None)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Daemon:
    """A shadowd process on a private unix socket."""

    def __init__(self, binary, store="mem://", extra=()):
        self.dir = tempfile.mkdtemp(prefix="shadowd-py-")
        self.log_path = os.path.join(self.dir, "shadowd.log")
        args = [binary, "--store", store, "--listen", "unix:%s/s.sock" % self.dir,
                "--log-level", "warn", "--pool", "16", "--rx-size", "256KiB",
                "--stage-size", "256KiB", "--decode-threads", "1"] + list(extra)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log,
                                     preexec_fn=_die_with_parent)
        line = b""
        deadline = time.monotonic() + 20
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.proc.stdout], [], [], max(0, left))
            if not r:
                self.kill()
                raise RuntimeError("shadowd gave no ready line in 20 s (log %s)" % self.log_path)
            b = os.read(self.proc.stdout.fileno(), 1024)
            if not b:
                self.kill()
                raise RuntimeError("shadowd exited before it was ready: %s"
                                   % self.log_tail())
            line += b
        self.ready = line.decode()
        if not self.ready.startswith("shadowd: ready listen="):
            self.kill()
            raise RuntimeError("unexpected ready line: %r" % self.ready)
        self.endpoint = self.ready.split("listen=", 1)[1].split()[0]
        self.cuda = " cuda=yes" in self.ready

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM; returns the exit status (killed after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._cleanup()

    def _cleanup(self):
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def shadowd_binary(client_lib):
    b = find_shadowd()
    if b is None:
        pytest.skip("no shadowd binary: set SHADOW_SHADOWD or build this checkout")
    return b


@pytest.fixture(scope="session")
def daemon(shadowd_binary):
    d = Daemon(shadowd_binary)
    yield d
    tail = d.log_tail()
    rc = d.stop()
    assert rc == 0, "shadowd did not exit 0 on SIGTERM (%s); log:\n%s" % (rc, tail)


@pytest.fixture
def client(daemon):
    with ss.Client(daemon.endpoint, name="pytest") as c:
        yield c


# --------------------------------------------------------------------------------------------
# KV helpers
# --------------------------------------------------------------------------------------------


def make_tokens(n_chunks, seed, chunk_tokens=64):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 128256, size=n_chunks * chunk_tokens, dtype=np.uint32)


def f32_to_bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = u + 0x7FFF + ((u >> 16) & 1)  # round to nearest even (finite inputs)
    return (u >> 16).astype(np.uint16)


def bf16_to_f32(h):
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def kv_like(n_elems, seed, head_dim=128):
    """KV-like bf16 values: smooth per channel, an outlier channel, some noise."""
    rng = np.random.default_rng(seed)
    i = np.arange(n_elems, dtype=np.float64)
    d = (i % head_dim)
    v = np.sin(i * 0.001 + d * 0.3) * np.where(d == 5, 8.0, 1.0) + rng.random(n_elems) * 0.1
    return f32_to_bf16(v)


def nhd_blocks(arr_u16, geom, n_blocks):
    """An NHD cache as [n_layers][2][n_blocks][elements of one block] (a view)."""
    per = geom.block_tokens * geom.n_kv_heads * geom.head_dim
    return arr_u16[:geom.n_layers * 2 * n_blocks * per].reshape(geom.n_layers, 2, n_blocks, per)
