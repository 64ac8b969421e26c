"""Hot snapshots (optimizer/hot_snapshots.py, shim/hot.c) on the fake driver: a snapshot held in
pinned memory is sent bit-exact, a replaced or rewritten snapshot is never served from its stale
copy, a hot copy damaged in memory is caught and dropped, the budget evicts the least recently
used, and the warm pool holds (--hold, auto-hold) and serves restores from hot copies, counting
the pinned memory in its describe answer."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from _snapshots import damage_chunk, in_file_copy, v3_copy

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.doctor import _warm_pool
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.hot_snapshots import HotSnapshots, snapshots_in
from restoreprof.optimizer.preload import preload_snapshot
from restoreprof.store.table import read_table
from restoreprof.system.warm_socket import describe_pool, pinned_summary
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]
CFG = OptimizerConfig(threads=4, streams=2)
MIB = 1 << 20


def _offloaded_snapshot(tmp_path: Path, name: str, gpu_mib: int, seed: int) -> Path:
    """A snapshot file of a held process's GPU memory (offloaded, then the process stopped)."""
    w = HeldMemory.start(tmp_path / f"state-{name}", 4, gpu_mib=gpu_mib, seed=seed, prefix=EXEC)
    try:
        snap = tmp_path / f"{name}.snap"
        ShimControl(w.pid).offload(snap)
        return snap
    finally:
        w.stop()


def _contents(loaded) -> list[bytes]:
    return [ctypes.string_at(item.local, item.size) for item in loaded.items[:loaded.count]]


@pytest.fixture
def snap(fake_driver, tmp_path):
    return _offloaded_snapshot(tmp_path, "a", 9, 1)


def test_a_held_snapshot_is_sent_bit_exact_and_counted(snap):
    assert read_table(snap).version == 4  # pieces checked by crc32c
    hot = HotSnapshots(64 * MIB, threads=3)
    try:
        held = hot.hold_file(snap)
        assert held.held_bytes >= 9 * MIB
        status = hot.status()
        assert status["held_bytes"] == held.held_bytes and status["budget_bytes"] == 64 * MIB
        assert sum(size for _, size in hot.pinned_ranges()) == held.held_bytes
        from_file = preload_snapshot(snap, CFG)
        with open(snap, "rb") as f:
            from_hot = hot.preload(f.fileno(), str(snap), CFG)
        try:
            assert from_hot is not None
            assert _contents(from_hot) == _contents(from_file)
            assert [a.address for a in from_hot.allocations()] == \
                [a.address for a in from_file.allocations()]
        finally:
            from_file.release()
            from_hot.release()
        sent = hot.status()["snapshots"][0]
        assert sent["served"] == 1
        assert set(sent["last_send_s"]) == {"make_memory", "copy", "export"}
        assert all(v >= 0 for v in sent["last_send_s"].values())
    finally:
        hot.release()


@pytest.mark.parametrize("send_threads, used", [(0, CFG.threads), (2, 2)])
def test_a_hot_send_runs_on_send_threads_threads(fake_driver, fake_libcuda, tmp_path,
                                                  monkeypatch, send_threads, used):
    """send_threads: the hot send checks and sends on that many threads (0: `threads`), so a
    restore can leave CRIU cores without slowing a page-cache preload (which keeps `threads`)."""
    snap = _offloaded_snapshot(tmp_path, "big", 100, 3)  # 4 spans of 32 MiB: work for 4 threads
    fake = ctypes.CDLL(str(fake_libcuda))  # the driver the engine loaded here: the same record
    monkeypatch.setenv("FAKECUDA_COPY_DELAY_US", "20000")  # no thread finds the spans all taken
    hot = HotSnapshots(256 * MIB)
    try:
        hot.hold_file(snap)
        fake.fakecuda_reset()
        with open(snap, "rb") as f:
            loaded = hot.preload(f.fileno(), str(snap), replace(CFG, send_threads=send_threads))
        assert loaded is not None
        loaded.release()
        assert fake.fakecuda_async_threads() == used
    finally:
        hot.release()


def test_a_replaced_or_rewritten_snapshot_is_not_served_from_its_stale_copy(snap, tmp_path):
    hot = HotSnapshots(64 * MIB)
    try:
        hot.hold_file(snap)
        os.utime(snap, ns=(time.time_ns(), time.time_ns() + 10**9))  # rewritten in place
        with open(snap, "rb") as f:
            assert hot.preload(f.fileno(), str(snap), CFG) is None
        hot.hold_file(snap)  # the same inode, taken in again
        replacement = _offloaded_snapshot(tmp_path, "b", 9, 2)
        os.replace(replacement, snap)  # a new file under the old name
        with open(snap, "rb") as f:
            assert hot.preload(f.fileno(), str(snap), CFG) is None
    finally:
        hot.release()


def test_a_hot_copy_damaged_in_memory_is_caught_and_dropped(snap):
    hot = HotSnapshots(64 * MIB)
    try:
        held = hot.hold_file(snap)
        ctypes.memset(held.buffers[0].host + 4096, 0x5A, 8)  # a stray write into pinned memory
        with open(snap, "rb") as f, \
                pytest.raises(RestoreprofError, match="no longer matches the snapshot's checksums"):
            hot.preload(f.fileno(), str(snap), CFG)
        assert hot.status()["snapshots"] == [], "a copy that failed its check is dropped"
    finally:
        hot.release()


def test_a_damaged_table_is_never_taken_in(snap):
    """A piece's crc32c altered in the table: the chunk no longer matches it."""
    table = read_table(snap)
    at = table.raw.rfind(struct.pack("<I", table.records[-1].piece_crcs[-1]))
    with open(snap, "r+b") as f:
        f.seek(at)
        f.write(b"\xff" * 4)
    hot = HotSnapshots(64 * MIB)
    with pytest.raises(RestoreprofError, match=r"checksum mismatch \(crc32c\) .* nothing was kept"):
        hot.hold_file(snap)
    assert hot.status()["held_bytes"] == 0


def test_a_damaged_chunk_is_never_taken_in(snap):
    damage_chunk(snap, 0)  # versions 3, 4: the bytes are chunks beside the table
    hot = HotSnapshots(64 * MIB)
    with pytest.raises(RestoreprofError, match=r"checksum mismatch \(crc32c\) .* nothing was kept"):
        hot.hold_file(snap)
    assert hot.status()["held_bytes"] == 0


def _held_and_sent_like(snap: Path, other: Path) -> None:
    """other, an older version of snap, is taken in and sent bit-exact: what snap preloads."""
    hot = HotSnapshots(64 * MIB, threads=3)
    try:
        hot.hold_file(other)
        from_file = preload_snapshot(snap, CFG)
        with open(other, "rb") as f:
            from_hot = hot.preload(f.fileno(), str(other), CFG)
        try:
            assert from_hot is not None
            assert _contents(from_hot) == _contents(from_file)
        finally:
            from_file.release()
            from_hot.release()
    finally:
        hot.release()


def test_a_version_3_snapshot_is_held_checked_and_sent_bit_exact(snap, tmp_path):
    """A version 3 snapshot (a BLAKE3 per piece) is taken in and sent checked by its BLAKE3s; a
    damaged chunk in one is never taken in."""
    v3 = v3_copy(snap, tmp_path / "v3.snap")
    _held_and_sent_like(snap, v3)
    damage_chunk(v3, 1)
    with pytest.raises(RestoreprofError, match=r"checksum mismatch \(BLAKE3\) .* nothing was kept"):
        HotSnapshots(64 * MIB).hold_file(v3)


def test_an_in_file_snapshot_is_held_and_sent_bit_exact(snap, tmp_path):
    """A version 2 snapshot (the bytes inside the file, crc32c) is still held and served."""
    _held_and_sent_like(snap, in_file_copy(snap, tmp_path / "v2.snap", 2))


def test_the_budget_evicts_the_least_recently_used(snap, tmp_path):
    other = _offloaded_snapshot(tmp_path, "b", 9, 2)
    hot = HotSnapshots(15 * MIB)  # room for one 9 MiB snapshot, not two
    try:
        hot.hold_file(snap)
        hot.hold_file(other)
        names = [s["name"] for s in hot.status()["snapshots"]]
        assert names == [str(other)] and hot.status()["evictions"] == 1
        with pytest.raises(RestoreprofError, match="more than the hot budget") as err:
            HotSnapshots(4 * MIB).hold_file(snap)
        assert "--hold-mib" in err.value.hint
    finally:
        hot.release()


def test_snapshots_in_a_folder_without_one_is_a_clear_error(tmp_path):
    with pytest.raises(RestoreprofError, match="holds no GPU snapshot") as err:
        snapshots_in(tmp_path)
    assert "restoreprof exec" in err.value.hint


# --- the warm pool -----------------------------------------------------------------------------


class Pool:
    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "restoreprof", "warm", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.banner = []
        while True:
            line = self.proc.stdout.readline()
            assert line, f"restoreprof warm exited: {''.join(self.banner)}"
            self.banner.append(line)
            if line.startswith("serving preloads on"):
                return

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return "".join(self.banner) + out


def _wait_held(count: int, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        hot = (describe_pool() or {}).get("hot") or {}
        if len(hot.get("snapshots", [])) == count:
            return hot
        time.sleep(0.05)
    raise AssertionError(f"the pool did not come to hold {count} snapshot(s): {hot}")


def test_the_pool_holds_a_checkpoint_and_restores_from_it(fake_driver, tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=24, prefix=EXEC)
    checkpoint(w.pid, tmp_path / "ckpt")
    pool = Pool("--hold", str(tmp_path / "ckpt"), "--hold-mib", "64", "--no-auto-hold")
    try:
        assert "holding" in pool.banner[1] and "checked" in pool.banner[1]
        described = describe_pool()
        held = described["hot"]["held_bytes"]
        assert held >= 24 * MIB
        # every pinned range is reported, the hot copies' too (the profiler classifies by them)
        assert sum(size for _, size in described["pinned"]) == \
            held + sum(size for _, size in described["staging"])
        detail = pinned_summary(described)
        assert f"PID {described['pid']}" in detail and "(hot 1: " in detail
        assert len(detail) <= 46, "doctor's detail column"
        from restoreprof.tui.pipeline import warm_pool_in_use

        assert warm_pool_in_use() == detail, "the TUI's line says the same"
        row = _warm_pool()
        assert row.name == "warm pool" and row.ok and not row.required and row.detail == detail
        for _ in range(2):  # the same checkpoint twice: both from the hot copy
            restored = restore(tmp_path / "ckpt", optimizer=OptimizerConfig(preload=True))
            assert not restored.notes, "no fallback may be taken"
            assert w.verify(), "GPU memory differs after a restore from a hot snapshot"
            w.kill()
    finally:
        if w.alive():
            w.stop()
        out = pool.stop()
    assert "2 snapshot(s) preloaded" in out and "0 failed; 2 sent from hot copies" in out


def test_auto_hold_takes_a_restored_snapshot_in_and_serves_the_next_restore(fake_driver,
                                                                           tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=16, prefix=EXEC)
    checkpoint(w.pid, tmp_path / "ckpt")
    pool = Pool("--hold-mib", "64")
    try:
        restore(tmp_path / "ckpt")
        assert w.verify()
        w.kill()
        hot = _wait_held(1)
        assert hot["auto_hold"] and hot["held_bytes"] >= 16 * MIB
        restored = restore(tmp_path / "ckpt")
        assert not restored.notes
        assert w.verify()
    finally:
        if w.alive():
            w.stop()
        out = pool.stop()
    assert "0 failed; 1 sent from hot copies" in out


def test_hold_mib_zero_holds_nothing(fake_driver, tmp_path):
    out = subprocess.run([sys.executable, "-m", "restoreprof", "warm", "--hold", str(tmp_path),
                          "--hold-mib", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--hold with --hold-mib 0 holds nothing" in out.stderr


def test_a_running_pool_is_told_to_hold(fake_driver, tmp_path):
    from restoreprof.optimizer.pool import hold_through_pool

    snap = _offloaded_snapshot(tmp_path, "a", 9, 1)
    pool = Pool("--hold-mib", "64", "--no-auto-hold")
    try:
        held = hold_through_pool(snap)
        assert held["bytes"] >= 9 * MIB and held["name"] == str(snap)
        assert describe_pool()["hot"]["held_bytes"] == held["bytes"]
        with pytest.raises(RestoreprofError, match="could not hold") as err:
            hold_through_pool(_offloaded_snapshot(tmp_path, "big", 80, 3))  # over 64 MiB
        assert "--hold-mib" in err.value.hint
    finally:
        pool.stop()


def test_released_hot_copies_leave_nothing_pinned_or_retained(snap, fake_driver):
    fake = ctypes.CDLL(str(fake_driver))  # the driver loaded in this process: its counters
    fake.fakecuda_calls.restype = ctypes.c_ulong
    fake.fakecuda_calls.argtypes = [ctypes.c_char_p]
    contexts_before = fake.fakecuda_primary_refcount(0)
    allocs_before = fake.fakecuda_calls(b"cuMemHostAlloc")
    frees_before = fake.fakecuda_calls(b"cuMemFreeHost")
    hot = HotSnapshots(64 * MIB)
    held = hot.hold_file(snap)
    with open(snap, "rb") as f:
        hot.preload(f.fileno(), str(snap), CFG).release()
    allocs = fake.fakecuda_calls(b"cuMemHostAlloc") - allocs_before
    assert allocs == sum(1 for b in held.buffers[:held.count] if b.host) > 0
    hot.release()
    assert fake.fakecuda_calls(b"cuMemFreeHost") - frees_before == allocs
    assert fake.fakecuda_primary_refcount(0) == contexts_before
    assert hot.status()["held_bytes"] == 0


def test_warm_hold_hands_snapshots_to_the_running_pool(fake_driver, tmp_path):
    snap = _offloaded_snapshot(tmp_path, "a", 9, 1)
    pool = Pool("--hold-mib", "64", "--no-auto-hold")
    try:
        out = subprocess.run([sys.executable, "-m", "restoreprof", "warm", "--hold", str(snap)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"the running pool holds {snap} hot" in out.stdout
        assert [s["name"] for s in describe_pool()["hot"]["snapshots"]] == [str(snap)]
        assert pool.proc.poll() is None, "the running pool serves on"
    finally:
        pool.stop()


def test_an_applications_own_vmm_memory_comes_back_from_a_hot_copy(fake_driver, tmp_path):
    """Physical allocations (snapshot version 2: handles, mappings) served from pinned memory."""
    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable, "-m",
           "restoreprof.workloads.app_memory", "--state", str(tmp_path / "state")]
    w = HeldMemory.start_command(cmd, tmp_path / "state", timeout_s=60)
    try:
        checkpoint(w.pid, tmp_path / "ckpt")
        pool = Pool("--hold", str(tmp_path / "ckpt"), "--hold-mib", "64", "--no-auto-hold")
        try:
            restored = restore(tmp_path / "ckpt", optimizer=OptimizerConfig(preload=True))
            assert not restored.notes, restored.notes
            assert w.verify(), (w.state_dir / "verified").read_text()
        finally:
            out = pool.stop()
        assert "0 failed; 1 sent from hot copies" in out
    finally:
        w.stop()
