"""test_client.py - shadowserve.Client against a real shadowd on mem:// (host regions)."""
import errno
import os
import select
import threading
import time
import zlib

import numpy as np
import pytest

import shadowserve as ss
from shadowserve import codec

from conftest import N_BLOCKS, Daemon, make_tokens, nhd_blocks, small_geom

MODEL = "pytest-model"


def a_ids(first, n):
    """Blocks of chunks [first, first + n) in region A: 4c .. 4c + 3."""
    return np.array([4 * c + j for c in range(first, first + n) for j in range(4)], np.uint32)


def b_ids(first, n):
    """The same chunks' blocks in region B: a permutation."""
    return (a_ids(first, n) * 37 + 11) % N_BLOCKS


class Setup:
    """Regions A (random bf16 bytes) and B (zeros) registered on a client, a namespace."""

    def __init__(self, client, seed):
        self.c = client
        self.geom = small_geom()
        nbytes = N_BLOCKS * ss.block_nbytes(self.geom)
        self.mem_a = ss.HostMemory(nbytes)
        self.mem_b = ss.HostMemory(nbytes)
        rng = np.random.default_rng(seed)
        self.mem_a.array(np.uint16)[:] = rng.integers(0, 1 << 16, nbytes // 2, dtype=np.uint16)
        self.a = client.register_kv(self.mem_a, self.geom)
        self.b = client.register_kv(self.mem_b, self.geom, ss.LAYOUT_NHD)
        self.ns = client.namespace(self.a, MODEL)

    def blocks(self, mem):
        return nhd_blocks(mem.array(np.uint16), self.geom, N_BLOCKS)

    def same(self, first, n):
        """Chunks [first, first + n) of A equal their copies in B, byte for byte."""
        a = self.blocks(self.mem_a)[:, :, a_ids(first, n)]
        b = self.blocks(self.mem_b)[:, :, b_ids(first, n)]
        return np.array_equal(a, b)

    def save(self, tokens, n):
        t = self.c.save(self.a, a_ids(0, n), tokens=tokens, ns=self.ns, n_chunks=n,
                        deadline_s=20, user="save")
        (done,) = self.c.collect(1, 30)
        assert done.ticket == t and done.op == ss.OP_SAVE and done.user == "save"
        assert done.status == 0 and done.n_ok == n, done
        assert done.chunk_status == bytes([ss.CHUNK_OK]) * n
        return done

    def close(self):
        self.mem_a.close()
        self.mem_b.close()


@pytest.fixture
def setup(client, request):
    s = Setup(client, seed=zlib.crc32(request.node.name.encode()))
    yield s
    s.close()


def test_roundtrip(setup):
    s, c = setup, setup.c
    tokens = make_tokens(12, 1)
    assert s.a.id != s.b.id and s.a.n_blocks == N_BLOCKS and s.a.blocks_per_chunk == 4
    t = c.lookup(s.a, tokens=tokens, ns=s.ns)
    (done,) = c.collect(1)
    assert done.ticket == t and done.op == ss.OP_LOOKUP and done.n_found == 0
    assert done.chunk_status is None
    s.save(tokens, 8)

    # Lookup: 8 of 12 chunks are there, counted from the first.
    c.lookup(s.a, tokens=tokens, ns=s.ns, user={"req": 1})
    (done,) = c.collect(1)
    assert done.status == 0 and done.n_found == 8 and done.n_tokens == 8 * 64
    assert done.user == {"req": 1}

    # Fetch into B at other blocks: byte-exact (bf16planes+zstd1, lossless).
    t = c.fetch(s.b, b_ids(0, 8), tokens=tokens, ns=s.ns, n_chunks=8, deadline_s=20)
    (done,) = c.collect(1, 30)
    assert done.ticket == t and done.op == ss.OP_FETCH and done.ok, done
    assert done.n_ok == 8 and done.chunk_status == bytes(8)
    assert done.bytes_out == 8 * 64 * ss.token_nbytes(s.geom) and done.bytes_in > 0
    assert done.daemon_ns > 0
    assert s.same(0, 8)

    # From the middle (keys chained from the start) and past the end: misses.
    s.mem_b.array()[:] = 0
    c.fetch(s.b, b_ids(5, 5), tokens=tokens, ns=s.ns, first_chunk=5, n_chunks=5)
    (done,) = c.collect(1, 30)
    assert done.status == 0 and done.n_ok == 3
    assert list(done.chunk_status) == [ss.CHUNK_OK] * 3 + [ss.CHUNK_MISS] * 2
    assert s.same(5, 3)

    # By keys, computed once; a keys-mode lookup needs no region (then n_tokens is 0).
    keys = c.chunk_keys(s.a, s.ns, tokens[:8 * 64])
    assert len(keys) == 8 and all(len(k) == 32 for k in keys)
    c.lookup(keys=keys)
    c.lookup(keys=b"".join(keys), region=s.a)
    c.lookup(keys=np.frombuffer(b"".join(keys), np.uint8).reshape(8, 32), n_chunks=4)
    done = sorted(c.collect(3), key=lambda d: d.ticket)
    assert [(d.n_found, d.n_tokens) for d in done] == [(8, 0), (8, 8 * 64), (4, 0)]
    s.mem_b.array()[:] = 0
    c.fetch(s.b, b_ids(0, 8), keys=keys)
    (done,) = c.collect(1, 30)
    assert done.n_ok == 8 and s.same(0, 8)

    st = c.stats()
    assert st["in_flight"] == 0 and st["regions"] == 2 and st["failed"] == 0
    assert st["submitted"] == st["completed"] == st["daemon_requests"] == 9
    assert c.in_flight == 0


def test_unknown_tokens_miss(setup):
    s, c = setup, setup.c
    s.save(make_tokens(4, 2), 4)
    c.fetch(s.b, b_ids(0, 4), tokens=make_tokens(4, 3), ns=s.ns, n_chunks=4)
    (done,) = c.collect(1, 30)
    assert done.status == 0 and done.n_ok == 0 and not done.ok
    assert done.chunk_status == bytes([ss.CHUNK_MISS]) * 4
    assert not s.blocks(s.mem_b).any()  # nothing written
    # Another namespace (model or salt) misses as well.
    other = c.namespace(s.a, MODEL, salt=b"tenant-b")
    assert other != s.ns
    c.lookup(s.a, tokens=make_tokens(4, 2), ns=other)
    (done,) = c.collect(1)
    assert done.n_found == 0


def test_cancel(setup):
    s, c = setup, setup.c
    tokens = make_tokens(16, 4)
    s.save(tokens, 16)
    t = c.fetch(s.b, b_ids(0, 16), tokens=tokens, ns=s.ns, user="f")
    sent = c.cancel(t)
    assert sent in (True, False)  # False: it had finished already
    (done,) = c.collect(1, 30)
    assert done.ticket == t and done.user == "f" and done.n_chunks == 16
    assert set(done.chunk_status) <= {ss.CHUNK_OK, ss.CHUNK_CANCELED}
    assert done.n_ok == done.chunk_status.count(ss.CHUNK_OK)
    assert c.poll() == []  # exactly one completion
    assert c.cancel(t) is False  # no longer in flight
    assert c.cancel(123456789) is False


def test_deadline(setup):
    s, c = setup, setup.c
    tokens = make_tokens(4, 5)
    s.save(tokens, 4)
    c.fetch(s.b, b_ids(0, 4), tokens=tokens, ns=s.ns, deadline_s=-1.0)  # already passed
    (done,) = c.collect(1, 30)
    assert done.status == 0 and done.n_ok == 0
    assert done.chunk_status == bytes([ss.CHUNK_TIMEOUT]) * 4
    c.save(s.a, a_ids(0, 4), tokens=tokens, ns=s.ns, deadline_s=-1.0)
    (done,) = c.collect(1, 30)
    assert done.chunk_status == bytes([ss.CHUNK_TIMEOUT]) * 4
    c.fetch(s.b, b_ids(0, 4), tokens=tokens, ns=s.ns, deadline_s=30.0)
    (done,) = c.collect(1, 30)
    assert done.ok and s.same(0, 4)
    assert ss.now_ns() > 0


def test_errors(setup):
    s, c = setup, setup.c
    tokens = make_tokens(4, 6)
    with pytest.raises(ss.ShadowError) as e:
        c.fetch(s.b, b_ids(0, 2)[:7], tokens=tokens, ns=s.ns, n_chunks=2)
    assert e.value.code == -errno.EINVAL and e.value.errno == errno.EINVAL
    assert e.value.func == "shadow_client_fetch"
    assert "Invalid argument" in str(e.value)
    ids = b_ids(0, 2)
    ids[3] = N_BLOCKS
    with pytest.raises(ss.ShadowError) as e:
        c.fetch(s.b, ids, tokens=tokens, ns=s.ns, n_chunks=2)
    assert e.value.code == -errno.EINVAL
    with pytest.raises(ss.ShadowError) as e:  # chunks 3 and 4 of a 4-chunk sequence
        c.fetch(s.b, b_ids(3, 2), tokens=tokens, ns=s.ns, first_chunk=3, n_chunks=2)
    assert e.value.code == -errno.EINVAL
    with pytest.raises(ValueError):
        c.fetch(s.b, b_ids(0, 2), tokens=tokens)  # no ns
    with pytest.raises(ValueError):
        c.fetch(s.b, b_ids(0, 2), ns=s.ns)  # neither keys nor tokens
    with pytest.raises(ValueError):
        c.lookup(tokens=tokens, ns=s.ns)  # tokens mode needs a region
    with pytest.raises(ValueError):
        c.lookup(keys=b"x" * 33)
    with pytest.raises(ss.ShadowError) as e:
        c.namespace(s.a, "")
    assert e.value.code == -errno.EINVAL
    # A region the daemon refuses: its layout runs past the memory.
    with ss.HostMemory(N_BLOCKS * ss.block_nbytes(s.geom)) as m:
        lay = ss.layout_init(s.geom, ss.LAYOUT_NHD, N_BLOCKS)
        lay.region_nbytes *= 2
        with pytest.raises(ss.ShadowError) as e:
            c.register_kv(m, s.geom, layout=lay)
        assert e.value.code < 0 and e.value.func == "shadow_client_register_kv"
        assert e.value.message
        # Register, unregister twice (the second does nothing), then it is gone.
        r = c.register_kv(m, s.geom, n_blocks=8)
        assert r.n_blocks == 8 and r.registered
        with r:
            pass
        assert not r.registered
        r.unregister()
        with pytest.raises(ss.ShadowError) as e:
            c.fetch(r, b_ids(0, 1), tokens=tokens, ns=s.ns, n_chunks=1)
        assert e.value.code == -errno.ENOENT
        with pytest.raises(ss.ShadowError) as e:
            c.unregister(r.id)
        assert e.value.code == -errno.ENOENT
    with pytest.raises(TypeError):
        c.register_kv(np.zeros(100, np.uint8), s.geom)
    with pytest.raises(ValueError):
        ss.HostMemory(0)


def test_backpressure_and_event_fd(daemon):
    geom = small_geom()
    with ss.Client(daemon.endpoint, max_inflight=2) as c, \
            ss.HostMemory(8 * ss.block_nbytes(geom)) as m:
        r = c.register_kv(m, geom)
        ns = c.namespace(r, MODEL)
        keys = c.chunk_keys(r, ns, make_tokens(2, 7))
        c.lookup(keys=keys)
        c.lookup(keys=keys)
        with pytest.raises(ss.ShadowError) as e:
            c.lookup(keys=keys)
        assert e.value.code == -errno.EAGAIN
        assert len(c.collect(2)) == 2
        # wait(0) arms the fd, which turns readable with the next completion.
        assert c.wait(0) is False
        fd = c.fileno()
        assert select.select([fd], [], [], 0)[0] == []
        t = c.lookup(keys=keys)
        assert select.select([fd], [], [], 10)[0] == [fd]
        done = c.poll(1)
        assert len(done) == 1 and done[0].ticket == t and done[0].n_found == 0
        assert c.poll() == [] and c.wait(10) is False


def test_threads_submit_and_poll(setup):
    """One thread submits while another polls (client.h's split); users come back right."""
    s, c = setup, setup.c
    tokens = make_tokens(4, 8)
    s.save(tokens, 4)
    keys = c.chunk_keys(s.a, s.ns, tokens)
    n = 200
    got = {}
    err = []

    def poller():
        try:
            deadline = time.monotonic() + 60
            while len(got) < n and time.monotonic() < deadline:
                for d in c.poll():
                    got[d.user] = d
                if len(got) < n:
                    c.wait(50)
        except Exception as e:  # noqa: BLE001
            err.append(e)

    th = threading.Thread(target=poller)
    th.start()
    sent = 0
    while sent < n and not err:
        try:
            c.fetch(s.b, b_ids(sent % 4, 1), keys=keys[sent % 4:sent % 4 + 1],
                    first_chunk=sent % 4, user=sent)
            sent += 1
        except ss.ShadowError as e:
            if e.code != -errno.EAGAIN:
                raise
            time.sleep(0.001)
    th.join(90)
    assert not err and sorted(got) == list(range(n))
    assert all(d.ok and d.n_ok == 1 for d in got.values())
    assert s.same(0, 4)


def test_close_and_context(daemon):
    c = ss.Client(daemon.endpoint)
    assert not c.closed and repr(c).startswith("Client(")
    m = ss.HostMemory(4 * ss.block_nbytes(small_geom()))
    r = c.register_kv(m, small_geom())
    c.close()
    c.close()
    assert c.closed and not r.registered
    r.unregister()  # nothing to do
    with pytest.raises(ValueError):
        c.poll()
    with pytest.raises(ValueError):
        c.lookup(keys=b"\0" * 32)
    m.close()
    m.close()
    with pytest.raises(ValueError):
        m.array()
    with ss.Client(daemon.endpoint) as c2:
        assert c2.stats()["regions"] == 0
    assert c2.closed
    c3 = ss.Client(daemon.endpoint)
    del c3  # __del__ closes
    # The daemon forgets the closed clients.
    with ss.Client(daemon.endpoint) as c4:
        assert c4.stats()["client_id"] > 0


def test_connect_errors(client_lib, tmp_path):
    with pytest.raises(ss.ShadowError) as e:
        ss.Client("unix:%s/none.sock" % tmp_path, connect_timeout_ms=500)
    assert e.value.code in (-errno.ENOENT, -errno.ECONNREFUSED)
    assert "none.sock" in str(e.value)
    with pytest.raises(ss.ShadowError) as e:
        ss.Client("carrier-pigeon:1")
    assert e.value.code == -errno.EINVAL


def test_client_and_codec_keys_agree(setup, shadow_lib):
    s, c = setup, setup.c
    tokens = make_tokens(5, 9)
    ns = codec.namespace(MODEL, s.geom)
    assert ns == s.ns
    assert c.namespace(s.a, MODEL, b"salt") == codec.namespace(MODEL, s.geom, b"salt")
    assert c.chunk_keys(s.a, ns, tokens) == codec.chunk_keys(ns, tokens, s.geom.chunk_tokens)
    assert c.chunk_keys(s.a, ns, tokens[:63]) == []
    assert c.chunk_keys(s.a, ns, list(map(int, tokens[:128]))) == \
        codec.chunk_keys(ns, tokens[:128], 64)


def test_daemon_gone(shadowd_binary):
    """SIGKILLed daemon: requests in flight complete with -ECONNRESET; then calls fail."""
    d = Daemon(shadowd_binary)
    try:
        geom = small_geom()
        with ss.Client(d.endpoint, call_timeout_ms=2000) as c, \
                ss.HostMemory(8 * ss.block_nbytes(geom)) as m:
            r = c.register_kv(m, geom)
            ns = c.namespace(r, MODEL)
            tokens = make_tokens(2, 10)
            os.kill(d.proc.pid, 9)
            d.proc.wait()
            done, resets = [], 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    c.fetch(r, [0, 1, 2, 3, 4, 5, 6, 7], tokens=tokens, ns=ns, n_chunks=2)
                except ss.ShadowError as e:
                    assert e.code == -errno.EPIPE
                    break
                done += c.poll()
                time.sleep(0.02)
            else:
                pytest.fail("submissions still accepted 10 s after the daemon died")
            while time.monotonic() < deadline:
                try:
                    done += c.poll()
                    c.wait(50)
                except ss.ShadowError as e:
                    assert e.code == -errno.ECONNRESET
                    resets += 1
                    break
            assert resets == 1
            for x in done:
                assert x.status in (0, -errno.ECONNRESET)
            with pytest.raises(ss.ShadowError):
                c.stats()
    finally:
        d.kill()
