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


async def test_a_commands_output_goes_to_a_log_not_over_the_view(tmp_path):
    from restoreprof.cli import build_parser
    from restoreprof.commands import tui as tui_command

    outdir = tmp_path / "out"
    # The words printed are built at run time: the command line in the header does not hold them.
    script = "import sys; print('to', 'stdout'); print('to', 'stderr', file=sys.stderr); " \
             "print('stdin:', repr(sys.stdin.read()))"
    args = tui_command._normalize(build_parser().parse_args(
        ["tui", "-o", str(outdir), "--", sys.executable, "-c", script]))
    feed = tui_command.make_feed(args)
    log = outdir / tui_command.COMMAND_LOG
    assert args.command_log == log.resolve()
    assert feed.target == f"command: {sys.executable} -c {script}"  # as Target.describe()
    feed.ceilings = ceilings()
    note = f"the command's output (stdout, stderr) goes to {args.command_log}"
    app = RestoreprofApp(feed, export_dir=args.output, optimizer_config=dict(OPTIMIZER_CONFIG),
                         header_note=note)
    async with app.run_test(size=(200, 40)) as pilot:
        await wait_until(pilot, lambda: app.shown is not None and app.shown.finished,
                         timeout_s=120)
        assert app.feed_error is None
        screen = app.export_screen_text()
    assert note in screen
    assert "to stdout" not in screen and "to stderr" not in screen
    assert log.read_text().splitlines() == ["to stdout", "to stderr", "stdin: ''"]
    # The trace names the command, not the sh that sent its output to the log; sh exec'd
    # it, so the traced PID ran the command itself.
    meta = feed.final_trace.meta
    assert meta.command == [sys.executable, "-c", script]
    assert meta.target == feed.target
    execs = [e for e in feed.final_trace.events if e.kind == "process" and e.name == "exec"]
    assert execs and execs[0].pid in meta.pids
