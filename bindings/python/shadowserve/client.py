"""client.py - the serving engine's control plane: Client over libshadow_client.so.

    with Client("unix:/tmp/shadowd.sock") as c:
        mem = HostMemory(64 * block_nbytes(geom))          # or a torch CUDA tensor
        region = c.register_kv(mem, geom)                   # NHD, n_blocks from the size
        ns = c.namespace(region, "meta-llama/Meta-Llama-3-8B")
        t = c.fetch(region, block_ids, tokens=prompt, ns=ns, n_chunks=4, deadline_s=2.0)
        for done in c.collect(1):
            print(done.n_ok, done.chunk_status)

Threads (as client.h): one thread may submit (lookup, fetch, save, cancel) while one other
polls (poll, wait, collect); set-up calls (register_kv, unregister, stats) from any thread;
close alone. Python objects never travel through the C request's `user` pointer: each
request gets an integer cookie, registered in a dict before the submit call, under which the
caller's `user` object and the request's chunk-status buffer wait for the completion. So the
buffer stays alive until the library writes it, and a completion polled on another thread
before the submit call has even returned still finds its entry.

Submissions copy nothing per element in Python: tokens, block ids and keys become numpy
arrays (np.ascontiguousarray, no copy when they already are uint32 / uint8 and contiguous)
whose addresses go into one reused struct shadow_client_request.
"""
import collections
import ctypes
import errno
import itertools
import mmap
import os
import sys
import time
from ctypes import byref, c_size_t, c_uint32, c_uint64, c_void_p, sizeof

import numpy as np

from . import _lib
from ._lib import ShadowError
from .types import (CLIENT_CUDA_IPC_NBYTES, CLIENT_MEM_CUDA, CLIENT_MEM_HOST,
                    DTYPE_BF16, DTYPE_FP8_E4M3, DTYPE_FP16, DTYPE_FP32,
                    EUNSUPPORTED, KEY_NBYTES, LAYOUT_CROSS_LAYER_NHD, LAYOUT_HND, LAYOUT_NHD,
                    NO_REGION, OP_FETCH, OP_LOOKUP, OP_NAMES, OP_SAVE, ChunkKey,
                    ClientCompletion, ClientMemory, ClientOptions, ClientRequest, ClientStats,
                    KVGeometry, KVLayout, block_nbytes, blocks_per_chunk, check_geometry,
                    layout_init)


def version():
    """libshadow_client's version string."""
    return _lib.client().shadow_client_version().decode()


def now_ns():
    """CLOCK_MONOTONIC in ns: the clock of every deadline."""
    return _lib.client().shadow_client_now_ns()


def chunk_status_name(status):
    return _lib.client().shadow_client_chunk_status_name(status).decode()


# --------------------------------------------------------------------------------------------
# Completions
# --------------------------------------------------------------------------------------------

_CompletionBase = collections.namedtuple(
    "Completion", "ticket user status op n_chunks n_ok n_found n_tokens bytes_in bytes_out "
                  "daemon_ns chunk_status")


class Completion(_CompletionBase):
    """One finished request. `user` is the object passed at submit; `status` 0 or why the
    request failed as a whole (negative code); `chunk_status` the n_chunks statuses (bytes,
    each an enum shadow_chunk_status: CHUNK_OK, CHUNK_MISS, ...) of a fetch or save, None
    for a lookup."""
    __slots__ = ()

    @property
    def op_name(self):
        return OP_NAMES.get(self.op, str(self.op))

    @property
    def ok(self):
        """The request succeeded as a whole and (fetch, save) every chunk is OK."""
        return self.status == 0 and (self.op == OP_LOOKUP or self.n_ok == self.n_chunks)

    def error(self):
        """A ShadowError for a failed status, or None."""
        return ShadowError(self.status, func=self.op_name) if self.status < 0 else None


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


class HostMemory(_lib.Closeable):
    """Shared host memory for a KV region: a memfd (sealable, as shadowd requires) mapped
    here. The daemon maps the same pages, so writes on either side are seen by the other.

        mem = HostMemory(nbytes)
        kv = mem.array(np.uint16)        # a numpy view (bf16 bits)
        region = client.register_kv(mem, geom)

    close() unmaps and closes the fd; the daemon keeps its own mapping while the region is
    registered. numpy views from array() keep the mapping alive until they are dropped.
    """

    def __init__(self, nbytes, name="shadow-kv"):
        nbytes = int(nbytes)
        if nbytes <= 0:
            raise ValueError("HostMemory needs a positive size, not %d" % nbytes)
        self._fd = -1
        self._mm = None
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, nbytes)
            self._mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.nbytes = nbytes
        self._address = np.frombuffer(self._mm, np.uint8).ctypes.data

    @property
    def closed(self):
        return self._fd < 0

    def _check(self):
        if self._fd < 0:
            raise ValueError("HostMemory is closed")

    def fileno(self):
        self._check()
        return self._fd

    @property
    def address(self):
        """The mapping's address in this process (valid until close)."""
        self._check()
        return self._address

    def array(self, dtype=np.uint8):
        """A writable numpy view of the whole memory as `dtype`."""
        self._check()
        return np.frombuffer(self._mm, dtype=dtype)

    def close(self):
        if self._fd < 0:
            return
        try:
            self._mm.close()
        except BufferError:
            pass  # numpy views still use it: the mapping goes when the last one does
        self._mm = None
        os.close(self._fd)
        self._fd = -1

    def __len__(self):
        return self.nbytes

    def __repr__(self):
        return "HostMemory(%d bytes%s)" % (self.nbytes, ", closed" if self.closed else "")


# torch dtypes by name, so that this module never imports torch itself.
_TORCH_DTYPES = {"torch.bfloat16": DTYPE_BF16, "torch.float16": DTYPE_FP16,
                 "torch.float32": DTYPE_FP32, "torch.float8_e4m3fn": DTYPE_FP8_E4M3}
_TORCH_RAW_DTYPES = ("torch.uint8", "torch.int8")


def _is_torch_tensor(x):
    return hasattr(x, "is_cuda") and hasattr(x, "storage_offset") and hasattr(x, "element_size")


def cuda_ipc_handle(handle):
    """The 64-byte cudaIpcMemHandle_t inside what torch's _share_cuda_() returns: the raw
    handle (torch < 2.2 or so), or torch's versioned ShareableHandle (a version byte, 'c' for a
    cudaMalloc block, the 64 bytes). Expandable segments ('e') cannot be opened with
    cudaIpcOpenMemHandle and are refused with EUNSUPPORTED."""
    handle = bytes(handle)
    if len(handle) == CLIENT_CUDA_IPC_NBYTES:
        return handle
    if len(handle) >= 2 and handle[1:2] == b"e":
        raise ShadowError(EUNSUPPORTED, "the tensor lives in an expandable segment, which CUDA "
                          "IPC handles cannot share: set PYTORCH_CUDA_ALLOC_CONF="
                          "expandable_segments:False", "register_kv")
    if len(handle) == 2 + CLIENT_CUDA_IPC_NBYTES and handle[1:2] == b"c":
        return handle[2:]
    raise ShadowError(EUNSUPPORTED, "unknown CUDA IPC handle format from torch (%d bytes)"
                      % len(handle), "register_kv")


class _CudaExport:
    """What one CUDA tensor exports: device, handle, where the tensor starts in the exported
    allocation (region byte 0 is the allocation's first byte) and where its storage ends."""
    __slots__ = ("device", "handle", "offset", "end", "nbytes")


def _torch_export(t, geom):
    if not t.is_cuda:
        raise TypeError("a CPU tensor cannot be registered: use HostMemory (and torch.from_numpy"
                        "(mem.array(...)) for a tensor view of it)")
    if not t.is_contiguous():
        raise ValueError("the KV tensor must be contiguous")
    name = str(t.dtype)
    if name in _TORCH_DTYPES:
        if _TORCH_DTYPES[name] != geom.dtype:
            raise ValueError("tensor dtype %s does not match the geometry's dtype %d"
                             % (name, geom.dtype))
    elif name not in _TORCH_RAW_DTYPES:
        raise ValueError("tensor dtype %s is not a KV dtype (or raw bytes)" % name)
    if hasattr(t, "untyped_storage"):
        storage = t.untyped_storage()
    else:  # torch 1.13: a TypedStorage, whose _share_cuda_ forwards to its untyped storage
        storage = t.storage()
    info = storage._share_cuda_()
    # (device, handle, storage size in bytes, storage offset in bytes in the allocation,
    #  ref counter handle, ref counter offset, event handle, event sync required)
    device, handle, size_bytes, offset_bytes = info[0], info[1], info[2], info[3]
    e = _CudaExport()
    e.device = int(device)
    e.handle = cuda_ipc_handle(handle)
    e.offset = int(offset_bytes) + t.storage_offset() * t.element_size()
    e.end = int(offset_bytes) + int(size_bytes)
    e.nbytes = t.numel() * t.element_size()
    if e.offset + e.nbytes > e.end:
        raise ValueError("tensor runs past its storage")
    # Work queued on the tensor (a torch.zeros memset, say) must not land after the daemon's
    # first copies: finish it now (info[7], event_sync_required, is torch's own hint).
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(t, torch.Tensor):
        torch.cuda.synchronize(t.device)
    return e


def _shape_blocks(t, kind, geom):
    """n_blocks read off a 6-D cache tensor of a standard layout, or None."""
    shape = tuple(t.shape)
    if len(shape) != 6:
        return None
    L, H, D, B = geom.n_layers, geom.n_kv_heads, geom.head_dim, geom.block_tokens
    if kind == LAYOUT_NHD:
        want, nb = (L, 2, shape[2], B, H, D), shape[2]
    elif kind == LAYOUT_HND:
        want, nb = (L, 2, shape[2], H, B, D), shape[2]
    elif kind == LAYOUT_CROSS_LAYER_NHD:
        want, nb = (shape[0], L, 2, B, H, D), shape[0]
    else:
        return None
    if shape != want:
        raise ValueError("cache tensor shape %s is not %s for this geometry and layout"
                         % (shape, want))
    return nb


def _blocks_from_nbytes(nbytes, per_block):
    n = nbytes // per_block
    if n < 1:
        raise ValueError("%d bytes hold no block of %d bytes" % (nbytes, per_block))
    return min(n, 0xFFFFFFFF)


def _torch_region(memory, geom, kind, n_blocks, cuda_device):
    """(ClientMemory, KVLayout) for a CUDA tensor holding the whole cache, or a list of
    per-layer tensors ([2][n_blocks][...] each) that are views of one allocation."""
    tensors = list(memory) if isinstance(memory, (list, tuple)) else [memory]
    if len(tensors) == 0:
        raise ValueError("an empty list of tensors")
    if isinstance(kind, KVLayout):
        raise TypeError("torch tensors take a layout kind; register a prebuilt KVLayout with a "
                        "single tensor or HostMemory through register_kv(..., layout=KVLayout)")
    exports = [_torch_export(t, geom) for t in tensors]
    mem = ClientMemory(size=sizeof(ClientMemory), kind=CLIENT_MEM_CUDA, fd=-1)
    e0 = exports[0]
    for e in exports[1:]:
        if e.handle != e0.handle or e.device != e0.device:
            raise ShadowError(EUNSUPPORTED, "per-layer tensors in different CUDA allocations "
                              "cannot form one region: allocate one tensor for the whole cache "
                              "and pass views of it", "register_kv")
    ctypes.memmove(mem.cuda.handle, e0.handle, CLIENT_CUDA_IPC_NBYTES)
    mem.cuda.device = e0.device if cuda_device is None else int(cuda_device)
    if len(tensors) == 1:
        if n_blocks is None:
            n_blocks = _shape_blocks(tensors[0], kind, geom)
        if n_blocks is None:
            n_blocks = _blocks_from_nbytes(e0.nbytes, block_nbytes(geom))
        if n_blocks * block_nbytes(geom) > e0.nbytes:
            raise ValueError("%d blocks need %d bytes, the tensor has %d"
                             % (n_blocks, n_blocks * block_nbytes(geom), e0.nbytes))
        return mem, layout_init(geom, kind, n_blocks, e0.offset, e0.end)
    # One tensor per layer: [2][n_blocks][block_tokens][n_kv_heads][head_dim] (NHD) or HND.
    if kind not in (LAYOUT_NHD, LAYOUT_HND):
        raise ValueError("a list of per-layer tensors needs LAYOUT_NHD or LAYOUT_HND")
    if len(tensors) != geom.n_layers:
        raise ValueError("%d per-layer tensors for %d layers" % (len(tensors), geom.n_layers))
    kind_block = block_nbytes(geom) // (2 * geom.n_layers)  # one block of one layer's K or V
    if n_blocks is None:
        n_blocks = _blocks_from_nbytes(min(e.nbytes for e in exports), 2 * kind_block)
    for e in exports:
        if 2 * n_blocks * kind_block > e.nbytes:
            raise ValueError("a per-layer tensor of %d bytes holds fewer than %d blocks"
                             % (e.nbytes, n_blocks))
    one = KVGeometry.from_buffer_copy(geom)
    lay = layout_init(one, kind, n_blocks)  # strides; bases and size set below
    lay.region_nbytes = max(e.end for e in exports)
    for layer, e in enumerate(exports):
        lay.base[layer][0] = e.offset
        lay.base[layer][1] = e.offset + n_blocks * kind_block
    return mem, lay


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------


class Region:
    """A registered KV region: `id`, `geom`, `layout`; unregister() (or close(), or leaving a
    with block) gives it back. It keeps a reference to its memory (HostMemory or tensors)."""

    def __init__(self, client, region_id, geom, layout, memory):
        self._client = client
        self.id = region_id
        self.geom = geom
        self.layout = layout
        self.memory = memory
        self.blocks_per_chunk = blocks_per_chunk(geom)

    @property
    def n_blocks(self):
        return self.layout.n_blocks

    @property
    def chunk_tokens(self):
        return self.geom.chunk_tokens

    @property
    def registered(self):
        return self._client is not None

    def unregister(self):
        """Unregister (a set-up call: the daemon cancels requests in flight on it and answers
        once it no longer touches the memory). A second call does nothing."""
        c, self._client = self._client, None
        if c is not None:
            c._unregister(self)

    close = unregister

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unregister()

    def __repr__(self):
        return "Region(id=%d, %r, n_blocks=%d%s)" % (
            self.id, self.geom, self.layout.n_blocks, "" if self.registered else ", gone")


# --------------------------------------------------------------------------------------------
# Array helpers
# --------------------------------------------------------------------------------------------


def _u32(a, what):
    arr = np.ascontiguousarray(a, dtype=np.uint32)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr


def _keys(keys):
    """keys (bytes of n x 32, a list of 32-byte keys, or a uint8 array) as a uint8 array."""
    if isinstance(keys, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(keys, dtype=np.uint8)
    elif isinstance(keys, np.ndarray):
        arr = np.ascontiguousarray(keys, dtype=np.uint8).reshape(-1)
    else:
        arr = np.frombuffer(b"".join(bytes(k) for k in keys), dtype=np.uint8)
    if arr.size % KEY_NBYTES != 0:
        raise ValueError("keys: %d bytes is not a multiple of %d" % (arr.size, KEY_NBYTES))
    return arr


def _key32(key, what="ns"):
    key = bytes(key)
    if len(key) != KEY_NBYTES:
        raise ValueError("%s: a key is %d bytes, not %d" % (what, KEY_NBYTES, len(key)))
    return key


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class Client(_lib.Handle):
    """A connection to shadowd (see the module's docstring)."""

    def __init__(self, endpoint, max_inflight=64, slot_nbytes=None, name=None,
                 connect_timeout_ms=2000, call_timeout_ms=10000):
        self._h = None
        lib = _lib.client()
        self._lib = lib
        opts = ClientOptions()
        lib.shadow_client_options_default(byref(opts))
        opts.max_inflight = max_inflight
        if slot_nbytes is not None:
            opts.slot_nbytes = slot_nbytes
        opts.connect_timeout_ms = connect_timeout_ms
        opts.call_timeout_ms = call_timeout_ms
        name_b = name.encode() if name is not None else None
        opts.name = name_b
        h = c_void_p()
        try:
            lib.shadow_client_connect(endpoint.encode(), byref(opts), byref(h))
        except ShadowError as e:
            raise ShadowError(e.code, "%s (endpoint %s)" % (e.message, endpoint), e.func) \
                from None
        self._h = h
        self.endpoint = endpoint
        self.max_inflight = max_inflight
        self._regions = {}
        self._pending = {}                  # cookie -> (user, chunk-status array)
        self._cookies = itertools.count(1)  # never 0: a NULL user pointer reads as None
        self._req = ClientRequest(size=sizeof(ClientRequest))
        self._ticket = c_uint64()
        self._cbuf = (ClientCompletion * 64)()

    # -- life ---------------------------------------------------------------------------------

    def _free(self, h):
        # close() disconnects: the daemon cancels what is in flight and drops the regions;
        # completions not yet polled are lost. A second close() does nothing.
        self._lib.shadow_client_close(h)
        for r in list(self._regions.values()):
            r._client = None
        self._regions.clear()
        self._pending.clear()

    def fileno(self):
        """An fd for an event loop: readable when a completion may be ready after wait(0)
        returned False (that call arms it), and when the daemon goes away."""
        return self._lib.shadow_client_fd(self._handle())

    # -- regions ------------------------------------------------------------------------------

    def register_kv(self, memory, geom, layout=LAYOUT_NHD, n_blocks=None, cuda_device=None):
        """Register KV memory and return its Region.

        memory: a HostMemory; a torch CUDA tensor holding the whole cache (for NHD
        [n_layers][2][n_blocks][block_tokens][n_kv_heads][head_dim], contiguous), exported
        with torch's CUDA IPC; or a list of per-layer CUDA tensors that are views of one
        allocation. layout: LAYOUT_NHD, LAYOUT_HND, LAYOUT_CROSS_LAYER_NHD, or a prebuilt
        KVLayout (HostMemory only; n_blocks is then ignored). n_blocks: default from the
        tensor's shape or the memory's size. cuda_device: the device ordinal as the daemon
        sees it, if it differs from the tensor's (other CUDA_VISIBLE_DEVICES).
        """
        h = self._handle()
        check_geometry(geom)
        geom = geom.copy()
        if isinstance(memory, HostMemory):
            mem = ClientMemory(size=sizeof(ClientMemory), kind=CLIENT_MEM_HOST,
                               fd=memory.fileno(), fd_offset=0)
            if isinstance(layout, KVLayout):
                lay = layout.copy()
            else:
                if n_blocks is None:
                    n_blocks = _blocks_from_nbytes(memory.nbytes, block_nbytes(geom))
                lay = layout_init(geom, layout, n_blocks, 0, memory.nbytes)
            keep = memory
        elif _is_torch_tensor(memory) or (isinstance(memory, (list, tuple)) and memory and
                                          all(_is_torch_tensor(t) for t in memory)):
            mem, lay = _torch_region(memory, geom, layout, n_blocks, cuda_device)
            keep = memory
        else:
            raise TypeError("register_kv takes a HostMemory or torch CUDA tensor(s), not %s"
                            % type(memory).__name__)
        rid = c_uint32()
        self._lib.shadow_client_register_kv(h, byref(geom), byref(lay), byref(mem), byref(rid))
        region = Region(self, rid.value, geom, lay, keep)
        self._regions[rid.value] = region
        return region

    def unregister(self, region):
        """Unregister a Region (or region id)."""
        if isinstance(region, Region):
            region.unregister()
        else:
            r = self._regions.get(int(region))
            if r is not None:
                r.unregister()
            else:
                self._lib.shadow_client_unregister(self._handle(), int(region))

    def _unregister(self, region):
        self._regions.pop(region.id, None)
        if self._h is not None:
            self._lib.shadow_client_unregister(self._h, region.id)

    def _region(self, region):
        if isinstance(region, Region):
            if region._client is not self:
                raise ShadowError(-errno.ENOENT, "%r is not registered on this client"
                                  % (region,), "shadowserve")
            return region
        r = self._regions.get(int(region))
        if r is None:
            raise ShadowError(-errno.ENOENT, "no such region %d" % int(region), "shadowserve")
        return r

    # -- keys ---------------------------------------------------------------------------------

    def namespace(self, region, model_id, salt=b""):
        """The 32-byte namespace key of model_id for the region's geometry (docs/keys.md)."""
        r = self._region(region)
        salt = bytes(salt)
        ns = ChunkKey()
        self._lib.shadow_client_namespace(self._handle(), r.id, model_id.encode(), salt or None,
                                          len(salt), byref(ns))
        return bytes(ns)

    def chunk_keys(self, region, ns, tokens):
        """The chained keys (32 bytes each) of the full chunks of tokens."""
        r = self._region(region)
        ns = _key32(ns)
        tok = _u32(tokens, "tokens")
        max_keys = tok.size // r.geom.chunk_tokens
        if max_keys == 0:
            return []
        out = ctypes.create_string_buffer(max_keys * KEY_NBYTES)
        n = c_size_t()
        self._lib.shadow_client_chunk_keys(self._handle(), r.id, ns, tok.ctypes.data, tok.size,
                                           out, max_keys, byref(n))
        raw = out.raw
        return [raw[i * KEY_NBYTES:(i + 1) * KEY_NBYTES] for i in range(n.value)]

    # -- requests -----------------------------------------------------------------------------

    def _submit(self, fn, op, region, block_ids, keys, tokens, ns, first_chunk, n_chunks,
                deadline_s, user):
        h = self._handle()
        req = self._req
        r = None
        if region is not None:
            r = self._region(region)
            req.region = r.id
        elif op == OP_LOOKUP and keys is not None:
            req.region = NO_REGION
        else:
            raise ValueError("%s needs a region" % OP_NAMES[op])
        if keys is not None:
            karr = _keys(keys)
            n_keys = karr.size // KEY_NBYTES
            if n_chunks == 0:
                n_chunks = n_keys
            elif n_chunks > n_keys:
                raise ValueError("n_chunks %d but %d keys" % (n_chunks, n_keys))
            req.keys = karr.ctypes.data
            req.tokens = None
            req.n_tokens = 0
            req.ns = None
        else:
            if tokens is None or ns is None:
                raise ValueError("%s needs keys, or tokens and ns" % OP_NAMES[op])
            tarr = _u32(tokens, "tokens")
            ns = _key32(ns)
            req.keys = None
            req.tokens = tarr.ctypes.data
            req.n_tokens = tarr.size
            req.ns = ctypes.cast(ns, c_void_p).value
        req.first_chunk = first_chunk
        req.n_chunks = n_chunks
        st = None
        if op == OP_LOOKUP:
            req.block_ids = None
            req.n_block_ids = 0
            req.chunk_status = None
        else:
            barr = _u32(block_ids, "block_ids")
            req.block_ids = barr.ctypes.data
            req.n_block_ids = barr.size
            n_status = max(n_chunks, barr.size // r.blocks_per_chunk, 1)
            st = np.empty(n_status, dtype=np.uint8)
            req.chunk_status = st.ctypes.data
        if deadline_s is None:
            req.deadline_ns = 0
        else:
            req.deadline_ns = max(1, self._lib.shadow_client_now_ns() + int(deadline_s * 1e9))
        cookie = next(self._cookies)
        req.user = cookie
        self._pending[cookie] = (user, st)
        try:
            fn(h, byref(req), byref(self._ticket))
        except BaseException:
            self._pending.pop(cookie, None)
            raise
        return self._ticket.value

    def lookup(self, region=None, keys=None, tokens=None, ns=None, first_chunk=0, n_chunks=0,
               user=None):
        """How many consecutive chunks from first_chunk the store holds: by keys (region may
        be None), or by tokens and ns (region gives the chunk size). Returns the ticket; the
        completion's n_found and n_tokens answer."""
        return self._submit(self._lib.shadow_client_lookup, OP_LOOKUP, region, None, keys,
                            tokens, ns, first_chunk, n_chunks, None, user)

    def fetch(self, region, block_ids, keys=None, tokens=None, ns=None, first_chunk=0,
              n_chunks=0, deadline_s=None, user=None):
        """Chunks from the store into the region's blocks: chunk i of the request goes to
        block_ids[i * bpc:(i + 1) * bpc]. deadline_s: seconds from now (None: none). Returns
        the ticket."""
        return self._submit(self._lib.shadow_client_fetch, OP_FETCH, region, block_ids, keys,
                            tokens, ns, first_chunk, n_chunks, deadline_s, user)

    def save(self, region, block_ids, keys=None, tokens=None, ns=None, first_chunk=0,
             n_chunks=0, deadline_s=None, user=None):
        """The region's blocks into the store (the daemon's --save-scheme). The blocks must
        hold their final values when save is called (on a GPU: the stream that wrote them
        synchronized); they must not change until the completion. Returns the ticket."""
        return self._submit(self._lib.shadow_client_save, OP_SAVE, region, block_ids, keys,
                            tokens, ns, first_chunk, n_chunks, deadline_s, user)

    def cancel(self, ticket):
        """Ask the daemon to finish a request early (its completion still comes). Returns
        True, or False when the ticket is not in flight (unknown or already completed)."""
        try:
            self._lib.shadow_client_cancel(self._handle(), ticket)
        except ShadowError as e:
            if e.code == -errno.ENOENT:
                return False
            raise
        return True

    # -- completions --------------------------------------------------------------------------

    def poll(self, max=64):
        """Up to `max` completions, without blocking (a list, maybe empty)."""
        h = self._handle()
        buf = self._cbuf
        if max > len(buf):
            buf = self._cbuf = (ClientCompletion * max)()
        n = self._lib.shadow_client_poll(h, buf, max)
        out = []
        pending = self._pending
        for i in range(n):
            c = buf[i]
            user, st = pending.pop(c.user, (None, None))
            if c.op == OP_LOOKUP or st is None:
                cs = None
            else:
                cs = st[:c.n_chunks].tobytes()
            out.append(Completion(c.ticket, user, c.status, c.op, c.n_chunks, c.n_ok,
                                  c.n_found, c.n_tokens, c.bytes_in, c.bytes_out, c.daemon_ns,
                                  cs))
        return out

    def wait(self, timeout_ms=-1):
        """Block until a completion can be polled (True) or timeout_ms passed (False); -1
        waits without limit, 0 does not block and arms fileno()."""
        return self._lib.shadow_client_wait(self._handle(), timeout_ms) == 1

    def collect(self, n, timeout_s=30.0):
        """Poll and wait until n completions arrived; raise TimeoutError after timeout_s."""
        out = []
        deadline = time.monotonic() + timeout_s
        while True:
            out += self.poll(min(64, n - len(out)))
            if len(out) >= n:
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("%d of %d completions after %.1f s" % (len(out), n,
                                                                          timeout_s))
            self.wait(max(1, min(100, int(left * 1000))))

    @property
    def in_flight(self):
        """Requests submitted whose completions were not polled yet (this handle's count)."""
        return len(self._pending)

    def stats(self):
        """This handle's counters and the daemon's for this connection, as a dict."""
        s = ClientStats(size=sizeof(ClientStats))
        self._lib.shadow_client_stats(self._handle(), byref(s))
        return {f: getattr(s, f) for f, _ in ClientStats._fields_ if f != "size"}

    def __repr__(self):
        return "Client(%r%s)" % (getattr(self, "endpoint", "?"),
                                 ", closed" if self.closed else "")

