"""Where each setting's value comes from, highest first:

    flags          (the command line)
    environment    (RESTOREPROF_STREAMS ..., and the CRIU_CUDA_* aliases)
    config file    (TOML: --config PATH, else $XDG_CONFIG_HOME/restoreprof/optimizer.toml)
    tuning DB      (what `restoreprof run` measured best for this host)
    defaults       (schema.py)

``resolve()`` runs once at a command's edge and records the source of every value, which
`restoreprof config show` prints. Any bad value is a RestoreprofError naming where it was set.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from restoreprof.errors import RestoreprofError
from restoreprof.settings.schema import BY_NAME, SETTINGS

DEFAULT = "default"
Tuned = tuple[Mapping[str, Any], str]  # (settings, where they came from)

# The tuning DB's layer: the tuner installs a function returning what it measured best for this
# host (restoreprof.tuner.install_tuned_defaults), or None for none. Every command's resolve()
# asks it, so the profiler's view (tui) and the optimizer's commands see the same values.
tuned_provider: Callable[[], Tuned | None] | None = None
_INSTALLED = object()


@dataclass(frozen=True)
class Resolved:
    """Every setting's value, and where it came from ("default", "flag --streams", ...)."""

    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    config_file: Path | None = None  # the file that was read, None when there was none


def config_file_path(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "restoreprof" / "optimizer.toml"


def resolve(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
            config_path: str | os.PathLike | None = None, tuned: Any = _INSTALLED) -> Resolved:
    """Resolve every setting. flags: {name: value or None (not given)}; environ: os.environ
    when None; tuned: (settings, where they came from), None for no tuning DB, or by default
    what the installed tuned_provider says."""
    if tuned is _INSTALLED:
        tuned = tuned_provider() if tuned_provider is not None else None
    values = {s.name: s.default for s in SETTINGS}
    sources = dict.fromkeys(values, DEFAULT)

    def take(layer: Mapping[str, Any], source: str) -> None:
        for name, value in layer.items():
            setting = BY_NAME.get(name)
            if setting is None:
                raise RestoreprofError(f"{source}: unknown optimizer setting {name!r}",
                                       hint=f"use one of: {', '.join(BY_NAME)}")
            values[name] = setting.check(value, source)
            sources[name] = source

    if tuned is not None:
        take(tuned[0], f"tuning DB ({tuned[1]})")
    path, from_file = _from_file(config_path)
    take(from_file, f"config file {path}")
    for name, (var, value) in _from_env(os.environ if environ is None else environ).items():
        values[name], sources[name] = value, f"environment {var}"
    for name, value in (flags or {}).items():
        if value is not None:
            flag = name.replace("_", "-")
            take({name: value}, f"flag --{'no-' if value is False else ''}{flag}")
    return Resolved(values, sources, path if from_file or config_path else None)


def _from_env(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """{name: (variable, value)}; RESTOREPROF_* wins over its alias; empty counts as unset."""
    found: dict[str, tuple[str, Any]] = {}
    for setting in SETTINGS:
        for var in reversed(setting.env):  # aliases first, so the primary name overwrites
            text = environ.get(var)
            if text:
                found[setting.name] = (var, setting.parse_env(var, text))
    return found


def _from_file(config_path: str | os.PathLike | None) -> tuple[Path, dict[str, Any]]:
    path = config_file_path(config_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if config_path:
            raise RestoreprofError(f"config file {path} does not exist",
                                   hint="check the path given to --config") from None
        return path, {}
    except PermissionError as exc:
        if config_path:
            raise RestoreprofError(f"cannot read config file {path}: {exc.strerror}",
                                   hint="check its permissions, or pass another --config") \
                from None
        # The default place under a home that is not this user's (seteuid, sudo -u): not ours.
        print(f"restoreprof: warning: config file {path} not used: {exc.strerror}",
              file=sys.stderr)
        return path, {}
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreprofError(f"cannot read config file {path}: {exc}",
                               hint="check its permissions, or remove the file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RestoreprofError(f"config file {path} is not valid TOML: {exc}",
                               hint="fix the line it names (e.g. 'streams = 8'), or remove "
                                    "the file") from None
    # Keys may sit at the top level or under an [optimizer] table.
    table = data.get("optimizer", {})
    if not isinstance(table, dict):
        raise RestoreprofError(f"config file {path}: 'optimizer' must be a table",
                               hint="write the settings under [optimizer], one per line")
    top = {k: v for k, v in data.items() if k != "optimizer"}
    return path, top | table
