"""Warm restore at the physical limit (issue 14): a Llama-3-8B-shaped bf16 process (16.06 GB of
weights) restored by `restoreprof restore`, three ways side by side in one run:

  plain   CRIU + the driver's checkpoint/restore (the process started without restoreprof)
  pool    the process under 'restoreprof exec', a warm pool running: the GPU memory comes from
          the snapshot in the page cache, and the pool carries out the whole restore
  hot     the same, the snapshot held hot by the pool (pinned memory, DMA straight from there)

    source benchmarks/h100/env.sh
    rp_python benchmarks/bench_warm_limit.py [--repeat 5] [--plain-repeat 2] [--layers 32]
                                             [--lazy on|off|both] [--unchecked]
                                             [--variant NAME=VAR=VALUE ...]
                                             [--client NAME=COMMAND ...]

Each restore is timed by wall clock around the whole command (`restoreprof restore -D DIR
--json`, process start to exit), then the restored process is asked to recompute its digest
(greedy tokens of a fixed prompt, the last logits, every weight's bit-pattern sum: see
restoreprof.workloads.llama_model) and must match the one it had before the checkpoint; then it
is killed and the same checkpoint restored again. Prints one line per restore, a table of
median and range (min-max) per way, and `restoreprof trace --restore` of one more hot restore
(its phases), all as they can be pasted into benchmarks/RESULTS.md; --json writes everything.

Fits one 10-minute device call on the H200 with --plain-repeat 2 (plain checkpoint about 30 s,
each plain restore about 15 s; the rest about 2 minutes). Needs root, CRIU ($RESTOREPROF_CRIU),
about 45 GB of disk under --work and 40 GB of host memory besides the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from restoreprof.optimizer.pool import hold_through_pool, pool_running
from restoreprof.system.warm_socket import describe_pool
from restoreprof.workloads.controller import HeldMemory

CLI = [sys.executable, "-m", "restoreprof"]


def _threads_now(label: str, pid: int) -> str:
    """Each thread of pid: its state, where it waits in the kernel (a hang's diagnosis)."""
    lines = [f"{label} PID {pid}:"]
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            comm = (task / "comm").read_text().strip()
            stack = " <- ".join(line.split()[-1] for line in
                                (task / "stack").read_text().splitlines()[:6])
        except OSError:
            continue
        lines.append(f"  {task.name:>8} {comm:<16} {stat} {stack}")
    return "\n".join(lines)


def cli_json(*args: str, env: dict | None = None, timeout_s: float = 900,
             watch: dict[str, int] | None = None, cli: list[str] = CLI) -> dict:
    try:
        out = subprocess.run([*cli, *args, "--json"], capture_output=True, text=True,
                             env={**os.environ, **(env or {})}, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        seen = "\n".join(_threads_now(label, pid) for label, pid in (watch or {}).items())
        if POOL_PID:  # its Python stacks, into its log (restoreprof warm registers SIGUSR1)
            os.kill(POOL_PID[0], signal.SIGUSR1)
            time.sleep(1.0)
        raise SystemExit(f"restoreprof {' '.join(args)}: no answer in {timeout_s:.0f} s\n{seen}\n"
                         f"its stderr: {(exc.stderr or b'')[-3000:]!r}") from exc
    if out.returncode != 0:
        raise SystemExit(f"restoreprof {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def start_model(work: Path, layers: int, optimized: bool, smoke_mib: int = 0) -> HeldMemory:
    prefix = [*CLI, "exec", "--"] if optimized else []
    if smoke_mib:  # no PyTorch: a holder of GPU memory, for trying the script anywhere
        (work / "state").mkdir(parents=True, exist_ok=True)
        (work / "state" / "model.txt").write_text(f"hold_memory --gpu-mib {smoke_mib}\n")
        return HeldMemory.start(work / "state", 16, smoke_mib, prefix=prefix)
    cmd = [*prefix, sys.executable, "-m",
           "restoreprof.workloads.llama_model", "--layers", str(layers),
           "--state", str(work / "state")]
    return HeldMemory.start_command(cmd, work / "state", timeout_s=300)


def span_s(result: dict) -> float:
    return (max(s["end_ns"] for s in result["steps"]) -
            min(s["start_ns"] for s in result["steps"])) / 1e9


def step_s(result: dict, name: str) -> float:
    return sum((s["end_ns"] - s["start_ns"]) / 1e9 for s in result["steps"] if s["name"] == name)


VARIANTS: dict[str, dict[str, str]] = {}  # --variant: a way's suffix -> its environment
CLIENTS: dict[str, list[str]] = {}  # --client: a way's suffix -> the restore command it runs
POOL_PID: list[int] = []  # the warm pool's, while one runs (for a hang's diagnosis)
RESTORE_TIMEOUT_S = [120.0]  # --restore-timeout


def restore_once(images: Path, model: HeldMemory, way: str) -> dict:
    """One restore; plain (CRIU + the driver as they come) and a way ending in "-nolazy" run
    with RESTOREPROF_LAZY_PAGES=0 (CRIU reads every page of host memory itself); one ending in
    "-unchecked" with --no-verify (a diagnostic: what the image check costs the restore)."""
    served_before = _hot_served()
    start_ns = time.monotonic_ns()  # the steps' clock: the command's start and answer are
    start = time.monotonic()        # the time before its first step and after its last
    unchecked = ["--no-verify"] if way.endswith("-unchecked") else []
    env = {"RESTOREPROF_LAZY_PAGES": "0"} if way == "plain" or way.endswith("-nolazy") else {}
    suffix = way.rpartition("-")[2]  # a --variant's or --client's NAME
    env.update(VARIANTS.get(suffix, {}))
    watch = {"the program": model.pid, **({"the pool": POOL_PID[0]} if POOL_PID else {})}
    client = CLIENTS.get(suffix, CLI)
    result = cli_json("restore", "-D", str(images), *unchecked, env=env,
                      timeout_s=RESTORE_TIMEOUT_S[0], watch=watch, cli=client)
    wall = time.monotonic() - start
    end_ns = time.monotonic_ns()
    keep = os.environ.get("RP_KEEP_CRIU_LOGS")  # a folder: CRIU's log of each restore, kept
    if keep:
        from restoreprof.checkpoint.lock import default_work_dir

        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(default_work_dir(images) / "criu-restore.log",
                    Path(keep) / f"criu-restore-{way}-{time.monotonic_ns()}.log")
    verified = model.verify()
    hot = _hot_served() > served_before
    sent = _last_send() if hot else {}
    model.stop()
    first = min(s["start_ns"] for s in result["steps"])
    timeline = [(s["name"], round((s["start_ns"] - first) / 1e9, 3),
                 round((s["end_ns"] - first) / 1e9, 3)) for s in result["steps"]]
    start_s = (first - start_ns) / 1e9
    answer_s = (end_ns - max(s["end_ns"] for s in result["steps"])) / 1e9
    row = {"way": way, "wall_s": round(wall, 3), "steps_total_s": round(result["total_s"], 3),
           "start_s": round(start_s, 3), "answer_s": round(answer_s, 3),
           "timeline": timeline,
           "verified": verified, "served_hot": hot,
           "steps": {s["name"]: round((s["end_ns"] - s["start_ns"]) / 1e9, 3)
                     for s in result["steps"]}, "notes": result["notes"], "hot_send_s": sent}
    print(f"{way:<12} wall {wall:6.3f} s  steps {result['total_s']:6.3f} s  "
          f"criu {step_s(result, 'criu restore'):6.3f}  "
          f"lazy wait {step_s(result, 'lazy pages (after CRIU)'):6.3f}  "
          f"driver {step_s(result, 'GPU driver restore'):6.3f}  "
          f"start {start_s:5.3f}  answer {answer_s:5.3f}  "
          f"data {'OK' if verified else 'MISMATCH'}"
          f"{'  (hot: ' + json.dumps(sent) + ')' if hot else ''}"
          f"{'  notes: ' + '; '.join(result['notes']) if result['notes'] else ''}", flush=True)
    if os.environ.get("RP_TIMELINE"):  # each step's start and end, s from the first step's start
        print("    " + ", ".join(f"{n} {a:.3f}-{b:.3f}" for n, a, b in timeline), flush=True)
    return row


def _last_send() -> dict:
    """The pool's own account of its last send from a hot copy: make memory, copy, export."""
    described = describe_pool() or {}
    snapshots = (described.get("hot") or {}).get("snapshots") or []
    return snapshots[0].get("last_send_s", {}) if snapshots else {}


def _hot_served() -> int:
    described = describe_pool() or {}
    return sum(s.get("served", 0) for s in ((described.get("hot") or {}).get("snapshots") or []))


class Pool:
    """`restoreprof warm` for the duration of a with block."""

    def __init__(self, *flags: str) -> None:
        self.flags = flags

    def __enter__(self) -> Pool:
        self.proc = subprocess.Popen([*CLI, "warm", *self.flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.log = ""
        while not self.log.rstrip().splitlines()[-1:] or \
                not self.log.rstrip().splitlines()[-1].startswith("serving"):
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"restoreprof warm failed:\n{self.log}")
            self.log += line
        POOL_PID[:] = [self.proc.pid]
        return self

    def __exit__(self, kind, *exc) -> None:
        POOL_PID.clear()
        self.proc.terminate()
        try:
            self.log += self.proc.communicate(timeout=120 if kind is None else 10)[0]
        except subprocess.TimeoutExpired:  # a pool stuck in a restore: its log is what matters
            self.proc.kill()
            self.log += self.proc.communicate()[0]
        if kind is not None:  # the run stops here: what the pool said is part of the diagnosis
            print(f"pool log:\n{self.log.strip()}", flush=True)


def ways_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["way"] for r in rows))


def summary(rows: list[dict]) -> list[str]:
    lines = ["| way | runs | wall s, median | wall s, min-max | steps s, median | "
             "start s, median | answer s, median | data |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for way in ways_of(rows):
        mine = [r for r in rows if r["way"] == way]
        if not mine:
            continue
        walls = [r["wall_s"] for r in mine]
        data = "all OK" if all(r["verified"] for r in mine) else "MISMATCH"
        if way.startswith("hot") and not all(r["served_hot"] for r in mine):
            data += " (not all served hot!)"
        lines.append(f"| {way} | {len(mine)} | {statistics.median(walls):.3f} | "
                     f"{min(walls):.3f}-{max(walls):.3f} | "
                     f"{statistics.median(r['steps_total_s'] for r in mine):.3f} | "
                     f"{statistics.median(r['start_s'] for r in mine):.3f} | "
                     f"{statistics.median(r['answer_s'] for r in mine):.3f} | {data} |")
    return lines


def step_medians(rows: list[dict]) -> list[str]:
    """Each step's median seconds per way (steps overlap: see each restore's start times)."""
    ways = ways_of(rows)
    names = list(dict.fromkeys(n for r in rows for n in r["steps"]))
    lines = [f"| step | {' | '.join(ways)} |", "| --- |" + " --- |" * len(ways)]
    for name in names:
        cells = []
        for way in ways:
            values = [r["steps"][name] for r in rows if r["way"] == way and name in r["steps"]]
            cells.append(f"{statistics.median(values):.3f}" if values else "-")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def trace_hot(images: Path, model: HeldMemory, out: Path) -> dict:
    """One more hot restore, traced: the report's phases and where the time went."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    run = subprocess.run([*CLI, "trace", "--restore", str(images), "-o", str(out)],
                         capture_output=True, text=True)
    wall = time.monotonic() - start
    if run.returncode != 0:
        print(f"trace failed:\n{run.stderr[-3000:]}")
        return {}
    verified = model.verify()
    model.stop()
    report = json.loads((out / "report.json").read_text())
    print(f"\ntraced hot restore: {wall:.2f} s with tracing (data "
          f"{'OK' if verified else 'MISMATCH'}); traced wall {report['wall_ns'] / 1e9:.3f} s")
    print(f"  {'phase':<34} {'span s':>7} {'busy s':>7} {'own s':>7} {'GB':>6} {'GB/s busy':>9}")
    for p in report.get("phases", []):
        print(f"  {p['name']:<34} {(p['end_ns'] - p['start_ns']) / 1e9:>7.3f} "
              f"{p['busy_ns'] / 1e9:>7.3f} {p['exclusive_ns'] / 1e9:>7.3f} "
              f"{p['bytes'] / 1e9:>6.2f} {p['gbps']:>9.1f}")
    print("  critical path: " + ", ".join(f"{c['phase']} {c['ns'] / 1e9:.3f} s ({c['share']:.0%})"
                                         for c in report.get("critical_path", [])))
    for c in report.get("critical_path", []):
        for part in c.get("parts", []):  # other, by the restore's steps
            print(f"    {c['phase']}: {part['step']:<48} {part['ns'] / 1e9:.3f} s")
    print("  restore path (each instant to the step on it):")
    for entry in report.get("restore_path") or []:
        print(f"    {entry['step']:<52} {entry['ns'] / 1e9:.3f} s ({entry['share']:.0%})")
    print(f"  bottleneck: {json.dumps(report.get('bottleneck'))[:600]}")
    return {"wall_s": wall, "verified": verified, "wall_ns": report["wall_ns"],
            "phases": report.get("phases", []), "critical_path": report.get("critical_path"),
            "restore_path": report.get("restore_path"),
            "bottleneck": report.get("bottleneck")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="32: 16.06 GB of weights")
    parser.add_argument("--repeat", type=int, default=5, help="restores of each fast way")
    parser.add_argument("--plain-repeat", type=int, default=2,
                        help="plain restores (about 15 s each at 16 GB; 0: none)")
    parser.add_argument("--hold-mib", type=int, default=40960,
                        help="the pool's hot budget (room for the snapshot)")
    parser.add_argument("--no-trace", action="store_true")
    parser.add_argument("--lazy", choices=("on", "off", "both"), default="on",
                        help="the fast ways with restoreprof's lazy page server (on), without it "
                             "(off: ways named -nolazy), or both alternated")
    parser.add_argument("--unchecked", action="store_true",
                        help="alternate each fast way with the same without the image check "
                             "(--no-verify; ways named -unchecked): a diagnostic of its cost")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VAR=VALUE",
                        help="alternate each fast way with the same run with VAR=VALUE in its "
                             "environment (ways named -NAME), e.g. lt16=RESTOREPROF_LAZY_THREADS=16")
    parser.add_argument("--client", action="append", default=[], metavar="NAME=COMMAND",
                        help="alternate each fast way with the same restore run by another "
                             "restoreprof command (ways named -NAME; a --variant of the same NAME "
                             "adds its variable), e.g. "
                             "venv=/opt/rp/bin/restoreprof: restoreprof installed in its own "
                             "environment, whose interpreter starts without the program's")
    parser.add_argument("--smoke-mib", type=int, default=0,
                        help="instead of the model, a holder of this much GPU memory (tries the "
                             "script without PyTorch, e.g. on the fake driver)")
    parser.add_argument("--restore-timeout", type=float, default=120.0,
                        help="s a restore may take before the run stops with every thread's "
                             "state and the pool's Python stacks")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-warm-limit"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    RESTORE_TIMEOUT_S[0] = args.restore_timeout
    if pool_running():
        raise SystemExit("a warm pool runs already: stop it, so that plain runs are plain")
    shutil.rmtree(args.work, ignore_errors=True)
    rows: list[dict] = []
    began = time.monotonic()
    lazy_ways = {"on": [""], "off": ["-nolazy"], "both": ["", "-nolazy"]}[args.lazy]
    if args.unchecked:
        lazy_ways += ["-unchecked"]
    for variant in args.variant:
        name, _, assignment = variant.partition("=")
        var, _, value = assignment.partition("=")
        if not (name and var) or "-" in name:
            raise SystemExit(f"--variant {variant}: NAME=VAR=VALUE, NAME without '-'")
        VARIANTS[name] = {var: value}
        lazy_ways.append(f"-{name}")
    for client in args.client:  # a variant's NAME too: its restores run this command
        name, _, command = client.partition("=")
        if not (name and command) or "-" in name:
            raise SystemExit(f"--client {client}: NAME=COMMAND, NAME without '-'")
        CLIENTS[name] = command.split()
        if f"-{name}" not in lazy_ways:
            lazy_ways.append(f"-{name}")

    if args.plain_repeat:
        model = start_model(args.work / "plain", args.layers, False, args.smoke_mib)
        print(f"plain model ready in {time.monotonic() - began:.1f} s: "
              f"{(args.work / 'plain' / 'state' / 'model.txt').read_text().strip()}", flush=True)
        images = args.work / "plain" / "images"
        ckpt = cli_json("checkpoint", "-p", str(model.pid), "-D", str(images))
        print(f"plain checkpoint: {ckpt['images_bytes'] / 1e9:.2f} GB of images in "
              f"{span_s(ckpt):.1f} s", flush=True)
        plain_ways = ["plain", "plain-lazy"] if args.lazy == "both" else ["plain"]
        for n in range(args.plain_repeat * len(plain_ways)):
            rows.append(restore_once(images, model, plain_ways[n % len(plain_ways)]))
        shutil.rmtree(images)  # the disk holds one checkpoint of this size at a time

    work = args.work / "fast"
    model = start_model(work, args.layers, True, args.smoke_mib)
    traced = {}
    with Pool("--hold-mib", str(args.hold_mib), "--no-auto-hold") as pool:
        images = work / "images"
        ckpt = cli_json("checkpoint", "-p", str(model.pid), "-D", str(images))
        print(f"optimized checkpoint: {ckpt['images_bytes'] / 1e9:.2f} GB in "
              f"{span_s(ckpt):.1f} s", flush=True)
        for n in range(args.repeat * len(lazy_ways)):  # alternated, so that drift hits both
            rows.append(restore_once(images, model, "pool" + lazy_ways[n % len(lazy_ways)]))
        snapshots = sorted(images.glob("gpu-*.snap"))
        for snap in snapshots:
            t0 = time.monotonic()
            held = hold_through_pool(snap)
            print(f"held hot: {snap.name}, {held['bytes'] / 1e9:.2f} GB pinned and checked in "
                  f"{time.monotonic() - t0:.1f} s", flush=True)
        for n in range(args.repeat * len(lazy_ways)):
            rows.append(restore_once(images, model, "hot" + lazy_ways[n % len(lazy_ways)]))
        if not args.no_trace:
            traced = trace_hot(images, model, work / "trace")
    print("\n".join(["", f"pool log:\n{pool.log.strip()}", "", *summary(rows), "",
                     "median seconds of each step (they overlap):", *step_medians(rows)]))
    print(f"\nbenchmark wall clock {time.monotonic() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "trace": traced, "pool_log": pool.log},
                                        indent=2))
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
