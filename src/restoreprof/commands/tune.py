"""restoreprof tune show|reset: what the tuner remembers, per GPU, driver and storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from restoreprof.commands._output import print_json
from restoreprof.errors import RestoreprofError
from restoreprof.tuner.database import TuningDatabase
from restoreprof.tuner.identity import identify

name = "tune"
help = "show or reset the tuned settings that 'restoreprof run' stored"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show", "reset"),
                        help="show: list the tuned settings; reset: forget them")
    parser.add_argument("--db", type=Path, default=None, metavar="PATH",
                        help="tuning database (default $RESTOREPROF_TUNING_DB, else "
                             "~/.config/restoreprof/tuning.json)")
    parser.add_argument("-D", "--dir", type=Path, default=None,
                        help="show: which entry applies to restores from this folder")
    parser.add_argument("--key", default=None, help="reset: only this entry (as 'show' prints it)")
    parser.add_argument("--json", action="store_true", help="show: print the database as JSON")


def run(args: argparse.Namespace) -> int:
    db = TuningDatabase(args.db)
    if args.action == "reset":
        if args.key is not None and args.key not in db.entries:
            raise RestoreprofError(f"no entry {args.key!r} in {db.path}",
                                   hint="'restoreprof tune show' lists the keys")
        gone = db.reset(args.key)
        print(f"forgot {gone} tuned {'entry' if gone == 1 else 'entries'} in {db.path}")
        return 0
    if args.json:
        print_json({"path": str(db.path), "entries": db.entries}, "tuning")
        return 0
    if not db.entries:
        print(f"no tuned settings in {db.path}: run 'restoreprof run' to tune this host")
        return 0
    applies = db.lookup(identify(args.dir))
    print(f"tuned settings in {db.path}:")
    for key, entry in sorted(db.entries.items()):
        mark = "  <- applies here" if applies and applies[0] == key else ""
        print(f"\n{key}{mark}")
        settings = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(entry["settings"].items()))
        print(f"  settings  {settings}")
        if entry.get("restore", {}).get("verify") is False:
            print("  restore   --no-verify measured fastest")
        if "tuned_s" in entry:
            print(f"  restore   {entry['tuned_s']:.3f} s tuned, {entry.get('default_s', 0):.3f} s "
                  f"default ({entry.get('speedup_over_default', 0):.2f}x), "
                  f"{entry.get('plain_s', 0):.3f} s plain path")
        print(f"  measured  {entry.get('updated', '?')} on {entry.get('checkpoint', '?')}, "
              f"{entry.get('trials', '?')} restores, {entry.get('cache', '?')} cache")
    return 0


def _fmt(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)
