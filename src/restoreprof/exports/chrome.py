"""trace.json: the Chrome trace event format, which the Perfetto UI opens.

A track per process and thread; reads and CUDA calls are slices with bytes and GB/s in their
args; async copies add a slice for the transfer (until their completion was seen); restore
steps are slices on their own thread; counter tracks show read and copy GB/s over time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from restoreprof.analysis.phases import wall_bounds
from restoreprof.exports._common import OTHER, phase_of, process_names
from restoreprof.trace.events import CUDA, MARK, PROCESS, SYSCALL, Event
from restoreprof.trace.model import Trace

STEPS_TID = 0          # restore steps get a thread of their own in their process's track
COUNTER_BINS = 200


def _us(ns: int, origin: int) -> float:
    return round((ns - origin) / 1000, 3)


def _args(event: Event, phase: str) -> dict:
    args: dict = {}
    if event.bytes:
        args["bytes"] = event.bytes
        seconds = event.duration_ns / 1e9
        if seconds > 0:
            args["GB/s"] = round(event.bytes / event.duration_ns, 3)
    for name in ("fd", "ret", "direction", "host_memory", "path"):
        value = getattr(event, name)
        if value not in ("", -1) and not (name == "ret" and value == 0):
            args[name] = value
    if event.stream:
        args["stream"] = hex(event.stream)
    if event.address:
        args["address"] = hex(event.address)
    if phase:
        args["phase"] = phase
    return args


def chrome_events(trace: Trace) -> list[dict]:
    events = trace.events
    origin, end = wall_bounds(events)
    phases = phase_of(events)
    names = process_names(events)
    out: list[dict] = []
    threads: set[tuple[int, int]] = set()
    for e in events:
        ts = _us(e.start_ns, origin)
        if e.kind == PROCESS:
            out.append({"name": e.name, "ph": "i", "s": "p", "ts": ts, "pid": e.pid,
                        "tid": e.tid, "args": {"path": e.path, **e.extra}})
            continue
        tid = STEPS_TID if e.kind == MARK else e.tid
        threads.add((e.pid, tid))
        phase = phases.get(id(e), "")
        phase = "" if phase == OTHER else phase
        out.append({"name": e.name, "cat": e.kind, "ph": "X", "ts": ts,
                    "dur": round(e.duration_ns / 1000, 3), "pid": e.pid, "tid": tid,
                    "args": _args(e, phase)})
        if e.kind == CUDA and e.complete_ns > e.end_ns:
            transfer_ns = e.complete_ns - e.start_ns
            out.append({"name": f"{e.name} transfer", "cat": "transfer", "ph": "X",
                        "ts": _us(e.end_ns, origin),
                        "dur": round((e.complete_ns - e.end_ns) / 1000, 3),
                        "pid": e.pid, "tid": e.tid,
                        "args": {"bytes": e.bytes, "GB/s": round(e.bytes / transfer_ns, 3)}})
    for pid in sorted({p for p, _ in threads} | {e.pid for e in events}):
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"name": f"{names.get(pid, 'pid')} ({pid})"}})
    for pid, tid in sorted(threads):
        label = "restore steps" if tid == STEPS_TID else f"thread {tid}"
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"name": label}})
    out.extend(_counters(events, origin, end))
    return out


def _counters(events: list[Event], origin: int, end: int) -> list[dict]:
    """GB/s of reads and of each copy direction, in COUNTER_BINS bins over the trace."""
    if end <= origin:
        return []
    bin_ns = max(1_000_000, (end - origin) // COUNTER_BINS)
    series: dict[tuple[int, str], dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if not e.bytes or e.extra.get("outer"):
            continue
        if e.kind == SYSCALL:
            key = (e.pid, "read GB/s")
        elif e.kind == CUDA and e.direction:
            key = (e.pid, f"{e.direction} GB/s")
        else:
            continue
        finish = max(e.end_ns, e.complete_ns)
        span = max(1, finish - e.start_ns)
        first, last = (e.start_ns - origin) // bin_ns, (finish - origin) // bin_ns
        for b in range(first, last + 1):   # spread the bytes over the bins the call covers
            lo = max(e.start_ns, origin + b * bin_ns)
            hi = min(finish, origin + (b + 1) * bin_ns)
            series[key][b] += e.bytes * max(0, hi - lo) / span if finish > e.start_ns else e.bytes
    out = []
    for (pid, name), bins in series.items():
        last_bin = max(bins)
        for b in range(0, last_bin + 2):
            out.append({"name": name, "ph": "C", "pid": pid, "ts": _us(origin + b * bin_ns, origin),
                        "args": {"GB/s": round(bins.get(b, 0.0) / bin_ns, 3)}})
    return out


def write(trace: Trace, path: Path) -> Path:
    doc = {"traceEvents": chrome_events(trace), "displayTimeUnit": "ms",
           "otherData": {"target": trace.meta.target, "hostname": trace.meta.hostname,
                         "lost_events": trace.meta.lost_events, "clock": trace.meta.clock}}
    path.write_text(json.dumps(doc, separators=(",", ":")))
    return path
