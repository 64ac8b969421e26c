#!/usr/bin/env bash
# First contact with the H100: doctor, GPU tests, a 2 GiB CUDA round trip through the CLI.
cd "$(dirname "$0")/../.."
source benchmarks/h100/env.sh
nvidia-smi -L
restoreprof doctor
rp_python -m pytest -q -m gpu tests -x -p no:cacheprovider 2>&1 | tail -15
python3 - <<'PY'
import json, subprocess, sys, time
from pathlib import Path
from restoreprof.workloads.controller import HeldMemory
w = HeldMemory.start(Path("/tmp/smoke/state"), 64, gpu_mib=2048)
print("workload", w.pid)
def rp(*a):
    r = subprocess.run(["bash", "-c", "restoreprof " + " ".join(a)], capture_output=True, text=True)
    print(r.stdout[-3000:], r.stderr[-3000:]); return r
rp("checkpoint", "-p", str(w.pid), "-D", "/tmp/smoke/ckpt")
rp("restore", "-D", "/tmp/smoke/ckpt")
print("verified:", w.verify())
w.stop()
PY
