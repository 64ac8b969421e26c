"""restoreprof's command line: the sum of the subcommands in restoreprof.commands."""

from __future__ import annotations

import argparse
import sys

from restoreprof import __version__
from restoreprof.commands import MODULES, load, load_all
from restoreprof.errors import RestoreprofError


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given argv naming a command, with only that command's part (so only its
    module is imported: a restore starts 0.1 s sooner), else with every command's."""
    parser = argparse.ArgumentParser(
        prog="restoreprof",
        description="Profile and speed up GPU process restore (CRIU + CUDA checkpoint).",
    )
    parser.add_argument("--version", action="version", version=f"restoreprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = argv[0] if argv and argv[0] in MODULES else None
    one = load(named) if named else None
    for command in [one] if one else load_all():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.prepare_parser(p)
        p.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["restore"]:  # a running warm pool restores, already imported and warm
        from restoreprof.commands.pooled_restore import restore_through_pool

        code = restore_through_pool(argv[1:])
        if code is not None:
            return code
    parser = build_parser(argv)
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
