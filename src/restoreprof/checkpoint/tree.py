"""The process tree under a PID, from /proc."""

from __future__ import annotations

from pathlib import Path

from restoreprof.errors import RestoreprofError


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").is_dir()


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def is_stopped(pid: int) -> bool:
    """True when pid is stopped by a signal (state T), as CRIU will also restore it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


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
