"""speedscope.json: an evented profile per traced thread (https://www.speedscope.app).

Calls become open/close events of frames named after the call (with the file or the copy's
direction as the frame's "file"). speedscope needs each profile's events properly nested:
calls on one thread nest already (cudaMemcpy around cuMemcpyHtoD_v2); spans that cross (the
restore steps that run concurrently) go to further lanes, each a profile of its own, so every
span keeps its full length.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from restoreprof import __version__
from restoreprof.exports._common import detail, pack_lanes, process_names
from restoreprof.trace.events import MARK, PROCESS, Event
from restoreprof.trace.model import Trace

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"


def _profile(name: str, lane: list[Event], frame_index: Callable[[Event], int],
             origin: int) -> dict:
    """One lane (spans that nest, in start order) as an evented profile."""
    events: list[dict] = []
    stack: list[tuple[int, int]] = []   # (frame, end_ns)
    for e in lane:
        start, end = e.start_ns - origin, e.end_ns - origin
        while stack and stack[-1][1] <= start:
            frame, stop = stack.pop()
            events.append({"type": "C", "frame": frame, "at": stop})
        frame = frame_index(e)
        events.append({"type": "O", "frame": frame, "at": start})
        stack.append((frame, end))
    while stack:
        frame, stop = stack.pop()
        events.append({"type": "C", "frame": frame, "at": stop})
    return {"type": "evented", "name": name, "unit": "nanoseconds",
            "startValue": min((e.start_ns - origin for e in lane), default=0),
            "endValue": max((e.end_ns - origin for e in lane), default=0), "events": events}


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
        label = f"{names.get(pid, 'pid')} {pid}: " + ("restore steps" if tid == 0 else f"thread {tid}")
        for number, lane in enumerate(pack_lanes(calls, lambda c: (c.start_ns, c.end_ns)), 1):
            name = label if number == 1 else f"{label}, lane {number}"
            profiles.append(_profile(name, lane, frame_index, origin))
    return {"$schema": SCHEMA_URL, "shared": {"frames": frames}, "profiles": profiles,
            "name": f"restoreprof: {trace.meta.target}", "activeProfileIndex": 0,
            "exporter": f"restoreprof {__version__}"}


def write(trace: Trace, path: Path) -> Path:
    path.write_text(json.dumps(speedscope_document(trace), separators=(",", ":")))
    return path
