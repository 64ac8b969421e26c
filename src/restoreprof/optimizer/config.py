"""The optimizer's one configuration object, built from the settings schema.

    cfg = config.from_args(args)                  # at a command's edge: flags, environment,
                                                  # config file, tuning DB, defaults
    cfg, sources = OptimizerConfig.resolve(...)   # the same, with where each value came from

Names, ranges, defaults and environment variables live in ``restoreprof.settings.schema``; the
interception library (C) takes its defaults from a header generated from that schema, and a
program started with ``restoreprof exec`` gets the resolved values through ``to_env()``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from restoreprof.settings import SETTINGS, config_file_path, resolve
from restoreprof.settings.schema import BY_NAME, DEFAULTS, MIB


@dataclass(frozen=True)
class OptimizerConfig:
    """How the engine, the interception library and the restore path move GPU memory.
    Defaults: restoreprof.settings.schema (and nowhere else)."""

    streams: int = DEFAULTS["streams"]
    chunk_mb: int = DEFAULTS["chunk_mb"]
    threads: int = DEFAULTS["threads"]
    pinned: bool = DEFAULTS["pinned"]
    min_intercept_bytes: int = DEFAULTS["min_intercept_bytes"]
    readahead: bool = DEFAULTS["readahead"]
    offload: bool = DEFAULTS["offload"]
    intercept: bool = DEFAULTS["intercept"]
    parallel: bool = DEFAULTS["parallel"]
    preload: bool = DEFAULTS["preload"]
    send_threads: int = DEFAULTS["send_threads"]
    lazy_pages: bool = DEFAULTS["lazy_pages"]
    lazy_threads: int = DEFAULTS["lazy_threads"]
    held_driver_restore: bool = DEFAULTS["held_driver_restore"]
    sync: bool = DEFAULTS["sync"]
    pre_copy: bool = DEFAULTS["pre_copy"]
    release_caches: bool = DEFAULTS["release_caches"]
    release_timeout_s: int = DEFAULTS["release_timeout_s"]

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            object.__setattr__(self, setting.name,
                               setting.check(getattr(self, setting.name), "OptimizerConfig"))

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_mb * MIB

    def to_env(self) -> dict[str, str]:
        """The environment that gives the interception library this configuration."""
        return {BY_NAME[name].env[0]: str(int(value)) for name, value in asdict(self).items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def resolve(cls, config_path: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> tuple[OptimizerConfig, dict[str, str]]:
        """(configuration, {setting: where its value came from}); the tuning DB's layer is
        what restoreprof.tuner.install_tuned_defaults() installed, if anything."""
        resolved = resolve(overrides, environ, config_path)
        return replace(cls(), **resolved.values), resolved.sources

    @classmethod
    def load(cls, config_path: str | os.PathLike | None = None,
             environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> OptimizerConfig:
        """Flags (overrides) > environment > config file > tuning DB > defaults."""
        return cls.resolve(config_path, environ, overrides)[0]


def default_config_path():
    return config_file_path()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The optimizer's flags, the same on every command that moves GPU memory."""
    group = parser.add_argument_group("optimizer settings (see 'restoreprof config show')")
    group.add_argument("--config", metavar="PATH", default=None,
                       help=f"optimizer config file (TOML; default {config_file_path()})")
    for setting in SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        if setting.kind is bool:
            group.add_argument(flag, dest=setting.name, default=None,
                               action=argparse.BooleanOptionalAction, help=setting.help)
        else:
            group.add_argument(flag, dest=setting.name, default=None, type=int, metavar="N",
                               help=f"{setting.help} ({setting.low}-{setting.high}, "
                                    f"default {setting.default})")


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    return {s.name: getattr(args, s.name, None) for s in SETTINGS}


def from_args(args: argparse.Namespace) -> OptimizerConfig:
    """The configuration for a command whose parser went through add_arguments()."""
    return OptimizerConfig.load(getattr(args, "config", None), overrides=flags_of(args))


def resolve_args(args: argparse.Namespace) -> tuple[OptimizerConfig, dict[str, str]]:
    return OptimizerConfig.resolve(getattr(args, "config", None), overrides=flags_of(args))


__all__ = [
    "SETTINGS", "OptimizerConfig", "add_arguments", "default_config_path", "from_args",
    "resolve_args",
]
# Fields and settings must agree: a new field without a Setting is a bug caught at import.
assert [f.name for f in fields(OptimizerConfig)] == [s.name for s in SETTINGS]
