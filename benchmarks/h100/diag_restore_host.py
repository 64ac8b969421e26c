"""Where CRIU's restore of a 16 GB Llama-shaped process spends its time, and whether
transparent huge pages change it (session 5 diagnostics, one call).

    rp_python benchmarks/h100/diag_restore_host.py --out DIR [--layers 32]

Checkpoints the process (restoreprof exec, no pool), restores it with THP as the machine has it,
checkpoints and restores it again with THP 'always', and copies CRIU's restore logs to DIR.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def main() -> int:
    from restoreprof.checkpoint import checkpoint, restore
    from restoreprof.checkpoint.lock import default_work_dir
    from restoreprof.workloads.controller import HeldMemory

    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--dir", type=Path, default=Path("/var/tmp/rp-diag2"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    subprocess.run(["rm", "-rf", str(args.dir)])
    args.dir.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable, "-m",
           "restoreprof.workloads.llama_model", "--state", str(args.dir / "s"),
           "--layers", str(args.layers)]
    w = HeldMemory.start_command(cmd, args.dir / "s", timeout_s=400)
    original = THP.read_text().split("[")[1].split("]")[0]
    try:
        for round_, thp in enumerate((original, "always", original, "always")):
            THP.write_text(thp)
            ck = args.dir / f"ck{round_}"
            t = time.monotonic()
            checkpoint(w.pid, ck)
            print(f"round {round_} THP {thp}: checkpoint {time.monotonic() - t:.2f} s", flush=True)
            subprocess.run(["sync"])
            t = time.monotonic()
            r = restore(ck)
            print(f"   restore {time.monotonic() - t:.2f} s: " + ", ".join(
                f"{s.name} {s.seconds:.3f}" for s in r.steps), flush=True)
            log = default_work_dir(ck) / "criu-restore.log"
            shutil.copy(log, args.out / f"criu-restore-{round_}-{thp}.log")
            anon_huge = sum(int(line.split()[1]) for line in
                            Path(f"/proc/{w.pid}/smaps").read_text().splitlines()
                            if line.startswith("AnonHugePages:"))
            print(f"   AnonHugePages after: {anon_huge // 1024} MiB; verified {w.verify()}",
                  flush=True)
            shutil.rmtree(ck)
    finally:
        THP.write_text(original)
        w.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
