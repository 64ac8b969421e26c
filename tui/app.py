"""The live view: a Textual app fed by a feed thread that posts one snapshot per frame."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import ClassVar

from restoreprof.tui import pipeline
from restoreprof.tui.feed import Feed, ReplayFeed
from restoreprof.tui.stats import Snapshot
from restoreprof.tui.widgets import (
    SORT_COLUMNS,
    ConfigPanel,
    CostsTable,
    HeaderBar,
    PhaseTimeline,
    ThroughputPlot,
    VerdictPanel,
)
from rich.console import Console
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState

# Paragraphs are single lines: the help reflows to the terminal's width (80 columns and up).
HELP_TEXT = """\
[b]restoreprof tui[/b]: a GPU process restore as it happens

[b]q[/b]  quit (a live trace stops and detaches)
[b]p[/b]  pause / resume the view (a replay pauses; a live trace keeps recording)
[b]s[/b]  sort the top costs by the next column: time, bytes, calls, name
[b]e[/b]  export the trace so far: the same files as [i]restoreprof trace -o[/i]
[b]?[/b]  this help (escape or ? closes it)

Graphs: GB/s of page reads (preadv, preadv2, pread64, read) and of host-to-device \
copies, over the whole run; the dashed line is the calibrated ceiling the analysis \
measures the phase against (disk read, or host memcpy where the pages came from the \
page cache; H2D from pinned memory). No line: not calibrated (restoreprof calibrate).

Phases and the bottleneck come from the same analysis as [i]restoreprof report[/i], \
re-run on the events so far about twice a second.
"""


COMPACT_BELOW_ROWS = 36   # fewer rows than this: the compact layout (restoreprof.tcss)


class SnapshotReady(Message):
    """A feed thread's frame."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar = [("escape", "dismiss", "close"), ("question_mark", "dismiss", "close"),
                ("q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        # scrolls where the terminal is too small for it (80x24 and less)
        with VerticalScroll(id="help"):
            yield Static(HELP_TEXT)


class RestoreprofApp(App[int]):
    CSS_PATH = "restoreprof.tcss"
    TITLE = "restoreprof"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar = [
        Binding("q", "quit", "quit"),
        Binding("p", "pause", "pause"),
        Binding("s", "sort", "sort"),
        Binding("e", "export", "export"),
        Binding("question_mark", "help", "help", key_display="?"),
    ]

    class ExportDone(Message):
        def __init__(self, outdir: Path, files: list[Path], error: str = "") -> None:
            super().__init__()
            self.outdir, self.files, self.error = outdir, files, error

    def __init__(self, feed: Feed, export_dir: Path | None = None,
                 optimizer_config: dict | None = None, header_note: str = "") -> None:
        super().__init__()
        self.feed = feed
        self.export_dir = export_dir
        self.header_note = header_note   # a line under the target (e.g. where its output goes)
        self.optimizer_config = (pipeline.optimizer_config_in_use()
                                 if optimizer_config is None else optimizer_config)
        self.paused = False
        self.snapshot: Snapshot | None = None   # the latest frame, shown or (paused) not
        self.shown: Snapshot | None = None      # the frame on screen
        self.frames_received = 0
        self.exported: list[Path] = []
        self.export_error = ""
        self.feed_error: BaseException | None = None

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="middle"):
            with Vertical(id="graphs"):
                yield ThroughputPlot("page reads", id="reads-plot")
                yield ThroughputPlot("H2D copies", id="h2d-plot")
            with Vertical(id="side"):
                yield VerdictPanel(id="verdict")
                yield ConfigPanel(id="config")
        yield PhaseTimeline(id="phases")
        yield CostsTable(id="costs")
        yield Footer()

    def on_resize(self, event: events.Resize) -> None:
        # a short terminal (80x24) gives the graphs less height so the top costs stay in view
        self.set_class(event.size.height < COMPACT_BELOW_ROWS, "-compact")

    def on_mount(self) -> None:
        self.set_class(self.size.height < COMPACT_BELOW_ROWS, "-compact")
        self.query_one("#phases").border_title = "phases"
        self.query_one("#verdict").border_title = "verdict"
        self.query_one("#costs").border_title = "top costs"
        self.query_one("#config").border_title = "optimizer"
        self.query_one(ConfigPanel).show(self.optimizer_config)
        self.run_worker(self._feed_thread, name="feed", thread=True, exit_on_error=False)

    def _feed_thread(self) -> None:
        self.feed.run(lambda snapshot: self.post_message(SnapshotReady(snapshot)))

    # -- frames ------------------------------------------------------------------------------

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.frames_received += 1
        self.snapshot = message.snapshot
        if not self.paused:
            try:
                self._render(message.snapshot)
            except NoMatches:
                # A frame the feed thread posted while the app shut down: its widgets are gone.
                if self.is_running and not self._exit_renderables and self.screen.is_mounted:
                    raise

    def _render(self, snapshot: Snapshot) -> None:
        self.shown = snapshot
        detail = f" x{self.feed.speed:g}" if isinstance(self.feed, ReplayFeed) and \
            self.feed.speed > 0 else ""
        self.query_one(HeaderBar).show(snapshot, self.paused, detail, self.header_note)
        ceilings, report = snapshot.ceilings, snapshot.report
        self.query_one("#reads-plot", ThroughputPlot).show(
            snapshot.page_reads, pipeline.graph_ceiling(ceilings, report, pipeline.PAGE_READS),
            snapshot.page_read_bytes)
        self.query_one("#h2d-plot", ThroughputPlot).show(
            snapshot.h2d_copies, pipeline.graph_ceiling(ceilings, report, pipeline.H2D_COPIES),
            snapshot.h2d_bytes)
        self.query_one(PhaseTimeline).show(snapshot)
        self.query_one(VerdictPanel).show(snapshot)
        self.query_one(CostsTable).show(snapshot)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "feed" and event.state == WorkerState.ERROR:
            self.feed_error = event.worker.error
            from restoreprof.errors import RestoreprofError

            if isinstance(self.feed_error, RestoreprofError) and self.snapshot is None:
                self.exit(2)  # nothing to show: the command prints the error
            else:
                self.notify(f"the feed stopped: {self.feed_error}", severity="error",
                            timeout=30)

    # -- keys --------------------------------------------------------------------------------

    def action_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            self.feed.paused.set()
        else:
            self.feed.paused.clear()
        if self.snapshot is not None:
            self._render(self.snapshot)

    def action_sort(self) -> None:
        table = self.query_one(CostsTable)
        index = SORT_COLUMNS.index(table.sort_column)
        table.sort_by(SORT_COLUMNS[(index + 1) % len(SORT_COLUMNS)])

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_export(self) -> None:
        outdir = self.export_dir or Path(f"restoreprof-tui-{time.strftime('%Y%m%d-%H%M%S')}")
        self.notify(f"exporting to {outdir} ...", timeout=3)
        self._export(outdir)

    @work(thread=True, exclusive=True, group="export")
    def _export(self, outdir: Path) -> None:
        try:
            trace = self.feed.trace_so_far()
            report = pipeline.analyze(trace, self.feed.ceilings)
            files = pipeline.export_all(trace, report, outdir)
        except Exception as exc:
            self.post_message(self.ExportDone(outdir, [], f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(self.ExportDone(outdir, files))

    def on_restoreprof_app_export_done(self, message: ExportDone) -> None:
        if message.error:
            self.export_error = message.error
            self.notify(f"export to {message.outdir} failed: {message.error}",
                        severity="error", timeout=15)
            return
        self.exported = message.files
        self.notify(f"exported {len(message.files)} files to {message.outdir.resolve()}",
                    title="export", timeout=15)

    def on_unmount(self) -> None:
        self.feed.stop()  # the feed thread ends within a frame; a live session detaches

    def export_screen_text(self) -> str:
        """The screen as plain text (tests and bug reports; an SVG needs a browser)."""
        console = Console(width=self.size.width, height=self.size.height, file=io.StringIO(),
                          force_terminal=True, color_system=None, record=True,
                          legacy_windows=False, safe_box=False)
        console.print(self.screen._compositor.render_update(
            full=True, screen_stack=self._background_screens))
        return console.export_text()

    async def action_quit(self) -> None:
        self.feed.stop()
        self.exit(0)

