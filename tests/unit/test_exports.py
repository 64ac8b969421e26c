"""Every export over one synthetic restore: Chrome trace, folded stacks, SVG, speedscope,
report.json and the printed summary."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import jsonschema
from test_analysis import CALIBRATED, MS, restore_trace

from restoreprof.analysis import analyze
from restoreprof.exports import FILE_NAMES, write_all
from restoreprof.exports.report import summary
from restoreprof.trace.events import CUDA, PROCESS, Event
from restoreprof.trace.model import Trace

# The part of speedscope's file format schema an evented profile uses
# (https://www.speedscope.app/file-format-schema.json, written out here).
SPEEDSCOPE_SCHEMA = {
    "type": "object",
    "required": ["$schema", "shared", "profiles"],
    "properties": {
        "$schema": {"const": "https://www.speedscope.app/file-format-schema.json"},
        "shared": {"type": "object", "required": ["frames"], "properties": {"frames": {
            "type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "file": {"type": "string"},
                "line": {"type": "number"}, "col": {"type": "number"}}}}}},
        "profiles": {"type": "array", "items": {
            "type": "object",
            "required": ["type", "name", "unit", "startValue", "endValue", "events"],
            "properties": {
                "type": {"const": "evented"}, "name": {"type": "string"},
                "unit": {"enum": ["none", "nanoseconds", "microseconds", "milliseconds",
                                  "seconds", "bytes"]},
                "startValue": {"type": "number"}, "endValue": {"type": "number"},
                "events": {"type": "array", "items": {
                    "type": "object", "required": ["type", "at", "frame"],
                    "properties": {"type": {"enum": ["O", "C"]}, "at": {"type": "number"},
                                   "frame": {"type": "integer", "minimum": 0}}}}}}},
        "name": {"type": "string"}, "activeProfileIndex": {"type": "number"},
        "exporter": {"type": "string"},
    },
}


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
    assert {e["tid"] for e in steps} == {0}


def test_folded_stacks_syntax(tmp_path):
    _, paths = _outputs(tmp_path)
    lines = paths["flame.folded"].read_text().splitlines()
    assert lines
    for line in lines:
        assert re.fullmatch(r"[^; ][^;]*(;[^;]+)+ \d+", line), line
    stacks = dict(line.rsplit(" ", 1) for line in lines)
    assert int(stacks["cpu memory restore;criu;preadv;pages-1.img"]) == 500_000
    assert not any("cudaMemcpy" in s for s in stacks)   # outer runtime call: not counted twice


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
    jsonschema.validate(doc, SPEEDSCOPE_SCHEMA)
    frames = doc["shared"]["frames"]
    for profile in doc["profiles"]:
        stack, last = [], -1
        for e in profile["events"]:
            assert e["at"] >= last and e["frame"] < len(frames)
            last = e["at"]
            if e["type"] == "O":
                stack.append(e["frame"])
            else:
                assert stack.pop() == e["frame"]
        assert not stack
        assert profile["startValue"] <= profile["endValue"]


def test_report_json_and_80_column_summary(tmp_path):
    _, paths = _outputs(tmp_path)
    report = json.loads(paths["report.json"].read_text())
    assert report["io"]["preadv"]["bytes"] == 500_000_000
    text = summary(report)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "bottleneck: cpu memory restore" in text and "readahead=on" in text
