"""Named, timed steps of a checkpoint or restore, on the clock the probes use."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class Step:
    name: str
    start_ns: int
    end_ns: int
    pid: int | None = None

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class StepClock:
    """Collects named, timed steps (CLOCK_MONOTONIC ns, the clock the probes use)."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._lock = threading.Lock()

    def add(self, name: str, start_ns: int, end_ns: int, pid: int | None = None) -> None:
        with self._lock:
            self.steps.append(Step(name, start_ns, end_ns, pid))

    def run(self, name: str, fn, *args, pid: int | None = None, **kwargs):
        start = time.monotonic_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(name, start, time.monotonic_ns(), pid)
