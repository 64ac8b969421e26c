"""trace.json: the Chrome trace event format, which the Perfetto UI opens.

A track per process and thread; reads and CUDA calls are slices with bytes and GB/s in their
args; async copies add a slice for the transfer (until their completion was seen) on a track
of their own; restore steps are slices on a "restore steps" track, those of one restored
process in that process; counter tracks show read and copy GB/s over time.

Perfetto drops a complete event that crosses another on its track, so no two slices on one
track may cross: where spans run concurrently (CRIU's restore beside the image check, queued
async transfers) the extra ones go to further lanes of that track, each a track of its own
named after it ("restore steps, lane 2").
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from restoreprof.analysis.phases import wall_bounds
from restoreprof.exports._common import OTHER, pack_lanes, phase_of, process_names
from restoreprof.trace.events import CUDA, MARK, PROCESS, SYSCALL, Event
from restoreprof.trace.model import Trace

STEPS_TID = 0          # restore steps get a thread of their own in their process's track
LANE_TID_BASE = 1 << 30   # tids of extra lanes: far above any real tid (pid_max <= 2^22)
COUNTER_BINS = 200

# Track kinds, in the order a process lists them
STEPS, CALLS, TRANSFERS = "steps", "calls", "transfers"
_KIND_ORDER = {STEPS: 0, CALLS: 1, TRANSFERS: 2}


def _us(ns: int, origin: int) -> float:
    return round((ns - origin) / 1000, 3)


def _args(event: Event, phase: str) -> dict:
    args: dict = {}
    if event.bytes:
        args["bytes"] = event.bytes
        if event.duration_ns > 0:
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


def _slice(name: str, cat: str, start_ns: int, end_ns: int, origin: int, args: dict) -> dict:
    ts = _us(start_ns, origin)
    # dur from the rounded end, so that a slice ends exactly where its parent's rounding says
    return {"name": name, "cat": cat, "ph": "X", "ts": ts,
            "dur": round(_us(end_ns, origin) - ts, 3), "args": args}


def _track_of(event: Event) -> tuple[int, int, str]:
    """(pid shown, thread, kind): a step of one restored process is shown in that process."""
    if event.kind == MARK:
        step_pid = int(event.extra.get("step_pid", 0) or 0)
        return (step_pid or event.pid, STEPS_TID, STEPS)
    return (event.pid, event.tid, CALLS)


def chrome_events(trace: Trace) -> list[dict]:
    events = trace.events
    origin, end = wall_bounds(events)
    phases = phase_of(events)
    names = process_names(events)
    out: list[dict] = []
    # (pid, thread, kind) -> its slices as (start_ns, end_ns, slice dict without pid/tid)
    groups: dict[tuple[int, int, str], list[tuple[int, int, dict]]] = defaultdict(list)
    for e in events:
        if e.kind == PROCESS:
            out.append({"name": e.name, "ph": "i", "s": "p", "ts": _us(e.start_ns, origin),
                        "pid": e.pid, "tid": e.tid, "args": {"path": e.path, **e.extra}})
            continue
        phase = phases.get(id(e), "")
        phase = "" if phase == OTHER else phase
        args = _args(e, phase)
        if e.kind == MARK and e.extra.get("step_pid"):
            args["restored pid"] = e.extra["step_pid"]
        groups[_track_of(e)].append(
            (e.start_ns, e.end_ns, _slice(e.name, e.kind, e.start_ns, e.end_ns, origin, args)))
        if e.kind == CUDA and e.complete_ns > e.end_ns:
            transfer_ns = e.complete_ns - e.start_ns
            groups[(e.pid, e.tid, TRANSFERS)].append(
                (e.end_ns, e.complete_ns,
                 _slice(f"{e.name} transfer", "transfer", e.end_ns, e.complete_ns, origin,
                        {"bytes": e.bytes, "GB/s": round(e.bytes / transfer_ns, 3)})))
    tracks = _place(groups, out)
    for pid in sorted({track[0] for track in tracks} | {e.pid for e in events}):
        out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                    "args": {"name": f"{names.get(pid, 'pid')} ({pid})"}})
    for (pid, tid, label, order) in tracks:
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"name": label}})
        out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"sort_index": order}})
    out.extend(_counters(events, origin, end))
    return out


def _label(thread: int, kind: str, lane: int) -> str:
    base = {STEPS: "restore steps", CALLS: f"thread {thread}",
            TRANSFERS: f"thread {thread} transfers"}[kind]
    return base if lane == 0 else f"{base}, lane {lane + 1}"


def _place(groups: dict, out: list[dict]) -> list[tuple[int, int, str, int]]:
    """Append each group's slices to out, lane by lane; returns (pid, tid, label, sort index)
    of every track used."""
    tracks = []
    next_lane_tid: dict[int, int] = defaultdict(lambda: LANE_TID_BASE)
    for order, key in enumerate(sorted(groups, key=lambda k: (k[0], _KIND_ORDER[k[2]], k[1]))):
        pid, thread, kind = key
        lanes = pack_lanes(groups[key], lambda s: (s[0], s[1]))
        for lane_index, lane in enumerate(lanes):
            if lane_index == 0 and kind != TRANSFERS:
                tid = thread   # the first lane is the thread itself
            else:
                tid = next_lane_tid[pid]
                next_lane_tid[pid] += 1
            tracks.append((pid, tid, _label(thread, kind, lane_index), order * 64 + lane_index))
            for _start, _end, item in lane:
                item["pid"], item["tid"] = pid, tid
                out.append(item)
    return tracks


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
