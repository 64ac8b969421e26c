"""restoreprof's CRIU plugin under a real `criu dump` / `criu restore`, with the fake libcuda:
the fast path comes back bit-exact, bad CRIU_CUDA_* values fail the run with the reason in
CRIU's log, and each failure falls back to the driver's plain path or fails cleanly with the
process running on. The real-GPU comparison is benchmarks/bench_criu_plugin.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from restoreprof.criu_plugin import build_plugin, plugin_dir
from restoreprof.system.paths import criu_path
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]
GPU_MIB = 24


@pytest.fixture(scope="module")
def plugin() -> Path:
    build_plugin()
    return plugin_dir()


def criu(action: str, *args: str, lib: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([criu_path(), action, *args, "-v4", "--lib", str(lib)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                          env={**os.environ, **(env or {})})


def dump(w: HeldMemory, ckpt: Path, lib: Path, *extra: str, env: dict | None = None):
    ckpt.mkdir(exist_ok=True)
    result = criu("dump", "-t", str(w.pid), "-D", str(ckpt), "-o", "dump.log", *extra, lib=lib,
                  env=env)
    return result, (ckpt / "dump.log").read_text(errors="replace")


def restore(ckpt: Path, log: Path, lib: Path, env: dict | None = None):
    result = criu("restore", "-D", str(ckpt), "-o", str(log), "-d", lib=lib, env=env)
    return result, log.read_text(errors="replace")


def wait_gone(pid: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def plugin_lines(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "restoreprof" in line)


def test_dump_restore_with_the_plugin_is_bit_exact(fake_driver, plugin, tmp_path):
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=GPU_MIB, prefix=EXEC)
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin)
        assert result.returncode == 0, plugin_lines(log) or result.stderr
        assert f"offloaded {GPU_MIB << 20} bytes" in log
        assert "locked and checkpointed" in log
        # the snapshot and the plugin's record sit beside CRIU's images (an export carries them)
        snapshot = tmp_path / "ckpt" / f"gpu-{w.pid}.snap"
        assert snapshot.stat().st_size >= GPU_MIB << 20
        record = (tmp_path / "ckpt" / "restoreprof-criu.txt").read_text().splitlines()
        assert record[0] == f"libcuda {fake_driver}"
        assert record[1].split() == [str(w.pid), snapshot.name, str(GPU_MIB << 20)]
        pages = sum(p.stat().st_size for p in (tmp_path / "ckpt").glob("pages-*.img"))
        assert pages < (16 + GPU_MIB) << 20, "the GPU memory went into CRIU's pages too"
        wait_gone(w.pid)

        result, log = restore(tmp_path / "ckpt", tmp_path / "restore.log", plugin)
        assert result.returncode == 0, plugin_lines(log) or result.stderr
        assert f"GPU memory back: adopted {GPU_MIB << 20} bytes preloaded" in log, plugin_lines(log)
        assert w.verify(), "GPU memory differs after criu dump/restore with the plugin"
    finally:
        w.stop()


def test_settings_out_of_range_fail_the_run_with_the_reason(fake_driver, plugin, tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=4, prefix=EXEC)
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin, env={"CRIU_CUDA_STREAMS": "64"})
        assert result.returncode != 0
        assert "CRIU_CUDA_STREAMS=64 is not valid: it must be an integer from 1 to 32" in log
        assert not (tmp_path / "ckpt" / "restoreprof-criu.txt").exists()
        assert w.alive() and w.verify(), "a refused dump must leave the process untouched"
    finally:
        w.stop()


def test_library_socket_gone_falls_back_to_the_driver_path(fake_driver, plugin, tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=GPU_MIB, prefix=EXEC)
    try:
        (tmp_path / "run" / f"shim-{w.pid}.sock").unlink()
        result, log = dump(w, tmp_path / "ckpt", plugin)
        assert result.returncode == 0, plugin_lines(log) or result.stderr
        assert "offload failed" in log and "the plain path" in log, plugin_lines(log)
        assert not list((tmp_path / "ckpt").glob("gpu-*.snap"))
        wait_gone(w.pid)
        result, log = restore(tmp_path / "ckpt", tmp_path / "restore.log", plugin)
        assert result.returncode == 0, plugin_lines(log) or result.stderr
        assert "CUDA restored and unlocked (the driver's path)" in log, plugin_lines(log)
        assert w.verify()
    finally:
        w.stop()


def test_failed_preload_reloads_inside_the_process(fake_driver, plugin, tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=GPU_MIB, prefix=EXEC)
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin)
        assert result.returncode == 0, plugin_lines(log)
        wait_gone(w.pid)
        # the agent's preload fails on its first allocation; the restored process is not
        # affected (its environment is the one it was checkpointed with)
        result, log = restore(tmp_path / "ckpt", tmp_path / "restore.log", plugin,
                              env={"FAKECUDA_FAIL": "cuMemCreate:0"})
        assert result.returncode == 0, plugin_lines(log)
        assert "reloaded inside the process" in log and "preload not adopted" in log, \
            plugin_lines(log)
        assert w.verify()
    finally:
        w.stop()


def test_failed_driver_checkpoint_fails_the_dump_and_the_process_runs_on(fake_driver, plugin,
                                                                        tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=GPU_MIB, prefix=EXEC)
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin,
                           env={"FAKECUDA_FAIL": "cuCheckpointProcessCheckpoint:0"})
        assert result.returncode != 0
        assert "driver checkpoint failed: CUDA_ERROR_UNKNOWN" in log, plugin_lines(log)
        assert "given its GPU back and runs on" in log
        assert w.alive() and w.verify(), "the offloaded memory must be back in the process"
    finally:
        w.stop()


def test_leave_running_gives_the_gpu_back_after_criu_lets_go(fake_driver, plugin, tmp_path):
    from restoreprof.optimizer.control import ShimControl

    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=GPU_MIB, prefix=EXEC)
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin, "--leave-running")
        assert result.returncode == 0, plugin_lines(log)
        deadline = time.monotonic() + 30
        while ShimControl(w.pid).status()["state"] != "running":
            assert time.monotonic() < deadline, "the agent did not reload the process's memory"
            time.sleep(0.05)
        assert w.verify()
    finally:
        w.stop()


def test_refuses_to_load_beside_nvidias_cuda_plugin(fake_driver, plugin, tmp_path):
    both = tmp_path / "plugins"
    both.mkdir()
    shutil.copy(plugin / "restoreprof_criu.so", both)
    source = tmp_path / "cuda_plugin.c"  # stands in for NVIDIA's: any loadable plugin
    source.write_text("int cr_plugin_init(int stage) { return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(both / "cuda_plugin.so"), str(source)],
                   check=True)
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=4, prefix=EXEC)
    try:
        result, log = dump(w, tmp_path / "ckpt", both)
        assert result.returncode != 0
        assert "NVIDIA's CUDA plugin" in log and "keep one of the two" in log
        assert w.alive() and w.verify()
    finally:
        w.stop()


def test_a_process_without_cuda_is_left_to_criu(fake_driver, plugin, tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8)
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin)
        assert result.returncode == 0, plugin_lines(log)
        assert not (tmp_path / "ckpt" / "restoreprof-criu.txt").exists()
        wait_gone(w.pid)
        result, log = restore(tmp_path / "ckpt", tmp_path / "restore.log", plugin)
        assert result.returncode == 0 and w.verify()
    finally:
        w.stop()


def test_restore_needs_the_plugin_and_writes_nothing_into_the_images(fake_driver, plugin,
                                                                     tmp_path):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=GPU_MIB, prefix=EXEC)
    readonly = tmp_path / "readonly"
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin)
        assert result.returncode == 0, plugin_lines(log)
        wait_gone(w.pid)
        # without the plugin CRIU refuses: the GPU memory would never come back
        result = subprocess.run([criu_path(), "restore", "-D", str(tmp_path / "ckpt"), "-d",
                                 "-o", str(tmp_path / "bare.log")], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert result.returncode != 0
        assert "Missing required plugin: restoreprof" in (tmp_path / "bare.log").read_text()
        assert not Path(f"/proc/{w.pid}").exists()
        # from a read-only folder (an image layer, a volume): the plugin writes nothing there
        readonly.mkdir()
        subprocess.run(["mount", "--bind", str(tmp_path / "ckpt"), str(readonly)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(readonly)], check=True)
        before = sorted(p.name for p in readonly.iterdir())
        result, log = restore(readonly, tmp_path / "restore.log", plugin)
        assert result.returncode == 0, plugin_lines(log) or result.stderr
        assert "adopted" in log and w.verify()
        assert sorted(p.name for p in readonly.iterdir()) == before
    finally:
        w.stop()
        if readonly.exists():
            subprocess.run(["umount", str(readonly)], check=False)


def test_a_runtime_the_driver_cannot_restore_is_refused(fake_driver, plugin, tmp_path):
    from test_unrestorable_runtimes import _start as start_jax_like

    w = start_jax_like(tmp_path)
    try:
        result, log = dump(w, tmp_path / "ckpt", plugin)
        assert result.returncode != 0
        assert "cannot restore a JAX process" in log, plugin_lines(log)
        assert not (tmp_path / "ckpt" / "restoreprof-criu.txt").exists()
        assert w.alive() and w.verify(), "a refused dump must leave the process untouched"
    finally:
        w.stop()


def test_a_tree_of_cuda_processes_comes_back(fake_driver, plugin, tmp_path):
    root = HeldMemory.start(tmp_path / "state", 8, gpu_mib=8, prefix=EXEC, children=2)
    holders = root.children()
    try:
        result, log = dump(root, tmp_path / "ckpt", plugin)
        assert result.returncode == 0, plugin_lines(log)
        for h in holders:
            assert f"PID {h.pid}: {8 << 20} bytes of GPU memory offloaded" in log
        for pid in [root.pid, *(h.pid for h in holders)]:
            wait_gone(pid)
        result, log = restore(tmp_path / "ckpt", tmp_path / "restore.log", plugin)
        assert result.returncode == 0, plugin_lines(log)
        for h in holders:
            assert f"PID {h.pid}: CUDA restored and unlocked; GPU memory back: adopted" in log
            assert h.verify()
    finally:
        root.stop()
        for h in holders:
            h.stop()
