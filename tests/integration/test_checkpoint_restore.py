"""Real CRIU round trips and every error path of checkpoint/restore (issue 3), on real processes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.checkpoint.manifest import MANIFEST_NAME, Manifest
from restoreprof.checkpoint.tree import state
from restoreprof.errors import RestoreprofError
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root


@pytest.fixture
def held(tmp_path):
    started: list[HeldMemory] = []

    def start(mib: int = 256) -> HeldMemory:
        w = HeldMemory.start(tmp_path / f"state{len(started)}", mib)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def checkpoint_256(tmp_path_factory):
    """One real checkpoint of a process holding 256 MiB of random data (the process is gone)."""
    base = tmp_path_factory.mktemp("ckpt256")
    w = HeldMemory.start(base / "state", 256)
    result = checkpoint(w.pid, base / "images")
    assert not w.alive()
    return w, result


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def test_round_trip_256_mib_bit_exact(checkpoint_256, tmp_path):
    w, result = checkpoint_256
    images = _copy_checkpoint(result.directory, tmp_path / "copy")
    pages = sum(i["bytes"] for i in result.manifest.images if i["name"].startswith("pages-"))
    assert pages >= 256 << 20
    restored = restore(images)
    try:
        assert restored.root_pid == w.pid
        assert w.alive()
        assert w.verify(), "restored process's data differs from what it held before the dump"
    finally:
        w.stop()


def test_checkpoint_steps_tile_its_wall_time(held, tmp_path):
    """A stopped-process checkpoint (a preemption's): its steps, one after another with no gap,
    are its whole wall time, from the process listing to the processes' exit."""
    w = held(16)
    start = time.monotonic()
    result = checkpoint(w.pid, tmp_path / "c")
    wall_s = time.monotonic() - start
    assert not w.alive()
    steps = result.steps
    assert [s.name for s in steps][-3:] == ["checksum images", "manifest", "wait for exit"]
    assert all(a.end_ns == b.start_ns for a, b in itertools.pairwise(steps))
    assert result.total_s == pytest.approx(sum(s.seconds for s in steps))
    assert 0 <= wall_s - result.total_s < 0.05, (wall_s, result.total_s)
    # the manifest keeps the steps up to its own writing
    names = [s["name"] for s in Manifest.load(tmp_path / "c").steps]
    assert names == [s.name for s in steps][: names.index("checksum images") + 1]


@pytest.mark.parametrize("sync", [False, True], ids=["page-cache", "sync"])
def test_only_a_synced_checkpoint_waits_on_the_disk(held, tmp_path, monkeypatch, sync):
    """Without --sync nothing of the checkpoint is fsynced (its images are not, so its journal
    and manifest need not be: an fsync waits on every dirty gigabyte of the filesystem);
    with --sync every file is, the manifest last. Both restore bit-exact."""
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    w = held(16)
    checkpoint(w.pid, tmp_path / "c", sync=sync)
    monkeypatch.setattr(os, "fsync", real_fsync)
    images = len(list((tmp_path / "c").iterdir()))
    assert (len(calls) > images) if sync else calls == [], (len(calls), images)
    restore(tmp_path / "c")
    assert w.verify()


def test_leave_running_keeps_process_and_cli_json(held, tmp_path, restoreprof_cli):
    w = held(64)
    out = restoreprof_cli("checkpoint", "-p", str(w.pid), "-D", str(tmp_path / "c"),
                          "--leave-running", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    # every phase is a step, each beginning where the one before ended: nothing unaccounted
    steps = data["steps"]
    assert [s["name"] for s in steps] == ["list processes", "find CUDA processes",
                                          "prepare folder", "guardian start",
                                          "GPU lock + checkpoint", "criu dump",
                                          "checksum images", "manifest"]
    assert all(a["end_ns"] == b["start_ns"] for a, b in itertools.pairwise(steps))
    assert data["total_s"] == pytest.approx((steps[-1]["end_ns"] - steps[0]["start_ns"]) / 1e9)
    assert w.alive() and w.verify()
    manifest = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    assert manifest["root_pid"] == w.pid
    assert manifest["processes"][0]["cuda"] is False
    assert manifest["versions"]["criu"].startswith("4.")
    assert all(len(i["blake3_segments"]) >= 1 for i in manifest["images"])
    # restoring while the original still runs: its PID is taken
    taken = restoreprof_cli("restore", "-D", str(tmp_path / "c"))
    assert taken.returncode != 0 and "in use" in taken.stderr
    assert w.alive()


def test_altered_image_is_caught_before_the_process_runs(tmp_path, restoreprof_cli):
    """CRIU restores while the images are checked, leaving the processes stopped: a damaged
    image kills them before they run one instruction, and the checkpoint is left as it was."""
    log = tmp_path / "ticks"
    ticker = subprocess.Popen(["bash", "-c", f"while :; do echo x >> {log}; sleep 0.01; done"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        while not log.exists() or log.stat().st_size < 10:
            time.sleep(0.01)
        images = checkpoint(ticker.pid, tmp_path / "c").directory
        ticker.wait(timeout=10)
        ticks = log.stat().st_size
        page = max(images.glob("pages-*.img"), key=lambda p: p.stat().st_size)
        with open(page, "r+b") as f:
            f.seek(page.stat().st_size // 2)
            byte = f.read(1)
            f.seek(page.stat().st_size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        damaged = page.read_bytes()
        out = restoreprof_cli("restore", "-D", str(images))
        assert out.returncode != 0
        assert "altered" in out.stderr and page.name in out.stderr
        assert "killed before they ran" in out.stderr
        time.sleep(0.3)  # a process that had been resumed would have ticked by now
        assert log.stat().st_size == ticks, "a process restored from a damaged image ran"
        assert state(ticker.pid) in (None, "Z")
        assert page.read_bytes() == damaged, "the checkpoint must be left as it was"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(ticker.pid, signal.SIGKILL)


def test_restored_processes_resume_only_after_the_image_check(checkpoint_256, tmp_path):
    w, result = checkpoint_256
    images = _copy_checkpoint(result.directory, tmp_path / "order")
    restored = restore(images)
    try:
        steps = {s.name: s for s in restored.steps}
        # metadata and sizes before CRIU starts; page data while it runs, before any resume
        assert steps["verify images"].end_ns <= steps["criu restore"].start_ns
        assert steps["verify page images"].start_ns < steps["criu restore"].end_ns
        assert steps["verify page images"].end_ns <= steps["resume processes"].start_ns
        assert steps["criu restore"].end_ns <= steps["resume processes"].start_ns
        assert w.verify()
    finally:
        w.stop()


def test_truncated_image_is_caught(checkpoint_256, tmp_path):
    _, result = checkpoint_256
    images = _copy_checkpoint(result.directory, tmp_path / "trunc")
    page = sorted(images.glob("pages-*.img"))[0]
    os.truncate(page, page.stat().st_size // 2)
    with pytest.raises(RestoreprofError, match="truncated"):
        restore(images)


def test_missing_and_corrupt_directories(tmp_path, restoreprof_cli):
    out = restoreprof_cli("restore", "-D", str(tmp_path / "nope"))
    assert out.returncode != 0 and "does not exist" in out.stderr
    (tmp_path / "empty").mkdir()
    out = restoreprof_cli("restore", "-D", str(tmp_path / "empty"))
    assert out.returncode != 0 and "not a restoreprof checkpoint" in out.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST_NAME).write_text("{not json")
    out = restoreprof_cli("restore", "-D", str(tmp_path / "bad"))
    assert out.returncode != 0 and "corrupt" in out.stderr


def test_pid_not_found(tmp_path, restoreprof_cli):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = restoreprof_cli("checkpoint", "-p", str(dead.pid), "-D", str(tmp_path / "c"))
    assert out.returncode != 0 and f"PID {dead.pid} not found" in out.stderr
    assert not (tmp_path / "c").exists()


def test_never_overwrites_a_checkpoint(checkpoint_256, held):
    _, result = checkpoint_256
    w = held(16)
    before = (result.directory / MANIFEST_NAME).read_bytes()
    with pytest.raises(RestoreprofError, match="is a checkpoint"):
        checkpoint(w.pid, result.directory)
    assert (result.directory / MANIFEST_NAME).read_bytes() == before
    assert w.alive()


def test_not_root_is_refused(tmp_path):
    env = {**os.environ}
    # Import first (the interpreter under /root is not readable by nobody), then drop the euid.
    # The CLI imports a command's module when it runs: build that parser once before.
    code = ("import os, locale; from restoreprof.cli import build_parser, main; "
            "build_parser(['restore']); os.seteuid(65534); "
            f"raise SystemExit(main(['restore', '-D', '{tmp_path}']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "needs root" in out.stderr and "sudo" in out.stderr


def test_criu_missing_or_too_old(tmp_path, restoreprof_cli):
    old = tmp_path / "criu"
    old.write_text("#!/bin/sh\necho 'Version: 3.17'\n")
    old.chmod(0o755)
    env = {**os.environ, "RESTOREPROF_CRIU": str(old), "PATH": str(tmp_path)}
    code = ("from restoreprof.system import paths; import sys; "
            "paths._venv_criu = lambda: __import__('pathlib').Path('/nonexistent'); "
            "from restoreprof.cli import main; "
            f"raise SystemExit(main(['checkpoint', '-p', '1', '-D', '{tmp_path / 'c'}']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "CRIU >= 4.0 not found" in out.stderr and "3.17" in out.stderr


def test_manifest_roundtrip(checkpoint_256):
    _, result = checkpoint_256
    loaded = Manifest.load(result.directory)
    assert loaded.root_pid == result.manifest.root_pid
    assert loaded.images == result.manifest.images


def test_gpu_map_needs_old_equals_new(tmp_path, restoreprof_cli):
    out = restoreprof_cli("restore", "-D", str(tmp_path), "--gpu-map", "0")
    assert out.returncode != 0 and "OLD=NEW" in out.stderr
