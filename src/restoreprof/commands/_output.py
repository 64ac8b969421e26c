"""Small printing helpers shared by the commands."""

from __future__ import annotations

import json
import sys

from restoreprof import __version__

# Bumped when a JSON output changes incompatibly; each output's JSON Schema is
# restoreprof/schemas/<name>.json (the package ships them).
JSON_VERSION = 1


def print_json(data: dict, schema: str) -> None:
    """One JSON document on stdout, with its version and the name of the schema it follows."""
    document = {"version": JSON_VERSION, "schema": schema, "restoreprof": __version__, **data}
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def print_steps(steps, title: str = "step") -> None:
    """One line per timed step, then the wall time from the first start to the last end."""
    if not steps:
        return
    origin = min(s.start_ns for s in steps)
    print(f"  {title:<34} {'pid':>7} {'start s':>8} {'time s':>8}")
    for s in sorted(steps, key=lambda s: (s.start_ns, s.end_ns)):
        pid = str(s.pid) if s.pid else ""
        print(f"  {s.name:<34} {pid:>7} {(s.start_ns - origin) / 1e9:>8.3f} {s.seconds:>8.3f}")
    total = (max(s.end_ns for s in steps) - origin) / 1e9
    print(f"  {'total':<34} {'':>7} {'':>8} {total:>8.3f}")
