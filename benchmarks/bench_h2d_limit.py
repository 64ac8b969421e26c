"""How close each path that brings a snapshot back to the GPU comes to the PCIe link (issue 14).

    python benchmarks/bench_h2d_limit.py --gib 16 [--repeat 3] [--threads 8 16 24] [--chunks 1 2 4]

One process holding GIB of GPU memory runs under 'restoreprof exec' and offloads it to a real
snapshot (its chunks' crc32c in the table); the process is then stopped. The snapshot is then
loaded into fresh exportable GPU memory, exactly as the warm pool does for a restore, by:
  page cache    the engine: pread from the page cache into pinned staging, crc32c, DMA
                (one row per --threads x --chunks)
  hot           from a hot copy (optimizer.hot_snapshots): DMA straight from pinned memory,
                each chunk's crc32c checked as it is queued (one row per --threads)
  hot, no check the same DMA without the checks (rp_hot_copy, into plain device memory): the
                link's own rate, for comparison; restore never runs this way
  mapped page    an experiment for the page-cache path: the first allocation's bytes mapped
  cache         from the file, registered read-only with the driver (cuMemHostRegister pins
                the cached pages: its time is the row's "median"), then the DMA alone
Before anything, the page cache holds the snapshot (it was just written, then read once).
Each row: median and range of --repeat runs, GB/s of the median (10^9 bytes/s), and whether
the memory loaded equals the snapshot (the first 64 MiB and the last 64 MiB of each run's first
allocation are read back and compared with the file).

Runs in about 2 minutes for 16 GiB on the H200 (offload about 20 s, hot intake 10 to 20 s for
pinning, each load about 0.3 to 0.6 s). Needs root (the snapshot is made through the
interception library's control socket) and about 2 x GIB of free host memory.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from restoreprof.optimizer import engine
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.hot_snapshots import HotSnapshots
from restoreprof.optimizer.preload import preload_snapshot
from restoreprof.workloads.controller import HeldMemory

SAMPLE_BYTES = 64 << 20


def _cuda():
    from cuda.bindings import driver as cu

    def ok(result):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise SystemExit(f"CUDA error {err}")
        return result[1] if isinstance(result, tuple) and len(result) == 2 else result

    ok(cu.cuInit(0))
    ok(cu.cuCtxSetCurrent(ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))))
    return cu, ok


def _file_ranges(snapshot: Path, loaded) -> list[tuple[int, int, int]]:
    """(file offset, device address in this process, bytes) of the sampled ranges."""
    from restoreprof.optimizer.hot_snapshots import read_table

    with open(snapshot, "rb") as f:
        table = read_table(f.fileno())
    # struct snap_header: ..., count at 24; first record at 64: address, size, reserved, offset
    first_offset = int.from_bytes(table[64 + 24:64 + 32], "little")
    item = loaded.items[0]
    n = min(SAMPLE_BYTES, item.size)
    return [(first_offset, item.local, n),
            (first_offset + item.size - n, item.local + item.size - n, n)]


def _same(cu, ok, snapshot: Path, loaded) -> bool:
    with open(snapshot, "rb") as f:
        for offset, device, n in _file_ranges(snapshot, loaded):
            back = ctypes.create_string_buffer(n)
            ok(cu.cuMemcpyDtoH(ctypes.addressof(back), device, n))
            f.seek(offset)
            if back.raw != f.read(n):
                return False
    return True


def _row(label: str, seconds: list[float], nbytes: int, same: bool | None) -> None:
    median = statistics.median(seconds)
    data = {True: "OK", False: "MISMATCH", None: "-"}[same]
    print(f"{label:<34} {median:>7.3f} {min(seconds):>7.3f} {max(seconds):>7.3f} "
          f"{nbytes / median / 1e9:>7.1f} {data:>8}", flush=True)


def _mapped_page_cache(cu, ok, lib, snapshot: Path, nbytes: int, device, base, args) -> None:
    """An experiment: DMA straight from the page cache, the snapshot's first allocation mapped
    and registered with the driver read-only (cuMemHostRegister pins the cached pages): how
    long registering takes, and the DMA's rate after it."""
    from restoreprof.optimizer.hot_snapshots import read_table

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with open(snapshot, "rb") as f:
        offset = int.from_bytes(read_table(f.fileno())[64 + 24:64 + 32], "little")
        length = offset + nbytes
        mapped = libc.mmap(None, length, 1, 1, f.fileno(), 0)  # PROT_READ, MAP_SHARED
    if mapped in (None, ctypes.c_void_p(-1).value):
        print(f"mapped page cache: mmap failed (errno {ctypes.get_errno()})")
        return
    read_only = 0x08  # CU_MEMHOSTREGISTER_READ_ONLY
    times, register_s = [], []
    try:
        for _ in range(args.repeat):
            t0 = time.monotonic()
            ok(cu.cuMemHostRegister(mapped + offset, nbytes, read_only))
            register_s.append(time.monotonic() - t0)
            params = engine.EngineParams.of(replace(base, threads=max(args.threads)))
            t0 = time.monotonic()
            rc = lib.rp_hot_copy(int(device), mapped + offset, nbytes, None, 2 << 20,
                                 ctypes.byref(params))
            times.append(time.monotonic() - t0)
            ok(cu.cuMemHostUnregister(mapped + offset))
            if rc:
                raise SystemExit(f"rp_hot_copy from the mapped page cache: CUDA error {rc}")
    finally:
        libc.munmap(mapped, length)
    _row(f"mapped page cache: register ({nbytes >> 20} MiB)", register_s, nbytes, None)
    _row("mapped page cache: DMA after it", times, nbytes, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 16, 24])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4],
                        help="page-cache path: staged copy sizes, MiB")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-h2d-limit"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    snapshot = args.work / "gpu.snap"
    start = time.monotonic()
    holder = HeldMemory.start(args.work / "state", 16, int(args.gib * 1024),
                              prefix=[sys.executable, "-m", "restoreprof", "exec", "--"])
    try:
        ShimControl(holder.pid).offload(snapshot)
    finally:
        holder.stop()
    nbytes = int(args.gib * 2**30)
    with open(snapshot, "rb") as f:  # the page cache holds all of it, as after a first restore
        while f.read(64 << 20):
            pass
    print(f"snapshot: {snapshot.stat().st_size / 1e9:.2f} GB, made in "
          f"{time.monotonic() - start:.1f} s; {os.cpu_count()} CPUs", flush=True)
    cu, ok = _cuda()
    base = OptimizerConfig(streams=args.streams)
    print(f"{'path':<34} {'median':>7} {'min':>7} {'max':>7} {'GB/s':>7} {'data':>8}")

    for chunk in args.chunks:
        for threads in args.threads:
            cfg = replace(base, threads=threads, chunk_mb=chunk)
            engine.warm_staging(cfg)  # as the warm pool has it before a restore asks
            times, same = [], True
            for _ in range(args.repeat):
                loaded = preload_snapshot(snapshot, cfg)
                times.append(loaded.seconds)
                same = same and _same(cu, ok, snapshot, loaded)
                loaded.release()
            _row(f"page cache, {threads} thr, {chunk} MiB", times, nbytes, same)
            engine.release_staging()

    hot = HotSnapshots(budget_bytes=2 * nbytes + (1 << 30), threads=max(args.threads))
    held = hot.hold_file(snapshot)
    print(f"hot intake (pin + read + check): {held.intake_s:.2f} s, "
          f"{held.held_bytes / 1e9:.2f} GB pinned", flush=True)
    for threads in args.threads:
        cfg = replace(base, threads=threads)
        times, same = [], True
        for _ in range(args.repeat):
            with open(snapshot, "rb") as f:
                loaded = hot.preload(f.fileno(), str(snapshot), cfg)
            assert loaded is not None, "the hot copy was not used"
            times.append(loaded.seconds)
            same = same and _same(cu, ok, snapshot, loaded)
            loaded.release()
        _row(f"hot, checked, {threads} thr", times, nbytes, same)

    first = held.buffers[0]
    device = ok(cu.cuMemAlloc(first.bytes))
    lib = engine.library()
    lib.rp_hot_copy.restype = ctypes.c_int
    lib.rp_hot_copy.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t,
                                ctypes.c_void_p, ctypes.c_size_t,
                                ctypes.POINTER(engine.EngineParams)]
    for threads in args.threads:
        params = engine.EngineParams.of(replace(base, threads=threads))
        times = []
        for _ in range(args.repeat):
            t0 = time.monotonic()
            rc = lib.rp_hot_copy(int(device), first.host, first.bytes, None, 2 << 20,
                                 ctypes.byref(params))
            times.append(time.monotonic() - t0)
            if rc:
                raise SystemExit(f"rp_hot_copy: CUDA error {rc}")
        _row(f"hot, no check ({first.bytes >> 20} MiB), {threads} thr", times, first.bytes, None)
    _mapped_page_cache(cu, ok, lib, snapshot, first.bytes, device, base, args)
    ok(cu.cuMemFree(device))
    hot.release()
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
