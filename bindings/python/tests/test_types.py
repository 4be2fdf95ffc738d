"""test_types.py - the ctypes mirrors match the C headers; geometry and layout helpers."""
import ctypes
import os
import shutil
import subprocess

import pytest

import shadowserve as ss
from shadowserve import types

from conftest import HERE, REPO, small_geom


@pytest.fixture(scope="module")
def abi(tmp_path_factory):
    """{"struct": size, "struct.field": offset, "const NAME": value} from the C helper."""
    exe = os.environ.get("SHADOW_PY_ABI_DUMP")
    if not exe:
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            pytest.skip("no SHADOW_PY_ABI_DUMP and no C compiler to build abi_dump.c")
        exe = str(tmp_path_factory.mktemp("abi") / "abi_dump")
        subprocess.run([cc, "-std=c11", "-I", os.path.join(REPO, "include"),
                        os.path.join(HERE, "abi_dump.c"), "-o", exe], check=True)
    out = subprocess.run([exe], check=True, stdout=subprocess.PIPE).stdout.decode()
    table = {}
    for line in out.splitlines():
        name, value = line.rsplit(" ", 1)
        table[name] = int(value)
    return table


def test_struct_sizes_and_offsets(abi):
    checked = 0
    for cname, cls in types.C_STRUCTS.items():
        assert ctypes.sizeof(cls) == abi[cname], cname
        c_fields = {k.split(".", 1)[1]: v for k, v in abi.items() if k.startswith(cname + ".")}
        py_fields = {f: getattr(cls, f).offset for f, _ in cls._fields_}
        assert py_fields == c_fields, cname
        checked += 1
    assert checked == len(types.C_STRUCTS) == 13
    assert ctypes.sizeof(types.LayerBits) * types.MAX_LAYER_BITS == \
        abi["shadow_codec_options"] - abi["shadow_codec_options.layer_bits"]


def test_constants(abi):
    consts = {k.split(" ", 1)[1]: v for k, v in abi.items() if k.startswith("const ")}
    assert len(consts) > 50
    for name, value in consts.items():
        assert getattr(types, name) == value, name
        assert getattr(ss, name) == value, name


def test_geometry_helpers(shadow_lib):
    g = small_geom()
    assert (g.n_layers, g.n_kv_heads, g.head_dim, g.dtype, g.block_tokens, g.chunk_tokens) == \
        (2, 2, 128, ss.DTYPE_BF16, 16, 64)
    assert ss.frame_nbytes(g) == 64 * 2 * 128 * 2 == shadow_lib.shadow_geometry_frame_nbytes(
        ctypes.byref(g))
    assert ss.token_nbytes(g) == shadow_lib.shadow_geometry_token_nbytes(ctypes.byref(g))
    assert ss.block_nbytes(g) == 16 * ss.token_nbytes(g)
    assert ss.blocks_per_chunk(g) == 4

    p = ss.geometry_preset("llama3-8b")
    assert (p.n_layers, p.n_kv_heads, p.head_dim, p.chunk_tokens) == (32, 8, 128, 256)
    p = ss.geometry_preset("llama3-8b", chunk_tokens=512, block_tokens=32)
    assert (p.chunk_tokens, p.block_tokens) == (512, 32)
    with pytest.raises(ss.ShadowError) as e:
        ss.geometry_preset("no-such-model")
    assert e.value.code == ss.EUNKNOWN_NAME and "unknown" in str(e.value)


@pytest.mark.parametrize("fields", [
    (0, 2, 128, 1, 16, 64), (2, 2, 128, 9, 16, 64), (2, 2, 128, 1, 16, 40),
    (257, 2, 128, 1, 16, 64), (2, 2, 2048, 1, 16, 64), (2, 2, 128, 1, 0, 64),
    (2, 2, 128, 1, 16, 65536 + 16), (2, 300, 128, 1, 16, 64)])
def test_bad_geometry_agrees_with_c(shadow_lib, fields):
    g = types.KVGeometry(*fields)
    with pytest.raises(ss.ShadowError) as e:
        ss.check_geometry(g)
    assert e.value.code == ss.EGEOMETRY
    with pytest.raises(ss.ShadowError) as e:
        shadow_lib.shadow_geometry_validate(ctypes.byref(g))
    assert e.value.code == ss.EGEOMETRY


def test_good_geometry_agrees_with_c(shadow_lib):
    for name in ss.codec.preset_names():
        g = ss.geometry_preset(name)
        assert shadow_lib.shadow_geometry_validate(ctypes.byref(g)) == 0
        assert ss.check_geometry(g) is g


def test_layout_init():
    g = small_geom()
    lay = ss.layout_init(g, ss.LAYOUT_NHD, 64)
    assert lay.region_nbytes == 64 * ss.block_nbytes(g)
    assert lay.n_blocks == 64 and lay.n_layers == 2
    assert lay.head_stride == 256 and lay.token_stride == 512 and lay.block_stride == 8192
    assert lay.base[1][1] == 3 * 64 * 8192
    lay = ss.layout_init(g, ss.LAYOUT_HND, 8, region_offset=4096)
    assert lay.region_nbytes == 4096 + 8 * ss.block_nbytes(g)
    assert lay.base[0][0] == 4096 and lay.token_stride == 256
    lay = ss.layout_init(g, ss.LAYOUT_CROSS_LAYER_NHD, 8, 0, 1 << 20)
    assert lay.region_nbytes == 1 << 20 and lay.block_stride == ss.block_nbytes(g)
    with pytest.raises(ss.ShadowError) as e:
        ss.layout_init(g, ss.LAYOUT_NHD, 64, 0, 1000)
    assert e.value.code == ss.EGEOMETRY
    with pytest.raises(ss.ShadowError) as e:
        ss.layout_init(g, 99, 64)
    assert e.value.errno == 22  # EINVAL
    assert lay.copy().block_stride == lay.block_stride


def test_chunk_key_struct():
    k = types.ChunkKey.from_bytes(bytes(range(32)))
    assert bytes(k) == bytes(range(32))
    with pytest.raises(ValueError):
        types.ChunkKey.from_bytes(b"short")


def test_library_not_found(monkeypatch):
    from shadowserve import _lib
    monkeypatch.setenv("SHADOW_LIB_DIR", "/nonexistent")
    monkeypatch.setattr(_lib, "_REPO", "/nonexistent")
    with pytest.raises(ss.LibraryNotFound) as e:
        _lib.find_library("shadow_no_such_lib")
    assert "SHADOW_LIB_DIR" in str(e.value)
