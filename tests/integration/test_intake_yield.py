"""A restore comes before an auto-hold intake (optimizer/hot_snapshots.py restoring(), shim/hot.c's
cancel token), on the fake driver made slow to pin (FAKECUDA_HOST_ALLOC_DELAY_US): an intake under
way is cancelled within one record's pinning, frees what it pinned, is counted as cancelled (not
held, not refused), and is taken in fully once the restore is done; a cancel before or after an
intake never reaches the next one; an explicit hold is never cancelled; and through the warm pool
a restore started during an intake is bit-exact, the intake cancelled and then retried."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.hot_snapshots import (
    INTAKE_CANCELLED,
    MAX_RECORDS,
    HotBuffer,
    HotSnapshots,
    _library,
)
from restoreprof.optimizer.preload import preload_snapshot
from restoreprof.store.table import read_table
from restoreprof.system.warm_socket import describe_pool
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

CLI = [sys.executable, "-m", "restoreprof"]
CFG = OptimizerConfig(threads=4, streams=2)
MIB = 1 << 20
DELAY_ENV = "FAKECUDA_HOST_ALLOC_DELAY_US"
PIN_DELAY_S = 0.2  # each record's pinning, in this process: 6 records, 1.2 s an intake


def _app(tmp_path: Path) -> HeldMemory:
    """app_memory under restoreprof exec: a process with 6 allocations (6 records to pin)."""
    cmd = [*CLI, "exec", "--", sys.executable, "-m", "restoreprof.workloads.app_memory",
           "--state", str(tmp_path / "state")]
    return HeldMemory.start_command(cmd, tmp_path / "state", timeout_s=60)


@pytest.fixture
def snap(fake_driver, tmp_path) -> Path:
    w = _app(tmp_path)
    try:
        ShimControl(w.pid).offload(tmp_path / "a.snap")
    finally:
        w.stop()
    assert len(read_table(tmp_path / "a.snap").records) == 6
    return tmp_path / "a.snap"


@pytest.fixture
def fake(fake_driver):
    lib = ctypes.CDLL(str(fake_driver))  # the driver loaded in this process: its counters
    lib.fakecuda_calls.restype = ctypes.c_ulong
    lib.fakecuda_calls.argtypes = [ctypes.c_char_p]
    return lib


def _contents(loaded) -> list[bytes]:
    return [ctypes.string_at(item.local, item.size) for item in loaded.items[:loaded.count]]


def _reference(snap: Path) -> list[bytes]:
    loaded = preload_snapshot(snap, CFG)
    try:
        return _contents(loaded)
    finally:
        loaded.release()


def _from_hot(hot: HotSnapshots, snap: Path) -> list[bytes]:
    with open(snap, "rb") as f:
        loaded = hot.preload(f.fileno(), str(snap), CFG)
    assert loaded is not None, "not served from the hot copy"
    try:
        return _contents(loaded)
    finally:
        loaded.release()


def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_restore_cancels_the_intake_under_way_and_it_is_taken_in_after(snap, fake,
                                                                         monkeypatch):
    reference = _reference(snap)
    contexts_before = fake.fakecuda_primary_refcount(0)
    allocs_before = fake.fakecuda_calls(b"cuMemHostAlloc")
    frees_before = fake.fakecuda_calls(b"cuMemFreeHost")
    monkeypatch.setenv(DELAY_ENV, str(int(PIN_DELAY_S * 1e6)))
    hot = HotSnapshots(64 * MIB, threads=3)
    try:
        with open(snap, "rb") as f:
            intake = hot.offer(f.fileno(), str(snap))
        assert intake is not None
        _until(lambda: fake.fakecuda_calls(b"cuMemHostAlloc") > allocs_before, 10,
               "the intake never began pinning")
        assert hot.status()["intake_bytes"] > 0
        with hot.restoring() as asked:
            start = time.monotonic()
            intake.join(PIN_DELAY_S + 1.0)
            ended_s = time.monotonic() - start
            assert asked == 1 and not intake.is_alive()
            # never waited for in full (6 records: 1.2 s): at most the one record being pinned
            assert ended_s < PIN_DELAY_S + 0.3, f"the intake took {ended_s:.2f} s to give way"
            allocs = fake.fakecuda_calls(b"cuMemHostAlloc") - allocs_before
            assert 0 < allocs < 6, "stopped between records' pinning"
            # what it pinned is kept aside while the restore runs (unpinning holds the
            # driver's locks), and counted as pinned
            assert fake.fakecuda_calls(b"cuMemFreeHost") == frees_before
            status = hot.status()
            assert (status["held_bytes"], status["snapshots"]) == (0, [])
            assert status["intake_bytes"] > 0
            assert status["intakes_cancelled"] == 1 and status["refused"] == 0
            assert status["intakes_waiting"] == 1, "taken in again once the restore is done"
            assert _reference(snap) == reference, "the restore alone, bit-exact"
        # the restore over: what the cancelled intake pinned is freed, its contexts let go
        assert fake.fakecuda_calls(b"cuMemFreeHost") - frees_before == allocs
        monkeypatch.delenv(DELAY_ENV)
        _until(lambda: len(hot.status()["snapshots"]) == 1, 20, "never taken in after")
        status = hot.status()
        assert status["intakes_cancelled"] == 1 and status["intakes_waiting"] == 0
        assert status["held_bytes"] >= sum(len(c) for c in reference)
        assert _from_hot(hot, snap) == reference
    finally:
        hot.release()
    assert fake.fakecuda_primary_refcount(0) == contexts_before


def test_a_cancel_before_or_after_an_intake_never_reaches_the_next(snap, fake):
    lib = _library()
    buffers = (HotBuffer * MAX_RECORDS)()
    err = ctypes.create_string_buffer(512)
    allocs_before = fake.fakecuda_calls(b"cuMemHostAlloc")
    with open(snap, "rb") as f:  # a token set before the intake began: it stops at once
        count = lib.rp_hot_intake(f.fileno(), 2, buffers, MAX_RECORDS,
                                  ctypes.byref(ctypes.c_int(1)), err, len(err))
    assert count == INTAKE_CANCELLED and b"cancelled" in err.value
    assert fake.fakecuda_calls(b"cuMemHostAlloc") == allocs_before, "nothing was pinned"

    hot = HotSnapshots(64 * MIB, threads=3)
    try:
        with hot.restoring() as asked:  # a restore with no intake under way: cancels nothing
            assert asked == 0
        with open(snap, "rb") as f:
            intake = hot.offer(f.fileno(), str(snap))
        intake.join(10)
        assert len(hot.status()["snapshots"]) == 1 and hot.status()["intakes_cancelled"] == 0
        with hot.restoring() as asked:  # after the intake ended: its token reaches nobody
            assert asked == 0
        status = hot.status()
        assert len(status["snapshots"]) == 1 and status["intakes_cancelled"] == 0
        assert _from_hot(hot, snap) == _reference(snap)
    finally:
        hot.release()

    hot = HotSnapshots(64 * MIB, threads=3)
    try:  # offered while a restore runs: waits for its end, then taken in in full
        with hot.restoring(), open(snap, "rb") as f:
            assert hot.offer(f.fileno(), str(snap)) is None
            assert hot.status()["intakes_waiting"] == 1
        _until(lambda: len(hot.status()["snapshots"]) == 1, 20, "the waiting offer was lost")
        assert hot.status()["intakes_cancelled"] == 0
    finally:
        hot.release()


def test_an_explicit_hold_is_not_cancelled(snap, fake, monkeypatch):
    monkeypatch.setenv(DELAY_ENV, "50000")
    allocs_before = fake.fakecuda_calls(b"cuMemHostAlloc")
    hot = HotSnapshots(64 * MIB, threads=3)
    try:
        holding = threading.Thread(target=hot.hold_file, args=(snap,))
        holding.start()
        _until(lambda: fake.fakecuda_calls(b"cuMemHostAlloc") > allocs_before, 10,
               "the hold never began pinning")
        with hot.restoring() as asked:
            assert asked == 0, "what the user asked to hold is not an auto-hold intake"
            holding.join(10)
        status = hot.status()
        assert len(status["snapshots"]) == 1 and status["intakes_cancelled"] == 0
    finally:
        hot.release()


# --- through the warm pool ---------------------------------------------------------------------


def _hot_status() -> dict:
    return (describe_pool() or {}).get("hot") or {}


def test_a_pooled_restore_during_an_intake_cancels_it_and_the_intake_comes_back(
        fake_driver, tmp_path, monkeypatch):
    w = _app(tmp_path)
    checkpoint(w.pid, tmp_path / "ckpt")
    # pinning a record takes 0.5 s in the pool: its intake, 3 s, is still under way when the
    # second restore comes; the staging is pageable (else pinning it, 32 buffers, took 16 s)
    monkeypatch.setenv("RESTOREPROF_PINNED", "0")
    env = {**os.environ, DELAY_ENV: "500000"}
    pool = subprocess.Popen([*CLI, "warm", "--hold-mib", "64"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    banner = []
    while not (line := pool.stdout.readline()).startswith("serving preloads on"):
        assert line, f"restoreprof warm exited: {''.join(banner)}"
        banner.append(line)
    try:
        restore(tmp_path / "ckpt")  # from the page cache: the pool offers it for auto-hold
        assert w.verify(), (w.state_dir / "verified").read_text()
        _until(lambda: _hot_status().get("intake_bytes", 0) > 0, 10, "no intake began")
        w.kill()
        out = subprocess.run([*CLI, "restore", "-D", str(tmp_path / "ckpt")],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert w.verify(), "GPU memory differs after a restore that cancelled an intake"
        # counted once its thread stops (after the record being pinned, 0.5 s at most)
        _until(lambda: _hot_status().get("intakes_cancelled", 0) >= 1, 5, "nothing cancelled")
        assert _hot_status()["refused"] == 0
        # then taken in again, in full, and the next restore is sent from it
        _until(lambda: len(_hot_status().get("snapshots", [])) == 1, 30, "never taken in after")
        w.kill()
        restored = restore(tmp_path / "ckpt")
        assert not restored.notes
        assert w.verify()
    finally:
        if w.alive():
            w.stop()
        pool.terminate()
        out = "".join(banner) + pool.communicate(timeout=30)[0]
    assert "1 restore(s) carried out" in out and "0 failed; 1 sent from hot copies" in out, out
