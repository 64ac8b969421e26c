"""The parallel restore engine: host memory or files <-> GPU memory at PCIe speed.

Bytes move through a pinned staging pool (allocated once, reused), N host threads and M CUDA
streams. Each thread owns two staging buffers, so while one buffer's DMA runs the thread fills
the other: copies and transfers overlap. Files go through the same engine in C (below).

    engine = Engine(OptimizerConfig(streams=8, threads=8, chunk_mb=64))
    engine.to_device(dptr, host_array)                 # host memory -> GPU
    engine.file_to_device(dptr, "pages.img", offset, n) # file -> GPU
    stats = engine.device_to_file("snap", 0, dptr, n)   # GPU -> file, crc32 per chunk
    engine.close()

Why ctypes over libcuda rather than cuda-python: the engine loads exactly the library that
``restoreprof.system.paths.libcuda_path()`` names (so RESTOREPROF_LIBCUDA can point it at the
test double), ctypes releases the GIL on every call (the threads really run in parallel), and
it needs only a dozen entry points whose signatures have not changed since CUDA 4. The library
is loaded RTLD_GLOBAL under its soname, so cuda-python in the same process finds the same one.

Files go through the same engine in C that the interception library runs (loaded from the
built library, without its interposition): from Python, per-chunk overhead held file -> GPU to
24 GB/s on the H100, against 40 GB/s in C. Checksums are crc32c per chunk everywhere, computed
by that library (three interleaved hardware streams), so a file written by either side can be
verified by the other.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Self

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.system.paths import libcuda_path

# ----------------------------------------------------------------------------- the driver


class CudaCallError(RestoreprofError):
    """A driver call that failed, with the driver's name for the error."""

    def __init__(self, call: str, code: int, name: str) -> None:
        self.call, self.code = call, code
        super().__init__(f"{call} failed: {name} ({code})",
                         hint="run 'restoreprof doctor' to check the GPU and driver")


_c_size = ctypes.c_size_t
_c_ptr = ctypes.c_void_p
_c_dptr = ctypes.c_uint64  # CUdeviceptr
_SIGNATURES: dict[str, list] = {
    "cuInit": [ctypes.c_uint],
    "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
    "cuDeviceGetCount": [ctypes.POINTER(ctypes.c_int)],
    "cuDevicePrimaryCtxRetain": [ctypes.POINTER(_c_ptr), ctypes.c_int],
    "cuDevicePrimaryCtxRelease_v2": [ctypes.c_int],
    "cuCtxSetCurrent": [_c_ptr],
    "cuCtxGetCurrent": [ctypes.POINTER(_c_ptr)],
    "cuMemAllocHost_v2": [ctypes.POINTER(_c_ptr), _c_size],
    "cuMemFreeHost": [_c_ptr],
    "cuMemAlloc_v2": [ctypes.POINTER(_c_dptr), _c_size],
    "cuMemFree_v2": [_c_dptr],
    "cuMemsetD8_v2": [_c_dptr, ctypes.c_ubyte, _c_size],
    "cuCtxSynchronize": [],
    "cuMemcpyHtoD_v2": [_c_dptr, _c_ptr, _c_size],
    "cuMemcpyDtoH_v2": [_c_ptr, _c_dptr, _c_size],
    "cuMemcpyHtoDAsync_v2": [_c_dptr, _c_ptr, _c_size, _c_ptr],
    "cuMemcpyDtoHAsync_v2": [_c_ptr, _c_dptr, _c_size, _c_ptr],
    "cuStreamCreate": [ctypes.POINTER(_c_ptr), ctypes.c_uint],
    "cuStreamDestroy_v2": [_c_ptr],
    "cuStreamSynchronize": [_c_ptr],
    "cuEventCreate": [ctypes.POINTER(_c_ptr), ctypes.c_uint],
    "cuEventRecord": [_c_ptr, _c_ptr],
    "cuEventSynchronize": [_c_ptr],
    "cuEventDestroy_v2": [_c_ptr],
    "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
}
CU_STREAM_NON_BLOCKING = 1
CU_EVENT_DISABLE_TIMING = 2


class Driver:
    """The few libcuda entry points the engine needs, each call checked."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise RestoreprofError(f"cannot load the CUDA driver {path}: {exc}",
                                   hint="check RESTOREPROF_LIBCUDA or the driver install") from None
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int

    def error_name(self, code: int) -> str:
        text = ctypes.c_char_p()
        if self.lib.cuGetErrorName(code, ctypes.byref(text)) == 0 and text.value:
            return text.value.decode()
        return "CUDA_ERROR_UNKNOWN"

    def call(self, name: str, *args: Any) -> None:
        code = getattr(self.lib, name)(*args)
        if code != 0:
            raise CudaCallError(name, code, self.error_name(code))

    def out(self, name: str, ctype: Any, *args: Any) -> Any:
        """Call NAME with a pointer to a fresh CTYPE first; return its value."""
        value = ctype()
        self.call(name, ctypes.byref(value), *args)
        return value.value

    def primary_context(self, device: int = 0) -> int:
        """cuInit, retain DEVICE's primary context and make it current on this thread."""
        self.call("cuInit", 0)
        dev = self.out("cuDeviceGet", ctypes.c_int, device)
        ctx = self.out("cuDevicePrimaryCtxRetain", _c_ptr, dev)
        self.call("cuCtxSetCurrent", ctx)
        return ctx

    def current_context(self) -> int | None:
        self.call("cuInit", 0)
        return self.out("cuCtxGetCurrent", _c_ptr) or None


@lru_cache(maxsize=4)
def _driver_at(path: str) -> Driver:
    return Driver(path)


def driver() -> Driver:
    """The driver named by libcuda_path(), loaded once per path."""
    path = libcuda_path()
    if not path:
        raise RestoreprofError("no CUDA driver (libcuda) on this machine",
                               hint="install the NVIDIA driver, or set RESTOREPROF_LIBCUDA")
    return _driver_at(path)


# ----------------------------------------------------------------------------- staging pool


class StagingPool:
    """Host buffers for staging, allocated once: pinned (cuMemAllocHost) or, if not, pageable.

    Allocating gigabytes of pinned memory costs 0.2 to 0.7 s on the H100, so one pool is made
    ahead (see prewarm) and lent to every transfer; buffers come in pairs, one pair per thread.
    """

    def __init__(self, drv: Driver, context: int, buffer_bytes: int, buffers: int,
                 pinned: bool = True) -> None:
        self.driver, self.context = drv, context
        self.buffer_bytes, self.pinned = buffer_bytes, pinned
        self.addresses: list[int] = []
        self._pageable: list[Any] = []
        self._lock = threading.Lock()
        self._free: list[int] = []
        start = time.perf_counter()
        try:
            for _ in range(buffers):
                self.addresses.append(self._allocate())
        except BaseException:
            self.close()
            raise
        self._free = list(range(buffers))
        self.setup_seconds = time.perf_counter() - start

    @classmethod
    def for_config(cls, cfg: OptimizerConfig, drv: Driver | None = None,
                   context: int | None = None) -> StagingPool:
        drv = drv or driver()
        context = context or drv.current_context() or drv.primary_context(0)
        buffers = 2 * cfg.threads
        buffer_bytes = min(cfg.chunk_bytes, max(1 << 20, cfg.pool_bytes // buffers))
        return cls(drv, context, buffer_bytes, buffers, cfg.pinned)

    def _allocate(self) -> int:
        if not self.pinned:
            buf = ctypes.create_string_buffer(self.buffer_bytes)
            self._pageable.append(buf)
            return ctypes.addressof(buf)
        self.driver.call("cuCtxSetCurrent", self.context)
        return self.driver.out("cuMemAllocHost_v2", _c_ptr, self.buffer_bytes)

    def take_pair(self) -> tuple[int, int] | None:
        with self._lock:
            if len(self._free) < 2:
                return None
            return self._free.pop(), self._free.pop()

    def give_back(self, pair: tuple[int, int]) -> None:
        with self._lock:
            self._free.extend(pair)

    def view(self, index: int, nbytes: int) -> memoryview:
        return memoryview((ctypes.c_char * nbytes).from_address(self.addresses[index])).cast("B")

    @property
    def total_bytes(self) -> int:
        return self.buffer_bytes * len(self.addresses)

    def close(self) -> None:
        if self.pinned:
            for address in self.addresses:
                self.driver.call("cuMemFreeHost", address)
        self.addresses, self._pageable, self._free = [], [], []


# ----------------------------------------------------------------------------- transfers


@dataclass
class TransferStats:
    """One transfer's size, time and (for device -> host) crc32 of each chunk."""

    direction: str
    nbytes: int
    seconds: float
    chunk_bytes: int
    threads: int
    streams: int
    checksums: list[int] = field(default_factory=list)

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


class ChecksumMismatch(RestoreprofError):
    pass


def host_address(buffer: Any) -> tuple[int, int]:
    """(address, nbytes) of a contiguous buffer: bytes, bytearray, memoryview, numpy array."""
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise RestoreprofError("the host buffer is not contiguous",
                               hint="pass a contiguous array (numpy.ascontiguousarray)")
    if view.readonly:
        import numpy as np

        return np.frombuffer(view, dtype=np.uint8).ctypes.data, view.nbytes
    return ctypes.addressof(ctypes.c_char.from_buffer(view)), view.nbytes


class Engine:
    """Moves bytes between host memory or files and GPU memory with threads and streams."""

    def __init__(self, cfg: OptimizerConfig | None = None, pool: StagingPool | None = None,
                 drv: Driver | None = None) -> None:
        self.cfg = cfg or OptimizerConfig()
        self.driver = drv or (pool.driver if pool else driver())
        self._owns_pool = pool is None
        self.pool = pool or StagingPool.for_config(self.cfg, self.driver)
        self.context = self.pool.context
        self.threads = min(self.cfg.threads, len(self.pool.addresses) // 2)
        self.streams = self._create_streams(min(self.cfg.streams, 32))
        # Two events per pool buffer pair: "the DMA out of/into this buffer has finished".
        self.events = [self._create_event() for _ in self.pool.addresses]

    def _create_streams(self, count: int) -> list[int]:
        self.driver.call("cuCtxSetCurrent", self.context)
        return [self.driver.out("cuStreamCreate", _c_ptr, CU_STREAM_NON_BLOCKING)
                for _ in range(count)]

    def _create_event(self) -> int:
        return self.driver.out("cuEventCreate", _c_ptr, CU_EVENT_DISABLE_TIMING)

    def close(self) -> None:
        self.driver.call("cuCtxSetCurrent", self.context)
        for event in self.events:
            self.driver.call("cuEventDestroy_v2", event)
        for stream in self.streams:
            self.driver.call("cuStreamDestroy_v2", stream)
        self.events, self.streams = [], []
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public API -------------------------------------------------------------------------

    def to_device(self, dst: int, src: Any, nbytes: int | None = None) -> TransferStats:
        """Copy host memory (a buffer, or an address with nbytes) to device address dst."""
        address, size = (src, nbytes) if isinstance(src, int) else host_address(src)
        size = size if nbytes is None else min(size, nbytes)

        def fill(buf_addr: int, offset: int, length: int) -> None:
            ctypes.memmove(buf_addr, address + offset, length)

        return self._h2d("host->device", dst, size, fill)

    def file_to_device(self, dst: int, path: str | os.PathLike | int, offset: int = 0,
                       nbytes: int | None = None, expected_crc32c: list[int] | None = None
                       ) -> TransferStats:
        """Copy nbytes of a file from offset to dst; with expected_crc32c (from device_to_file),
        a chunk that does not match raises before it reaches the GPU."""
        with _open_for(path, os.O_RDONLY) as fd:
            size = nbytes if nbytes is not None else os.fstat(fd).st_size - offset
            sums = None
            if expected_crc32c is not None:
                if len(expected_crc32c) != _chunks(size, self.cfg.chunk_bytes):
                    raise ChecksumMismatch("the checksums do not fit this size and chunk size",
                                           hint="pass the checksums device_to_file returned")
                sums = (ctypes.c_uint32 * max(1, len(expected_crc32c)))(*expected_crc32c)
            return self._file_transfer(True, dst, fd, offset, size, sums, "file->device")

    def device_to_file(self, path: str | os.PathLike | int, offset: int, src: int, nbytes: int,
                       checksum: bool = True) -> TransferStats:
        """Write nbytes of device memory at src into a file at offset; crc32c per chunk."""
        with _open_for(path, os.O_WRONLY | os.O_CREAT) as fd:
            sums = (ctypes.c_uint32 * max(1, _chunks(nbytes, self.cfg.chunk_bytes)))() \
                if checksum else None
            return self._file_transfer(False, src, fd, offset, nbytes, sums, "device->file")

    def _file_transfer(self, to_device: bool, device: int, fd: int, offset: int, size: int,
                       sums: Any, direction: str) -> TransferStats:
        lib = native_engine()
        self.driver.call("cuCtxSetCurrent", self.context)
        start = time.perf_counter()
        rc = lib.rp_engine_file_transfer(int(to_device), device, fd, offset, size, sums,
                                         len(self.streams), self.threads, self.cfg.chunk_bytes)
        seconds = time.perf_counter() - start
        if rc == _NATIVE_CHECKSUM_MISMATCH:
            raise ChecksumMismatch(f"{direction}: a chunk failed its crc32c check",
                                   hint="the file is damaged; do not load it")
        if rc == _NATIVE_IO_ERROR:
            raise RestoreprofError(f"{direction}: reading or writing the file failed (short file?)",
                                   hint="check the file's size and the disk")
        if rc != 0:
            raise CudaCallError(f"engine {direction}", rc, self.driver.error_name(rc))
        checksums = list(sums[: _chunks(size, self.cfg.chunk_bytes)]) if sums is not None \
            and not to_device else []
        return TransferStats(direction, size, seconds, self.cfg.chunk_bytes, self.threads,
                             len(self.streams), checksums)

    def to_host(self, dst: Any, src: int, nbytes: int | None = None,
                checksum: bool = True) -> TransferStats:
        """Copy device memory at src into a writable host buffer (or address with nbytes)."""
        address, size = (dst, nbytes) if isinstance(dst, int) else host_address(dst)
        size = size if nbytes is None else min(size, nbytes)

        def drain(view: memoryview, buf_addr: int, offset: int, length: int) -> None:
            ctypes.memmove(address + offset, buf_addr, length)

        return self._d2h("device->host", src, size, drain, checksum)

    # --- the two pipelines ------------------------------------------------------------------

    def _h2d(self, direction: str, dst: int, size: int, fill: Callable) -> TransferStats:
        chunk = self.pool.buffer_bytes

        def worker(pair: tuple[int, int], stream: int, next_chunk: Callable) -> None:
            drv, pending = self.driver, [False, False]
            turn = 0
            try:
                while (index := next_chunk()) is not None:
                    slot = pair[turn]
                    if pending[turn]:  # the DMA out of this buffer must finish before refilling
                        drv.call("cuEventSynchronize", self.events[slot])
                    offset = index * chunk
                    length = min(chunk, size - offset)
                    fill(self.pool.addresses[slot], offset, length)
                    drv.call("cuMemcpyHtoDAsync_v2", dst + offset, self.pool.addresses[slot],
                             length, stream)
                    drv.call("cuEventRecord", self.events[slot], stream)
                    pending[turn] = True
                    turn ^= 1
            finally:
                for t in (0, 1):
                    if pending[t]:
                        drv.call("cuEventSynchronize", self.events[pair[t]])

        return self._run(direction, size, worker, [])

    def _d2h(self, direction: str, src: int, size: int, drain: Callable,
             checksum: bool) -> TransferStats:
        chunk = self.pool.buffer_bytes
        sums: list[int] = [0] * _chunks(size, chunk) if checksum else []

        def finish(slot: int, index: int) -> None:
            self.driver.call("cuEventSynchronize", self.events[slot])
            offset = index * chunk
            length = min(chunk, size - offset)
            view = self.pool.view(slot, length)
            if checksum:
                sums[index] = crc32c(view)
            drain(view, self.pool.addresses[slot], offset, length)

        def worker(pair: tuple[int, int], stream: int, next_chunk: Callable) -> None:
            # Issue chunk k's DMA into one buffer, then drain chunk k-1 from the other.
            previous: tuple[int, int] | None = None
            turn = 0
            try:
                while (index := next_chunk()) is not None:
                    slot = pair[turn]
                    offset = index * chunk
                    self.driver.call("cuMemcpyDtoHAsync_v2", self.pool.addresses[slot],
                                     src + offset, min(chunk, size - offset), stream)
                    self.driver.call("cuEventRecord", self.events[slot], stream)
                    if previous:
                        finish(*previous)
                    previous = (slot, index)
                    turn ^= 1
                if previous:
                    finish(*previous)
                    previous = None
            finally:
                if previous:  # an error: let the last DMA land before the buffer is reused
                    self.driver.lib.cuEventSynchronize(self.events[previous[0]])

        return self._run(direction, size, worker, sums)

    def _run(self, direction: str, size: int, worker: Callable, sums: list[int]) -> TransferStats:
        """Start the threads, each with a buffer pair and a stream; chunks handed out in order."""
        total = _chunks(size, self.pool.buffer_bytes)
        counter = iter(range(total))
        lock = threading.Lock()

        def next_chunk() -> int | None:
            with lock:
                return next(counter, None)

        threads_used = max(1, min(self.threads, total))
        errors: list[BaseException] = []

        def body(i: int) -> None:
            pair = self.pool.take_pair()
            if pair is None:
                errors.append(RestoreprofError("staging pool exhausted",
                                               hint="one transfer at a time per pool"))
                return
            try:
                self.driver.call("cuCtxSetCurrent", self.context)
                worker(pair, self.streams[i % len(self.streams)], next_chunk)
            except BaseException as exc:
                errors.append(exc)
                with lock:  # stop the other threads early
                    for _ in counter:
                        pass
            finally:
                self.pool.give_back(pair)

        start = time.perf_counter()
        workers = [threading.Thread(target=body, args=(i,), name=f"restoreprof-engine-{i}")
                   for i in range(threads_used)] if size else []
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        seconds = time.perf_counter() - start
        if errors:
            raise errors[0]
        return TransferStats(direction, size, seconds, self.pool.buffer_bytes, threads_used,
                             len(self.streams), sums)


# ----------------------------------------------------------------------------- helpers


def _chunks(size: int, chunk: int) -> int:
    return (size + chunk - 1) // chunk


# How the native engine reports its own failures (shim/engine.c RP_ERROR_*).
_NATIVE_IO_ERROR = 304            # CUDA_ERROR_OPERATING_SYSTEM
_NATIVE_CHECKSUM_MISMATCH = 200   # CUDA_ERROR_INVALID_IMAGE


@lru_cache(maxsize=1)
def native_engine() -> ctypes.CDLL:
    """The built interception library, loaded for its engine and crc32c (it interposes nothing
    when loaded this way, and starts no control channel)."""
    from restoreprof.system.paths import shim_library_path

    path = shim_library_path()
    if not path.exists():
        raise RestoreprofError(f"the engine's native library is not built ({path})",
                               hint="run ./scripts/setup.sh (it needs gcc and cuda.h)")
    lib = ctypes.CDLL(str(path))
    lib.rp_crc32c.restype = ctypes.c_uint32
    lib.rp_crc32c.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    lib.rp_engine_file_transfer.restype = ctypes.c_int
    lib.rp_engine_file_transfer.argtypes = [
        ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_longlong, ctypes.c_size_t,
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_size_t]
    return lib


def crc32c(view: memoryview) -> int:
    """crc32c of a buffer (the GIL is released while it runs); read-only buffers are copied."""
    if view.readonly:
        view = memoryview(bytearray(view))
    buffer = (ctypes.c_char * view.nbytes).from_buffer(view)
    return native_engine().rp_crc32c(0, ctypes.addressof(buffer), view.nbytes)


@contextmanager
def _open_for(path: str | os.PathLike | int, flags: int) -> Iterator[int]:
    """Open a path (or borrow a descriptor) for the length of a transfer."""
    if isinstance(path, int):
        yield path
        return
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RestoreprofError(f"cannot open {path}: {exc.strerror}",
                               hint="check the path and its permissions") from None
    try:
        yield fd
    finally:
        os.close(fd)
