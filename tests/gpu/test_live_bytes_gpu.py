"""Issue 13 on a real GPU: a PyTorch program with allocator slack, under `restoreprof exec`, is
checkpointed with only its live bytes (at most 1.05x torch.cuda.memory_allocated()), restored
through CRIU with the same outputs, and the checkpoint records what the driver was left. The
Llama-shaped program's slack is mostly free blocks inside segments that hold weights (its fp32
temporaries): they are saved as zeros, and the outputs still match."""

from __future__ import annotations

import json
import sys

import pytest

from restoreprof.workloads.controller import HeldMemory

pytestmark = [pytest.mark.gpu, pytest.mark.root]


@pytest.mark.parametrize("program", ["torch", "torch-graph", "torch-llama"])
def test_pytorch_cached_blocks_are_not_saved(tmp_path, program):
    pytest.importorskip("torch")
    from restoreprof.checkpoint import checkpoint, restore

    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable, "-m",
           "restoreprof.workloads.frameworks", "--program", program, "--gib", "4",
           "--slack-gib", "1", "--state", str(tmp_path / "state")]
    w = HeldMemory.start_command(cmd, tmp_path / "state", timeout_s=240)
    try:
        stats = json.loads((tmp_path / "state" / "stats.json").read_text())
        # 1 GiB asked, in whole blocks: the H200 run kept 0.97 GiB cached
        slack = stats["reserved_bytes"] - stats["allocated_bytes"]
        assert slack >= 0.9 * (1 << 30), "no slack made"
        result = checkpoint(w.pid, tmp_path / "ckpt")
        record = result.manifest.processes[0]
        assert record.offload["release"] == "ok"
        # empty_cache() frees whole free segments (0.81 of 0.97 GiB on the H200 at 1 GiB of
        # weights); free blocks that share a segment with live tensors are saved as zeros
        # (most of the Llama-shaped program's slack: 2.1 of its 4.1 GB were freed)
        assert record.offload["released_bytes"] + record.offload["free_bytes"] >= 0.75 * slack
        # blocks freed inside segments that hold live tensors (the Llama-shaped program's fp32
        # temporaries) are saved as zeros: not the program's data
        saved = record.offload["bytes"] - record.offload["free_bytes"]
        assert saved == record.coverage["saved_bytes"]
        assert saved <= 1.05 * stats["allocated_bytes"], (
            f"saved {saved} for {stats['allocated_bytes']} allocated "
            f"(free blocks: {record.offload['free_blocks']})")
        if program == "torch-llama":
            assert record.offload["free_blocks"] == "used" and record.offload["free_bytes"] > 0
        coverage = record.coverage
        assert coverage["offloaded"]["cuMemAlloc"]["bytes"] >= stats["weights_bytes"]
        left = coverage["left_to_driver_bytes"]
        assert left is None or left < 1 << 30, "only the context should be left to the driver"
        restore(tmp_path / "ckpt")
        assert w.verify(), "outputs differ after the restore"
    finally:
        w.stop()
