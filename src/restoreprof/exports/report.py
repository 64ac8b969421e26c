"""report.json and the summary printed at the end of a trace (80 columns)."""

from __future__ import annotations

import json
from pathlib import Path

from restoreprof.analysis.stats import READ_SYSCALLS

# report.json's version; its JSON Schema is restoreprof/schemas/report.json (the same document
# `restoreprof report --json` prints).
REPORT_JSON_VERSION = 1


def write(report: dict, path: Path) -> Path:
    from restoreprof import __version__

    document = {"version": REPORT_JSON_VERSION, "schema": "report", "restoreprof": __version__,
                **report}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _s(ns: int) -> str:
    return f"{ns / 1e9:.3f}"


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.3f}"


def _rate(nbytes: int, ns: int) -> str:
    return f"{nbytes / ns:.2f}" if ns and nbytes else "-"


def summary(report: dict) -> str:
    """The report as text no wider than 80 columns."""
    lines = [f"restoreprof: {report.get('target', '')}"[:80],
             f"wall {_s(report['wall_ns'])} s, {len(report['pids'])} processes, "
             f"{report.get('events', 0)} events, {report['lost_events']} lost", ""]
    lines.append(f"{'phase':<24}{'start s':>9}{'time s':>9}{'own s':>9}{'GB':>9}"
                 f"{'GB/s':>9}{'ceiling':>10}")
    origin = min((p["start_ns"] for p in report["phases"]), default=0)
    for p in report["phases"]:
        ceiling = p.get("ceiling_gbps") or 0
        gbps = f"{p['gbps']:.2f}" if p["bytes"] else "-"
        ceiling_text = f"{ceiling:.2f}" if ceiling else "-"
        lines.append(f"{p['name'][:23]:<24}{_s(p['start_ns'] - origin):>9}"
                     f"{_s(p['end_ns'] - p['start_ns']):>9}{_s(p.get('exclusive_ns', 0)):>9}"
                     f"{_gb(p['bytes']):>9}{gbps:>9}{ceiling_text:>10}")
    lines += _critical_path_lines(report)
    # "busy s": the time at least one call was in flight, so concurrent calls count once and
    # GB/s is their combined rate (traces saved before busy_ns existed fall back to the sum).
    lines += ["", f"{'reads':<24}{'calls':>10}{'GB':>10}{'busy s':>10}{'GB/s':>10}"]
    for name in READ_SYSCALLS:
        io = report["io"][name]
        busy = io.get("busy_ns", io["ns"])
        lines.append(f"{name:<24}{io['calls']:>10}{_gb(io['bytes']):>10}{_s(busy):>10}"
                     f"{_rate(io['bytes'], busy):>10}")
    cuda = report["cuda"]
    lines += ["", f"{'cuda copies':<14}{'calls':>8}{'GB':>9}{'api s':>9}{'busy s':>9}"
                  f"{'GB/s':>8}{'pinned GB':>11}{'pageable':>10}"]
    for name in ("htod", "dtoh", "dtod"):
        c = cuda[name]
        busy = c.get("busy_ns", c.get("transfer_ns", c["api_ns"]))
        lines.append(f"{name:<14}{c['calls']:>8}{_gb(c['bytes']):>9}{_s(c['api_ns']):>9}"
                     f"{_s(busy):>9}{_rate(c['bytes'], busy):>8}"
                     f"{_gb(c['pinned_bytes']):>11}{_gb(c['pageable_bytes']):>10}")
    for name in ("init", "context_create", "checkpoint_api"):
        if name in cuda:
            lines.append(f"{name:<14}{cuda[name]['calls']:>8}{'':>9}{_s(cuda[name]['ns']):>9}")
    lines += _coverage_lines(report.get("coverage") or [])
    b = report["bottleneck"]
    lines += ["", f"bottleneck: {b['phase'] or 'none'}"]
    if b["phase"]:
        ceiling = (f"{b['ceiling_gbps']:.2f} GB/s ({b.get('ceiling_source', '')})"
                   if b["ceiling_gbps"] else f"none ({b.get('ceiling_source', 'uncalibrated')})")
        lines.append(f"  achieved {b['achieved_gbps']:.2f} GB/s, ceiling {ceiling}")
    lines += _wrap(b["recommendation"], 80, first="  -> ", indent="     ")
    if report["lost_events"]:
        lines.append(f"WARNING: {report['lost_events']} events lost; counts are lower bounds")
    return "\n".join(line[:80] for line in lines)


def _critical_path_lines(report: dict) -> list[str]:
    """Each instant of the wall time given to one phase; other by the restore's steps."""
    lines = ["", f"{'critical path':<56}{'own s':>9}{'share':>9}"]
    for entry in report.get("critical_path") or []:
        if not isinstance(entry, dict):
            return []  # a trace saved before the list held entries
        lines.append(f"{entry['phase'][:55]:<56}{_s(entry['ns']):>9}"
                     f"{entry.get('share', 0) * 100:>8.1f}%")
        for part in entry.get("parts", []):
            lines.append(f"  {part['step'][:53]:<54}{_s(part['ns']):>9}")
    if report.get("restore_path"):
        lines += ["", f"{'restore path (its steps)':<56}{'own s':>9}{'share':>9}"]
        for entry in report["restore_path"]:
            lines.append(f"{entry['step'][:55]:<56}{_s(entry['ns']):>9}"
                         f"{entry['share'] * 100:>8.1f}%")
    return lines


_KIND_NAMES = {"cuMemAlloc": "cuMemAlloc", "vmm": "app VMM", "async": "stream-ordered"}


def _coverage_lines(coverage: list[dict]) -> list[str]:
    """A traced restore's GPU memory per process, as its checkpoint recorded it: offloaded by
    restoreprof per allocation kind, left to the driver's own checkpoint and restore."""
    if not coverage:
        return []
    lines = ["", f"{'gpu memory (checkpoint)':<24}{'offloaded GB':>13}{'driver GB':>11}  kinds"]
    for c in coverage:
        left = c.get("left_to_driver_bytes")
        kinds = ", ".join(f"{_KIND_NAMES.get(k, k)} {v['count']}"
                          for k, v in c.get("offloaded", {}).items())
        if not c.get("shim"):
            kinds = "none (no restoreprof exec)"
        lines.append(f"{'pid ' + str(c['pid']):<24}{_gb(c.get('offloaded_bytes', 0)):>13}"
                     f"{_gb(left) if left is not None else 'unknown':>11}  {kinds or 'none'}")
    return lines


def _wrap(text: str, width: int, *, first: str, indent: str) -> list[str]:
    lines, line, fresh = [], first, True
    for word in text.split():
        if not fresh and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent + word
        else:
            line = line + word if fresh else f"{line} {word}"
        fresh = False
    return lines + ([line] if not fresh else [])
