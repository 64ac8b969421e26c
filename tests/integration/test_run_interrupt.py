"""Killing `restoreprof run` (SIGTERM, or Ctrl-C's SIGINT) in the middle of a trial leaves
neither the trial's copy of the checkpoint nor a restored trial process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from restoreprof.checkpoint import checkpoint
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("interrupt")
    holder = HeldMemory.start(base / "state", 32)
    try:
        checkpoint(holder.pid, base / "ckpt")
    finally:
        holder.stop()
    return base / "ckpt"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(what, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("signum, moment", [(signal.SIGTERM, "restored"),
                                            (signal.SIGINT, "copied"),
                                            (signal.SIGTERM, "copied")],
                         ids=["sigterm-while-restored", "sigint-while-copied",
                              "sigterm-while-copied"])
def test_an_interrupted_run_leaks_nothing(ckpt, tmp_path, signum, moment):
    from restoreprof.checkpoint.manifest import Manifest

    pid = Manifest.load(ckpt).root_pid
    assert not _alive(pid)
    run = subprocess.Popen([sys.executable, "-m", "restoreprof", "run", "-D", str(ckpt),
                            "-o", str(tmp_path / "out"), "--budget", "8", "--repeat", "2",
                            "--no-trace", "--db", str(tmp_path / "db.json")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    copies = lambda: list(ckpt.parent.glob(f".{ckpt.name}.trial-*"))  # noqa: E731
    try:
        hit = _wait_for(lambda: _alive(pid)) if moment == "restored" else _wait_for(copies)
        assert hit, f"no trial reached '{moment}'"
        os.kill(run.pid, signum)
        out, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, out
    assert "interrupted" in out
    assert not copies(), "the trial's copy of the checkpoint was left behind"
    assert not _alive(pid), "a restored trial process was left running"
    assert not (tmp_path / "db.json").exists()
