"""What this machine can do at best: the ceilings each restore phase is measured against.

``restoreprof calibrate`` measures them (``measure``) and caches them per machine and GPU in
``$XDG_CACHE_HOME/restoreprof/ceilings.json``. Analysis reads the cache (``load``); where
nothing was measured a ceiling is 0.0 with source "uncalibrated": never a guessed number.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from restoreprof.errors import RestoreprofError

UNCALIBRATED = "uncalibrated"
CALIBRATED = "calibrated"
GIB = 1 << 30


@dataclass(slots=True)
class Ceilings:
    htod_pinned_gbps: float = 0.0
    htod_pageable_gbps: float = 0.0
    dtoh_pinned_gbps: float = 0.0
    dtoh_pageable_gbps: float = 0.0
    host_memcpy_gbps: float = 0.0
    disk_read_gbps: float = 0.0
    disk_path: str = ""
    hostname: str = ""
    gpu: dict = field(default_factory=dict)
    measured_at: str = ""
    notes: list[str] = field(default_factory=list)
    source: str = UNCALIBRATED

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Ceilings:
        known = set(cls.__slots__)
        return cls(**{k: v for k, v in data.items() if k in known})


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "restoreprof" / "ceilings.json"


def machine_key(hostname: str, gpu: dict | None) -> str:
    if not gpu:
        return f"{hostname}|no-gpu"
    return f"{hostname}|{gpu.get('name', '?')}|{gpu.get('uuid', '?')}"


def load(hostname: str | None = None, gpus: list[dict] | None = None) -> Ceilings:
    """The cached ceilings of this machine (or of hostname with gpus), else uncalibrated."""
    hostname = hostname or socket.gethostname()
    key = machine_key(hostname, (gpus or [None])[0])
    try:
        cached = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        ceilings = Ceilings.from_dict(cached[key])
        ceilings.source = CALIBRATED
        return ceilings
    return Ceilings(hostname=hostname, gpu=(gpus or [{}])[0] or {})


def for_trace(meta) -> Ceilings:
    """The ceilings a trace is judged by: those it was recorded with where they were measured,
    else this machine's cache for the trace's host and GPU (meta: a TraceMeta)."""
    if meta.ceilings:
        stored = Ceilings.from_dict(meta.ceilings)
        if stored.source == CALIBRATED:
            return stored
    return load(meta.hostname, meta.gpus)


def save(ceilings: Ceilings) -> Path:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    ceilings.source = CALIBRATED
    cached[machine_key(ceilings.hostname, ceilings.gpu or None)] = ceilings.to_dict()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=2) + "\n")
    tmp.replace(path)
    return path


# -- measurements -------------------------------------------------------------------------

def measure_host_memcpy_gbps(size_bytes: int = 256 << 20, repeats: int = 5) -> float:
    """One thread copying a buffer already touched: numpy's copyto is a plain memcpy."""
    import numpy as np

    src = np.ones(size_bytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch both
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return size_bytes / best / 1e9


DISK_QUEUE_DEPTHS = (1, 4, 16)   # readers in flight at once; NVMe needs several to reach its rate
DISK_REQUEST_BYTES = 2 << 20      # one read: a multiple of any O_DIRECT alignment


def measure_disk_read_gbps(directory: Path, size_bytes: int = 512 << 20,
                           queue_depths: tuple[int, ...] = DISK_QUEUE_DEPTHS) -> tuple[float, str]:
    """Read rate of a fresh file in directory, not from the page cache: the best of reading it
    with each number of parallel readers in queue_depths (one reader alone underestimates an
    NVMe disk, which serves many requests at once).

    O_DIRECT where the filesystem allows it; otherwise the file is dropped from the page
    cache with posix_fadvise(DONTNEED) before each pass. Returns (GB/s, how it was read).
    directory must exist: calibrating a folder that does not would measure some other disk.
    """
    if not directory.is_dir():
        raise RestoreprofError(f"{directory} is not a folder",
                               hint="pass -D a folder on the disk that holds the checkpoints")
    fd, name = tempfile.mkstemp(prefix=".restoreprof-calibrate-", dir=directory)
    try:
        block = os.urandom(1 << 20) * (DISK_REQUEST_BYTES >> 20)
        for _ in range(max(1, size_bytes // DISK_REQUEST_BYTES)):
            os.write(fd, block)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        fd = -1
        direct = _direct_reads_work(name)
        rates = {depth: _parallel_read_gbps(name, depth, direct) for depth in queue_depths}
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(name)
    best = max(rates, key=lambda depth: rates[depth])
    how = "O_DIRECT" if direct else "page cache dropped (fadvise DONTNEED)"
    tried = ", ".join(f"{depth}: {gbps:.2f}" for depth, gbps in rates.items())
    return rates[best], (f"{how}, best with {best} parallel readers of "
                         f"{DISK_REQUEST_BYTES >> 20} MiB (GB/s by readers: {tried})")


def _direct_reads_work(name: str) -> bool:
    """Whether this filesystem serves O_DIRECT reads (tmpfs and friends refuse them)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    buf = mmap.mmap(-1, DISK_REQUEST_BYTES)   # page aligned, as O_DIRECT needs
    try:
        os.preadv(fd, [buf], 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        buf.close()


def _parallel_read_gbps(name: str, readers: int, direct: bool) -> float:
    """Read the whole file once with readers threads taking requests in turn (os.preadv
    leaves the GIL while the disk works, so the requests are in flight together)."""
    size = os.stat(name).st_size
    offsets = iter(range(0, size, DISK_REQUEST_BYTES))
    lock = threading.Lock()
    total = [0] * readers
    fd = os.open(name, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        if not direct:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

        def reader(index: int) -> None:
            buf = mmap.mmap(-1, DISK_REQUEST_BYTES)
            try:
                while True:
                    with lock:
                        offset = next(offsets, None)
                    if offset is None:
                        return
                    total[index] += os.preadv(fd, [buf], offset)
            finally:
                buf.close()

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    if sum(total) != size:
        raise OSError(f"read {sum(total)} of {size} bytes of the calibration file")
    return size / seconds / 1e9


def measure_gpu(size_bytes: int = 1 * GIB) -> tuple[dict, dict[str, float]]:
    """Pinned and pageable H2D and D2H through cuda-python, on GPU 0.

    Returns (gpu description, {field: GB/s}); raises RuntimeError where there is no GPU.
    """
    import numpy as np

    from restoreprof.cuda import driver  # the one door to libcuda (the library it resolves)

    cu = driver.bindings()

    def ok(result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {int(err)}")
        return rest[0] if len(rest) == 1 else rest

    ok(cu.cuInit(0))
    device = ok(cu.cuDeviceGet(0))
    name = ok(cu.cuDeviceGetName(64, device)).split(b"\0")[0].decode()
    uuid = bytes(ok(cu.cuDeviceGetUuid(device)).bytes).hex()
    gpu = {"index": 0, "name": name, "uuid": f"GPU-{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-"
                                               f"{uuid[16:20]}-{uuid[20:32]}"}
    ctx = ok(cu.cuDevicePrimaryCtxRetain(device))
    ok(cu.cuCtxSetCurrent(ctx))
    dptr = ok(cu.cuMemAlloc(size_bytes))
    pinned = ok(cu.cuMemHostAlloc(size_bytes, 0))
    pageable = np.ones(size_bytes, dtype=np.uint8)
    results = {}

    def timed(fn) -> float:
        fn()  # warm up
        ok(cu.cuCtxSynchronize())
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ok(cu.cuCtxSynchronize())
            best = min(best, time.perf_counter() - t0)
        return size_bytes / best / 1e9

    try:
        results["htod_pinned_gbps"] = timed(lambda: ok(cu.cuMemcpyHtoD(dptr, pinned, size_bytes)))
        results["htod_pageable_gbps"] = timed(
            lambda: ok(cu.cuMemcpyHtoD(dptr, pageable.ctypes.data, size_bytes)))
        results["dtoh_pinned_gbps"] = timed(lambda: ok(cu.cuMemcpyDtoH(pinned, dptr, size_bytes)))
        results["dtoh_pageable_gbps"] = timed(
            lambda: ok(cu.cuMemcpyDtoH(pageable.ctypes.data, dptr, size_bytes)))
    finally:
        cu.cuMemFree(dptr)
        cu.cuMemFreeHost(pinned)
        cu.cuDevicePrimaryCtxRelease(device)
    return gpu, results


def measure(disk_dir: Path, *, gpu: bool = True, gpu_info: dict | None = None,
            progress: Callable[[str], None] | None = None,
            disk_bytes: int = 512 << 20) -> Ceilings:
    """Measure every ceiling this machine has; a GPU that is missing is noted, not guessed.

    gpu_info (NVML's description of GPU 0) keys the cache the way traces name their GPU;
    progress, where given, hears what is measured next.
    """
    say = progress or (lambda _text: None)
    ceilings = Ceilings(hostname=socket.gethostname(), gpu=dict(gpu_info or {}),
                        measured_at=datetime.now(UTC).isoformat(timespec="seconds"))
    say("host memcpy")
    ceilings.host_memcpy_gbps = round(measure_host_memcpy_gbps(), 2)
    say(f"disk read of {disk_dir} with {', '.join(map(str, DISK_QUEUE_DEPTHS))} parallel readers")
    disk_gbps, how = measure_disk_read_gbps(disk_dir, disk_bytes)
    ceilings.disk_read_gbps = round(disk_gbps, 2)
    ceilings.disk_path = str(disk_dir)
    ceilings.notes.append(f"disk read: {how}")
    if gpu:
        say("GPU copies (H2D and D2H, pinned and pageable)")
        try:
            measured_gpu, results = measure_gpu()
            ceilings.gpu = ceilings.gpu or measured_gpu
            for name, value in results.items():
                setattr(ceilings, name, round(value, 2))
        except Exception as exc:  # no driver, no GPU, no cuda-python: say so, measure the rest
            ceilings.notes.append(f"GPU copies not measured: {exc}")
    else:
        ceilings.notes.append("GPU copies not measured (--no-gpu)")
    return ceilings
