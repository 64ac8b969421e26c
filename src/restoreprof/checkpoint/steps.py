"""Named, timed steps of a checkpoint or restore, on the clock the probes use.

An observer hears of each step as it starts and ends (the commands draw progress with it).
It is given to StepClock, or set around a call with ``observing(observer)``, which reaches the
clocks that the checkpoint and restore functions make inside without a parameter of theirs.

Work that runs one phase after another (a checkpoint's critical path) is timed as a sequence:
each phase ends where the next begins, so every moment of it belongs to a named step.

    with clock.sequence() as phase:
        phase("prepare")        # ... work ...
        phase("criu dump")      # ends "prepare" and starts this one
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Step:
    name: str
    start_ns: int
    end_ns: int
    pid: int | None = None
    bytes: int = 0  # what the step moved, where it says (the lazy page server's copies)

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class StepObserver(Protocol):
    def step_started(self, name: str, pid: int | None) -> None: ...

    def step_finished(self, step: Step) -> None: ...


_current_observer: ContextVar[StepObserver | None] = ContextVar("restoreprof_step_observer",
                                                                default=None)


@contextlib.contextmanager
def observing(observer: StepObserver | None) -> Iterator[None]:
    """StepClocks made inside this block (in this thread or context) report to observer."""
    token = _current_observer.set(observer)
    try:
        yield
    finally:
        _current_observer.reset(token)


class StepClock:
    """Collects named, timed steps (CLOCK_MONOTONIC ns, the clock the probes use)."""

    def __init__(self, observer: StepObserver | None = None) -> None:
        self.steps: list[Step] = []
        self._lock = threading.Lock()
        # taken now: steps run on pool threads, which do not see the caller's context
        self.observer = observer if observer is not None else _current_observer.get()

    def add(self, name: str, start_ns: int, end_ns: int, pid: int | None = None,
            nbytes: int = 0) -> None:
        step = Step(name, start_ns, end_ns, pid, nbytes)
        with self._lock:
            self.steps.append(step)
        self._tell("step_finished", step)

    def run(self, name: str, fn, *args, pid: int | None = None, **kwargs):
        self._tell("step_started", name, pid)
        start = time.monotonic_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            self.add(name, start, time.monotonic_ns(), pid)

    @contextlib.contextmanager
    def sequence(self) -> Iterator[StepSequence]:
        """Phases that follow each other with no gap (see StepSequence); the block's end (an
        error's too) ends the last one."""
        phases = StepSequence(self)
        try:
            yield phases
        finally:
            phases.close()

    def _tell(self, method: str, *args) -> None:
        if self.observer is None:
            return
        # progress is a courtesy: a display that fails must never fail a checkpoint or restore
        with contextlib.suppress(Exception):
            getattr(self.observer, method)(*args)


class StepSequence:
    """phase(name) ends the open step and starts name, at the same instant: nothing between
    them goes untimed, so the steps add up to the sequence's wall time."""

    def __init__(self, clock: StepClock) -> None:
        self._clock = clock
        self._open: tuple[str, int] | None = None

    def __call__(self, name: str) -> None:
        now_ns = time.monotonic_ns()
        self._end(now_ns)
        self._clock._tell("step_started", name, None)
        self._open = (name, now_ns)

    def close(self) -> None:
        self._end(time.monotonic_ns())

    def so_far(self) -> list[Step]:
        """The clock's steps, and the open one as it stands now."""
        with self._clock._lock:
            steps = list(self._clock.steps)
        if self._open:
            steps.append(Step(self._open[0], self._open[1], time.monotonic_ns()))
        return steps

    def _end(self, now_ns: int) -> None:
        if self._open:
            name, start_ns = self._open
            self._open = None
            self._clock.add(name, start_ns, now_ns)
