"""GPU check of issue 13 items 1 and 2: memory a program manages itself (VMM, stream-ordered)
through 'restoreprof exec' + 'restoreprof checkpoint' + 'restoreprof restore', verified.

    python benchmarks/gpu_app_memory.py [--unit-mib 1024] [--modes plain reload preload]

The workload (restoreprof.workloads.app_memory, cuda-python) holds 7 units of VMM memory (four
handles; one mapped twice, one at an offset, one read-only mapping, one written and unmapped)
and 3.5 units of stream-ordered memory (the default pool and a pool it creates, plus a freed
block that must not be saved); with the default unit of 1 GiB, 10.5 GiB. For each mode it is
checkpointed and restored through the CLI, then checks its bytes (SHA-256 of every mapping and
allocation), that every handle still works (properties, a retain by address that gives back
the same handle value, access flags, the twice-mapped handle still one memory), and frees
everything ("teardown"). plain: started without restoreprof (CRIU + the driver alone);
reload / preload: under 'restoreprof exec', the memory reloaded in the process or preloaded by
restoreprof during CRIU and adopted. Last, a run that exports a handle must be refused at
checkpoint with the reason, and keep running with its data intact. Then the allocation path's
cost per call on this driver (bench_alloc_path.py). Prints one table; about 2 to 4 minutes
with the default unit on an H100/H200.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from restoreprof.workloads.controller import HeldMemory

HERE = Path(__file__).resolve().parent


def cli(*args: str, env: dict | None = None) -> tuple[int, dict | str]:
    out = subprocess.run([sys.executable, "-m", "restoreprof", *args, "--json"],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return out.returncode, out.stderr.strip()
    return 0, json.loads(out.stdout)


def seconds(result: dict, name: str) -> float:
    return sum((s["end_ns"] - s["start_ns"]) / 1e9 for s in result["steps"] if s["name"] == name)


def teardown(w: HeldMemory, timeout_s: float = 120) -> str:
    done = w.state_dir / "teardown"
    done.unlink(missing_ok=True)
    os.kill(w.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return done.read_text().strip() if done.exists() else "no answer"


def start(work: Path, unit_mib: int, exec_: bool, *extra: str) -> HeldMemory:
    prefix = [sys.executable, "-m", "restoreprof", "exec", "--"] if exec_ else []
    cmd = [*prefix, sys.executable, "-m", "restoreprof.workloads.app_memory", "--state",
           str(work / "state"), "--unit-mib", str(unit_mib), *extra]
    return HeldMemory.start_command(cmd, work / "state", timeout_s=600)


def run_mode(work: Path, unit_mib: int, mode: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, RESTOREPROF_PRELOAD=str(int(mode == "preload")))
    w = start(work, unit_mib, mode != "plain")
    row = {"mode": mode}
    try:
        rc, ckpt = cli("checkpoint", "-p", str(w.pid), "-D", str(work / "images"), env=env)
        if rc:
            return {**row, "error": f"checkpoint failed: {ckpt}"}
        offload = next((p["offload"] for p in ckpt["processes"] if p.get("offload")), None)
        row["checkpoint_s"] = round((max(s["end_ns"] for s in ckpt["steps"])
                                     - min(s["start_ns"] for s in ckpt["steps"])) / 1e9, 3)
        row["offloaded_gb"] = round(offload["bytes"] / 1e9, 3) if offload else 0.0
        row["images_gb"] = round(ckpt.get("images_bytes", 0) / 1e9, 3)
        start_s = time.monotonic()
        rc, restored = cli("restore", "-D", str(work / "images"), env=env)
        row["restore_wall_s"] = round(time.monotonic() - start_s, 3)
        if rc:
            return {**row, "error": f"restore failed: {restored}"}
        row["restore_s"] = round(restored["total_s"], 3)
        row["criu_s"] = round(seconds(restored, "criu restore"), 3)
        row["driver_s"] = round(seconds(restored, "GPU driver restore"), 3)
        row["back_s"] = round(seconds(restored, "GPU memory adopt")
                              + seconds(restored, "GPU memory reload"), 3)
        row["notes"] = restored.get("notes", [])
        row["verified"] = w.verify(timeout_s=600)
        row["verified_text"] = (w.state_dir / "verified").read_text().strip()[:200]
        row["teardown"] = teardown(w)
        return row
    finally:
        w.stop()


def refusal(work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    w = start(work, 64, True, "--export")
    try:
        rc, out = cli("checkpoint", "-p", str(w.pid), "-D", str(work / "images"))
        return {"refused": rc != 0, "reason": out if rc else "checkpoint succeeded (wrong)",
                "alive": w.alive(), "verified": w.alive() and w.verify(timeout_s=120),
                "teardown": teardown(w) if w.alive() else "gone"}
    finally:
        w.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit-mib", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", choices=["plain", "reload", "preload"],
                        default=["plain", "reload", "preload"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-gpu-app-memory"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        rows.append(run_mode(args.work, args.unit_mib, mode))
        print(json.dumps(rows[-1]), flush=True)
    refused = refusal(args.work)
    print(json.dumps(refused), flush=True)
    held_gib = 10.5 * args.unit_mib / 1024
    print(f"\napplication-managed memory: {held_gib:.3f} GiB (7 units VMM, 3.5 stream-ordered)")
    print(f"{'mode':<8} {'ckpt s':>7} {'offl GB':>8} {'imgs GB':>8} {'restore s':>9} "
          f"{'criu s':>7} {'driver s':>8} {'back s':>7}  data / handles / teardown")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:<8} ERROR {r['error'][:300]}")
            continue
        print(f"{r['mode']:<8} {r['checkpoint_s']:>7.2f} {r['offloaded_gb']:>8.2f} "
              f"{r['images_gb']:>8.2f} {r['restore_s']:>9.2f} {r['criu_s']:>7.2f} "
              f"{r['driver_s']:>8.2f} {r['back_s']:>7.2f}  "
              f"{'OK' if r['verified'] else 'MISMATCH ' + r['verified_text']} / {r['teardown']}"
              + (f"  notes: {r['notes']}" if r["notes"] else ""))
    print(f"exported handle: {'refused' if refused['refused'] else 'NOT REFUSED'}; "
          f"process {'alive' if refused['alive'] else 'GONE'}, data "
          f"{'intact' if refused['verified'] else 'DIFFERENT'}, teardown {refused['teardown']}")
    print(f"  reason: {str(refused['reason'])[:400]}")
    print("\nallocation path on this driver:", flush=True)
    from restoreprof.system.paths import libcuda_path

    libcuda = libcuda_path() or "libcuda.so.1"
    subprocess.run([sys.executable, str(HERE / "bench_alloc_path.py"), "--driver", libcuda,
                    "--repeat", "3", "--iterations", "5000"], check=False)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "refusal": refused}, indent=2))
    ok = all(r.get("verified") and r.get("teardown") == "OK" for r in rows) and \
        refused["refused"] and refused["verified"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
