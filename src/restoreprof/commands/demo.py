"""restoreprof demo: checkpoint a built-in workload, restore it under the profiler, verify it.

Without a GPU the workload holds about 1 GiB of distinctive host memory. With one it also holds
GPU memory, and the restore runs twice, side by side: plain (CRIU + the driver) and optimized
(the workload under the interception library, its GPU memory offloaded and reloaded).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from restoreprof.errors import RestoreprofError, require_root

name = "demo"
help = "checkpoint a built-in workload, restore it under the profiler, verify its data"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path("restoreprof-demo"),
                        help="where checkpoints and exports go (default ./restoreprof-demo)")
    parser.add_argument("--mib", type=int, default=1024, help="host memory to hold, MiB")
    parser.add_argument("--gpu-gib", type=float, default=4.0,
                        help="GPU memory to hold where there is a GPU, GiB (0: none)")
    parser.add_argument("--cpu", action="store_true", help="skip the GPU even where there is one")


def _cases(args: argparse.Namespace) -> list[tuple[str, list[str] | None, int]]:
    """(label, command prefix, GPU MiB) of each restore to run."""
    from restoreprof.cuda import driver
    from restoreprof.system.paths import shim_library_path

    gpu_mib = int(args.gpu_gib * 1024)
    if args.cpu or not gpu_mib or not driver.available():
        return [("cpu", None, 0)]
    cases = [("plain", None, gpu_mib)]
    if shim_library_path().exists():
        cases.append(("optimized", [sys.executable, "-m", "restoreprof", "exec", "--"], gpu_mib))
    else:
        print("demo: the interception library is not built; showing the plain restore only")
    return cases


def _run_case(label: str, prefix: list[str] | None, gpu_mib: int, mib: int, out: Path) -> dict:
    from restoreprof.analysis import analyze
    from restoreprof.checkpoint import checkpoint
    from restoreprof.exports import write_all
    from restoreprof.exports.report import summary
    from restoreprof.probes.session import Target, record
    from restoreprof.workloads.controller import HeldMemory

    work = out / label
    shutil.rmtree(work, ignore_errors=True)
    holding = f"{mib} MiB of host memory" + (f" and {gpu_mib / 1024:g} GiB on the GPU" if gpu_mib else "")
    print(f"\n== {label}: a process holding {holding}")
    workload = HeldMemory.start(work / "state", mib, gpu_mib, prefix=prefix)
    try:
        result = checkpoint(workload.pid, work / "checkpoint")
        size = sum(i["bytes"] for i in result.manifest.images)
        print(f"checkpointed PID {workload.pid}: {size / 1e9:.2f} GB of images in "
              f"{sum(s.seconds for s in result.steps):.2f} s")
        trace = record(Target(restore_dir=work / "checkpoint"))
        verified = workload.alive() and workload.verify()
        report = analyze(trace)
        write_all(trace, report, work / "trace")
        print(summary(report))
        print(f"data after restore: {'verified bit-exact' if verified else 'MISMATCH'}")
        print(f"exports: {work / 'trace'} (trace.json for Perfetto, flame.svg, speedscope.json, "
              "report.json)")
        return {"label": label, "verified": verified, "wall_ns": report["wall_ns"], "report": report}
    finally:
        workload.stop()


def run(args: argparse.Namespace) -> int:
    require_root("restoreprof demo")
    out = args.output.resolve()
    results = [_run_case(label, prefix, gpu_mib, args.mib if not gpu_mib else 64, out)
               for label, prefix, gpu_mib in _cases(args)]
    if len(results) > 1:
        plain, fast = results[0]["wall_ns"], results[-1]["wall_ns"]
        print(f"\nrestore wall time under the profiler: plain {plain / 1e9:.2f} s, optimized "
              f"{fast / 1e9:.2f} s ({plain / fast:.1f}x), measured now on this machine")
    if not all(r["verified"] for r in results):
        raise RestoreprofError("the restored data did not verify",
                               hint=f"see the traces and CRIU logs under {out}")
    return 0
