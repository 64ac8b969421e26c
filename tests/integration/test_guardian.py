"""The guardian puts back a checkpoint whose command died between the offload and CRIU's dump
(issue 19): a fake-GPU process under the library, its memory offloaded and the driver's lock and
checkpoint taken, then its command "dies": the gate reopens, the memory returns, it runs on."""

from __future__ import annotations

import ctypes
import os
import sys
import time

import pytest

from restoreprof.checkpoint import gpu
from restoreprof.checkpoint.guardian import Guardian
from restoreprof.checkpoint.journal import checkpoint_journal
from restoreprof.checkpoint.trust import prepare_checkpoint_directory, private_umask
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root


@pytest.fixture
def shared_driver_state(fake_driver):
    """The fake driver keeps each PID's checkpoint state where every process sees it, as the
    real one does (otherwise the guardian, another process, would see nothing locked): the
    fake_driver fixture's shared state, named here for what these tests need of it."""
    return fake_driver


def _offloaded_and_locked(tmp_path, fake_driver):
    ctypes.CDLL(str(fake_driver), mode=ctypes.RTLD_GLOBAL)  # this process's driver: the fake
    exec_prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=16, prefix=exec_prefix)
    assert gpu.cuda_processes([w.pid]) == [w.pid]  # and the driver initialised here
    folder = tmp_path / "c"
    with private_umask():
        prepare_checkpoint_directory(folder, "restoreprof.json")
    journal = checkpoint_journal(folder)
    journal.write("started", root_pid=w.pid, cuda_pids=[w.pid], shim_pids=[w.pid], offloaded={})
    offloaded = gpu.offload_all([w.pid], folder, None)
    journal.write("offloading", offloaded={str(p): r for p, r in offloaded.items()})
    gpu.lock_and_checkpoint([w.pid], 10_000)
    journal.write("gpu-locked")
    from restoreprof.cuda import driver

    assert driver.process_state(w.pid) == "checkpointed"
    return w, folder, journal


def test_guardian_puts_back_when_its_command_dies(shared_driver_state, tmp_path):
    w, folder, journal = _offloaded_and_locked(tmp_path, shared_driver_state)
    try:
        guard = Guardian.start("checkpoint", folder, log=tmp_path / "guardian.log")
        os.close(guard._write_fd)  # the command dies: no "done"
        deadline = time.monotonic() + 60
        while journal.path.exists():
            assert time.monotonic() < deadline, (tmp_path / "guardian.log").read_text()
            time.sleep(0.05)
        from restoreprof.cuda import driver

        assert driver.process_state(w.pid) == "running", (tmp_path / "guardian.log").read_text()
        assert w.verify(timeout_s=30), "the GPU memory did not come back"
        assert list(folder.iterdir()) == []  # put back whole: the partial files are gone
        assert "put back" in (tmp_path / "guardian.log").read_text()
    finally:
        w.stop()


def test_guardian_does_nothing_once_released(shared_driver_state, tmp_path):
    w, folder, journal = _offloaded_and_locked(tmp_path, shared_driver_state)
    try:
        guard = Guardian.start("checkpoint", folder)
        guard.release()
        time.sleep(1.0)
        assert journal.path.exists() and journal.phase == "gpu-locked"
        from restoreprof.checkpoint import recovery

        assert recovery.recover_checkpoint(folder).startswith("put back")  # as --recover does
        assert w.verify(timeout_s=30)
    finally:
        w.stop()
