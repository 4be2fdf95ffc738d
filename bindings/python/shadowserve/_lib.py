"""_lib.py - finding and loading libshadow.so and libshadow_client.so, and their ctypes tables.

Each library's functions are declared once, in a table of (name, argtypes, restype, errcheck)
as in clang's bindings/python/clang/cindex.py, and registered on the loaded CDLL. Every
function that returns a status (0 or a negative code; some return a count or a length when
positive) gets an errcheck that raises ShadowError for a negative result, with the library's
own shadow_strerror() text.

The libraries are loaded with ctypes.CDLL, which releases the GIL around every call: threads
that decode frames with one Codec each run in parallel (the codec benchmarks rely on it). Do
not change this to PyDLL.

Where the libraries come from, first match wins:
  1. $SHADOW_LIB_DIR (one or more directories separated by ':'); for the client library each
     directory's client/ subdirectory too, since a build tree keeps it in lib/client/;
  2. the build trees of this checkout: build-release/lib, build/lib (and their client/), the
     most recently built copy if several have one;
  3. the system loader (libshadow.so.0, libshadow.so, ... from an installed copy).
"""
import ctypes
import os
import threading
from ctypes import (POINTER, c_char_p, c_double, c_int, c_int64, c_size_t, c_uint32,
                    c_uint64, c_void_p)

from .types import (ChunkKey, ChunkViewStruct, ClientCompletion, ClientMemory, ClientOptions,
                    ClientRequest, ClientStats, CodecOptions, CopyRun, FrameInfoStruct,
                    KVGeometry, KVLayout)


class Closeable:
    """The tail every handle class shares: a context manager and a finalizer over close(),
    which must be idempotent. A finalizer never raises (an interpreter shutting down may
    already have torn down what close() uses)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Handle(Closeable):
    """A Closeable over one C handle in self._h (None once closed): _handle() for the calls
    (ValueError once closed), `closed`, and an idempotent close() that hands the handle to
    _free() exactly once."""

    _h = None

    @property
    def closed(self):
        return self._h is None

    def _handle(self):
        h = self._h
        if h is None:
            raise ValueError("the %s is closed" % type(self).__name__)
        return h

    def close(self):
        h, self._h = self._h, None
        if h is not None:
            self._free(h)

    def _free(self, h):
        raise NotImplementedError


class ShadowError(Exception):
    """A ShadowServe C call failed. `code` is the negative status (-errno or a SHADOW_E* code,
    see shadowserve.types), `message` the library's text for it, `func` the C function."""

    def __init__(self, code, message=None, func=None):
        self.code = int(code)
        if message is None:
            message = strerror(self.code)
        self.message = message
        self.func = func
        text = "%s (%d)" % (message, self.code)
        super().__init__("%s: %s" % (func, text) if func else text)

    @property
    def errno(self):
        """The errno value for a -errno code, None for a SHADOW_E* code."""
        return -self.code if -10000 < self.code < 0 else None


class LibraryNotFound(ImportError):
    """A ShadowServe shared library could not be found (see _lib's docstring for where)."""


_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
_BUILD_DIRS = ("build-release/lib", "build/lib")


def _with_client(dirs, client):
    return [x for d in dirs for x in (d, os.path.join(d, "client"))] if client else dirs


def _candidate_dirs(client):
    """([directories from $SHADOW_LIB_DIR], [this checkout's build directories])."""
    env = [d for d in os.environ.get("SHADOW_LIB_DIR", "").split(os.pathsep) if d]
    builds = [os.path.join(_REPO, d) for d in _BUILD_DIRS]
    return _with_client(env, client), _with_client(builds, client)


def find_library(stem):
    """Path of lib<stem>.so (or the name for the system loader), or raise LibraryNotFound."""
    client = stem == "shadow_client"
    names = ("lib%s.so" % stem, "lib%s.so.0" % stem)
    env_dirs, build_dirs = _candidate_dirs(client)
    for d in env_dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                return p
    # Of this checkout's build trees, the most recently built copy: a stale build-release/
    # beside a fresh build/ (or the reverse) would otherwise win by its place in the list.
    found = [os.path.join(d, n) for d in build_dirs for n in names[:1]
             if os.path.isfile(os.path.join(d, n))]
    if found:
        return max(found, key=os.path.getmtime)
    for n in names:  # the system loader (ld.so.cache, LD_LIBRARY_PATH)
        try:
            ctypes.CDLL(n)
            return n
        except OSError:
            pass
    raise LibraryNotFound(
        "lib%s.so not found: set SHADOW_LIB_DIR to the directory holding it (a build tree's "
        "lib/), build this checkout (make build or make release), or install ShadowServe; "
        "looked in %s and the system loader's path"
        % (stem, ", ".join(sum(_candidate_dirs(client), []))))


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------

_P = POINTER
c_size_t_p = _P(c_size_t)
c_uint32_p = _P(c_uint32)
c_uint64_p = _P(c_uint64)

# The marker "status" means: returns 0 or a negative code (or a count when positive).
STATUS = "status"

# libshadow.so: the subset the bindings use.
SHADOW_FUNCTIONS = [
    ("shadow_version", [], c_char_p, None),
    ("shadow_strerror", [c_int], c_char_p, None),
    ("shadow_chunk_status_name", [c_int], c_char_p, None),
    ("shadow_log_set_level", [c_int], None, None),
    ("shadow_log_get_level", [], c_int, None),
    ("shadow_now_ns", [], c_uint64, None),
    ("shadow_dtype_nbytes", [c_uint32], c_size_t, None),
    ("shadow_dtype_name", [c_uint32], c_char_p, None),
    ("shadow_geometry_preset", [c_char_p, _P(KVGeometry)], c_int, STATUS),
    ("shadow_geometry_preset_names", [_P(_P(c_char_p)), c_size_t_p], None, None),
    ("shadow_geometry_validate", [_P(KVGeometry)], c_int, STATUS),
    ("shadow_geometry_frame_nbytes", [_P(KVGeometry)], c_uint64, None),
    ("shadow_geometry_token_nbytes", [_P(KVGeometry)], c_uint64, None),
    ("shadow_layout_init", [_P(KVLayout), _P(KVGeometry), c_int, c_uint32, c_uint64, c_uint64],
     c_int, STATUS),
    ("shadow_layout_validate", [_P(KVLayout), _P(KVGeometry)], c_int, STATUS),
    ("shadow_layout_offset", [_P(KVLayout), _P(KVGeometry), c_uint32, c_int, c_uint32,
                              c_uint32, c_uint32], c_int64, STATUS),
    ("shadow_layout_plan_frame", [_P(KVLayout), _P(KVGeometry), c_uint32, c_int, c_void_p,
                                  c_uint32, _P(CopyRun), c_size_t, c_size_t_p], c_int, STATUS),
    ("shadow_layout_stage_offset", [_P(KVLayout), _P(KVGeometry), c_uint32, c_uint32], c_int64,
     STATUS),
    ("shadow_key_namespace", [c_char_p, _P(KVGeometry), c_void_p, c_size_t, _P(ChunkKey)],
     c_int, STATUS),
    ("shadow_key_chain", [c_void_p, c_void_p, c_size_t, c_uint32, c_void_p, c_size_t,
                          c_size_t_p], c_int, STATUS),
    ("shadow_key_format", [c_void_p, c_char_p, c_char_p, c_size_t], c_int, STATUS),
    ("shadow_key_parse", [c_char_p, c_char_p, _P(ChunkKey)], c_int, STATUS),
    ("shadow_codec_options_default", [_P(CodecOptions)], None, None),
    ("shadow_codec_options_parse", [c_char_p, _P(CodecOptions)], c_int, STATUS),
    ("shadow_codec_options_name", [_P(CodecOptions), c_char_p, c_size_t], c_int, STATUS),
    ("shadow_codec_create", [_P(KVGeometry), _P(c_void_p)], c_int, STATUS),
    ("shadow_codec_free", [c_void_p], None, None),
    ("shadow_chunk_encode_bound", [c_void_p, _P(CodecOptions)], c_uint64, None),
    ("shadow_chunk_encode", [c_void_p, _P(CodecOptions), c_void_p, c_uint32, c_void_p,
                             _P(KVLayout), c_void_p, c_void_p, c_size_t, c_size_t_p], c_int,
     STATUS),
    ("shadow_rope_inv_freq", [c_double, c_uint32, c_void_p], c_int, STATUS),
    ("shadow_transform_calibrate", [_P(KVGeometry), c_void_p, _P(KVLayout), c_void_p, c_size_t,
                                    c_void_p, _P(c_void_p)], c_int, STATUS),
    ("shadow_transform_save", [c_void_p, c_void_p, c_size_t, c_size_t_p], c_int, STATUS),
    ("shadow_transform_load", [c_void_p, c_size_t, _P(KVGeometry), _P(c_void_p)], c_int,
     STATUS),
    ("shadow_transform_id", [c_void_p], c_uint64, None),
    ("shadow_transform_free", [c_void_p], None, None),
    ("shadow_codec_set_transform", [c_void_p, c_void_p], c_int, STATUS),
    ("shadow_chunk_parse", [c_void_p, c_size_t, c_void_p, _P(KVGeometry),
                            _P(ChunkViewStruct)], c_int, STATUS),
    ("shadow_chunk_peek", [c_void_p, c_size_t, c_uint32_p, c_uint64_p], c_int, STATUS),
    ("shadow_chunk_frame_info", [_P(ChunkViewStruct), c_uint32, _P(FrameInfoStruct)], c_int,
     STATUS),
    ("shadow_chunk_decode_frame", [c_void_p, _P(ChunkViewStruct), c_uint32, _P(KVLayout),
                                   c_void_p, c_size_t], c_int, STATUS),
    ("shadow_chunk_describe", [c_void_p, c_size_t, c_char_p, c_size_t], c_int, STATUS),
    ("shadow_parse_size", [c_char_p, c_uint64_p], c_int, STATUS),
]

# libshadow_client.so: all of include/shadow/client.h.
CLIENT_FUNCTIONS = [
    ("shadow_client_version", [], c_char_p, None),
    ("shadow_client_strerror", [c_int], c_char_p, None),
    ("shadow_client_chunk_status_name", [c_int], c_char_p, None),
    ("shadow_client_now_ns", [], c_uint64, None),
    ("shadow_client_geometry_preset", [c_char_p, _P(KVGeometry)], c_int, STATUS),
    ("shadow_client_layout_init", [_P(KVLayout), _P(KVGeometry), c_int, c_uint32, c_uint64,
                                   c_uint64], c_int, STATUS),
    ("shadow_client_options_default", [_P(ClientOptions)], None, None),
    ("shadow_client_connect", [c_char_p, _P(ClientOptions), _P(c_void_p)], c_int, STATUS),
    ("shadow_client_close", [c_void_p], None, None),
    ("shadow_client_fd", [c_void_p], c_int, STATUS),
    ("shadow_client_register_kv", [c_void_p, _P(KVGeometry), _P(KVLayout), _P(ClientMemory),
                                   c_uint32_p], c_int, STATUS),
    ("shadow_client_unregister", [c_void_p, c_uint32], c_int, STATUS),
    ("shadow_client_namespace", [c_void_p, c_uint32, c_char_p, c_void_p, c_size_t,
                                 _P(ChunkKey)], c_int, STATUS),
    ("shadow_client_chunk_keys", [c_void_p, c_uint32, c_void_p, c_void_p, c_size_t, c_void_p,
                                  c_size_t, c_size_t_p], c_int, STATUS),
    ("shadow_client_lookup", [c_void_p, _P(ClientRequest), c_uint64_p], c_int, STATUS),
    ("shadow_client_fetch", [c_void_p, _P(ClientRequest), c_uint64_p], c_int, STATUS),
    ("shadow_client_save", [c_void_p, _P(ClientRequest), c_uint64_p], c_int, STATUS),
    ("shadow_client_cancel", [c_void_p, c_uint64], c_int, STATUS),
    ("shadow_client_poll", [c_void_p, _P(ClientCompletion), c_int], c_int, STATUS),
    ("shadow_client_wait", [c_void_p, c_int], c_int, STATUS),
    ("shadow_client_stats", [c_void_p, _P(ClientStats)], c_int, STATUS),
]

def _make_errcheck(strerror_fn):
    def errcheck(result, func, args):
        if result < 0:
            raise ShadowError(result, strerror_fn(result).decode("utf-8", "replace"),
                              func.__name__)
        return result
    return errcheck


def _missing(name, path):
    def missing(*args, **kwargs):
        raise LibraryNotFound("%s has no function %s: it is older than these bindings "
                              "(rebuild it, or point SHADOW_LIB_DIR at a current build)"
                              % (path, name))
    missing.__name__ = name
    return missing


def register_functions(lib, table, strerror_name, path="the library"):
    """Set argtypes, restype and errcheck of every function of `table` on `lib`. A function
    the library lacks (an older build) raises LibraryNotFound when called, not before."""
    strerror_fn = getattr(lib, strerror_name)
    strerror_fn.argtypes = [c_int]
    strerror_fn.restype = c_char_p
    errcheck = _make_errcheck(strerror_fn)
    for name, argtypes, restype, check in table:
        try:
            fn = getattr(lib, name)
        except AttributeError:
            setattr(lib, name, _missing(name, path))
            continue
        fn.argtypes = argtypes
        fn.restype = restype
        if check is STATUS:
            fn.errcheck = errcheck
    return lib


_lock = threading.Lock()
_loaded = {}


def _load(stem, table, strerror_name):
    lib = _loaded.get(stem)
    if lib is not None:
        return lib
    with _lock:
        lib = _loaded.get(stem)
        if lib is None:
            path = find_library(stem)
            lib = register_functions(ctypes.CDLL(path), table, strerror_name, path)
            lib._shadow_path = path
            _loaded[stem] = lib
    return lib


def shadow():
    """libshadow.so, loaded and registered (raises LibraryNotFound)."""
    return _load("shadow", SHADOW_FUNCTIONS, "shadow_strerror")


def client():
    """libshadow_client.so, loaded and registered (raises LibraryNotFound)."""
    return _load("shadow_client", CLIENT_FUNCTIONS, "shadow_client_strerror")


def any_lib():
    """(lib, prefix): the client library with "shadow_client_" where it is found, else
    libshadow with "shadow_" (for the few functions both export)."""
    try:
        return client(), "shadow_client_"
    except LibraryNotFound:
        return shadow(), "shadow_"


def strerror(code):
    """Text for a status code, from whichever library is available."""
    try:
        lib, prefix = any_lib()
    except LibraryNotFound:
        return "error %d" % code
    return getattr(lib, prefix + "strerror")(code).decode("utf-8", "replace")
