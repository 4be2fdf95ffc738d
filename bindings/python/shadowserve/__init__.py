"""shadowserve: Python bindings of ShadowServe (ctypes, no compiled extension).

  shadowserve.client  Client, HostMemory, Region, Completion: the engine's control plane over
                      libshadow_client.so (talks to shadowd; never touches KV bytes itself)
  shadowserve.codec   keys, the chunk container, Codec: libshadow.so in-process
  shadowserve.types   ctypes mirrors of the C structs, constants, geometry/layout helpers

Each library is loaded on first use (see shadowserve._lib for where it is looked for:
$SHADOW_LIB_DIR first). Errors from the C libraries raise ShadowError, whose .code is the
negative status and whose message is the library's shadow_strerror() text.
"""
from . import codec, types  # noqa: F401
from ._lib import LibraryNotFound, ShadowError  # noqa: F401
from .client import (Client, Completion, HostMemory, Region, cuda_ipc_handle,  # noqa: F401
                     now_ns)
from .codec import ChunkView, Codec, FrameInfo, Transform  # noqa: F401
from .types import *  # noqa: F401,F403
from .types import __all__ as _types_all

__version__ = "0.1.0"

__all__ = ["ShadowError", "LibraryNotFound", "Client", "Completion", "HostMemory", "Region",
           "cuda_ipc_handle", "now_ns", "ChunkView", "Codec", "FrameInfo", "Transform", "codec",
           "types"] + list(_types_all)
