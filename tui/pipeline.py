"""The view's links to the rest of restoreprof: trace model, analysis, ceilings, exports,
optimizer config.

The view reads; it never recomputes what these modules own. Each link is one function here so
the app and the feeds do not care where the pieces live.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from restoreprof.analysis import analyze as run_analysis
from restoreprof.analysis import ceilings as ceilings_module
from restoreprof.analysis.bottleneck import phase_ceiling
from restoreprof.analysis.ceilings import UNCALIBRATED, Ceilings
from restoreprof.analysis.phases import CPU_MEMORY, GPU_MEMORY
from restoreprof.trace.events import Event
from restoreprof.trace.model import Trace, TraceMeta


def make_trace(meta: TraceMeta, events: Sequence[Event]) -> Trace:
    return Trace(meta, list(events))


def make_meta(**fields) -> TraceMeta:
    return TraceMeta(**fields)


def load_trace(path: str | Path) -> Trace:
    return Trace.load(path)


def machine_gpus() -> list[dict]:
    """This machine's GPUs as a trace's meta names them (with UUIDs: they key the ceilings)."""
    from restoreprof.probes.session import gpus

    return gpus()


def load_ceilings(hostname: str | None = None, gpus: list[dict] | None = None) -> Ceilings:
    """The calibrated ceilings of hostname with gpus (default: this machine), as
    ``restoreprof.analysis.analyze`` would load them for a trace with that meta; an
    uncalibrated ``Ceilings`` (all 0.0) where nothing was measured."""
    return ceilings_module.load(hostname or socket.gethostname(), gpus)


def trace_ceilings(meta: TraceMeta) -> Ceilings:
    """The ceilings a saved trace is judged by (those it was recorded with, where measured),
    as ``restoreprof report`` uses them."""
    return ceilings_module.for_trace(meta)


def analyze(trace: Trace, ceilings: Ceilings) -> dict:
    """restoreprof.analysis on a trace: the report.json dict."""
    return run_analysis(trace, ceilings)


def export_all(trace: Trace, report: dict, outdir: Path) -> list[Path]:
    """The same files ``restoreprof trace -o OUTDIR`` writes."""
    from restoreprof.exports import write_all

    return list(write_all(trace, report, outdir))


@dataclass(frozen=True, slots=True)
class GraphCeiling:
    """The reference line of a throughput graph: a calibrated ceiling, or why there is none."""

    gbps: float          # 0.0: nothing to draw
    label: str           # what the ceiling is: "disk read", "H2D from pinned memory", ...
    missing: str = ""    # where gbps is 0.0: "uncalibrated", or "not measured" (calibrated
    #                      without it, e.g. with --no-gpu)


# The phase whose ceiling each graph draws.
PAGE_READS = CPU_MEMORY
H2D_COPIES = GPU_MEMORY


def graph_ceiling(ceilings: Ceilings | None, report: dict | None, phase_name: str) -> GraphCeiling:
    """The ceiling analysis measures phase_name against (``analysis.bottleneck.phase_ceiling``).

    Page reads: the disk read ceiling, or host memcpy where the analysis saw the reads run
    faster than the disk (the images were in the page cache). H2D copies: pinned H2D.
    """
    if ceilings is None:
        return GraphCeiling(0.0, "", UNCALIBRATED)
    report = report or {}
    phase = next((p for p in report.get("phases") or () if p.get("name") == phase_name),
                 {"name": phase_name, "gbps": 0.0})
    gbps, what = phase_ceiling(phase, report.get("cuda") or {}, ceilings)
    label = _short_label(what)
    if gbps:
        return GraphCeiling(float(gbps), label)
    missing = UNCALIBRATED if ceilings.source == UNCALIBRATED else "not measured"
    return GraphCeiling(0.0, label, missing)


def _short_label(what: str) -> str:
    """A graph's name for the analysis's ceiling: "disk read", "H2D pinned", "host memcpy
    (page cache)" (the page reads ran faster than the disk: the images were cached)."""
    base = what.split(" (")[0]
    base = {"H2D from pinned memory": "H2D pinned"}.get(base, base)
    return f"{base} (page cache)" if "page cache" in what else base


# The settings the view shows: the ones that change how a restore moves memory.
SHOWN_OPTIMIZER_SETTINGS = ("streams", "chunk_mb", "threads", "pinned", "readahead", "offload")
_SOURCE_KINDS = ("flag", "environment", "config file", "tuning DB")


def optimizer_config_in_use() -> dict | None:
    """The optimizer settings in effect here, resolved as a command resolves them (through the
    settings schema, which the profiler may use: it imports nothing of the optimizer)."""
    from restoreprof.errors import RestoreprofError
    from restoreprof.settings import resolve

    try:
        resolved = resolve()
    except RestoreprofError as exc:
        return {"error": str(exc).splitlines()[0]}
    shown = {k: v for k, v in resolved.values.items() if k in SHOWN_OPTIMIZER_SETTINGS}
    kinds = {kind for name in shown for kind in _SOURCE_KINDS
             if resolved.sources[name].startswith(kind)}
    shown["source"] = " / ".join(k for k in _SOURCE_KINDS if k in kinds) or "defaults"
    warm = warm_pool_in_use()
    if warm:
        shown["warm pool"] = warm
    return shown


def warm_pool_in_use() -> str | None:
    """The running warm pool and the host memory it holds pinned (staging, hot snapshots);
    None when none runs."""
    from restoreprof.system.warm_socket import describe_pool, pinned_summary

    described = describe_pool()
    return pinned_summary(described) if described else None
