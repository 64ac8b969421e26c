"""The CUDA driver API as restoreprof's Python uses it: the one module that reaches libcuda.

Over cuda-python's ``cuda.bindings.driver``, not ctypes: the checkpoint API takes argument
structs (lock, restore with GPU pairs, ...) that NVIDIA's own bindings define and version with
the driver's headers, where ctypes would need hand-copied layouts that no test could check
against a real driver here. What ctypes gave the old Python engine no longer matters: the
copies run in C (optimizer/engine.py binds the engine), so Python makes a handful of calls per
restore (cuInit, contexts, the checkpoint API), each of which cuda-python makes without the
GIL. The library loaded is the one restoreprof.system.paths resolves (RESTOREPROF_LIBCUDA
included, the test double in tests), loaded first under its soname so that cuda-python's own
dlopen finds it, and so do the interception library's calls in this process.

Every call is checked; a failure raises CudaError naming the call and the driver's error.
Without a driver (no GPU machine) the first call raises NoDriverError, which says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy costs 50 ms to import, and only the copy helpers' callers use it
    import numpy as np

from restoreprof.errors import EXIT_ENVIRONMENT, EXIT_TARGET, RestoreprofError

_init_lock = threading.Lock()
_initialized = False


class NoDriverError(RestoreprofError):
    exit_code = EXIT_ENVIRONMENT

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"no CUDA driver on this machine ({detail})",
            hint="GPU features need an NVIDIA GPU and driver; CPU-only checkpoint/restore still works",
        )


class CudaError(RestoreprofError):
    exit_code = EXIT_TARGET

    def __init__(self, call: str, code: Any) -> None:
        self.call = call
        self.code = code
        name = getattr(code, "name", str(code))
        super().__init__(f"{call} failed: {name}", hint=_HINTS.get(name, "see restoreprof doctor"))


_HINTS = {
    "CUDA_ERROR_NOT_SUPPORTED": "this driver or process does not support it (driver >= 550 needed)",
    "CUDA_ERROR_ILLEGAL_STATE": "the process is not in the CUDA state this step needs",
    "CUDA_ERROR_NOT_FOUND": "the PID is not a CUDA process (or the driver does not see it)",
    "CUDA_ERROR_INVALID_VALUE": "a bad argument (PID, GPU map) was passed to the driver",
    "CUDA_ERROR_TIMEOUT": "the process did not reach a lockable point in time; raise --lock-timeout",
    "CUDA_ERROR_NO_DEVICE": "no visible GPU: check CUDA_VISIBLE_DEVICES and nvidia-smi",
}


@lru_cache(maxsize=1)
def bindings() -> Any:
    # Load the driver restoreprof resolved (RESTOREPROF_LIBCUDA included) under its soname
    # first, so cuda-python's dlopen("libcuda.so.1") gets that one and not another.
    from restoreprof.system.paths import libcuda_path

    path = libcuda_path()
    if path:
        with contextlib.suppress(OSError):  # cuda-python's own search reports the problem
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise RestoreprofError(
            "cuda-python is not installed", hint="run ./scripts/setup.sh (pip install cuda-python)"
        ) from exc
    return driver


def check(call: str, result: tuple) -> Any:
    """Unpack cuda-python's (CUresult, value...) tuples, raising CudaError on failure."""
    code, *values = result
    if int(code) != 0:
        raise CudaError(call, code)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def init() -> None:
    global _initialized
    with _init_lock:
        if _initialized:
            return
        cu = bindings()
        try:
            result = cu.cuInit(0)
        except Exception as exc:  # cuda.pathfinder raises when libcuda cannot be found
            raise NoDriverError(str(exc).splitlines()[0]) from exc
        check("cuInit", result)
        _initialized = True


def has_entry_point(name: str) -> bool:
    """Whether the resolved driver exports name (a newer driver's function), without calling it;
    False where there is no driver, OSError where it cannot be loaded."""
    from restoreprof.system.paths import libcuda_path

    path = libcuda_path()
    return bool(path) and hasattr(ctypes.CDLL(path), name)


def available() -> bool:
    try:
        init()
        return device_count() > 0
    except RestoreprofError:
        return False


def driver_version() -> int:
    init()
    return check("cuDriverGetVersion", bindings().cuDriverGetVersion())


def device_count() -> int:
    init()
    return check("cuDeviceGetCount", bindings().cuDeviceGetCount())


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str  # "GPU-xxxxxxxx-xxxx-..." as nvidia-smi prints it

    @property
    def uuid_bytes(self) -> bytes:
        return uuid_to_bytes(self.uuid)


def uuid_to_bytes(uuid: str) -> bytes:
    return bytes.fromhex(uuid.removeprefix("GPU-").replace("-", ""))


def _format_uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def gpus() -> list[Gpu]:
    cu = bindings()
    found = []
    for index in range(device_count()):
        dev = check("cuDeviceGet", cu.cuDeviceGet(index))
        name = check("cuDeviceGetName", cu.cuDeviceGetName(128, dev)).split(b"\0")[0].decode()
        uuid = check("cuDeviceGetUuid", cu.cuDeviceGetUuid(dev))
        found.append(Gpu(index, name, _format_uuid(bytes(uuid.bytes))))
    return found


def primary_context(index: int = 0) -> Any:
    """Retain device index's primary context and make it current on this thread."""
    init()
    cu = bindings()
    dev = check("cuDeviceGet", cu.cuDeviceGet(index))
    ctx = check("cuDevicePrimaryCtxRetain", cu.cuDevicePrimaryCtxRetain(dev))
    check("cuCtxSetCurrent", cu.cuCtxSetCurrent(ctx))
    return ctx


def primary_context_release(index: int) -> None:
    """Drop one reference to device index's primary context (taken by primary_context)."""
    cu = bindings()
    dev = check("cuDeviceGet", cu.cuDeviceGet(index))
    check("cuDevicePrimaryCtxRelease", cu.cuDevicePrimaryCtxRelease(dev))


def set_current(ctx: Any) -> None:
    """Make ctx current on this thread (the engine works on the caller's current context)."""
    check("cuCtxSetCurrent", bindings().cuCtxSetCurrent(ctx))


def pointer_device(pointer: int) -> int:
    """The ordinal of the GPU that device memory at pointer is on now (after a restore onto
    other GPUs, the new one)."""
    cu = bindings()
    attribute = cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    return int(check("cuPointerGetAttribute", cu.cuPointerGetAttribute(attribute, pointer)))


def mem_alloc(nbytes: int) -> int:
    return int(check("cuMemAlloc", bindings().cuMemAlloc(nbytes)))


def mem_free(pointer: int) -> None:
    check("cuMemFree", bindings().cuMemFree(pointer))


def copy_htod(device_pointer: int, host: np.ndarray) -> None:
    check("cuMemcpyHtoD", bindings().cuMemcpyHtoD(device_pointer, host.ctypes.data, host.nbytes))


def copy_dtoh(host: np.ndarray, device_pointer: int) -> None:
    check("cuMemcpyDtoH", bindings().cuMemcpyDtoH(host.ctypes.data, device_pointer, host.nbytes))


# --- the driver's process checkpoint API ---------------------------------------------------------


def process_state(pid: int) -> str | None:
    """'running', 'locked', 'checkpointed', 'failed', ... or None when pid is not a CUDA process."""
    init()
    cu = bindings()
    code, state = cu.cuCheckpointProcessGetState(pid)
    if int(code) != 0:
        return None
    return state.name.removeprefix("CU_PROCESS_STATE_").lower()


def restore_thread_id(pid: int) -> int | None:
    """The thread of pid on which the driver restores its GPU state; None when the driver names
    none (not a CUDA process, or a driver without the call)."""
    cu = bindings()
    call = getattr(cu, "cuCheckpointProcessGetRestoreThreadId", None)
    if call is None:
        return None
    code, tid = call(pid)
    return int(tid) if int(code) == 0 and int(tid) > 0 else None


def process_lock(pid: int, timeout_ms: int) -> None:
    cu = bindings()
    args = cu.CUcheckpointLockArgs()
    args.timeoutMs = timeout_ms
    check(f"cuCheckpointProcessLock(pid={pid})", cu.cuCheckpointProcessLock(pid, args))


def process_checkpoint(pid: int) -> None:
    cu = bindings()
    check(
        f"cuCheckpointProcessCheckpoint(pid={pid})",
        cu.cuCheckpointProcessCheckpoint(pid, cu.CUcheckpointCheckpointArgs()),
    )


def process_restore(pid: int, gpu_pairs: list[tuple[bytes, bytes]] | None = None) -> None:
    """Restore pid's GPU state; gpu_pairs maps old GPU UUID bytes to new ones."""
    cu = bindings()
    args = cu.CUcheckpointRestoreArgs()
    if gpu_pairs:
        pairs = []
        for old, new in gpu_pairs:
            pair = cu.CUcheckpointGpuPair()
            pair.oldUuid = _cu_uuid(old)
            pair.newUuid = _cu_uuid(new)
            pairs.append(pair)
        args.gpuPairs = pairs
        args.gpuPairsCount = len(pairs)
    check(f"cuCheckpointProcessRestore(pid={pid})", cu.cuCheckpointProcessRestore(pid, args))


def process_unlock(pid: int) -> None:
    cu = bindings()
    check(
        f"cuCheckpointProcessUnlock(pid={pid})",
        cu.cuCheckpointProcessUnlock(pid, cu.CUcheckpointUnlockArgs()),
    )


def _cu_uuid(raw: bytes) -> Any:
    """A CUuuid holding raw (its bytes field is read-only: build it over a buffer; the struct
    it is assigned into takes a copy)."""
    buffer = (ctypes.c_char * 16).from_buffer_copy(raw)
    return bindings().CUuuid(ctypes.addressof(buffer))
