"""A process holding GPU memory it manages itself: VMM (cuMemCreate + cuMemMap) and stream-ordered
allocations (cuMemAllocAsync, a memory pool), filled with distinctive data; it verifies them.

    python -m restoreprof.workloads.app_memory --state DIR [--unit-mib 2] [--export]

The layout, in units of U MiB (rounded to the allocation granularity):

- VMM: handles H1 (2U), H2 (1U), H3 (3U), H4 (1U). Reservation R1 (6U) maps H1 at 0, H2 at
  2U, and H3's second and third units (offset 1U) at 3U, read/write; R2 (2U) maps H1 a second
  time, read-only; H4 is written through R3 and unmapped again (its bytes live only in the
  physical memory). H2's handle is released after mapping (the mapping keeps it alive).
- stream-ordered, on a stream of its own: A1 (1.5U + 123 bytes) and A4 (1U, freed again) from
  the device's default pool, A2 (64 KiB: the driver's own pool), A3 (2U + 7) from a pool it
  creates.

It speaks hold_memory's protocol (DIR/ready, SIGUSR1 -> DIR/verified). Verifying also checks that
every handle the program holds still works: the properties of H1 and H3, a retain of H2 by
address (the same handle value) and its release, the access of R1 and R2, and that H1 is one
memory seen twice (a byte written through R1 is read through R2). SIGUSR2 tears everything
down (unmap, release, free, destroy the pool) and writes "OK" or the failure to DIR/teardown.
--export exports H1 as a POSIX file descriptor first (created exportable), which a checkpoint
must refuse.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
from pathlib import Path

import numpy as np

from restoreprof.workloads.hold_memory import _fill, _write_atomic, serve


class CudaFailure(Exception):
    pass


def _ok(result, what: str):
    """cuda-python's (err, value...) tuple: the value(s), or CudaFailure naming the call."""
    err, *rest = result
    if int(err) != 0:
        raise CudaFailure(f"{what}: {err!r}")
    return rest[0] if len(rest) == 1 else rest


class AppMemory:
    def __init__(self, unit_mib: int, export: bool, seed: int) -> None:
        from cuda.bindings import driver as cu

        self.cu = cu
        _ok(cu.cuInit(0), "cuInit")
        self.device = _ok(cu.cuDeviceGet(0), "cuDeviceGet")
        self.context = _ok(cu.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        _ok(cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        prop = self._prop(exportable=False)
        gran = _ok(cu.cuMemGetAllocationGranularity(
            prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM),
            "cuMemGetAllocationGranularity")
        self.u = -(-(unit_mib << 20) // gran) * gran
        u = self.u
        self.h1 = _ok(cu.cuMemCreate(2 * u, self._prop(exportable=export), 0), "cuMemCreate H1")
        self.h2 = _ok(cu.cuMemCreate(u, prop, 0), "cuMemCreate H2")
        self.h3 = _ok(cu.cuMemCreate(3 * u, prop, 0), "cuMemCreate H3")
        self.h4 = _ok(cu.cuMemCreate(u, prop, 0), "cuMemCreate H4")
        self.r1 = int(_ok(cu.cuMemAddressReserve(6 * u, 0, 0, 0), "cuMemAddressReserve R1"))
        self.r2 = int(_ok(cu.cuMemAddressReserve(2 * u, 0, 0, 0), "cuMemAddressReserve R2"))
        self.r3 = int(_ok(cu.cuMemAddressReserve(u, 0, 0, 0), "cuMemAddressReserve R3"))
        rw = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self.maps = [(self.r1, 2 * u, 0, self.h1, rw), (self.r1 + 2 * u, u, 0, self.h2, rw),
                     (self.r1 + 3 * u, 2 * u, u, self.h3, rw),
                     (self.r2, 2 * u, 0, self.h1, cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READ)]
        for i, (va, size, offset, handle, flags) in enumerate(self.maps):
            err, = cu.cuMemMap(int(va), size, offset, handle, 0)
            if offset and err == cu.CUresult.CUDA_ERROR_NOT_SUPPORTED:
                # Drivers so far take only offset 0 (the CUDA docs: "currently must be zero";
                # the fake driver takes any): map all of H3 there instead.
                size, offset = 3 * u, 0
                self.maps[i] = (va, size, offset, handle, flags)
                err, = cu.cuMemMap(int(va), size, offset, handle, 0)
            _ok((err,), f"cuMemMap {int(va):#x}")
            _ok(cu.cuMemSetAccess(int(va), size, [self._access(flags)], 1), "cuMemSetAccess")
        _ok(cu.cuMemRelease(self.h2), "cuMemRelease H2")  # mapped only from here
        rng = np.random.default_rng(seed)
        # H4: written through R3, then unmapped: its bytes live only in the physical memory
        self.h4_data = rng.integers(0, 256, u, dtype=np.uint8)
        self._with_r3(lambda: _ok(cu.cuMemcpyHtoD(int(self.r3), self.h4_data.ctypes.data, u),
                                  "cuMemcpyHtoD R3"))
        self.r1_data = np.empty(5 * u, dtype=np.uint8)
        _fill(self.r1_data, seed + 1)
        _ok(cu.cuMemcpyHtoD(int(self.r1), self.r1_data.ctypes.data, 5 * u), "cuMemcpyHtoD R1")
        self.export_fd = None
        if export:
            self.export_fd = _ok(cu.cuMemExportToShareableHandle(
                self.h1, cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                "cuMemExportToShareableHandle")
            os.close(int(self.export_fd))

        # stream-ordered
        self.stream = _ok(cu.cuStreamCreate(0), "cuStreamCreate")
        props = cu.CUmemPoolProps()
        props.allocType = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        props.handleTypes = cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_NONE
        props.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        props.location.id = 0
        self.pool = _ok(cu.cuMemPoolCreate(props), "cuMemPoolCreate")
        _ok(cu.cuMemPoolSetAttribute(self.pool, cu.CUmemPool_attribute.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                                     cu.cuuint64_t(2**64 - 1)), "cuMemPoolSetAttribute")
        sizes = [u + u // 2 + 123, 64 << 10, 2 * u + 7]
        self.async_ptrs = [
            _ok(cu.cuMemAllocAsync(sizes[0], self.stream), "cuMemAllocAsync A1"),
            _ok(cu.cuMemAllocAsync(sizes[1], self.stream), "cuMemAllocAsync A2"),
            _ok(cu.cuMemAllocFromPoolAsync(sizes[2], self.pool, self.stream),
                "cuMemAllocFromPoolAsync A3"),
        ]
        a4 = _ok(cu.cuMemAllocAsync(u, self.stream), "cuMemAllocAsync A4")
        _ok(cu.cuMemFreeAsync(a4, self.stream), "cuMemFreeAsync A4")  # cached, never saved
        self.async_data = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
        for ptr, data in zip(self.async_ptrs, self.async_data, strict=True):
            _ok(cu.cuMemcpyHtoDAsync(int(ptr), data.ctypes.data, data.nbytes, self.stream),
                "cuMemcpyHtoDAsync")
        _ok(cu.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        self.expected = self._digest(self.r1_data, self.r1_data[: 2 * u], self.h4_data,
                                     *self.async_data)

    def _prop(self, exportable: bool):
        cu = self.cu
        prop = cu.CUmemAllocationProp()
        prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = 0
        if exportable:
            prop.requestedHandleTypes = \
                cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        return prop

    def _access(self, flags):
        desc = self.cu.CUmemAccessDesc()
        desc.location.type = self.cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        desc.location.id = 0
        desc.flags = flags
        return desc

    def _with_r3(self, body) -> None:
        """Maps H4 at R3 for body (read/write), then unmaps it."""
        cu, u = self.cu, self.u
        _ok(cu.cuMemMap(int(self.r3), u, 0, self.h4, 0), "cuMemMap R3")
        _ok(cu.cuMemSetAccess(int(self.r3), u, [self._access(
            cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE)], 1), "cuMemSetAccess R3")
        try:
            body()
        finally:
            _ok(cu.cuMemUnmap(int(self.r3), u), "cuMemUnmap R3")

    def _read(self, ptr, nbytes: int) -> np.ndarray:
        out = np.empty(nbytes, dtype=np.uint8)
        _ok(self.cu.cuMemcpyDtoH(out.ctypes.data, int(ptr), nbytes), f"cuMemcpyDtoH {int(ptr):#x}")
        return out

    @staticmethod
    def _digest(*arrays: np.ndarray) -> str:
        h = hashlib.sha256()
        for a in arrays:
            h.update(memoryview(a))
        return h.hexdigest()

    def digest_now(self) -> str:
        u = self.u
        h4 = []
        self._with_r3(lambda: h4.append(self._read(self.r3, u)))
        return self._digest(self._read(self.r1, 5 * u), self._read(self.r2, 2 * u), h4[0],
                            *(self._read(p, d.nbytes)
                              for p, d in zip(self.async_ptrs, self.async_data, strict=True)))

    def check_handles(self) -> str | None:
        """None when every handle behaves as before, else what differs."""
        cu, u = self.cu, self.u
        for name, handle, exportable in [("H1", self.h1, self.export_fd is not None),
                                         ("H3", self.h3, False)]:
            prop = _ok(cu.cuMemGetAllocationPropertiesFromHandle(handle),
                       f"cuMemGetAllocationPropertiesFromHandle {name}")
            wanted = self._prop(exportable)
            if (int(prop.location.id), int(prop.requestedHandleTypes)) != \
                    (0, int(wanted.requestedHandleTypes)):
                return f"{name}'s properties changed"
        again = _ok(cu.cuMemRetainAllocationHandle(int(self.r1) + 2 * u),
                    "cuMemRetainAllocationHandle R1+2U")
        if int(again) != int(self.h2):
            return f"retain gave handle {int(again):#x}, not H2 {int(self.h2):#x}"
        _ok(cu.cuMemRelease(again), "cuMemRelease (retained H2)")
        location = self.cu.CUmemLocation()
        location.type = self.cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        location.id = 0
        for va, _size, _offset, _handle, flags in self.maps:
            got = _ok(cu.cuMemGetAccess(location, int(va)), f"cuMemGetAccess {int(va):#x}")
            if int(got) != int(flags):
                return f"access at {int(va):#x} is {int(got)}, not {int(flags)}"
        # H1 is one memory seen twice: a byte written at R1 shows at R2
        marker = np.array([0xA5 ^ int(self.r1_data[5])], dtype=np.uint8)
        _ok(cu.cuMemcpyHtoD(int(self.r1) + 5, marker.ctypes.data, 1), "cuMemcpyHtoD marker")
        seen = self._read(int(self.r2) + 5, 1)
        _ok(cu.cuMemcpyHtoD(int(self.r1) + 5, self.r1_data[5:6].ctypes.data, 1), "restore byte")
        if seen[0] != marker[0]:
            return "H1's two mappings no longer show the same memory"
        return None

    def verify(self) -> str:
        try:
            problem = self.check_handles()
            return f"handles: {problem}" if problem else self.digest_now()
        except CudaFailure as exc:
            return f"failed: {exc}"

    def teardown(self) -> str:
        """Frees everything (after a restore: 'freeing after restore'), and allocates and frees
        once more; "OK" or the first failure."""
        cu, u = self.cu, self.u
        try:
            for va, size, *_ in self.maps:
                _ok(cu.cuMemUnmap(int(va), size), f"cuMemUnmap {int(va):#x}")
            for name, handle in [("H1", self.h1), ("H3", self.h3), ("H4", self.h4)]:
                _ok(cu.cuMemRelease(handle), f"cuMemRelease {name}")
            for va, size in [(self.r1, 6 * u), (self.r2, 2 * u), (self.r3, u)]:
                _ok(cu.cuMemAddressFree(int(va), size), f"cuMemAddressFree {int(va):#x}")
            for ptr in self.async_ptrs:
                _ok(cu.cuMemFreeAsync(ptr, self.stream), f"cuMemFreeAsync {int(ptr):#x}")
            again = _ok(cu.cuMemAllocAsync(2 * u, self.stream), "cuMemAllocAsync after restore")
            _ok(cu.cuMemFreeAsync(again, self.stream), "cuMemFreeAsync after restore")
            _ok(cu.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
            _ok(cu.cuMemPoolDestroy(self.pool), "cuMemPoolDestroy")
            return "OK"
        except CudaFailure as exc:
            return f"FAIL {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit-mib", type=int, default=2, help="the layout's unit U, MiB")
    parser.add_argument("--export", action="store_true",
                        help="export H1 as a POSIX file descriptor (a checkpoint must refuse)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--state", type=Path, required=True, help="folder for ready/verified files")
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    memory = AppMemory(args.unit_mib, args.export, args.seed)

    def teardown(signum: int, frame: object) -> None:
        _write_atomic(args.state / "teardown", memory.teardown() + "\n")

    signal.signal(signal.SIGUSR2, teardown)
    serve(args.state, memory.expected, memory.verify)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
