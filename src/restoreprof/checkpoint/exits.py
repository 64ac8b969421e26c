"""Waiting for processes to end: those CRIU killed after its dump, and PIDs a restore needs free.

CRIU itself waits for the tasks it killed (as their tracer) before it exits, so after a dump
the processes are normally dead already (measured on the CPU machine: under 1 ms after `criu
dump` returned, for a process of 1.5 GB); the checkpoint checks it, as a step of its own
("wait for exit"), before it returns.
"""

from __future__ import annotations

import time

from restoreprof.checkpoint.tree import exists, state

POLL_S = 0.002


def alive(pid: int) -> bool:
    """pid runs (neither gone nor a zombie waiting for its reaper)."""
    return state(pid) not in (None, "Z", "X")


def wait_gone(pids: list[int], timeout_s: float = 30, zombies_count: bool = True) -> list[int]:
    """Wait until pids are dead, or (zombies_count) also reaped, so the PIDs are free; returns
    those still there at the timeout. (The reaper of an orphan is its subreaper or init, which
    may take a while: a restore waits for it, a checkpoint need not.)"""
    deadline = time.monotonic() + timeout_s

    def there(pid: int) -> bool:
        return exists(pid) if zombies_count else alive(pid)

    waiting = [p for p in pids if there(p)]
    while waiting and time.monotonic() < deadline:
        time.sleep(POLL_S)
        waiting = [p for p in waiting if there(p)]
    return waiting
