"""The panels of the live view. Each one renders a ``Snapshot``; none of them computes a report."""

from __future__ import annotations

from restoreprof.tui.gpu import describe_gpu
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

    def show(self, snapshot: Snapshot, paused: bool, mode_detail: str = "") -> None:
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
        gpus = [describe_gpu(g) for g in snapshot.gpus] or ["no GPU (no NVIDIA driver seen)"]
        for line in gpus:
            text.append("\n" + line, style="dim")
        self.update(text)


_EIGHTHS = " ▁▂▃▄▅▆▇█"


class ThroughputPlot(Widget):
    """A GB/s bar graph over the run so far, with the calibrated ceiling as a dashed line."""

    DEFAULT_CSS = "ThroughputPlot { height: 7; }"

    series: reactive[ThroughputSeries | None] = reactive(None, layout=False)

    def __init__(self, title: str, ceiling_label: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.ceiling_label = ceiling_label
        self.ceiling_gbps: float | None = None
        self.total_bytes = 0

    def show(self, series: ThroughputSeries, ceiling_gbps: float | None, total_bytes: int) -> None:
        self.ceiling_gbps = ceiling_gbps
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
        ceiling = self.ceiling_gbps
        top = max(peak * 1.05, (ceiling or 0) * 1.15, 0.1)

        title = Text(f"{self.title} ", style="bold", no_wrap=True, overflow="ellipsis")
        title.append(f"now {latest:.2f} GB/s · peak {peak:.2f} · {format_bytes(self.total_bytes)}")
        if ceiling:
            title.append(f" · {self.ceiling_label} {ceiling:.1f}", style="magenta")
        else:
            title.append(" · no ceiling: run restoreprof calibrate", style="dim")
        title.truncate(width, overflow="ellipsis")
        lines = [title]
        ceiling_row = None if not ceiling else min(rows - 1, int((top - ceiling) / top * rows))
        for row in range(rows):
            row_low = (rows - 1 - row) / rows * top
            label = {0: f"{top:5.1f} │", rows - 1: "    0 │"}.get(row, "      │")
            if row == ceiling_row:
                label = f"{ceiling:5.1f} ┤"
            line = Text(label.rjust(axis_width), style="dim")
            for value in values:
                eighths = round((value - row_low) / (top / rows) * 8)
                cell = _EIGHTHS[max(0, min(8, eighths))]
                if cell == " " and row == ceiling_row:
                    line.append("╌", style="magenta")
                else:
                    line.append(cell, style="green" if cell != " " else "")
            if row == ceiling_row:
                line.append("╌" * (plot_width - len(values)), style="magenta")
            lines.append(line)
        return Text("\n").join(lines)


class PhaseTimeline(Static):
    """The restore's phases on one time axis, with bytes done and bandwidth."""

    def show(self, snapshot: Snapshot) -> None:
        phases = (snapshot.report or {}).get("phases") or []
        table = Table.grid(padding=(0, 1))
        table.add_column("phase", style="bold", no_wrap=True)
        table.add_column("bar", no_wrap=True)
        table.add_column("when", justify="right", no_wrap=True)
        table.add_column("bytes", justify="right", no_wrap=True)
        table.add_column("rate", justify="right", no_wrap=True)
        span = max(1, snapshot.now_ns - snapshot.start_ns)
        bar_width = max(8, self.size.width - 70)
        for phase in phases:
            start = max(0, phase.get("start_ns", 0) - snapshot.start_ns)
            end = max(start, phase.get("end_ns", 0) - snapshot.start_ns)
            lo = min(bar_width - 1, int(start / span * bar_width))
            hi = max(lo + 1, min(bar_width, round(end / span * bar_width)))
            bar = Text("·" * lo, style="dim")
            bar.append("█" * (hi - lo), style="cyan")
            bar.append("·" * (bar_width - hi), style="dim")
            nbytes = phase.get("bytes", 0) or 0
            duration = end - start
            rate = f"{nbytes / duration:.2f} GB/s" if nbytes and duration else ""
            table.add_row(phase.get("name", "?"), bar,
                          f"{start / 1e9:.2f}-{end / 1e9:.2f} s",
                          format_bytes(nbytes) if nbytes else "", rate)
        if not phases:
            waiting = "analysis not available" if snapshot.report is None and snapshot.finished \
                else "no phase seen yet"
            table.add_row(Text(waiting, style="dim"), "", "", "", "")
        self.update(table)


class VerdictPanel(Static):
    """The bottleneck and what to do about it, as soon as the analysis names one."""

    def show(self, snapshot: Snapshot) -> None:
        bottleneck = (snapshot.report or {}).get("bottleneck") or {}
        text = Text()
        if not bottleneck.get("phase"):
            text.append("Bottleneck: ", style="bold")
            text.append("not known yet" + (f" ({snapshot.note})" if snapshot.note else ""),
                        style="dim")
            self.update(text)
            return
        text.append("Bottleneck: ", style="bold")
        text.append(str(bottleneck["phase"]), style="bold red")
        achieved, ceiling = bottleneck.get("achieved_gbps"), bottleneck.get("ceiling_gbps")
        if achieved is not None:
            text.append(f" at {achieved:.2f} GB/s")
            if ceiling:
                text.append(f" of {ceiling:.1f} GB/s ceiling ({achieved / ceiling:.0%})")
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
        settings = {k: v for k, v in config.items() if k != "source"}
        text = Text("  ".join(f"{key}={_short(value)}" for key, value in settings.items()))
        if config.get("source"):
            text.append(f"  ({config['source']})", style="dim")
        self.update(text)


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
        self.add_column("call / syscall" + marker["name"], key="name", width=30)
        self.add_column("kind", key="kind", width=8)
        self.add_column("calls" + marker["calls"], key="calls", width=10)
        self.add_column("bytes" + marker["bytes"], key="bytes", width=10)
        self.add_column("time" + marker["time"], key="time", width=10)
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
