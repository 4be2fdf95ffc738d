"""test_torch.py - registering torch tensors (CUDA IPC) and using CPU tensors as buffers.

Without a GPU, CUDA tensors are stood in for by FakeCuda: a CPU tensor whose storage answers
_share_cuda_() with a made-up tuple, so the export and layout arithmetic and the daemon's
refusal (no GPU: ENOGPU) are tested anyway. With torch.cuda and a shadowd built with CUDA on
a GPU, test_cuda_region fetches into a real CUDA tensor through CUDA IPC.
"""
import numpy as np
import pytest

import shadowserve as ss
from shadowserve import client as client_mod
from shadowserve import codec

from conftest import N_BLOCKS, make_tokens, nhd_blocks, small_geom

torch = pytest.importorskip("torch")

HANDLE = bytes(range(64))


class FakeStorage:
    def __init__(self, device, handle, size_bytes, offset_bytes):
        self.info = (device, handle, size_bytes, offset_bytes, b"refcount", 0, b"event", False)

    def _share_cuda_(self):
        return self.info


class FakeCuda:
    """Looks like a CUDA tensor to register_kv; `t` is a CPU view of its storage."""

    def __init__(self, t, base_nbytes, offset_bytes=4096, handle=b"\x02c" + HANDLE, device=0):
        self.t = t
        self.storage = FakeStorage(device, handle, base_nbytes, offset_bytes)
        self.is_cuda = True
        self.dtype = t.dtype
        self.shape = t.shape

    def untyped_storage(self):
        return self.storage

    def __getattr__(self, name):  # is_contiguous, storage_offset, element_size, numel
        return getattr(self.t, name)


def nhd_shape(g, nb):
    return (g.n_layers, 2, nb, g.block_tokens, g.n_kv_heads, g.head_dim)


def test_cuda_ipc_handle_formats():
    assert ss.cuda_ipc_handle(HANDLE) == HANDLE                  # torch < 2.x: raw
    assert ss.cuda_ipc_handle(b"\x02c" + HANDLE) == HANDLE       # versioned, cudaMalloc
    assert ss.cuda_ipc_handle(b"\x03c" + HANDLE) == HANDLE
    with pytest.raises(ss.ShadowError) as e:
        ss.cuda_ipc_handle(b"\x02e" + bytes(100))                 # expandable segment
    assert e.value.code == ss.EUNSUPPORTED and "expandable" in str(e.value)
    with pytest.raises(ss.ShadowError):
        ss.cuda_ipc_handle(bytes(10))


def test_fake_cuda_whole_cache(shadow_lib):
    g = small_geom()
    nb = 16
    n = int(np.prod(nhd_shape(g, nb)))
    flat = torch.zeros(100 + n, dtype=torch.bfloat16)
    t = flat[100:].view(*nhd_shape(g, nb))        # storage offset 100 elements
    fake = FakeCuda(t, base_nbytes=flat.numel() * 2, offset_bytes=4096, device=1)
    mem, lay = client_mod._torch_region(fake, g, ss.LAYOUT_NHD, None, None)
    assert mem.kind == ss.CLIENT_MEM_CUDA and mem.cuda.device == 1
    assert bytes(mem.cuda.handle) == HANDLE
    assert lay.n_blocks == nb
    assert lay.base[0][0] == 4096 + 200
    assert lay.region_nbytes == 4096 + flat.numel() * 2
    codec.layout_validate(lay, g)
    mem, lay = client_mod._torch_region(fake, g, ss.LAYOUT_NHD, 8, 3)
    assert lay.n_blocks == 8 and mem.cuda.device == 3
    # Flat tensors: blocks from the size; the shape must match a 6-D cache.
    flat_fake = FakeCuda(t.reshape(-1), base_nbytes=flat.numel() * 2)
    assert client_mod._torch_region(flat_fake, g, ss.LAYOUT_NHD, None, None)[1].n_blocks == nb
    with pytest.raises(ValueError):
        client_mod._torch_region(FakeCuda(t.transpose(3, 4), flat.numel() * 2), g,
                                 ss.LAYOUT_NHD, None, None)   # not contiguous
    with pytest.raises(ValueError):
        client_mod._torch_region(FakeCuda(t.reshape(2, 2, nb, 16, 128, 2).contiguous(),
                                          flat.numel() * 2), g, ss.LAYOUT_NHD, None, None)
    with pytest.raises(ValueError):
        client_mod._torch_region(FakeCuda(t.to(torch.float16), flat.numel() * 2), g,
                                 ss.LAYOUT_NHD, None, None)   # wrong dtype
    with pytest.raises(ValueError):
        client_mod._torch_region(fake, g, ss.LAYOUT_NHD, nb + 1, None)  # too many blocks
    raw = FakeCuda(t.reshape(-1).view(torch.uint8), flat.numel() * 2)
    assert client_mod._torch_region(raw, g, ss.LAYOUT_NHD, None, None)[1].n_blocks == nb


def test_fake_cuda_per_layer(shadow_lib):
    g = small_geom()
    nb = 8
    per_layer = 2 * nb * g.block_tokens * g.n_kv_heads * g.head_dim
    flat = torch.zeros(3 * per_layer, dtype=torch.bfloat16)
    shape = (2, nb, g.block_tokens, g.n_kv_heads, g.head_dim)
    layers = [flat[0:per_layer].view(*shape),                     # a gap between the two
              flat[2 * per_layer:3 * per_layer].view(*shape)]
    fakes = [FakeCuda(x, flat.numel() * 2, offset_bytes=0, handle=HANDLE) for x in layers]
    mem, lay = client_mod._torch_region(fakes, g, ss.LAYOUT_NHD, None, None)
    kind_nbytes = nb * g.block_tokens * g.n_kv_heads * g.head_dim * 2
    assert lay.n_blocks == nb
    assert [lay.base[0][0], lay.base[0][1]] == [0, kind_nbytes]
    assert [lay.base[1][0], lay.base[1][1]] == [4 * kind_nbytes, 5 * kind_nbytes]
    assert lay.region_nbytes == flat.numel() * 2
    codec.layout_validate(lay, g)
    fakes[1].storage.info = (0, bytes(64)) + fakes[1].storage.info[2:]
    with pytest.raises(ss.ShadowError) as e:
        client_mod._torch_region(fakes, g, ss.LAYOUT_NHD, None, None)
    assert e.value.code == ss.EUNSUPPORTED
    with pytest.raises(ValueError):
        client_mod._torch_region(fakes[:1] * 3, g, ss.LAYOUT_NHD, None, None)


def test_register_tensors_without_gpu(client, daemon):
    g = small_geom()
    with pytest.raises(TypeError):
        client.register_kv(torch.zeros(nhd_shape(g, 4), dtype=torch.bfloat16), g)
    if daemon.cuda:
        pytest.skip("this shadowd has a GPU: test_cuda_region covers real tensors")
    t = torch.zeros(nhd_shape(g, 4), dtype=torch.bfloat16)
    with pytest.raises(ss.ShadowError) as e:
        client.register_kv(FakeCuda(t, t.numel() * 2 + 4096), g)
    assert e.value.code == ss.ENOGPU and e.value.func == "shadow_client_register_kv"


def test_cpu_tensor_views(client):
    """A CPU engine's cache as a torch view of HostMemory; the codec takes CPU tensors."""
    g = small_geom()
    mem_a = ss.HostMemory(N_BLOCKS * ss.block_nbytes(g))
    mem_b = ss.HostMemory(N_BLOCKS * ss.block_nbytes(g))
    kv_a = torch.from_numpy(mem_a.array(np.int16)).view(torch.bfloat16).view(
        *nhd_shape(g, N_BLOCKS))
    kv_b = torch.from_numpy(mem_b.array(np.int16)).view(torch.bfloat16).view(
        *nhd_shape(g, N_BLOCKS))
    kv_a.copy_(torch.randn(kv_a.shape).to(torch.bfloat16))
    ra = client.register_kv(mem_a, g)
    rb = client.register_kv(mem_b, g)
    ns = client.namespace(ra, "torch-model")
    tokens = torch.randint(0, 1000, (4 * 64,), dtype=torch.int64)
    client.save(ra, torch.arange(16), tokens=tokens, ns=ns)
    assert client.collect(1)[0].ok
    client.fetch(rb, torch.arange(16, 32), tokens=tokens, ns=ns)
    assert client.collect(1)[0].ok
    assert torch.equal(kv_a[:, :, 0:16].view(torch.int16), kv_b[:, :, 16:32].view(torch.int16))
    # Codec on a CPU tensor = on its numpy twin.
    lay = ra.layout
    with ss.Codec(g) as c:
        x = c.encode("bf16+none", b"\0" * 32, 0, kv_a, lay, [0, 1, 2, 3])
        y = c.encode("bf16+none", b"\0" * 32, 0, mem_a.array(), lay, [0, 1, 2, 3])
        assert x == y
    del kv_a, kv_b
    mem_a.close()
    mem_b.close()


def test_cuda_region(client, daemon):
    """A real CUDA tensor: save from host region A, fetch into the tensor via CUDA IPC."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA in torch")
    if not daemon.cuda:
        pytest.skip("shadowd runs without CUDA (built without it, or no GPU)")
    g = small_geom()
    mem_a = ss.HostMemory(N_BLOCKS * ss.block_nbytes(g))
    a = mem_a.array(np.uint16)
    a[:] = np.random.default_rng(11).integers(0, 1 << 16, a.size, dtype=np.uint16)
    ra = client.register_kv(mem_a, g)
    ns = client.namespace(ra, "cuda-model")
    tokens = make_tokens(8, 12)
    client.save(ra, np.arange(32), tokens=tokens, ns=ns)
    assert client.collect(1, 30)[0].ok

    # Whole cache in one tensor, at a storage offset inside a larger allocation.
    n = int(np.prod(nhd_shape(g, N_BLOCKS)))
    big = torch.zeros(4096 + n, dtype=torch.bfloat16, device="cuda")
    kv = big[4096:].view(*nhd_shape(g, N_BLOCKS))
    torch.cuda.synchronize()
    rc = client.register_kv(kv, g)
    assert rc.layout.base[0][0] >= 4096 * 2
    dst = (np.arange(32, dtype=np.uint32) * 37 + 11) % N_BLOCKS
    client.fetch(rc, dst, tokens=tokens, ns=ns, deadline_s=30)
    done = client.collect(1, 30)[0]
    assert done.ok, done
    got = kv.view(torch.int16).cpu().numpy().view(np.uint16).reshape(-1)
    assert np.array_equal(nhd_blocks(a, g, N_BLOCKS)[:, :, :32],
                          nhd_blocks(got, g, N_BLOCKS)[:, :, dst])
    # Per-layer views of one allocation.
    layers = [kv[i] for i in range(g.n_layers)]
    rl = client.register_kv(layers, g)
    kv.zero_()
    torch.cuda.synchronize()
    client.fetch(rl, dst, tokens=tokens, ns=ns, deadline_s=30)
    assert client.collect(1, 30)[0].ok
    got = kv.view(torch.int16).cpu().numpy().view(np.uint16).reshape(-1)
    assert np.array_equal(nhd_blocks(a, g, N_BLOCKS)[:, :, :32],
                          nhd_blocks(got, g, N_BLOCKS)[:, :, dst])
    rl.unregister()
    rc.unregister()
    mem_a.close()
