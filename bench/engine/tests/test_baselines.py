"""test_baselines.py - the engine's in-process baselines on CPU torch: the torch GPU decoder
against libshadow's C decoder, the inline fetcher against a real redis-server, and the RESP
client's handling of oversize values. Tiny geometry (2 layers, 2 KV heads, head_dim 128,
256-token chunks, 16-token blocks) over chunks tiled from the real KV dumps.

Run: SHADOW_LIB_DIR=<build>/lib PYTHONPATH=bindings/python python3 -m pytest bench/engine/tests
Skips when torch, the libraries, the KV dumps or redis-server are missing ($REDIS_SERVER names
a redis-server outside PATH, $SHADOW_KV_DIR the dumps). With CUDA, every device test also runs
on the GPU.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = os.path.dirname(HERE)
REPO = os.path.abspath(os.path.join(ENGINE, "..", ".."))
sys.path.insert(0, ENGINE)
sys.path.insert(0, os.path.join(REPO, "bindings", "python"))

try:
    from shadowserve import codec, types
    types.geometry_preset("llama3-8b")  # loads a library
except Exception as e:  # ImportError, LibraryNotFound, OSError
    pytest.skip("shadowserve bindings or libraries unavailable: %r" % (e,),
                allow_module_level=True)

import fill  # noqa: E402
import gpu_dequant  # noqa: E402
import resp  # noqa: E402
import workload  # noqa: E402

KV_DIR = os.environ.get("SHADOW_KV_DIR", os.path.join(REPO, "..", "shared", "data", "kv"))
if not os.path.isfile(os.path.join(KV_DIR, fill.DUMP_NAMES[0] + ".kvd.xz")):
    KV_DIR = "/work/shared/data/kv"
MODEL = "test/engine-baselines"
# Every device test runs on CPU torch, and on CUDA too where there is a GPU (the GPU machine:
# there these tests check the CUDA decoder bit for bit against libshadow's C decoder).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_geom():
    return types.geometry(2, 2, 128, block_tokens=16, chunk_tokens=256)


@pytest.fixture(scope="module")
def dumps():
    if not os.path.isfile(os.path.join(KV_DIR, fill.DUMP_NAMES[0] + ".kvd.xz")):
        pytest.skip("KV dumps not found in %s" % KV_DIR)
    return fill.load_dumps(KV_DIR)


def chunk_region(dumps, geom, doc, chunk):
    region = np.empty((geom.n_layers, 2, geom.chunk_tokens, geom.n_kv_heads, geom.head_dim),
                      dtype=np.uint16)
    return fill.tile_chunk(dumps, geom, doc, chunk, region)


def c_decode(geom, blob, key=None):
    """Every frame decoded by libshadow into a canonical [L][2][T][H][D] uint16 image (the NHD
    staging image of consecutive blocks is the canonical order)."""
    L, T, H, D = geom.n_layers, geom.chunk_tokens, geom.n_kv_heads, geom.head_dim
    bpc = T // geom.block_tokens
    lay = types.layout_init(geom, types.LAYOUT_NHD, bpc)
    out = np.empty((L, 2, T, H, D), dtype=np.uint16)
    view = codec.parse(blob, expect_key=key, expect_geom=geom)
    with codec.Codec(geom) as c:
        for f in range(view.n_frames):
            stage = out[f // 2, f % 2]
            c.decode_frame(view, f, lay, stage)
    return out


# ---------------------------------------------------------------------------------------------
# (a) gpu_dequant vs the C decoder
# ---------------------------------------------------------------------------------------------

SCHEMES = ["bits4+none", "bits2+none", "bits3+none", "bits5+none", "bits6+none",
           "bits7+none", "int8+none", "bits4-g64+none", "bits4-g100+none", "bits4-c32+none",
           "bits4-k16x8-v4x64+none", "bits3-L1=5/6+none", "bf16+none"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gpu_dequant_matches_c(dumps, scheme, device):
    import baselines
    geom = tiny_geom()
    bpc = geom.chunk_tokens // geom.block_tokens
    lay = types.layout_init(geom, types.LAYOUT_NHD, bpc)
    key = bytes(range(32))
    region = chunk_region(dumps, geom, 0, 1)
    with codec.Codec(geom) as c:
        blob = c.encode(scheme, key, 1, region, lay, list(range(bpc)))
    ref = c_decode(geom, blob, key)
    buf = np.frombuffer(blob, dtype=np.uint8).copy()
    view = codec.parse(buf, expect_key=key, expect_geom=geom)
    batches, tab = baselines.plan_gpu_chunk(buf, buf.size, view, geom)
    if scheme == "bits4+none":
        assert len(batches) == 2  # all K frames in one batch, all V frames in another
    baselines.verify_checksums(buf.ctypes.data, tab)
    out = torch.zeros((geom.n_layers, 2, geom.chunk_tokens, geom.n_kv_heads, geom.head_dim),
                      dtype=torch.bfloat16, device=device)
    sc = gpu_dequant.Scratch(device)
    baselines.decode_batches_on_device(
        torch.from_numpy(buf).to(device), batches, geom,
        lambda kind, layers: out[layers[0]:layers[-1] + 1, kind], sc,
        baselines.params_nonfinite(buf, batches))
    out = out.cpu()
    got = out.view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(got, ref), "max |diff| %g" % np.abs(
        got.astype(np.int32) - ref.astype(np.int32)).max()
    # and it is lossy but close to the source
    x = torch.from_numpy(region.view(np.int16)).view(torch.bfloat16).float()
    y = out.float()
    rel = ((y - x).norm() / x.norm()).item()
    assert rel < (0.15 if scheme.startswith("bits4") else 0.6), rel


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_dequant_nan_params(device):
    """Non-finite (hostile) parameters: NaN results are the canonical 0x7fc0, as in C."""
    T, H, D = 4, 1, 8
    q = torch.arange(T * H * D, dtype=torch.uint8).view(1, -1) % 16
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous().to(device)
    scale = torch.tensor([[float("inf")] * 8], device=device)
    bias = torch.tensor([[float("-inf")] * 8], device=device)
    out = torch.empty((1, T, H, D), dtype=torch.bfloat16, device=device)
    gpu_dequant.dequant_uniform(packed, 4, True, scale, bias, T, 1, T, H, D, out,
                                canonical_nan=True)
    bits = out.cpu().view(torch.int16).view(-1)
    # q == 0: 0 * inf = NaN; q > 0: inf - inf = NaN: every element NaN
    assert (bits == 0x7FC0).all()


def test_unpack_symbols_all_bits():
    rng = np.random.default_rng(3)
    for bits in range(2, 9):
        n = 8 * 37
        sym = rng.integers(0, 1 << bits, size=n, dtype=np.uint64)
        v = 0
        for i, s in enumerate(sym.tolist()):
            v |= s << (i * bits)
        packed = np.frombuffer(v.to_bytes(n * bits // 8, "little"), dtype=np.uint8).copy()
        got = gpu_dequant.unpack_symbols(torch.from_numpy(packed).view(1, -1), bits, n)
        assert got.view(-1).tolist() == sym.tolist(), bits


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------

def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture(scope="module")
def redis_server():
    exe = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    tmp = tempfile.mkdtemp(prefix="engine-redis-")
    for _ in range(5):
        port = _free_port()
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with resp.Redis("127.0.0.1", port, timeout=1) as r:
                    if r.ping():
                        break
            except (OSError, resp.RedisError):
                time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        pytest.skip("could not start redis-server")
    yield ("127.0.0.1", port)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def test_resp_basics_and_oversize(redis_server):
    host, port = redis_server
    with resp.Redis(host, port, db=3, timeout=10) as r:
        r.flushdb()
        big = np.arange(1 << 20, dtype=np.uint32).view(np.uint8)  # 4 MiB
        r.set_many([("a", b"hello"), ("big", big), ("empty", b"")])
        assert r.exists_many(["a", "nope", "big", "empty"]) == [True, False, True, True]
        buf = np.zeros(16, dtype=np.uint8)
        assert r.get_into("a", buf) == 5 and bytes(buf[:5]) == b"hello"
        assert r.get_into("empty", buf) == 0
        assert r.get_into("nope", buf) is None
        with pytest.raises(resp.ValueTooLarge) as ei:
            r.get_into("big", buf)
        assert ei.value.value_nbytes == big.nbytes
        # the stream stayed in step: the connection still works
        assert r.get_into("a", buf) == 5
        out = np.empty(big.nbytes + 10, dtype=np.uint8)
        assert r.get_into("big", out) == big.nbytes and np.array_equal(out[:big.nbytes], big)
        with pytest.raises(resp.RedisError):
            r.command("NOSUCHCOMMAND")
        assert r.ping()
        r.command("LPUSH", "list", "x")
        with pytest.raises(resp.RedisError):  # WRONGTYPE
            r.get_into("list", buf)
        assert r.ping()
        r.set_many([("k%d" % i, b"v" * i) for i in range(500)], pipeline=True)
        assert r.get("k499") == b"v" * 499
        r.flushdb()


def _fill_both(redis_server, dumps, geom, docs, prefix):
    host, port = redis_server
    st_z = fill.fill(host, port, 1, geom, "bits4+zstd1", docs, MODEL, KV_DIR, prefix, threads=2,
                     flush=True)
    st_n = fill.fill(host, port, 2, geom, "bits4+none", docs, MODEL, KV_DIR, prefix, threads=2,
                     flush=True)
    return st_z, st_n


def _drain(f, n_reqs, timeout=30):
    done, deadline = {}, time.monotonic() + timeout
    while len(done) < n_reqs and time.monotonic() < deadline:
        for rid, st, wire in f.poll():
            done[rid] = (st, wire)
        time.sleep(0.002)
    assert len(done) == n_reqs, "requests did not complete"
    return done


def _reference_chunks(redis_server, db, geom, keys, prefix):
    host, port = redis_server
    out = []
    with resp.Redis(host, port, db) as r:
        for k in keys:
            blob = r.get(codec.store_key(k, prefix))
            out.append(c_decode(geom, blob, k))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["cpu-inline", "gpu-decode"])
def test_inline_fetcher(redis_server, dumps, mode, device):
    import baselines
    geom = tiny_geom()
    L, T, H, D = geom.n_layers, geom.chunk_tokens, geom.n_kv_heads, geom.head_dim
    bt = geom.block_tokens
    bpc = T // bt
    prefix = "test:v1"
    docs = workload.make_docs(7, [3 * T + 17, 2 * T], vocab=8192)
    st_z, st_n = _fill_both(redis_server, dumps, geom, docs, prefix)
    assert st_z["n_chunks"] == st_n["n_chunks"] == 5
    assert st_z["stored_bytes"] < st_n["stored_bytes"] < st_z["bf16_bytes"]
    db = 1 if mode == "cpu-inline" else 2
    ns = codec.namespace(MODEL, geom)
    keys0 = codec.chunk_keys(ns, docs[0], T)
    keys1 = codec.chunk_keys(ns, docs[1], T)
    ref0 = _reference_chunks(redis_server, db, geom, keys0, prefix)
    ref1 = _reference_chunks(redis_server, db, geom, keys1, prefix)
    # the C decode of each scheme equals the other's (same symbols, only the entropy stage
    # differs) when both were filled from the same tiling
    other = _reference_chunks(redis_server, 3 - db, geom, keys0[:1], prefix)
    assert np.array_equal(other[0], ref0[0])

    n_blocks = 96
    sentinel = -7.0
    kv = torch.full((L, 2, n_blocks, bt, H, D), sentinel, dtype=torch.bfloat16, device=device)
    host, port = redis_server
    f = baselines.InlineFetcher(mode, host, port, db, prefix, geom, kv, n_threads=2,
                                device=device)
    try:
        # request 0: doc 0's 3 chunks into consecutive blocks 0..47
        ids0 = list(range(0, 3 * bpc))
        f.submit("r0", keys0, ids0)
        # request 1: doc 1's 2 chunks into scattered, reversed blocks
        ids1 = list(range(95, 95 - 2 * bpc, -1))
        f.submit("r1", keys1, ids1)
        done = _drain(f, 2)
        assert done["r0"][0] == [types.CHUNK_OK] * 3
        assert done["r1"][0] == [types.CHUNK_OK] * 2
        assert done["r0"][1] > 0 and f.chunks_ok == 5 and f.chunks_failed == 0
        def check(ref, ids):
            kvu = kv.cpu().view(torch.int16).numpy().view(np.uint16)
            for c in range(len(ref)):
                cid = ids[c * bpc:(c + 1) * bpc]
                got = kvu[:, :, cid].reshape(L, 2, T, H, D)
                assert np.array_equal(got, ref[c])
        check(ref0, ids0)
        check(ref1, ids1)

        # a missing key and a corrupt chunk: reported, and kv untouched
        kv.fill_(sentinel)
        missing = bytes(32)
        with resp.Redis(host, port, db) as r:
            # corrupt a payload byte of doc 0's chunk 1 (only the frame checksum can tell)
            sk = codec.store_key(keys0[1], prefix)
            blob = r.get(sk)
            view = codec.parse(blob)
            off = view.frame(3).payload_offset + 100
            r.command("SETRANGE", sk, off, bytes([blob[off] ^ 0x5A]))
            # and a metadata byte of chunk 2 (the metadata checksum)
            sk2 = codec.store_key(keys0[2], prefix)
            blob2 = r.get(sk2)
            r.command("SETRANGE", sk2, 200, bytes([blob2[200] ^ 1]))
        f.submit("r2", [keys0[0], keys0[1], missing, keys0[2]], list(range(4 * bpc)))
        done = _drain(f, 1)
        assert done["r2"][0] == [types.CHUNK_OK, types.CHUNK_CORRUPT, types.CHUNK_MISS,
                                 types.CHUNK_CORRUPT]
        kvf = kv.float().cpu()
        assert (kvf[:, :, bpc:4 * bpc] == sentinel).all()
        check(ref0[:1], list(range(bpc)))
        # a deadline already passed
        f.submit("r3", keys0[:1], list(range(bpc)), deadline_s=-1)
        assert _drain(f, 1)["r3"][0] == [types.CHUNK_TIMEOUT]
        # a wrong key under a store key (another chunk's container): corrupt
        with resp.Redis(host, port, db) as r:
            r.set_many([(codec.store_key(missing, prefix), r.get(codec.store_key(keys1[0],
                                                                                 prefix)))])
        f.submit("r4", [missing], list(range(bpc)))
        assert _drain(f, 1)["r4"][0] == [types.CHUNK_CORRUPT]
        f.submit("r5", [], [])
        assert _drain(f, 1)["r5"][0] == []
    finally:
        f.close()


def test_gpu_decode_rejects_entropy_coded(redis_server, dumps):
    """gpu-decode given a zstd chunk reports CHUNK_ERROR (unsupported), not a crash."""
    import baselines
    geom = tiny_geom()
    host, port = redis_server
    docs = workload.make_docs(11, [256], vocab=8192)
    fill.fill(host, port, 4, geom, "bits4+zstd1", docs, MODEL, KV_DIR, "t2", threads=1,
              flush=True)
    keys = codec.chunk_keys(codec.namespace(MODEL, geom), docs[0], 256)
    kv = torch.zeros((2, 2, 16, 16, 2, 128), dtype=torch.bfloat16)
    with baselines.InlineFetcher("gpu-decode", host, port, 4, "t2", geom, kv, n_threads=1,
                                 device="cpu") as f:
        f.submit(1, keys, list(range(16)))
        assert _drain(f, 1)[1][0] == [types.CHUNK_ERROR]
        assert f.counts["unsupported"] == 1
    assert (kv.float() == 0).all()


def test_tiling(dumps):
    """Tiling repeats no head-vector row inside a frame (except layer 0's V, whose repeated
    tokens repeat in the real dump too), and handles head dims above and below 128."""
    geom = types.geometry(8, 4, 128, block_tokens=16, chunk_tokens=256)
    r = chunk_region(dumps, geom, 1, 3)
    for l in range(geom.n_layers):
        for k in range(2):
            rows = np.ascontiguousarray(r[l, k].reshape(-1, geom.head_dim))
            n_unique = np.unique(rows.view(np.dtype((np.void, rows.shape[1] * 2)))).size
            if (l, k) != (0, 1):
                assert n_unique == rows.shape[0], (l, k)
    # the same position in two docs of different parity comes from different dumps
    assert not np.array_equal(r, chunk_region(dumps, geom, 0, 3))
    for hd in (64, 192):
        g = types.geometry(2, 3, hd, block_tokens=16, chunk_tokens=256)
        r = chunk_region(dumps, g, 0, 0)
        assert r.shape[-1] == hd and (r != 0).any()
