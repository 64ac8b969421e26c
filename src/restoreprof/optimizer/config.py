"""The optimizer's one configuration object, and where its values come from.

Layers, lowest first:

    built-in defaults
    < tuned_defaults()      (the tuner's measured best for this host; None until it plugs in)
    < config file           (TOML: --config PATH, else ~/.config/restoreprof/optimizer.toml)
    < environment           (RESTOREPROF_STREAMS ... and the seed plan's CRIU_CUDA_* aliases)
    < command-line flags    (add_arguments / from_args: every command adds the same flags)

The interception library (C) reads the same environment variables, so ``to_env()`` is how a
configuration reaches a process started with ``restoreprof exec``.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from restoreprof.errors import RestoreprofError

MIB = 1 << 20

# The tuner (restoreprof.tuner) sets this to a function returning {field: value} for the fields
# it has measured on this host, e.g. ``{"streams": 8, "chunk_mb": 64}``. Its values sit above the
# built-in defaults and below everything a person sets (file, environment, flags). Unknown keys
# or bad values raise RestoreprofError like any other layer.
tuned_defaults: Callable[[], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Setting:
    """What one field accepts and which environment variables set it."""

    name: str
    kind: type  # int or bool
    low: int = 0
    high: int = 0
    env: tuple[str, ...] = ()
    help: str = ""

    def describe(self) -> str:
        return "0 or 1" if self.kind is bool else f"an integer from {self.low} to {self.high}"


SETTINGS: tuple[Setting, ...] = (
    Setting("streams", int, 1, 32, ("RESTOREPROF_STREAMS", "CRIU_CUDA_STREAMS"),
            "CUDA streams the engine copies on"),
    Setting("chunk_mb", int, 1, 4096, ("RESTOREPROF_CHUNK_MB", "CRIU_CUDA_CHUNK_MB"),
            "size of one staged copy, MiB"),
    Setting("threads", int, 1, 128, ("RESTOREPROF_THREADS",),
            "host threads that read, memcpy and issue copies"),
    Setting("pinned", bool, env=("RESTOREPROF_PINNED", "CRIU_CUDA_USE_PINNED_MEM"),
            help="stage through pinned host buffers"),
    Setting("pool_mb", int, 0, 1 << 20, ("RESTOREPROF_POOL_MB",),
            "pinned staging pool, MiB (0: 2 buffers per thread of chunk_mb each)"),
    Setting("prewarm", bool, env=("RESTOREPROF_PREWARM",),
            help="create contexts and the staging pool ahead of the restore"),
    Setting("min_intercept_bytes", int, 0, 1 << 50, ("RESTOREPROF_MIN_INTERCEPT_BYTES",),
            "smallest pageable copy the interception library routes through the engine"),
    Setting("readahead", bool, env=("RESTOREPROF_READAHEAD",),
            help="read checkpoint images into the page cache ahead of criu restore"),
    Setting("offload", bool, env=("RESTOREPROF_OFFLOAD",),
            help="serve device memory from VMM and offload it around the driver checkpoint"),
    Setting("intercept", bool, env=("RESTOREPROF_INTERCEPT", "CUDA_INTERCEPT_RESTORE"),
            help="route large pageable copies through the engine"),
    Setting("parallel", bool, env=("RESTOREPROF_PARALLEL", "CRIU_CUDA_PARALLEL_RESTORE"),
            help="restore GPU memory with the parallel engine (off: the driver alone)"),
    Setting("preload", bool, env=("RESTOREPROF_PRELOAD",),
            help="load offloaded GPU memory while CRIU restores, for the process to adopt"),
    Setting("release_caches", bool, env=("RESTOREPROF_RELEASE_CACHES",),
            help="at checkpoint, free the program's cached free GPU blocks first (PyTorch, CuPy: "
                 "what empty_cache() does), so only live bytes are saved"),
    Setting("release_timeout_s", int, 1, 3600, ("RESTOREPROF_RELEASE_TIMEOUT_S",),
            "how long a checkpoint waits for the program to free its cached blocks, s"),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class OptimizerConfig:
    """How the engine, the interception library and the restore path move GPU memory."""

    # From benchmarks/sweep_reload.py on the H100 (2026-11-26, 8 GiB offloaded then reloaded):
    # 2 MiB chunks x 16 threads reloaded at 39.6 GB/s, 16 MiB x 8 at 23 GB/s, 64 MiB x 8 at
    # 10 GB/s. Small chunks stay in cache between the read, the checksum and the DMA, and the
    # pinned pool they need pins in milliseconds. `restoreprof run` tunes these per GPU.
    streams: int = 4
    chunk_mb: int = 2
    threads: int = 16
    pinned: bool = True
    pool_mb: int = 0
    prewarm: bool = True
    min_intercept_bytes: int = 16 * MIB
    readahead: bool = True
    offload: bool = True
    intercept: bool = True
    parallel: bool = True
    preload: bool = True
    release_caches: bool = True
    release_timeout_s: int = 10

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            _check(setting, getattr(self, setting.name), f"{setting.name}")

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_mb * MIB

    @property
    def pool_bytes(self) -> int:
        """The staging pool: pool_mb when set, else two chunk buffers per thread."""
        return self.pool_mb * MIB if self.pool_mb else 2 * self.threads * self.chunk_bytes

    def to_env(self) -> dict[str, str]:
        """The environment that gives the interception library this configuration."""
        return {
            _BY_NAME[name].env[0]: str(int(value)) for name, value in asdict(self).items()
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(
        cls,
        config_path: str | os.PathLike | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> OptimizerConfig:
        """Defaults < tuned_defaults < config file < environment < overrides (CLI flags)."""
        values: dict[str, Any] = {}
        if tuned_defaults is not None:
            values.update(_validated(tuned_defaults(), "tuned defaults"))
        values.update(_from_file(config_path))
        values.update(_from_env(os.environ if environ is None else environ))
        values.update(_validated({k: v for k, v in (overrides or {}).items() if v is not None},
                                 "command line"))
        return replace(cls(), **values)


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "restoreprof" / "optimizer.toml"


def _check(setting: Setting, value: Any, source: str) -> Any:
    if setting.kind is bool:
        ok = isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
    else:
        ok = isinstance(value, int) and not isinstance(value, bool) and (
            setting.low <= value <= setting.high)
    if not ok:
        raise RestoreprofError(
            f"{source}={value!r} is not valid: {setting.name} must be {setting.describe()}",
            hint=f"set {source} to {setting.describe()}",
        )
    return bool(value) if setting.kind is bool else value


def _validated(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        setting = _BY_NAME.get(key)
        if setting is None:
            raise RestoreprofError(
                f"{source}: unknown optimizer setting {key!r}",
                hint=f"use one of: {', '.join(_BY_NAME)}",
            )
        out[key] = _check(setting, value, f"{source}: {key}")
    return out


def _parse_env_value(setting: Setting, var: str, text: str) -> Any:
    stripped = text.strip()
    try:
        value = int(stripped, 0)
    except ValueError:
        raise RestoreprofError(
            f"{var}={text!r} is not valid: {setting.name} must be {setting.describe()}",
            hint=f"set {var} to {setting.describe()}, or unset it",
        ) from None
    return _check(setting, value, var)


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """RESTOREPROF_* wins over its alias when both are set; empty strings count as unset."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        for var in reversed(setting.env):  # aliases first, so the primary name overwrites
            text = environ.get(var)
            if text:
                values[setting.name] = _parse_env_value(setting, var, text)
    return values


def _from_file(config_path: str | os.PathLike | None) -> dict[str, Any]:
    path = Path(config_path) if config_path else default_config_path()
    if not path.exists():
        if config_path:
            raise RestoreprofError(f"config file {path} does not exist",
                                   hint="check the path given to --config")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RestoreprofError(f"cannot read config file {path}: {exc}",
                               hint="fix the TOML syntax, or remove the file") from None
    # Keys may sit at the top level or under an [optimizer] table.
    table = data.get("optimizer", data)
    return _validated({k: v for k, v in table.items() if k != "optimizer"}, str(path))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The optimizer's flags, the same on every command that moves GPU memory."""
    group = parser.add_argument_group("optimizer")
    group.add_argument("--config", metavar="PATH", default=None,
                       help=f"optimizer config file (TOML; default {default_config_path()})")
    for setting in SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        if setting.kind is bool:
            group.add_argument(flag, dest=setting.name, default=None,
                               action=argparse.BooleanOptionalAction, help=setting.help)
        else:
            group.add_argument(flag, dest=setting.name, default=None, type=int,
                               metavar="N", help=f"{setting.help} ({setting.low}-{setting.high})")


def from_args(args: argparse.Namespace) -> OptimizerConfig:
    """The configuration for a command whose parser went through add_arguments()."""
    overrides = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    return OptimizerConfig.load(getattr(args, "config", None), overrides=overrides)


__all__ = [
    "SETTINGS", "OptimizerConfig", "add_arguments", "default_config_path", "from_args",
    "tuned_defaults",
]
# Fields and settings must agree: a new field without a Setting is a bug caught at import.
assert [f.name for f in fields(OptimizerConfig)] == [s.name for s in SETTINGS]
