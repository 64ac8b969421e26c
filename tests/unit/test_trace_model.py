"""The trace file: what is saved loads back equal, fast, and bad files fail clearly."""

from __future__ import annotations

import gzip
import time

import pytest

from restoreprof.errors import RestoreprofError
from restoreprof.trace.events import CUDA, SYSCALL, Event
from restoreprof.trace.model import Trace, TraceMeta


def _events(n: int) -> list[Event]:
    out = []
    for i in range(n):
        if i % 3:
            out.append(Event(SYSCALL, "preadv", 10, 11, i * 100, i * 100 + 50, bytes=4096, ret=4096,
                             fd=5, path="/ckpt/pages-1.img"))
        else:
            out.append(Event(CUDA, "cuMemcpyHtoDAsync_v2", 10, 12, i * 100, i * 100 + 20,
                             bytes=1 << 20, direction="htod", host_memory="pinned", stream=7,
                             address=0xDEAD, complete_ns=i * 100 + 90,
                             extra={"async": True, "src": 1, "dst": 2}))
    return out


def test_round_trip_keeps_everything(tmp_path):
    meta = TraceMeta(target="pid 10", pids=[10], command=["x"], gpus=[{"name": "H100"}],
                     lost_events=3, start_ns=1, end_ns=2)
    trace = Trace(meta, _events(1000))
    loaded = Trace.load(trace.save(tmp_path / "t.rptrace"))
    assert loaded.meta == meta
    assert loaded.events == trace.events


def test_empty_trace_round_trips(tmp_path):
    trace = Trace(TraceMeta(target="command: true"))
    assert Trace.load(trace.save(tmp_path / "e.rptrace")).events == []


def test_a_million_events_save_and_load_in_seconds(tmp_path):
    trace = Trace(TraceMeta(target="big"), _events(1_000_000))
    t0 = time.perf_counter()
    path = trace.save(tmp_path / "big.rptrace")
    saved_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = Trace.load(path)
    loaded_s = time.perf_counter() - t0
    assert len(loaded.events) == 1_000_000 and loaded.events[-1] == trace.events[-1]
    assert saved_s < 15 and loaded_s < 15, (saved_s, loaded_s)


def test_not_a_trace_says_what_to_pass(tmp_path):
    bad = tmp_path / "bad.rptrace"
    with gzip.open(bad, "wt") as f:
        f.write('{"format": "something else"}\n')
    with pytest.raises(RestoreprofError, match="cannot read trace") as info:
        Trace.load(bad)
    assert "restoreprof trace" in info.value.hint


def test_newer_format_asks_for_upgrade(tmp_path):
    path = tmp_path / "new.rptrace"
    with gzip.open(path, "wt") as f:
        f.write('{"format": "restoreprof-trace", "version": 99, "meta": {"target": "x"}}\n')
    with pytest.raises(RestoreprofError, match="newer restoreprof"):
        Trace.load(path)


def _write_raw(path, *lines) -> None:
    with gzip.open(path, "wt") as f:
        for line in lines:
            f.write(line + "\n")


GOOD_HEADER = '{"format": "restoreprof-trace", "version": 1, "meta": {"target": "x"}}'


@pytest.mark.parametrize("lines", [
    ['["format", "restoreprof-trace"]'],                                       # header a list
    ['{"format": "restoreprof-trace", "version": "1", "meta": {}}'],           # version a string
    ['{"format": "restoreprof-trace", "version": 1, "meta": []}'],             # meta a list
    ['{"format": "restoreprof-trace", "version": 1, "meta": {"target": 5}}'],  # target a number
    ['{"format": "restoreprof-trace", "version": 1, "meta": {"pids": "1"}}'],  # pids a string
    [GOOD_HEADER, "[1, 2]"],                                                   # block a list
    [GOOD_HEADER, '{"n": 1, "columns": []}'],                                  # columns a list
    [GOOD_HEADER, '{"n": "1", "columns": {}}'],                                # count a string
    [GOOD_HEADER, '{"n": 1, "columns": {"kind": ["cuda"], "name": ["x"], "pid": [1], '
                  '"tid": [1], "start_ns": ["0"], "end_ns": [1]}}'],           # a time a string
    [GOOD_HEADER, '{"n": 2, "columns": {"kind": ["cuda"], "name": ["x"], "pid": [1], '
                  '"tid": [1], "start_ns": [0], "end_ns": [1]}}'],             # too short
    [GOOD_HEADER, '{"n": 1, "columns": {"kind": ["cuda"], "name": ["x"], "pid": [1], '
                  '"tid": [1], "start_ns": [0], "end_ns": [1]}, "extra": {"0": "x"}}'],
])
def test_json_of_the_wrong_types_is_a_clear_error(tmp_path, lines):
    path = tmp_path / "bad.rptrace"
    _write_raw(path, *lines)
    with pytest.raises(RestoreprofError, match="cannot read trace") as info:
        Trace.load(path)
    assert "restoreprof trace" in info.value.hint


def test_meta_keeps_exit_status_and_ceilings(tmp_path):
    meta = TraceMeta(target="x", exit_status=-9, ceilings={"disk_read_gbps": 2.0})
    loaded = Trace.load(Trace(meta, []).save(tmp_path / "t.rptrace")).meta
    assert loaded.exit_status == -9 and loaded.shell_exit_status == 137
    assert loaded.ceilings == {"disk_read_gbps": 2.0}
