"""Each subcommand is a small module with ``name``, ``help``, ``prepare_parser`` and ``run``.

The CLI is their sum; a module that fails to import (a missing optional piece) does not take
the other commands down with it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = [
    "doctor", "demo", "checkpoint", "restore", "trace", "report", "calibrate",
    "exec_", "warm", "run", "tune", "tui",
]


def _load() -> list[ModuleType]:
    loaded = []
    for name in _MODULES:
        try:
            loaded.append(importlib.import_module(f"restoreprof.commands.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"restoreprof.commands.{name}":
                raise
    return loaded


COMMANDS = _load()
