"""restoreprof's lazy page server against CRIU reading every page, side by side in one run.

    sudo .venv/bin/python benchmarks/bench_lazy_pages.py [--mib 2048] [--repeat 3]
                                                         [--threads 2 4 8] [--children 0]
                                                         [--no-verify]

A holder of MIB of seeded data in host memory (restoreprof.workloads.hold_memory; with
--children N, a tree of N holders of MIB each) is checkpointed once, then restored with
`restoreprof.checkpoint.restore` alternately: CRIU reading every page (RESTOREPROF_LAZY_PAGES=0),
and the lazy page server with each --threads count. Every restore is checked bit-exact (the
holder re-hashes what it holds) before the next. Printed per way: the median and range of the
restore (CRIU, the server's wait after it, and the whole restore's steps), and the server's copy
rate (bytes over its span, from the first descriptor to the last page). No GPU needed; needs
root and CRIU, and MIB (times N+1 with children) of free memory besides the page cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from restoreprof.checkpoint import checkpoint, lazy_pages, restore
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.workloads.controller import HeldMemory


def step_s(result, name: str) -> float:
    return sum(s.seconds for s in result.steps if s.name == name)


def one(images: Path, holders: list[HeldMemory], root: HeldMemory, way: str,
        threads: int, verify: bool) -> dict:
    """One restore of images (a restore writes nothing into the checkpoint folder)."""
    lazy_pages_default = lazy_pages.default_threads
    lazy_pages.default_threads = lambda: threads  # the server's thread count for this way
    try:
        result = restore(images, optimizer=OptimizerConfig(lazy_pages=way != "criu"),
                         verify=verify)
    finally:
        lazy_pages.default_threads = lazy_pages_default
    try:
        verified = all(h.verify() for h in holders)
    finally:
        for h in [root, *holders]:
            h.stop()
    served = next((s for s in result.steps if s.name == "host memory, lazy pages (overlapped)"),
                  None)
    return {"way": way, "total_s": result.total_s, "criu_s": step_s(result, "criu restore"),
            "wait_s": step_s(result, "lazy pages (after CRIU)"), "verified": verified,
            "notes": result.notes,
            "copy_gbps": served.bytes / served.seconds / 1e9 if served and served.seconds else 0.0,
            "copied_gb": served.bytes / 1e9 if served else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=2048)
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the image check (its hashing shares the cores with the copy)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/rp-bench-lazy"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: CRIU restores processes")
    if not lazy_pages.userfaultfd_works():
        raise SystemExit("userfaultfd is not available here")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    root = HeldMemory.start(args.work / "state", args.mib, children=args.children)
    holders = root.children() if args.children else [root]
    images = checkpoint(root.pid, args.work / "images").directory
    pages = sum(p.stat().st_size for p in images.glob("pages-*.img"))
    print(f"{len(holders)} holder(s) of {args.mib} MiB; {pages / 1e9:.2f} GB of page images; "
          f"{os.cpu_count()} cores", flush=True)
    ways = [("criu", 0)] + [(f"lazy x{t}", t) for t in args.threads]
    rows = []
    for _ in range(args.repeat):
        for way, threads in ways:  # alternated, so that drift hits every way
            row = one(images, holders, root, way, threads, not args.no_verify)
            rows.append(row)
            print(f"{way:<9} restore {row['total_s']:.3f} s  criu {row['criu_s']:.3f} s  "
                  f"after CRIU {row['wait_s']:.3f} s  copy {row['copy_gbps']:5.1f} GB/s  "
                  f"{'OK' if row['verified'] else 'MISMATCH'}"
                  f"{'  notes: ' + '; '.join(row['notes']) if row['notes'] else ''}", flush=True)
    print("\n| way | runs | restore s, median | min-max | criu s | after CRIU s | copy GB/s | data |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for way, _ in ways:
        mine = [r for r in rows if r["way"] == way]
        totals = [r["total_s"] for r in mine]
        print(f"| {way} | {len(mine)} | {statistics.median(totals):.3f} | "
              f"{min(totals):.3f}-{max(totals):.3f} | "
              f"{statistics.median(r['criu_s'] for r in mine):.3f} | "
              f"{statistics.median(r['wait_s'] for r in mine):.3f} | "
              f"{statistics.median(r['copy_gbps'] for r in mine):.1f} | "
              f"{'all OK' if all(r['verified'] for r in mine) else 'MISMATCH'} |")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
