"""restoreprof checkpoint -p PID -D DIR: driver checkpoint of the CUDA processes, then criu dump."""

from __future__ import annotations

import argparse
from pathlib import Path

from restoreprof.checkpoint import checkpoint, recover_checkpoint
from restoreprof.checkpoint.gpu import coverage_summary
from restoreprof.commands._args import accept_dash_values
from restoreprof.commands._output import add_quiet_flag, print_json, print_steps, step_progress
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import config

name = "checkpoint"
help = "checkpoint a process tree (CUDA processes included) into a folder"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--pid", type=int, help="root of the tree to checkpoint")
    parser.add_argument("-D", "--dir", type=Path, required=True, help="new or empty folder for images")
    parser.add_argument("--leave-running", action="store_true", help="keep the tree running after")
    parser.add_argument("--lock-timeout", type=int, default=10_000, metavar="MS",
                        help="how long the driver may wait for CUDA work to drain (default 10000)")
    parser.add_argument("--criu-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for criu dump (repeatable; "
                             "--criu-arg --tcp-established and --criu-arg=--tcp-established "
                             "both work)")
    accept_dash_values(parser, "--criu-arg")
    parser.add_argument("--store", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                        help="put GPU memory chunks in the deduplicating snapshot store (default "
                             "$RESTOREPROF_STORE, else /var/lib/restoreprof/store)")
    parser.add_argument("--export", type=Path, metavar="OUT",
                        help="also write a standalone, portable copy into OUT (new or empty)")
    parser.add_argument("--recover", action="store_true",
                        help="finish (if CRIU's dump completed) or put back an interrupted "
                             "checkpoint in DIR whose guardian could not")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_quiet_flag(parser)
    config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.recover:
        outcome = recover_checkpoint(args.dir)
        if args.json:
            print_json({"command": "checkpoint", "recover": outcome}, "checkpoint-recover")
        else:
            print(outcome)
        return 0
    if args.pid is None:
        raise RestoreprofError("say which process tree to checkpoint: -p PID",
                               hint="restoreprof checkpoint -p PID -D DIR")
    if args.pid <= 0 or args.lock_timeout <= 0:
        raise RestoreprofError("-p and --lock-timeout take positive numbers",
                               hint="restoreprof checkpoint -p PID -D DIR [--lock-timeout MS]")
    settings = config.from_args(args)  # --no-offload: never offload through the library
    store = None
    if args.store is not None:
        from restoreprof.store.layout import default_store

        store = default_store() if args.store is True else args.store
    with step_progress(args, "checkpoint"):
        result = checkpoint(args.pid, args.dir, leave_running=args.leave_running,
                            offload=settings.offload, lock_timeout_ms=args.lock_timeout,
                            criu_args=args.criu_arg, optimizer=settings, store=store,
                            sync=settings.sync, pre_copy=settings.pre_copy)
    exported = None
    if args.export:
        from restoreprof.commands._export import export

        exported = export(result.directory, args.export)
    if args.json:
        print_json({**result.to_dict(), "export": exported}, "checkpoint")
        return 0
    cuda = result.manifest.cuda_pids
    print(f"checkpointed PID {args.pid} ({len(result.manifest.processes)} processes, "
          f"{len(cuda)} with CUDA) into {result.directory}")
    print_steps(result.steps)
    if settings.pre_copy:
        print(f"downtime {result.downtime_s:.2f} s of {result.total_s:.2f} s (the pre-copy ran "
              f"while the processes ran on)")
    for line in coverage_summary(result.manifest.processes):
        print(line)
    size = sum(i["bytes"] for i in result.manifest.images)
    print(f"images: {size / 1e9:.2f} GB in {len(result.manifest.images)} files")
    for p in result.manifest.processes:
        if p.offload:
            where = p.offload.get("store") or f"{p.offload['snapshot']}.chunks"
            print(f"GPU memory of PID {p.pid}: {p.offload['bytes'] / 1e9:.2f} GB, "
                  f"{p.offload.get('written_bytes', 0) / 1e9:.2f} GB written (the rest was "
                  f"already in {where})")
            if "pre_copy" in p.offload:
                pre = p.offload["pre_copy"]
                print(f"  pre-copied while it ran: {pre['written_bytes'] / 1e9:.2f} GB written "
                      f"in {pre['seconds']:.2f} s")
    if exported:
        print(f"exported a standalone copy to {exported['directory']}")
    return 0
