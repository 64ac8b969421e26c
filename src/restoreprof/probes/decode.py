"""Records from the BPF ring buffer, turned into the one Event schema.

``decode`` maps one record to an Event with what the record alone tells. ``Enricher`` adds
what needs the history of the trace, in the order calls completed:

- a copy's direction when the call does not name it (generic ``cuMemcpy``,
  ``cudaMemcpyDefault``), from the device allocations seen;
- pinned or pageable, from the host allocations and registrations seen;
- ``complete_ns`` of async copies, at the next synchronizing call that covers their stream;
- ``extra["outer"]`` on a call that only wraps another probed call of the same role
  (``cudaMemcpy`` around ``cuMemcpyHtoD_v2``): analysis counts the inner one, once;
- the file name of a read, from the openat that returned its fd.
"""

from __future__ import annotations

import bisect
import struct
from collections import defaultdict, deque

from restoreprof.probes import cuda_functions as cf
from restoreprof.probes.bpf_program import (
    CUDA_OP_BASE,
    OP_EXEC,
    OP_FORK,
    OP_OPENAT,
    PROCESS_OPS,
    RECORD_BYTES,
    RECORD_FORMAT,
    SYSCALL_OPS,
)
from restoreprof.trace.events import CUDA, DTOD, DTOH, HTOD, HTOH, PAGEABLE, PINNED, PROCESS, SYSCALL, Event

_unpack = struct.Struct(RECORD_FORMAT).unpack_from
_NO_ARG = -1


def _arg(args: tuple[int, ...], index: int) -> int:
    return args[index] if index != _NO_ARG else 0


def decode(raw: bytes) -> Event:
    """One ring buffer record as an Event (enrichment not applied)."""
    (start_ns, end_ns, ret, a0, a1, a2, a3, a4, a5, out, pid, tid, op, _pad) = _unpack(raw)
    if op >= CUDA_OP_BASE:
        return _decode_cuda(cf.FUNCTIONS[op - CUDA_OP_BASE], (a0, a1, a2, a3, a4, a5), out,
                            start_ns, end_ns, ret, pid, tid)
    if op in SYSCALL_OPS:
        if op == OP_OPENAT:
            return Event(SYSCALL, "openat", pid, tid, start_ns, end_ns, ret=ret,
                         fd=ret if ret >= 0 else -1, path=_path(raw))
        return Event(SYSCALL, SYSCALL_OPS[op], pid, tid, start_ns, end_ns,
                     bytes=ret if ret > 0 else 0, ret=ret, fd=a0)
    name = PROCESS_OPS.get(op, f"op{op}")
    event = Event(PROCESS, name, pid, tid, start_ns, end_ns)
    if op == OP_FORK:
        event.extra = {"child": a0}
    elif op == OP_EXEC:
        event.path = _path(raw)
    return event


def _path(raw: bytes) -> str:
    return raw[RECORD_BYTES:].split(b"\0", 1)[0].decode("utf-8", "replace")


def _decode_cuda(function: cf.CudaFunction, args: tuple[int, ...], out: int, start_ns: int,
                 end_ns: int, ret: int, pid: int, tid: int) -> Event:
    event = Event(CUDA, function.symbol, pid, tid, start_ns, end_ns, ret=ret)
    role = function.role
    if function.size != _NO_ARG:
        size = args[function.size]
        if function.size_times != _NO_ARG:
            size *= args[function.size_times]
        event.bytes = size
    if function.stream != _NO_ARG:
        event.stream = args[function.stream]
    if role == cf.COPY:
        dst, src = args[function.dst], args[function.src]
        event.extra = {"dst": dst, "src": src}
        if function.direction == cf.FROM_KIND:
            kind = args[function.kind]
            event.extra["kind"] = kind
            event.direction = cf.MEMCPY_KIND_DIRECTIONS.get(kind, "")
        elif function.direction == cf.FROM_TYPES:
            types = args[function.kind]
            src_host = (types & 0xFF) == cf.HOST_MEMORY_TYPE
            dst_host = (types >> 8 & 0xFF) == cf.HOST_MEMORY_TYPE
            event.direction = _direction(src_host, dst_host)
        elif function.direction != cf.FROM_POINTERS:
            event.direction = function.direction
        if function.is_async:
            event.extra["async"] = True
    elif function.out_arg != _NO_ARG:
        event.address = out
    elif function.ptr != _NO_ARG:
        event.address = args[function.ptr]
    if role == cf.CHECKPOINT:
        event.extra = {"target_pid": args[0] & 0xFFFFFFFF}
    return event


def _direction(src_host: bool, dst_host: bool) -> str:
    if src_host:
        return HTOH if dst_host else HTOD
    return DTOH if dst_host else DTOD


class _Ranges:
    """Non-overlapping address ranges with point lookup."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._ends: dict[int, int] = {}

    def add(self, base: int, size: int) -> None:
        if base not in self._ends:
            bisect.insort(self._bases, base)
        self._ends[base] = base + size

    def remove(self, base: int) -> None:
        if self._ends.pop(base, None) is not None:
            del self._bases[bisect.bisect_left(self._bases, base)]

    def contains(self, address: int) -> bool:
        i = bisect.bisect_right(self._bases, address) - 1
        return i >= 0 and address < self._ends[self._bases[i]]


_HOST_SIDE = {HTOD: "src", DTOH: "dst"}
_ROLE_OF = {f.symbol: f.role for f in cf.FUNCTIONS}
_ASYNC_SYNC = (cf.SYNC_STREAM, cf.SYNC_CONTEXT, cf.SYNC_EVENT)


class Enricher:
    """Adds what needs the trace's history; feed it events in the order calls completed."""

    def __init__(self) -> None:
        self.pinned: dict[int, _Ranges] = defaultdict(_Ranges)
        self.device: dict[int, _Ranges] = defaultdict(_Ranges)
        self.pending: dict[tuple[int, int], list[Event]] = defaultdict(list)
        self.event_streams: dict[tuple[int, int], tuple[int, int]] = {}
        self.fd_paths: dict[tuple[int, int], str] = {}
        self.recent: dict[int, deque[Event]] = defaultdict(lambda: deque(maxlen=16))

    def know_pinned(self, pid: int, ranges: list[list[int]]) -> None:
        """Host memory pid pinned before the trace began, which no traced call shows."""
        for base, size in ranges:
            self.pinned[pid].add(base, size)

    def add(self, event: Event) -> None:
        if event.kind == SYSCALL:
            self._syscall(event)
        elif event.kind == CUDA:
            self._cuda(event)
        elif event.kind == PROCESS and event.name == "exec":
            # A new program image: its fds survive, its CUDA state does not.
            self.pinned.pop(event.pid, None)
            self.device.pop(event.pid, None)

    def _syscall(self, event: Event) -> None:
        key = (event.pid, event.fd)
        if event.name == "openat":
            if event.fd >= 0:
                self.fd_paths[key] = event.path
        else:
            event.path = self.fd_paths.get(key, event.path)

    def _cuda(self, event: Event) -> None:
        role = _ROLE_OF.get(event.name)
        self._mark_outer(event, role)
        pid = event.pid
        if role == cf.COPY:
            self._copy(event)
        elif event.ret != 0:
            return  # a failed call changes no state
        elif role in (cf.ALLOC, cf.VMM_MAP):
            self.device[pid].add(event.address, event.bytes)
        elif role in (cf.FREE, cf.VMM_UNMAP):
            self.device[pid].remove(event.address)
        elif role in (cf.HOST_ALLOC, cf.HOST_REGISTER):
            self.pinned[pid].add(event.address, event.bytes)
        elif role in (cf.HOST_FREE, cf.HOST_UNREGISTER):
            self.pinned[pid].remove(event.address)
        elif role == cf.EVENT_RECORD:
            self.event_streams[(pid, event.address)] = (event.stream, event.end_ns)
        elif role in _ASYNC_SYNC:
            self._complete(event, role)

    def _mark_outer(self, event: Event, role: str | None) -> None:
        recent = self.recent[event.tid]
        for inner in recent:
            if (inner.start_ns >= event.start_ns and inner.end_ns <= event.end_ns
                    and _ROLE_OF.get(inner.name) == role and inner.pid == event.pid):
                event.extra = {**event.extra, "outer": True}
                break
        recent.append(event)

    def _copy(self, event: Event) -> None:
        pid, extra = event.pid, event.extra
        if not event.direction:
            device = self.device.get(pid)
            src_dev = bool(device and device.contains(extra.get("src", 0)))
            dst_dev = bool(device and device.contains(extra.get("dst", 0)))
            event.direction = _direction(not src_dev, not dst_dev)
        side = _HOST_SIDE.get(event.direction)
        if side:
            pinned = self.pinned.get(pid)
            host = extra.get(side, 0)
            event.host_memory = PINNED if pinned and pinned.contains(host) else PAGEABLE
        event.address = extra.get("src" if event.direction == DTOH else "dst", 0)
        if extra.get("async"):
            if not extra.get("outer"):
                self.pending[(pid, event.stream)].append(event)
        elif not extra.get("outer"):
            # A blocking copy waits for the legacy default stream's earlier work.
            self._finish(self.pending.pop((pid, 0), []), event.end_ns, event.start_ns)

    def _complete(self, event: Event, role: str) -> None:
        pid = event.pid
        if role == cf.SYNC_STREAM:
            keys = [(pid, event.stream)]
            before_ns = event.start_ns
        elif role == cf.SYNC_CONTEXT:
            keys = [k for k in self.pending if k[0] == pid]
            before_ns = event.start_ns
        else:
            recorded = self.event_streams.get((pid, event.address))
            if recorded is None:
                return
            keys, before_ns = [(pid, recorded[0])], recorded[1]
        for key in keys:
            waiting = self.pending.get(key, [])
            self.pending[key] = self._finish(waiting, event.end_ns, before_ns)

    @staticmethod
    def _finish(waiting: list[Event], complete_ns: int, before_ns: int) -> list[Event]:
        """Completes work issued before before_ns; returns what is still waiting."""
        still = []
        for copy in waiting:
            if copy.end_ns <= before_ns:
                copy.complete_ns = complete_ns
            else:
                still.append(copy)
        return still


def enrich(events: list[Event], known_pinned: dict[int, list[list[int]]] | None = None) -> None:
    """Recompute the enrichment of a whole trace, in completion order. known_pinned: {pid:
    [[base, bytes], ...]} pinned before the trace began (Enricher.know_pinned)."""
    enricher = Enricher()
    for pid, ranges in (known_pinned or {}).items():
        enricher.know_pinned(pid, ranges)
    for event in sorted(events, key=lambda e: e.end_ns):
        if event.kind == CUDA:
            event.extra.pop("outer", None)
            event.complete_ns = 0
            if event.name in _FROM_POINTERS or event.extra.get("kind") == _MEMCPY_DEFAULT:
                event.direction = ""
        enricher.add(event)


_FROM_POINTERS = {f.symbol for f in cf.FUNCTIONS if f.direction == cf.FROM_POINTERS}
_MEMCPY_DEFAULT = 4
