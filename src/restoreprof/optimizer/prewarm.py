"""Context pre-warm: cuInit, the primary context of every visible GPU, and the staging pool.

On the H100, cuInit costs 0.10 to 0.20 s, a primary context plus first allocation 0.11 s and a
pinned staging pool 0.2 to 0.7 s. None of it depends on the checkpoint, so ``restoreprof
restore`` starts it in a background thread while CRIU works, and ``restoreprof warm`` keeps it
held on hosts without persistence mode (where the driver tears GPU state down when the last
client exits).

    warm = Prewarm(cfg).start()     # returns at once
    ...                             # criu restore runs meanwhile
    ready = warm.wait()             # Warmed: contexts, pool, timings
    engine = Engine(cfg, pool=ready.pool)
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field
from typing import Self

from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.engine import Driver, StagingPool, driver


@dataclass
class WarmTimings:
    """Seconds each step took (0 when skipped)."""

    init_s: float = 0.0
    contexts_s: float = 0.0
    pool_s: float = 0.0
    devices: int = 0
    pool_bytes: int = 0

    @property
    def total_s(self) -> float:
        return self.init_s + self.contexts_s + self.pool_s


@dataclass
class Warmed:
    """What pre-warm holds: primary contexts (device -> handle) and the staging pool."""

    driver: Driver
    contexts: dict[int, int] = field(default_factory=dict)
    pool: StagingPool | None = None
    timings: WarmTimings = field(default_factory=WarmTimings)

    def release(self) -> None:
        if self.pool:
            self.pool.close()
            self.pool = None
        for device in list(self.contexts):
            self.driver.call("cuDevicePrimaryCtxRelease_v2", device)
            del self.contexts[device]


def warm(cfg: OptimizerConfig | None = None, with_pool: bool = True,
         drv: Driver | None = None, contexts: bool = True) -> Warmed:
    """Do the work in this thread; the pool lives on device 0's primary context. contexts=False:
    cuInit only (the driver's checkpoint calls need no context)."""
    cfg = cfg or OptimizerConfig()
    drv = drv or driver()
    ready = Warmed(drv)
    t0 = time.perf_counter()
    drv.call("cuInit", 0)
    count = drv.out("cuDeviceGetCount", ctypes.c_int)
    t1 = time.perf_counter()
    for index in range(count if contexts else 0):
        ready.contexts[index] = drv.primary_context(index)
    t2 = time.perf_counter()
    if with_pool and ready.contexts:
        drv.call("cuCtxSetCurrent", ready.contexts[0])
        ready.pool = StagingPool.for_config(cfg, drv, ready.contexts[0])
    t3 = time.perf_counter()
    ready.timings = WarmTimings(t1 - t0, t2 - t1, t3 - t2, count,
                                ready.pool.total_bytes if ready.pool else 0)
    return ready


class Prewarm:
    """warm() in a background thread, so it overlaps with CRIU's work."""

    def __init__(self, cfg: OptimizerConfig | None = None, with_pool: bool = True,
                 contexts: bool = True) -> None:
        self.cfg = cfg or OptimizerConfig()
        self.with_pool = with_pool
        self.contexts = contexts
        self._thread: threading.Thread | None = None
        self._result: Warmed | None = None
        self._error: BaseException | None = None

    def start(self) -> Self:
        def body() -> None:
            try:
                self._result = warm(self.cfg, self.with_pool, contexts=self.contexts)
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
