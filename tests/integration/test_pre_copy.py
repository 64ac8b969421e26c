"""checkpoint --pre-copy on the fake driver through real CRIU: the GPU memory's chunks are written
while the process runs on, so the checkpoint's offload, with the process held, writes only what
changed since; restores stay bit-exact, memory changed between the pre-copy and the stop is
caught, and a program that frees memory while the library reads it waits instead of having
freed memory read (the layout gate)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from restoreprof.checkpoint import checkpoint, gpu, restore
from restoreprof.checkpoint.api import PRE_COPY_STEP, WRITE_BACK_STEP
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.shim.build import build_library
from restoreprof.store.layout import Store
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]
GPU_MIB = 48
CHUNK_MB = 4


def _start(tmp_path, name: str = "w") -> HeldMemory:
    return HeldMemory.start(tmp_path / name, 16, gpu_mib=GPU_MIB, prefix=EXEC)


@pytest.mark.parametrize("with_store", [True, False], ids=["store", "own-folder"])
def test_the_stop_writes_nothing_the_pre_copy_wrote_and_restores_bit_exact(
        fake_driver, tmp_path, with_store):
    store = tmp_path / "store" if with_store else None
    if store:
        Store.open(store, create=True, chunk_mb=CHUNK_MB)
    w = _start(tmp_path)
    try:
        result = checkpoint(w.pid, tmp_path / "c", store=store, pre_copy=True,
                            optimizer=OptimizerConfig(chunk_mb=CHUNK_MB))
        offload = result.manifest.processes[0].offload
        assert offload["pre_copy"]["bytes"] == GPU_MIB << 20
        assert offload["pre_copy"]["written_bytes"] == GPU_MIB << 20  # all new
        assert offload["bytes"] == GPU_MIB << 20 and offload["written_bytes"] == 0
        names = [s.name for s in result.steps]
        assert names.index(PRE_COPY_STEP) < names.index(WRITE_BACK_STEP) < names.index(
            "offload GPU memory")
        # the downtime starts at the offload: the pre-copy is not in it
        offload_step = result.steps[names.index("offload GPU memory")]
        assert result.downtime_s == pytest.approx(
            (result.steps[-1].end_ns - offload_step.start_ns) / 1e9, abs=1e-3)
        restored = restore(tmp_path / "c")
        assert not restored.notes
        assert w.verify(), "GPU memory differs after restoring a pre-copied checkpoint"
    finally:
        w.stop()


def test_memory_changed_after_the_pre_copy_is_what_the_checkpoint_holds(
        fake_driver, tmp_path, monkeypatch):
    store = tmp_path / "store"
    Store.open(store, create=True, chunk_mb=CHUNK_MB)
    w = _start(tmp_path)
    write_back = gpu.write_back

    def then_the_program_writes(records):  # between the pre-copy and the stop
        write_back(records)
        w.overwrite_gpu_memory()

    monkeypatch.setattr(gpu, "write_back", then_the_program_writes)
    try:
        result = checkpoint(w.pid, tmp_path / "c", store=store, pre_copy=True)
        offload = result.manifest.processes[0].offload
        # the first half changed: those chunks are written at the stop, the rest is not
        assert offload["written_bytes"] == (GPU_MIB << 20) // 2
        restore(tmp_path / "c")
        assert w.verify(), "the restore must hold the memory as it was at the stop"
    finally:
        w.stop()


def test_a_free_while_the_library_pre_copies_waits_for_it(fake_libcuda, tmp_path, monkeypatch):
    """The program frees and unmaps everything (app VMM, stream-ordered blocks, a pool it
    destroys) while PRECOPY reads its memory with slow copies: the frees wait for the copy
    (the library never reads memory given back), the program ends its teardown unharmed, and
    the pre-copy completes."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(run_dir))
    state = tmp_path / "state"
    env = {"LD_PRELOAD": str(build_library()), "RESTOREPROF_REAL_LIBCUDA": str(fake_libcuda),
           "LD_LIBRARY_PATH": str(fake_libcuda.parent), "RESTOREPROF_RUN_DIR": str(run_dir),
           "FAKECUDA_COPY_DELAY_US": "150000"}  # 0.15 s per copy, one thread: over a second
    w = HeldMemory.start_command([sys.executable, "-m", "restoreprof.workloads.app_memory",
                                  "--state", str(state)], state, env=env, timeout_s=60)
    try:
        outcome: dict = {}

        def precopy():
            start = time.monotonic()
            outcome["result"] = ShimControl(w.pid).precopy(
                tmp_path / "chunks", OptimizerConfig(threads=1, streams=1, chunk_mb=1))
            outcome["ended"] = time.monotonic() - start

        thread = threading.Thread(target=precopy)
        started = time.monotonic()
        thread.start()
        time.sleep(0.3)  # the copies are under way
        os.kill(w.pid, signal.SIGUSR2)  # teardown: unmap, release, free, destroy the pool
        done = state / "teardown"
        while not done.exists() and time.monotonic() - started < 60:
            time.sleep(0.01)
        torn_down = time.monotonic() - started
        thread.join(60)
        assert done.read_text().strip() == "OK"
        assert outcome["result"]["bytes"] > 0 and outcome["result"]["written"] > 0
        assert outcome["ended"] > 1.0, "the copies were meant to be slow"
        assert torn_down >= outcome["ended"] - 0.05, (
            "the program's frees went through while the library was reading its memory")
        assert os.path.exists(f"/proc/{w.pid}")
    finally:
        w.stop()


def test_kill_9_during_the_pre_copy_leaves_the_process_running_and_nothing_behind(
        fake_driver, tmp_path):
    """The command dies while the library pre-copies (slow fake copies, one thread): its
    guardian clears the folder, the process runs on unharmed, and a new checkpoint of it
    restores bit-exact."""
    from restoreprof.checkpoint.manifest import JOURNAL_NAME, MANIFEST_NAME

    w = HeldMemory.start(tmp_path / "w", 16, gpu_mib=GPU_MIB, prefix=EXEC,
                         env={"FAKECUDA_COPY_DELAY_US": "150000"})
    images = tmp_path / "c"
    cmd = subprocess.Popen([sys.executable, "-m", "restoreprof", "checkpoint", "-p", str(w.pid),
                            "-D", str(images), "--pre-copy", "--threads", "1", "--chunk-mb", "4"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        chunks = images / f"{gpu.snapshot_name(w.pid)}.chunks"
        deadline = time.monotonic() + 60
        while not (chunks.is_dir() and any(chunks.rglob("*"))):
            assert time.monotonic() < deadline and cmd.poll() is None, "no pre-copy under way"
            time.sleep(0.01)
        cmd.kill()
        cmd.wait()
        deadline = time.monotonic() + 60
        while (images / JOURNAL_NAME).exists():
            assert time.monotonic() < deadline, "the guardian did not settle the checkpoint"
            time.sleep(0.05)
        assert not (images / MANIFEST_NAME).exists()
        assert not any(images.iterdir()), "the interrupted checkpoint left files behind"
        assert w.alive() and w.verify(), "the process must run on with its memory intact"
        images.rmdir()
        checkpoint(w.pid, images)
        restore(images)
        assert w.verify()
    finally:
        w.stop()


def test_a_failed_write_back_fails_the_checkpoint_and_the_process_runs_on(
        fake_driver, tmp_path, monkeypatch):
    """syncfs reporting a write error (EIO, as a failing disk does) after the pre-copy: the
    checkpoint fails with the reason before it holds the process, leaves no manifest, and the
    process runs on with its memory intact."""
    import ctypes
    import errno

    from restoreprof.checkpoint.manifest import MANIFEST_NAME
    from restoreprof.errors import RestoreprofError

    class FailingLibc:
        def syncfs(self, fd: int) -> int:
            ctypes.set_errno(errno.EIO)
            return -1

    monkeypatch.setattr(gpu, "_libc", FailingLibc)
    w = _start(tmp_path)
    try:
        with pytest.raises(RestoreprofError, match="back to disk failed: Input/output error"):
            checkpoint(w.pid, tmp_path / "c", pre_copy=True)
        assert not (tmp_path / "c" / MANIFEST_NAME).exists()
        folder = tmp_path / "c"
        assert not folder.exists() or not any(folder.iterdir()), "the pre-copied chunks stayed"
        assert w.alive() and w.verify(), "the process must run on with its memory intact"
    finally:
        w.stop()


def test_precopy_refuses_a_relative_folder_and_offloaded_memory(fake_driver, tmp_path):
    """The library's own refusals, as a client that skips ShimControl.precopy would meet them:
    a chunk folder it cannot place (relative), and memory that is not there (offloaded)."""
    from restoreprof.errors import RestoreprofError

    w = _start(tmp_path)
    ctl = ShimControl(w.pid)
    try:
        with pytest.raises(RestoreprofError, match="absolute chunk folder"):
            ctl.request("PRECOPY chunks 1 1 1 1 0")
        ctl.offload(tmp_path / "gpu.snap")
        with pytest.raises(RestoreprofError, match="offloaded: nothing to pre-copy"):
            ctl.precopy(tmp_path / "chunks")
        ctl.reload(tmp_path / "gpu.snap")
        assert w.verify()
    finally:
        w.stop()
