"""restoreprof tui: watch a restore as it happens, or replay a saved trace.

    restoreprof tui -- CMD [ARG...]     trace a command from its start
    restoreprof tui -p PID              attach to a running process
    restoreprof tui --restore DIR       restore a checkpoint and trace the restore
    restoreprof tui TRACE               replay a trace saved by 'restoreprof trace -o'

With -- CMD, the command's stdout and stderr go to OUTDIR/command.log (its stdin is
/dev/null): a program writing to the terminal would draw over the view, and one reading it
would take the view's keys. The header says where the log is.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from restoreprof.errors import RestoreprofError, require_root

name = "tui"
help = "live view of a restore (or replay of a saved trace)"

COMMAND_LOG = "command.log"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("%(prog)s [-o OUTDIR] (-p PID | --restore DIR | TRACE | -- CMD [ARG ...])")
    parser.add_argument("-p", "--pid", type=int, help="trace this running process")
    parser.add_argument("--restore", type=Path, metavar="DIR",
                        help="restore this checkpoint folder and trace the restore")
    parser.add_argument("-o", "--output", type=Path, metavar="OUTDIR",
                        help="where the e key exports and, with -- CMD, where the command's "
                             "output goes (default: ./restoreprof-tui-TIME)")
    parser.add_argument("-d", "--duration", type=float, metavar="SECONDS",
                        help="stop tracing after this long (live only)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="replay speed: 1 real time, 10 ten times faster, 0 all at once")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="TRACE | -- CMD",
                        help="a saved trace to replay (the folder 'restoreprof trace -o' wrote, "
                             "or its trace.rptrace), or -- and a command to run and trace")
    parser.set_defaults(_tui_parser=parser)


def run(args: argparse.Namespace) -> int:
    args = _normalize(args)
    feed = make_feed(args)
    from restoreprof.tui.app import RestoreprofApp

    log = getattr(args, "command_log", None)
    note = f"the command's output (stdout, stderr) goes to {log}" if log else ""
    app = RestoreprofApp(feed, export_dir=args.output, header_note=note)
    try:
        code = app.run()
    finally:
        feed.stop()
    if log:
        print(f"the command's output is in {log}", file=sys.stderr)
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
            hint="e.g. restoreprof tui -- python3 restore.py, or restoreprof tui OUTDIR (a folder "
                 "written by 'restoreprof trace -o OUTDIR')",
        )
    if args.speed < 0:
        raise RestoreprofError(f"--speed {args.speed} is negative",
                               hint="use 1 for real time, 10 for ten times faster, 0 for at once")
    return args


def make_feed(args: argparse.Namespace):
    """The feed for the parsed arguments: a replay of a file or a live session."""
    from restoreprof.tui.feed import LiveFeed, ReplayFeed
    from restoreprof.tui.pipeline import load_trace

    if args.trace is not None:   # what 'restoreprof report' takes: a folder or its trace file
        from restoreprof.trace.model import find_trace_file

        return ReplayFeed(load_trace(find_trace_file(args.trace)), speed=args.speed)

    if args.pid is not None and not os.path.exists(f"/proc/{args.pid}"):
        raise RestoreprofError(f"no process with PID {args.pid}",
                               hint="check the PID with ps, or start it with -- CMD")
    if args.restore is not None and not args.restore.is_dir():
        raise RestoreprofError(f"no checkpoint folder at {args.restore}",
                               hint="make one with 'restoreprof checkpoint'")
    require_root("restoreprof tui (live tracing)")
    from restoreprof.probes.session import Target

    if args.pid is not None:
        return LiveFeed(Target(pid=args.pid), duration_s=args.duration)
    if args.restore is not None:
        return LiveFeed(Target(restore_dir=args.restore), duration_s=args.duration)
    command = args.command_argv
    _check_runnable(command[0])
    if args.output is None:
        args.output = Path(f"restoreprof-tui-{time.strftime('%Y%m%d-%H%M%S')}")
    args.output.mkdir(parents=True, exist_ok=True)
    args.command_log = (args.output / COMMAND_LOG).resolve()
    return LiveFeed(Target(command=output_to_log(command, args.command_log)),
                    label="command: " + " ".join(command), command=command,
                    duration_s=args.duration)


def output_to_log(command: list[str], log: Path) -> list[str]:
    """command run by sh with stdout and stderr to log and stdin from /dev/null.

    sh execs the command, so the traced PID (forked and held by the session before the exec)
    is the command's own.
    """
    script = f'exec "$@" <"/dev/null" >{shlex.quote(str(log))} 2>&1'
    return ["/bin/sh", "-c", script, "sh", *command]


def _check_runnable(program: str) -> None:
    """The error the session would give, before sh hides it in the log."""
    path = shutil.which(program) if os.sep not in program else program
    if not path or not os.access(path, os.X_OK) or os.path.isdir(path):
        raise RestoreprofError(f"cannot run {program}: not found or not executable",
                               hint="check the command name (and PATH)")
