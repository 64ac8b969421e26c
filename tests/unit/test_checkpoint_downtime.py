"""A checkpoint's downtime: from the first step that holds the processes to its end, so that
with --pre-copy what ran while they ran on is not counted (and without, nearly all is)."""

from pathlib import Path

from restoreprof.checkpoint.api import CheckpointResult
from restoreprof.checkpoint.manifest import Manifest
from restoreprof.checkpoint.steps import Step

S = 1_000_000_000


def _result(*names_and_seconds) -> CheckpointResult:
    steps, t = [], 0
    for name, seconds in names_and_seconds:
        steps.append(Step(name, t, t + int(seconds * S)))
        t += int(seconds * S)
    return CheckpointResult(Path("/c"), Manifest(root_pid=1, processes=[]), steps)


def test_the_pre_copy_is_not_downtime():
    r = _result(("list processes", 0.1), ("pre-copy GPU memory", 2.0),
                ("pre-copy write-back", 9.0), ("offload GPU memory", 0.6),
                ("GPU lock + checkpoint", 0.3), ("criu dump", 0.5), ("manifest", 0.1))
    assert r.total_s == 12.6
    assert round(r.downtime_s, 6) == 1.5
    assert round(r.to_dict()["downtime_s"], 6) == 1.5


def test_without_gpu_the_downtime_starts_at_criu_dump():
    r = _result(("list processes", 0.2), ("criu dump", 0.5), ("checksum images", 0.1))
    assert round(r.downtime_s, 6) == 0.6


def test_with_no_holding_step_the_downtime_is_the_whole_checkpoint():
    r = _result(("list processes", 0.2), ("manifest", 0.1))
    assert r.downtime_s == r.total_s
