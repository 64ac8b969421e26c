"""The view at 80x24: the top costs keep rows of their own, the help is never cut off."""

from __future__ import annotations

from restoreprof.tui.app import HELP_TEXT
from restoreprof.tui.widgets import CostsTable, PhaseTimeline

from .conftest import make_app, wait_finished

SMALL = (80, 24)


async def test_top_costs_are_in_view_at_80x24(recorded_trace):
    app = make_app(recorded_trace)
    async with app.run_test(size=SMALL) as pilot:
        await wait_finished(pilot)
        costs = app.query_one(CostsTable).region
        screen = app.screen.region
        assert costs.height >= 5 and screen.contains_region(costs), costs
        text = app.export_screen_text()
        assert "top costs" in text and "cuMemcpyHtoD_v2" in text
        assert app.screen.region.contains_region(app.query_one(PhaseTimeline).region)
        # the phases' figures whole, not cut by bars that have no room
        assert "gpu memory restore   1.54-1.58 s 67.1 MB 1.65 GB/s" in text
        assert "780.4 ms  93%" in text


async def test_help_is_whole_at_80x24(recorded_trace):
    app = make_app(recorded_trace)
    async with app.run_test(size=SMALL) as pilot:
        await wait_finished(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        text = " ".join(app.export_screen_text().replace("█", " ").split())
        for line in ("this help (escape or ? closes it)",
                     "a live trace keeps recording)", "about twice a second."):
            assert line in text, line
        help_box = app.screen.query_one("#help")
        assert app.screen.region.contains_region(help_box.region)
        assert "[b]q[/b]" in HELP_TEXT
