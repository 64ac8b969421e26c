"""How close each path that brings a snapshot back to the GPU comes to the PCIe link (issue 14).

    python benchmarks/bench_h2d_limit.py --gib 16 [--repeat 3] [--threads 8 16 24] [--chunks 1 2 4]
                                         [--compare-v3]

One process holding GIB of GPU memory runs under 'restoreprof exec' and offloads it to a real
snapshot: a table (version 4: chunk names by BLAKE3, a crc32c per MiB piece) and its chunk
files in the folder beside it; the process is then stopped. The snapshot is then loaded into
fresh exportable GPU memory, exactly as the warm pool does for a restore, by:
  page cache    the engine: pread of the chunk files from the page cache into pinned staging,
                each MiB piece checked (crc32c), DMA (one row per --threads x --chunks)
  hot           from a hot copy (optimizer.hot_snapshots): DMA straight from pinned memory,
                each piece's crc32c checked as it is queued (one row per --threads)
  hot, no check the same DMA without the checks (rp_hot_copy, into plain device memory): the
                link's own rate, for comparison; restore never runs this way
  mapped page    an experiment for the page-cache path: the first allocation's chunk files
  cache         mapped side by side into one range, registered read-only with the driver
                (cuMemHostRegister pins the cached pages: its time is the row's "median"),
                then the DMA alone
With --compare-v3, the page-cache and hot rows run again on the same chunks through a version 3
table (a BLAKE3 per piece, as restoreprof wrote before version 4), written beside the first:
the difference between the two is the cost of the piece check in the copy path.
Before anything, the page cache holds the chunks (they were just written, then read once).
Each row: median and range of --repeat runs, GB/s of the median (10^9 bytes/s), and whether
the memory loaded equals the snapshot (the first 64 MiB and the last 64 MiB of each run's first
allocation are read back and compared with its chunk files).

Runs in about 2 minutes for 16 GiB on the H200 (offload about 20 s, hot intake 10 to 20 s for
pinning, each load about 0.3 to 0.6 s; --compare-v3 adds about a minute: hashing the version 3
table, and its rows). Needs root (the snapshot is made through the interception library's
control socket) and about 2 x GIB of free host memory.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from restoreprof.optimizer import engine
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.hot_snapshots import HotSnapshots
from restoreprof.optimizer.preload import preload_snapshot
from restoreprof.store.table import PIECE_BYTES, Table, chunk_path, read_table
from restoreprof.workloads.controller import HeldMemory

SAMPLE_BYTES = 64 << 20
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


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


def _record_bytes(table: Table, index: int, offset: int, n: int) -> bytes:
    """Bytes [offset, offset + n) of record index, read from the chunk files they lie in."""
    record, chunk = table.records[index], table.chunk_bytes
    out = bytearray()
    while n > 0:
        k, within = divmod(offset, chunk)
        with open(chunk_path(table.folder, record.hashes[k]), "rb") as f:
            f.seek(within)
            part = f.read(min(n, chunk - within))
        if not part:
            raise SystemExit(f"chunk {record.hashes[k]} is shorter than its table says")
        out += part
        offset, n = offset + len(part), n - len(part)
    return bytes(out)


def _same(cu, ok, table: Table, loaded) -> bool:
    """Whether the first and last SAMPLE_BYTES of the first allocation loaded equal its
    chunks."""
    item = loaded.items[0]
    n = min(SAMPLE_BYTES, item.size)
    for offset in (0, item.size - n):
        back = ctypes.create_string_buffer(n)
        ok(cu.cuMemcpyDtoH(ctypes.addressof(back), item.local + offset, n))
        if back.raw != _record_bytes(table, 0, offset, n):
            return False
    return True


def _describe(table: Table, made_s: float) -> str:
    """The snapshot: its logical bytes, its chunks, what they hold on disk, its check."""
    distinct = dict(table.chunks())
    on_disk = sum(chunk_path(table.folder, h).stat().st_size for h in distinct)
    check = {3: "BLAKE3", 4: "crc32c"}.get(table.version, "?")
    return (f"snapshot: {table.total_bytes / 1e9:.2f} GB in {len(table.records)} allocations, "
            f"{len(distinct)} chunks of {table.chunk_bytes >> 20} MiB ({on_disk / 1e9:.2f} GB "
            f"in {table.folder}), table version {table.version} ({check} per MiB piece, "
            f"{table.path.stat().st_size / 1e3:.0f} kB), made in {made_s:.1f} s; "
            f"{os.cpu_count()} CPUs")


def _read_all_chunks(table: Table) -> None:
    """Brings every chunk into the page cache (as after a first restore)."""
    def read(hash_hex: str) -> None:
        with open(chunk_path(table.folder, hash_hex), "rb") as f:
            while f.read(64 << 20):
                pass

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(read, dict(table.chunks())))


def _version_3(table: Table, out: Path) -> Path:
    """The same snapshot as a version 3 table (shim.h): the same chunk names and folder, a
    BLAKE3-256 per piece (computed with the library's hash, in threads) instead of the crc32c."""
    raw = table.raw
    dir_bytes = struct.unpack_from("<Q", raw, 48)[0]
    offset = 72 + dir_bytes  # the header, then the chunk folder's path

    def hashes(index: int) -> bytes:
        record = table.records[index]
        pieces = []
        for at in range(0, record.size, PIECE_BYTES):
            n = min(PIECE_BYTES, record.size - at)
            pieces.append(bytes.fromhex(engine.blake3(_record_bytes(table, index, at, n))))
        return b"".join(pieces)

    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        piece_hashes = list(pool.map(hashes, range(len(table.records))))
    body = b""
    for record, pieces in zip(table.records, piece_hashes, strict=True):
        head = 80 + 24 * len(record.mappings) + 32 * len(record.hashes)
        body += raw[offset:offset + head] + pieces
        offset += head + -(-4 * len(record.piece_crcs) // 8) * 8
    folder = str(table.folder.resolve()).encode()  # absolute: the table lives elsewhere
    new_dir = -(-(len(folder) + 1) // 8) * 8
    header = struct.pack("<8sIIQQQQQQQ", b"RPSNAP1\0", 3, 2, table.chunk_bytes,
                         len(table.records), table.total_bytes, 72 + new_dir + len(body), new_dir,
                         table.written_bytes, PIECE_BYTES)
    out.write_bytes(header + folder.ljust(new_dir, b"\0") + body)
    return out


def _row(label: str, seconds: list[float], nbytes: int, same: bool | None) -> None:
    median = statistics.median(seconds)
    data = {True: "OK", False: "MISMATCH", None: "-"}[same]
    print(f"{label:<34} {median:>7.3f} {min(seconds):>7.3f} {max(seconds):>7.3f} "
          f"{nbytes / median / 1e9:>7.1f} {data:>8}", flush=True)


def _map_chunks(libc, table: Table, index: int) -> tuple[int | None, int]:
    """Record index's chunk files mapped read-only side by side into one range (chunk files
    are whole MiB, so each lands page-aligned after the one before): (address, length), or
    (None, 0) with a message when a mapping failed."""
    record, chunk = table.records[index], table.chunk_bytes
    length = -(-record.size // PAGE_BYTES) * PAGE_BYTES
    failed = ctypes.c_void_p(-1).value
    base = libc.mmap(None, length, 0, 0x22, -1, 0)  # PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS
    if base in (None, failed):
        print(f"mapped page cache: reserving {length} bytes failed (errno {ctypes.get_errno()})")
        return None, 0
    for k, hash_hex in enumerate(record.hashes):
        with open(chunk_path(table.folder, hash_hex), "rb") as f:
            n = -(-min(chunk, record.size - k * chunk) // PAGE_BYTES) * PAGE_BYTES
            # PROT_READ, MAP_SHARED | MAP_FIXED: over the reservation, at the chunk's offset
            at = libc.mmap(base + k * chunk, n, 1, 0x11, f.fileno(), 0)
        if at in (None, failed):
            print(f"mapped page cache: mapping chunk {k} failed (errno {ctypes.get_errno()})")
            libc.munmap(base, length)
            return None, 0
    return base, length


def _mapped_page_cache(cu, ok, lib, table: Table, nbytes: int, device, base, args) -> None:
    """An experiment: DMA straight from the page cache, the snapshot's first allocation's
    chunk files mapped and registered with the driver read-only (cuMemHostRegister pins the
    cached pages): how long registering takes, and the DMA's rate after it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    mapped, length = _map_chunks(libc, table, 0)
    if mapped is None:
        return
    read_only = 0x08  # CU_MEMHOSTREGISTER_READ_ONLY
    times, register_s = [], []
    try:
        for _ in range(args.repeat):
            t0 = time.monotonic()
            ok(cu.cuMemHostRegister(mapped, nbytes, read_only))
            register_s.append(time.monotonic() - t0)
            params = engine.EngineParams.of(replace(base, threads=max(args.threads)))
            t0 = time.monotonic()
            rc = lib.rp_hot_copy(int(device), mapped, nbytes, None, 2 << 20,
                                 ctypes.byref(params))
            times.append(time.monotonic() - t0)
            ok(cu.cuMemHostUnregister(mapped))
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
    parser.add_argument("--compare-v3", action="store_true",
                        help="also load the same chunks through a version 3 table (a BLAKE3 "
                             "per piece)")
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
    table = read_table(snapshot)
    nbytes = table.total_bytes
    _read_all_chunks(table)  # the page cache holds all of it, as after a first restore
    print(_describe(table, time.monotonic() - start), flush=True)
    tables = [(table, "")]
    if args.compare_v3:
        t0 = time.monotonic()
        v3 = read_table(_version_3(table, args.work / "gpu-v3.snap"))
        print(f"version 3 table of the same chunks (a BLAKE3 per piece): "
              f"{time.monotonic() - t0:.1f} s to hash", flush=True)
        tables.append((v3, "v3 "))
    cu, ok = _cuda()
    base = OptimizerConfig(streams=args.streams)
    print(f"{'path':<34} {'median':>7} {'min':>7} {'max':>7} {'GB/s':>7} {'data':>8}")

    for current, label in tables:
        for chunk in args.chunks:
            for threads in args.threads:
                cfg = replace(base, threads=threads, chunk_mb=chunk)
                engine.warm_staging(cfg)  # as the warm pool has it before a restore asks
                times, same = [], True
                for _ in range(args.repeat):
                    loaded = preload_snapshot(current.path, cfg)
                    times.append(loaded.seconds)
                    same = same and _same(cu, ok, current, loaded)
                    loaded.release()
                _row(f"{label}page cache, {threads} thr, {chunk} MiB", times, nbytes, same)
                engine.release_staging()

    for current, label in reversed(tables):  # the version 4 copy last: the rows below use it
        hot = HotSnapshots(budget_bytes=2 * nbytes + (1 << 30), threads=max(args.threads))
        held = hot.hold_file(current.path)
        print(f"{label}hot intake (pin + read + check): {held.intake_s:.2f} s, "
              f"{held.held_bytes / 1e9:.2f} GB pinned", flush=True)
        for threads in args.threads:
            cfg = replace(base, threads=threads)
            times, same = [], True
            for _ in range(args.repeat):
                with open(current.path, "rb") as f:
                    loaded = hot.preload(f.fileno(), str(current.path), cfg)
                assert loaded is not None, "the hot copy was not used"
                times.append(loaded.seconds)
                same = same and _same(cu, ok, current, loaded)
                loaded.release()
            _row(f"{label}hot, checked, {threads} thr", times, nbytes, same)
        if label:
            hot.release()

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
    _mapped_page_cache(cu, ok, lib, table, first.bytes, device, base, args)
    ok(cu.cuMemFree(device))
    hot.release()
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
