"""Outputs of a trace, one module each, all over the one Trace model and its report.

    paths = write_all(trace, analyze(trace), outdir)
"""

from __future__ import annotations

from pathlib import Path

from restoreprof.exports import chrome, flamegraph, report, speedscope
from restoreprof.trace.model import TRACE_FILE_NAME, Trace

FORMATS = ("perfetto", "flamegraph", "speedscope", "report")
FILE_NAMES = {"perfetto": ["trace.json"], "flamegraph": ["flame.folded", "flame.svg"],
              "speedscope": ["speedscope.json"], "report": ["report.json"]}


def write_all(trace: Trace, report_dict: dict, outdir: Path, *,
              formats: tuple[str, ...] = FORMATS, save_trace: bool = True) -> list[Path]:
    """Write the trace file and each export in formats to outdir; returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [trace.save(outdir / TRACE_FILE_NAME)] if save_trace else []
    if "perfetto" in formats:
        paths.append(chrome.write(trace, outdir / "trace.json"))
    if "flamegraph" in formats:
        paths.append(flamegraph.write_folded(trace, outdir / "flame.folded"))
        paths.append(flamegraph.write_svg(trace, outdir / "flame.svg"))
    if "speedscope" in formats:
        paths.append(speedscope.write(trace, outdir / "speedscope.json"))
    paths.append(report.write(report_dict, outdir / "report.json"))
    return paths
