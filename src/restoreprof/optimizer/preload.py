"""Offloaded GPU memory, loaded by restoreprof while CRIU restores the process (shim/preload.c).

    loaded = preload_snapshot(Path("/ckpt/gpu-123.snap"), cfg)   # during criu restore
    ...                                                          # driver restore + unlock
    adopt(123, loaded)       # the process maps the memory at its allocations' addresses

RELOAD streams a snapshot back inside the application, after CRIU and the driver's restore.
Preloading does the same transfer earlier, in this process: physical memory is created here,
exportable as a file descriptor, filled by the engine (each chunk's crc32c checked), and handed
to the restored process over its control socket. Either side holds its own reference, so the
memory lives on in the process once adopted; `release()` drops ours. (A warm pool, see
optimizer.pool, does the same in a process that is already warm.)
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import engine
from restoreprof.optimizer.config import OptimizerConfig


@dataclass(frozen=True)
class Allocation:
    """One preloaded allocation, as ADOPT needs it: where, how big, on which GPU, which fd, and,
    for the application's own physical allocation (cuMemCreate), the handle it holds (0 for an
    allocation of the library's, named by its address)."""

    address: int
    size: int
    uuid: str  # hex, the GPU's
    fd: int
    handle: int = 0

    def describe(self) -> dict:
        """The parts a descriptor-passing message carries next to the fd."""
        return {"address": self.address, "size": self.size, "uuid": self.uuid,
                "handle": self.handle}

    @classmethod
    def from_description(cls, d: dict, fd: int) -> Allocation:
        return cls(int(d["address"]), int(d["size"]), str(d["uuid"]), fd,
                   int(d.get("handle", 0)))


@dataclass
class PreloadedSnapshot:
    """A snapshot's allocations, in GPU memory this process made and still holds."""

    snapshot: Path
    items: ctypes.Array
    count: int
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(self.items[i].size for i in range(self.count))

    def allocations(self) -> list[Allocation]:
        return [Allocation(item.address, item.size, bytes(item.uuid).hex(), item.fd,
                           item.app_handle)
                for item in self.items[:self.count]]

    def release(self) -> None:
        """Drop this process's references (the memory lives on where it was adopted)."""
        if self.count:
            engine.library().rp_preloaded_release(self.items, self.count)
            self.count = 0


def preload_snapshot(snapshot: Path, cfg: OptimizerConfig | None = None, *,
                     fd: int | None = None) -> PreloadedSnapshot:
    """Load every allocation of snapshot (read through fd when given) into new, exportable GPU
    memory with cfg's streams, threads, chunk size and staging; raises on any failure (a
    damaged chunk included), leaving nothing allocated."""
    params = engine.EngineParams.of(cfg or OptimizerConfig())
    items = (engine.Preloaded * engine.MAX_PRELOAD_ALLOCATIONS)()
    err = ctypes.create_string_buffer(512)
    lib = engine.library()
    start = time.monotonic()
    if fd is None:
        count = lib.rp_snapshot_preload(str(snapshot).encode(), ctypes.byref(params), items,
                                        len(items), err, len(err))
    else:
        count = lib.rp_snapshot_preload_fd(fd, ctypes.byref(params), items, len(items), err,
                                           len(err))
    if count < 0:
        raise RestoreprofError(f"preloading {snapshot} failed: {err.value.decode(errors='replace')}",
                               hint="the restore falls back to reloading inside the process")
    return PreloadedSnapshot(Path(snapshot), items, count, time.monotonic() - start)


def adopt(pid: int, loaded) -> dict:
    """Hand each allocation to pid's interception library; {bytes, seconds}. Raises on the
    first refusal; allocations adopted before it stay adopted (RELOAD completes the rest)."""
    from restoreprof.optimizer.control import ShimControl

    items = list(loaded.allocations())  # a PreloadedSnapshot, or a pool's PooledSnapshot
    if not items:
        # The library reopens its gate when its last offloaded allocation is adopted; with none,
        # only a RELOAD (of the empty snapshot) does, which every caller falls back to.
        raise RestoreprofError(f"PID {pid}: the snapshot holds no GPU memory to adopt",
                               hint="reload it in the process (RELOAD), which reopens its library")
    control = ShimControl(pid)
    start = time.monotonic()
    total = 0
    for batch in _batches(items):
        try:
            control.adopt_many(batch[0].uuid, [(i.address, i.handle, i.fd) for i in batch])
        except RestoreprofError as exc:
            if "unknown request" not in exc.message:
                raise
            for item in batch:  # a library from before ADOPTV: one request each
                control.adopt(item.address, item.uuid, item.fd, item.handle)
        total += sum(item.size for item in batch)
    return {"bytes": total, "seconds": time.monotonic() - start}


def _batches(items: list) -> list[list]:
    """Runs of items on one GPU, at most ADOPT_BATCH each, in order (one ADOPTV each: a
    program with hundreds of physical allocations paid a connection for each)."""
    from restoreprof.optimizer.control import ADOPT_BATCH

    batches: list[list] = []
    for item in items:
        if batches and batches[-1][0].uuid == item.uuid and len(batches[-1]) < ADOPT_BATCH:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches
