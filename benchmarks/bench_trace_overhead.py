"""What tracing costs a restore: the same checkpoint restored untraced and traced, alternately.

    python benchmarks/bench_trace_overhead.py --gpu-gib 8 --runs 3     (H100)
    python benchmarks/bench_trace_overhead.py --mib 1024 --runs 5      (CPU only)

The time compared is the restore's own, from its first step to its last (as 'restoreprof
restore --json' reports it, and as the trace's marks carry it), so probe attach and Python
start-up are out of both. Prints each run and the median overhead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from restoreprof.checkpoint import checkpoint
from restoreprof.probes.session import Target, record
from restoreprof.trace.events import MARK
from restoreprof.workloads.controller import HeldMemory


def untraced(images: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "restoreprof", "restore", "-D", str(images),
                          "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["total_s"]


def traced(images: Path) -> tuple[float, int]:
    trace = record(Target(restore_dir=images))
    marks = [e for e in trace.events if e.kind == MARK]
    if not marks:
        raise SystemExit("the traced restore reported no steps (did it fail?)")
    return (max(e.end_ns for e in marks) - min(e.start_ns for e in marks)) / 1e9, \
        trace.meta.lost_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--gpu-gib", type=float, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-bench-overhead"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    holder = HeldMemory.start(args.work / "state", args.mib, int(args.gpu_gib * 1024))
    images = args.work / "images"
    checkpoint(holder.pid, images)
    plain, probed, lost = [], [], 0
    try:
        for run in range(args.runs):
            plain.append(untraced(images))
            assert holder.verify(), "data differs after the untraced restore"
            holder.stop()
            seconds, dropped = traced(images)
            probed.append(seconds)
            lost += dropped
            assert holder.verify(), "data differs after the traced restore"
            holder.stop()
            print(f"run {run}: untraced {plain[-1]:.3f} s, traced {probed[-1]:.3f} s", flush=True)
    finally:
        holder.stop()
        shutil.rmtree(args.work, ignore_errors=True)
    p, t = statistics.median(plain), statistics.median(probed)
    what = f"{args.gpu_gib:g} GiB GPU" if args.gpu_gib else f"{args.mib} MiB CPU"
    print(f"restore of a {what} process, median of {args.runs}: untraced {p:.3f} s, "
          f"traced {t:.3f} s, overhead {100 * (t - p) / p:+.1f}% ({lost} events lost)")


if __name__ == "__main__":
    main()
