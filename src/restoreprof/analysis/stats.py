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


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of intervals, as sorted disjoint intervals."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def total_ns(intervals: list[tuple[int, int]]) -> int:
    return sum(end - start for start, end in intervals)


def io_stats(events: list[Event]) -> dict:
    """Per read syscall: calls, bytes returned, ns (summed over calls) and busy_ns (the time at
    least one was in flight: concurrent reads count once, so bytes / busy_ns is their rate)."""
    io = {name: {"calls": 0, "bytes": 0, "ns": 0, "busy_ns": 0} for name in READ_SYSCALLS}
    spans: dict[str, list[tuple[int, int]]] = {name: [] for name in READ_SYSCALLS}
    for e in events:
        if e.kind == SYSCALL and e.name in io:
            entry = io[e.name]
            entry["calls"] += 1
            entry["bytes"] += e.bytes
            entry["ns"] += e.duration_ns
            spans[e.name].append((e.start_ns, e.start_ns + e.duration_ns))
    for name, entry in io.items():
        entry["busy_ns"] = total_ns(merge(spans[name]))
    return io


def cuda_stats(events: list[Event]) -> dict:
    """Per copy direction: calls, bytes requested, api_ns and transfer_ns (summed over calls),
    busy_ns (the time at least one transfer was in flight), pinned and pageable bytes; and the
    calls and time of init, context creation, the checkpoint API and synchronization."""
    copies = {d: {"calls": 0, "bytes": 0, "api_ns": 0, "transfer_ns": 0, "busy_ns": 0,
                  "pageable_bytes": 0, "pinned_bytes": 0} for d in DIRECTIONS}
    spans: dict[str, list[tuple[int, int]]] = {d: [] for d in DIRECTIONS}
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
            spans[e.direction].append((e.start_ns, e.start_ns + transfer_ns(e)))
            if e.host_memory == PAGEABLE:
                entry["pageable_bytes"] += e.bytes
            elif e.host_memory == PINNED:
                entry["pinned_bytes"] += e.bytes
        elif r in role_to_key:
            entry = timed[role_to_key[r]]
            entry["calls"] += 1
            entry["ns"] += e.duration_ns
    for direction, entry in copies.items():
        entry["busy_ns"] = total_ns(merge(spans[direction]))
    return {**copies, **timed}
