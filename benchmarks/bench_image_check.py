"""The manifest's image check (restore's 'verify ... images' steps) over segment sizes and threads.

    python benchmarks/bench_image_check.py --mib 700 [--segments 8 32] [--threads 8 16]

Writes one file of MIB random bytes (an optimized checkpoint's pages image is about that size),
records its digests with each segment size, then times verify_images warm (page cache), the
median of --runs. Also prints single-core SHA-256 speed and whether the CPU has SHA extensions,
the figures the segment size and thread count depend on.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from restoreprof.checkpoint import manifest as mf


def sha_extensions() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].splitlines()[0].split()
    except (OSError, IndexError):
        return False
    return "sha_ni" in flags


def single_core_gbps(mib: int = 256) -> float:
    data = os.urandom(mib << 20)
    start = time.perf_counter()
    hashlib.sha256(data).digest()
    return len(data) / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=700)
    parser.add_argument("--segments", type=int, nargs="+", default=[4, 8, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[mf.default_threads()])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"cpus {os.cpu_count()}, sha_ni {sha_extensions()}, "
          f"SHA-256 one core {single_core_gbps():.2f} GB/s")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with open(directory / "pages-1.img", "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        print(f"{'segment MiB':>11} {'threads':>7} {'median s':>8} {'GB/s':>6}")
        for segment in args.segments:
            for threads in args.threads:
                manifest = mf.Manifest(root_pid=1, processes=[], segment_bytes=segment << 20)
                manifest.images = mf.record_images(directory, threads, segment << 20)
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    mf.verify_images(directory, manifest, threads)
                    times.append(time.perf_counter() - start)
                median = statistics.median(times)
                print(f"{segment:>11} {threads:>7} {median:>8.3f} "
                      f"{args.mib * (1 << 20) / median / 1e9:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
