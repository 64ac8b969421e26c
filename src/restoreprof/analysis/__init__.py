"""Analysis of a trace: exact counts, the phases of a restore, the critical path, and the
bottleneck against this machine's ceilings. ``analyze(trace)`` returns the report dict that
report.json holds."""

from __future__ import annotations

from restoreprof.analysis import ceilings as ceilings_module
from restoreprof.analysis.bottleneck import annotate_ceilings, bottleneck
from restoreprof.analysis.ceilings import Ceilings
from restoreprof.analysis.phases import phases, restore_path
from restoreprof.analysis.stats import cuda_stats, io_stats
from restoreprof.trace.model import Trace


def analyze(trace: Trace, ceilings: Ceilings | None = None) -> dict:
    """The report of a trace (the shape of report.json).

    Without ceilings, the trace's own (those it was recorded with) or, where it has none
    measured, this machine's cached ones. The trace then keeps the ceilings it was judged by:
    saved with it, it is judged against them again, whatever is calibrated later."""
    if ceilings is None:
        ceilings = ceilings_module.for_trace(trace.meta)
    trace.meta.ceilings = ceilings.to_dict()
    events = trace.events
    io = io_stats(events)
    cuda = cuda_stats(events)
    phase_list, critical, wall_ns = phases(events)
    annotate_ceilings(phase_list, cuda, ceilings)
    return {
        "target": trace.meta.target,
        "pids": sorted({e.pid for e in events} | set(trace.meta.pids)),
        "wall_ns": wall_ns,
        "io": io,
        "cuda": cuda,
        "phases": phase_list,
        "critical_path": critical,
        # a restore traced with its steps: its critical path by those steps (else null)
        "restore_path": restore_path(events),
        "bottleneck": bottleneck(phase_list, cuda, ceilings, trace.meta.coverage),
        "coverage": trace.meta.coverage,
        "ceilings": {**ceilings.to_dict()},
        "lost_events": trace.meta.lost_events,
        # the traced command's exit status (shell style); null for a PID or a stopped command
        "exit_status": trace.meta.shell_exit_status,
        "events": len(events),
    }
