"""Checkpoint and restore through restoreprof's commands: step times, data verified.

    python benchmarks/bench_checkpoint.py --gpu-gib 8              one CUDA process
    python benchmarks/bench_checkpoint.py --gpu-gib 4 --procs 4    a tree of 4, parallel vs serial
    python benchmarks/bench_checkpoint.py --host-mib 1024          CPU only (no GPU needed)

Each case: start the workload, `restoreprof checkpoint`, then `restoreprof restore` (warm page
cache, and cold with --cold), verify the data in every process, stop the tree, and for trees
restore again with --serial from the same images. Prints a table; --json FILE keeps the data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from restoreprof.checkpoint.gpu import POOL_PRELOAD_STEP, PRELOAD_STEP
from restoreprof.optimizer.pool import find_socket, pool_running
from restoreprof.workloads.controller import HeldMemory


def cli(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "restoreprof", *args, "--json"],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"restoreprof {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def step_seconds(result: dict, name: str) -> float:
    return sum((s["end_ns"] - s["start_ns"]) / 1e9 for s in result["steps"] if s["name"] == name)


def one_restore(images: Path, holders: list[HeldMemory], root: HeldMemory, *, serial: bool,
                cold: bool, env: dict | None = None) -> dict:
    if cold:
        drop_caches()
    start = time.monotonic()
    result = cli("restore", "-D", str(images), *(["--serial"] if serial else []), env=env)
    wall = time.monotonic() - start
    ok = all(h.verify() for h in holders)
    root.stop()
    for h in holders:
        h.stop()
    return {"wall_s": wall, "total_s": result["total_s"], "verified": ok,
            "verify_images_s": step_seconds(result, "verify images"),
            "verify_page_images_s": step_seconds(result, "verify page images"),  # during CRIU
            "criu_restore_s": step_seconds(result, "criu restore"),
            "gpu_restore_s": step_seconds(result, "GPU restore"),
            # the process's GPU memory back: adopted (preloaded during CRIU) or reloaded
            "gpu_reload_s": step_seconds(result, "GPU memory reload")
            + step_seconds(result, "GPU memory adopt"),
            "gpu_preload_s": step_seconds(result, PRELOAD_STEP)
            + step_seconds(result, POOL_PRELOAD_STEP),
            "preloaded_by": "pool" if step_seconds(result, POOL_PRELOAD_STEP) else
                            "restore" if step_seconds(result, PRELOAD_STEP) else None,
            "gpu_driver_restore_s": [round(step_seconds({"steps": [s]}, "GPU driver restore"), 3)
                                     for s in result["steps"] if s["name"] == "GPU driver restore"],
            "serial": serial, "cold": cold}


class WarmPool:
    """`restoreprof warm` running for the duration of a with block (serving once it says so)."""

    def __init__(self, env: dict) -> None:
        self.env = env

    def __enter__(self) -> WarmPool:
        # --no-auto-hold: repeats read the snapshot from the page cache, as the first one did
        # (a hot snapshot is bench_warm_limit.py's third way)
        self.proc = subprocess.Popen([sys.executable, "-m", "restoreprof", "warm",
                                      "--no-auto-hold"], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.banner = ""
        while not self.banner.rstrip().splitlines()[-1:] or \
                not self.banner.rstrip().splitlines()[-1].startswith("serving"):
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"restoreprof warm failed:\n{self.banner}")
            self.banner += line
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.banner += self.proc.communicate(timeout=60)[0]


def run_case(work: Path, host_mib: int, gpu_mib: int, procs: int, cold: bool, repeat: int,
             optimized: bool = False, preload: bool = True, pool: bool = False) -> dict:
    """optimized: the workload runs under 'restoreprof exec' (GPU memory offload, then preload
    and adopt, or with preload False, reload inside the process). pool: a warm pool
    (`restoreprof warm`) runs during the restores and preloads; without it, none may run."""
    if not pool and pool_running():
        raise SystemExit(f"a warm pool runs ({find_socket()}): stop it, or its preloads would "
                         "be measured as the restore's own")
    env = dict(os.environ, RESTOREPROF_PRELOAD=str(int(preload)))
    shutil.rmtree(work, ignore_errors=True)
    prefix = [sys.executable, "-m", "restoreprof", "exec", "--"] if optimized else None
    root = HeldMemory.start(work / "state", host_mib, gpu_mib, children=procs if procs > 1 else 0,
                            prefix=prefix)
    holders = root.children() if procs > 1 else [root]
    images = work / "images"
    ckpt = cli("checkpoint", "-p", str(root.pid), "-D", str(images))
    case = {"host_mib": host_mib, "gpu_mib": gpu_mib, "procs": procs, "optimized": optimized,
            "preload": preload,
            "images_bytes": ckpt["images_bytes"],
            "largest_images": sorted(((f.name, f.stat().st_size) for f in images.iterdir()),
                                     key=lambda item: -item[1])[:6],
            "checkpoint": {s["name"]: round((s["end_ns"] - s["start_ns"]) / 1e9, 3)
                           for s in ckpt["steps"]}, "restores": []}
    modes = [(False, False)] * repeat + ([(False, True)] if cold else [])
    if procs > 1:
        modes += [(True, False)] * repeat
    with WarmPool(env) if pool else contextlib.nullcontext() as warm:
        for serial, cold_cache in modes:
            case["restores"].append(one_restore(images, holders, root, serial=serial,
                                                cold=cold_cache, env=env))
    if warm:
        case["pool_log"] = warm.banner
    shutil.rmtree(work, ignore_errors=True)
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host-mib", type=int, default=64)
    parser.add_argument("--gpu-gib", type=float, default=0)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="also restore from a cold page cache")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-bench-ckpt"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    case = run_case(args.work, args.host_mib, int(args.gpu_gib * 1024), args.procs, args.cold,
                    args.repeat)
    print(f"\n{args.procs} process(es), host {args.host_mib} MiB, GPU {args.gpu_gib} GiB each; "
          f"images {case['images_bytes'] / 1e9:.2f} GB")
    print("checkpoint: " + ", ".join(f"{k} {v:.2f} s" for k, v in case["checkpoint"].items()))
    print(f"{'restore':<16} {'cache':<6} {'total s':>8} {'criu s':>7} {'gpu s':>7} "
          f"{'verify s':>8} {'wall s':>7}  data")
    for r in case["restores"]:
        mode = "serial" if r["serial"] else "parallel"
        print(f"{mode:<16} {'cold' if r['cold'] else 'warm':<6} {r['total_s']:>8.2f} "
              f"{r['criu_restore_s']:>7.2f} {r['gpu_restore_s']:>7.2f} {r['verify_images_s']:>8.2f} "
              f"{r['wall_s']:>7.2f}  {'OK' if r['verified'] else 'MISMATCH'}")
    if args.json:
        args.json.write_text(json.dumps(case, indent=2))


if __name__ == "__main__":
    main()
