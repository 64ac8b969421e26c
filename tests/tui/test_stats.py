"""The live aggregator: running costs and throughput series, one event at a time."""

from __future__ import annotations

import pytest
from restoreprof.tui.stats import BUCKET_NS, LiveStats

from restoreprof.trace.events import Event

T0 = 1_000_000_000


def read(start_ms: float, end_ms: float, nbytes: int, name: str = "preadv") -> Event:
    return Event("syscall", name, 7, 7, T0 + int(start_ms * 1e6), T0 + int(end_ms * 1e6),
                 bytes=nbytes, ret=nbytes, fd=3)


def test_costs_add_up_per_call():
    stats = LiveStats("t", "replay", T0)
    stats.add(read(0, 1, 100))
    stats.add(read(1, 3, 200))
    stats.add(Event("cuda", "cuMemcpyHtoD_v2", 7, 7, T0, T0 + 5_000, bytes=64, direction="htod"))
    stats.add(Event("mark", "criu restore", 7, 7, T0, T0))
    costs = {row.name: row for row in stats.costs()}
    assert set(costs) == {"preadv", "cuMemcpyHtoD_v2"}  # marks are not costs
    assert (costs["preadv"].calls, costs["preadv"].bytes, costs["preadv"].time_ns) == \
        (2, 300, 3_000_000)
    assert stats.events_seen == 4
    assert (stats.page_read_bytes, stats.h2d_bytes) == (300, 64)


def test_a_long_read_spreads_over_the_buckets_it_spans():
    stats = LiveStats("t", "live", T0)
    stats.add(read(0, 40, 4_000_000))  # 4 buckets of 10 ms, 1 MB each
    series = stats.snapshot(T0 + 40_000_000).page_reads
    assert series.bytes_per_bucket[:4] == pytest.approx([1e6] * 4)
    # 1 MB per 10 ms bucket is 0.1 GB/s, whatever the column width
    assert series.gbps_columns(2) == pytest.approx([0.1, 0.1])
    assert series.gbps_columns(100) == pytest.approx([0.1] * 4)
    assert series.gbps_columns(3) == pytest.approx([0.1, 0.1])


def test_failed_reads_and_other_syscalls_move_no_pages():
    stats = LiveStats("t", "live", T0)
    stats.add(Event("syscall", "preadv", 7, 7, T0, T0 + 10, bytes=0, ret=-14))
    stats.add(Event("syscall", "openat", 7, 7, T0, T0 + 10, path="/ckpt/pages-1.img"))
    assert stats.page_read_bytes == 0


def test_async_copies_count_until_their_completion():
    stats = LiveStats("t", "live", T0)
    stats.add(Event("cuda", "cuMemcpyHtoDAsync_v2", 7, 7, T0, T0 + 1_000, bytes=2_000_000,
                    direction="htod", complete_ns=T0 + 2 * BUCKET_NS))
    series = stats.snapshot(T0 + 2 * BUCKET_NS).h2d_copies
    assert series.bytes_per_bucket[:2] == pytest.approx([1e6, 1e6])


def test_snapshot_elapsed_is_trace_time():
    stats = LiveStats("t", "replay", T0)
    assert stats.snapshot(T0 + 1_500_000_000).elapsed_ns == 1_500_000_000
