"""Offload/reload throughput of the interception library over its settings, on one process.

    python benchmarks/sweep_reload.py --gib 8 [--pinned 1 0]

A holder of GIB of GPU memory runs under 'restoreprof exec'; for each chunk size, threads,
streams and staging (pinned or pageable) the memory is offloaded to a snapshot and reloaded
with those settings, which reach the engine per request (snapshots checksum per MiB, so the
chunk is the copy size only). The data is verified bit-exact at the end. Prints one row per
transfer: the figure behind the engine's default settings, and each setting's effect.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.workloads.controller import HeldMemory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=8)
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--streams", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--pinned", type=int, nargs="+", default=[1], choices=[0, 1],
                        help="staging: 1 pinned, 0 pageable (default 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-sweep"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    holder = HeldMemory.start(args.work / "state", 16, int(args.gib * 1024), prefix=prefix)
    control = ShimControl(holder.pid)
    snapshot = args.work / "gpu.snap"
    base = OptimizerConfig()
    print(f"{'op':<8} {'chunk MiB':>9} {'threads':>7} {'streams':>7} {'pinned':>6} {'s':>7} "
          f"{'GB/s':>6} {'map s':>6} {'pinning s, all threads':>22}")
    try:
        for chunk in args.chunks:
            for threads in args.threads:
                for streams in args.streams:
                    for pinned in args.pinned:
                        cfg = replace(base, chunk_mb=chunk, threads=threads, streams=streams,
                                      pinned=bool(pinned))
                        snapshot.unlink(missing_ok=True)  # a new file, as a checkpoint writes
                        out = control.offload(snapshot, cfg)
                        what = f"{chunk:>9} {threads:>7} {streams:>7} {pinned:>6}"
                        print(f"{'offload':<8} {what} {out['seconds']:>7.3f} {out['gbps']:>6.1f}",
                              flush=True)
                        back = control.reload(snapshot, cfg)
                        print(f"{'reload':<8} {what} {back['seconds']:>7.3f} "
                              f"{back['gbps']:>6.1f} {back['map_seconds']:>6.3f} "
                              f"{back['pool_seconds']:>22.3f}", flush=True)
        print("data after all cycles:", "OK" if holder.verify() else "MISMATCH")
    finally:
        holder.stop()
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
