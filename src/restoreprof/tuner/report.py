"""What the tuner prints: progress lines, the verdict, and default vs tuned phase by phase."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from restoreprof.tuner.space import Point, describe
from restoreprof.tuner.trial import Trial

# Steps that run alongside others: shown, but they are not where the wall time goes.
_OVERLAPPED = "(overlapped)"


@dataclass
class Spread:
    label: str
    times_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else math.inf

    def line(self) -> str:
        if not self.times_s:
            return f"  {self.label:<8} no successful restore"
        return (f"  {self.label:<8} median {self.median_s:7.3f} s   min {min(self.times_s):7.3f}   "
                f"max {max(self.times_s):7.3f}   ({len(self.times_s)} runs)")


def progress_line(trial: Trial, default: Point, elapsed_s: float, best: Trial | None) -> str:
    took = f"{trial.seconds:7.3f} s" if trial.ok else "  FAILED "
    what = "plain path" if trial.stage == "plain" else describe(trial.point, default)
    best_text = (f"best {best.seconds:.3f} s (#{best.number})" if best and best.ok else "best -")
    return (f"trial {trial.number:>3} {trial.stage:<8} {took}  {what:<32} "
            f"[{elapsed_s:5.0f} s, {best_text}]")


def bottleneck_of(trial: Trial) -> tuple[str | None, str]:
    """(bottleneck phase, where that came from) of a profiled trial, else its longest step."""
    report = trial.report or {}
    phase = (report.get("bottleneck") or {}).get("phase")
    if phase:
        return phase, "profiler"
    steps = [s for s in trial.steps if _OVERLAPPED not in s["name"]]
    if not steps:
        return None, "none"
    longest = max(steps, key=lambda s: s["end_ns"] - s["start_ns"])
    return longest["name"], "longest restore step"


def phase_times(trial: Trial) -> dict[str, float]:
    """Seconds per phase: the profiler's exclusive phase times, else the restore's steps."""
    phases = (trial.report or {}).get("phases")
    if phases:
        return {p["name"]: p.get("exclusive_ns", p.get("busy_ns", 0)) / 1e9 for p in phases}
    times: dict[str, float] = {}
    for step in trial.steps:
        times[step["name"]] = max(times.get(step["name"], 0.0),
                                  (step["end_ns"] - step["start_ns"]) / 1e9)
    return times


def phase_table(default: Trial, tuned: Trial) -> list[str]:
    before, after = phase_times(default), phase_times(tuned)
    source = "profiler phases (exclusive time)" if default.report and tuned.report else "restore steps"
    lines = [f"phase by phase, default run #{default.number} vs tuned run #{tuned.number} ({source}):",
             f"  {'phase':<40} {'default s':>9} {'tuned s':>9} {'change':>8}"]
    for name in list(before) + [n for n in after if n not in before]:
        a, b = before.get(name), after.get(name)
        change = f"{b - a:+8.3f}" if a is not None and b is not None else ""
        lines.append(f"  {name:<40} {_num(a):>9} {_num(b):>9} {change:>8}")
    lines.append(f"  {'total (restore wall time)':<40} {default.seconds:>9.3f} {tuned.seconds:>9.3f} "
                 f"{tuned.seconds - default.seconds:+8.3f}")
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def median_trial(trials: list[Trial]) -> Trial | None:
    ok = sorted((t for t in trials if t.ok), key=lambda t: t.seconds)
    return ok[(len(ok) - 1) // 2] if ok else None


def speedup(baseline_s: float, tuned_s: float) -> float:
    return baseline_s / tuned_s if tuned_s > 0 and math.isfinite(baseline_s) else math.nan
