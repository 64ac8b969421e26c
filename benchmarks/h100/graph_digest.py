"""Is the CUDA graph program's digest stable within one process, and what breaks it?

    python3 benchmarks/h100/graph_digest.py --gib 8 --then {nothing,empty_cache,clear_cublas}

Builds workloads/frameworks.py's torch-graph program (no checkpoint at all), takes its digest,
does THEN, and takes it three more times.
"""
import argparse
import traceback

from restoreprof.workloads.frameworks import torch_program

p = argparse.ArgumentParser()
p.add_argument("--gib", type=float, default=8)
p.add_argument("--slack-gib", type=float, default=2)
p.add_argument("--program", default="torch-graph")
p.add_argument("--then", default="nothing", choices=("nothing", "empty_cache", "clear_cublas"))
a = p.parse_args()
digest, stats = torch_program(a.program, a.gib, a.slack_gib, 1)
import torch  # noqa: E402

first = digest()
try:
    if a.then == "empty_cache":
        torch.cuda.empty_cache()
    elif a.then == "clear_cublas":
        torch._C._cuda_clearCublasWorkspaces()
    later = [digest() for _ in range(3)]
    print(f"{a.program} {a.gib} GiB, then {a.then}: stable {all(d == first for d in later)} "
          f"{first[:8]} {[d[:8] for d in later]}", flush=True)
except Exception:
    print(f"{a.program} {a.gib} GiB, then {a.then}: FAILED", flush=True)
    traceback.print_exc(limit=1)
