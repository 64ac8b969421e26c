"""What the exports share: each event's phase and a short label for it."""

from __future__ import annotations

import os

from restoreprof.analysis.phases import OTHER, classifier
from restoreprof.trace.events import CUDA, MARK, PROCESS, SYSCALL, Event


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


__all__ = ["OTHER", "detail", "phase_of", "process_names"]
