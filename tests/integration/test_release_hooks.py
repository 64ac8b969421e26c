"""Issue 13, only live bytes: under `restoreprof exec` a Python program's cached free GPU blocks
are freed before the offload, so they are not saved. A real Python program under the
interception library and the fake driver; its cache is freed through real driver calls by a
hook it registers itself (the C entry point) or by restoreprof's own start-up hook; checked
through real CRIU, with the live bytes bit-exact after the restore. The real PyTorch path runs
on the GPU (benchmarks/bench_frameworks.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl, _parse_ok_numbers
from restoreprof.store.table import chunk_path, read_table
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

APP = Path(__file__).parents[1] / "programs" / "release_hook_app.py"
MIB = 1 << 20
LIVE = 3 * MIB + 5 * MIB + 11          # release_hook_app.LIVE_BYTES
CACHED_RESERVED = 4 * MIB + 6 * MIB    # its cached blocks, at the 2 MiB granularity
ALL = LIVE + 4 * MIB + 6 * MIB


def start(tmp_path: Path, hook: str, *exec_flags: str, hold_gil: bool = False,
          segment: str | None = None) -> HeldMemory:
    cmd = [sys.executable, "-m", "restoreprof", "exec", *exec_flags, "--", sys.executable,
           str(APP), "--state", str(tmp_path / "state"), "--hook", hook]
    cmd += ["--hold-gil"] if hold_gil else []
    cmd += ["--segment", segment] if segment else []
    return HeldMemory.start_command(cmd, tmp_path / "state", timeout_s=60)


@pytest.mark.parametrize("hook", ["own", "torch"])
def test_freed_cache_is_not_saved_and_live_bytes_come_back(fake_driver, tmp_path, hook):
    w = start(tmp_path, hook)
    try:
        stats = json.loads((tmp_path / "state" / "stats.json").read_text())
        assert stats["startup_hook_loaded"], "restoreprof exec must load the start-up hook"
        result = checkpoint(w.pid, tmp_path / "ckpt")
        record = result.manifest.processes[0]
        assert record.offload["bytes"] == LIVE, "only the live bytes are saved"
        snapshot = tmp_path / "ckpt" / record.offload["snapshot"]
        assert snapshot.stat().st_size < LIVE + 64 * 1024 < ALL
        assert record.offload["release"] == "ok"
        assert record.offload["released_bytes"] == CACHED_RESERVED
        assert record.offload["reserved_bytes"] == 2 * CACHED_RESERVED  # before the release
        coverage = record.coverage
        assert coverage["offloaded"] == {"cuMemAlloc": {"count": 2, "bytes": 4 * MIB + 6 * MIB}}
        assert coverage["saved_bytes"] == LIVE and coverage["release"] == "ok"
        assert coverage["left_to_driver_bytes"] is None  # no NVML on the fake driver
        restored = restore(tmp_path / "ckpt")
        assert not restored.notes
        assert w.verify(), "the live bytes differ after offload, criu dump/restore and reload"
    finally:
        w.stop()


def test_checkpoint_prints_the_coverage(fake_driver, tmp_path):
    w = start(tmp_path, "torch")
    try:
        out = subprocess.run([sys.executable, "-m", "restoreprof", "checkpoint", "-p", str(w.pid),
                              "-D", str(tmp_path / "ckpt"), "--leave-running"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert f"GPU memory of PID {w.pid}" in text
        assert "offloaded       cuMemAlloc" in text and "2 allocations" in text
        assert "left to driver" in text and "unknown (no NVML here)" in text
        assert "saved           0.01 GB of 0.02 GB reserved" in text
        assert "freed first     0.01 GB of cached blocks (release hook: ok)" in text
        coverage = text[text.index("GPU memory of PID"):text.index("images:")]
        assert max(len(line) for line in coverage.splitlines()) <= 80
        assert w.verify(), "--leave-running: the process runs on with its live bytes"
    finally:
        w.stop()


def test_switched_off_the_cache_is_saved(fake_driver, tmp_path):
    """Off at exec (no start-up hook: nothing frees the cache) or at checkpoint (the hooks are
    not run): either way the cached blocks are saved with the rest, and nothing is lost."""
    w = start(tmp_path, "torch", "--no-release-caches")
    try:
        assert not json.loads((tmp_path / "state" / "stats.json").read_text())[
            "startup_hook_loaded"]
        ctl = ShimControl(w.pid)
        result = ctl.offload(tmp_path / "snap")
        assert result["release"] == "none" and result["bytes"] == ALL
        ctl.reload(tmp_path / "snap")
        assert w.verify()
    finally:
        w.stop()
    w = start(tmp_path, "own")
    try:
        ctl = ShimControl(w.pid)
        result = ctl.offload(tmp_path / "snap", OptimizerConfig(release_caches=False))
        assert result["release"] == "off" and result["bytes"] == ALL
        ctl.reload(tmp_path / "snap")
        assert w.verify()
    finally:
        w.stop()


def test_a_program_holding_the_gil_does_not_hang_the_offload(fake_driver, tmp_path):
    w = start(tmp_path, "torch", "--release-timeout-s", "1", hold_gil=True)
    try:
        time.sleep(0.6)  # the program's thread holds the GIL from 0.3 s after ready
        ctl = ShimControl(w.pid)
        start_s = time.monotonic()
        # no settings in the request: the process's own (exec's --release-timeout-s 1)
        result = _parse_ok_numbers(ctl.request(f"OFFLOAD {tmp_path / 'snap'}"))
        assert result["release"] == "timeout" and 1.0 <= result["release_seconds"] < 2.0
        assert time.monotonic() - start_s < 5
        assert result["bytes"] == ALL, "without the hook the cached blocks are saved too"
        again = ctl.reload(tmp_path / "snap")
        assert again["bytes"] == ALL
        # the earlier run is still waiting for the GIL: none piles up behind it
        quick = OptimizerConfig(release_timeout_s=1)
        assert ctl.offload(tmp_path / "snap2", quick)["release"] == "busy"
        ctl.reload(tmp_path / "snap2")
        assert ctl.status()["state"] == "running"
    finally:
        os.kill(w.pid, signal.SIGKILL)  # its Python can never run again to handle SIGTERM


def test_coverage_names_each_kind_the_library_served(fake_driver, tmp_path):
    """The application's own VMM memory and its stream-ordered allocations (app_memory: 4
    physical allocations of 7 x 2 MiB in all; 2 live stream-ordered ones) are offloaded and
    reported as their own kinds, in the manifest and in the printed lines."""
    from restoreprof.checkpoint.gpu import coverage_summary

    cmd = [sys.executable, "-m", "restoreprof", "exec", "--", sys.executable, "-m",
           "restoreprof.workloads.app_memory", "--state", str(tmp_path / "state")]
    w = HeldMemory.start_command(cmd, tmp_path / "state", timeout_s=60)
    try:
        result = checkpoint(w.pid, tmp_path / "ckpt")
        offloaded = result.manifest.processes[0].coverage["offloaded"]
        assert set(offloaded) == {"vmm", "async"}
        assert offloaded["vmm"] == {"count": 4, "bytes": 7 * 2 * MIB}
        assert offloaded["async"]["count"] == 2
        text = "\n".join(coverage_summary(result.manifest.processes))
        assert "offloaded       app VMM             4 allocations" in text
        assert "offloaded       stream-ordered      2 allocations" in text
        restore(tmp_path / "ckpt")
        assert w.verify()
    finally:
        w.stop()


SEGMENT = 16 * MIB  # release_hook_app's --segment: free block at [3, 11) MiB


def test_free_blocks_inside_a_segment_are_saved_as_zeros(fake_driver, tmp_path):
    """A block the allocator reports free inside a segment that also holds live tensors: the
    2 MiB chunks wholly inside it ([4, 10) MiB of [3, 11)) are not copied but saved as zeros,
    one chunk by content; the live bytes around it come back bit-exact through real CRIU."""
    w = start(tmp_path, "torch", segment="used")
    try:
        pointer = json.loads((tmp_path / "state" / "stats.json").read_text())["segment"]
        result = checkpoint(w.pid, tmp_path / "ckpt")
        record = result.manifest.processes[0]
        offload = record.offload
        assert offload["free_blocks"] == "used"
        assert offload["bytes"] == LIVE + SEGMENT
        assert offload["free_bytes"] == 6 * MIB
        assert record.coverage["saved_bytes"] == LIVE + SEGMENT - 6 * MIB
        assert record.coverage["free_bytes"] == 6 * MIB
        table = read_table(tmp_path / "ckpt" / offload["snapshot"])
        (names,) = [r.hashes for r in table.records if r.address == pointer]
        assert names[2] == names[3] == names[4] and len(set(names)) == 6
        assert chunk_path(table.folder, names[2]).read_bytes() == bytes(2 * MIB)
        # the zero chunk written once (threads putting it at once: one wins, the rest reuse it)
        assert offload["written_bytes"] == LIVE + SEGMENT - 4 * MIB
        restore(tmp_path / "ckpt")
        assert w.verify(), "the live bytes around the free block differ after the restore"
    finally:
        w.stop()


def test_free_blocks_read_before_a_gpu_call_are_not_trusted(fake_driver, tmp_path):
    """The allocator's view is stale once any call passed the gate after it was read (here a
    copy into the reported block, as a thread allocating and writing it would make): the
    offload copies every byte, and what was written comes back."""
    w = start(tmp_path, "torch", segment="stale")
    try:
        result = checkpoint(w.pid, tmp_path / "ckpt")
        offload = result.manifest.processes[0].offload
        assert offload["free_blocks"] == "stale" and offload["free_bytes"] == 0
        assert offload["bytes"] == LIVE + SEGMENT
        restore(tmp_path / "ckpt")
        assert w.verify(), "the block written after the allocator was read was lost"
    finally:
        w.stop()
