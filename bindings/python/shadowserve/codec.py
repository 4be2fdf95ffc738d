"""codec.py - libshadow.so in-process: chunk keys, the chunk container, encode and decode.

For benchmark baselines that decode in the engine's own process and for tools that fill a
store. The calls run without the GIL (ctypes.CDLL), so threads with one Codec each decode in
parallel:

    codec = Codec(geom)                                   # one per thread
    blob = codec.encode("bits4+zstd1", key, 0, kv, layout, block_ids)
    view = parse(blob, expect_key=key)
    for i in range(view.n_frames):
        codec.decode_frame(view, i, layout, stage)        # into a staging image
        for stage_off, region_off, n in plan_frame(layout, geom, i // 2, i % 2, block_ids):
            ...                                           # copy stage -> region

Buffers: where a function takes memory it accepts a numpy array (C-contiguous), a HostMemory,
bytes / bytearray / memoryview (anything with the buffer protocol), a CPU torch tensor, an
(address, nbytes) tuple or a bare int address (then nothing can be size-checked). Whatever the
C code will read is checked against the buffer's size first where the size is known, so a bad
argument raises instead of reading out of bounds.
"""
import collections
import ctypes
import errno
from ctypes import byref, c_char_p, c_size_t, c_uint32, c_uint64, c_void_p

import numpy as np

from . import _lib
from ._lib import ShadowError
from .types import (CHUNK_HEADER_NBYTES, KEY_NBYTES, STORE_KEY_MAX, ChunkKey, ChunkViewStruct,
                    CodecOptions, CopyRun, FrameInfoStruct, KVLayout, blocks_per_chunk,
                    check_geometry, frame_nbytes)


def version():
    """libshadow's version string."""
    return _lib.shadow().shadow_version().decode()


def now_ns():
    return _lib.shadow().shadow_now_ns()


def set_log_level(level):
    """LOG_ERROR, LOG_WARN (default), LOG_INFO or LOG_DEBUG, for libshadow's messages."""
    _lib.shadow().shadow_log_set_level(level)


def strerror(code):
    return _lib.shadow().shadow_strerror(code).decode()


def preset_names():
    """The geometry presets' names."""
    names = ctypes.POINTER(c_char_p)()
    n = c_size_t()
    _lib.shadow().shadow_geometry_preset_names(byref(names), byref(n))
    return [names[i].decode() for i in range(n.value)]


# --------------------------------------------------------------------------------------------
# Buffers
# --------------------------------------------------------------------------------------------


def _buffer(obj, writable=False, what="buffer"):
    """(address, nbytes or None, keep-alive object) of memory given in any accepted form."""
    if isinstance(obj, bool):
        raise TypeError("%s: not a buffer: %r" % (what, obj))
    if isinstance(obj, int):
        return obj, None, None
    if isinstance(obj, tuple) and len(obj) == 2:
        return int(obj[0]), int(obj[1]), None
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            raise ValueError("%s: the array must be C-contiguous" % what)
        if writable and not obj.flags.writeable:
            raise ValueError("%s: the array must be writable" % what)
        return obj.ctypes.data, obj.nbytes, obj
    if hasattr(obj, "address") and hasattr(obj, "nbytes") and hasattr(obj, "fileno"):
        return obj.address, obj.nbytes, obj  # HostMemory
    if hasattr(obj, "data_ptr") and hasattr(obj, "is_cuda"):  # a torch tensor
        if obj.is_cuda:
            raise TypeError("%s: a CUDA tensor; the codec works on host memory" % what)
        if not obj.is_contiguous():
            raise ValueError("%s: the tensor must be contiguous" % what)
        return obj.data_ptr(), obj.numel() * obj.element_size(), obj
    if writable and isinstance(obj, bytes):
        raise TypeError("%s: bytes are read-only" % what)
    arr = np.frombuffer(obj, dtype=np.uint8)
    if writable and not arr.flags.writeable:
        raise TypeError("%s: the buffer is read-only" % what)
    return arr.ctypes.data, arr.nbytes, arr


def _u32(a):
    return np.ascontiguousarray(a, dtype=np.uint32).reshape(-1)


def _key(key, what="key"):
    key = bytes(key)
    if len(key) != KEY_NBYTES:
        raise ValueError("%s: a key is %d bytes, not %d" % (what, KEY_NBYTES, len(key)))
    return key


# --------------------------------------------------------------------------------------------
# Keys (docs/keys.md)
# --------------------------------------------------------------------------------------------


def namespace(model_id, geom, salt=b""):
    """The 32-byte namespace key (key_{-1}) of model_id for geom, with an optional salt."""
    salt = bytes(salt)
    ns = ChunkKey()
    _lib.shadow().shadow_key_namespace(model_id.encode(), byref(geom), salt or None, len(salt),
                                       byref(ns))
    return bytes(ns)


def chunk_keys(ns, tokens, chunk_tokens):
    """The chained keys (32 bytes each) of the full chunks of tokens (shadow_key_chain)."""
    ns = _key(ns, "ns")
    tok = _u32(tokens)
    max_keys = tok.size // chunk_tokens if chunk_tokens > 0 else 0
    out = ctypes.create_string_buffer(max(1, max_keys) * KEY_NBYTES)
    n = c_size_t()
    _lib.shadow().shadow_key_chain(ns, tok.ctypes.data if tok.size else None, tok.size,
                                   chunk_tokens, out, max_keys, byref(n))
    raw = out.raw
    return [raw[i * KEY_NBYTES:(i + 1) * KEY_NBYTES] for i in range(n.value)]


def store_key(key, prefix="shadow:v1"):
    """The printable store key "<prefix>:<64 hex digits>" (shadow_key_format)."""
    key = _key(key)
    buf = ctypes.create_string_buffer(STORE_KEY_MAX)
    n = _lib.shadow().shadow_key_format(key, prefix.encode() if prefix else None, buf,
                                        STORE_KEY_MAX)
    return buf.raw[:n].decode()


def parse_store_key(text, prefix="shadow:v1"):
    """The 32-byte key of a store key (shadow_key_parse); raises ShadowError(-EINVAL)."""
    k = ChunkKey()
    _lib.shadow().shadow_key_parse(text.encode(), prefix.encode() if prefix else None, byref(k))
    return bytes(k)


# --------------------------------------------------------------------------------------------
# Layouts and copy plans (docs/layout.md)
# --------------------------------------------------------------------------------------------


def layout_validate(layout, geom):
    """Raise ShadowError(EGEOMETRY) unless layout is valid for geom."""
    _lib.shadow().shadow_layout_validate(byref(layout), byref(geom))


def layout_offset(layout, geom, layer, kind, block, token_in_block=0, head=0):
    """Byte offset in the region of element 0 of (layer, kind, block, token, head)."""
    return _lib.shadow().shadow_layout_offset(byref(layout), byref(geom), layer, kind, block,
                                              token_in_block, head)


def stage_offset(layout, geom, token_in_chunk, head):
    """Offset in a frame's staging image of element 0 of (token_in_chunk, head)."""
    return _lib.shadow().shadow_layout_stage_offset(byref(layout), byref(geom), token_in_chunk,
                                                    head)


def plan_frame(layout, geom, layer, kind, block_ids):
    """The copy plan of frame (layer, kind) into blocks block_ids: a list of (stage_offset,
    region_offset, nbytes) runs in staging-image order (shadow_layout_plan_frame)."""
    lib = _lib.shadow()
    ids = _u32(block_ids)
    if ids.size != blocks_per_chunk(geom):
        raise ValueError("%d block ids; a chunk has %d blocks" % (ids.size,
                                                                   blocks_per_chunk(geom)))
    cap = max(1, ids.size)
    n = c_size_t()
    while True:
        runs = (CopyRun * cap)()
        try:
            lib.shadow_layout_plan_frame(byref(layout), byref(geom), layer, kind,
                                         ids.ctypes.data, ids.size, runs, cap, byref(n))
            break
        except ShadowError as e:
            if e.code != -errno.ENOBUFS or n.value <= cap:
                raise
            cap = n.value
    return [(r.src_offset, r.dst_offset, r.nbytes) for r in runs[:n.value]]


# --------------------------------------------------------------------------------------------
# Codec options
# --------------------------------------------------------------------------------------------


def parse_scheme(scheme):
    """CodecOptions of a scheme name such as "bits4+zstd1", "bf16+none", "int8+zstd3"."""
    opts = CodecOptions()
    _lib.shadow().shadow_codec_options_parse(scheme.encode(), byref(opts))
    return opts


def scheme_name(opts):
    """The canonical scheme name of CodecOptions (the inverse of parse_scheme)."""
    buf = ctypes.create_string_buffer(256)
    n = _lib.shadow().shadow_codec_options_name(byref(opts), buf, 256)
    return buf.raw[:n].decode()


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------

_FrameInfoBase = collections.namedtuple(
    "FrameInfo", [f for f, _ in FrameInfoStruct._fields_])


class FrameInfo(_FrameInfoBase):
    """One frame of a container: layer, kind (KV_K / KV_V), quant, bits, codec,
    payload_offset, payload_nbytes, raw_nbytes, decoded_nbytes, raw_checksum."""
    __slots__ = ()


class ChunkView:
    """A parsed container: the C view plus a reference to the buffer it points into."""

    def __init__(self, view, buf, avail_nbytes):
        self._view = view
        self._buf = buf
        self.avail_nbytes = avail_nbytes

    n_frames = property(lambda self: self._view.n_frames)
    n_tokens = property(lambda self: self._view.n_tokens)
    meta_nbytes = property(lambda self: self._view.meta_nbytes)
    total_nbytes = property(lambda self: self._view.total_nbytes)
    chunk_index = property(lambda self: self._view.chunk_index)

    @property
    def geom(self):
        """The container's geometry (block_tokens 0: a container does not know it)."""
        return self._view.geom.copy()

    @property
    def key(self):
        return bytes(self._view.key)

    @property
    def complete(self):
        """Whether every payload is in the buffer."""
        return self.avail_nbytes >= self._view.total_nbytes

    def frame(self, i):
        info = FrameInfoStruct()
        _lib.shadow().shadow_chunk_frame_info(byref(self._view), i, byref(info))
        return FrameInfo(*(getattr(info, f) for f, _ in FrameInfoStruct._fields_))

    def frames(self):
        return [self.frame(i) for i in range(self._view.n_frames)]

    def __repr__(self):
        return "ChunkView(%d frames, %d tokens, chunk %d, %d bytes)" % (
            self.n_frames, self.n_tokens, self.chunk_index, self.total_nbytes)


def parse(buf, expect_key=None, expect_geom=None):
    """Parse and verify a container's metadata (payloads need not have arrived). buf: bytes,
    bytearray, a uint8 array, a memoryview, or (address, nbytes). Raises ShadowError
    (ETRUNCATED: fewer bytes than the metadata; ECORRUPT, EVERSION, EKEYMISMATCH, EGEOMETRY)."""
    addr, nbytes, keep = _buffer(buf, what="parse")
    if nbytes is None:
        raise TypeError("parse needs a size: pass (address, nbytes)")
    view = ChunkViewStruct()
    key = _key(expect_key, "expect_key") if expect_key is not None else None
    _lib.shadow().shadow_chunk_parse(addr, nbytes, key,
                                     byref(expect_geom) if expect_geom is not None else None,
                                     byref(view))
    return ChunkView(view, keep if keep is not None else buf, nbytes)


def peek(buf):
    """(meta_nbytes, total_nbytes) from a container's first CHUNK_HEADER_NBYTES bytes."""
    addr, nbytes, keep = _buffer(buf, what="peek")
    if nbytes is None:  # a bare address: its first CHUNK_HEADER_NBYTES bytes are read
        nbytes = CHUNK_HEADER_NBYTES
    meta = c_uint32()
    total = c_uint64()
    _lib.shadow().shadow_chunk_peek(addr, nbytes, byref(meta), byref(total))
    del keep
    return meta.value, total.value


def describe(buf):
    """A container in text (header, then a line per frame), as shadowctl inspect prints it."""
    addr, nbytes, keep = _buffer(buf, what="describe")
    if nbytes is None:
        raise TypeError("describe needs a size: pass (address, nbytes)")
    cap = 4096
    while True:
        out = ctypes.create_string_buffer(cap)
        n = _lib.shadow().shadow_chunk_describe(addr, nbytes, out, cap)
        if n < cap - 1:
            del keep
            return out.raw[:n].decode()
        cap *= 4


# --------------------------------------------------------------------------------------------
# Transforms (PCA schemes)
# --------------------------------------------------------------------------------------------


class Transform(_lib.Handle):
    """A per-model KV transform for "pca" schemes: load(bytes) or calibrate(...)."""

    def __init__(self, handle):
        self._h = handle

    @classmethod
    def load(cls, data, geom=None):
        """From a serialized transform (bytes, or a path to a file)."""
        if isinstance(data, str):
            with open(data, "rb") as f:
                data = f.read()
        addr, nbytes, keep = _buffer(data, what="transform")
        h = c_void_p()
        _lib.shadow().shadow_transform_load(addr, nbytes, byref(geom) if geom else None,
                                            byref(h))
        del keep
        return cls(h)

    @classmethod
    def calibrate(cls, geom, region, layout, block_ids, rope_theta=None):
        """From the KV of block_ids (one sequence in order) in host memory `region`; keys are
        un-rotated with standard RoPE of rope_theta (None: keys carry no RoPE)."""
        lib = _lib.shadow()
        layout_validate(layout, geom)
        addr, nbytes, keep = _buffer(region, what="region")
        if nbytes is not None and nbytes < layout.region_nbytes:
            raise ValueError("region: %d bytes, the layout describes %d"
                             % (nbytes, layout.region_nbytes))
        ids = _u32(block_ids)
        inv = None
        if rope_theta is not None:
            inv = np.empty(geom.head_dim // 2, dtype=np.float32)
            lib.shadow_rope_inv_freq(float(rope_theta), geom.head_dim, inv.ctypes.data)
        h = c_void_p()
        lib.shadow_transform_calibrate(byref(geom), addr, byref(layout), ids.ctypes.data,
                                       ids.size, inv.ctypes.data if inv is not None else None,
                                       byref(h))
        del keep
        return cls(h)

    @property
    def id(self):
        return _lib.shadow().shadow_transform_id(self._handle())

    def save(self):
        """The serialized transform (bytes)."""
        lib = _lib.shadow()
        n = c_size_t()
        try:
            lib.shadow_transform_save(self._handle(), None, 0, byref(n))
        except ShadowError as e:
            if e.code != -errno.ENOBUFS:
                raise
        buf = ctypes.create_string_buffer(n.value)
        lib.shadow_transform_save(self._handle(), buf, n.value, byref(n))
        return buf.raw[:n.value]

    def _free(self, h):
        _lib.shadow().shadow_transform_free(h)


# --------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------


class Codec(_lib.Handle):
    """An encoder/decoder context for chunks of one geometry (shadow_codec_create). Use one
    per thread; calls release the GIL. close() (or a with block) frees it."""

    def __init__(self, geom):
        self._h = None
        lib = _lib.shadow()
        self._lib = lib
        check_geometry(geom)
        self.geom = geom.copy()
        h = c_void_p()
        lib.shadow_codec_create(byref(self.geom), byref(h))
        self._h = h
        self._opts = {}
        self._bounds = {}
        self._out = None
        self._transform = None
        self._frame_nbytes = frame_nbytes(self.geom)
        self._bpc = blocks_per_chunk(self.geom)

    def _free(self, h):
        self._lib.shadow_codec_free(h)

    def options(self, scheme):
        """CodecOptions for a scheme name (parsed once per name) or CodecOptions as given."""
        if isinstance(scheme, CodecOptions):
            return scheme
        opts = self._opts.get(scheme)
        if opts is None:
            opts = self._opts[scheme] = parse_scheme(scheme)
        return opts

    def encode_bound(self, scheme):
        """The most bytes encode() can produce with this scheme."""
        opts = self.options(scheme)
        key = scheme if isinstance(scheme, str) else None
        b = self._bounds.get(key) if key else None
        if b is None:
            b = self._lib.shadow_chunk_encode_bound(self._handle(), byref(opts))
            if b == 0:
                raise ShadowError(-errno.EINVAL, "scheme %r is invalid for %r"
                                  % (scheme, self.geom), "shadow_chunk_encode_bound")
            if key:
                self._bounds[key] = b
        return b

    def set_transform(self, transform):
        """The Transform that pca schemes use (None removes it); kept alive here."""
        self._lib.shadow_codec_set_transform(self._handle(),
                                             transform._handle() if transform else None)
        self._transform = transform

    def _check_layout(self, layout):
        if not isinstance(layout, KVLayout):
            raise TypeError("layout: want a KVLayout, not %s" % type(layout).__name__)
        # Checked on every call (microseconds): the C functions trust a validated layout.
        layout_validate(layout, self.geom)

    def encode_into(self, scheme, key, chunk_index, region, layout, block_ids, dst):
        """Encode into dst (a writable buffer, at least encode_bound(scheme) bytes to be
        sure); returns the container's size."""
        opts = self.options(scheme)
        key = _key(key)
        self._check_layout(layout)
        raddr, rnbytes, rkeep = _buffer(region, what="region")
        if rnbytes is not None and rnbytes < layout.region_nbytes:
            raise ValueError("region: %d bytes, the layout describes %d"
                             % (rnbytes, layout.region_nbytes))
        ids = _u32(block_ids)
        if ids.size != self._bpc:
            raise ValueError("%d block ids; a chunk has %d blocks" % (ids.size, self._bpc))
        daddr, dnbytes, dkeep = _buffer(dst, writable=True, what="dst")
        if dnbytes is None:
            raise TypeError("dst needs a size: pass (address, nbytes)")
        n = c_size_t()
        self._lib.shadow_chunk_encode(self._handle(), byref(opts), key, chunk_index, raddr,
                                      byref(layout), ids.ctypes.data, daddr, dnbytes, byref(n))
        del rkeep, dkeep
        return n.value

    def encode(self, scheme, key, chunk_index, region, layout, block_ids):
        """Encode chunk number chunk_index, whose KV lies in host memory `region` (laid out
        as `layout`) in blocks block_ids, under `key`; returns the container (bytes)."""
        bound = self.encode_bound(scheme)
        if self._out is None or self._out.size < bound:
            self._out = np.empty(bound, dtype=np.uint8)
        n = self.encode_into(scheme, key, chunk_index, region, layout, block_ids, self._out)
        return self._out[:n].tobytes()

    def decode_frame(self, view, frame, layout, stage, stage_nbytes=None):
        """Decode frame `frame` of a ChunkView into a staging image (an int address or a
        writable array) laid out for `layout` (shadow_layout_plan_frame). Raises ShadowError
        (ECORRUPT: the payload does not decode or fails its checksum; the image then holds
        partial data)."""
        if not isinstance(view, ChunkView):
            raise TypeError("view: want a ChunkView (from parse), not %s" % type(view).__name__)
        self._check_layout(layout)
        if not 0 <= frame < view.n_frames:
            raise ShadowError(-errno.EINVAL, "frame %d of %d" % (frame, view.n_frames),
                              "shadow_chunk_decode_frame")
        info = view.frame(frame)
        if info.payload_offset + info.payload_nbytes > view.avail_nbytes:
            raise ValueError("frame %d's payload ends at byte %d; the buffer holds %d"
                             % (frame, info.payload_offset + info.payload_nbytes,
                                view.avail_nbytes))
        saddr, snbytes, skeep = _buffer(stage, writable=True, what="stage")
        if stage_nbytes is None:
            stage_nbytes = snbytes if snbytes is not None else self._frame_nbytes
        elif snbytes is not None and stage_nbytes > snbytes:
            raise ValueError("stage_nbytes %d, the stage has %d" % (stage_nbytes, snbytes))
        self._lib.shadow_chunk_decode_frame(self._handle(), byref(view._view), frame,
                                            byref(layout), saddr, stage_nbytes)
        del skeep

    def __repr__(self):
        return "Codec(%r%s)" % (self.geom, ", closed" if self.closed else "")

