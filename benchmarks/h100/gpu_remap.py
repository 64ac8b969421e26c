"""Checkpoint a CUDA process on GPU 0, restore it onto GPU 1 with --gpu-map, verify its data.

    python benchmarks/h100/gpu_remap.py [--gib 2]         (a machine with two GPUs)
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from restoreprof.checkpoint import checkpoint
from restoreprof.system.gpus import nvml_gpus
from restoreprof.workloads.controller import HeldMemory


def gpu_of(pid: int) -> list[int]:
    import pynvml

    pynvml.nvmlInit()
    found = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        if any(p.pid == pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)):
            found.append(index)
    return found


parser = argparse.ArgumentParser()
parser.add_argument("--gib", type=float, default=2)
parser.add_argument("--optimized", action="store_true")
args = parser.parse_args()
gpus = nvml_gpus()
if len(gpus) < 2:
    sys.exit(f"needs two GPUs, found {len(gpus)}")
work = Path("/tmp/rp-remap")
shutil.rmtree(work, ignore_errors=True)
prefix = [sys.executable, "-m", "restoreprof", "exec", "--"] if args.optimized else None
holder = HeldMemory.start(work / "state", 64, int(args.gib * 1024), prefix=prefix)
print("before:", holder.pid, "on GPU", gpu_of(holder.pid))
checkpoint(holder.pid, work / "ckpt")
out = subprocess.run([sys.executable, "-m", "restoreprof", "restore", "-D", str(work / "ckpt"),
                      "--gpu-map", f"{gpus[0]['uuid']}=1", "--json"], capture_output=True, text=True)
if out.returncode:
    sys.exit(out.stderr)
steps = json.loads(out.stdout)["steps"]
print("restore:", ", ".join(f"{s['name']} {(s['end_ns'] - s['start_ns']) / 1e9:.2f} s" for s in steps))
print("after:", holder.pid, "on GPU", gpu_of(holder.pid), "data", "OK" if holder.verify() else "MISMATCH")
holder.stop()
