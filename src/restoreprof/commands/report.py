"""restoreprof report TRACE [-o OUTDIR]: print the summary of a saved trace, re-export it."""

from __future__ import annotations

import argparse
from pathlib import Path

from restoreprof.commands._output import print_json

name = "report"
help = "print the summary of a saved trace and write its exports again"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", type=Path, metavar="TRACE",
                        help="a trace file (OUTDIR/trace.rptrace) or the folder holding it")
    parser.add_argument("-o", "--output", type=Path, metavar="OUTDIR",
                        help="write trace.json, flame.*, speedscope.json, report.json here")
    parser.add_argument("--json", action="store_true", help="print report.json instead")


def run(args: argparse.Namespace) -> int:
    from restoreprof.analysis import analyze
    from restoreprof.exports import write_all
    from restoreprof.exports.report import summary
    from restoreprof.trace.model import Trace, find_trace_file

    path = find_trace_file(args.trace)
    trace = Trace.load(path)
    report = analyze(trace)
    if args.json:
        print_json(report, "report")
    else:
        print(summary(report))
    if args.output:
        paths = write_all(trace, report, args.output,
                          save_trace=args.output.resolve() != path.parent.resolve())
        if not args.json:
            print(f"\nwrote {', '.join(p.name for p in paths)} to {args.output}")
    return 0
