"""The keys, driven with Textual's Pilot over a replay of the recorded trace."""

from __future__ import annotations

import pytest
from restoreprof.tui.app import HelpScreen
from restoreprof.tui.widgets import CostsTable

from .conftest import TERMINAL_SIZE, make_app, wait_finished, wait_until


def _rows(app) -> list[str]:
    table = app.query_one(CostsTable)
    return [table.get_row_at(i)[0] for i in range(table.row_count)]


async def test_replay_fills_the_table_with_the_traced_reads(recorded_trace):
    app = make_app(recorded_trace)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_finished(pilot)
        assert "preadv2" in _rows(app)
        row = next(r for r in app.shown.costs if r.name == "preadv2")
        assert row.bytes > 0 and row.calls > 0
        assert app.shown.page_read_bytes >= row.bytes


async def test_s_cycles_the_sort_column(recorded_trace):
    app = make_app(recorded_trace)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_finished(pilot)
        table = app.query_one(CostsTable)
        assert table.sort_column == "time"
        by_time = [r.name for r in sorted(app.shown.costs, key=lambda r: (-r.time_ns, r.name))]
        assert _rows(app) == by_time

        await pilot.press("s")
        assert table.sort_column == "bytes"
        by_bytes = [r.name for r in sorted(app.shown.costs, key=lambda r: (-r.bytes, r.name))]
        assert _rows(app) == by_bytes
        labels = [str(c.label) for c in table.columns.values()]
        assert "bytes ▼" in labels

        await pilot.press("s")
        assert table.sort_column == "calls"
        await pilot.press("s")
        assert table.sort_column == "name"
        assert _rows(app) == sorted(_rows(app))
        await pilot.press("s")
        assert table.sort_column == "time"


async def test_p_pauses_the_view_and_the_replay(recorded_trace):
    # Real-time replay: the trace lasts long enough to pause it half way.
    app = make_app(recorded_trace, speed=1)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_until(pilot, lambda: app.shown is not None)
        await pilot.press("p")
        assert app.paused and app.feed.paused.is_set()
        frozen = app.shown
        assert "PAUSED" in app.export_screen_text()
        await pilot.pause(0.5)
        assert app.shown is frozen  # no new frame drawn while paused
        assert not app.shown.finished

        await pilot.press("p")
        assert not app.paused and not app.feed.paused.is_set()
        await wait_until(pilot, lambda: app.shown is not frozen)
        assert app.shown.elapsed_ns >= frozen.elapsed_ns
        assert "PAUSED" not in app.export_screen_text()


async def test_e_exports_the_trace_files(recorded_trace, tmp_path):
    exports = pytest.importorskip("restoreprof.exports")
    if not hasattr(exports, "write_all"):
        pytest.skip("restoreprof.exports.write_all is not there yet")
    outdir = tmp_path / "exported"
    app = make_app(recorded_trace, export_dir=outdir)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_finished(pilot)
        await pilot.press("e")
        await wait_until(pilot, lambda: bool(app.exported or app.export_error))
        assert not app.export_error
        written = sorted(p.name for p in outdir.iterdir())
        assert written and sorted(p.name for p in app.exported) == written
        assert all(p.stat().st_size > 0 for p in app.exported)
        messages = [n.message for n in app._notifications]
        assert any(str(outdir.resolve()) in m and "exported" in m for m in messages)


async def test_question_mark_shows_help_and_escape_closes_it(recorded_trace):
    app = make_app(recorded_trace)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_finished(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "export the trace so far" in app.export_screen_text()
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_q_quits_and_stops_the_feed(recorded_trace):
    app = make_app(recorded_trace, speed=1)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_until(pilot, lambda: app.shown is not None)
        await pilot.press("q")
        await pilot.pause()
    assert app.feed.stopping
    assert app.return_value == 0
