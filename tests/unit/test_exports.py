"""Every export over one synthetic restore: Chrome trace, folded stacks, SVG, speedscope,
report.json and the printed summary."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import jsonschema
import pytest
from export_checks import (
    assert_flame_matches_report,
    assert_no_track_has_crossing_slices,
    assert_speedscope_valid,
    check_all,
    folded_weights_us,
    slices_by_track,
    speedscope_durations_ns,
)
from test_analysis import CALIBRATED, MS, restore_trace

from restoreprof.analysis import analyze
from restoreprof.exports import FILE_NAMES, write_all
from restoreprof.exports.report import summary
from restoreprof.trace.events import CUDA, MARK, PROCESS, SYSCALL, Event
from restoreprof.trace.model import Trace, TraceMeta


def _trace() -> Trace:
    trace = restore_trace()
    trace.events += [
        Event(PROCESS, "exec", 2, 2, 99 * MS, 99 * MS, path="/usr/sbin/criu"),
        Event(CUDA, "cuMemcpyHtoDAsync_v2", 1, 4, 700 * MS, 701 * MS, bytes=1 << 20,
              direction="htod", host_memory="pinned", stream=5, complete_ns=720 * MS,
              extra={"async": True}),
        # overlapping but not nested on one thread: speedscope output must still nest
        Event(CUDA, "cuStreamSynchronize", 1, 4, 700 * MS + 500, 702 * MS, stream=5),
    ]
    return trace


def _outputs(tmp_path):
    trace = _trace()
    paths = write_all(trace, analyze(trace, CALIBRATED), tmp_path)
    return trace, {p.name: p for p in paths}


def test_write_all_writes_each_file(tmp_path):
    _, paths = _outputs(tmp_path)
    expected = {name for names in FILE_NAMES.values() for name in names} | {"trace.rptrace"}
    assert set(paths) == expected
    assert Trace.load(paths["trace.rptrace"]).events == _trace().events


def test_chrome_trace_is_valid_trace_event_format(tmp_path):
    _, paths = _outputs(tmp_path)
    doc = json.loads(paths["trace.json"].read_text())
    events = doc["traceEvents"]
    assert doc["displayTimeUnit"] == "ms"
    for e in events:
        assert {"name", "ph", "pid"} <= set(e)
        assert e["ph"] in {"X", "M", "C", "i"}
        if e["ph"] == "X":
            assert {"ts", "dur", "tid", "cat", "args"} <= set(e) and e["dur"] >= 0
        if e["ph"] == "C":
            assert isinstance(e["args"]["GB/s"], float | int)
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert "criu (2)" in names
    reads = [e for e in events if e["ph"] == "X" and e["name"] == "preadv"]
    assert reads and reads[0]["args"]["bytes"] == 100_000_000 and reads[0]["args"]["GB/s"] == 1.0
    assert reads[0]["args"]["phase"] == "cpu memory restore"
    assert any(e["name"].endswith(" transfer") for e in events)
    assert {e["name"] for e in events if e["ph"] == "C"} >= {"read GB/s", "htod GB/s"}
    steps = [e for e in events if e.get("cat") == "mark"]
    assert {e["tid"] for e in steps} == {0}   # the three steps follow one another: one lane


def test_folded_stacks_syntax(tmp_path):
    _, paths = _outputs(tmp_path)
    lines = paths["flame.folded"].read_text().splitlines()
    assert lines
    for line in lines:
        assert re.fullmatch(r"[^; ][^;]*(;[^;]+)+ \d+", line), line
    stacks = folded_weights_us(paths["flame.folded"].read_text())
    # CRIU's reads hold 100-600 ms less the 1 ms in which the GPU phase (a copy) ran first
    assert stacks["cpu memory restore;criu;preadv;pages-1.img"] == 500_000
    assert not any("cudaMemcpy;" in s for s in stacks)   # outer runtime call: not counted twice


def test_svg_is_well_formed_and_clickable(tmp_path):
    _, paths = _outputs(tmp_path)
    root = ET.parse(paths["flame.svg"]).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    frames = root.findall(".//s:g[@class='f']", ns)
    assert len(frames) > 5
    assert all(g.find("s:title", ns) is not None and g.find("s:rect", ns) is not None
               for g in frames)
    assert "function zoom" in root.find("s:script", ns).text


def test_speedscope_validates_and_nests(tmp_path):
    _, paths = _outputs(tmp_path)
    doc = json.loads(paths["speedscope.json"].read_text())
    assert_speedscope_valid(doc)


def test_report_json_and_80_column_summary(tmp_path):
    _, paths = _outputs(tmp_path)
    report = json.loads(paths["report.json"].read_text())
    assert report["io"]["preadv"]["bytes"] == 500_000_000
    text = summary(report)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "bottleneck: cpu memory restore" in text and "readahead=on" in text


def concurrent_restore_trace() -> Trace:
    """A CPU restore as 'restoreprof trace --restore' records it (the issue's demo, scaled):
    the tool (pid 1) checks the page images (195-1570 ms) while CRIU restores (200-2780 ms):
    the two steps cross. CRIU (pid 2) reads the pages, two restored processes get a GPU
    restore step each (concurrent, on the tool's pid), with async copies whose transfers
    outlive the next call on their thread."""
    ev = [Event(MARK, "verify page images", 1, 1, 195 * MS, 1570 * MS, path="verify page images"),
          Event(MARK, "criu restore", 1, 1, 200 * MS, 2780 * MS, path="criu restore"),
          Event(PROCESS, "exec", 2, 2, 199 * MS, 199 * MS, path="/usr/sbin/criu")]
    for i in range(10):      # the tool's check reads the same pages (not the restore's reads)
        ev.append(Event(SYSCALL, "pread64", 1, 7, (200 + 130 * i) * MS, (300 + 130 * i) * MS,
                        bytes=10_000_000, fd=9, path="/ckpt/pages-1.img"))
    for i in range(24):      # CRIU's page reads: 24 x 100 ms between 300 and 2700 ms
        ev.append(Event(SYSCALL, "preadv", 2, 2, (300 + 100 * i) * MS, (390 + 100 * i) * MS,
                        bytes=100_000_000, fd=4, path="/ckpt/pages-1.img"))
    for pid, start in ((11, 2780), (12, 2790)):
        ev.append(Event(MARK, f"GPU restore pid {pid}", 1, 1, start * MS, (start + 300) * MS,
                        path=f"GPU restore pid {pid}", extra={"step_pid": pid}))
        for i in range(3):
            t = (start + 10 + 50 * i) * MS
            ev.append(Event(CUDA, "cuMemcpyHtoDAsync_v2", 1, 20 + pid, t, t + MS, bytes=1 << 26,
                            direction="htod", host_memory="pinned", stream=5,
                            complete_ns=t + 80 * MS))
            ev.append(Event(CUDA, "cuStreamSynchronize", 1, 20 + pid, t + 2 * MS,
                            t + 40 * MS, stream=5))
    return Trace(TraceMeta(target="restore: /ckpt", pids=[1, 2], lost_events=0), ev)


def _concurrent_outputs(tmp_path):
    trace = concurrent_restore_trace()
    report = analyze(trace, CALIBRATED)
    paths = {p.name: p for p in write_all(trace, report, tmp_path)}
    return trace, report, paths


def test_chrome_tracks_never_hold_crossing_slices(tmp_path):
    """Perfetto drops a slice that crosses another on its track: 'criu restore' used to vanish."""
    trace, _, paths = _concurrent_outputs(tmp_path)
    doc = json.loads(paths["trace.json"].read_text())
    assert_no_track_has_crossing_slices(doc)
    tracks = slices_by_track(doc)
    spans = {name: end - start for slices in tracks.values() for start, end, name in slices}
    assert spans["criu restore"] == 2580 * MS and spans["verify page images"] == 1375 * MS
    # every event is there, once
    shown = sum(len(slices) for slices in tracks.values())
    transfers = sum(1 for e in trace.events if e.complete_ns > e.end_ns)
    assert shown == sum(1 for e in trace.events if e.kind != PROCESS) + transfers
    names = {(e["pid"], e["args"]["name"]) for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    # one steps track per restored process, in that process
    assert (11, "restore steps") in names and (12, "restore steps") in names
    assert (1, "restore steps, lane 2") in names


def test_speedscope_keeps_each_span_whole_in_lanes(tmp_path):
    """Clipping showed 'criu restore' at half its length; lanes keep it whole."""
    _, _, paths = _concurrent_outputs(tmp_path)
    doc = json.loads(paths["speedscope.json"].read_text())
    assert_speedscope_valid(doc)
    assert speedscope_durations_ns(doc, "criu restore") == [2580 * MS]
    assert speedscope_durations_ns(doc, "verify page images") == [1375 * MS]
    assert any(p["name"].endswith("restore steps, lane 2") for p in doc["profiles"])


def test_flame_graph_adds_up_to_the_wall_time_and_the_report(tmp_path):
    """Steps were leaves beside the reads they contain: 6.81 s of frames for a 2.79 s restore."""
    _, report, paths = _concurrent_outputs(tmp_path)
    folded = paths["flame.folded"].read_text()
    assert_flame_matches_report(folded, report)
    stacks = folded_weights_us(folded)
    # the criu restore step holds only the time in which none of its reads was seen
    assert stacks.get("other;restore steps;criu restore", 0) < 500_000
    assert not any(s.startswith("cpu memory restore;restore steps") for s in stacks)
    cpu_share = sum(w for s, w in stacks.items() if s.startswith("cpu memory restore;"))
    assert cpu_share == pytest.approx(2400 * 900, rel=0.01)   # 24 reads of 90 ms


def test_every_export_check_passes_on_the_simple_restore(tmp_path):
    _outputs(tmp_path)
    check_all(tmp_path)


def test_the_checks_catch_broken_exports():
    """The checks fail on what the old exports wrote (crossing slices, widths beside steps)."""
    crossing = {"traceEvents": [
        {"name": "criu restore", "ph": "X", "ts": 200_000, "dur": 2_580_000, "pid": 1, "tid": 0},
        {"name": "verify page images", "ph": "X", "ts": 200_000, "dur": 1_370_000, "pid": 1,
         "tid": 0},
        {"name": "late", "ph": "X", "ts": 1_000_000, "dur": 1_000_000, "pid": 1, "tid": 0}]}
    with pytest.raises(AssertionError, match="crosses"):
        assert_no_track_has_crossing_slices(crossing)
    report = {"wall_ns": 1000 * MS, "phases": [
        {"name": "cpu memory restore", "exclusive_ns": 900 * MS},
        {"name": "other", "exclusive_ns": 100 * MS}]}
    assert_flame_matches_report("cpu memory restore;criu;preadv 900000\nother;x 100000\n", report)
    with pytest.raises(AssertionError):   # a step counted beside its reads
        assert_flame_matches_report("cpu memory restore;criu;preadv 900000\n"
                                    "other;restore steps;criu restore 1000000\n", report)
    with pytest.raises(jsonschema.ValidationError):
        assert_speedscope_valid({"$schema": "https://www.speedscope.app/file-format-schema.json",
                                 "shared": {"frames": [{"file": "x"}]}, "profiles": []})
