"""Pre-warm in the background and `restoreprof warm` as a daemon, on the fake libcuda."""

import os
import signal
import subprocess
import sys

import numpy as np
from test_engine import device_alloc, drv, pattern  # noqa: F401 - drv is a fixture

from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.engine import Engine
from restoreprof.optimizer.prewarm import Prewarm


def test_background_prewarm_feeds_the_engine(drv, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FAKECUDA_DEVICES", "2")
    cfg = OptimizerConfig(threads=2, chunk_mb=1)
    ready = Prewarm(cfg).start().wait(timeout=30)
    assert set(ready.contexts) == {0, 1}
    assert ready.timings.devices == 2 and ready.timings.pool_bytes == 4 << 20
    assert ready.timings.total_s >= 0
    with Engine(cfg, pool=ready.pool) as engine:
        data = pattern(3 << 20)
        dptr = device_alloc(drv, data.nbytes)
        engine.to_device(dptr, data)
        back = np.zeros_like(data)
        engine.to_host(back, dptr)
        assert np.array_equal(back, data)
    ready.release()
    assert ready.pool is None and not ready.contexts


def test_warm_command_holds_until_sigterm(drv, tmp_path):  # noqa: F811
    env = dict(os.environ, RESTOREPROF_CHUNK_MB="1", RESTOREPROF_THREADS="2",
               RESTOREPROF_RUN_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "restoreprof", "warm"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert "1 GPU(s)" in first and "staging pool 4 MiB" in first, first
        socket_path = tmp_path / f"warm-{os.geteuid()}.sock"
        assert proc.stdout.readline().startswith(f"serving preloads on {socket_path}")
        assert socket_path.exists()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "released; 0 snapshot(s) preloaded" in out
    assert not socket_path.exists()
