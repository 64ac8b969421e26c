"""SVG snapshots of the view at 120x40, replaying the recorded trace.

The replay runs on trace time, so the elapsed time, graphs and table are the same on every
machine; GPUs come from the trace's metadata, ceilings and optimizer settings are fixed.
Regenerate with ``pytest tests/tui --snapshot-update`` and look at the SVGs before committing.
"""

from __future__ import annotations

from .conftest import TERMINAL_SIZE, make_app, wait_finished


def _duration_ns(trace) -> int:
    return max(e.end_ns for e in trace.events) - min(e.start_ns for e in trace.events)


def test_end_of_replay(snap_compare, recorded_trace):
    app = make_app(recorded_trace)
    assert snap_compare(app, terminal_size=TERMINAL_SIZE, run_before=wait_finished)


def test_half_way_through_the_restore(snap_compare, recorded_trace):
    app = make_app(recorded_trace, until_ns=_duration_ns(recorded_trace) // 2)
    assert snap_compare(app, terminal_size=TERMINAL_SIZE, run_before=wait_finished)


def test_sorted_by_bytes(snap_compare, recorded_trace):
    async def sort_by_bytes(pilot) -> None:
        await wait_finished(pilot)
        await pilot.press("s")

    app = make_app(recorded_trace)
    assert snap_compare(app, terminal_size=TERMINAL_SIZE, run_before=sort_by_bytes)


def test_help(snap_compare, recorded_trace):
    async def open_help(pilot) -> None:
        await wait_finished(pilot)
        await pilot.press("question_mark")

    app = make_app(recorded_trace)
    assert snap_compare(app, terminal_size=TERMINAL_SIZE, run_before=open_help)
