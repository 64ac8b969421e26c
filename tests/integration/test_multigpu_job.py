"""A job of one process per GPU (issue 20), on CPU: two holders in one process tree, each under
`restoreprof exec` with distinctive memory on its own fake GPU, checkpointed and restored
together through real CRIU, bit-exact; then restored with --gpu-map swapping the two GPUs, where
each process's memory must come back on its new GPU (the driver attribute, which the fake
answers from the physical memory actually mapped there). The real-GPU run needs a 2-GPU kind."""

from __future__ import annotations

import sys

import pytest

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.checkpoint.gpu import PRELOAD_STEP
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root


@pytest.fixture
def two_gpus(fake_driver, monkeypatch):
    monkeypatch.setenv("FAKECUDA_DEVICES", "2")
    # fake_driver's one driver state for every process (the restore and the job), as a real
    # driver's is: the fake hands a restore's GPU map to the restored process through it
    return fake_driver


def _job(tmp_path) -> HeldMemory:
    exec_prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    return HeldMemory.start(tmp_path / "state", 8, gpu_mib=24, prefix=exec_prefix, children=2,
                            gpu_per_child=True)


def _checked(ranks: list[HeldMemory]) -> list[int | None]:
    for rank in ranks:
        assert rank.verify(), f"rank PID {rank.pid}: its memory differs from what it held"
    return [rank.gpu_device() for rank in ranks]


@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "reloaded"])
@pytest.mark.parametrize("gpu_map,devices", [(None, [0, 1]), ({"0": "1", "1": "0"}, [1, 0])],
                         ids=["same GPUs", "GPUs swapped"])
def test_two_rank_job_restored_together(two_gpus, tmp_path, gpu_map, devices, preload):
    job = _job(tmp_path)
    ranks = job.children()
    try:
        assert _checked(ranks) == [0, 1]
        result = checkpoint(job.pid, tmp_path / "ckpt")
        offloaded = {p.pid: p.offload["bytes"] for p in result.manifest.processes
                     if p.offload and p.offload.get("bytes")}
        assert offloaded == {r.pid: 24 << 20 for r in ranks}  # each rank's, on its own GPU
        assert not any(r.alive() for r in ranks)
        restored = restore(tmp_path / "ckpt", gpu_map=gpu_map,
                           optimizer=OptimizerConfig(preload=preload))
        assert restored.root_pid == job.pid and not restored.notes  # no fallback taken
        steps = [s.name for s in restored.steps]
        # a restore onto other GPUs does not preload yet (the preload would be on the old GPUs):
        # each rank reloads, on its new GPU
        preloaded = preload and gpu_map is None
        assert steps.count("GPU memory adopt" if preloaded else "GPU memory reload") >= 2, steps
        assert (PRELOAD_STEP in steps) == preloaded
        assert _checked(ranks) == devices
        # the restored job, its parent included (it holds no GPU memory), can be checkpointed again
        checkpoint(job.pid, tmp_path / "again", leave_running=True)
        assert _checked(ranks) == devices
    finally:
        job.stop()  # it ends its ranks (stopping one alone would wait on its parent to reap it)
