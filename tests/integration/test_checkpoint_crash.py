"""Issue 19's crash safety on real CRIU: forks during the freeze, kill -9 and Ctrl-C of checkpoint
and restore (the guardian finishes or undoes), --abort, --gpu-only that never hangs, and
concurrent restores of one folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from restoreprof.checkpoint import checkpoint, pstree, restore
from restoreprof.checkpoint.journal import RESTORE_JOURNAL_NAME
from restoreprof.checkpoint.manifest import JOURNAL_NAME, MANIFEST_NAME, Manifest
from restoreprof.checkpoint.tree import state
from restoreprof.errors import EXIT_INTERRUPTED, EXIT_TARGET
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
CLI = [sys.executable, "-m", "restoreprof"]


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def _wait_for(predicate, timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _phase(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stopped(pids) -> list[int]:
    return [p for p in pids if state(p) == "T"]


def _kill_tree(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


FORKER = "while :; do sleep 0.6 & sleep 0.004; done"
# The forker runs under a subreaper that reaps it and its orphans, so their PIDs are free for
# the restore at once (this VM's init reaps orphans only every few seconds).
REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = subprocess.Popen(["bash", "-c", sys.argv[1]], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


def test_children_forked_during_the_freeze_are_all_resumed(tmp_path):
    """A tree forking about 100 children per run: every process CRIU restored (its own list,
    not a scan) runs after the restore; none stays stopped."""
    reaper = subprocess.Popen([sys.executable, "-c", REAPER, FORKER], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    restored = []
    try:
        forker = int(reaper.stdout.readline())
        time.sleep(0.5)  # about 100 children alive from here on
        result = checkpoint(forker, tmp_path / "c")
        criu_pids = pstree.pids(tmp_path / "c")
        assert len(criu_pids) >= 30  # about 100 on an idle machine
        assert sorted(p.pid for p in result.manifest.processes) == sorted(criu_pids)
        out = restore(tmp_path / "c")
        restored = out.pids
        assert sorted(out.pids) == sorted(criu_pids)
        assert _stopped(out.pids) == [], "restored processes left stopped"
        time.sleep(0.5)
        assert _stopped(out.pids) == []
    finally:
        reaper.kill()
        _kill_tree(restored)


def test_kill_9_during_criu_dump_is_finished_by_the_guardian(tmp_path):
    w = HeldMemory.start(tmp_path / "state", 256)
    images = tmp_path / "c"
    cmd = _cli("checkpoint", "-p", str(w.pid), "-D", str(images))
    try:
        _wait_for(lambda: _phase(images / JOURNAL_NAME).get("criu_pid"), what="criu dump")
        cmd.kill()
        cmd.wait()
        _wait_for(lambda: (images / MANIFEST_NAME).exists() and not (images / JOURNAL_NAME).exists(),
                  what="the guardian to finish the checkpoint")
        assert not w.alive()
        Manifest.load(images).check_files(images)
        restore(images)
        assert w.verify(), "the finished checkpoint did not give the data back"
    finally:
        w.stop()


@pytest.mark.parametrize("how", ["kill-9", "ctrl-c"])
def test_interrupted_criu_restore_leaves_nothing_stopped(tmp_path, how):
    w = HeldMemory.start(tmp_path / "state", 256)
    images = checkpoint(w.pid, tmp_path / "c").directory
    work = tmp_path / "work"
    journal = work / RESTORE_JOURNAL_NAME
    cmd = _cli("restore", "-D", str(images), "-o", str(work), start_new_session=True)
    try:
        _wait_for(lambda: _phase(journal).get("criu_pid"), what="criu restore")
        if how == "kill-9":
            cmd.kill()
        else:  # the terminal sends SIGINT to the whole foreground group
            os.killpg(cmd.pid, signal.SIGINT)
        _, err = cmd.communicate(timeout=60)
        if how == "ctrl-c":
            assert cmd.returncode == EXIT_INTERRUPTED, err
            assert "killed before they ran" in err
        _wait_for(lambda: not journal.exists(), what="the guardian")
        _wait_for(lambda: state(w.pid) in (None, "Z") or state(w.pid) != "T", 10, "no stopped process")
        if state(w.pid) not in (None, "Z"):  # brought back whole by the guardian: it must verify
            assert w.verify()
            w.stop()
        restore(images)  # the checkpoint is untouched and restores again
        assert w.verify()
    finally:
        w.stop()


@pytest.mark.parametrize("lazy", [False, True], ids=["criu reads", "lazy pages"])
def test_abort_and_gpu_only_after_the_guardian_was_killed_too(tmp_path, restoreprof_cli, lazy):
    """Both the restore and its guardian die with the processes held: --gpu-only refuses at once
    (it never waits on a stopped process), --abort kills them, and a new restore works.
    With lazy pages CRIU cannot finish without the dead command's page server (its restorer
    waits on a fault): the processes stay inside CRIU, never run, and --abort ends them too."""
    w = HeldMemory.start(tmp_path / "state", 256)
    images = checkpoint(w.pid, tmp_path / "c").directory
    work = tmp_path / "work"
    journal = work / RESTORE_JOURNAL_NAME
    cmd = _cli("restore", "-D", str(images), "-o", str(work),
               env={**os.environ, "RESTOREPROF_LAZY_PAGES": str(int(lazy))})
    try:
        _wait_for(lambda: _phase(journal).get("criu_pid"), what="criu restore")
        assert _phase(journal).get("lazy_pages") is lazy, (
            f"no lazy page restore: not used ({_phase(journal).get('lazy_not_used')}), or it "
            f"fell back ({_phase(journal).get('lazy_failed')})")
        guardians = subprocess.run(["pgrep", "-f", f"guardian.py restore {work}"],
                                   capture_output=True, text=True).stdout.split()
        for pid in [*guardians, str(cmd.pid)]:
            os.kill(int(pid), signal.SIGKILL)
        cmd.wait()
        assert guardians and journal.exists()
        if not lazy:  # (with lazy pages CRIU may have finished first, or wait on a fault
            # forever: test_lazy_pages shows the second case deterministically)
            _wait_for(lambda: state(w.pid) == "T", 60, "CRIU to finish, leaving the process held")
        start = time.monotonic()
        out = restoreprof_cli("restore", "-D", str(images), "-o", str(work), "--gpu-only", timeout=30)
        assert out.returncode != 0 and "--abort" in out.stderr and time.monotonic() - start < 20
        out = restoreprof_cli("restore", "-D", str(images), "-o", str(work), "--abort")
        assert out.returncode == 0 and "killed" in out.stdout, out.stderr
        _wait_for(lambda: state(w.pid) in (None, "Z"), 10, "the held process to die")
        restore(images)
        assert w.verify()
    finally:
        w.stop()


def test_concurrent_restores_of_one_folder_are_serialized(tmp_path):
    w = HeldMemory.start(tmp_path / "state", 64)
    images = checkpoint(w.pid, tmp_path / "c").directory
    try:
        runs = [_cli("restore", "-D", str(images), "--json") for _ in range(3)]
        outcomes = [(r.wait(timeout=120), *r.communicate()) for r in runs]
        codes = sorted(code for code, _, _ in outcomes)
        assert codes == [0, EXIT_TARGET, EXIT_TARGET], outcomes
        assert all("in use" in err for code, _, err in outcomes if code)
        assert w.verify()
    finally:
        w.stop()
