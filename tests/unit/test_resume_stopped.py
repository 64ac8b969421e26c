"""resume_stopped: the processes CRIU leaves stopped are continued once their stop has taken
effect, so a SIGCONT can never be overtaken by the stop it was meant to undo."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from restoreprof.checkpoint.tree import resume_stopped, state


def _wait_state(pid: int, wanted: str, timeout_s: float = 5) -> str | None:
    deadline = time.monotonic() + timeout_s
    while (now := state(pid)) != wanted and time.monotonic() < deadline:
        time.sleep(0.005)
    return now


def test_a_stop_that_lands_after_the_call_is_still_undone():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        # the stop arrives while resume_stopped already waits, as CRIU's does after it exits
        threading.Timer(0.1, os.kill, (proc.pid, signal.SIGSTOP)).start()
        assert resume_stopped([proc.pid], timeout_s=3) == []
        assert _wait_state(proc.pid, "S") == "S"
    finally:
        proc.kill()
        proc.wait()


def test_stopped_processes_are_continued_and_gone_ones_skipped():
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        for p in procs:
            os.kill(p.pid, signal.SIGSTOP)
            assert _wait_state(p.pid, "T") == "T"
        procs[2].kill()
        procs[2].wait()
        assert resume_stopped([p.pid for p in procs], timeout_s=3) == []
        assert all(_wait_state(p.pid, "S") == "S" for p in procs[:2])
    finally:
        for p in procs:
            p.kill()
            p.wait()
