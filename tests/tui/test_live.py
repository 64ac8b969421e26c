"""The view on a live trace of a real program (root, real eBPF): its reads reach the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from restoreprof.tui.app import RestoreprofApp
from restoreprof.tui.feed import LiveFeed
from restoreprof.tui.widgets import CostsTable

from .conftest import OPTIMIZER_CONFIG, TERMINAL_SIZE, ceilings, wait_until

pytestmark = [pytest.mark.root,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # bcc str vs bytes

READER = Path(__file__).with_name("reader.py")
FILE_BYTES = 16 << 20
ROUNDS = 4


async def test_live_view_shows_the_reads_of_a_traced_program(tmp_path):
    from restoreprof.probes.session import Target

    data = tmp_path / "pages.img"
    data.write_bytes(b"\x5a" * FILE_BYTES)
    command = [sys.executable, str(READER), str(data), str(ROUNDS)]
    feed = LiveFeed(Target(command=command), ceilings=ceilings())
    app = RestoreprofApp(feed, optimizer_config=dict(OPTIMIZER_CONFIG))
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_until(pilot, lambda: app.shown is not None and app.shown.finished,
                         timeout_s=120)
        assert app.feed_error is None
        costs = {row.name: row for row in app.shown.costs}
        # Each round reads the whole file once with each call.
        for call in ("preadv", "preadv2"):
            assert call in costs, f"{call} missing from {sorted(costs)}"
            assert costs[call].bytes >= ROUNDS * FILE_BYTES
            assert costs[call].calls >= ROUNDS * FILE_BYTES // (1 << 20)
        table = app.query_one(CostsTable)
        shown = {table.get_row_at(i)[0] for i in range(table.row_count)}
        assert {"preadv", "preadv2"} <= shown
        assert app.shown.page_read_bytes >= 2 * ROUNDS * FILE_BYTES
        screen = app.export_screen_text()
        assert "preadv2" in screen and "command:" in screen
    # The feed kept the same events the session recorded: one stream, no second collector.
    assert feed.final_trace is not None
    assert len(feed.final_trace.events) == app.shown.events_seen
