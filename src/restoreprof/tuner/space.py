"""What the tuner may change in a restore, and which settings to try first for a bottleneck.

A point is a plain dict {setting: value}. Its keys are OptimizerConfig fields, plus ``verify``
(the restore's image checksum pass, an argument of restore() rather than an optimizer field).

Only settings that change the restore are searched, and only where they do (``matters``): a
setting that acts on nothing would be timed as noise and could be "won" by chance.
tests/integration/test_tuner_dimensions.py restores one checkpoint with each dimension changed
and shows what each change did to the restore or its engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from restoreprof.optimizer.config import OptimizerConfig

Point = dict[str, Any]
RESTORE_OPTIONS = ("verify",)   # searched, but not OptimizerConfig fields


@dataclass(frozen=True)
class Dimension:
    name: str
    values: tuple            # in order: numeric ones ascending, so neighbours are similar
    ordered: bool            # True: search by stepping to neighbours; False: try every value
    # When the setting changes the restore at all, given the rest of the point (None: always).
    # The search skips a setting that does nothing, rather than time the same restore twice.
    matters: Callable[[Point], bool] | None = None

    def active(self, point: Point) -> bool:
        return self.matters is None or self.matters(point)

    def index(self, value: Any) -> int:
        """Where value sits, or the nearest value for an ordered dimension."""
        if value in self.values:
            return self.values.index(value)
        if not self.ordered:
            raise ValueError(f"{self.name}={value!r} is not one of {self.values}")
        return min(range(len(self.values)), key=lambda i: abs(self.values[i] - value))


def _bool(name: str) -> Dimension:
    return Dimension(name, (False, True), ordered=False)


# Every dimension the tuner knows; build_space() keeps those that change this checkpoint's restore.
DIMENSIONS = {
    "verify": _bool("verify"),
    "readahead": _bool("readahead"),
    "threads": Dimension("threads", (1, 2, 4, 8, 16, 32), ordered=True),
    "parallel": _bool("parallel"),
    "streams": Dimension("streams", (1, 2, 4, 8, 16), ordered=True),
    "chunk_mb": Dimension("chunk_mb", (1, 2, 4, 8, 16, 32, 64), ordered=True),
    "pinned": _bool("pinned"),
    "preload": _bool("preload"),
}

# Which settings move which phase of a restore. A bottleneck phase is matched by keywords
# (analysis phase names and restore step names both), first match wins.
PHASE_SETTINGS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("verify", "checksum"), ("verify", "readahead", "threads")),
    (("reload", "h2d", "gpu memory", "copy", "pcie"),
     ("streams", "chunk_mb", "threads", "pinned", "preload", "parallel")),
    (("driver", "unlock", "gpu"), ("parallel",)),
    (("criu", "page", "cpu", "image", "read", "disk", "storage"), ("readahead", "threads", "verify")),
)


def _readahead_runs(point: Point) -> bool:
    # restore() reads ahead only without the checksum pass, which reads every image itself.
    return not point.get("verify", True)


def build_space(has_cuda: bool, has_offload: bool, cuda_processes: int = 1) -> list[Dimension]:
    """The dimensions that change the restore of this checkpoint, each with when it acts.

    verify: the image check. readahead: only without it (the check reads every image itself).
    threads: the read-ahead's threads, and the engine's where GPU memory was offloaded.
    streams, chunk_mb, pinned: the engine's, which loads offloaded GPU memory (preload or
    reload). preload: only with parallel on. parallel: gates the preload, and restores several
    CUDA processes at once: with neither (no offload, one CUDA process) it acts on nothing.
    """
    def threads_used(point: Point) -> bool:
        return has_offload or (_readahead_runs(point) and bool(point.get("readahead")))

    names = ["verify", "readahead", "threads"]
    if has_cuda and (has_offload or cuda_processes > 1):
        names.append("parallel")
    if has_offload:
        names += ["preload", "streams", "chunk_mb", "pinned"]
    space = [DIMENSIONS[n] for n in names]
    rules = {"readahead": _readahead_runs, "threads": threads_used,
             "preload": lambda point: bool(point.get("parallel", True))}
    return [replace(d, matters=rules.get(d.name)) for d in space]


def default_point(space: list[Dimension], config: OptimizerConfig | None = None) -> Point:
    """The untuned restore: built-in defaults (or config), checksums on."""
    values = (config or OptimizerConfig()).as_dict() | {"verify": True}
    return {d.name: values[d.name] for d in space}


def plain_point(space: list[Dimension]) -> Point:
    """The plain path: no read-ahead, no preload, processes restored one after another (where
    GPU memory was offloaded, the process reloads it itself)."""
    return default_point(space) | {"readahead": False, "parallel": False, "preload": False}


def settings_for_phase(phase: str | None) -> tuple[str, ...]:
    """The settings to explore first when phase is the bottleneck (empty if none matches)."""
    text = (phase or "").lower()
    for keywords, settings in PHASE_SETTINGS:
        if any(k in text for k in keywords):
            return settings
    return ()


def order_for_bottleneck(space: list[Dimension], phase: str | None) -> list[Dimension]:
    """The space with the bottleneck's settings first, the rest in their usual order."""
    first = [n for n in settings_for_phase(phase) if n in {d.name for d in space}]
    by_name = {d.name: d for d in space}
    return [by_name[n] for n in first] + [d for d in space if d.name not in first]


def split(point: Point, base: OptimizerConfig | None = None) -> tuple[OptimizerConfig, dict]:
    """(optimizer configuration, restore options) for a point; unset fields come from base."""
    fields = {k: v for k, v in point.items() if k not in RESTORE_OPTIONS}
    options = {"verify": bool(point.get("verify", True))}
    config = OptimizerConfig(**((base or OptimizerConfig()).as_dict() | fields))
    return config, options


def describe(point: Point, reference: Point | None = None) -> str:
    """Short text of a point: only what differs from reference (everything if none)."""
    shown = {k: v for k, v in point.items() if reference is None or reference.get(k) != v}
    if not shown:
        return "default"
    return " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())


def _fmt(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)
