"""Session 5 diagnostics on the GPU machine (one call): where a 16 GB Llama process's host memory
and checkpoint time go, and how much of PyTorch's reserved memory is free inside live segments.

    rp_python benchmarks/h100/diag_session5.py [--layers 32]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def smaps(pid: int) -> dict:
    """Anonymous and private-dirty KiB per mapping name, and totals."""
    per, totals, name = Counter(), Counter(), "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            name = head[5] if len(head) > 5 else "[anon]"
            continue
        if head[0] in ("Rss:", "Anonymous:", "Private_Dirty:", "AnonHugePages:", "Locked:"):
            totals[head[0]] += int(head[1])
            if head[0] == "Private_Dirty:":
                per[name] += int(head[1])
    return {"totals_mib": {k: v // 1024 for k, v in totals.items()},
            "top_private_dirty_mib": [(n, v // 1024) for n, v in per.most_common(12)]}


def main() -> int:
    from restoreprof.checkpoint import checkpoint, restore
    from restoreprof.workloads.controller import HeldMemory

    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--dir", type=Path, default=Path("/var/tmp/rp-diag"))
    args = p.parse_args()
    subprocess.run(["rm", "-rf", str(args.dir)])
    args.dir.mkdir(parents=True)
    for f in ("/sys/kernel/mm/transparent_hugepage/enabled",
              "/sys/kernel/mm/transparent_hugepage/defrag",
              "/proc/sys/vm/unprivileged_userfaultfd"):
        try:
            print(f, Path(f).read_text().strip())
        except OSError as e:
            print(f, e)
    for model in ("_llama_weights.py", "llama"):
        cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable]
        if model == "llama":
            cmd += ["-m", "restoreprof.workloads.llama_model", "--state", str(args.dir / "s2"),
                    "--layers", str(args.layers)]
        else:
            cmd += [str(REPO / "benchmarks" / model), "--state", str(args.dir / "s1"),
                    "--layers", str(args.layers)]
        state = args.dir / ("s2" if model == "llama" else "s1")
        try:
            w = HeldMemory.start_command(cmd, state, timeout_s=400)
        except Exception as e:
            print(model, "did not start:", e)
            continue
        print(f"== {model}: PID {w.pid}")
        print("smaps before:", json.dumps(smaps(w.pid)))
        ck = args.dir / f"ck-{model}"
        t = time.monotonic()
        c = checkpoint(w.pid, ck)
        print(f"checkpoint (process stopped) {time.monotonic() - t:.2f} s")
        for s in c.steps:
            print(f"   {s.name:32s} {s.seconds:7.3f}")
        rec = c.manifest.processes[0].offload or {}
        print("offload:", {k: rec.get(k) for k in ("bytes", "seconds", "written_bytes",
                                                    "released_bytes", "release")})
        sizes = Counter()
        for f in ck.iterdir():
            sizes["pages" if f.name.startswith("pages-") else
                  "gpu" if f.name.startswith("gpu-") else "other"] += f.stat().st_size
        print("images MB:", {k: v // 10**6 for k, v in sizes.items()})
        t = time.monotonic()
        r = restore(ck)
        print(f"restore {time.monotonic() - t:.2f} s")
        for s in r.steps:
            print(f"   {s.name:40s} {s.seconds:7.3f}")
        print("smaps after:", json.dumps(smaps(w.pid)))
        print("verified:", w.verify())
        w.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
