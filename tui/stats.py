"""The live view's incremental aggregator: what each frame needs, updated one event at a time.

The full report (phases, bottleneck) comes from ``restoreprof.analysis``, run on the events so
far a few times a second at most; this module keeps only the cheap running sums a frame needs
(top costs and the throughput series), so a frame never re-reads the whole trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from restoreprof.analysis.ceilings import Ceilings
from restoreprof.trace.events import CUDA, HTOD, SYSCALL, Event

# The syscalls that restore pages from an image (CRIU: preadv; Python's os.preadv: preadv2).
PAGE_READ_SYSCALLS = frozenset({"preadv", "preadv2", "pread64", "read"})

# Throughput is kept in fine buckets of trace time and resampled to the graph's width.
BUCKET_NS = 10_000_000


@dataclass(frozen=True, slots=True)
class CostRow:
    """One call or syscall's running totals."""

    kind: str
    name: str
    calls: int
    bytes: int
    time_ns: int


@dataclass(frozen=True, eq=False)  # arrays: compare by identity
class ThroughputSeries:
    """Bytes moved per ``BUCKET_NS`` bucket, from the view's start to now."""

    bytes_per_bucket: np.ndarray
    bucket_ns: int = BUCKET_NS

    def gbps_columns(self, columns: int) -> np.ndarray:
        """Average GB/s in at most ``columns`` equal slices of whole buckets."""
        n = len(self.bytes_per_bucket)
        if n == 0 or columns <= 0:
            return np.zeros(0)
        per_column = max(1, -(-n // columns))
        padded = np.zeros(-(-n // per_column) * per_column)
        padded[:n] = self.bytes_per_bucket
        sums = padded.reshape(-1, per_column).sum(axis=1)
        widths = np.full(len(sums), per_column)
        widths[-1] = n - per_column * (len(sums) - 1)  # the last column may be partial
        return sums / (widths * self.bucket_ns)  # bytes per ns == GB/s

    def gbps_latest(self, window_ns: int = 500_000_000) -> float:
        buckets = max(1, window_ns // self.bucket_ns)
        recent = self.bytes_per_bucket[-buckets:]
        return float(recent.sum() / (buckets * self.bucket_ns)) if len(recent) else 0.0

    def gbps_peak(self, window_ns: int = 100_000_000) -> float:
        return float(self.gbps_columns(max(1, len(self.bytes_per_bucket) * self.bucket_ns
                                           // window_ns)).max(initial=0.0))


@dataclass(frozen=True)
class Snapshot:
    """Everything one frame shows; posted from the feed thread, read on the UI thread."""

    target: str
    mode: str                      # "live" or "replay"
    start_ns: int                  # trace time the view starts at
    now_ns: int                    # trace time of this frame
    events_seen: int
    pids: tuple[int, ...]
    lost_events: int
    costs: tuple[CostRow, ...]
    page_reads: ThroughputSeries
    h2d_copies: ThroughputSeries
    page_read_bytes: int
    h2d_bytes: int
    gpus: tuple[dict, ...] = ()
    report: dict | None = None     # restoreprof.analysis output on the events so far
    ceilings: Ceilings | None = None   # what the analysis measures the phases against
    finished: bool = False
    note: str = ""                 # why the feed stopped, or what it waits for

    @property
    def elapsed_ns(self) -> int:
        return max(0, self.now_ns - self.start_ns)


class _Buckets:
    """A growable array of bytes per bucket of trace time."""

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.values = np.zeros(1024)
        self.used = 0

    def _grow(self, size: int) -> None:
        if size > len(self.values):
            grown = np.zeros(max(size, 2 * len(self.values)))
            grown[: len(self.values)] = self.values
            self.values = grown
        self.used = max(self.used, size)

    def add_span(self, start_ns: int, end_ns: int, nbytes: int) -> None:
        """Spread ``nbytes`` evenly over [start_ns, end_ns), as a transfer would move them."""
        start_ns = max(start_ns, self.start_ns)
        end_ns = max(end_ns, start_ns + 1)
        first = (start_ns - self.start_ns) // BUCKET_NS
        last = (end_ns - 1 - self.start_ns) // BUCKET_NS
        self._grow(last + 1)
        if first == last:
            self.values[first] += nbytes
            return
        rate = nbytes / (end_ns - start_ns)
        for bucket in range(first, last + 1):
            lo = max(start_ns, self.start_ns + bucket * BUCKET_NS)
            hi = min(end_ns, self.start_ns + (bucket + 1) * BUCKET_NS)
            self.values[bucket] += rate * (hi - lo)

    def series(self, now_ns: int) -> ThroughputSeries:
        elapsed_ns = max(now_ns, self.start_ns) - self.start_ns
        upto = max(self.used, 1, -(-elapsed_ns // BUCKET_NS))
        self._grow(upto)
        return ThroughputSeries(self.values[:upto].copy())


class LiveStats:
    """Running totals over the events seen so far. Not thread-safe: one feed thread owns it."""

    def __init__(self, target: str, mode: str, start_ns: int) -> None:
        self.target = target
        self.mode = mode
        self.start_ns = start_ns
        self.events_seen = 0
        self._pids: set[int] = set()
        self._costs: dict[tuple[str, str], list[int]] = {}
        self._page_reads = _Buckets(start_ns)
        self._h2d = _Buckets(start_ns)
        self.page_read_bytes = 0
        self.h2d_bytes = 0

    def add(self, event: Event) -> None:
        self.events_seen += 1
        self._pids.add(event.pid)
        if event.kind not in (SYSCALL, CUDA):
            return  # process and mark events are context, not costs
        totals = self._costs.setdefault((event.kind, event.name), [0, 0, 0])
        totals[0] += 1
        totals[1] += max(0, event.bytes)
        totals[2] += event.duration_ns
        if event.kind == SYSCALL and event.name in PAGE_READ_SYSCALLS and event.bytes > 0:
            self.page_read_bytes += event.bytes
            self._page_reads.add_span(event.start_ns, event.end_ns, event.bytes)
        elif event.kind == CUDA and event.direction == HTOD and event.bytes > 0:
            # An async copy's bytes are on the GPU only when a later sync covers them.
            self.h2d_bytes += event.bytes
            self._h2d.add_span(event.start_ns, event.complete_ns or event.end_ns, event.bytes)

    def costs(self) -> tuple[CostRow, ...]:
        return tuple(CostRow(kind, name, *totals) for (kind, name), totals in self._costs.items())

    def snapshot(self, now_ns: int, lost_events: int = 0, **extra) -> Snapshot:
        return Snapshot(
            target=self.target,
            mode=self.mode,
            start_ns=self.start_ns,
            now_ns=now_ns,
            events_seen=self.events_seen,
            pids=tuple(sorted(self._pids)),
            lost_events=lost_events,
            costs=self.costs(),
            page_reads=self._page_reads.series(now_ns),
            h2d_copies=self._h2d.series(now_ns),
            page_read_bytes=self.page_read_bytes,
            h2d_bytes=self.h2d_bytes,
            **extra,
        )
