"""Checkpoint a built-in workload into DIR for the battery's trace and TUI stages.

    python benchmarks/h100/make_checkpoint.py DIR --gpu-gib 8 [--optimized]
"""

import argparse
import sys
from pathlib import Path

from restoreprof.checkpoint import checkpoint
from restoreprof.workloads.controller import HeldMemory

parser = argparse.ArgumentParser()
parser.add_argument("dir", type=Path)
parser.add_argument("--gpu-gib", type=float, default=8)
parser.add_argument("--optimized", action="store_true", help="run it under restoreprof exec")
args = parser.parse_args()
prefix = [sys.executable, "-m", "restoreprof", "exec", "--"] if args.optimized else None
holder = HeldMemory.start(args.dir.with_suffix(".state"), 64, int(args.gpu_gib * 1024), prefix=prefix)
result = checkpoint(holder.pid, args.dir)
print(f"checkpoint of PID {holder.pid} in {args.dir}: "
      + ", ".join(f"{s.name} {s.seconds:.2f} s" for s in result.steps))
