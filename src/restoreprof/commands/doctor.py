"""restoreprof doctor: a table of what this machine can do, each missing piece with its fix."""

from __future__ import annotations

import argparse
import textwrap

from restoreprof.commands._output import print_json
from restoreprof.doctor import diagnose, kernel_summary

name = "doctor"
help = "check what this machine can trace and restore, and how to fix what is missing"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")


def run(args: argparse.Namespace) -> int:
    report = diagnose()
    if args.json:
        print_json({"ready": report.ready, "system": kernel_summary(),
                    "checks": [c.to_dict() for c in report.checks], "gpus": report.gpus},
                   "doctor")
        return 0 if report.ready else 1
    print(f"restoreprof doctor: {kernel_summary()}")
    for check in report.checks:
        mark = {True: "ok", False: "MISSING" if check.required else "missing", None: "-"}[check.ok]
        print(f"  {check.name:<22} {mark:<8} {check.detail}")
        if check.ok is False and check.fix:
            # wrapped to 80 columns, as the rest of the table
            lines = textwrap.wrap(check.fix, 80 - 34) or [""]
            print(f"  {'':<22} {'fix:':<8} {lines[0]}")
            for line in lines[1:]:
                print(f"  {'':<22} {'':<8} {line}")
    verdict = "ready: tracing and restore can work" if report.ready else "NOT ready: fix the MISSING rows"
    print(verdict)
    return 0 if report.ready else 1
