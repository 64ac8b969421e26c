"""The interception library as restoreprof's own process uses it: the one Python module that
binds it (its engine, staging pool, checksums and snapshot preload).

The engine lives in C (shim/engine.c): chunked copies through a pinned staging pool, several
threads and streams. Loaded here without LD_PRELOAD, the library interposes nothing and starts
no control channel. Every setting reaches it per call, in EngineParams (struct
rp_engine_params in shim.h): nothing here reads the environment, so what the command resolved
is what the engine uses.

    warm_staging(cfg)               # pin the staging pool now (restoreprof warm)
    staging_ranges()                # [[base, bytes], ...] of the pinned staging buffers
    preload(snapshot_fd, cfg, ...)  # via optimizer.preload
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.system.paths import shim_library_path

MAX_PRELOAD_ALLOCATIONS = 1 << 16


class EngineParams(ctypes.Structure):  # struct rp_engine_params in shim/shim.h
    _fields_ = [("streams", ctypes.c_int), ("threads", ctypes.c_int),
                ("chunk_bytes", ctypes.c_size_t), ("pinned", ctypes.c_int)]

    @classmethod
    def of(cls, cfg: OptimizerConfig) -> EngineParams:
        return cls(cfg.streams, cfg.threads, cfg.chunk_bytes, int(cfg.pinned))


class Preloaded(ctypes.Structure):  # struct rp_preloaded in shim/preload.c
    _fields_ = [("address", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("reserved", ctypes.c_uint64), ("device", ctypes.c_int32),
                ("fd", ctypes.c_int32), ("handle", ctypes.c_uint64), ("local", ctypes.c_uint64),
                ("uuid", ctypes.c_uint8 * 16),
                ("app_handle", ctypes.c_uint64)]  # the application's handle; 0: an address


_PROTOTYPES: dict[str, tuple[object, list]] = {
    "rp_crc32c": (ctypes.c_uint32, [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]),
    "rp_engine_warm": (ctypes.c_int, [ctypes.POINTER(EngineParams)]),
    "rp_engine_release": (None, []),
    "rp_engine_staging": (ctypes.c_long, [ctypes.POINTER(ctypes.c_uint64), ctypes.c_long,
                                          ctypes.POINTER(ctypes.c_size_t)]),
    "rp_snapshot_preload": (ctypes.c_long, [ctypes.c_char_p, ctypes.POINTER(EngineParams),
                                            ctypes.POINTER(Preloaded), ctypes.c_long,
                                            ctypes.c_char_p, ctypes.c_size_t]),
    "rp_snapshot_preload_fd": (ctypes.c_long, [ctypes.c_int, ctypes.POINTER(EngineParams),
                                               ctypes.POINTER(Preloaded), ctypes.c_long,
                                               ctypes.c_char_p, ctypes.c_size_t]),
    "rp_preloaded_release": (None, [ctypes.POINTER(Preloaded), ctypes.c_long]),
    "rp_blake3": (None, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]),
    "rp_blake3_chunk_name": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]),
    "rp_blake3_file": (ctypes.c_int, [ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                      ctypes.c_char_p]),
}


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The built interception library, every entry point restoreprof calls declared."""
    path = shim_library_path()
    if not path.exists():
        raise RestoreprofError(f"the engine's native library is not built ({path})",
                               hint="run ./scripts/setup.sh (it needs gcc and cuda.h)")
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def warm_staging(cfg: OptimizerConfig) -> None:
    """Make the whole staging pool for transfers with cfg's settings, on the caller's current
    context; the first transfer with the same settings then finds it and keeps it."""
    rc = library().rp_engine_warm(ctypes.byref(EngineParams.of(cfg)))
    if rc != 0:
        raise RestoreprofError(f"the engine's staging pool could not be made (CUDA error {rc})",
                               hint="run 'restoreprof warm --no-staging' to hold contexts only")


def release_staging() -> None:
    library().rp_engine_release()


def staging_ranges() -> list[list[int]]:
    """[base, bytes] of each pinned staging buffer the engine holds in this process."""
    bases = (ctypes.c_uint64 * 1024)()
    slot = ctypes.c_size_t()
    n = library().rp_engine_staging(bases, len(bases), ctypes.byref(slot))
    return [[bases[i], slot.value] for i in range(n)]


def blake3(data: bytes) -> str:
    """BLAKE3-256 (hex) with the library's own code, the one that names snapshot chunks (the
    GIL is released while it hashes)."""
    out = ctypes.create_string_buffer(32)
    library().rp_blake3(data, len(data), out)
    return out.raw.hex()


def chunk_name(data: bytes) -> str:
    """The name a snapshot chunk with these contents has (hex): the BLAKE3-256 of the
    BLAKE3-256 of each MiB of it (shim/chunks.c: rp_chunk_name)."""
    out = ctypes.create_string_buffer(32)
    if library().rp_blake3_chunk_name(data, len(data), out) != 0:
        raise MemoryError("out of memory hashing a chunk")
    return out.raw.hex()


def crc32c(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """crc32c as the engine computes it for snapshot chunks."""
    view = memoryview(data).cast("B")
    buffer = (ctypes.c_char * view.nbytes).from_buffer_copy(view) if view.readonly else \
        (ctypes.c_char * view.nbytes).from_buffer(view)
    return library().rp_crc32c(seed, ctypes.addressof(buffer), view.nbytes)
