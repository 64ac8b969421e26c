"""Why the offload writes into the page cache at 5 GB/s on the H200: chunk files (16 MiB, temp
name + write + rename, as the shim writes them) from memory, by thread count and total size,
on the disk's file system, on tmpfs, and with the kernel's dirty limits raised for the run.

    sudo python3 benchmarks/h100/diag_write.py [--gib 16] [--dir /var/tmp]

Prints GB/s per condition and the kernel's dirty thresholds; puts the vm settings back.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_parallel_write import chunk_files

VM = Path("/proc/sys/vm")


def thresholds_gb() -> str:
    values = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, value = line.split()
        if key in ("nr_dirty_threshold", "nr_dirty_background_threshold", "nr_dirty"):
            values[key] = int(value) * 4096 / 1e9
    return ", ".join(f"{k} {v:.1f} GB" for k, v in values.items())


def run(label: str, folder: Path, data: memoryview, chunk: int, threads: int) -> None:
    subprocess.run(["sync"], check=True)
    work = Path(tempfile.mkdtemp(dir=folder, prefix="rp-write-"))
    try:
        rate = chunk_files(work, data, chunk, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{label:<48} {threads:>3} threads {len(data) / 1e9:6.2f} GB  {rate:6.2f} GB/s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=16)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    chunk = 16 << 20
    size = int(args.gib * (1 << 30)) // chunk * chunk
    data = mmap.mmap(-1, size)
    for off in range(0, size, 1 << 20):
        data[off:off + 8] = os.urandom(8)
    view = memoryview(data)
    print(f"{os.cpu_count()} CPUs; {thresholds_gb()}", flush=True)
    print(f"cgroup: {Path('/proc/self/cgroup').read_text().strip()}", flush=True)
    small = view[: min(size, 4 << 30)]
    for threads in (8, 16, 32):
        run("disk fs, chunk files", args.dir, view, chunk, threads)
    run("disk fs, chunk files, 4 GiB", args.dir, small, chunk, 16)
    run("tmpfs (/dev/shm), chunk files", Path("/dev/shm"), view, chunk, 16)
    saved = {n: (VM / n).read_text() for n in ("dirty_ratio", "dirty_background_ratio")}
    try:
        (VM / "dirty_ratio").write_text("80\n")
        (VM / "dirty_background_ratio").write_text("70\n")
        print(f"dirty limits raised: {thresholds_gb()}", flush=True)
        run("disk fs, chunk files, dirty limits raised", args.dir, view, chunk, 16)
    finally:
        for name, value in saved.items():
            (VM / name).write_text(value)


if __name__ == "__main__":
    main()
