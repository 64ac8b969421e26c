"""SVG snapshots of the view at 120x40, replaying the recorded trace.

The replay runs on trace time, so the elapsed time, graphs and table are the same on every
machine; GPUs come from the trace's metadata, ceilings and optimizer settings are fixed.
Regenerate with ``pytest tests/tui --snapshot-update`` and look at the SVGs before committing.
"""

from __future__ import annotations

from restoreprof.analysis.ceilings import Ceilings
from restoreprof.trace.events import HTOD

from .conftest import TERMINAL_SIZE, make_app, wait_finished


def _half_way_through_the_copies_ns(trace) -> int:
    """Replay time half way through the host-to-device copies: the page reads are done, the
    GPU memory restore is under way (ReplayFeed's clock starts at the trace's start)."""
    copies = [e for e in trace.events if e.direction == HTOD]
    assert copies, "the recorded trace has no H2D copies: re-record it (data/record_fixture.py)"
    first = min(e.start_ns for e in copies)
    last = max(e.complete_ns or e.end_ns for e in copies)
    start = min(trace.meta.start_ns or first, min(e.start_ns for e in trace.events))
    return (first + last) // 2 - start


def test_end_of_replay(snap_compare, recorded_trace):
    app = make_app(recorded_trace)
    assert snap_compare(app, terminal_size=TERMINAL_SIZE, run_before=wait_finished)


def test_half_way_through_the_restore(snap_compare, recorded_trace):
    app = make_app(recorded_trace, until_ns=_half_way_through_the_copies_ns(recorded_trace))
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


def test_uncalibrated_ceilings(snap_compare, recorded_trace):
    # Nothing calibrated: the graph titles say so and no reference line is drawn.
    app = make_app(recorded_trace, with_ceilings=Ceilings(hostname="ci"))
    assert snap_compare(app, terminal_size=TERMINAL_SIZE, run_before=wait_finished)


SMALL_TERMINAL = (80, 24)


def test_end_of_replay_80x24(snap_compare, recorded_trace):
    app = make_app(recorded_trace)
    assert snap_compare(app, terminal_size=SMALL_TERMINAL, run_before=wait_finished)


def test_help_80x24(snap_compare, recorded_trace):
    async def open_help(pilot) -> None:
        await wait_finished(pilot)
        await pilot.press("question_mark")

    app = make_app(recorded_trace)
    assert snap_compare(app, terminal_size=SMALL_TERMINAL, run_before=open_help)
