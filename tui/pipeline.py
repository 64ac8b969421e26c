"""The view's links to the rest of restoreprof: trace model, analysis, exports, optimizer config.

The view reads; it never recomputes what these modules own. Each link is one function here so
the app and the feeds do not care where the pieces live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

from restoreprof.trace.events import Event


def make_trace(meta, events: Sequence[Event]):
    from restoreprof.trace.model import Trace

    return Trace(meta, list(events))


def make_meta(**fields):
    from restoreprof.trace.model import TraceMeta

    return TraceMeta(**fields)


def load_trace(path: str | Path):
    from restoreprof.trace.model import Trace

    return Trace.load(path)


def load_ceilings() -> dict:
    """The calibrated ceilings (GB/s), or an empty dict where nothing was calibrated yet."""
    try:
        from restoreprof.analysis import load_ceilings as load
    except ImportError:
        return {}
    try:
        return _as_dict(load())
    except (OSError, ValueError, TypeError):  # an unreadable cache is as good as none
        return {}


def analyze(trace, ceilings: dict) -> dict | None:
    """restoreprof.analysis on a trace; None where analysis is not installed."""
    try:
        from restoreprof.analysis import analyze as run_analysis
    except ImportError:
        return None
    return run_analysis(trace, ceilings)


def export_all(trace, report: dict | None, outdir: Path) -> list[Path]:
    """The same files ``restoreprof trace -o OUTDIR`` writes."""
    from restoreprof.exports import write_all

    return list(write_all(trace, report, outdir))


# The settings the view shows: the ones that change how a restore moves memory.
SHOWN_OPTIMIZER_SETTINGS = ("streams", "chunk_mb", "threads", "pinned", "prewarm", "readahead",
                            "offload")


def optimizer_config_in_use() -> dict | None:
    """The optimizer settings in effect here (file and environment); None: not installed."""
    try:
        from restoreprof.optimizer.config import OptimizerConfig
    except ImportError:
        return None
    from restoreprof.errors import RestoreprofError

    try:
        config = OptimizerConfig.load()
    except RestoreprofError as exc:
        return {"error": str(exc).splitlines()[0]}
    shown = {k: v for k, v in config.as_dict().items() if k in SHOWN_OPTIMIZER_SETTINGS}
    shown["source"] = "defaults" if config == OptimizerConfig() else "config file / environment"
    return shown


def _as_dict(value) -> dict:
    if value is None:
        return {}
    if is_dataclass(value):
        return asdict(value)
    return dict(value)
