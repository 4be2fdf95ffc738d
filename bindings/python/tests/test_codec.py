"""test_codec.py - shadowserve.codec over libshadow.so: keys, containers, encode and decode."""
import errno
import threading

import numpy as np
import pytest

import shadowserve as ss
from shadowserve import codec

from conftest import bf16_to_f32, kv_like, nhd_blocks, small_geom

N_BLOCKS = 16
SRC_IDS = [3, 4, 5, 6]
DST_IDS = [13, 2, 7, 9]


@pytest.fixture
def region(shadow_lib):
    """An NHD cache of 16 blocks in a numpy array (uint16 = bf16 bits), KV-like values."""
    g = small_geom()
    lay = ss.layout_init(g, ss.LAYOUT_NHD, N_BLOCKS)
    arr = kv_like(lay.region_nbytes // 2, seed=5)
    return g, lay, arr


# --------------------------------------------------------------------------------------------
# Keys (docs/keys.md vectors V1-V3)
# --------------------------------------------------------------------------------------------


def test_key_vectors(shadow_lib):
    mini = ss.geometry_preset("minillama-h128")
    assert codec.namespace("minillama-h128", mini).hex() == \
        "2ebd4cc4269b14c5e462a4054103095468aee2998e721c92eddaf3de413ac5d9"
    assert codec.namespace("minillama-h128", mini, salt=b"tenant-a").hex() == \
        "c4932ca61806e1303f9b53adbce19798b6aea0ec8e830349efaae726159df86e"
    g = ss.geometry_preset("llama3-8b")
    ns = codec.namespace("meta-llama/Meta-Llama-3-8B", g)
    assert ns.hex() == "f800bdbd4571f431c23f09429192ebb83af19f056e06c569c118320e00df27f8"
    keys = codec.chunk_keys(ns, range(512), 256)
    assert [k.hex() for k in keys] == [
        "56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773",
        "842b1adb5a896ee5c7b41efbacb55bee9146b4fc9b0c6868776854b95b52e5e8"]
    assert len(codec.chunk_keys(ns, np.arange(511), 256)) == 1
    assert codec.chunk_keys(ns, np.arange(255), 256) == []
    assert codec.chunk_keys(ns, [], 256) == []
    sk = codec.store_key(keys[0])
    assert sk == "shadow:v1:56600c337e3eef05ae2987ddf48c8973d6fb2d12cc29b32b1fbee3295d03f773"
    assert codec.parse_store_key(sk) == keys[0]
    assert codec.store_key(keys[0], "tenant-a:shadow:v1").startswith("tenant-a:shadow:v1:")
    with pytest.raises(ss.ShadowError) as e:
        codec.store_key(keys[0], "bad prefix")
    assert e.value.errno == errno.EINVAL and e.value.func == "shadow_key_format"
    with pytest.raises(ss.ShadowError):
        codec.parse_store_key(sk.upper())
    with pytest.raises(ss.ShadowError) as e:
        codec.namespace("", g)
    assert e.value.code == -errno.EINVAL
    with pytest.raises(ValueError):
        codec.chunk_keys(b"short", range(256), 256)


# --------------------------------------------------------------------------------------------
# Layouts and plans
# --------------------------------------------------------------------------------------------


def test_plan_frame_and_offsets(region):
    g, lay, _ = region
    # Consecutive blocks merge into one run; scattered ones give one run per block.
    assert codec.plan_frame(lay, g, 1, ss.KV_V, [4, 5, 6, 7]) == [
        (0, codec.layout_offset(lay, g, 1, ss.KV_V, 4), 4 * 8192)]
    runs = codec.plan_frame(lay, g, 0, ss.KV_K, DST_IDS)
    assert [(s, n) for s, _, n in runs] == [(i * 8192, 8192) for i in range(4)]
    assert [d for _, d, _ in runs] == [codec.layout_offset(lay, g, 0, ss.KV_K, b)
                                      for b in DST_IDS]
    assert codec.layout_offset(lay, g, 1, ss.KV_K, 2, 3, 1) == \
        lay.base[1][0] + 2 * lay.block_stride + 3 * lay.token_stride + lay.head_stride
    assert codec.stage_offset(lay, g, 17, 1) == 8192 + (1 * 2 + 1) * 256
    with pytest.raises(ss.ShadowError):
        codec.stage_offset(lay, g, 64, 0)
    with pytest.raises(ss.ShadowError) as e:
        codec.plan_frame(lay, g, 0, ss.KV_K, [0, 1, 2, N_BLOCKS])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        codec.plan_frame(lay, g, 0, ss.KV_K, [0, 1])
    codec.layout_validate(lay, g)
    bad = lay.copy()
    bad.elem_stride = 4
    with pytest.raises(ss.ShadowError) as e:
        codec.layout_validate(bad, g)
    assert e.value.code == ss.EGEOMETRY


def test_plan_frame_many_runs(shadow_lib):
    """A layout with padded heads needs more runs than blocks: the plan grows its buffer."""
    g = small_geom()
    lay = ss.layout_init(g, ss.LAYOUT_NHD, 8)
    lay.head_stride = 512
    lay.token_stride = 1024
    lay.block_stride = 16 * 1024
    lay.base[0][1] = 8 * 16 * 1024
    lay.base[1][0] = 2 * 8 * 16 * 1024
    lay.base[1][1] = 3 * 8 * 16 * 1024
    lay.region_nbytes = 4 * 8 * 16 * 1024
    codec.layout_validate(lay, g)
    runs = codec.plan_frame(lay, g, 0, ss.KV_K, [0, 1, 2, 3])
    assert len(runs) == 4 * 16 * 2
    assert sum(n for _, _, n in runs) == ss.frame_nbytes(g)


# --------------------------------------------------------------------------------------------
# Encode, parse, decode
# --------------------------------------------------------------------------------------------


def _decode_into(c, blob, g, lay, dst, key):
    """Parse blob and decode every frame into dst (a uint8 view of a cache) at DST_IDS."""
    view = codec.parse(blob, expect_key=key, expect_geom=g)
    assert view.n_frames == 2 * g.n_layers and view.n_tokens == g.chunk_tokens
    assert view.total_nbytes == len(blob) and view.complete
    assert view.key == key and view.chunk_index == 7
    stage = np.empty(ss.frame_nbytes(g), dtype=np.uint8)
    for i, f in enumerate(view.frames()):
        assert (f.layer, f.kind) == (i // 2, i % 2)
        assert f.decoded_nbytes == ss.frame_nbytes(g)
        c.decode_frame(view, i, lay, stage)
        for s, d, n in codec.plan_frame(lay, g, f.layer, f.kind, DST_IDS):
            dst[d:d + n] = stage[s:s + n]
    return view


def test_roundtrip_lossless(region):
    g, lay, src = region
    key = bytes(range(32))
    with ss.Codec(g) as c:
        for scheme in ("bf16+none", "bf16planes+zstd1"):
            blob = c.encode(scheme, key, 7, src, lay, SRC_IDS)
            dst = np.zeros(lay.region_nbytes, dtype=np.uint8)
            view = _decode_into(c, blob, g, lay, dst, key)
            a = nhd_blocks(src, g, N_BLOCKS)[:, :, SRC_IDS]
            b = nhd_blocks(dst.view(np.uint16), g, N_BLOCKS)[:, :, DST_IDS]
            assert np.array_equal(a, b), scheme
            if scheme == "bf16+none":
                assert view.frame(0).quant == ss.QUANT_NONE
                assert view.frame(0).codec == ss.CODEC_NONE
                assert len(blob) > 2 * g.n_layers * ss.frame_nbytes(g)
            else:
                assert view.frame(0).codec == ss.CODEC_ZSTD
    assert c.closed
    c.close()  # idempotent
    with pytest.raises(ValueError):
        c.encode("bf16+none", key, 0, src, lay, SRC_IDS)


def test_roundtrip_bits4(region):
    g, lay, src = region
    key = b"\x07" * 32
    c = ss.Codec(g)
    blob = c.encode("bits4+zstd1", key, 7, src, lay, SRC_IDS)
    assert len(blob) < 2 * g.n_layers * ss.frame_nbytes(g) / 3  # compressed
    dst = np.zeros(lay.region_nbytes, dtype=np.uint8)
    view = _decode_into(c, blob, g, lay, dst, key)
    assert view.frame(1).quant == ss.QUANT_UNIFORM and view.frame(1).bits == 4
    a = bf16_to_f32(nhd_blocks(src, g, N_BLOCKS)[:, :, SRC_IDS]).astype(np.float64)
    b = bf16_to_f32(nhd_blocks(dst.view(np.uint16), g, N_BLOCKS)[:, :, DST_IDS])
    worst = 0.0
    for layer in range(g.n_layers):
        for kind in range(2):
            x, y = a[layer, kind], b[layer, kind]
            rng, amax = x.max() - x.min(), np.abs(x).max()
            # 4-bit min-max rounding (R/30), bf16 output, scale and offset (2^-8 each).
            bound = 2 * (rng / 30 + rng / 256 + (np.abs(x) + amax) / 256)
            err = np.abs(y - x)
            assert np.all(err <= bound), (layer, kind, float(err.max()))
            worst = max(worst, float(err.max() / rng))
    assert worst > 0  # lossy indeed
    c.close()


def test_encode_into_and_buffers(region):
    g, lay, src = region
    key = b"\x01" * 32
    c = ss.Codec(g)
    bound = c.encode_bound("bf16+none")
    assert bound >= 2 * g.n_layers * ss.frame_nbytes(g)
    out = bytearray(bound)
    n = c.encode_into("bf16+none", key, 0, src, lay, np.array(SRC_IDS), out)
    blob = bytes(out[:n])
    assert blob == c.encode(ss.codec.parse_scheme("bf16+none"), key, 0, src, lay, SRC_IDS)
    # Any buffer form: bytes, memoryview, (address, nbytes), address only.
    assert codec.peek(blob) == (codec.parse(blob).meta_nbytes, n)
    assert codec.peek(memoryview(out)[:ss.CHUNK_HEADER_NBYTES])[1] == n
    arr = np.frombuffer(blob, dtype=np.uint8)
    assert codec.parse((arr.ctypes.data, arr.nbytes)).n_frames == 4
    assert c.encode("bf16+none", key, 0, src.ctypes.data, lay, SRC_IDS) == blob
    text = codec.describe(blob)
    assert "frame" in text or "layer" in text
    assert codec.scheme_name(codec.parse_scheme("bits4+zstd1")) == "bits4+zstd1"
    # Bad arguments raise before C could read out of bounds.
    with pytest.raises(ValueError):
        c.encode("bf16+none", key, 0, src[:100], lay, SRC_IDS)
    with pytest.raises(ValueError):
        c.encode("bf16+none", key, 0, src, lay, SRC_IDS[:3])
    with pytest.raises(ss.ShadowError) as e:
        c.encode("bf16+lz4", key, 0, src, lay, SRC_IDS)
    assert e.value.code == ss.EUNKNOWN_NAME
    with pytest.raises(ss.ShadowError) as e:
        c.encode("bf16+none", key, 0, src, lay, [0, 1, 2, N_BLOCKS])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        c.encode_into("bf16+none", key, 0, src, lay, SRC_IDS, b"\0" * bound)
    c.close()


def test_parse_errors(region):
    g, lay, src = region
    key = b"\x02" * 32
    c = ss.Codec(g)
    blob = c.encode("bf16planes+zstd1", key, 0, src, lay, SRC_IDS)
    view = codec.parse(blob)
    with pytest.raises(ss.ShadowError) as e:
        codec.parse(blob[:view.meta_nbytes - 1])
    assert e.value.code == ss.ETRUNCATED
    with pytest.raises(ss.ShadowError) as e:
        codec.parse(blob, expect_key=b"\x03" * 32)
    assert e.value.code == ss.EKEYMISMATCH
    other = ss.geometry(3, 2, 128, block_tokens=16, chunk_tokens=64)
    with pytest.raises(ss.ShadowError) as e:
        codec.parse(blob, expect_geom=other)
    assert e.value.code == ss.EGEOMETRY
    bad = bytearray(blob)
    bad[40] ^= 0xFF  # inside the metadata: its checksum fails
    with pytest.raises(ss.ShadowError) as e:
        codec.parse(bad)
    assert e.value.code == ss.ECORRUPT
    # A damaged payload fails its frame's decode, not the parse.
    bad = bytearray(blob)
    f = view.frame(2)
    bad[f.payload_offset + f.payload_nbytes // 2] ^= 0x55
    bview = codec.parse(bad)
    stage = np.empty(ss.frame_nbytes(g), dtype=np.uint8)
    c.decode_frame(bview, 0, lay, stage)
    with pytest.raises(ss.ShadowError) as e:
        c.decode_frame(bview, 2, lay, stage)
    assert e.value.code == ss.ECORRUPT
    # Payloads that have not arrived, a stage too small, a frame out of range.
    part = codec.parse(blob[:view.frame(1).payload_offset])
    assert not part.complete
    c.decode_frame(part, 0, lay, stage)
    with pytest.raises(ValueError):
        c.decode_frame(part, 1, lay, stage)
    with pytest.raises(ss.ShadowError) as e:
        c.decode_frame(view, 0, lay, stage[:1000])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ss.ShadowError):
        c.decode_frame(view, 4, lay, stage)
    with pytest.raises(ValueError):
        c.decode_frame(view, 0, lay, np.empty(ss.frame_nbytes(g), np.uint8)[::-1])
    c.close()


def test_parallel_decode_threads(region):
    """One Codec per thread; the calls release the GIL (CDLL), results are the same."""
    g, lay, src = region
    key = b"\x04" * 32
    with ss.Codec(g) as c:
        blob = c.encode("bits4+zstd1", key, 0, src, lay, SRC_IDS)
        view = codec.parse(blob)
        ref = np.empty(ss.frame_nbytes(g), np.uint8)
        c.decode_frame(view, 3, lay, ref)
    errors = []

    def work():
        try:
            with ss.Codec(g) as tc:
                out = np.empty(ss.frame_nbytes(g), np.uint8)
                for _ in range(50):
                    tc.decode_frame(view, 3, lay, out.ctypes.data)
                    assert np.array_equal(out, ref)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
