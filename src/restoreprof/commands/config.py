"""restoreprof config show [--json]: the optimizer settings as a command here resolves them,
and where each value came from (flag, environment, config file, tuning DB, default)."""

from __future__ import annotations

import argparse
from pathlib import Path

from restoreprof.commands._output import print_json
from restoreprof.optimizer import config
from restoreprof.settings import SETTINGS, config_file_path

name = "config"
help = "show the optimizer settings in effect and where each value came from"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show",), help="show: print the resolved settings")
    parser.add_argument("-D", "--dir", type=Path, default=None,
                        help="a checkpoint folder: its storage picks the tuning DB entry")
    parser.add_argument("--json", action="store_true", help="print them as JSON")
    config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg, sources = config.resolve_args(args)
    path = config_file_path(args.config)
    values = cfg.as_dict()
    if args.json:
        print_json({
            "config_file": str(path), "config_file_exists": path.exists(),
            "settings": {s.name: {"value": values[s.name], "source": sources[s.name],
                                  "default": s.default, "environment": list(s.env),
                                  "acts_on": s.acts_on}
                         for s in SETTINGS}}, "config")
        return 0
    print(f"config file: {path}{'' if path.exists() else ' (none)'}")
    width = max(len(s.name) for s in SETTINGS)
    for s in SETTINGS:
        value = values[s.name]
        shown = ("on" if value else "off") if s.kind is bool else str(value)
        print(f"  {s.name:<{width}}  {shown:>10}  {sources[s.name]}")
    print("precedence: flag > environment > config file > tuning DB > default")
    return 0
