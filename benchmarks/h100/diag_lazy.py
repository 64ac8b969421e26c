"""Does CRIU's lazy page restore (userfaultfd) work for a CUDA process, and what does it save?
(session 5 experiment, one call)

    rp_python benchmarks/h100/diag_lazy.py [--layers 32] [--rounds 2]

A 16 GB Llama-shaped process under restoreprof exec is checkpointed and restored alternately the
usual way and with `criu lazy-pages` serving its memory (restore(..., criu_args=["--lazy-pages"])
with the daemon started on the restore's work folder first). Each restore: its wall time and
steps, the time until the daemon has sent every page, and the outputs checked.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    from restoreprof.checkpoint import checkpoint, restore
    from restoreprof.checkpoint.criu import criu_path
    from restoreprof.checkpoint.lock import default_work_dir
    from restoreprof.workloads.controller import HeldMemory

    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dir", type=Path, default=Path("/var/tmp/rp-lazy"))
    p.add_argument("--smoke-mib", type=int, default=0,
                   help="no torch: hold_memory with this much fake-driver GPU memory")
    args = p.parse_args()
    subprocess.run(["rm", "-rf", str(args.dir)])
    args.dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable, "-m",
           "restoreprof.workloads.llama_model", "--state", str(args.dir / "s"),
           "--layers", str(args.layers)]
    if args.smoke_mib:
        w = HeldMemory.start(args.dir / "s", 256, gpu_mib=args.smoke_mib, prefix=cmd[:5])
    else:
        w = HeldMemory.start_command(cmd, args.dir / "s", timeout_s=400)
    try:
        for n in range(2 * args.rounds):
            lazy = n % 2 == 1
            ck = args.dir / f"ck{n}"
            checkpoint(w.pid, ck)
            work = default_work_dir(ck)
            work.mkdir(parents=True, exist_ok=True)
            daemon = None
            if lazy:
                daemon = subprocess.Popen([criu_path(), "lazy-pages", "-D", str(ck), "-W", str(work),
                                           "-o", "lazy-pages.log", "-v2"])
                deadline = time.monotonic() + 5
                while not (work / "lazy-pages.socket").exists() and time.monotonic() < deadline:
                    time.sleep(0.005)
            deadline = time.monotonic() + 30  # the killed process's zombie reaped (by init):
            while os.path.exists(f"/proc/{w.pid}") and time.monotonic() < deadline:  # not timed
                time.sleep(0.005)
            t = time.monotonic()
            if lazy and os.environ.get("RP_DIAG_STACK"):
                import faulthandler
                faulthandler.dump_traceback_later(float(os.environ["RP_DIAG_STACK"]), repeat=False)
            try:
                r = restore(ck, criu_args=["--lazy-pages"] if lazy else [])
            except Exception as exc:
                print(f"{'lazy ' if lazy else 'plain'} restore FAILED: {exc}", flush=True)
                if daemon:
                    daemon.kill()
                break
            wall = time.monotonic() - t
            done = ""
            if daemon:
                daemon.wait(timeout=60)
                done = f", every page sent after {time.monotonic() - t:.3f} s (rc {daemon.returncode})"
            t0 = min(s.start_ns for s in r.steps)
            print(f"{'lazy ' if lazy else 'plain'} restore {wall:.3f} s{done}: " + ", ".join(
                f"{s.name} {(s.start_ns - t0) / 1e9:.3f}+{s.seconds:.3f}" for s in r.steps)
                + f"; notes {r.notes}", flush=True)
            print(f"   verified {w.verify()}", flush=True)
            os.system(f"tail -2 {work}/lazy-pages.log 2>/dev/null")
            subprocess.run(["rm", "-rf", str(ck)])  # 16 GB each: the disk holds three
    finally:
        w.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
