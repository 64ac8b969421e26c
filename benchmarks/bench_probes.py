"""Measure what the eBPF profiler costs: run as root from the repository root.

    .venv/bin/python benchmarks/bench_probes.py [--quick] [--restore-gib 1]

Prints, with the machine it ran on:
  1. cost per probed CUDA call (a loop of 4-byte cuMemcpyHtoD_v2 on the fake libcuda,
     untraced and traced),
  2. time from TraceSession.start() to probes attached (goal <= 1 s),
  3. event rates sustained with no lost event (goal 200,000 events/s; paced 1-byte preads),
  4. overhead on the wall time of a CRIU restore of a process holding --restore-gib GiB
     (goal <= 2%), traced vs untraced, alternating, warm page cache, median of --runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import _bpf  # noqa: E402  (builds the C helpers under tests/programs)

from restoreprof.probes.resolve import cuda_symbols  # noqa: E402
from restoreprof.probes.session import Target, TraceSession  # noqa: E402
from restoreprof.system.paths import criu_path, libcuda_path  # noqa: E402


def traced_run(argv: list[str], env: dict | None = None) -> tuple[str, TraceSession, object]:
    """Run argv under a TraceSession; returns (its stdout, the session, the trace)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        saved = os.dup(1)
        os.dup2(out.fileno(), 1)   # the paused child inherits fd 1: capture what it prints
        try:
            old_env = dict(os.environ)
            os.environ.update(env or {})
            session = TraceSession(Target(command=argv))
            session.start()
            os.environ.clear()
            os.environ.update(old_env)
            while session.running():
                session.poll(50)
            trace = session.stop()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        return out.read(), session, trace


def bench_call_cost(calls: int) -> dict:
    env = {**os.environ, "RESTOREPROF_LIBCUDA": str(_bpf.fake_libcuda())}
    program = str(_bpf.cuda_calls())
    plain = [float(subprocess.run([program, "--loop", str(calls)], env=env, check=True,
                                  capture_output=True, text=True).stdout) for _ in range(3)]
    traced = []
    for _ in range(3):
        stdout, _session, trace = traced_run([program, "--loop", str(calls)],
                                             {"RESTOREPROF_LIBCUDA": env["RESTOREPROF_LIBCUDA"]})
        traced.append(float(stdout.strip().splitlines()[-1]))
        copies = sum(1 for e in trace.events if e.name == "cuMemcpyHtoD_v2")
        assert copies == calls, f"expected {calls} traced calls, got {copies}"
    return {"untraced_ns": min(plain), "traced_ns": min(traced),
            "cost_ns": min(traced) - min(plain)}


def bench_attach(runs: int, real_libcuda: bool = False) -> dict:
    """start() to attached, probing the fake libcuda or (real_libcuda) this machine's own,
    with the median of each part of the start-up (parts overlap: compile and GPU listing run
    on threads while the objects are resolved)."""
    saved = os.environ.pop("RESTOREPROF_LIBCUDA", None)
    if not real_libcuda:
        os.environ["RESTOREPROF_LIBCUDA"] = str(_bpf.fake_libcuda())
    try:
        sessions = [traced_run(["true"])[1] for _ in range(runs)]
    finally:
        os.environ.pop("RESTOREPROF_LIBCUDA", None)
        if saved is not None:
            os.environ["RESTOREPROF_LIBCUDA"] = saved
    times = [s.attach_s for s in sessions]
    parts = {k: statistics.median(s.start_timings.get(k, 0.0) for s in sessions)
             for k in sessions[0].start_timings}
    objects = sessions[0].probed_objects
    functions = sum(len(cuda_symbols(path)) for path in objects)
    return {"median_s": statistics.median(times), "max_s": max(times), "all_s": times,
            "parts": parts,
            "objects": f"{len(objects)} object(s), {functions} CUDA functions: "
                       + ", ".join(objects)}


def _machine_libcuda() -> str | None:
    saved = os.environ.pop("RESTOREPROF_LIBCUDA", None)
    try:
        return libcuda_path()
    finally:
        if saved is not None:
            os.environ["RESTOREPROF_LIBCUDA"] = saved


def print_attach(attach: dict, label: str) -> None:
    parts = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in attach["parts"].items())
    print(f"2. start to probes attached ({label}): median {attach['median_s']:.2f} s, "
          f"max {attach['max_s']:.2f} s, runs {[round(x, 2) for x in attach['all_s']]}\n"
          f"   median parts (s): {parts}\n   probed: {attach['objects']}")


def bench_event_rate(rates: list[int], seconds: float) -> list[dict]:
    data = Path(tempfile.mkdtemp()) / "data.bin"
    data.write_bytes(b"x" * 4096)
    results = []
    for rate in rates:
        stdout, _session, trace = traced_run([str(_bpf.readers()), str(data), "--rate",
                                              str(rate), "--seconds", str(seconds)])
        calls, elapsed = stdout.split()
        got = sum(1 for e in trace.events if e.name == "pread64" and e.path == str(data))
        results.append({"target_rate": rate, "achieved_rate": int(calls) / float(elapsed),
                        "calls": int(calls), "events": got, "lost": trace.meta.lost_events})
    shutil.rmtree(data.parent)
    return results


def bench_restore_overhead(gib: float, runs: int) -> dict:
    from restoreprof.workloads.controller import HeldMemory

    base = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    holder = HeldMemory.start(base / "state", int(gib * 1024))
    images = base / "images"
    images.mkdir()
    criu = criu_path()
    subprocess.run([criu, "dump", "-t", str(holder.pid), "-D", str(images), "-o", "d.log"],
                   check=True)
    # The timer wraps criu alone, the same way traced and untraced.
    timer = [sys.executable, "-c",
             "import subprocess,sys,time; t=time.monotonic_ns(); "
             "subprocess.run(sys.argv[1:], check=True); print(time.monotonic_ns()-t)",
             criu, "restore", "-D", str(images), "-o", "r.log", "--restore-detached"]

    def kill_restored() -> None:
        os.kill(holder.pid, 9)
        while os.path.exists(f"/proc/{holder.pid}"):
            time.sleep(0.01)

    plain, traced, lost = [], [], 0
    try:
        subprocess.run(timer, check=True, capture_output=True)   # warm the page cache
        kill_restored()
        for _ in range(runs):
            plain.append(int(subprocess.run(timer, check=True, capture_output=True,
                                            text=True).stdout) / 1e9)
            kill_restored()
            stdout, _session, trace = traced_run(timer)
            traced.append(int(stdout.strip().splitlines()[-1]) / 1e9)
            lost += trace.meta.lost_events
            kill_restored()
    finally:
        holder.stop()
        shutil.rmtree(base, ignore_errors=True)
    p, t = statistics.median(plain), statistics.median(traced)
    return {"gib": gib, "untraced_s": p, "traced_s": t, "overhead_pct": 100 * (t - p) / p,
            "runs": runs, "lost": lost, "untraced_all": plain, "traced_all": traced}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--restore-gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--attach-only", action="store_true",
                        help="only item 2, with the fake and (where present) the real libcuda")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs
    print(f"restoreprof probe benchmarks, {time.strftime('%Y-%m-%d')}, {socket.gethostname()}, "
          f"kernel {platform.release()}, {os.cpu_count()} CPUs")
    if args.attach_only:
        print_attach(bench_attach(args.runs), "fake libcuda")
        if _machine_libcuda():
            print_attach(bench_attach(args.runs, real_libcuda=True), "this machine's libcuda")
        return 0
    cost = bench_call_cost(20_000 if args.quick else 200_000)
    print(f"1. probed call (fake libcuda cuMemcpyHtoD_v2, 4 B): {cost['untraced_ns']:.0f} ns "
          f"untraced, {cost['traced_ns']:.0f} ns traced: +{cost['cost_ns']:.0f} ns per call")
    print_attach(bench_attach(3 if args.quick else 5), "fake libcuda")
    for r in bench_event_rate([100_000, 200_000, 300_000, 500_000], 1.0 if args.quick else 3.0):
        print(f"3. event rate: asked {r['target_rate']:,}/s, made {r['achieved_rate']:,.0f}/s, "
              f"{r['events']:,} of {r['calls']:,} events received, {r['lost']} lost")
    restore = bench_restore_overhead(args.restore_gib, runs)
    print(f"4. CRIU restore of {restore['gib']:g} GiB (warm cache, median of {runs}): "
          f"{restore['untraced_s']:.3f} s untraced, {restore['traced_s']:.3f} s traced: "
          f"{restore['overhead_pct']:+.1f}% ({restore['lost']} lost)")
    print(f"   untraced {[f'{x:.3f}' for x in restore['untraced_all']]}, "
          f"traced {[f'{x:.3f}' for x in restore['traced_all']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
