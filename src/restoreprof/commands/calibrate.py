"""restoreprof calibrate: measure this machine's ceilings and cache them for the analysis.

Measures H2D and D2H from pinned and pageable memory (where a GPU exists), a one-thread host
memcpy, and the read bandwidth of the disk that holds the checkpoints (page cache bypassed).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from restoreprof.commands._output import StepProgress, add_quiet_flag, print_json, progress_wanted
from restoreprof.errors import RestoreprofError

name = "calibrate"
help = "measure this machine's copy and disk ceilings (cached per machine and GPU)"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-D", "--dir", type=Path, default=Path("/var/tmp"),
                        help="a folder on the disk that holds checkpoints (default /var/tmp)")
    parser.add_argument("--disk-mib", type=int, default=512, metavar="MIB",
                        help="size of the file read to measure the disk (default 512)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU copy measurements")
    parser.add_argument("--show", action="store_true",
                        help="print the cached ceilings of this machine, measure nothing")
    parser.add_argument("--json", action="store_true", help="print the ceilings as JSON")
    add_quiet_flag(parser)


def _print(ceilings) -> None:
    rows = [("H2D pinned", ceilings.htod_pinned_gbps), ("H2D pageable", ceilings.htod_pageable_gbps),
            ("D2H pinned", ceilings.dtoh_pinned_gbps), ("D2H pageable", ceilings.dtoh_pageable_gbps),
            ("host memcpy (1 thread)", ceilings.host_memcpy_gbps),
            (f"disk read ({ceilings.disk_path or '?'})", ceilings.disk_read_gbps)]
    gpu = ceilings.gpu.get("name", "no GPU") if ceilings.gpu else "no GPU"
    print(f"ceilings of {ceilings.hostname} ({gpu}), {ceilings.source} {ceilings.measured_at}")
    for label, value in rows:
        print(f"  {label[:50]:<50} {f'{value:.2f} GB/s' if value else 'not measured':>14}")
    for note in ceilings.notes:
        print(f"  note: {note}")


def run(args: argparse.Namespace) -> int:
    from restoreprof.analysis import ceilings as ceilings_module
    from restoreprof.probes.session import gpus

    if args.show:
        ceilings = ceilings_module.load(gpus=gpus())
    else:
        if not args.dir.is_dir():   # never create it: the ceiling would be some other disk's
            raise RestoreprofError(f"-D {args.dir}: no such folder",
                                   hint="pass -D a folder on the disk that holds the "
                                        "checkpoints (it is not created)")
        if not args.quiet and not args.json:
            print("measuring host memcpy, disk read" + ("" if args.no_gpu else " and GPU copies")
                  + "...", flush=True)
        found = gpus()
        with contextlib.ExitStack() as stack:
            progress = (stack.enter_context(StepProgress("calibrate"))
                        if progress_wanted(args) else None)
            ceilings = ceilings_module.measure(
                args.dir, gpu=not args.no_gpu, gpu_info=found[0] if found else None,
                disk_bytes=args.disk_mib << 20,
                progress=(lambda text: progress.describe(f"calibrate: {text}")) if progress
                else None)
        path = ceilings_module.save(ceilings)
        if not args.json:
            print(f"cached in {path}")
    if args.json:
        print_json(ceilings.to_dict(), "ceilings")
    else:
        _print(ceilings)
    return 0
