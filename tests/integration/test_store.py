"""Issue 15's snapshot store on CPU: processes under the interception library (fake driver),
real criu dump and restore. Dedup and incremental checkpoints, bit-exact restores from the
store, gc under a concurrent checkpoint, a kill -9 in the middle of a checkpoint, a damaged
chunk refused with the process held, and the standalone export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from _snapshots import damage_chunk

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.checkpoint.manifest import JOURNAL_NAME, Manifest
from restoreprof.errors import RestoreprofError
from restoreprof.store.gc import gc
from restoreprof.store.layout import Store
from restoreprof.store.measure import measure
from restoreprof.store.table import chunk_path, read_table
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]
GPU_MIB = 48
CHUNK_MB = 4  # 12 chunks per process


@pytest.fixture
def store_dir(tmp_path):
    """A store with small chunks (its chunk size is fixed when it is made)."""
    Store.open(tmp_path / "store", create=True, chunk_mb=CHUNK_MB)
    return tmp_path / "store"


def _start(tmp_path, name: str, seed: int = 1234) -> HeldMemory:
    return HeldMemory.start(tmp_path / name, 16, gpu_mib=GPU_MIB, seed=seed, prefix=EXEC)


def _offload(result) -> dict:
    return result.manifest.processes[0].offload


def test_incremental_checkpoint_writes_nothing_again_and_restores_bit_exact(
        fake_driver, tmp_path, store_dir):
    w = _start(tmp_path, "a")
    try:
        first = checkpoint(w.pid, tmp_path / "c1", store=store_dir, leave_running=True)
        assert _offload(first)["bytes"] == GPU_MIB << 20
        assert _offload(first)["written_bytes"] == GPU_MIB << 20  # distinct chunks: all new
        assert w.verify()
        second = checkpoint(w.pid, tmp_path / "c2", store=store_dir)  # unchanged: incremental
        assert _offload(second)["written_bytes"] == 0
        store = Store.open(store_dir)
        report = measure(store)
        assert report["logical_bytes"] == 2 * (GPU_MIB << 20)
        assert report["stored_bytes"] == GPU_MIB << 20 and report["dedup_ratio"] == 2.0
        assert all(c["complete"] and not c["missing_chunks"] for c in report["checkpoints"])
        # the table names the store; its chunks are not in the checkpoint folder
        table = read_table(tmp_path / "c2" / _offload(second)["snapshot"])
        assert table.folder == store.chunks
        assert not any(p.is_dir() for p in (tmp_path / "c2").iterdir())
        assert store_dir.stat().st_mode & 0o777 == 0o700
        assert table.chunk_bytes == CHUNK_MB << 20
        restored = restore(tmp_path / "c2")
        assert not restored.notes
        assert w.verify(), "GPU memory differs after a restore from the store"
    finally:
        w.stop()


def test_two_replicas_share_their_chunks(fake_driver, tmp_path, store_dir):
    a, b = _start(tmp_path, "a"), _start(tmp_path, "b")  # same seed: the same "weights"
    try:
        checkpoint(a.pid, tmp_path / "ca", store=store_dir, leave_running=True)
        second = checkpoint(b.pid, tmp_path / "cb", store=store_dir, leave_running=True)
        assert _offload(second)["written_bytes"] == 0
        assert measure(Store.open(store_dir))["stored_bytes"] == GPU_MIB << 20
        assert a.verify() and b.verify()
    finally:
        a.stop()
        b.stop()


def test_gc_keeps_what_complete_checkpoints_name_and_waits_for_a_running_one(
        fake_driver, tmp_path, store_dir):
    a, b = _start(tmp_path, "a", seed=1), _start(tmp_path, "b", seed=2)
    try:
        checkpoint(a.pid, tmp_path / "ca", store=store_dir, leave_running=True)
        store = Store.open(store_dir)
        # a checkpoint holds the store shared from its first chunk to its manifest
        with store.locked(exclusive=False), pytest.raises(RestoreprofError, match="busy"):
            gc(store)
        # gc in a loop while b is checkpointed: never deletes a chunk b's checkpoint names
        stop, errors = threading.Event(), []

        def collect() -> None:
            while not stop.is_set():
                try:
                    gc(store, wait=True)
                except Exception as exc:
                    errors.append(exc)

        collector = threading.Thread(target=collect)
        collector.start()
        try:
            done = checkpoint(b.pid, tmp_path / "cb", store=store_dir)
        finally:
            stop.set()
            collector.join()
        assert not errors
        result = gc(store)
        assert result.deleted_chunks == 0 and result.kept_chunks == 2 * GPU_MIB // CHUNK_MB
        table = read_table(tmp_path / "cb" / _offload(done)["snapshot"])
        assert all(chunk_path(table.folder, h).exists() for h, _ in table.chunks())
        restore(tmp_path / "cb")
        assert b.verify()
        # once a checkpoint is gone (and its process), gc takes its chunks (those no other names)
        import shutil

        shutil.rmtree(tmp_path / "ca")
        assert gc(store).deleted_chunks == 0  # its process lives on: it may still need them
        a.stop()
        result = gc(store)
        assert result.deleted_chunks == GPU_MIB // CHUNK_MB and len(result.dropped_refs) == 1
    finally:
        a.stop()
        b.stop()


def test_kill_9_mid_checkpoint_leaves_no_complete_checkpoint_and_a_clean_store(
        fake_driver, tmp_path, store_dir):
    w = _start(tmp_path, "a")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "restoreprof", "checkpoint", "-p",
                                 str(w.pid), "-D", str(tmp_path / "c"), "--store", str(store_dir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        refs = store_dir / "refs"
        while time.monotonic() < deadline and not (refs.is_dir() and any(refs.glob("*.json"))):
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)  # killed after its write-ahead reference
        proc.wait()
        assert not (tmp_path / "c" / "restoreprof.json").exists(), "the kill came too late"
        with pytest.raises(RestoreprofError,
                           match=r"not a restoreprof checkpoint|holds an interrupted checkpoint"):
            Manifest.load(tmp_path / "c")
        store = Store.open(store_dir)
        assert not any(c["complete"] for c in measure(store)["checkpoints"])
        # the process may have been offloaded: while it lives, gc keeps its chunks
        kept = gc(store)
        assert kept.held_refs and kept.deleted_chunks == 0
        # the checkpoint's guardian puts the process back and clears the folder
        journal = tmp_path / "c" / JOURNAL_NAME
        for _ in range(600):
            if not journal.exists():
                break
            time.sleep(0.05)
        assert not journal.exists(), "the guardian did not finish"
        from restoreprof.optimizer.control import ShimControl

        assert ShimControl(w.pid).status()["state"] == "running"
        assert w.verify()
        assert not list((tmp_path / "c").iterdir()), "a put-back checkpoint leaves nothing"
        w.stop()
        result = gc(store)  # its process gone: the incomplete checkpoint's chunks go
        assert result.dropped_refs and not list(store.chunk_files())
        assert not list(store.temporary_files())
    finally:
        w.stop()


def test_a_damaged_chunk_in_the_store_refuses_the_restore_and_holds_the_process(
        fake_driver, tmp_path, store_dir):
    w = _start(tmp_path, "a")
    try:
        result = checkpoint(w.pid, tmp_path / "c", store=store_dir)
        damaged = damage_chunk(tmp_path / "c" / _offload(result)["snapshot"], index=2)
        from restoreprof.store.verify import verify

        assert verify(Store.open(store_dir)).damaged == [damaged.name]  # found ahead, too
        with pytest.raises(RestoreprofError, match="reload failed") as err:
            restore(tmp_path / "c")
        assert "a chunk is damaged or missing" in str(err.value)
        assert "--gpu-only" in str(err.value)
        assert w.alive(), "a damaged chunk must leave the process alive and held"
        from restoreprof.optimizer.control import ShimControl

        assert ShimControl(w.pid).status()["gate"] == "closed"
    finally:
        w.stop()


def test_export_is_standalone_and_restores(fake_driver, tmp_path, store_dir, restoreprof_cli):
    w = _start(tmp_path, "a")
    try:
        out = restoreprof_cli("checkpoint", "-p", str(w.pid), "-D", str(tmp_path / "c"),
                              "--store", str(store_dir), "--sync", "--export",
                              str(tmp_path / "x"), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["export"]["chunk_bytes"] == GPU_MIB << 20
        import shutil

        shutil.rmtree(store_dir)  # the export needs nothing of the store
        shutil.rmtree(tmp_path / "c")
        manifest = Manifest.load(tmp_path / "x")
        assert "store" not in manifest.processes[0].offload
        restore(tmp_path / "x")
        assert w.verify()
    finally:
        w.stop()


def test_store_command_measures_and_refuses_an_open_store(fake_driver, tmp_path, store_dir,
                                                          restoreprof_cli):
    w = _start(tmp_path, "a")
    try:
        checkpoint(w.pid, tmp_path / "c", store=store_dir, leave_running=True)
    finally:
        w.stop()
    out = restoreprof_cli("store", "--store", str(store_dir), "measure", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["stored_bytes"] == GPU_MIB << 20 and len(report["checkpoints"]) == 1
    os.chmod(store_dir, 0o755)
    out = restoreprof_cli("store", "--store", str(store_dir), "list")
    assert out.returncode != 0 and "open to others" in out.stderr and "chmod 700" in out.stderr
