"""Outputs of a trace, one module each, all over the one Trace model and its report.

    paths = write_all(trace, analyze(trace), outdir)
"""

from __future__ import annotations

from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.exports import chrome, flamegraph, report, speedscope
from restoreprof.trace.model import TRACE_FILE_NAME, Trace

FORMATS = ("perfetto", "flamegraph", "speedscope", "report")
FILE_NAMES = {"perfetto": ["trace.json"], "flamegraph": ["flame.folded", "flame.svg"],
              "speedscope": ["speedscope.json"], "report": ["report.json"]}


def write_all(trace: Trace, report_dict: dict, outdir: Path, *,
              formats: tuple[str, ...] = FORMATS, save_trace: bool = True) -> list[Path]:
    """Write the trace file and each export in formats to outdir; returns the paths."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise RestoreprofError(f"{outdir} is a file, not a folder for the exports",
                               hint="pass -o a new or existing folder (the exports are "
                                    "trace.json, flame.*, speedscope.json and report.json)")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RestoreprofError(f"cannot create the output folder {outdir}: {exc.strerror}",
                               hint="pass -o a folder you can write") from exc
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
