"""baselines.py - the engine benchmark's in-process restore baselines: the serving engine's own
process fetches compressed chunks from Redis and decodes them itself, which is what
ShadowServe's data plane (shadowd) exists to take away (DESIGN.md, "The problem").

  cpu-inline   fetch (any scheme, normally bits4+zstd1) -> decode on the engine's CPU threads
               with libshadow's decoder (shadow_chunk_decode_frame through ctypes: the GIL is
               released while it runs) into pinned staging -> host-to-device copies into the
               paged cache on a side CUDA stream (copy engine only).
  gpu-decode   fetch (bits4+none: uniform symbols, bit-packed, no entropy stage) -> parse the
               container on the CPU (metadata only) and verify frame checksums -> one
               host-to-device copy of the container -> unpack + dequantize with torch kernels
               on one side stream (SM work, competing with the engine's decode kernels, like
               CacheGen/LMCache GPU decoders) straight into the destination blocks.

DESIGN
Threads. submit() only queues chunk jobs (a queue.Queue: one lock, the engine's thread pays
microseconds). n_threads workers take jobs in order; each owns a Redis connection
(resp.Redis), a libshadow Codec, and its buffers, all made once in __init__:
  cpu-inline: a pageable receive buffer (only the CPU reads it) and two pinned staging images
              of a whole chunk (all frames), used alternately: a chunk's frames are all decoded
              (every checksum verified) before any byte is copied, so a corrupt chunk writes
              nothing to kv; while one staging buffer's copies run, the next chunk decodes
              into the other. Before reusing a buffer the worker waits on the CUDA event
              recorded after its copies (event.synchronize(): this thread only).
  gpu-decode: two pinned receive buffers used alternately (each guarded by the event after
              its host-to-device copy), a device copy of the container, and device scratch
              for unpacked symbols and float32 products (gpu_dequant.Scratch).
Workers report (request, chunk, status, wire bytes, event) to a deque; poll(), called by the
engine's thread, folds them into requests and returns a request once every chunk is reported
and every chunk's CUDA event has completed (event.query(): never a device-wide synchronize).

Streams. All device work of the fetcher goes on ONE side stream (torch.cuda.Stream), whatever
the number of workers: each worker's ops are ordered on it, so a worker's scratch and device
container buffer can be reused chunk after chunk without further synchronization.

Copies (cpu-inline). docs/layout.md: a frame's staging image is its destination blocks in
block-table order; shadow_layout_plan_frame merges blocks with consecutive ids, so a frame
over one run of blocks (the usual case) is ONE copy of chunk_tokens x heads x head_dim x 2
bytes (512 KiB for Llama-3-8B), 2 x n_layers copies per chunk. The plan of (layer 0, K) is
computed once per chunk and shifted by base[layer][kind] for the other frames (in the NHD
layout every (layer, kind) is the same array of blocks at another base).

Destinations (gpu-decode). Over consecutive block ids b0..b0+n, kv[:, kind, b0:b0+n] is one
strided view [n_layers, chunk_tokens, heads, head_dim] and the final torch.add writes there
directly. Scattered block ids decode into a device scratch image and one index_copy_ per kind
scatters it (block ids copied to the device from pinned memory).

Failure rules (DESIGN.md): a missing key is CHUNK_MISS; a container that does not parse, has
another key or geometry, a size that disagrees with its header, or a frame that fails its
checksum or decode is CHUNK_CORRUPT; nothing is written to kv for such a chunk. A connection
or server error, a value larger than the buffers, or (gpu-decode) a frame the GPU decoder does
not handle (an entropy-coded payload, ECSQ/PCA) is CHUNK_ERROR. A job that starts after its
request's deadline is CHUNK_TIMEOUT. The engine recomputes all of those.

gpu-decode checks the XXH3-64 frame checksums on the CPU (libxxhash, which libshadow links) before
anything is copied to the device: the price of the rule that a corrupt payload never reaches
KV memory, about 0.05 ms per MiB of payload. verify_checksums=False skips it (for measuring).
"""
import collections
import contextlib
import ctypes
import ctypes.util
import os
import queue
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_dequant  # noqa: E402
import resp  # noqa: E402

from shadowserve import ShadowError, codec, types  # noqa: E402

MODES = ("cpu-inline", "gpu-decode")

# Frame table entry (docs/format.md, "Frame table entry"), 40 bytes, little-endian.
FRAME_ENTRY = np.dtype([
    ("payload_offset", "<u8"), ("payload_nbytes", "<u4"), ("raw_nbytes", "<u4"),
    ("params_offset", "<u4"), ("params_nbytes", "<u4"), ("quant", "u1"), ("bits", "u1"),
    ("codec", "u1"), ("flags", "u1"), ("group_tokens", "<u2"), ("group_channels", "<u2"),
    ("raw_checksum", "<u8")])
assert FRAME_ENTRY.itemsize == 40
HEADER_NBYTES = 96
FLAG_PACKED = 1


class ChunkCorrupt(Exception):
    """The container breaks the format (-> CHUNK_CORRUPT)."""


class ChunkUnsupported(Exception):
    """A valid container the GPU decoder does not handle (-> CHUNK_ERROR)."""


# ----------------------------------------------------------------------------------------------
# XXH3-64 of frame payloads (gpu-decode verifies on the CPU what libshadow verifies itself)
# ----------------------------------------------------------------------------------------------

_xxh3 = None


def xxh3_fn():
    """libxxhash's XXH3_64bits(const void *, size_t) (ctypes, releases the GIL)."""
    global _xxh3
    if _xxh3 is None:
        names = [n for n in (ctypes.util.find_library("xxhash"), "libxxhash.so.0",
                             "libxxhash.so") if n]
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                fn = lib.XXH3_64bits
            except (OSError, AttributeError):
                continue
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            fn.restype = ctypes.c_uint64
            _xxh3 = fn
            break
        else:
            raise OSError("libxxhash (XXH3_64bits) not found: install libxxhash0, or pass "
                          "verify_checksums=False")
    return _xxh3


# ----------------------------------------------------------------------------------------------
# gpu-decode: the container's metadata, read on the CPU
# ----------------------------------------------------------------------------------------------

def frame_table(buf, view):
    """The frame table of a parsed container (numpy structured array, FRAME_ENTRY). buf: uint8
    array holding at least view.meta_nbytes bytes."""
    nf = view.n_frames
    end = HEADER_NBYTES + nf * FRAME_ENTRY.itemsize
    if nf < 1 or end > view.meta_nbytes or end > buf.size:
        raise ChunkCorrupt("frame table of %d entries does not fit the metadata" % nf)
    return np.frombuffer(buf, dtype=FRAME_ENTRY, count=nf, offset=HEADER_NBYTES)


class FrameBatch:
    """Frames of one kind that decode as one batch: frames kind, kind + 2, ... of `layers`,
    with payloads at payload_offset + i * payload_stride and parameter blocks at
    params_offset + i * params_stride (i-th layer of the batch)."""
    __slots__ = ("kind", "layers", "quant", "bits", "packed", "group_tokens",
                 "group_channels", "n_groups", "payload_offset", "payload_stride",
                 "payload_nbytes", "params_offset", "params_stride")

    def __repr__(self):
        return "FrameBatch(%s)" % ", ".join("%s=%r" % (k, getattr(self, k))
                                            for k in self.__slots__)


def _arith(a):
    """(first, stride) if the ints in a are an arithmetic sequence, else None."""
    a = [int(x) for x in a]
    if len(a) == 1:
        return a[0], 0
    d = a[1] - a[0]
    if all(a[i + 1] - a[i] == d for i in range(len(a) - 1)):
        return a[0], d
    return None


def plan_gpu_chunk(buf, nbytes, view, geom):
    """Check a parsed container's frames for the GPU decoder and group them into FrameBatches:
    all K frames as one batch and all V frames as another when they share one shape and lie
    evenly spaced (what the encoder writes), else one batch per frame. Everything here is
    untrusted: the parser checked the same rules; this re-checks what the GPU code relies on,
    cheaply. Returns (batches, table). Raises ChunkCorrupt or ChunkUnsupported."""
    L = geom.n_layers
    if view.n_frames != 2 * L:
        raise ChunkCorrupt("%d frames for %d layers" % (view.n_frames, L))
    if view.total_nbytes != nbytes:
        raise ChunkCorrupt("container says %d bytes, %d arrived" % (view.total_nbytes, nbytes))
    tab = frame_table(buf, view)
    cod = tab["codec"]
    if (cod != types.CODEC_NONE).any():
        raise ChunkUnsupported("entropy-coded frames (codec %s): the GPU decoder takes +none"
                               % sorted(set(cod.tolist())))
    po = tab["payload_offset"].astype(np.int64)
    pn = tab["payload_nbytes"].astype(np.int64)
    if (pn != tab["raw_nbytes"]).any() or (po < view.meta_nbytes).any() or \
            (po + pn > nbytes).any():
        raise ChunkCorrupt("payload outside the container")
    same = ("quant", "bits", "flags", "group_tokens", "group_channels", "raw_nbytes",
            "params_nbytes")
    batches = []
    for kind in (types.KV_K, types.KV_V):
        t = tab[kind::2]
        b = None
        if all((t[f] == t[f][0]).all() for f in same):
            b = _make_batch(tab, view, geom, kind, list(range(L)))
        if b is not None:
            batches.append(b)
        else:
            batches += [_make_batch(tab, view, geom, kind, [l]) for l in range(L)]
    return batches, tab


def _make_batch(tab, view, geom, kind, layers):
    """The FrameBatch of frames (layer, kind) for layers, whose entries share one shape; None
    if their payloads or parameter blocks are not evenly spaced (then batch them one by
    one). Raises ChunkCorrupt / ChunkUnsupported."""
    T, H, D = geom.chunk_tokens, geom.n_kv_heads, geom.head_dim
    N = T * H * D
    t = tab[[2 * l + kind for l in layers]]
    e = t[0]
    b = FrameBatch()
    b.kind, b.layers, b.quant = kind, layers, int(e["quant"])
    b.bits, b.packed = int(e["bits"]), bool(e["flags"] & FLAG_PACKED)
    b.payload_nbytes = int(e["raw_nbytes"])
    pos = _arith(t["payload_offset"])
    if pos is None:
        return None
    b.payload_offset, b.payload_stride = pos
    if b.quant == types.QUANT_NONE:
        if b.bits != 16 or e["flags"] or b.payload_nbytes != 2 * N or e["params_nbytes"]:
            raise ChunkCorrupt("bad bf16 frame")
        if b.payload_offset % 2 or b.payload_stride % 2:
            raise ChunkUnsupported("bf16 payloads not 2-byte aligned")
        b.group_tokens = b.group_channels = b.n_groups = 0
        b.params_offset = b.params_stride = 0
        return b
    if b.quant != types.QUANT_UNIFORM:
        raise ChunkUnsupported("quant %d frames: the GPU decoder takes uniform or bf16"
                               % b.quant)
    gt, gc = int(e["group_tokens"]), int(e["group_channels"])
    if not 2 <= b.bits <= 8 or int(e["flags"]) & ~FLAG_PACKED:
        raise ChunkCorrupt("bad bits or flags")
    if not 1 <= gt <= T or gc < 1 or D % gc:
        raise ChunkCorrupt("bad groups %d x %d" % (gt, gc))
    if b.packed and (D * b.bits) % 8:
        raise ChunkCorrupt("packed rows not byte-aligned")
    want = N * b.bits // 8 if b.packed else N
    if b.payload_nbytes != want:
        raise ChunkCorrupt("raw size %d, want %d" % (b.payload_nbytes, want))
    b.group_tokens, b.group_channels = gt, gc
    b.n_groups = gpu_dequant.n_groups(T, H, D, gt, gc)
    if int(e["params_nbytes"]) != 4 * b.n_groups:
        raise ChunkCorrupt("parameter block size")
    ppos = _arith(t["params_offset"])
    if ppos is None:
        return None
    b.params_offset, b.params_stride = ppos
    last = b.params_offset + b.params_stride * (len(layers) - 1)
    lo, hi = min(b.params_offset, last), max(b.params_offset, last) + 4 * b.n_groups
    if lo < HEADER_NBYTES + FRAME_ENTRY.itemsize * view.n_frames or hi > view.meta_nbytes:
        raise ChunkCorrupt("parameters outside the metadata")
    if b.params_offset % 2 or b.params_stride % 2:
        raise ChunkUnsupported("parameter blocks not 2-byte aligned")
    return b


def params_nonfinite(buf, batches):
    """Whether any bf16 parameter of the batches is Inf or NaN (then the GPU decoder patches
    NaN results to the canonical 0x7fc0, as the C kernels write)."""
    for b in batches:
        if b.quant != types.QUANT_UNIFORM:
            continue
        for i in range(len(b.layers)):
            o = b.params_offset + i * b.params_stride
            p = np.frombuffer(buf, dtype="<u2", count=2 * b.n_groups, offset=o)
            if ((p & 0x7F80) == 0x7F80).any():
                return True
    return False


def verify_checksums(addr, tab):
    """Raise ChunkCorrupt unless every frame's payload (raw bytes: codec none) matches its
    XXH3-64. addr: the container's address in host memory."""
    fn = xxh3_fn()
    for i, (o, n, want) in enumerate(zip(tab["payload_offset"].tolist(),
                                         tab["payload_nbytes"].tolist(),
                                         tab["raw_checksum"].tolist())):
        if fn(addr + o, n) != want:
            raise ChunkCorrupt("frame %d fails its checksum" % i)


def decode_batches_on_device(gbuf, batches, geom, dst_of, scratch, canonical_nan=False):
    """Queue the decode of a chunk's batches on the current stream. gbuf: uint8 device tensor
    holding the container from byte 0 (its own storage, offset 0); dst_of(kind, layers) gives
    the bf16 destination [len(layers), chunk_tokens, heads, head_dim] (any strides)."""
    T, H, D = geom.chunk_tokens, geom.n_kv_heads, geom.head_dim
    base = gbuf.storage_offset()
    for b in batches:
        nl = len(b.layers)
        out = dst_of(b.kind, b.layers)
        payload = gbuf.as_strided((nl, b.payload_nbytes), (b.payload_stride or b.payload_nbytes, 1),
                                  base + b.payload_offset)
        if b.quant == types.QUANT_NONE:
            out.copy_(payload.view(torch.bfloat16).view(nl, T, H, D))
            continue
        params = gbuf.as_strided((nl, 4 * b.n_groups), (b.params_stride or 4 * b.n_groups, 1),
                                 base + b.params_offset)
        scale, bias = gpu_dequant.bf16_params(params, b.n_groups)
        gpu_dequant.dequant_uniform(payload, b.bits, b.packed, scale, bias, b.group_tokens,
                                    b.group_channels, T, H, D, out, scratch, canonical_nan)


# ----------------------------------------------------------------------------------------------
# The fetcher
# ----------------------------------------------------------------------------------------------

class _Request:
    __slots__ = ("req_id", "status", "remaining", "wire", "events", "deadline")

    def __init__(self, req_id, n, deadline):
        self.req_id = req_id
        self.status = [types.CHUNK_ERROR] * n
        self.remaining = n
        self.wire = 0
        self.events = []
        self.deadline = deadline


class _Worker:
    """One worker thread's own state (see DESIGN)."""

    def __init__(self, f, index):
        self.index = index
        self.codec = codec.Codec(f.geom)
        self.redis = None
        self.next = 0                       # which of the two buffers the next chunk uses
        self.events = [None, None]          # event after the last use of each buffer
        pin = f.is_cuda
        if f.mode == "cpu-inline":
            self.recv = np.empty(f.max_value_nbytes, dtype=np.uint8)
            self.stages = [torch.empty(f.chunk_nbytes // 2, dtype=torch.bfloat16,
                                       pin_memory=pin) for _ in range(2)]
        else:
            self.recv_t = [torch.empty(f.max_value_nbytes, dtype=torch.uint8, pin_memory=pin)
                           for _ in range(2)]
            self.recv = [t.numpy() for t in self.recv_t]
            self.ids_t = [torch.empty(f.bpc, dtype=torch.int64, pin_memory=pin)
                          for _ in range(2)]
            self.scratch = gpu_dequant.Scratch(f.device)
            if f.is_cuda:
                self.gbuf = torch.empty(f.max_value_nbytes, dtype=torch.uint8, device=f.device)
                self.image = torch.empty(f.chunk_nbytes // 4, dtype=torch.bfloat16,
                                         device=f.device)
            else:
                self.gbuf = None
                self.image = torch.empty(f.chunk_nbytes // 4, dtype=torch.bfloat16)

    def close(self):
        self.codec.close()
        if self.redis is not None:
            self.redis.close()
            self.redis = None


class InlineFetcher:
    """Fetch and decode chunks into `kv` inside the engine's process (see the module DESIGN).

    mode: "cpu-inline" or "gpu-decode". kv: the paged cache, one contiguous bf16 tensor
    [n_layers][2][n_blocks][block_tokens][n_kv_heads][head_dim] (NHD, docs/layout.md) on
    `device`. geom: a shadowserve KVGeometry matching kv. Chunk keys are raw 32-byte keys;
    the store key is codec.store_key(key, key_prefix).
    """

    def __init__(self, mode, host, port, db, key_prefix, geom, kv, n_threads=4,
                 device="cuda", verify_checksums=True, max_value_nbytes=None,
                 redis_timeout_s=30.0):
        if mode not in MODES:
            raise ValueError("mode %r: want one of %s" % (mode, ", ".join(MODES)))
        types.check_geometry(geom)
        if geom.dtype != types.DTYPE_BF16:
            raise ValueError("bf16 caches only")
        self.mode, self.host, self.port, self.db = mode, host, int(port), int(db)
        self.key_prefix = key_prefix
        self.geom = geom.copy()
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        L, H, D = geom.n_layers, geom.n_kv_heads, geom.head_dim
        bt, T = geom.block_tokens, geom.chunk_tokens
        if kv.dtype != torch.bfloat16 or kv.dim() != 6 or not kv.is_contiguous() or \
                tuple(kv.shape[:2]) != (L, 2) or tuple(kv.shape[3:]) != (bt, H, D):
            raise ValueError("kv must be a contiguous bf16 tensor [%d][2][n_blocks][%d][%d][%d],"
                             " not %s %s" % (L, bt, H, D, kv.dtype, tuple(kv.shape)))
        if kv.device.type != self.device.type:
            raise ValueError("kv is on %s, device is %s" % (kv.device, self.device))
        if self.is_cuda:
            self.device = kv.device
        self.kv = kv
        self.kv_flat = kv.view(-1)
        self.n_blocks = kv.shape[2]
        self.bpc = T // bt
        self.frame_nbytes = T * H * D * 2
        self.n_frames = 2 * L
        self.chunk_nbytes = self.n_frames * self.frame_nbytes
        self.layout = types.layout_init(self.geom, types.LAYOUT_NHD, self.n_blocks)
        # Largest container accepted: bf16 payloads (a frame is never stored larger) plus the
        # metadata of the default groupings with room to spare.
        if max_value_nbytes is None:
            max_value_nbytes = self.chunk_nbytes + HEADER_NBYTES + 40 * self.n_frames + \
                L * 4 * (H * D + T * H) * 2 + (1 << 16)
        self.max_value_nbytes = int(max_value_nbytes)
        self.verify = bool(verify_checksums)
        self.redis_timeout_s = redis_timeout_s
        # Byte shift from (layer 0, K) to each frame's (layer, kind) in the NHD layout.
        self._frame_shift = [self.layout.base[f // 2][f % 2] - self.layout.base[0][0]
                             for f in range(self.n_frames)]
        if mode == "gpu-decode" and self.verify:
            xxh3_fn()
        self.stream = torch.cuda.Stream(device=self.device) if self.is_cuda else None
        self._jobs = queue.Queue()
        self._done = collections.deque()
        self._reqs = {}
        self._ready = []
        self._lock = threading.Lock()
        self.wire_bytes = 0
        self.chunks_ok = 0
        self.chunks_failed = 0
        self.counts = collections.Counter()   # per status name, and "unsupported"
        self._closed = False
        self._workers = [_Worker(self, i) for i in range(n_threads)]
        for w in self._workers:
            w.redis = self._connect()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True,
                                          name="inline-%s-%d" % (mode, w.index))
                         for w in self._workers]
        for t in self._threads:
            t.start()

    def _connect(self):
        return resp.Redis(self.host, self.port, self.db, timeout=self.redis_timeout_s)

    # ---- engine-thread API ----

    def submit(self, req_id, keys, block_ids, deadline_s=None):
        """Queue the fetch of chunks `keys` (raw 32-byte chunk keys, in prefix order) into
        blocks block_ids (chunk i -> block_ids[i*bpc:(i+1)*bpc]). deadline_s: seconds from now
        after which chunks not yet started report CHUNK_TIMEOUT. Non-blocking."""
        if self._closed:
            raise RuntimeError("the fetcher is closed")
        keys = [bytes(k) for k in keys]
        ids = [int(b) for b in block_ids]
        if len(ids) != len(keys) * self.bpc:
            raise ValueError("%d block ids for %d chunks of %d blocks"
                             % (len(ids), len(keys), self.bpc))
        if any(not 0 <= b < self.n_blocks for b in ids):
            raise ValueError("block id out of range 0..%d" % (self.n_blocks - 1))
        if any(len(k) != types.KEY_NBYTES for k in keys):
            raise ValueError("chunk keys are %d bytes" % types.KEY_NBYTES)
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        r = _Request(req_id, len(keys), deadline)
        if not keys:
            self._ready.append(r)
            return
        with self._lock:
            self._reqs[id(r)] = r
        for i, k in enumerate(keys):
            self._jobs.put((r, i, k, ids[i * self.bpc:(i + 1) * self.bpc]))

    def poll(self):
        """Requests finished since the last poll: [(req_id, chunk_status list, wire_bytes)].
        A request is finished when every chunk is reported and, on CUDA, every chunk's
        device work has completed. Non-blocking."""
        while True:
            try:
                r, i, st, wire, ev = self._done.popleft()
            except IndexError:
                break
            r.status[i] = st
            r.wire += wire
            r.remaining -= 1
            if ev is not None:
                r.events.append(ev)
            if r.remaining == 0:
                self._ready.append(r)
        out, keep = [], []
        for r in self._ready:
            if all(ev.query() for ev in r.events):
                out.append((r.req_id, r.status, r.wire))
                with self._lock:
                    self._reqs.pop(id(r), None)
            else:
                keep.append(r)
        self._ready = keep
        return out

    def pending(self):
        """Requests submitted and not yet returned by poll()."""
        with self._lock:
            return len(self._reqs)

    def close(self):
        """Stop the workers (chunks still queued are dropped), free their resources."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        for w in self._workers:
            w.close()
        if self.stream is not None:
            self.stream.synchronize()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- workers ----

    def _run(self, w):
        if self.is_cuda:
            torch.cuda.set_device(self.device)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            r, i, key, ids = job
            ev = None
            wire = 0
            if r.deadline is not None and time.monotonic() > r.deadline:
                st = types.CHUNK_TIMEOUT
            else:
                try:
                    st, wire, ev = self._chunk(w, key, ids)
                except Exception as e:  # a bug or an unexpected failure: report, go on
                    print("inline fetcher: %s: %r" % (threading.current_thread().name, e),
                          file=sys.stderr)
                    st = types.CHUNK_ERROR
            with self._lock:
                self.wire_bytes += wire
                if st == types.CHUNK_OK:
                    self.chunks_ok += 1
                else:
                    self.chunks_failed += 1
                self.counts[types.CHUNK_STATUS_NAMES.get(st, str(st))] += 1
            self._done.append((r, i, st, wire, ev))

    def _fetch(self, w, key, buf):
        """GET the chunk into buf: (nbytes or None, status or None)."""
        if w.redis is None or w.redis._sock is None:
            try:
                w.redis = self._connect()
            except (OSError, resp.RedisError):
                w.redis = None
                return None, types.CHUNK_ERROR
        try:
            n = w.redis.get_into(codec.store_key(key, self.key_prefix), buf)
        except resp.ValueTooLarge:
            return None, types.CHUNK_ERROR
        except (OSError, resp.RedisError):
            return None, types.CHUNK_ERROR
        if n is None:
            return None, types.CHUNK_MISS
        return n, None

    def _wait_buffer(self, w):
        """Index of the buffer pair slot to use now, after its previous device work is done."""
        k = w.next
        w.next ^= 1
        ev = w.events[k]
        if ev is not None:
            ev.synchronize()
            w.events[k] = None
        return k

    def _stream_ctx(self):
        return torch.cuda.stream(self.stream) if self.is_cuda else contextlib.nullcontext()

    def _chunk(self, w, key, ids):
        if self.mode == "cpu-inline":
            return self._chunk_cpu_inline(w, key, ids)
        return self._chunk_gpu_decode(w, key, ids)

    def _chunk_cpu_inline(self, w, key, ids):
        n, st = self._fetch(w, key, w.recv)
        if st is not None:
            return st, 0, None
        try:
            view = codec.parse(w.recv[:n], expect_key=key, expect_geom=self.geom)
            if view.total_nbytes != n or view.n_frames != self.n_frames:
                return types.CHUNK_CORRUPT, n, None
        except ShadowError:
            return types.CHUNK_CORRUPT, n, None
        k = self._wait_buffer(w)
        stage = w.stages[k]
        addr, fb = stage.data_ptr(), self.frame_nbytes
        try:
            for f in range(self.n_frames):
                w.codec.decode_frame(view, f, self.layout, addr + f * fb, fb)
        except ShadowError:
            return types.CHUNK_CORRUPT, n, None
        # Every frame verified: now copy (one run per frame for consecutive block ids).
        runs = codec.plan_frame(self.layout, self.geom, 0, types.KV_K, ids)
        kvf = self.kv_flat
        ev = None
        with self._stream_ctx():
            for f in range(self.n_frames):
                shift = self._frame_shift[f]
                s0 = f * fb
                for so, ro, nb in runs:
                    d = (ro + shift) // 2
                    s = (s0 + so) // 2
                    kvf[d:d + nb // 2].copy_(stage[s:s + nb // 2], non_blocking=True)
            if self.is_cuda:
                ev = torch.cuda.Event()
                ev.record(self.stream)
                w.events[k] = ev
        return types.CHUNK_OK, n, ev

    def _chunk_gpu_decode(self, w, key, ids):
        k = self._wait_buffer(w)
        buf, buf_t = w.recv[k], w.recv_t[k]
        n, st = self._fetch(w, key, buf)
        if st is not None:
            return st, 0, None
        try:
            view = codec.parse(buf[:n], expect_key=key, expect_geom=self.geom)
            batches, tab = plan_gpu_chunk(buf, n, view, self.geom)
            if self.verify:
                verify_checksums(buf_t.data_ptr(), tab)
            nan = params_nonfinite(buf, batches)
        except (ShadowError, ChunkCorrupt):
            return types.CHUNK_CORRUPT, n, None
        except ChunkUnsupported:
            with self._lock:
                self.counts["unsupported"] += 1
            return types.CHUNK_ERROR, n, None
        geom, L, T, H, D = self.geom, self.geom.n_layers, self.geom.chunk_tokens, \
            self.geom.n_kv_heads, self.geom.head_dim
        b0 = ids[0]
        consecutive = ids == list(range(b0, b0 + self.bpc))
        kv = self.kv
        ev = None
        with self._stream_ctx():
            if self.is_cuda:
                gbuf = w.gbuf[:n]
                gbuf.copy_(buf_t[:n], non_blocking=True)
            else:
                gbuf = buf_t[:n]
            if consecutive:
                def dst_of(kind, layers):
                    v = kv[:, kind, b0:b0 + self.bpc]
                    if len(layers) != L:
                        v = v[layers[0]:layers[-1] + 1]
                    return v.view(len(layers), T, H, D)
                decode_batches_on_device(gbuf, batches, geom, dst_of, w.scratch, nan)
            else:
                img = w.image.view(L, T, H, D)
                ids_t = w.ids_t[k]
                ids_t.numpy()[:] = ids
                idx = ids_t.to(self.device, non_blocking=True)
                for kind in (types.KV_K, types.KV_V):
                    kb = [b for b in batches if b.kind == kind]

                    def dst_of(kind_, layers):
                        return img[layers[0]:layers[-1] + 1]
                    decode_batches_on_device(gbuf, kb, geom, dst_of, w.scratch, nan)
                    kv[:, kind].index_copy_(1, idx, img.view(L, self.bpc,
                                                              geom.block_tokens, H, D))
            if self.is_cuda:
                ev = torch.cuda.Event()
                ev.record(self.stream)
                w.events[k] = ev
        return types.CHUNK_OK, n, ev
