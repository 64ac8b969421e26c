"""restoreprof's start-up hook, run by Python in a program started with `restoreprof exec`.

`restoreprof exec` puts this folder first on PYTHONPATH, so Python imports this module at
start-up (as it would any sitecustomize); it then runs the sitecustomize that would otherwise
have run, and takes its folder off sys.path again.

It registers a release hook with restoreprof's interception library (shim/release.c): before the
library offloads the process's GPU memory for a checkpoint, it calls the hook (from a thread of
its own; ctypes takes the GIL), which frees the cached free blocks of the frameworks already in
use, as torch.cuda.empty_cache() would, and reports the free blocks PyTorch keeps inside segments
that still hold live tensors (report_free_blocks): freed memory is then not saved. The program
is not changed otherwise. RESTOREPROF_RELEASE_CACHES=0 switches it off.

Self-contained: this runs with the program's Python, where restoreprof may not be installed.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int)
_registered = None  # the ctypes callback object: kept alive while the library may call it
_warned = False


def release_torch(torch) -> None:
    """PyTorch's caching allocator (any backend): wait for the devices it uses, then free its
    cached blocks, then report the free blocks left inside segments that also hold live
    tensors (report_free_blocks). Only once CUDA is initialised: never create a context here."""
    if not torch.cuda.is_initialized():
        return
    try:
        used = [d for d in range(torch.cuda.device_count()) if torch.cuda.memory_reserved(d)]
    except Exception:  # an allocator backend without statistics: this thread's device
        used = [torch.cuda.current_device()]
    for device in used:  # never one the program did not use: that would create a context
        with torch.cuda.device(device):
            torch.cuda.synchronize()
    torch.cuda.empty_cache()
    report_free_blocks(lambda: torch_free_blocks(torch))


# Smaller free blocks cannot hold a whole chunk (1 MiB at the least): not worth reporting.
MIN_FREE_BLOCK = 1 << 20


def torch_free_blocks(torch) -> list[tuple[int, int]]:
    """(address, size) of every free block PyTorch's native caching allocator keeps inside
    segments of its default pools. A CUDA graph's private pool is left out (its replays use its
    free blocks as scratch), and so is a block freed but still awaiting another stream's work."""
    blocks = []
    for segment in torch.cuda.memory_snapshot():
        if tuple(segment.get("segment_pool_id") or (0, 0)) != (0, 0):
            continue
        address = segment["address"]
        for block in segment["blocks"]:
            if block["state"] == "inactive" and block["size"] >= MIN_FREE_BLOCK:
                blocks.append((block.get("address", address), block["size"]))
            address += block["size"]
    return blocks


def report_free_blocks(read_blocks) -> bool:
    """Tell the library which blocks the allocator holds free (read_blocks() reads them): it
    saves them as zeros instead of copying them, but only if no GPU call passed its gate since
    the stamp taken here first (shim/release.c); so nothing the program allocated after this
    reading can be lost. False where the library or the allocator's view is not there."""
    try:
        process = ctypes.CDLL(None)
        begin, note = process.rp_free_ranges_begin, process.rp_free_ranges_note
    except (OSError, AttributeError):
        return False
    begin.restype = ctypes.c_uint64
    note.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    note.restype = ctypes.c_int
    stamp = begin()
    try:
        blocks = read_blocks()
    except Exception:  # e.g. the cudaMallocAsync backend has no snapshot: nothing to report
        return False
    flat = (ctypes.c_uint64 * (2 * len(blocks)))(*(v for block in blocks for v in block))
    return note(stamp, flat, len(blocks)) == 0


def release_cupy(cupy) -> None:
    """CuPy's memory pools: their free blocks (device and pinned host) back to the driver.
    free_all_blocks() works on the current device: this thread's, device 0 unless set."""
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()


def release_caches() -> int:
    """The release hook: 0 when every framework present gave its cached blocks back."""
    global _warned
    failed = 0
    for name, release in (("torch", release_torch), ("cupy", release_cupy)):
        module = sys.modules.get(name)
        if module is None:
            continue
        try:
            release(module)
        except Exception as exc:  # the checkpoint goes on; the cached blocks are saved too
            failed = 1
            if not _warned:
                _warned = True
                print(f"restoreprof: could not free {name}'s cached GPU blocks before the "
                      f"checkpoint ({exc}); they are saved with the rest", file=sys.stderr)
    return failed


def _library():
    """restoreprof's interception library when it is loaded in this process, else None."""
    try:
        process = ctypes.CDLL(None)
        register = process.rp_register_before_offload
        unregister = process.rp_unregister_before_offload
    except (OSError, AttributeError):
        return None
    register.argtypes = unregister.argtypes = [_CALLBACK]
    register.restype = unregister.restype = ctypes.c_int
    return register, unregister


def register(hook=release_caches) -> bool:
    """Register hook with the library (once); False where the library is not loaded."""
    global _registered
    functions = _library()
    if functions is None or _registered is not None:
        return _registered is not None
    register_fn, unregister_fn = functions
    callback = _CALLBACK(hook)
    if register_fn(callback) != 0:
        return False
    _registered = callback
    # A callback into a finalised interpreter would crash: unhook before Python ends.
    atexit.register(unregister_fn, callback)
    return True


def _chain() -> None:
    """Run the sitecustomize that this one stands in front of, if there is one."""
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path[:] = rest
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_restoreprof_sitecustomize"] = sys.modules.get(__name__)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    if os.environ.get("RESTOREPROF_RELEASE_CACHES", "1").strip() not in ("0", "false", "no"):
        register()
    _chain()
