"""Real framework programs restored plain and optimized, side by side in one run (issue 13).

    source benchmarks/h100/env.sh        # on the GPU machine: the bundle, restoreprof installed
    python3 benchmarks/bench_frameworks.py [--gib 8] [--programs torch cupy ...] [--repeat 1]
                                           [--modes plain exec pool] [--json FILE]

For each program (src/restoreprof/workloads/frameworks.py: PyTorch with its default caching
allocator, with expandable segments, with cudaMallocAsync, a PyTorch CUDA graph, CuPy, JAX;
each holding GIB of weights plus 2 GiB its allocator keeps cached) and each mode:

    plain  the program as it is; `restoreprof checkpoint` (driver checkpoint + criu dump) and
           `restoreprof restore` (criu restore + the driver's restore), CRIU reading every page
           itself (RESTOREPROF_LAZY_PAGES=0; --plain-lazy: restoreprof's page server serves it)
    exec   the program under `restoreprof exec`: its cached blocks freed and its GPU memory
           offloaded at checkpoint, preloaded during CRIU and adopted at restore
    pool   the same checkpoint as exec, restored with a warm pool (`restoreprof warm`) running

the program is started, its output digest taken (forward pass + a fingerprint of every weight,
computed on the GPU), checkpointed, restored --repeat times, and after every restore asked for
the digest again: "outputs" says whether it matched. A program that fails or is refused (JAX:
driver 580 cannot restore it after CRIU, so `restoreprof checkpoint` refuses it and it keeps
running) is reported with its error and the next one runs.

Printed per program and mode: the restore's own time (restoreprof restore's steps, median over
--repeat) and its wall clock, the speed-up against plain, the GPU stage (after CRIU: the
driver's restore + the adoption or reload) and its rate over the GPU memory it brought back,
the snapshot against what the framework's allocator had allocated at checkpoint
(torch.cuda.memory_allocated(); the issue asks for at most 1.05x), and what the checkpoint left
to the driver. Runs as root. About 60 to 80 s per program at 8 GiB on an H200 (JAX is refused in
seconds): all six should fit one 10-minute call with --repeat 1; --programs picks a subset.
On the CPU machine, `--programs cuda-python --gib 0.05` runs the harness on the fake driver
(RESTOREPROF_LIBCUDA=tests/fakecuda/build/libcuda.so.1, LD_LIBRARY_PATH=its folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from restoreprof.workloads.controller import HeldMemory
from restoreprof.workloads.frameworks import BASELINE, PROGRAMS

MODES = ("plain", "exec", "pool")
EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]


class Failed(Exception):
    """One program's run failed; `stage` says where (refused: the checkpoint said no)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


def cli(*args: str, env: dict | None = None, timeout_s: float = 300) -> dict:
    stage = args[0]
    try:
        out = subprocess.run([sys.executable, "-m", "restoreprof", *args, "--json"],
                             capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise Failed(stage, f"restoreprof {args[0]} did not finish in {timeout_s:.0f} s") from None
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        refused = stage == "checkpoint" and any(
            s in out.stderr for s in ("refus", "nothing was checkpointed"))
        raise Failed("refused" if refused else stage,
                     " | ".join(lines[-3:]) or f"exit {out.returncode}")
    return json.loads(out.stdout)


def step_s(result: dict, *names: str) -> float:
    return sum((s["end_ns"] - s["start_ns"]) / 1e9 for s in result["steps"] if s["name"] in names)


def kill_pids(pids: list[int]) -> None:
    """Our workload's processes (restored or not) by PID; wait until they are reaped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def manifest_pids(images: Path, fallback: int) -> list[int]:
    try:
        return [p["pid"] for p in json.loads((images / "restoreprof.json").read_text())["processes"]]
    except (OSError, ValueError, KeyError):
        return [fallback]


def one_restore(images: Path, w: HeldMemory, env: dict, timeout_s: float) -> dict:
    start = time.monotonic()
    try:
        result = cli("restore", "-D", str(images), env=env, timeout_s=timeout_s)
        wall_s = time.monotonic() - start
        try:
            matched = w.verify(timeout_s=120)
        except Exception as exc:  # the restored process died (JAX: a segfault in libcuda)
            raise Failed("after restore", str(exc)) from None
    finally:
        kill_pids(manifest_pids(images, w.pid))
    return {"total_s": result["total_s"], "wall_s": wall_s, "matched": matched,
            "criu_s": step_s(result, "criu restore"),
            "gpu_stage_s": step_s(result, "GPU driver restore", "GPU unlock", "GPU memory adopt",
                                  "GPU memory reload"),
            # the snapshot's way back to the GPU: the preload (during CRIU) or the reload
            "copy_s": step_s(result, "GPU memory preload (overlapped)",
                             "GPU memory preload (warm pool, overlapped)", "GPU memory reload"),
            "notes": result.get("notes", []),
            # each step's span, s from the first step's start: where the GPU stage waits
            "steps": _spans(result["steps"])}


def _spans(steps: list[dict]) -> list[str]:
    zero = min((s["start_ns"] for s in steps), default=0)
    return [f"{s['name']} {(s['start_ns'] - zero) / 1e9:.3f}-{(s['end_ns'] - zero) / 1e9:.3f}"
            for s in steps]


class WarmPool:
    def __init__(self, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "restoreprof", "warm"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = ""
        deadline = time.monotonic() + 120
        while not self.log.rstrip().splitlines()[-1:] or \
                not self.log.rstrip().splitlines()[-1].startswith("serving"):
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.close()
                raise Failed("warm pool", self.log.strip()[-300:] or "did not start")
            self.log += line

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=60)


def run_modes(program: str, args: argparse.Namespace) -> list[dict]:
    """One program: a plain run, and an optimized one restored without and with a warm pool."""
    rows = []
    for optimized in (False, True):
        modes = [m for m in (("exec", "pool") if optimized else ("plain",)) if m in args.modes]
        if not modes:
            continue
        env = dict(os.environ)
        work = args.work / f"{program}-{'optimized' if optimized else 'plain'}"
        shutil.rmtree(work, ignore_errors=True)
        images = work / "images"
        cmd = [*(EXEC if optimized else []), sys.executable, "-m", "restoreprof.workloads.frameworks",
               "--program", program, "--gib", str(args.gib), "--slack-gib", str(args.slack_gib),
               "--state", str(work / "state")]
        w = None
        current = "+".join(modes)  # the mode a failure belongs to (all of them, until a restore)
        try:
            try:
                w = HeldMemory.start_command(cmd, work / "state", env=env,
                                             timeout_s=args.start_timeout)
            except Exception as exc:
                raise Failed("start", str(exc).strip().splitlines()[-1][:300]) from None
            stats = json.loads((work / "state" / "stats.json").read_text())
            ckpt = cli("checkpoint", "-p", str(w.pid), "-D", str(images), env=env,
                       timeout_s=args.timeout)
            record = ckpt["processes"][0]
            for mode in modes:
                current = mode
                pool = WarmPool(env) if mode == "pool" else None
                try:
                    # plain is CRIU + the driver as they come: CRIU reads every page itself
                    restore_env = {**env, "RESTOREPROF_LAZY_PAGES": "0"} \
                        if mode == "plain" and not args.plain_lazy else env
                    restores = [one_restore(images, w, restore_env, args.timeout)
                                for _ in range(args.repeat)]
                finally:
                    if pool:
                        pool.close()
                rows.append({"program": program, "mode": mode, "stats": stats,
                             "images_bytes": ckpt["images_bytes"], "offload": record["offload"],
                             "coverage": record.get("coverage"), "restores": restores,
                             "checkpoint_steps": {s["name"]: round((s["end_ns"] - s["start_ns"])
                                                                   / 1e9, 3) for s in ckpt["steps"]}})
        except Failed as exc:
            rows.append({"program": program, "mode": current, "failed": str(exc),
                         "stage": exc.stage})
        finally:
            if w is not None:
                kill_pids(manifest_pids(images, w.pid) if images.exists() else [w.pid])
            shutil.rmtree(work, ignore_errors=True)
    return rows


def gpu_bytes(row: dict) -> int | None:
    """What the GPU stage brought back: the snapshot (optimized) and what the driver copied
    (NVML at checkpoint, after the offload); None when neither is known."""
    coverage = row.get("coverage") or {}
    left = coverage.get("left_to_driver_bytes")
    saved = (row.get("offload") or {}).get("bytes", 0)
    if left is None and not saved:  # no NVML: at least what the allocator held
        return row["stats"].get("reserved_bytes")
    return (left or 0) + saved


def _gb(n: int | None) -> str:
    return f"{n / 1e9:.2f}" if n is not None else "?"


def print_table(rows: list[dict]) -> None:
    plain = {r["program"]: statistics.median(x["total_s"] for x in r["restores"])
             for r in rows if r["mode"] == "plain" and "restores" in r}
    print(f"\n{'program':<17}{'mode':<6}{'restore s':>10}{'wall s':>8}{'speed-up':>9}"
          f"{'GPU stage s':>12}{'GPU GB/s':>9}{'copy GB/s':>10}{'saved GB':>9}{'alloc GB':>9}"
          f"{'saved/alloc':>12}"
          f"{'driver GB':>10}  outputs")
    for r in rows:
        if "failed" in r:
            verdict = "REFUSED" if r["stage"] == "refused" else "FAILED at"
            print(f"{r['program']:<17}{r['mode']:<6}  {verdict} {r['failed']}"[:240])
            continue
        total = statistics.median(x["total_s"] for x in r["restores"])
        wall = statistics.median(x["wall_s"] for x in r["restores"])
        stage = statistics.median(x["gpu_stage_s"] for x in r["restores"])
        moved = gpu_bytes(r)
        rate = f"{moved / stage / 1e9:.1f}" if moved and stage else "-"
        copy_s = statistics.median(x.get("copy_s", 0) for x in r["restores"])
        saved_bytes = (r.get("offload") or {}).get("bytes")
        copy = f"{saved_bytes / copy_s / 1e9:.1f}" if saved_bytes and copy_s else "-"
        speedup = f"{plain[r['program']] / total:.1f}x" if r["program"] in plain and total else "-"
        allocated = r["stats"].get("allocated_bytes")
        offload = r.get("offload") or {}
        # the program's data: blocks it had freed inside its segments are saved as zeros
        saved = offload["bytes"] - offload.get("free_bytes", 0) if "bytes" in offload else None
        ratio = (f"{saved / allocated:.3f}x" + (" ok" if saved <= 1.05 * allocated else " >1.05")
                 if saved and allocated else "-")
        left = (r.get("coverage") or {}).get("left_to_driver_bytes")
        matched = all(x["matched"] for x in r["restores"])
        notes = sum(len(x["notes"]) for x in r["restores"])
        print(f"{r['program']:<17}{r['mode']:<6}{total:>10.2f}{wall:>8.2f}{speedup:>9}"
              f"{stage:>12.2f}{rate:>9}{copy:>10}{_gb(saved) if saved else '-':>9}{_gb(allocated):>9}"
              f"{ratio:>12}{_gb(left):>10}  "
              f"{'matched' if matched else 'MISMATCH'}{f' ({notes} fallback notes)' if notes else ''}")
    print("\nrestore s: restoreprof restore's own steps (median); speed-up: plain / this; GPU stage:"
          " driver restore + unlock + adopt/reload, after CRIU; GPU GB/s: saved + driver GB over"
          " it; copy GB/s: the snapshot over the preload (during CRIU) or reload that brought it to the"
          " GPU; saved: the snapshot's data (blocks freed inside segments, saved as zeros, left"
          " out); alloc: the allocator's allocated bytes at checkpoint; driver:"
          " left to the driver's checkpoint (NVML, after the offload)")
    for r in rows:
        kinds = (r.get("coverage") or {}).get("offloaded")
        if r["mode"] == "exec" and kinds is not None:
            text = ", ".join(f"{k} {v['count']} x {_gb(v['bytes'])} GB" for k, v in kinds.items())
            print(f"  {r['program']}: offloaded {text or 'nothing'}; release "
                  f"{(r.get('offload') or {}).get('release', '?')}, freed "
                  f"{_gb((r.get('offload') or {}).get('released_bytes'))} GB of cached blocks; "
                  f"free blocks inside segments {(r.get('offload') or {}).get('free_blocks', '?')}"
                  f", {_gb((r.get('offload') or {}).get('free_bytes', 0))} GB saved as zeros")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", nargs="+", choices=(*PROGRAMS, BASELINE),
                        default=list(PROGRAMS),
                        help=f"default: all but {BASELINE} (no framework; runs on the fake driver)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--gib", type=float, default=8.0, help="weights per program, GiB")
    parser.add_argument("--slack-gib", type=float, default=2.0,
                        help="freed blocks each program's allocator keeps cached, GiB")
    parser.add_argument("--repeat", type=int, default=1, help="restores per mode")
    parser.add_argument("--plain-lazy", action="store_true",
                        help="plain restores served by restoreprof's lazy page server too")
    parser.add_argument("--timeout", type=float, default=240, help="per checkpoint or restore, s")
    parser.add_argument("--start-timeout", type=float, default=240)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-bench-frameworks"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for program in args.programs:
        start = time.monotonic()
        try:
            program_rows = run_modes(program, args)
        except Exception as exc:  # a bug here must not cost the other programs their run
            program_rows = [{"program": program, "mode": "-", "failed": f"bench: {exc!r}",
                             "stage": "bench"}]
        rows += program_rows
        for r in program_rows:
            print(json.dumps(r), flush=True)
        print(f"# {program}: {time.monotonic() - start:.0f} s", flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
