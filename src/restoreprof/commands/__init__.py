"""Each subcommand is a small module with ``name``, ``help``, ``prepare_parser`` and ``run``.

The CLI is their sum. Only the command being run is imported (each brings its own
dependencies: numpy, textual, bcc...), all of them for help; a module that fails to import (a
missing optional piece) does not take the other commands down with it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# command name -> module in this package, in the order help lists them
MODULES = {
    "doctor": "doctor", "demo": "demo", "checkpoint": "checkpoint", "restore": "restore",
    "store": "store",
    "trace": "trace", "report": "report", "calibrate": "calibrate", "exec": "exec_",
    "warm": "warm", "run": "run", "tune": "tune", "config": "config", "tui": "tui",
}


def load(name: str) -> ModuleType | None:
    """The module of command name; None when its optional dependencies are missing."""
    module = f"restoreprof.commands.{MODULES[name]}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


def load_all() -> list[ModuleType]:
    return [m for m in (load(name) for name in MODULES) if m is not None]
