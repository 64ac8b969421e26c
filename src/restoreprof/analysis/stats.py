"""Exact counts over a trace: read syscalls (bytes returned) and CUDA calls (bytes requested)."""

from __future__ import annotations

from restoreprof.probes import cuda_functions as cf
from restoreprof.trace.events import CUDA, DTOD, DTOH, HTOD, HTOH, PAGEABLE, PINNED, SYSCALL, Event

READ_SYSCALLS = ("preadv", "preadv2", "pread64", "read")
DIRECTIONS = (HTOD, DTOH, DTOD, HTOH)
_ROLE = {f.symbol: f.role for f in cf.FUNCTIONS}


def role(event: Event) -> str:
    return _ROLE.get(event.name, "")


def counted_copy(event: Event) -> bool:
    """A CUDA copy that counts: not a runtime call wrapping a driver call already counted."""
    return event.kind == CUDA and role(event) == cf.COPY and not event.extra.get("outer")


def transfer_ns(event: Event) -> int:
    """Start of the call to the end of the transfer (complete_ns for async work)."""
    return max(event.complete_ns, event.end_ns) - event.start_ns


def io_stats(events: list[Event]) -> dict:
    io = {name: {"calls": 0, "bytes": 0, "ns": 0} for name in READ_SYSCALLS}
    for e in events:
        if e.kind == SYSCALL and e.name in io:
            entry = io[e.name]
            entry["calls"] += 1
            entry["bytes"] += e.bytes
            entry["ns"] += e.duration_ns
    return io


def cuda_stats(events: list[Event]) -> dict:
    copies = {d: {"calls": 0, "bytes": 0, "api_ns": 0, "transfer_ns": 0, "pageable_bytes": 0,
                  "pinned_bytes": 0} for d in DIRECTIONS}
    timed = {"init": {"calls": 0, "ns": 0}, "context_create": {"calls": 0, "ns": 0},
             "checkpoint_api": {"calls": 0, "ns": 0}, "synchronize": {"calls": 0, "ns": 0}}
    role_to_key = {cf.INIT: "init", cf.CONTEXT: "context_create",
                   cf.CHECKPOINT: "checkpoint_api", cf.SYNC_STREAM: "synchronize",
                   cf.SYNC_CONTEXT: "synchronize", cf.SYNC_EVENT: "synchronize"}
    for e in events:
        if e.kind != CUDA or e.extra.get("outer"):
            continue
        r = role(e)
        if r == cf.COPY and e.direction in copies:
            entry = copies[e.direction]
            entry["calls"] += 1
            entry["bytes"] += e.bytes
            entry["api_ns"] += e.duration_ns
            entry["transfer_ns"] += transfer_ns(e)
            if e.host_memory == PAGEABLE:
                entry["pageable_bytes"] += e.bytes
            elif e.host_memory == PINNED:
                entry["pinned_bytes"] += e.bytes
        elif r in role_to_key:
            entry = timed[role_to_key[r]]
            entry["calls"] += 1
            entry["ns"] += e.duration_ns
    return {**copies, **timed}
