"""restoreprof trace: record a restore (or any process) with eBPF and write its profile.

    restoreprof trace --restore DIR -o OUTDIR     restore a checkpoint, tracing the restore
    restoreprof trace -p PID [-d SECONDS] -o OUTDIR
    restoreprof trace -o OUTDIR -- CMD [ARG ...]
    restoreprof trace --cgroup PATH | --comm NAME | --all [-d SECONDS] -o OUTDIR
        (processes others start: a restore by podman, CRI-O or containerd, until Ctrl-C)

Ctrl-C stops tracing and writes everything. OUTDIR receives trace.rptrace (replay it with
'restoreprof report' or 'restoreprof tui'), trace.json (Perfetto), flame.folded, flame.svg,
speedscope.json and report.json; the summary is printed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from restoreprof.errors import RestoreprofError

name = "trace"
help = "trace a restore, a process or a command with eBPF; write timeline, flame graph, report"

FORMAT_CHOICES = ("all", "perfetto", "flamegraph", "speedscope", "report")


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("%(prog)s [-p PID | --restore DIR | --cgroup PATH | --comm NAME | --all | "
                    "-- CMD [ARG ...]] [-d SECONDS] -o OUTDIR")
    parser.add_argument("-p", "--pid", type=int, help="trace this running process and its children")
    parser.add_argument("--restore", type=Path, metavar="DIR",
                        help="run 'restoreprof restore -D DIR' and trace it")
    parser.add_argument("--cgroup", metavar="PATH",
                        help="trace every process in this cgroup (v2) and below it, and their "
                             "children: a container's, e.g. as /proc/PID/cgroup names it")
    parser.add_argument("--comm", metavar="NAME",
                        help="trace processes with this command name (e.g. criu) and their "
                             "children")
    parser.add_argument("--all", action="store_true",
                        help="trace every process (the busiest choice)")
    parser.add_argument("-d", "--duration", type=float, metavar="SECONDS",
                        help="stop after this many seconds (default: until the target ends)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                        help="folder for the trace and its exports")
    parser.add_argument("--format", action="append", choices=FORMAT_CHOICES, metavar="FORMAT",
                        help="perfetto, flamegraph, speedscope, report or all (default; "
                             "repeatable); report.json and the trace file are always written")
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD",
                        help="a command to start and trace from its first instruction")


def _target(args: argparse.Namespace):
    from restoreprof.probes.session import Target

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    chosen = [args.pid is not None, args.restore is not None, bool(command),
              args.cgroup is not None, args.comm is not None, args.all]
    if sum(chosen) != 1:
        raise RestoreprofError("say what to trace: exactly one of -p PID, --restore DIR, "
                               "--cgroup PATH, --comm NAME, --all or -- CMD",
                               hint="e.g. restoreprof trace --restore /ckpt -o out, or "
                                    "restoreprof trace --comm criu -o out")
    if args.cgroup is not None or args.comm is not None or args.all:
        from restoreprof.probes import filters

        chosen_filter = (filters.cgroup_filter(args.cgroup) if args.cgroup is not None
                         else filters.comm_filter(args.comm) if args.comm is not None
                         else filters.AllFilter())
        return Target(filter=chosen_filter)
    if args.pid is not None:
        return Target(pid=args.pid)
    if args.restore is not None:
        return Target(restore_dir=args.restore)
    return Target(command=command)


def formats(args: argparse.Namespace) -> tuple[str, ...]:
    from restoreprof.exports import FORMATS

    chosen = args.format or ["all"]
    return FORMATS if "all" in chosen else tuple(chosen)


def restore_coverage(directory: Path) -> list[dict]:
    """What the traced restore's checkpoint recorded of each CUDA process's GPU memory:
    offloaded per allocation kind, left to the driver (see checkpoint.gpu.coverage_all)."""
    from restoreprof.checkpoint.manifest import Manifest

    try:
        manifest = Manifest.load(directory)
    except RestoreprofError:
        return []  # the restore itself said what is wrong with the folder
    return [{"pid": p.pid, "comm": p.comm, **p.coverage}
            for p in manifest.processes if p.cuda and p.coverage]


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.ebpf:
        from restoreprof.probes import bpf_program, uprobe_multi

        print(bpf_program.render(uprobe_multi=uprobe_multi.supported()))
        return 0
    target = _target(args)
    if args.output.exists() and not args.output.is_dir():   # before tracing, not after
        raise RestoreprofError(f"-o {args.output} is a file, not a folder for the exports",
                               hint="pass -o a new or existing folder")
    from restoreprof.analysis import analyze
    from restoreprof.exports import write_all
    from restoreprof.exports.report import summary
    from restoreprof.probes.session import TraceSession

    session = TraceSession(target, duration_s=args.duration)
    what = target.describe()
    limit = f" for {args.duration:g} s" if args.duration else ""
    print(f"Tracing reads, CUDA calls and process tree of {what}{limit}... Ctrl-C to end.",
          flush=True)
    # SIGTERM stops tracing like Ctrl-C, so that a supervisor still gets the files.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        session.start()
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.2f}"
                          for k, v in session.start_timings.items())
        print(f"probes attached in {session.attach_s:.2f} s "
              f"({len(session.probed_objects)} CUDA objects probed; {parts})", file=sys.stderr)
        try:
            while session.running():
                session.poll(100)
        except KeyboardInterrupt:
            print("stopping...", file=sys.stderr)
        trace = session.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if target.restore_dir is not None:
        trace.meta.coverage = restore_coverage(target.restore_dir)
    report = analyze(trace)
    paths = write_all(trace, report, args.output, formats=formats(args))
    print(summary(report))
    print(f"\nwrote {', '.join(p.name for p in paths)} to {args.output}")
    # a script sees the traced command's failure as it would without the profiler
    status = trace.meta.shell_exit_status
    if status:
        print(f"the traced command exited with status {status}", file=sys.stderr)
    return status or 0
