"""types.py - ctypes mirrors of the public C structs, the constants, and geometry helpers.

Every Structure here has the C struct's fields in the C order with the C types, so ctypes
lays it out as the compiler does (tests/test_types.py compares every size and field offset
with a C program built against the headers). Pointer fields of the client structs are
declared c_void_p rather than typed pointers: same size and alignment, and the submit path
can store plain addresses (from numpy) without a ctypes cast per request.

The functions (geometry_preset, geometry, layout_init, frame_nbytes, token_nbytes) need only
the client library (libshadow_client.so exports shadow_client_ twins of the two that call C);
where it is absent they use libshadow.so.
"""
import ctypes
from ctypes import (c_float, c_int, c_int32, c_int64, c_size_t, c_uint8, c_uint32,
                    c_uint64, c_void_p)

# --------------------------------------------------------------------------------------------
# Constants (include/shadow/shadow.h, include/shadow/client.h)
# --------------------------------------------------------------------------------------------

# enum shadow_status
OK = 0
ECORRUPT = -10001
ETRUNCATED = -10002
EVERSION = -10003
EGEOMETRY = -10004
EKEYMISMATCH = -10005
EMISS = -10006
ENOGPU = -10007
ECUDA = -10008
EPROTO = -10009
EUNSUPPORTED = -10010
ELIMIT = -10011
ECODEC = -10012
EUNKNOWN_NAME = -10013
ESERVER = -10014

# enum shadow_dtype
DTYPE_BF16 = 1
DTYPE_FP16 = 2
DTYPE_FP32 = 3
DTYPE_FP8_E4M3 = 4
DTYPE_NBYTES = {DTYPE_BF16: 2, DTYPE_FP16: 2, DTYPE_FP32: 4, DTYPE_FP8_E4M3: 1}
DTYPE_NAMES = {DTYPE_BF16: "bf16", DTYPE_FP16: "fp16", DTYPE_FP32: "fp32",
               DTYPE_FP8_E4M3: "fp8_e4m3"}

MAX_LAYERS = 256
MAX_KV_HEADS = 256
MAX_HEAD_DIM = 1024
MAX_BLOCK_TOKENS = 4096
MAX_CHUNK_TOKENS = 65536
DEFAULT_CHUNK_TOKENS = 256

# enum shadow_kv_kind
KV_K = 0
KV_V = 1

# enum shadow_layout_kind
LAYOUT_NHD = 1
LAYOUT_HND = 2
LAYOUT_CROSS_LAYER_NHD = 3

# chunk keys
KEY_NBYTES = 32
KEY_PREFIX_MAX = 64
STORE_KEY_MAX = KEY_PREFIX_MAX + 1 + 2 * KEY_NBYTES + 1
DEFAULT_KEY_PREFIX = "shadow:v1"

# enum shadow_quant, enum shadow_codec_id, enum shadow_scale_rule
QUANT_NONE = 0
QUANT_PLANES = 1
QUANT_UNIFORM = 2
QUANT_ECSQ = 3
QUANT_PCA = 4
CODEC_NONE = 0
CODEC_DEFLATE = 1
CODEC_ZSTD = 2
SCALE_MINMAX = 0
SCALE_STD = 1
MAX_LAYER_BITS = 8
CHUNK_HEADER_NBYTES = 96

# enum shadow_chunk_status
CHUNK_OK = 0
CHUNK_MISS = 1
CHUNK_CORRUPT = 2
CHUNK_TIMEOUT = 3
CHUNK_ERROR = 4
CHUNK_CANCELED = 5
CHUNK_STATUS_NAMES = {CHUNK_OK: "ok", CHUNK_MISS: "miss", CHUNK_CORRUPT: "corrupt",
                      CHUNK_TIMEOUT: "timeout", CHUNK_ERROR: "error",
                      CHUNK_CANCELED: "canceled"}

# enum shadow_log_level
LOG_ERROR = 0
LOG_WARN = 1
LOG_INFO = 2
LOG_DEBUG = 3

# client.h
CLIENT_MEM_HOST = 1
CLIENT_MEM_CUDA = 2
CLIENT_CUDA_IPC_NBYTES = 64
OP_LOOKUP = 1
OP_FETCH = 2
OP_SAVE = 3
OP_NAMES = {OP_LOOKUP: "lookup", OP_FETCH: "fetch", OP_SAVE: "save"}
NO_REGION = 0xFFFFFFFF

# --------------------------------------------------------------------------------------------
# shadow.h structs
# --------------------------------------------------------------------------------------------


class KVGeometry(ctypes.Structure):
    """struct shadow_kv_geometry: the shape of a model's KV cache."""
    _fields_ = [
        ("n_layers", c_uint32),
        ("n_kv_heads", c_uint32),
        ("head_dim", c_uint32),
        ("dtype", c_uint32),
        ("block_tokens", c_uint32),
        ("chunk_tokens", c_uint32),
    ]

    def copy(self):
        return KVGeometry.from_buffer_copy(self)

    def astuple(self):
        return tuple(getattr(self, f) for f, _ in self._fields_)

    def __eq__(self, other):
        return isinstance(other, KVGeometry) and self.astuple() == other.astuple()

    def __hash__(self):
        return hash(self.astuple())

    def __repr__(self):
        return ("KVGeometry(n_layers=%d, n_kv_heads=%d, head_dim=%d, dtype=%s, "
                "block_tokens=%d, chunk_tokens=%d)" % (
                    self.n_layers, self.n_kv_heads, self.head_dim,
                    DTYPE_NAMES.get(self.dtype, str(self.dtype)), self.block_tokens,
                    self.chunk_tokens))


class KVLayout(ctypes.Structure):
    """struct shadow_kv_layout: where each element of a paged KV cache lives in a region."""
    _fields_ = [
        ("region_nbytes", c_uint64),
        ("n_layers", c_uint32),
        ("n_blocks", c_uint32),
        ("block_stride", c_int64),
        ("token_stride", c_int64),
        ("head_stride", c_int64),
        ("elem_stride", c_int64),
        ("base", (c_uint64 * 2) * MAX_LAYERS),
    ]

    def copy(self):
        return KVLayout.from_buffer_copy(self)

    def __repr__(self):
        return ("KVLayout(region_nbytes=%d, n_layers=%d, n_blocks=%d, block_stride=%d, "
                "token_stride=%d, head_stride=%d, elem_stride=%d, base[0]=(%d, %d))" % (
                    self.region_nbytes, self.n_layers, self.n_blocks, self.block_stride,
                    self.token_stride, self.head_stride, self.elem_stride,
                    self.base[0][0], self.base[0][1]))


class ChunkKey(ctypes.Structure):
    """struct shadow_chunk_key: a SHA-256 digest (docs/keys.md)."""
    _fields_ = [("bytes", c_uint8 * KEY_NBYTES)]

    @classmethod
    def from_bytes(cls, key):
        key = bytes(key)
        if len(key) != KEY_NBYTES:
            raise ValueError("a chunk key is %d bytes, not %d" % (KEY_NBYTES, len(key)))
        return cls.from_buffer_copy(key)

    def __bytes__(self):
        return ctypes.string_at(ctypes.addressof(self), KEY_NBYTES)


class CopyRun(ctypes.Structure):
    """struct shadow_copy_run: one copy of a frame's plan."""
    _fields_ = [
        ("src_offset", c_uint64),
        ("dst_offset", c_uint64),
        ("nbytes", c_uint64),
    ]


class LayerBits(ctypes.Structure):
    """The anonymous element struct of shadow_codec_options.layer_bits."""
    _fields_ = [
        ("first_layer", c_uint32),
        ("k_bits", c_uint32),
        ("v_bits", c_uint32),
    ]


class CodecOptions(ctypes.Structure):
    """struct shadow_codec_options: an encoder's scheme (see codec.parse_scheme)."""
    _fields_ = [
        ("sizeof_options", c_size_t),
        ("quant", c_uint32),
        ("codec", c_uint32),
        ("level", c_int32),
        ("k_bits", c_uint32),
        ("v_bits", c_uint32),
        ("k_group_tokens", c_uint32),
        ("k_group_channels", c_uint32),
        ("v_group_tokens", c_uint32),
        ("v_group_channels", c_uint32),
        ("scale_rule", c_uint32),
        ("step_mul", c_float),
        ("n_layer_bits", c_uint32),
        ("layer_bits", LayerBits * MAX_LAYER_BITS),
    ]


class ChunkViewStruct(ctypes.Structure):
    """struct shadow_chunk_view: a parsed container (points into the caller's buffer)."""
    _fields_ = [
        ("base", c_void_p),
        ("total_nbytes", c_uint64),
        ("meta_nbytes", c_uint32),
        ("n_frames", c_uint32),
        ("n_tokens", c_uint32),
        ("chunk_index", c_uint32),
        ("geom", KVGeometry),
        ("key", ChunkKey),
    ]


class FrameInfoStruct(ctypes.Structure):
    """struct shadow_frame_info: one frame's table entry."""
    _fields_ = [
        ("layer", c_uint32),
        ("kind", c_uint32),
        ("quant", c_uint32),
        ("bits", c_uint32),
        ("codec", c_uint32),
        ("payload_offset", c_uint64),
        ("payload_nbytes", c_uint32),
        ("raw_nbytes", c_uint32),
        ("decoded_nbytes", c_uint64),
        ("raw_checksum", c_uint64),
    ]


# --------------------------------------------------------------------------------------------
# client.h structs
# --------------------------------------------------------------------------------------------


class ClientOptions(ctypes.Structure):
    """struct shadow_client_options."""
    _fields_ = [
        ("size", c_size_t),
        ("max_inflight", c_uint32),
        ("slot_nbytes", c_uint32),
        ("connect_timeout_ms", c_uint32),
        ("call_timeout_ms", c_uint32),
        ("name", ctypes.c_char_p),
    ]


class ClientCudaIpc(ctypes.Structure):
    """struct shadow_client_cuda_ipc."""
    _fields_ = [
        ("handle", c_uint8 * CLIENT_CUDA_IPC_NBYTES),
        ("device", c_int32),
    ]


class ClientMemory(ctypes.Structure):
    """struct shadow_client_memory."""
    _fields_ = [
        ("size", c_size_t),
        ("kind", c_uint32),
        ("fd", c_int),
        ("fd_offset", c_uint64),
        ("cuda", ClientCudaIpc),
    ]


class ClientRequest(ctypes.Structure):
    """struct shadow_client_request (pointers as c_void_p: see the module's docstring)."""
    _fields_ = [
        ("size", c_size_t),
        ("region", c_uint32),
        ("n_chunks", c_uint32),
        ("first_chunk", c_uint32),
        ("n_block_ids", c_uint32),
        ("keys", c_void_p),
        ("tokens", c_void_p),
        ("n_tokens", c_size_t),
        ("ns", c_void_p),
        ("block_ids", c_void_p),
        ("deadline_ns", c_uint64),
        ("chunk_status", c_void_p),
        ("user", c_void_p),
    ]


class ClientCompletion(ctypes.Structure):
    """struct shadow_client_completion."""
    _fields_ = [
        ("ticket", c_uint64),
        ("user", c_void_p),
        ("chunk_status", c_void_p),
        ("status", c_int32),
        ("op", c_uint32),
        ("n_chunks", c_uint32),
        ("n_ok", c_uint32),
        ("n_found", c_uint32),
        ("n_tokens", c_uint32),
        ("bytes_in", c_uint64),
        ("bytes_out", c_uint64),
        ("daemon_ns", c_uint64),
    ]


class ClientStats(ctypes.Structure):
    """struct shadow_client_stats."""
    _fields_ = [
        ("size", c_size_t),
        ("submitted", c_uint64),
        ("completed", c_uint64),
        ("failed", c_uint64),
        ("cancels", c_uint64),
        ("chunks_ok", c_uint64),
        ("chunks_failed", c_uint64),
        ("doorbells", c_uint64),
        ("sleeps", c_uint64),
        ("in_flight", c_uint32),
        ("regions", c_uint32),
        ("client_id", c_uint32),
        ("daemon_in_flight", c_uint32),
        ("daemon_requests", c_uint64),
        ("daemon_rejected", c_uint64),
        ("daemon_completed", c_uint64),
        ("daemon_bytes_in", c_uint64),
        ("daemon_bytes_out", c_uint64),
        ("daemon_doorbells", c_uint64),
    ]


# The C struct each Structure mirrors (tests/test_types.py checks them all).
C_STRUCTS = {
    "shadow_kv_geometry": KVGeometry,
    "shadow_kv_layout": KVLayout,
    "shadow_chunk_key": ChunkKey,
    "shadow_copy_run": CopyRun,
    "shadow_codec_options": CodecOptions,
    "shadow_chunk_view": ChunkViewStruct,
    "shadow_frame_info": FrameInfoStruct,
    "shadow_client_options": ClientOptions,
    "shadow_client_cuda_ipc": ClientCudaIpc,
    "shadow_client_memory": ClientMemory,
    "shadow_client_request": ClientRequest,
    "shadow_client_completion": ClientCompletion,
    "shadow_client_stats": ClientStats,
}

_FUNCTIONS = ("check_geometry", "geometry", "geometry_preset", "dtype_nbytes", "frame_nbytes",
              "token_nbytes", "block_nbytes", "cache_nbytes", "blocks_per_chunk", "layout_init")

# --------------------------------------------------------------------------------------------
# Geometry and layout helpers
# --------------------------------------------------------------------------------------------


def _geometry_error(geom, why):
    from ._lib import ShadowError
    return ShadowError(EGEOMETRY, "%r: %s" % (geom, why))


def check_geometry(geom):
    """Raise ShadowError(EGEOMETRY) unless geom passes shadow_geometry_validate()'s rules
    (every field in range, chunk_tokens a multiple of block_tokens). Returns geom."""
    if not isinstance(geom, KVGeometry):
        raise TypeError("want a KVGeometry, not %s" % type(geom).__name__)
    limits = (("n_layers", MAX_LAYERS), ("n_kv_heads", MAX_KV_HEADS),
              ("head_dim", MAX_HEAD_DIM), ("block_tokens", MAX_BLOCK_TOKENS),
              ("chunk_tokens", MAX_CHUNK_TOKENS))
    for field, hi in limits:
        v = getattr(geom, field)
        if not 1 <= v <= hi:
            raise _geometry_error(geom, "%s %d is outside 1 .. %d" % (field, v, hi))
    if geom.dtype not in DTYPE_NBYTES:
        raise _geometry_error(geom, "unknown dtype %d" % geom.dtype)
    if geom.chunk_tokens % geom.block_tokens != 0:
        raise _geometry_error(geom, "chunk_tokens is not a multiple of block_tokens")
    return geom


def geometry(n_layers, n_kv_heads, head_dim, dtype=DTYPE_BF16, block_tokens=16,
             chunk_tokens=DEFAULT_CHUNK_TOKENS):
    """A validated KVGeometry."""
    g = KVGeometry(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, dtype=dtype,
                   block_tokens=block_tokens, chunk_tokens=chunk_tokens)
    return check_geometry(g)


def geometry_preset(name, chunk_tokens=None, block_tokens=None):
    """A named preset ("llama3-8b", "llama3-70b", "mistral-7b", "qwen2.5-7b",
    "minillama-h128"): bf16, 16-token blocks, 256-token chunks unless given."""
    from . import _lib
    lib, prefix = _lib.any_lib()
    g = KVGeometry()
    getattr(lib, prefix + "geometry_preset")(name.encode(), ctypes.byref(g))
    if chunk_tokens is not None:
        g.chunk_tokens = chunk_tokens
    if block_tokens is not None:
        g.block_tokens = block_tokens
    return check_geometry(g)


def dtype_nbytes(dtype):
    return DTYPE_NBYTES[dtype]


def frame_nbytes(geom):
    """Bytes of one frame: chunk_tokens x n_kv_heads x head_dim elements."""
    check_geometry(geom)
    return geom.chunk_tokens * geom.n_kv_heads * geom.head_dim * DTYPE_NBYTES[geom.dtype]


def token_nbytes(geom):
    """Bytes of the KV of one token over all layers, K and V."""
    check_geometry(geom)
    return 2 * geom.n_layers * geom.n_kv_heads * geom.head_dim * DTYPE_NBYTES[geom.dtype]


def block_nbytes(geom):
    """Bytes of one block over all layers, K and V (what a standard layout needs per block)."""
    return geom.block_tokens * token_nbytes(geom)


def cache_nbytes(geom, n_blocks):
    """Bytes a standard layout (NHD, HND, cross-layer) of n_blocks blocks occupies."""
    return n_blocks * block_nbytes(geom)


def blocks_per_chunk(geom):
    return geom.chunk_tokens // geom.block_tokens


def layout_init(geom, kind, n_blocks, region_offset=0, region_nbytes=None):
    """A standard layout (LAYOUT_NHD, LAYOUT_HND, LAYOUT_CROSS_LAYER_NHD) of n_blocks blocks
    starting region_offset bytes into a region of region_nbytes bytes (default: exactly
    region_offset plus what the cache needs)."""
    from . import _lib
    check_geometry(geom)
    if region_nbytes is None:
        region_nbytes = region_offset + cache_nbytes(geom, n_blocks)
    lib, prefix = _lib.any_lib()
    lay = KVLayout()
    getattr(lib, prefix + "layout_init")(ctypes.byref(lay), ctypes.byref(geom), kind, n_blocks,
                                         region_offset, region_nbytes)
    return lay


__all__ = sorted(n for n in dir() if not n.startswith("_") and n not in ("ctypes",)
                 and (n.isupper() or n[0].isupper() or n in _FUNCTIONS))
