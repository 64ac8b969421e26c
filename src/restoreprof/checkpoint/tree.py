"""The process tree under a PID, from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from restoreprof.errors import RestoreprofError


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").is_dir()


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def state(pid: int) -> str | None:
    """The one-letter state of pid (R, S, D, T, Z...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_stopped(pid: int) -> bool:
    """True when pid is stopped by a signal (state T), as CRIU will also restore it."""
    return state(pid) == "T"


def resume_stopped(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """SIGCONT each of pids once it is seen stopped, until none is; returns those still stopped.

    CRIU's --leave-stopped stops each task as it lets it go; the stop takes effect when the
    task next runs, so a SIGCONT sent too early is overtaken by it. Hence: wait for the stop,
    continue, and continue again while the task still reads as stopped.
    """
    deadline = time.monotonic() + timeout_s
    waiting = list(pids)
    seen_stopped: set[int] = set()
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            now = state(pid)
            if now is None or (pid in seen_stopped and now != "T"):
                waiting.remove(pid)  # gone, or running again
            elif now == "T":
                seen_stopped.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    for pid in waiting:  # never seen stopped in time: continue it anyway
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return [pid for pid in waiting if state(pid) == "T"]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, parents first."""
    if not exists(pid):
        raise RestoreprofError(f"PID {pid} not found", hint="check the PID with 'ps -p PID'")
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            queue += [int(c) for c in children if int(c) not in tree and int(c) not in queue]
    return tree


def maps_library(pid: int, fragment: str) -> bool:
    """True when pid maps a file whose path contains fragment (e.g. 'libcuda.so')."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(fragment in line for line in maps)
    except OSError:
        return False
