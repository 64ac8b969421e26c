"""Pre-warm in the background and `restoreprof warm` as a daemon, on the fake libcuda."""

import ctypes
import os
import signal
import subprocess
import sys

from restoreprof.optimizer.prewarm import Prewarm


def test_background_prewarm_holds_a_context_per_gpu_until_released(fake_driver, monkeypatch):
    monkeypatch.setenv("FAKECUDA_DEVICES", "2")
    fake = ctypes.CDLL(str(fake_driver))  # the driver cuda-python loaded here: the same globals
    assert fake.cuInit(0) == 0  # two devices from now on (it reads FAKECUDA_DEVICES)
    before = [fake.fakecuda_primary_refcount(d) for d in (0, 1)]
    ready = Prewarm().start().wait(timeout=30)
    assert set(ready.contexts) == {0, 1} and ready.timings.devices == 2
    assert ready.timings.total_s >= 0
    assert [fake.fakecuda_primary_refcount(d) for d in (0, 1)] == [n + 1 for n in before]
    ready.release()
    assert not ready.contexts
    assert [fake.fakecuda_primary_refcount(d) for d in (0, 1)] == before


def test_cuinit_only_holds_no_context(fake_driver):
    ready = Prewarm(contexts=False).start().wait(timeout=30)
    assert ready.contexts == {} and ready.timings.devices >= 1


def test_warm_command_holds_until_sigterm(fake_driver, tmp_path):
    env = dict(os.environ, RESTOREPROF_CHUNK_MB="1", RESTOREPROF_THREADS="2",
               RESTOREPROF_RUN_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "restoreprof", "warm"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert "1 GPU(s)" in first and "staging pool 4 MiB pinned" in first, first
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
