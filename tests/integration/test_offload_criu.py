"""Issue 8's whole path on CPU: a process under the interception library, its "GPU" memory (the
fake driver's) offloaded through the control socket, a real criu dump and restore, the reload,
and the data checked bit-exact by the process itself. The real-GPU run is tests/gpu."""

from __future__ import annotations

import sys

import pytest
from _snapshots import checkpoint_with_damaged_snapshot

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.checkpoint.gpu import PRELOAD_STEP
from restoreprof.checkpoint.manifest import Manifest
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.store.table import chunk_path, read_table
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root


@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "reloaded"])
def test_offloaded_round_trip_through_criu(fake_driver, tmp_path, preload):
    exec_prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=48, prefix=exec_prefix)
    try:
        result = checkpoint(w.pid, tmp_path / "ckpt")
        record = result.manifest.processes[0]
        assert record.cuda and record.offload["bytes"] == 48 << 20
        snapshot = tmp_path / "ckpt" / record.offload["snapshot"]
        table = read_table(snapshot)  # a table; the bytes are chunks in the folder beside it
        assert sum(n for _, n in table.chunks()) == 48 << 20
        assert all(chunk_path(table.folder, h).stat().st_size == n for h, n in table.chunks())
        # the GPU memory is in the snapshot, not in CRIU's page images
        pages = sum(i["bytes"] for i in result.manifest.images if i["name"].startswith("pages-"))
        assert pages < (48 << 20) + (200 << 20)
        restored = restore(tmp_path / "ckpt", optimizer=OptimizerConfig(preload=preload))
        steps = {s.name: s for s in restored.steps}
        assert not restored.notes  # no fallback taken
        if preload:  # loaded while CRIU ran, adopted after the driver's restore
            assert steps[PRELOAD_STEP].start_ns < steps["criu restore"].end_ns
            assert steps["criu restore"].end_ns <= steps["GPU memory adopt"].start_ns
            assert "GPU memory reload" not in steps
        else:
            assert steps["criu restore"].end_ns <= steps["GPU memory reload"].start_ns
            assert PRELOAD_STEP not in steps
        assert w.verify(), "GPU memory differs after offload, criu dump/restore and reload"
        assert Manifest.load(tmp_path / "ckpt").processes[0].comm.startswith("python")
    finally:
        w.stop()


def test_preloads_one_after_another_in_one_process(fake_driver, tmp_path):
    """Each preload holds the primary context of restoreprof's own process while its memory is
    loaded and exported; when the last item is released the driver destroys that context, and
    its pinned staging buffers with it. The next preload gets a new context, which the driver
    may give the same handle value (the fake does, as the driver did on the H200): the engine
    must make its staging pool anew, not read into the buffers that went with the old one
    (it did, and every chunk read failed with EFAULT, silently falling back to the reload)."""
    exec_prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=40, prefix=exec_prefix)
    try:
        for round_ in range(3):
            checkpoint(w.pid, tmp_path / f"ckpt{round_}")
            restored = restore(tmp_path / f"ckpt{round_}", optimizer=OptimizerConfig(preload=True))
            assert not restored.notes, f"round {round_}: fell back: {restored.notes}"
            steps = {s.name for s in restored.steps}
            assert "GPU memory adopt" in steps and "GPU memory reload" not in steps
            assert w.verify(), f"round {round_}: GPU memory differs"
    finally:
        w.stop()


def test_damaged_snapshot_keeps_process_held(fake_driver, tmp_path):
    exec_prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=8, prefix=exec_prefix)
    try:
        checkpoint_with_damaged_snapshot(w.pid, tmp_path / "ckpt")
        from restoreprof.errors import RestoreprofError

        with pytest.raises(RestoreprofError, match="reload failed") as err:
            restore(tmp_path / "ckpt")
        assert "--gpu-only" in str(err.value)
        assert w.alive(), "a failed reload must leave the process alive and held"
    finally:
        w.stop()


def test_a_process_already_locked_is_refused_untouched(fake_driver, tmp_path):
    import ctypes

    from restoreprof.cuda import driver

    ctypes.CDLL(str(fake_driver), mode=ctypes.RTLD_GLOBAL)  # this process's driver: the fake
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=8)
    try:
        driver.init()
        driver.process_lock(w.pid, 1000)  # as another checkpoint in progress would
        from restoreprof.errors import RestoreprofError

        with pytest.raises(RestoreprofError, match="already locked") as err:
            checkpoint(w.pid, tmp_path / "ckpt")
        assert "--gpu-only" in err.value.hint
        assert not (tmp_path / "ckpt").exists(), "nothing may be written for a refused checkpoint"
        driver.process_unlock(w.pid)
        assert w.alive() and w.verify()
    finally:
        w.stop()
