"""The tuning loop: profile the default restore, search from its bottleneck, confirm the winner.

    1. restore with the built-in defaults, profiled: its bottleneck orders the settings;
    2. coordinate descent over the settings that matter for this checkpoint (space.py);
    3. successive halving among the fastest points found, to pick a winner that is not noise;
    4. the default, the plain path and the winner, `repeat` times each, interleaved: the
       spread and the speedups come from these runs only;
    5. the verdict: the winner counts only when its median beats both the default's and the
       plain path's by more than the run-to-run spread (the widest range of any of the three);
       otherwise "no significant difference", and nothing is saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from restoreprof.errors import RestoreprofError
from restoreprof.tuner.report import (
    Spread,
    bottleneck_of,
    median_trial,
    phase_table,
    progress_line,
    speedup,
)
from restoreprof.tuner.search import coordinate_descent, freeze, successive_halving
from restoreprof.tuner.space import (
    RESTORE_OPTIONS,
    Point,
    build_space,
    default_point,
    describe,
    order_for_bottleneck,
    plain_point,
)
from restoreprof.tuner.trial import Trial, TrialRunner

MIN_BUDGET = 4
MIN_REPEAT = 2  # one run of each cannot show the spread
NO_DIFFERENCE = "no significant difference"


@dataclass
class Outcome:
    winner: Point
    default_point: Point
    spreads: dict[str, Spread]            # "default", "plain", "tuned"
    bottleneck: str | None
    trials: list[Trial] = field(default_factory=list)
    phase_lines: list[str] = field(default_factory=list)

    @property
    def spread_s(self) -> float:
        """Run-to-run spread: the widest max - min of the default, plain and tuned runs (inf
        when any of them has fewer than two successful runs)."""
        widths = [max(s.times_s) - min(s.times_s) if len(s.times_s) >= 2 else math.inf
                  for s in self.spreads.values()]
        return max(widths)

    @property
    def significant(self) -> bool:
        """The winner beats the default and the plain path by more than the spread."""
        tuned = self.spreads["tuned"].median_s
        return (self.winner != self.default_point and math.isfinite(tuned)
                and tuned < self.spreads["default"].median_s - self.spread_s
                and tuned < self.spreads["plain"].median_s - self.spread_s)

    def verdict(self) -> str:
        if self.significant:
            return (f"significant: the winner beats the default and the plain path by more "
                    f"than the run-to-run spread ({self.spread_s:.3f} s)")
        if self.winner == self.default_point:
            why = "the best point found is the default"
        elif not math.isfinite(self.spread_s):
            why = "too few successful runs to measure the spread"
        else:
            why = (f"the winner is not faster than both the default and the plain path by more "
                   f"than the run-to-run spread ({self.spread_s:.3f} s)")
        return f"{NO_DIFFERENCE}: {why}"

    @property
    def speedup_over_default(self) -> float:
        return speedup(self.spreads["default"].median_s, self.spreads["tuned"].median_s)

    @property
    def speedup_over_plain(self) -> float:
        return speedup(self.spreads["plain"].median_s, self.spreads["tuned"].median_s)

    def settings(self) -> dict:
        """The winner's optimizer settings (what the tuning database stores)."""
        return {k: v for k, v in self.winner.items() if k not in RESTORE_OPTIONS}

    def summary_lines(self) -> list[str]:
        lines = [f"winner: {describe(self.winner, self.default_point)}",
                 *(self.spreads[k].line() for k in ("tuned", "default", "plain")),
                 f"speedup: {self.speedup_over_default:.2f}x over the untuned default, "
                 f"{self.speedup_over_plain:.2f}x over the plain path (medians)",
                 self.verdict()]
        if self.significant and self.winner.get("verify") is False:
            lines.append("note: the winner skips the image checksums; restore with --no-verify "
                         "to get its time (the tuned optimizer settings apply either way)")
        return [*lines, "", *self.phase_lines]


def tune(runner: TrialRunner, *, budget: int, repeat: int, start: Point | None = None,
         say: Callable[[str], None] = print) -> Outcome:
    """Tune the restore of runner's checkpoint in at most budget + 3 * repeat restores."""
    if budget < MIN_BUDGET:
        raise RestoreprofError(f"--budget {budget} is too small to search",
                               hint=f"give at least {MIN_BUDGET} restores (16 or more is better)")
    if repeat < MIN_REPEAT:
        raise RestoreprofError(f"--repeat {repeat} cannot measure the run-to-run spread",
                               hint=f"give --repeat {MIN_REPEAT} or more (3 is the default)")
    processes = runner.manifest.processes
    space = build_space(has_cuda=bool(runner.manifest.cuda_pids),
                        has_offload=any(p.offload for p in processes),
                        cuda_processes=len(runner.manifest.cuda_pids))
    default, plain = default_point(space), plain_point(space)
    began = time.monotonic()
    best: list[Trial] = []

    def measure(stage: str) -> Callable[[Point], float]:
        def one(point: Point) -> float:
            trial = runner.run(point, stage)
            if trial.ok and (not best or trial.seconds < best[0].seconds):
                best[:] = [trial]
            say(progress_line(trial, default, time.monotonic() - began, best[0] if best else None))
            if trial.error:
                say(f"    {trial.error.splitlines()[0]}")
            return trial.seconds
        return one

    say(f"searching {', '.join(d.name for d in space)} in {budget} restores, then "
        f"{repeat} x (default, plain, tuned); traces in {runner.outdir}")
    first_s = measure("default")(default)
    first = runner.trials[-1]
    if not first.ok:
        raise RestoreprofError(f"the restore with default settings failed: {first.error}",
                               hint=f"check that 'restoreprof restore -D {runner.checkpoint_dir}' "
                                    f"works; the trial's files are in {first.directory}")
    phase, source = bottleneck_of(first)
    order = order_for_bottleneck(space, phase)
    say(f"bottleneck: {phase} ({source}); trying {', '.join(d.name for d in order[:3])} first")

    finalists_n = 4 if budget >= 16 else 2
    halving_budget = finalists_n + finalists_n // 2 if finalists_n == 4 else 2
    origin = default | {k: v for k, v in (start or {}).items() if k in default}
    if origin != default:
        say(f"starting from the tuned settings stored for this host: {describe(origin, default)}")
    found = coordinate_descent(order, measure("search"), budget - 1 - halving_budget, origin,
                               known={freeze(default): [first_s]})
    finalists = [p for p, s in found.ranked() if math.isfinite(s)][:finalists_n]
    final = successive_halving(finalists, measure("final"), halving_budget, known=found.costs)
    winner = final.best if math.isfinite(final.best_s) else found.best

    runs: dict[str, list[Trial]] = {"default": [], "plain": [], "tuned": []}
    for _ in range(repeat):
        for label, point in (("default", default), ("plain", plain), ("tuned", winner)):
            measure(label)(point)
            runs[label].append(runner.trials[-1])
    spreads = {label: Spread(label, [t.seconds for t in trials if t.ok])
               for label, trials in runs.items()}
    default_run = median_trial(runs["default"]) or first
    tuned_run = median_trial(runs["tuned"]) or best[0]
    return Outcome(winner, default, spreads, phase, list(runner.trials),
                   phase_table(default_run, tuned_run))
