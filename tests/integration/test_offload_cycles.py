"""Issue 8: many consecutive checkpoint/restore cycles of an offloading process, each verified
bit-exact, with no growth in host or GPU memory. Runs on CI through the fake driver (real CRIU,
real interception library) and on a real GPU (tests marked gpu)."""

from __future__ import annotations

import shutil
import sys

import pytest

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.workloads.controller import HeldMemory

EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]
MIB = 1 << 20


def _gpu_used_bytes() -> int:
    from restoreprof.system.gpus import nvml_gpus

    gpus = nvml_gpus()  # none with the fake driver: host memory is what is measured
    return gpus[0]["memory_used_bytes"] if gpus else 0


@pytest.mark.parametrize("backend,gpu_mib", [
    pytest.param("fake", 32, marks=pytest.mark.root),
    pytest.param("gpu", 1024, marks=pytest.mark.gpu),
])
def test_twenty_cycles_bit_exact_without_growth(backend, gpu_mib, tmp_path, request):
    if backend == "fake":
        request.getfixturevalue("fake_driver")
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=gpu_mib, prefix=EXEC)
    rss, gpu = [], []
    try:
        for cycle in range(20):
            images = tmp_path / f"ckpt{cycle}"
            result = checkpoint(w.pid, images)
            assert result.manifest.processes[0].offload, "memory was not offloaded"
            restored = restore(images)
            assert "GPU memory adopt" in [s.name for s in restored.steps] and not restored.notes
            assert w.verify(), f"cycle {cycle}: data differs after restore"
            rss.append(w.rss_bytes())
            gpu.append(_gpu_used_bytes())
            shutil.rmtree(images)
    finally:
        w.stop()
    # The first cycles may settle (pools, lazily loaded code); after that, nothing may grow.
    assert max(rss[2:]) - rss[2] < 32 * MIB, f"host memory grew: {[r // MIB for r in rss]} MiB"
    assert max(gpu[2:]) - gpu[2] < 64 * MIB, f"GPU memory grew: {[g // MIB for g in gpu]} MiB"


@pytest.mark.gpu
def test_pytorch_model_outputs_equal_after_offloaded_restore(tmp_path):
    pytest.importorskip("torch")
    cmd = [*EXEC, sys.executable, "-m", "restoreprof.workloads.torch_model", "--gib", "2",
           "--state", str(tmp_path / "state")]
    model = HeldMemory.start_command(cmd, tmp_path / "state")
    try:
        result = checkpoint(model.pid, tmp_path / "ckpt")
        assert result.manifest.processes[0].offload["bytes"] >= 2 * 1024 * MIB * 0.9
        restored = restore(tmp_path / "ckpt")
        # preloaded while CRIU ran and adopted by the process, with no fallback to a reload
        assert "GPU memory adopt" in [s.name for s in restored.steps] and not restored.notes
        assert model.verify(), "the model's outputs or weights differ after the restore"
    finally:
        model.stop()
