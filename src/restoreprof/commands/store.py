"""restoreprof store list|measure|gc|verify|export: the deduplicating snapshot store (issue 15)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

name = "store"
help = "list, measure, garbage-collect, verify or export the GPU snapshot store"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, default=None, metavar="PATH",
                        help="the store (default $RESTOREPROF_STORE, else /var/lib/restoreprof/store)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="checkpoints the store holds chunks for")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    measure = verbs.add_parser("measure", help="bytes named vs stored, dedup ratio, per checkpoint")
    measure.add_argument("--json", action="store_true", help="print as JSON")
    gc = verbs.add_parser("gc", help="delete chunks that no complete checkpoint names")
    gc.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    gc.add_argument("--wait", action="store_true",
                    help="wait for running checkpoints instead of refusing")
    gc.add_argument("--json", action="store_true", help="print as JSON")
    check = verbs.add_parser("verify", help="hash every chunk; name the damaged ones")
    check.add_argument("--delete", action="store_true",
                       help="delete damaged chunks, so that the next checkpoint writes them again")
    check.add_argument("--json", action="store_true", help="print as JSON")
    export = verbs.add_parser("export", help="a standalone, portable copy of a checkpoint")
    export.add_argument("-D", "--dir", type=Path, required=True, help="the checkpoint")
    export.add_argument("out", type=Path, help="new or empty folder for the copy")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def run(args: argparse.Namespace) -> int:
    from restoreprof.store.layout import Store

    if args.verb == "export":
        from restoreprof.commands._export import export

        result = export(args.dir, args.out)
        print(f"exported {args.dir} to {result['directory']} ({_gb(result['chunk_bytes'])} of "
              f"GPU memory chunks, every one checked)")
        return 0
    store = Store.open(args.store)
    if args.verb == "verify":
        from dataclasses import asdict

        from restoreprof.store.verify import verify

        result = verify(store, delete=args.delete)
        if args.json:
            print(json.dumps(asdict(result), indent=2))
        else:
            print(f"checked {result.checked} chunks ({_gb(result.checked_bytes)}): "
                  f"{len(result.damaged)} damaged{' (deleted)' if args.delete and result.damaged else ''}")
            for name in result.damaged:
                print(f"  damaged: {name}")
        return 1 if result.damaged else 0
    if args.verb == "gc":
        from dataclasses import asdict

        from restoreprof.store.gc import gc

        result = gc(store, wait=args.wait, dry_run=args.dry_run)
        if args.json:
            print(json.dumps(asdict(result), indent=2))
            return 0
        if result.deferred:
            print("deleted nothing: a process of an unfinished checkpoint may still be writing "
                  f"its snapshot (references {', '.join(r[:12] for r in result.held_refs)}); "
                  "retry once it has finished or exited")
            return 0
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {result.deleted_chunks} chunks ({_gb(result.deleted_bytes)}), "
              f"{result.deleted_temporary} temporary files and {len(result.dropped_refs)} "
              f"references of incomplete checkpoints; kept {result.kept_chunks} chunks")
        return 0
    from restoreprof.store.measure import measure

    report = measure(store)
    if args.json:
        print(json.dumps(report if args.verb == "measure" else report["checkpoints"], indent=2))
        return 0
    if args.verb == "list":
        for c in report["checkpoints"]:
            state = "complete" if c["complete"] else "incomplete (gc drops it)"
            print(f"{c['id'][:12]}  {c['created']}  {_gb(c['logical_bytes']):>10}  {state}  "
                  f"{c['checkpoint']}")
        if not report["checkpoints"]:
            print(f"the store {store.root} holds no checkpoint")
        return 0
    ratio = report["dedup_ratio"]
    print(f"store {report['store']}: {len(report['checkpoints'])} checkpoints name "
          f"{_gb(report['logical_bytes'])}; {report['chunks']} chunks hold "
          f"{_gb(report['stored_bytes'])} (dedup ratio {ratio if ratio else '-'})")
    for c in report["checkpoints"]:
        print(f"  {c['id'][:12]}  named {_gb(c['logical_bytes'])}, written "
              f"{_gb(c['written_bytes'])}, only its own {_gb(c['unique_bytes'])}"
              f"{', MISSING ' + str(c['missing_chunks']) + ' chunks' if c['missing_chunks'] else ''}"
              f"  {c['checkpoint']}")
    return 0
