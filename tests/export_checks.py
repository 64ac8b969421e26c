"""Checks every export of a trace must pass; unit tests run them on synthetic traces,
integration tests on real ones.

- trace.json: no two slices on one track cross (Perfetto drops a slice that does);
- speedscope.json: valid against speedscope's published file format schema, each profile's
  events properly nested;
- flame.folded: the widths add up to the traced wall time, each phase's to its time in
  report.json (within 1%).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import jsonschema

SPEEDSCOPE_SCHEMA_PATH = Path(__file__).parent / "data" / "speedscope-file-format-schema.json"


def slices_by_track(doc: dict) -> dict[tuple[int, int], list[tuple[int, int, str]]]:
    """(pid, tid) -> (start ns, end ns, name) of its complete events."""
    tracks: dict[tuple[int, int], list[tuple[int, int, str]]] = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            start = round(e["ts"] * 1000)
            tracks[(e["pid"], e["tid"])].append((start, round((e["ts"] + e["dur"]) * 1000),
                                                 e["name"]))
    return tracks


def assert_no_track_has_crossing_slices(doc: dict) -> None:
    for track, slices in slices_by_track(doc).items():
        open_ends: list[tuple[int, str]] = []
        for start, end, name in sorted(slices, key=lambda s: (s[0], -s[1])):
            while open_ends and open_ends[-1][0] <= start:
                open_ends.pop()
            if open_ends:
                parent_end, parent = open_ends[-1]
                assert end <= parent_end, f"{name} crosses {parent} on track {track}"
            open_ends.append((end, name))


def assert_speedscope_valid(doc: dict) -> None:
    jsonschema.validate(doc, json.loads(SPEEDSCOPE_SCHEMA_PATH.read_text()))
    frames = doc["shared"]["frames"]
    for profile in doc["profiles"]:
        stack, last = [], float("-inf")
        for e in profile["events"]:
            assert e["at"] >= last and 0 <= e["frame"] < len(frames), profile["name"]
            last = e["at"]
            if e["type"] == "O":
                stack.append(e["frame"])
            else:
                assert stack.pop() == e["frame"], f"unbalanced close in {profile['name']}"
        assert not stack
        assert profile["startValue"] <= profile["endValue"]


def speedscope_durations_ns(doc: dict, frame_name: str) -> list[int]:
    """How long each span of frame_name lasts in the speedscope file."""
    frames = doc["shared"]["frames"]
    durations = []
    for profile in doc["profiles"]:
        opened: list[tuple[int, float]] = []
        for e in profile["events"]:
            if e["type"] == "O":
                opened.append((e["frame"], e["at"]))
            else:
                frame, at = opened.pop()
                if frames[frame]["name"] == frame_name:
                    durations.append(round(e["at"] - at))
    return durations


def folded_weights_us(text: str) -> dict[str, int]:
    stacks = {}
    for line in text.splitlines():
        stack, weight = line.rsplit(" ", 1)
        stacks[stack] = int(weight)
    return stacks


def assert_flame_matches_report(folded: str, report: dict) -> None:
    stacks = folded_weights_us(folded)
    total_us = sum(stacks.values())
    wall_us = report["wall_ns"] / 1000
    assert abs(total_us - wall_us) <= 0.01 * wall_us + 1, (total_us, wall_us)
    per_phase: dict[str, int] = defaultdict(int)
    for stack, weight in stacks.items():
        per_phase[stack.split(";", 1)[0]] += weight
    for phase in report["phases"]:
        expected_us = phase["exclusive_ns"] / 1000
        got_us = per_phase.pop(phase["name"], 0)
        assert abs(got_us - expected_us) <= 0.01 * wall_us + 1, (phase["name"], got_us,
                                                                 expected_us)
    assert not any(per_phase.values()), f"phases the report does not have: {per_phase}"


def check_all(outdir: Path) -> None:
    """Every check on the exports in outdir (as 'restoreprof trace -o' writes them)."""
    report = json.loads((outdir / "report.json").read_text())
    if (outdir / "trace.json").exists():
        assert_no_track_has_crossing_slices(json.loads((outdir / "trace.json").read_text()))
    if (outdir / "speedscope.json").exists():
        assert_speedscope_valid(json.loads((outdir / "speedscope.json").read_text()))
    if (outdir / "flame.folded").exists():
        assert_flame_matches_report((outdir / "flame.folded").read_text(), report)
