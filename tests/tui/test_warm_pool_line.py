"""The optimizer panel's line for a running warm pool: the host memory it holds pinned."""

from __future__ import annotations

from restoreprof.tui.app import RestoreprofApp
from restoreprof.tui.feed import ReplayFeed
from restoreprof.tui.widgets import ConfigPanel

from .conftest import OPTIMIZER_CONFIG, TERMINAL_SIZE, ceilings


async def test_the_panel_shows_what_a_warm_pool_holds_pinned(recorded_trace):
    line = "PID 4242, 16.2 GiB pinned (hot 1: 16.1/32)"
    app = RestoreprofApp(ReplayFeed(recorded_trace, speed=0, ceilings=ceilings()),
                         optimizer_config=dict(OPTIMIZER_CONFIG) | {"warm pool": line})
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await pilot.pause()
        shown = str(app.query_one(ConfigPanel).render())
        assert f"warm pool: {line}" in shown
        assert "streams=8" in shown and "warm pool=" not in shown


def test_no_pool_no_line(monkeypatch, tmp_path):
    from restoreprof.tui.pipeline import optimizer_config_in_use

    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(tmp_path))  # no pool's socket there
    assert "warm pool" not in (optimizer_config_in_use() or {})
