"""restoreprof tui: watch a restore as it happens, or replay a saved trace.

    restoreprof tui -- CMD [ARG...]     trace a command from its start
    restoreprof tui -p PID              attach to a running process
    restoreprof tui --restore DIR       restore a checkpoint and trace the restore
    restoreprof tui TRACE               replay a trace saved by 'restoreprof trace -o'
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from restoreprof.errors import RestoreprofError, require_root

name = "tui"
help = "live view of a restore (or replay of a saved trace)"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("%(prog)s [-o OUTDIR] (-p PID | --restore DIR | TRACE | -- CMD [ARG ...])")
    parser.add_argument("-p", "--pid", type=int, help="trace this running process")
    parser.add_argument("--restore", type=Path, metavar="DIR",
                        help="restore this checkpoint folder and trace the restore")
    parser.add_argument("-o", "--output", type=Path, metavar="OUTDIR",
                        help="where the e key exports (default: ./restoreprof-tui-TIME)")
    parser.add_argument("-d", "--duration", type=float, metavar="SECONDS",
                        help="stop tracing after this long (live only)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="replay speed: 1 real time, 10 ten times faster, 0 all at once")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="TRACE | -- CMD",
                        help="a saved trace to replay, or -- and a command to run and trace")
    parser.set_defaults(_tui_parser=parser)


def run(args: argparse.Namespace) -> int:
    args = _normalize(args)
    feed = make_feed(args)
    from restoreprof.tui.app import RestoreprofApp

    app = RestoreprofApp(feed, export_dir=args.output)
    try:
        code = app.run()
    finally:
        feed.stop()
    if isinstance(app.feed_error, RestoreprofError):
        raise app.feed_error
    if app.feed_error is not None:
        raise RestoreprofError(f"the trace feed failed: {app.feed_error}",
                               hint="run 'restoreprof doctor' to check probes and permissions")
    return int(code or 0)


def _normalize(args: argparse.Namespace) -> argparse.Namespace:
    """Split the trailing words into a command (after --) or a trace file (before options)."""
    words = list(args.words)
    args.command_argv, args.trace = [], None
    if words and words[0] == "--":
        args.command_argv = words[1:]
        if not args.command_argv:
            raise RestoreprofError("nothing to run after --", hint="e.g. restoreprof tui -- CMD")
    elif words:
        args.trace = Path(words[0])
        if len(words) > 1:  # options written after the trace file: parse them too
            more = args._tui_parser.parse_args(words[1:])
            for key, value in vars(more).items():
                if key != "words" and value != args._tui_parser.get_default(key):
                    setattr(args, key, value)
            if more.words:
                raise RestoreprofError(f"unexpected arguments: {' '.join(more.words)}",
                                       hint="give one trace file, or put a command after --")
    chosen = [bool(args.command_argv), args.pid is not None, args.restore is not None,
              args.trace is not None]
    if sum(chosen) != 1:
        raise RestoreprofError(
            "say what to watch: one of -- CMD, -p PID, --restore DIR or a trace file",
            hint="e.g. restoreprof tui -- python3 restore.py, or restoreprof tui trace.json",
        )
    if args.speed < 0:
        raise RestoreprofError(f"--speed {args.speed} is negative",
                               hint="use 1 for real time, 10 for ten times faster, 0 for at once")
    return args


def make_feed(args: argparse.Namespace):
    """The feed for the parsed arguments: a replay of a file or a live session."""
    from restoreprof.tui.feed import LiveFeed, ReplayFeed
    from restoreprof.tui.pipeline import load_trace

    if args.trace is not None:
        if not args.trace.exists():
            raise RestoreprofError(f"no trace file at {args.trace}",
                                   hint="record one with 'restoreprof trace -o OUTDIR -- CMD'")
        return ReplayFeed(load_trace(args.trace), speed=args.speed)

    if args.pid is not None and not os.path.exists(f"/proc/{args.pid}"):
        raise RestoreprofError(f"no process with PID {args.pid}",
                               hint="check the PID with ps, or start it with -- CMD")
    if args.restore is not None and not args.restore.is_dir():
        raise RestoreprofError(f"no checkpoint folder at {args.restore}",
                               hint="make one with 'restoreprof checkpoint'")
    require_root("restoreprof tui (live tracing)")
    from restoreprof.probes.session import Target

    if args.pid is not None:
        target = Target(pid=args.pid)
    elif args.restore is not None:
        target = Target(restore_dir=args.restore)
    else:
        target = Target(command=args.command_argv)
    return LiveFeed(target, duration_s=args.duration)
