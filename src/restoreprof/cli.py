"""restoreprof's command line: the sum of the subcommands in restoreprof.commands."""

from __future__ import annotations

import argparse
import sys

from restoreprof import __version__
from restoreprof.commands import COMMANDS
from restoreprof.errors import RestoreprofError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restoreprof",
        description="Profile and speed up GPU process restore (CRIU + CUDA checkpoint).",
    )
    parser.add_argument("--version", action="version", version=f"restoreprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.prepare_parser(p)
        p.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        if command.name not in ("run", "tune"):  # tuning trials never read the database
            from restoreprof.tuner import install_tuned_defaults

            install_tuned_defaults(getattr(args, "dir", None))
        return int(command.run(args) or 0)
    except RestoreprofError as exc:
        print(f"restoreprof {command.name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"restoreprof {command.name}: interrupted", file=sys.stderr)
        return 130
