"""Issue 13's CI check through real CRIU on the fake driver: a program holding its own VMM memory
(handles mapped twice, at offsets, read-only, unmapped) and stream-ordered allocations (default
pool, a created pool) is checkpointed under 'restoreprof exec', restored (preloaded + adopted,
or reloaded), and checks its bytes bit-exact, that every handle it holds still works, and that it
can free it all. A program that exported a handle is refused at checkpoint and runs on intact."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

MIB = 1 << 20
U = 2 * MIB
SAVED_BYTES = 7 * U + (U + U // 2 + 123) + (2 * U + 7)  # see test_app_vmm.py


def _start(tmp_path, *args: str) -> HeldMemory:
    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable, "-m",
           "restoreprof.workloads.app_memory", "--state", str(tmp_path / "state"), *args]
    return HeldMemory.start_command(cmd, tmp_path / "state", timeout_s=60)


def _teardown(w: HeldMemory, timeout_s: float = 30) -> str:
    done = w.state_dir / "teardown"
    done.unlink(missing_ok=True)
    os.kill(w.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return done.read_text().strip()


@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "reloaded"])
def test_app_managed_memory_round_trip_through_criu(fake_driver, tmp_path, preload):
    w = _start(tmp_path)
    try:
        result = checkpoint(w.pid, tmp_path / "ckpt")
        record = result.manifest.processes[0]
        assert record.cuda and record.offload["bytes"] == SAVED_BYTES
        restored = restore(tmp_path / "ckpt", optimizer=OptimizerConfig(preload=preload))
        steps = {s.name for s in restored.steps}
        assert not restored.notes, restored.notes  # no fallback taken
        assert ("GPU memory adopt" if preload else "GPU memory reload") in steps
        assert w.verify(), (w.state_dir / "verified").read_text()
        assert _teardown(w) == "OK"
        assert ShimControl(w.pid).status()["app_handles"] == 0
    finally:
        w.stop()


def test_exported_memory_refuses_the_checkpoint_and_the_process_runs_on(fake_driver, tmp_path):
    w = _start(tmp_path, "--export")
    try:
        with pytest.raises(RestoreprofError, match="exported as a POSIX file descriptor") as err:
            checkpoint(w.pid, tmp_path / "ckpt")
        assert "keeps running" in err.value.hint
        assert not list((tmp_path / "ckpt").glob("*")), "a refused checkpoint writes nothing"
        assert w.alive()
        status = ShimControl(w.pid).status()
        assert status["state"] == "running" and status["gate"] == "open"
        assert w.verify(), "the data must be intact after a refused checkpoint"
        assert _teardown(w) == "OK"
    finally:
        w.stop()
