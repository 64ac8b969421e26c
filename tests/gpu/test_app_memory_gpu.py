"""Issue 13 on a real GPU: memory a program manages itself (VMM handles mapped twice, at offsets,
read-only, unmapped; stream-ordered allocations from the default pool and a created one) comes
back bit-exact through 'restoreprof exec' + checkpoint + restore, with every handle still
working and freeable; a program that exported a handle is refused and runs on intact. Skips
without a GPU. The larger run with timings is benchmarks/gpu_app_memory.py."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.workloads.controller import HeldMemory

pytestmark = [pytest.mark.gpu, pytest.mark.root]
UNIT_MIB = 64


def _start(tmp_path, *args: str) -> HeldMemory:
    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable, "-m",
           "restoreprof.workloads.app_memory", "--state", str(tmp_path / "state"),
           "--unit-mib", str(UNIT_MIB), *args]
    return HeldMemory.start_command(cmd, tmp_path / "state", timeout_s=300)


def _teardown(w: HeldMemory, timeout_s: float = 60) -> str:
    done = w.state_dir / "teardown"
    done.unlink(missing_ok=True)
    os.kill(w.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return done.read_text().strip()


@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "reloaded"])
def test_app_managed_memory_round_trip_on_the_gpu(tmp_path, preload):
    from restoreprof.checkpoint import checkpoint, restore

    w = _start(tmp_path)
    try:
        result = checkpoint(w.pid, tmp_path / "ckpt")
        unit = UNIT_MIB << 20
        assert result.manifest.processes[0].offload["bytes"] >= 7 * unit + 3 * unit
        restored = restore(tmp_path / "ckpt", optimizer=OptimizerConfig(preload=preload))
        assert not restored.notes, restored.notes
        assert w.verify(), (w.state_dir / "verified").read_text()
        assert _teardown(w) == "OK"
    finally:
        w.stop()


def test_exported_handle_is_refused_on_the_gpu(tmp_path):
    from restoreprof.checkpoint import checkpoint

    w = _start(tmp_path, "--export")
    try:
        with pytest.raises(RestoreprofError, match="exported"):
            checkpoint(w.pid, tmp_path / "ckpt")
        assert w.alive() and w.verify()
        assert _teardown(w) == "OK"
    finally:
        w.stop()
