"""Context pre-warm: cuInit and the primary context of every visible GPU.

On the H100, cuInit costs 0.10 to 0.20 s and a primary context plus first allocation 0.11 s.
Neither depends on the checkpoint, so ``restoreprof restore`` starts cuInit in a background
thread while CRIU works, and ``restoreprof warm`` keeps contexts held on hosts without
persistence mode (where the driver tears GPU state down when the last client exits). The
engine's staging pool is the engine's (optimizer.engine.warm_staging).

    warm = Prewarm(contexts=False).start()   # returns at once
    ...                                      # criu restore runs meanwhile
    ready = warm.wait()                      # Warmed: contexts, timings
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from restoreprof.cuda import driver


@dataclass
class WarmTimings:
    """Seconds each step took (0 when skipped)."""

    init_s: float = 0.0
    contexts_s: float = 0.0
    devices: int = 0

    @property
    def total_s(self) -> float:
        return self.init_s + self.contexts_s


@dataclass
class Warmed:
    """What pre-warm holds: primary contexts (device index -> context)."""

    contexts: dict[int, Any] = field(default_factory=dict)
    timings: WarmTimings = field(default_factory=WarmTimings)

    def release(self) -> None:
        for index in list(self.contexts):
            driver.primary_context_release(index)
            del self.contexts[index]


def warm(contexts: bool = True) -> Warmed:
    """Do the work in this thread. contexts=False: cuInit only (the driver's checkpoint calls
    need no context)."""
    ready = Warmed()
    t0 = time.perf_counter()
    driver.init()
    count = driver.device_count()
    t1 = time.perf_counter()
    for index in range(count if contexts else 0):
        ready.contexts[index] = driver.primary_context(index)
    ready.timings = WarmTimings(t1 - t0, time.perf_counter() - t1, count)
    return ready


class Prewarm:
    """warm() in a background thread, so it overlaps with CRIU's work."""

    def __init__(self, contexts: bool = True) -> None:
        self.contexts = contexts
        self._thread: threading.Thread | None = None
        self._result: Warmed | None = None
        self._error: BaseException | None = None

    def start(self) -> Self:
        def body() -> None:
            try:
                self._result = warm(self.contexts)
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=body, name="restoreprof-prewarm", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Warmed:
        """The warmed state; raises what the background thread raised."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("pre-warm is still running")
        if self._error:
            raise self._error
        assert self._result is not None
        return self._result
