"""speedscope.json: an evented profile per traced thread (https://www.speedscope.app).

Calls become open/close events of frames named after the call (with the file or the copy's
direction as the frame's "file"). speedscope needs each profile's events properly nested:
calls on one thread nest already (cudaMemcpy around cuMemcpyHtoD_v2), and anything that would
overlap without nesting is clipped to its parent.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from restoreprof import __version__
from restoreprof.exports._common import detail, process_names
from restoreprof.trace.events import MARK, PROCESS, Event
from restoreprof.trace.model import Trace

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"


def _profile(name: str, calls: list[Event], frame_index, origin: int) -> dict:
    events: list[dict] = []
    stack: list[tuple[int, int]] = []   # (frame, end_ns)
    start_value = end_value = None
    for e in sorted(calls, key=lambda c: (c.start_ns, -c.end_ns)):
        start, end = e.start_ns - origin, e.end_ns - origin
        while stack and stack[-1][1] <= start:
            frame, stop = stack.pop()
            events.append({"type": "C", "frame": frame, "at": stop})
        if stack:
            end = min(end, stack[-1][1])   # clip what would overlap its parent
        frame = frame_index(e)
        events.append({"type": "O", "frame": frame, "at": start})
        stack.append((frame, end))
        start_value = start if start_value is None else start_value
        end_value = end if end_value is None else max(end_value, end)
    while stack:
        frame, stop = stack.pop()
        events.append({"type": "C", "frame": frame, "at": stop})
    return {"type": "evented", "name": name, "unit": "nanoseconds",
            "startValue": start_value or 0, "endValue": end_value or 0, "events": events}


def speedscope_document(trace: Trace) -> dict:
    events = trace.events
    origin = min((e.start_ns for e in events), default=0)
    names = process_names(events)
    frames: list[dict] = []
    index: dict[tuple[str, str], int] = {}

    def frame_index(e: Event) -> int:
        key = (e.name, detail(e))
        if key not in index:
            index[key] = len(frames)
            frames.append({"name": e.name, "file": key[1]} if key[1] else {"name": e.name})
        return index[key]

    threads: dict[tuple[int, int], list[Event]] = defaultdict(list)
    for e in events:
        if e.kind == PROCESS:
            continue
        threads[(e.pid, 0 if e.kind == MARK else e.tid)].append(e)
    profiles = []
    for (pid, tid), calls in sorted(threads.items()):
        label = "restore steps" if tid == 0 else f"thread {tid}"
        profiles.append(_profile(f"{names.get(pid, 'pid')} {pid}: {label}", calls, frame_index,
                                 origin))
    return {"$schema": SCHEMA_URL, "shared": {"frames": frames}, "profiles": profiles,
            "name": f"restoreprof: {trace.meta.target}", "activeProfileIndex": 0,
            "exporter": f"restoreprof {__version__}"}


def write(trace: Trace, path: Path) -> Path:
    path.write_text(json.dumps(speedscope_document(trace), separators=(",", ":")))
    return path
