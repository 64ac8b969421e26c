"""Image read-ahead on a cold page cache: the same checkpoint restored with and without it.

    python benchmarks/bench_readahead.py --mib 1024 --runs 3

A process holding MIB of host memory is checkpointed once; then, alternately, the page cache is
dropped and the checkpoint restored with read-ahead on and off (`--no-verify` both times: with
the image check on, the check's own reads already run ahead of CRIU and read-ahead stays off).
Data verified after every restore. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

from bench_checkpoint import cli, drop_caches

from restoreprof.checkpoint import checkpoint
from restoreprof.workloads.controller import HeldMemory


def cold_restore(images: Path, readahead: bool) -> float:
    drop_caches()
    env = dict(os.environ, RESTOREPROF_READAHEAD=str(int(readahead)))
    return cli("restore", "-D", str(images), "--no-verify", env=env)["total_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-bench-readahead"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    holder = HeldMemory.start(args.work / "state", args.mib)
    images = args.work / "images"
    checkpoint(holder.pid, images)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for run in range(args.runs):
            for readahead in (False, True):
                times[readahead].append(cold_restore(images, readahead))
                assert holder.verify(), "data differs after the restore"
                holder.stop()
            print(f"run {run}: without {times[False][-1]:.3f} s, with {times[True][-1]:.3f} s",
                  flush=True)
    finally:
        holder.stop()
        shutil.rmtree(args.work, ignore_errors=True)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"cold restore of a {args.mib} MiB process, median of {args.runs}: without read-ahead "
          f"{off:.3f} s, with {on:.3f} s ({off / on:.2f}x)")


if __name__ == "__main__":
    main()
