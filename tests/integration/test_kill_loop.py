"""The kill loop (benchmarks/kill_loop.py) in its reduced form: kill -9, SIGTERM and Ctrl-C at
random points of checkpoint and restore, a CPU process and a fake-GPU one under the library.
Every run must end checkpointed, running, restored and verified, killed before it ran with the
checkpoint intact, or held and recovered by one command."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def _kill_loop():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_loop.py"
    spec = importlib.util.spec_from_file_location("kill_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, seed", [("cpu", 7), ("gpu", 3)])
def test_kill_loop_reduced(tmp_path, kind, seed):
    loop = _kill_loop()
    lines: list[str] = []
    tally = loop.run_loop(8, [kind], seed, mib=16, gpu_mib=16, base=tmp_path, say=lines.append)
    failures = [outcome for (k, outcome) in tally if k == "failures"]
    assert not failures, "\n".join([*lines, *failures])
    assert sum(tally.values()) == 8
    ends = {outcome for (_, outcome) in tally}
    assert len(ends) >= 2, f"the kills all landed alike: {lines}"
