"""The CUDA functions the profiler probes, and where each keeps the arguments that matter.

Argument positions are 0-based indexes into the six argument registers that the entry
probe saves. ``out_arg`` names a pointer argument through which the call returns a value
(an allocation's address), read by the return probe.

The driver exports per-thread-default-stream variants (``_ptds`` for synchronous calls,
``_ptsz`` for calls that take a stream) that cudart calls when built with
``--default-stream per-thread``; they are probed like their plain names.
"""

from __future__ import annotations

from dataclasses import dataclass

DRIVER, RUNTIME = "driver", "runtime"

# Roles: what a call means to the analysis.
COPY = "copy"
ALLOC = "alloc"                   # device memory
FREE = "free"
HOST_ALLOC = "host_alloc"         # pinned host memory allocated by CUDA
HOST_REGISTER = "host_register"   # host memory pinned in place
HOST_UNREGISTER = "host_unregister"
HOST_FREE = "host_free"
VMM_CREATE = "vmm_create"
VMM_MAP = "vmm_map"
VMM_UNMAP = "vmm_unmap"
VMM_RESERVE = "vmm_reserve"
VMM_RELEASE = "vmm_release"
SYNC_STREAM = "sync_stream"
SYNC_CONTEXT = "sync_context"
SYNC_EVENT = "sync_event"
EVENT_RECORD = "event_record"
INIT = "init"
CONTEXT = "context"
CHECKPOINT = "checkpoint"

# Direction sources other than a fixed direction
FROM_POINTERS = "pointers"   # generic cuMemcpy: decoded from the allocations seen
FROM_KIND = "kind"           # cudaMemcpyKind argument
FROM_TYPES = "types"         # CUDA_MEMCPY2D memory types

# cudaMemcpyKind: HostToHost=0, HostToDevice=1, DeviceToHost=2, DeviceToDevice=3, Default=4
MEMCPY_KIND_DIRECTIONS = {0: "htoh", 1: "htod", 2: "dtoh", 3: "dtod"}
# CUmemorytype: HOST=1, DEVICE=2, ARRAY=3, UNIFIED=4
HOST_MEMORY_TYPE = 1


@dataclass(frozen=True, slots=True)
class CudaFunction:
    symbol: str
    layer: str
    role: str
    direction: str = ""
    dst: int = -1
    src: int = -1
    size: int = -1
    size_times: int = -1   # a second size argument to multiply by (cuMemAllocPitch height)
    stream: int = -1
    kind: int = -1
    ptr: int = -1          # the address argument of free, register, map, unmap
    out_arg: int = -1
    is_async: bool = False
    args: str = ""         # "copy2d": arguments come from a CUDA_MEMCPY2D
    per_thread: str = ""   # suffix of the per-thread-default-stream variant, if any


def _copy(symbol: str, direction: str, *, layer: str = DRIVER, size: int = 2,
          stream: int = -1, kind: int = -1, dst: int = 0, src: int = 1) -> CudaFunction:
    return CudaFunction(symbol, layer, COPY, direction, dst=dst, src=src, size=size,
                        stream=stream, kind=kind, is_async=stream >= 0,
                        per_thread="_ptsz" if stream >= 0 else "_ptds")


_BASE = (
    # Driver copies
    _copy("cuMemcpy", FROM_POINTERS),
    _copy("cuMemcpyAsync", FROM_POINTERS, stream=3),
    _copy("cuMemcpyHtoD_v2", "htod"),
    _copy("cuMemcpyDtoH_v2", "dtoh"),
    _copy("cuMemcpyDtoD_v2", "dtod"),
    _copy("cuMemcpyHtoDAsync_v2", "htod", stream=3),
    _copy("cuMemcpyDtoHAsync_v2", "dtoh", stream=3),
    _copy("cuMemcpyDtoDAsync_v2", "dtod", stream=3),
    _copy("cuMemcpyPeer", "dtod", size=4, dst=0, src=2),
    _copy("cuMemcpyPeerAsync", "dtod", size=4, dst=0, src=2, stream=5),
    CudaFunction("cuMemcpy2D_v2", DRIVER, COPY, FROM_TYPES, dst=0, src=1, size=2, kind=4,
                 args="copy2d", per_thread="_ptds"),
    CudaFunction("cuMemcpy2DAsync_v2", DRIVER, COPY, FROM_TYPES, dst=0, src=1, size=2,
                 kind=4, stream=3, is_async=True, args="copy2d", per_thread="_ptsz"),
    # Driver memory
    CudaFunction("cuMemAlloc_v2", DRIVER, ALLOC, size=1, out_arg=0),
    CudaFunction("cuMemAllocManaged", DRIVER, ALLOC, size=1, out_arg=0),
    CudaFunction("cuMemAllocPitch_v2", DRIVER, ALLOC, size=2, size_times=3, out_arg=0),
    CudaFunction("cuMemAllocAsync", DRIVER, ALLOC, size=1, stream=2, out_arg=0,
                 per_thread="_ptsz"),
    CudaFunction("cuMemFree_v2", DRIVER, FREE, ptr=0),
    CudaFunction("cuMemFreeAsync", DRIVER, FREE, ptr=0, stream=1, per_thread="_ptsz"),
    CudaFunction("cuMemAllocHost_v2", DRIVER, HOST_ALLOC, size=1, out_arg=0),
    CudaFunction("cuMemHostAlloc", DRIVER, HOST_ALLOC, size=1, out_arg=0),
    CudaFunction("cuMemHostRegister_v2", DRIVER, HOST_REGISTER, ptr=0, size=1),
    CudaFunction("cuMemHostRegister", DRIVER, HOST_REGISTER, ptr=0, size=1),
    CudaFunction("cuMemHostUnregister", DRIVER, HOST_UNREGISTER, ptr=0),
    CudaFunction("cuMemFreeHost", DRIVER, HOST_FREE, ptr=0),
    CudaFunction("cuMemAddressReserve", DRIVER, VMM_RESERVE, size=1, out_arg=0),
    CudaFunction("cuMemCreate", DRIVER, VMM_CREATE, size=1, out_arg=0),
    CudaFunction("cuMemRelease", DRIVER, VMM_RELEASE),
    CudaFunction("cuMemMap", DRIVER, VMM_MAP, ptr=0, size=1),
    CudaFunction("cuMemUnmap", DRIVER, VMM_UNMAP, ptr=0, size=1),
    # Driver synchronization
    CudaFunction("cuStreamSynchronize", DRIVER, SYNC_STREAM, stream=0, per_thread="_ptsz"),
    CudaFunction("cuCtxSynchronize", DRIVER, SYNC_CONTEXT),
    CudaFunction("cuEventSynchronize", DRIVER, SYNC_EVENT, ptr=0),
    CudaFunction("cuEventRecord", DRIVER, EVENT_RECORD, ptr=0, stream=1, per_thread="_ptsz"),
    # Driver setup and checkpoint
    CudaFunction("cuInit", DRIVER, INIT),
    CudaFunction("cuCtxCreate_v2", DRIVER, CONTEXT, out_arg=0),
    CudaFunction("cuCtxCreate_v3", DRIVER, CONTEXT, out_arg=0),
    CudaFunction("cuCtxCreate_v4", DRIVER, CONTEXT, out_arg=0),
    CudaFunction("cuDevicePrimaryCtxRetain", DRIVER, CONTEXT, out_arg=0),
    CudaFunction("cuCheckpointProcessLock", DRIVER, CHECKPOINT, ptr=0),
    CudaFunction("cuCheckpointProcessCheckpoint", DRIVER, CHECKPOINT, ptr=0),
    CudaFunction("cuCheckpointProcessRestore", DRIVER, CHECKPOINT, ptr=0),
    CudaFunction("cuCheckpointProcessUnlock", DRIVER, CHECKPOINT, ptr=0),
    CudaFunction("cuCheckpointProcessGetState", DRIVER, CHECKPOINT, ptr=0),
    CudaFunction("cuCheckpointProcessGetRestoreThreadId", DRIVER, CHECKPOINT, ptr=0),
    # Runtime
    _copy("cudaMemcpy", FROM_KIND, layer=RUNTIME, kind=3),
    _copy("cudaMemcpyAsync", FROM_KIND, layer=RUNTIME, kind=3, stream=4),
    CudaFunction("cudaMalloc", RUNTIME, ALLOC, size=1, out_arg=0),
    CudaFunction("cudaFree", RUNTIME, FREE, ptr=0),
    CudaFunction("cudaMallocHost", RUNTIME, HOST_ALLOC, size=1, out_arg=0),
    CudaFunction("cudaHostAlloc", RUNTIME, HOST_ALLOC, size=1, out_arg=0),
    CudaFunction("cudaFreeHost", RUNTIME, HOST_FREE, ptr=0),
    CudaFunction("cudaHostRegister", RUNTIME, HOST_REGISTER, ptr=0, size=1),
    CudaFunction("cudaHostUnregister", RUNTIME, HOST_UNREGISTER, ptr=0),
    CudaFunction("cudaDeviceSynchronize", RUNTIME, SYNC_CONTEXT),
    CudaFunction("cudaStreamSynchronize", RUNTIME, SYNC_STREAM, stream=0, per_thread="_ptsz"),
    CudaFunction("cudaEventSynchronize", RUNTIME, SYNC_EVENT, ptr=0),
    CudaFunction("cudaEventRecord", RUNTIME, EVENT_RECORD, ptr=0, stream=1,
                 per_thread="_ptsz"),
)


def _with_variants(base: tuple[CudaFunction, ...]) -> tuple[CudaFunction, ...]:
    out = []
    for function in base:
        out.append(function)
        if function.per_thread:
            fields = {f: getattr(function, f) for f in CudaFunction.__slots__}
            fields["symbol"] = function.symbol + function.per_thread
            fields["per_thread"] = ""
            out.append(CudaFunction(**fields))
    return tuple(out)


FUNCTIONS: tuple[CudaFunction, ...] = _with_variants(_BASE)
BY_SYMBOL: dict[str, int] = {f.symbol: i for i, f in enumerate(FUNCTIONS)}
SYMBOLS: frozenset[str] = frozenset(BY_SYMBOL)
