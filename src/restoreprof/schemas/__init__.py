"""JSON Schemas of restoreprof's JSON outputs (draft 2020-12), shipped with the package.

Each `--json` output names its schema in its "schema" field and carries a "version":
    restoreprof.schemas.load("restore")  ->  the schema of `restoreprof restore --json`
"""

from __future__ import annotations

import json
from importlib import resources

NAMES = ("checkpoint", "checkpoint-recover", "restore", "restore-abort", "error", "manifest",
         "doctor", "config", "tuning", "ceilings", "report", "run")


def load(name: str) -> dict:
    if name not in NAMES:
        raise KeyError(f"no schema {name!r} (known: {', '.join(NAMES)})")
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())
