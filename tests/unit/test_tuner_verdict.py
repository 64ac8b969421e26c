"""The tuner's verdict: a winner is saved only when it beats both the default and the plain path
by more than the measured run-to-run spread; otherwise "no significant difference", and the
tuning database is not written. Restores are simulated (no CRIU): a trial's time comes from a
cost model with noise, through the same tune() loop and `restoreprof run`'s saving step."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from restoreprof.commands import run as run_command
from restoreprof.errors import RestoreprofError
from restoreprof.tuner.autotune import NO_DIFFERENCE, tune
from restoreprof.tuner.space import Point, plain_point
from restoreprof.tuner.trial import Trial


@dataclass
class Process:
    pid: int
    offload: dict | None = None


@dataclass
class Manifest:
    processes: list = field(default_factory=lambda: [Process(4242)])
    cuda_pids: list = field(default_factory=list)


class SimulatedRunner:
    """TrialRunner's interface over a cost model: seconds = cost(point) + uniform noise."""

    def __init__(self, cost, noise_s: float, outdir: Path, seed: int = 7) -> None:
        self.cost, self.noise_s = cost, noise_s
        self.manifest = Manifest()
        self.trials: list[Trial] = []
        self.outdir = self.checkpoint_dir = outdir
        self.traced = False
        self._random = random.Random(seed)

    def run(self, point: Point, stage: str) -> Trial:
        seconds = self.cost(point) + self._random.uniform(0, self.noise_s)
        trial = Trial(len(self.trials) + 1, stage, dict(point), seconds,
                      steps=[{"name": "criu restore", "start_ns": 0, "end_ns": int(seconds * 1e9)}])
        self.trials.append(trial)
        return trial


def flat(_point: Point) -> float:
    return 1.0  # nothing the tuner can change makes a difference


def faster_without_checksums(point: Point) -> float:
    return 1.0 - (0.4 if not point["verify"] else 0.0)


def run_command_with(runner: SimulatedRunner, tmp_path: Path, monkeypatch,
                     capsys) -> tuple[str, Path]:
    """`restoreprof run -D ...`'s tuning and saving step, on the simulated runner."""
    monkeypatch.setattr(run_command, "TrialRunner", lambda *args, **kwargs: runner)
    db = tmp_path / "tuning.json"
    args = argparse.Namespace(db=db, warm_cache=False, no_trace=True, budget=8, repeat=3,
                              no_save=False, json=False)
    assert run_command._tune(args, tmp_path, tmp_path, lambda result: None, print) == 0
    return capsys.readouterr().out, db


def test_noise_alone_saves_nothing(tmp_path, monkeypatch, capsys):
    runner = SimulatedRunner(flat, noise_s=0.1, outdir=tmp_path)
    out, db = run_command_with(runner, tmp_path, monkeypatch, capsys)
    assert NO_DIFFERENCE in out
    assert "nothing saved" in out
    assert not db.exists(), "a noise winner must not reach the tuning database"


def test_a_winner_beyond_the_spread_is_saved(tmp_path, monkeypatch, capsys):
    runner = SimulatedRunner(faster_without_checksums, noise_s=0.05, outdir=tmp_path)
    out, db = run_command_with(runner, tmp_path, monkeypatch, capsys)
    assert NO_DIFFERENCE not in out and "significant:" in out
    assert "saved for" in out and db.exists()


def test_a_winner_slower_than_the_plain_path_is_not_saved(tmp_path):
    def plain_fastest(point: Point) -> float:
        base = faster_without_checksums(point)
        return 0.3 if point == plain else base  # the plain path beats every tuned point

    runner = SimulatedRunner(plain_fastest, noise_s=0.02, outdir=tmp_path)
    from restoreprof.tuner.space import build_space

    plain = plain_point(build_space(has_cuda=False, has_offload=False))
    outcome = tune(runner, budget=8, repeat=3, say=lambda line: None)
    assert outcome.winner != plain and not outcome.significant
    assert outcome.verdict().startswith(NO_DIFFERENCE)


def test_the_default_as_winner_is_no_difference(tmp_path):
    def default_fastest(point: Point) -> float:
        return 1.0 if point["verify"] and point["readahead"] and point["threads"] == 16 else 2.0

    runner = SimulatedRunner(default_fastest, noise_s=0.01, outdir=tmp_path)
    outcome = tune(runner, budget=8, repeat=3, say=lambda line: None)
    assert outcome.winner == outcome.default_point
    assert outcome.verdict() == f"{NO_DIFFERENCE}: the best point found is the default"
    assert "speedup" in "\n".join(outcome.summary_lines())


def test_one_repeat_cannot_measure_the_spread(tmp_path):
    with pytest.raises(RestoreprofError, match="cannot measure the run-to-run spread"):
        tune(SimulatedRunner(flat, 0.0, tmp_path), budget=8, repeat=1, say=lambda line: None)
