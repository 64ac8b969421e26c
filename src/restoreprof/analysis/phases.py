"""The phases of a restore, and how much of the wall time each one holds on its own.

- cpu memory restore: the page reads (reads of pages-*.img; every preadv where no file name
  was seen), what CRIU spends filling the restored processes' memory;
- gpu context creation: cuInit, cuCtxCreate*, cuDevicePrimaryCtxRetain;
- gpu memory restore: host-to-device copies, the driver's cuCheckpointProcessRestore, and the
  "GPU restore" step that 'restoreprof restore' announces;
- other: the wall time none of the above covers (process setup, verification, exit).

The critical path gives each instant of the wall time to one phase (GPU memory restore first,
then CPU memory restore, then context creation, else other): phases overlap when prewarm runs
cuInit during CRIU, and only time no other phase covers can be saved by speeding one up. Other
is itself given out by the steps that 'restoreprof restore' announces (its "parts"): each
instant to the step covering it (one on the restore's path before one marked "overlapped", then
the one that began last), the rest to the command's start (before its first step), its answer
and exit (after its last), or the gaps between steps. So nothing on the path is unaccounted for.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable

from restoreprof.analysis.stats import READ_SYSCALLS, counted_copy, merge, role, total_ns, transfer_ns
from restoreprof.probes import cuda_functions as cf
from restoreprof.trace.events import CUDA, HTOD, MARK, SYSCALL, Event

CPU_MEMORY = "cpu memory restore"
GPU_CONTEXT = "gpu context creation"
GPU_MEMORY = "gpu memory restore"
OTHER = "other"
PRIORITY = (GPU_MEMORY, CPU_MEMORY, GPU_CONTEXT)   # who owns an instant that several cover
_PAGES = re.compile(r"pages-\d+\.img$")
_CRIU_RESTORE_MARK = re.compile(r"criu restore", re.IGNORECASE)
_GPU_RESTORE_MARK = re.compile(r"gpu restore|cuda restore", re.IGNORECASE)
# restoreprof's own page server (checkpoint/lazy_pages.py) brings the host memory back with
# UFFDIO_COPY, not reads: its steps are the CPU memory restore
_LAZY_PAGES_MARK = re.compile(r"^(host memory, lazy pages|lazy pages \(after CRIU\))", re.IGNORECASE)


def wall_bounds(events: list[Event]) -> tuple[int, int]:
    if not events:
        return 0, 0
    return min(e.start_ns for e in events), max(max(e.end_ns, e.complete_ns) for e in events)


def classifier(events: list[Event]) -> Callable[[Event], str]:
    """A function giving each event of this trace its phase (OTHER for the rest)."""
    has_page_paths = any(e.kind == SYSCALL and e.name in READ_SYSCALLS
                         and _PAGES.search(os.path.basename(e.path or "")) for e in events)
    # With 'restoreprof restore' steps, page reads outside "criu restore" are not the restore,
    # nor are those of restoreprof itself (the image checks read pages-*.img while CRIU runs).
    windows = [(e.start_ns, e.end_ns) for e in events
               if e.kind == MARK and _CRIU_RESTORE_MARK.search(e.name)]
    tool_pids = {e.pid for e in events if e.kind == MARK}

    def in_restore(e: Event) -> bool:
        if e.pid in tool_pids:
            return False
        return not windows or any(s <= e.start_ns <= t for s, t in windows)

    def classify(e: Event) -> str:
        if e.kind == SYSCALL:
            if e.name not in READ_SYSCALLS:
                return OTHER
            if not in_restore(e):
                return OTHER
            if has_page_paths:
                return CPU_MEMORY if _PAGES.search(os.path.basename(e.path or "")) else OTHER
            return CPU_MEMORY if e.name == "preadv" and not e.path else OTHER
        if e.kind == CUDA and not e.extra.get("outer"):
            r = role(e)
            if r in (cf.INIT, cf.CONTEXT):
                return GPU_CONTEXT
            if (counted_copy(e) and e.direction == HTOD) or e.name == "cuCheckpointProcessRestore":
                return GPU_MEMORY
        elif e.kind == MARK and _GPU_RESTORE_MARK.search(e.name):
            return GPU_MEMORY
        elif e.kind == MARK and _LAZY_PAGES_MARK.search(e.name):
            return CPU_MEMORY
        return OTHER

    return classify


def phase_events(events: list[Event]) -> dict[str, list[tuple[int, int, int]]]:
    """(start_ns, end_ns, bytes) of the work of each phase (async copies end at completion)."""
    classify = classifier(events)
    out: dict[str, list[tuple[int, int, int]]] = {CPU_MEMORY: [], GPU_CONTEXT: [], GPU_MEMORY: []}
    for e in events:
        name = classify(e)
        if name != OTHER:
            nbytes = e.bytes  # a mark's: what its step says it moved (lazy pages), else 0
            out[name].append((e.start_ns, e.start_ns + transfer_ns(e), nbytes))
    return out


def _subtract(intervals: list[tuple[int, int]], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for start, end in intervals:
        cursor = start
        for t_start, t_end in taken:
            if t_end <= cursor or t_start >= end:
                continue
            if t_start > cursor:
                out.append((cursor, t_start))
            cursor = max(cursor, t_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def phases(events: list[Event]) -> tuple[list[dict], list[dict], int]:
    """(phases in start order, critical path by exclusive time, wall_ns)."""
    start_ns, end_ns = wall_bounds(events)
    wall_ns = end_ns - start_ns
    work = phase_events(events)
    taken: list[tuple[int, int]] = []
    exclusive: dict[str, int] = {}
    result = []
    for name in PRIORITY:
        items = work[name]
        if not items:
            continue
        busy = merge([(s, e) for s, e, _ in items])
        own = _subtract(busy, taken)
        exclusive[name] = total_ns(own)
        taken = merge(taken + busy)
        span_start, span_end = min(s for s, _, _ in items), max(e for _, e, _ in items)
        nbytes = sum(b for _, _, b in items)
        busy_ns = total_ns(busy)
        result.append({"name": name, "start_ns": span_start, "end_ns": span_end, "bytes": nbytes,
                       "busy_ns": busy_ns, "calls": len(items),
                       "gbps": round(nbytes / busy_ns, 3) if busy_ns and nbytes else 0.0})
    other_ns = wall_ns - total_ns(taken) if wall_ns else 0
    result.sort(key=lambda p: (p["start_ns"], p["end_ns"]))
    if wall_ns:
        result.append({"name": OTHER, "start_ns": start_ns, "end_ns": end_ns, "bytes": 0,
                       "busy_ns": other_ns, "calls": 0, "gbps": 0.0})
        exclusive[OTHER] = other_ns
    for phase in result:
        phase["exclusive_ns"] = exclusive.get(phase["name"], 0)
    critical = [{"phase": name, "ns": ns, "share": round(ns / wall_ns, 4) if wall_ns else 0.0}
                for name, ns in sorted(exclusive.items(), key=lambda kv: -kv[1])]
    marks = [e for e in events if e.kind == MARK and e.end_ns > e.start_ns]
    for entry in critical:
        if entry["phase"] == OTHER and marks:
            gaps = _subtract([(start_ns, end_ns)], taken)
            entry["parts"] = [{"step": step, "ns": ns}
                              for step, ns in other_parts(gaps, marks).items()]
    return result, critical, wall_ns


BEFORE_STEPS = "the command's start (before its first step)"
AFTER_STEPS = "its answer and exit (after its last step)"
BETWEEN_STEPS = "between steps"


def restore_path(events: list[Event]) -> list[dict] | None:
    """A restore's critical path by its own steps: each instant of the wall time to the step on
    the restore's path that covers it (see the module's doc), else to the command's start, its
    answer and exit, or the gaps between steps; None for a trace without restore steps. Unlike
    the phases' critical path, work overlapped with the path (a preload under CRIU) takes none of
    it."""
    marks = [e for e in events if e.kind == MARK and e.end_ns > e.start_ns]
    start_ns, end_ns = wall_bounds(events)
    if not marks or end_ns <= start_ns:
        return None
    wall_ns = end_ns - start_ns
    return [{"step": step, "ns": ns, "share": round(ns / wall_ns, 4)}
            for step, ns in other_parts([(start_ns, end_ns)], marks).items()]


def other_parts(gaps: list[tuple[int, int]], marks: list[Event]) -> dict[str, int]:
    """The time of gaps (what no phase covers), by the step covering each instant (see the
    module's doc), largest first; the parts add up to the gaps."""
    first = min(m.start_ns for m in marks)
    last = max(m.end_ns for m in marks)
    # the order in which a covering step takes an instant: on the path first, then the latest
    ranked = sorted(marks, key=lambda m: ("overlapped" in m.name, -m.start_ns))
    edges = sorted({p for m in marks for p in (m.start_ns, m.end_ns)})
    parts: dict[str, int] = {}
    for gap_start, gap_end in gaps:
        cuts = [gap_start, *[e for e in edges if gap_start < e < gap_end], gap_end]
        for lo, hi in itertools.pairwise(cuts):
            owner = next((m.name for m in ranked if m.start_ns <= lo and hi <= m.end_ns), None)
            if owner is None:
                owner = BEFORE_STEPS if hi <= first else AFTER_STEPS if lo >= last \
                    else BETWEEN_STEPS
            parts[owner] = parts.get(owner, 0) + hi - lo
    return dict(sorted(parts.items(), key=lambda kv: -kv[1]))
