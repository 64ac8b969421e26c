"""The search: budgeted coordinate descent, then successive halving among the finalists.

Pure logic: it knows points and costs, never restores. ``measure(point) -> seconds`` is the
only link to the world, so tests drive it with a simulated cost model and the tuner with real
restores. Never a full grid: each step changes one setting of the best point so far, settings
in the order the profiler's bottleneck suggests, numbers by stepping to neighbouring values.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from restoreprof.tuner.space import Dimension, Point

Measure = Callable[[Point], float]


def freeze(point: Point) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(point.items()))


@dataclass
class SearchResult:
    best: Point
    best_s: float
    costs: dict[tuple, list[float]] = field(default_factory=dict)   # frozen point -> times
    trials: int = 0

    def ranked(self) -> list[tuple[Point, float]]:
        """Every point measured, fastest (median) first."""
        rows = [(dict(p), statistics.median(c)) for p, c in self.costs.items()]
        return sorted(rows, key=lambda row: row[1])


class BudgetSpent(Exception):
    pass


class _Ledger:
    """Measurements so far, with the trial budget enforced in one place."""

    def __init__(self, measure: Measure, budget: int, known: dict[tuple, list[float]]) -> None:
        self.measure, self.budget = measure, budget
        self.costs: dict[tuple, list[float]] = {k: list(v) for k, v in known.items()}
        self.trials = 0

    def cost(self, point: Point, fresh: bool = False) -> float:
        """Median time of point, measuring it unless known (or again when fresh)."""
        key = freeze(point)
        if fresh or key not in self.costs:
            if self.trials >= self.budget:
                raise BudgetSpent
            self.trials += 1
            self.costs.setdefault(key, []).append(self.measure(dict(point)))
        return statistics.median(self.costs[key])

    def median(self, point: Point) -> float:
        """Median time of point, inf when it was never measured."""
        times = self.costs.get(freeze(point))
        return statistics.median(times) if times else float("inf")


def coordinate_descent(space: list[Dimension], measure: Measure, budget: int, start: Point,
                       known: dict[tuple, list[float]] | None = None,
                       min_gain: float = 0.02) -> SearchResult:
    """Improve start one setting at a time, in space's order, until a pass changes nothing.

    A move is taken only when it is more than min_gain (a fraction) faster than the best so
    far, so measurement noise does not send the search wandering. budget counts new restores;
    known holds points already measured (the first, profiled, default restore).
    """
    ledger = _Ledger(measure, budget, known or {})
    best = dict(start)
    try:
        best_s = ledger.cost(best)
        improved = True
        while improved:
            improved = False
            for dim in space:
                best, best_s, moved = _improve(dim, best, best_s, ledger, min_gain)
                improved |= moved
    except BudgetSpent:
        pass
    # The best point measured, which may differ from `best` if the budget ran out mid-step.
    result = SearchResult(best, ledger.median(best), ledger.costs, ledger.trials)
    ranked = result.ranked()
    if ranked and ranked[0][1] < result.best_s * (1 - min_gain):
        result.best, result.best_s = ranked[0]
    return result


def _improve(dim: Dimension, best: Point, best_s: float, ledger: _Ledger,
             min_gain: float) -> tuple[Point, float, bool]:
    """One coordinate step: every value of an unordered dimension, a walk for an ordered one."""
    def better(s: float) -> bool:
        return s < best_s * (1 - min_gain)

    moved = False
    if not dim.active(best):
        return best, best_s, moved
    if not dim.ordered:
        for value in dim.values:
            if value == best[dim.name]:
                continue
            candidate = best | {dim.name: value}
            s = ledger.cost(candidate)
            if better(s):
                best, best_s, moved = candidate, s, True
        return best, best_s, moved
    here = dim.index(best[dim.name])
    for step in (1, -1):   # walk up while it helps; if the first step up did not, walk down
        i = here + step
        while 0 <= i < len(dim.values):
            candidate = best | {dim.name: dim.values[i]}
            s = ledger.cost(candidate)
            if not better(s):
                break
            best, best_s, moved = candidate, s, True
            i += step
        if moved:
            break
    return best, best_s, moved


def successive_halving(candidates: list[Point], measure: Measure, budget: int,
                       known: dict[tuple, list[float]] | None = None) -> SearchResult:
    """Re-measure candidates, keep the faster half, repeat: picks a winner robust to noise.

    Each round measures every survivor once more and ranks them by median; budget caps the
    restores spent. With one candidate it returns at once.
    """
    ledger = _Ledger(measure, budget, known or {})
    survivors = [dict(c) for c in candidates]
    try:
        while len(survivors) > 1:
            for point in survivors:
                ledger.cost(point, fresh=True)
            survivors.sort(key=lambda p: statistics.median(ledger.costs[freeze(p)]))
            survivors = survivors[:max(1, len(survivors) // 2)]
    except BudgetSpent:
        survivors.sort(key=ledger.median)
    winner = survivors[0]
    return SearchResult(winner, ledger.median(winner), ledger.costs, ledger.trials)
