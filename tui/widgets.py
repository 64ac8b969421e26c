"""The panels of the live view. Each one renders a ``Snapshot``; none of them computes a report."""

from __future__ import annotations

from restoreprof.tui.gpu import describe_gpu
from restoreprof.tui.pipeline import GraphCeiling
from restoreprof.tui.stats import CostRow, Snapshot, ThroughputSeries
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Static


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_seconds(ns: float) -> str:
    seconds = ns / 1e9
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


class HeaderBar(Static):
    """Target, mode, elapsed time, events and lost events; one line per GPU."""

    def show(self, snapshot: Snapshot, paused: bool, mode_detail: str = "",
             note: str = "") -> None:
        state = "PAUSED" if paused else ("done" if snapshot.finished else snapshot.mode.upper())
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("restoreprof ", style="bold")
        text.append(f"{state}{mode_detail}", style="bold yellow" if paused else "green")
        text.append(f"  elapsed {format_seconds(snapshot.elapsed_ns)}")
        text.append(f"  events {snapshot.events_seen:,}")
        text.append("  lost ")
        text.append(f"{snapshot.lost_events:,}",
                    style="bold red" if snapshot.lost_events else "")
        text.append("  ")
        text.append(snapshot.target or "unknown target", style="bold cyan")
        if snapshot.pids:
            pids = ", ".join(map(str, snapshot.pids[:4])) + (", ..." if len(snapshot.pids) > 4 else "")
            text.append(f" (pid {pids})", style="cyan")
        if note:
            text.append("\n" + note, style="yellow")
        gpus = [describe_gpu(g) for g in snapshot.gpus] or ["no GPU (no NVIDIA driver seen)"]
        for line in gpus:
            text.append("\n" + line, style="dim")
        self.update(text)


_EIGHTHS = " ▁▂▃▄▅▆▇█"


class ThroughputPlot(Widget):
    """A GB/s bar graph over the run so far, with the calibrated ceiling as a dashed line."""

    DEFAULT_CSS = "ThroughputPlot { height: 7; }"

    series: reactive[ThroughputSeries | None] = reactive(None, layout=False)

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.ceiling = GraphCeiling(0.0, "")
        self.total_bytes = 0

    def show(self, series: ThroughputSeries, ceiling: GraphCeiling, total_bytes: int) -> None:
        self.ceiling = ceiling
        self.total_bytes = total_bytes
        self.series = series

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        axis_width = 7
        plot_width = max(1, width - axis_width)
        rows = max(1, height - 1)
        series = self.series
        values = series.gbps_columns(plot_width) if series is not None else []
        latest = series.gbps_latest() if series is not None else 0.0
        peak = float(max(values, default=0.0))
        ceiling = self.ceiling.gbps
        top = max(peak * 1.05, ceiling * 1.15, 0.1)

        title = Text(f"{self.title} ", style="bold", no_wrap=True, overflow="ellipsis")
        title.append(f"now {latest:.2f} GB/s · {format_bytes(self.total_bytes)}")
        label = self.ceiling.label or "ceiling"
        if ceiling:
            title.append(f" · ceiling {ceiling:.1f} GB/s", style="magenta")
        else:
            # No calibrated number: say so, draw no line.
            title.append(f" · {label} ceiling: {self.ceiling.missing}", style="yellow")
        title.truncate(width, overflow="ellipsis")
        lines = [title]
        ceiling_row = None if not ceiling else min(rows - 1, int((top - ceiling) / top * rows))
        # The dashed line says what the ceiling is, where no bar covers it.
        line_label = f" {label} "
        for row in range(rows):
            row_low = (rows - 1 - row) / rows * top
            label_text = {0: f"{top:5.1f} │", rows - 1: "    0 │"}.get(row, "      │")
            if row == ceiling_row:
                label_text = f"{ceiling:5.1f} ┤"
            line = Text(label_text.rjust(axis_width), style="dim")
            for column in range(plot_width):
                value = values[column] if column < len(values) else 0.0
                eighths = round((value - row_low) / (top / rows) * 8)
                cell = _EIGHTHS[max(0, min(8, eighths))]
                if cell == " " and row == ceiling_row:
                    at = column - 2
                    dash = line_label[at] if 0 <= at < len(line_label) else "╌"
                    line.append(dash, style="magenta")
                else:
                    line.append(cell, style="green" if cell != " " else "")
            lines.append(line)
        return Text("\n").join(lines)


BARS_MIN_WIDTH = 100   # PhaseTimeline draws its bars from this width on


class PhaseTimeline(Widget):
    """The restore's phases on one time axis: bytes done, bandwidth against the ceiling, and
    the time each holds on its own (the critical path). All figures are the analysis's.

    Drawn at render time: the bars fit the width the layout gives, whenever the frame came.
    """

    snapshot: reactive[Snapshot | None] = reactive(None, layout=True)

    def show(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def render(self) -> Table | Text:
        snapshot = self.snapshot
        if snapshot is None:
            return Text("waiting for the first events", style="dim")
        report = snapshot.report or {}
        phases = report.get("phases") or []
        # an 80-column terminal has no room for the bars: the figures matter more
        with_bars = self.size.width >= BARS_MIN_WIDTH
        table = Table.grid(padding=(0, 1))
        table.add_column("phase", no_wrap=True)
        if with_bars:
            table.add_column("bar", no_wrap=True)
        table.add_column("when", justify="right", no_wrap=True)
        table.add_column("bytes", justify="right", no_wrap=True)
        table.add_column("rate", justify="right", no_wrap=True)
        table.add_column("ceiling", justify="right", no_wrap=True)
        table.add_column("own", justify="right", no_wrap=True)
        span = max(1, snapshot.now_ns - snapshot.start_ns)
        bar_width = max(8, self.size.width - 80)
        wall_ns = report.get("wall_ns") or 0
        if phases:
            headers = ("phase", "", "when", "bytes", "rate", "of ceiling", "own time")
            table.add_row(*(Text(h, style="dim") for h in headers if with_bars or h))
        for phase in phases:
            other = phase.get("name") == "other"
            start = max(0, phase.get("start_ns", 0) - snapshot.start_ns)
            end = max(start, phase.get("end_ns", 0) - snapshot.start_ns)
            lo = min(bar_width - 1, int(start / span * bar_width))
            hi = max(lo + 1, min(bar_width, round(end / span * bar_width)))
            bar = Text("·" * lo, style="dim")
            bar.append("█" * (hi - lo), style="dim" if other else "cyan")
            bar.append("·" * (bar_width - hi), style="dim")
            nbytes = phase.get("bytes", 0) or 0
            gbps = phase.get("gbps") or 0.0
            efficiency = phase.get("efficiency")
            if efficiency is not None:
                ceiling = f"{efficiency:.0%} of {phase.get('ceiling_gbps', 0):.1f}"
            elif nbytes and not other:
                ceiling = Text("uncalibrated", style="yellow")
            else:
                ceiling = ""
            own_ns = phase.get("exclusive_ns", 0) or 0
            own = format_seconds(own_ns) + (f" {own_ns / wall_ns:4.0%}" if wall_ns else "")
            table.add_row(Text(phase.get("name", "?"), style="dim" if other else "bold"),
                          *([bar] if with_bars else []),
                          f"{start / 1e9:.2f}-{end / 1e9:.2f} s",
                          format_bytes(nbytes) if nbytes else "",
                          f"{gbps:.2f} GB/s" if gbps else "", ceiling, own)
        if not phases:
            waiting = "no phase seen yet" + (f" ({snapshot.note})" if snapshot.note else "")
            table.add_row(Text(waiting, style="dim"), *[""] * (6 if with_bars else 5))
        return table


class VerdictPanel(Static):
    """The bottleneck and what to do about it, as soon as the analysis names one."""

    def show(self, snapshot: Snapshot) -> None:
        report = snapshot.report or {}
        bottleneck = report.get("bottleneck") or {}
        text = Text()
        text.append("Bottleneck: ", style="bold")
        if not bottleneck.get("phase"):
            # Analysis runs on the events so far a few times a second; until then, or while
            # they hold no phase, there is nothing to name.
            note = snapshot.note
            text.append("not known yet" + (f" ({note})" if note else ""), style="dim")
            self.update(text)
            return
        text.append(str(bottleneck["phase"]), style="bold red")
        achieved = bottleneck.get("achieved_gbps") or 0.0
        ceiling = bottleneck.get("ceiling_gbps") or 0.0
        kind = bottleneck.get("ceiling_kind") or "ceiling"
        if achieved:
            text.append(f" at {achieved:.2f} GB/s")
            if ceiling:
                text.append(f", {achieved / ceiling:.0%} of {ceiling:.1f} GB/s ({kind})")
            elif bottleneck.get("ceiling_kind"):
                text.append(f"; {kind} ceiling: {bottleneck.get('ceiling_source', '?')}",
                            style="yellow")
        own_ns, wall_ns = bottleneck.get("exclusive_ns") or 0, report.get("wall_ns") or 0
        if own_ns and wall_ns:
            text.append(f"\nholds {format_seconds(own_ns)} of {format_seconds(wall_ns)} "
                        f"({own_ns / wall_ns:.0%}) on its own")
        if bottleneck.get("recommendation"):
            text.append("\n→ " + str(bottleneck["recommendation"]), style="yellow")
        self.update(text)


class ConfigPanel(Static):
    """The optimizer configuration in use (streams, chunk size, threads, ...)."""

    def show(self, config: dict | None) -> None:
        if not config:
            self.update("default")
            return
        if "error" in config:
            self.update(Text(config["error"], style="red"))
            return
        settings = {k: v for k, v in config.items() if k not in ("source", "warm pool")}
        text = Text(" ".join(f"{key}={_short(value)}" for key, value in settings.items()))
        if config.get("warm pool"):  # the host memory a running pool holds pinned
            text.append(f"\nwarm pool: {config['warm pool']}")
        self.update(text)
        self.border_subtitle = config.get("source") or ""


def _short(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# Sort keys, cycled by the `s` key; the first is the default.
SORT_COLUMNS = ("time", "bytes", "calls", "name")


class CostsTable(DataTable):
    """Top costs: each call or syscall with calls, bytes, time and share of wall time."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.sort_column = SORT_COLUMNS[0]
        self._rows: tuple[CostRow, ...] = ()
        self._wall_ns = 1
        self._add_columns()

    def _add_columns(self) -> None:
        marker = {c: (" ▼" if c == self.sort_column else "") for c in SORT_COLUMNS}
        marker["name"] = " ▲" if self.sort_column == "name" else ""
        # the widths fit 80 columns (with the border and the cells' padding); wider
        # terminals give the names more room
        narrow = self.app.size.width < 100
        self.add_column("call / syscall" + marker["name"], key="name", width=22 if narrow else 30)
        self.add_column("kind", key="kind", width=7 if narrow else 8)
        self.add_column("calls" + marker["calls"], key="calls", width=8 if narrow else 10)
        self.add_column("bytes" + marker["bytes"], key="bytes", width=9 if narrow else 10)
        self.add_column("time" + marker["time"], key="time", width=9 if narrow else 10)
        self.add_column("% wall", key="share", width=7)

    def sort_by(self, column: str) -> None:
        self.sort_column = column
        self.clear(columns=True)
        self._add_columns()
        self._fill()

    def sorted_rows(self) -> list[CostRow]:
        key = {
            "time": lambda r: (-r.time_ns, r.name),
            "bytes": lambda r: (-r.bytes, r.name),
            "calls": lambda r: (-r.calls, r.name),
            "name": lambda r: (r.name, r.kind),
        }[self.sort_column]
        return sorted(self._rows, key=key)

    def show(self, snapshot: Snapshot) -> None:
        self._rows = snapshot.costs
        self._wall_ns = max(1, snapshot.elapsed_ns)
        self._fill()

    def _fill(self) -> None:
        self.clear()
        for row in self.sorted_rows():
            self.add_row(
                row.name, row.kind, f"{row.calls:,}",
                format_bytes(row.bytes) if row.bytes else "",
                format_seconds(row.time_ns),
                f"{row.time_ns / self._wall_ns:.1%}",
                key=f"{row.kind}:{row.name}",
            )
