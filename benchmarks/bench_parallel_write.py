"""Buffered writes from memory into the page cache: one file shared by T threads (pwrite at
disjoint offsets: the shim's old offload, serialized on the file's inode lock) against one file
per chunk (the shim's chunk folder: temp name, write, rename), and O_DIRECT from aligned
buffers into one file. Prints GB/s for each; no GPU needed.

    .venv/bin/python benchmarks/bench_parallel_write.py [--gib 2] [--threads 1,2,4,8,16]
        [--chunk-mib 8] [--dir /var/tmp]

Needs --gib of free memory for the page cache (the files are deleted after each run). Threads
release the GIL in os.pwrite/os.write, so this measures the kernel, not Python.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def one_file(folder: Path, data: memoryview, chunk: int, threads: int, direct: bool) -> float:
    path = folder / "one"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o600)
    n = len(data) // chunk
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: os.pwrite(fd, data[i * chunk:(i + 1) * chunk], i * chunk),
                      range(n)))
    seconds = time.perf_counter() - start
    os.close(fd)
    path.unlink()
    return n * chunk / seconds / 1e9


def chunk_files(folder: Path, data: memoryview, chunk: int, threads: int) -> float:
    n = len(data) // chunk

    def put(i: int) -> None:
        tmp = folder / f".tmp-{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data[i * chunk:(i + 1) * chunk])
        os.close(fd)
        os.rename(tmp, folder / f"c{i}")

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(n)))
    seconds = time.perf_counter() - start
    for i in range(n):
        (folder / f"c{i}").unlink()
    return n * chunk / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2)
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    chunk = args.chunk_mib << 20
    size = int(args.gib * (1 << 30)) // chunk * chunk
    data = mmap.mmap(-1, size)  # page-aligned: O_DIRECT takes it as it is
    for off in range(0, size, 1 << 20):
        data[off:off + 8] = os.urandom(8)  # touch every page: no zero-page shortcut
    view = memoryview(data)
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="rp-write-"))
    print(f"{size / 1e9:.2f} GB from memory into {folder} ({os.cpu_count()} CPUs), "
          f"{args.chunk_mib} MiB chunks")
    print(f"{'threads':>7} {'one file':>10} {'chunk files':>12} {'O_DIRECT 1 file':>16}")
    try:
        for threads in (int(t) for t in args.threads.split(",")):
            shared = one_file(folder, view, chunk, threads, direct=False)
            files = chunk_files(folder, view, chunk, threads)
            try:
                direct = f"{one_file(folder, view, chunk, threads, direct=True):>14.2f}"
            except OSError as exc:
                direct = f"{'n/a (' + exc.strerror + ')':>14}"
            print(f"{threads:>7} {shared:>8.2f}   {files:>10.2f}   {direct}   GB/s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
