"""What the exports share: each event's phase, a short label for it, and lanes for spans that
run at the same time."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from restoreprof.analysis.phases import OTHER, classifier
from restoreprof.trace.events import CUDA, MARK, PROCESS, SYSCALL, Event

T = TypeVar("T")


def phase_of(events: list[Event]) -> dict[int, str]:
    """id(event) -> phase name."""
    classify = classifier(events)
    return {id(e): classify(e) for e in events}


def detail(event: Event) -> str:
    """What distinguishes calls of one name: a file, a copy's direction and host memory."""
    if event.kind == SYSCALL:
        return os.path.basename(event.path) if event.path else (f"fd {event.fd}"
                                                               if event.fd >= 0 else "")
    if event.kind == CUDA and event.direction:
        return f"{event.direction} {event.host_memory}".strip()
    if event.kind in (PROCESS, MARK):
        return event.path
    return ""


def process_names(events: list[Event]) -> dict[int, str]:
    """pid -> program name, from the exec events seen (else 'pid N')."""
    names: dict[int, str] = {}
    for event in events:
        if event.kind == PROCESS and event.name == "exec" and event.path:
            names[event.pid] = os.path.basename(event.path)
    return names


def pack_lanes(items: Sequence[T], span: Callable[[T], tuple[int, int]]) -> list[list[T]]:
    """items split into lanes in which any two spans either nest or do not meet.

    Timeline viewers draw one lane as one stack of slices: Perfetto drops a slice that crosses
    another on its track, speedscope cannot nest it. Concurrent steps (CRIU's restore and the
    image check beside it) and async transfers cross; each goes to the first lane where it
    nests, a new lane where it nests nowhere. Within a lane, items are in start order, an
    enclosing span before the spans it holds.
    """
    spans = sorted(((*span(item), index) for index, item in enumerate(items)),
                   key=lambda s: (s[0], -s[1]))
    lanes: list[list[T]] = []
    open_ends: list[list[int]] = []    # per lane: the ends of the spans still open, innermost last
    for start, end, index in spans:
        item = items[index]
        for lane, ends in zip(lanes, open_ends, strict=True):
            while ends and ends[-1] <= start:
                ends.pop()
            if not ends or end <= ends[-1]:
                lane.append(item)
                ends.append(end)
                break
        else:
            lanes.append([item])
            open_ends.append([end])
    return lanes


__all__ = ["OTHER", "detail", "pack_lanes", "phase_of", "process_names"]
