"""restoreprof's command line: the sum of the subcommands in restoreprof.commands.

The script contract: exit codes by kind (errors.EXIT_CODES, listed in --help), errors as JSON
under --json, and no Python traceback for any input (RESTOREPROF_DEBUG=1 shows one).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from restoreprof import __version__
from restoreprof.commands import MODULES, load, load_all
from restoreprof.errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    RestoreprofError,
    exit_codes_epilog,
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given argv naming a command, with only that command's part (so only its
    module is imported: a restore starts 0.1 s sooner), else with every command's."""
    parser = argparse.ArgumentParser(
        prog="restoreprof",
        description="Profile and speed up GPU process restore (CRIU + CUDA checkpoint).",
        epilog=exit_codes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"restoreprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = argv[0] if argv and argv[0] in MODULES else None
    one = load(named) if named else None
    for command in [one] if one else load_all():
        p = sub.add_parser(command.name, help=command.help, description=command.help,
                           epilog=exit_codes_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.prepare_parser(p)
        p.set_defaults(_command=command)
    return parser


# Commands that hold processes or GPU state part way: SIGTERM must unwind them as Ctrl-C does.
_SIGTERM_UNWINDS = ("checkpoint", "restore", "run", "demo")


def _sigterm_as_interrupt(signum, frame) -> None:
    # SIGTERM takes the same way out as Ctrl-C: what is running is put back, or named.
    raise KeyboardInterrupt


def _report(command: str, args: argparse.Namespace, error: RestoreprofError) -> int:
    if getattr(args, "json", False):
        from restoreprof.commands._output import print_json

        print_json({"command": command, "error": error.to_dict()}, "error")
    print(f"restoreprof {command}: error: {error}", file=sys.stderr)
    return error.exit_code


def _quiet_broken_pipe() -> None:
    """The reader went away (`restoreprof ... | head`): stop writing, without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """The command line (argv None: the program's, as restoreprof.launcher calls it, after a
    warm pool had the chance to take a restore)."""
    as_program = argv is None
    try:
        return _main(sys.argv[1:] if argv is None else argv, as_program)
    finally:
        if as_program:  # the work is done: an interrupt at exit must not turn it into a failure
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _main(argv: list[str], as_program: bool) -> int:
    if argv and argv[0] in _SIGTERM_UNWINDS and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # before anything started
        print("restoreprof: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        if command.name not in ("run", "tune"):  # tuning trials never read the database
            from restoreprof.tuner import install_tuned_defaults

            install_tuned_defaults(getattr(args, "dir", None))
        code = int(command.run(args) or 0)
        sys.stdout.flush()
        return code
    except RestoreprofError as exc:
        return _report(command.name, args, exc)
    except KeyboardInterrupt:
        print(f"restoreprof {command.name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_FAILURE
    except OSError as exc:  # a folder or file the command was pointed at, seen too late
        if os.environ.get("RESTOREPROF_DEBUG") == "1":
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        return _report(command.name, args, RestoreprofError(
            f"{exc.strerror or exc}{where}", exit_code=EXIT_ENVIRONMENT,
            hint="check the path, its permissions and free space; RESTOREPROF_DEBUG=1 shows where"))
    except Exception as exc:  # a bug: said plainly to a user; a caller in Python gets it raised
        if not as_program or os.environ.get("RESTOREPROF_DEBUG") == "1":
            raise
        return _report(command.name, args, RestoreprofError(
            f"internal error: {type(exc).__name__}: {exc}", exit_code=EXIT_FAILURE,
            hint="please report it with the output of RESTOREPROF_DEBUG=1 restoreprof ..."))
