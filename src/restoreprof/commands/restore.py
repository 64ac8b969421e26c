"""restoreprof restore -D DIR: criu restore, then the driver's restore and unlock per CUDA process."""

from __future__ import annotations

import argparse
from pathlib import Path

from restoreprof.checkpoint import abort_restore, restore
from restoreprof.commands._args import accept_dash_values
from restoreprof.commands._output import add_quiet_flag, print_json, print_steps, step_progress
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import config

name = "restore"
help = "restore a checkpoint made by 'restoreprof checkpoint'"


def _gpu_map(values: list[str]) -> dict[str, str]:
    mapping = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise RestoreprofError(f"--gpu-map {value!r} is not OLD=NEW",
                                   hint="e.g. --gpu-map 0=1 or --gpu-map GPU-aaaa...=GPU-bbbb...")
        mapping[old] = new
    return mapping


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-D", "--dir", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--gpu-map", action="append", default=[], metavar="OLD=NEW",
                        help="restore GPU OLD's state on GPU NEW (index or UUID; repeatable)")
    parser.add_argument("--serial", action="store_true",
                        help="restore CUDA processes one after another (default: in parallel)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the image checksums (sizes are still checked)")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the GPU step: resume processes a failed restore left locked")
    parser.add_argument("--criu-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for criu restore (repeatable; "
                             "--criu-arg --tcp-established and --criu-arg=--tcp-established "
                             "both work)")
    accept_dash_values(parser, "--criu-arg")
    parser.add_argument("--abort", action="store_true",
                        help="kill what an interrupted restore of DIR left held, then exit")
    parser.add_argument("-o", "--work-dir", type=Path, metavar="WORKDIR",
                        help="where the restore writes CRIU's log, its PID file and its journal "
                             "(default /run/restoreprof/restores/<hash of DIR>); nothing is ever "
                             "written into DIR, which may be read-only")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_quiet_flag(parser)
    config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.abort:
        outcome = abort_restore(args.dir, args.work_dir)
        if args.json:
            print_json({"command": "restore", "abort": outcome}, "restore-abort")
        else:
            print(outcome)
        return 0
    settings = config.from_args(args)
    with step_progress(args, "restore"):
        result = restore(args.dir, gpu_map=_gpu_map(args.gpu_map), parallel=not args.serial,
                         verify=not args.no_verify, criu_args=args.criu_arg,
                         gpu_only=args.gpu_only, work_dir=args.work_dir, optimizer=settings)
    if args.json:
        print_json(result.to_dict(), "restore")
        return 0
    print(f"restored {len(result.pids)} processes (root PID {result.root_pid}, "
          f"{len(result.cuda_pids)} with CUDA) from {result.directory}")
    print_steps(result.steps)
    for note in result.notes:
        print(f"note: {note}")
    return 0
