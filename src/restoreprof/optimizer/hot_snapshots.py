"""Hot snapshots: the warm pool keeps chosen snapshots resident in pinned host memory, so that a
restore copies them to the GPU by DMA straight from there (shim/hot.c), at the link's rate, with
no page-cache read and no memcpy into staging.

    hot = HotSnapshots(budget_bytes=32 << 30, threads=16)
    hot.hold_file(Path("/ckpt/gpu-123.snap"))        # restoreprof warm --hold
    loaded = hot.preload(fd, "gpu-123.snap", cfg)    # a preload request; None: not hot
    hot.offer(fd, "gpu-123.snap")                    # after a page-cache preload (auto-hold)
    with hot.restoring(): ...                        # a restore: auto-hold intakes give way
    hot.status()                                     # what is held, honestly counted

A restore always comes first: while one is served (restoring()), no auto-hold intake runs. Those
under way are cancelled (the C intake stops between records' pinning and between pieces, and
frees what it pinned; on the H200, a restore under a 17 GB intake ran at a quarter of its
speed), counted in status as intakes_cancelled, and taken in again once no restore runs; offers
made meanwhile wait for that too. An explicit hold (--hold) is what the user asked for and is
never cancelled.

Nothing here serves unchecked memory:
- a snapshot is taken in only if every chunk matches its table's crc32c, else nothing is kept;
- a request is served hot only when the file it names is the one taken in: the same device,
  inode, size and mtime, and a byte-identical table (its SHA-256 is what status shows), so a
  replaced or rewritten snapshot is never served from a stale copy;
- each chunk is checked again against that table as it is sent.

The held memory stays within a budget; the least recently used snapshots not being sent at the
moment make room for a new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import engine
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.preload import PreloadedSnapshot

MIB = 1 << 20
PAGE_BYTES = 4096
MAX_RECORDS = engine.MAX_PRELOAD_ALLOCATIONS
INTAKE_NICENESS = 10  # auto-hold's intake, after a restore
INTAKE_CANCELLED = -2  # rp_hot_intake's answer once its cancel token is set (RP_HOT_CANCELLED)


class IntakeCancelled(RestoreprofError):
    """An auto-hold intake gave way to a restore: nothing was kept, nothing was refused."""


def default_budget_bytes() -> int:
    """A quarter of this host's memory: enough for one large model (16 GB of weights on a
    128 GiB host), while pinned memory (never swapped, never reclaimed) stays a minority."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 // 4
    except (OSError, ValueError, IndexError):
        pass
    return 0


class HotBuffer(ctypes.Structure):  # struct rp_hot_buffer in shim/shim.h
    _fields_ = [("address", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("host", ctypes.c_void_p), ("device", ctypes.c_int32), ("pad", ctypes.c_int32)]


def _library() -> ctypes.CDLL:
    lib = engine.library()
    if not getattr(lib, "_hot_declared", False):
        lib.rp_hot_table.restype = ctypes.c_long
        lib.rp_hot_table.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_long,
                                     ctypes.c_char_p, ctypes.c_size_t]
        lib.rp_hot_intake.restype = ctypes.c_long
        lib.rp_hot_intake.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(HotBuffer),
                                      ctypes.c_long, ctypes.POINTER(ctypes.c_int),
                                      ctypes.c_char_p, ctypes.c_size_t]
        lib.rp_hot_free.restype = None
        lib.rp_hot_free.argtypes = [ctypes.POINTER(HotBuffer), ctypes.c_long]
        lib.rp_hot_free_cancelled.restype = ctypes.c_long
        lib.rp_hot_free_cancelled.argtypes = []
        lib.rp_hot_cancelled_bytes.restype = ctypes.c_ulonglong
        lib.rp_hot_cancelled_bytes.argtypes = []
        lib.rp_snapshot_preload_hot.restype = ctypes.c_long
        lib.rp_snapshot_preload_hot.argtypes = [
            ctypes.c_char_p, ctypes.c_long, ctypes.POINTER(HotBuffer), ctypes.c_long,
            ctypes.POINTER(engine.EngineParams), ctypes.POINTER(engine.Preloaded), ctypes.c_long,
            ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint64)]
        lib._hot_declared = True
    return lib


def read_table(fd: int) -> bytes:
    """The snapshot's table (header, records, checksums), as the engine reads it."""
    lib = _library()
    err = ctypes.create_string_buffer(512)
    size = 1 << 16
    while True:
        out = ctypes.create_string_buffer(size)
        n = lib.rp_hot_table(fd, out, size, err, len(err))
        if n < 0:
            raise RestoreprofError(f"not a usable snapshot: {err.value.decode(errors='replace')}",
                                   hint="hold a gpu-*.snap file or a checkpoint folder made "
                                        "by 'restoreprof checkpoint'")
        if n <= size:
            return out.raw[:n]
        size = n


@dataclass(frozen=True)
class SnapshotIdentity:
    """What makes a snapshot file the one a hot copy was taken from."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    table_sha256: str

    @classmethod
    def of(cls, fd: int) -> tuple[SnapshotIdentity, bytes]:
        """The identity of the snapshot open on fd, and its table."""
        st = os.fstat(fd)
        table = read_table(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                   hashlib.sha256(table).hexdigest()), table


@dataclass
class HotSnapshot:
    """One snapshot held hot: its identity, the table it was checked against, its buffers."""

    name: str
    identity: SnapshotIdentity
    table: bytes
    buffers: ctypes.Array
    count: int
    held_bytes: int      # pinned, as the kernel counts it (each buffer whole pages)
    intake_s: float
    last_used: float = field(default_factory=time.monotonic)
    served: int = 0
    users: int = 0       # requests sending from it now: it is not freed under them
    evicted: bool = False
    last_send_s: tuple[float, ...] = ()  # the last send's (make memory, copy, export) seconds

    def describe(self) -> dict:
        return {"name": self.name, "bytes": self.held_bytes, "records": self.count,
                "intake_s": round(self.intake_s, 3), "served": self.served,
                "idle_s": round(time.monotonic() - self.last_used, 1),
                "last_send_s": dict(zip(("make_memory", "copy", "export"), self.last_send_s,
                                        strict=False)),
                "table_sha256": self.identity.table_sha256[:16]}

    def ranges(self) -> list[list[int]]:
        return [[b.host, _pages(b.bytes)] for b in self.buffers[:self.count] if b.host]

    def free(self) -> None:
        if self.count:
            _library().rp_hot_free(self.buffers, self.count)
            self.count = 0


def _pages(n: int) -> int:
    return (n + PAGE_BYTES - 1) // PAGE_BYTES * PAGE_BYTES


class HotSnapshots:
    """The warm pool's hot set: snapshots in pinned memory, within budget_bytes (LRU)."""

    def __init__(self, budget_bytes: int, threads: int = 16, auto_hold: bool = True) -> None:
        self.budget_bytes = max(0, budget_bytes)
        self.threads = threads
        self.auto_hold = auto_hold and self.budget_bytes > 0
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], HotSnapshot] = {}
        self._reserved_bytes = 0   # taken in right now, not yet held
        self._intake: set[tuple[int, int]] = set()
        self.evictions = 0
        self.refused = 0
        self._intakes: list[threading.Thread] = []  # auto-hold intakes in the background
        self._closing = False
        self._restores = 0  # restores being served now: no auto-hold intake runs meanwhile
        # each auto-hold intake under way, by snapshot: its own cancel token (rp_hot_intake
        # reads it); one at a time per snapshot, from the offer on
        self._cancels: dict[tuple[int, int], ctypes.c_int] = {}
        # offers made while a restore ran (a dup of the descriptor, the name): taken in after
        self._waiting: dict[tuple[int, int], tuple[int, str]] = {}
        self.intakes_cancelled = 0

    # --- taking snapshots in ---

    def hold_file(self, path: Path) -> HotSnapshot:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise RestoreprofError(f"cannot open {path}: {exc.strerror}",
                                   hint="name a gpu-*.snap file or a checkpoint folder") from None
        try:
            return self.hold(fd, str(path))
        finally:
            os.close(fd)

    def hold(self, fd: int, name: str, cancel: ctypes.c_int | None = None) -> HotSnapshot:
        """Take the snapshot open on fd into pinned memory (every chunk checked); evicts the
        least recently used ones to make room. Raises when it cannot be held, IntakeCancelled
        once cancel (this intake's own token; None: never) is set before it is."""
        identity, table = SnapshotIdentity.of(fd)
        key = (identity.device, identity.inode)
        # an upper bound (data, table, alignment), exact once held: the file's size for a
        # snapshot holding its bytes, the table's total_bytes for one of chunks (version 3)
        need = max(identity.size, struct.unpack_from("<Q", table, 32)[0])
        with self._lock:
            current = self._held.get(key)
            if current is not None and current.identity == identity:
                current.last_used = time.monotonic()
                return current
            if key in self._intake:
                raise RestoreprofError(f"{name} is being taken in already",
                                       hint="wait for it; 'restoreprof warm' prints when it is")
            self._make_room(need, name, replacing=key)
            self._reserved_bytes += need
            self._intake.add(key)
        try:
            hot = self._intake_fd(fd, name, identity, table, cancel)
        finally:
            with self._lock:
                self._reserved_bytes -= need
                self._intake.discard(key)
        with self._lock:
            if self._closing:  # released while this was read: nothing may stay behind
                hot.free()
                raise RestoreprofError(f"{name}: the pool is stopping",
                                       hint="start 'restoreprof warm' again to hold it")
            old = self._held.pop(key, None)
            if old is not None:  # the same inode, rewritten: the old copy goes
                self._retire(old)
            self._held[key] = hot
        return hot

    def offer(self, fd: int, name: str) -> threading.Thread | None:
        """After a restore read name from the page cache: take it in, in the background, when
        auto-hold is on and it fits the budget (evicting older ones). Never raises; the caller
        keeps fd (it is duplicated here)."""
        if not self.auto_hold or self._closing:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        token = ctypes.c_int(0)  # this intake's own: a cancel meant for another never reaches it
        with self._lock:  # one lock with restoring(): an intake it does not see waits for it
            held = self._held.get(key)
            fresh = held is not None and (held.identity.size, held.identity.mtime_ns) == \
                (st.st_size, st.st_mtime_ns)
            if fresh or st.st_size > self.budget_bytes or key in self._intake or \
                    key in self._cancels:
                return None
            own = os.dup(fd)
            if self._restores:  # taken in once no restore runs (the newest offer of it)
                replaced = self._waiting.pop(key, None)
                self._waiting[key] = (own, name)
                if replaced is not None:
                    os.close(replaced[0])
                return None
            self._cancels[key] = token

        def take() -> None:
            # Below the restored processes, which start to run now: the intake's readers are
            # this thread's, and inherit its niceness.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), INTAKE_NICENESS)
            try:
                self.hold(own, name, cancel=token)
            except IntakeCancelled:
                with self._lock:
                    self.intakes_cancelled += 1
                    del self._cancels[key]
                self.offer(own, name)  # again once the restore that came first is done
            except RestoreprofError:
                self.refused += 1  # counted in status; the page-cache path still serves it
            finally:
                with self._lock:
                    if self._cancels.get(key) is token:
                        del self._cancels[key]
                os.close(own)

        thread = threading.Thread(target=take, name="hot-intake", daemon=True)
        with self._lock:
            self._intakes = [t for t in self._intakes if t.is_alive()] + [thread]
        thread.start()
        return thread

    @contextlib.contextmanager
    def restoring(self) -> Iterator[int]:
        """A restore being served: every auto-hold intake under way is cancelled at once (its
        thread stops within one record's pinning or one piece, never waited for here, and
        keeps what it pinned aside: unpinning holds the driver's locks), and none starts until
        the last restore ends; then what the cancelled ones pinned is freed, and they and the
        offered ones are taken in. Yields how many intakes were told to stop."""
        with self._lock:
            self._restores += 1
            for token in self._cancels.values():
                token.value = 1
            asked = len(self._cancels)
        try:
            yield asked
        finally:
            with self._lock:
                self._restores -= 1
                last = self._restores == 0
                waiting = self._waiting if last else {}
                if last:
                    self._waiting = {}
            if last:
                _library().rp_hot_free_cancelled()
            for own, name in waiting.values():
                try:
                    self.offer(own, name)
                finally:
                    os.close(own)

    def _intake_fd(self, fd: int, name: str, identity: SnapshotIdentity, table: bytes,
                   cancel: ctypes.c_int | None = None) -> HotSnapshot:
        buffers = (HotBuffer * MAX_RECORDS)()
        err = ctypes.create_string_buffer(512)
        start = time.monotonic()
        count = _library().rp_hot_intake(fd, self.threads, buffers, MAX_RECORDS,
                                         None if cancel is None else ctypes.byref(cancel),
                                         err, len(err))
        if count == INTAKE_CANCELLED:
            raise IntakeCancelled(f"taking {name} in gave way to a restore; nothing was kept",
                                  hint="it is taken in again once no restore runs")
        if count < 0:
            raise RestoreprofError(f"{name} could not be held hot: "
                                   f"{err.value.decode(errors='replace')}",
                                   hint="restores of it still read it from the page cache")
        kept = (HotBuffer * max(count, 1))(*buffers[:count])  # not the whole 2 MiB array
        hot = HotSnapshot(name, identity, table, kept, count,
                          sum(_pages(b.bytes) for b in kept[:count] if b.host),
                          time.monotonic() - start)
        # The file may have changed while it was read: then the copy matches neither.
        if SnapshotIdentity.of(fd)[0] != identity:
            hot.free()
            raise RestoreprofError(f"{name} changed while it was taken in; nothing was kept",
                                   hint="hold it again once it is written")
        return hot

    def _make_room(self, need: int, name: str, replacing: tuple[int, int]) -> None:
        """Evict least recently used snapshots until need fits (lock held)."""
        if need > self.budget_bytes:
            self.refused += 1
            raise RestoreprofError(
                f"{name} needs {need / MIB:.0f} MiB of pinned memory, more than the hot budget "
                f"of {self.budget_bytes / MIB:.0f} MiB",
                hint="start 'restoreprof warm' with a larger --hold-mib")
        for key, hot in sorted(self._held.items(), key=lambda kv: kv[1].last_used):
            if self.held_bytes() + self._reserved_bytes + need <= self.budget_bytes:
                return
            if hot.users == 0 or key == replacing:
                del self._held[key]
                self._retire(hot)
                self.evictions += 1
        if self.held_bytes() + self._reserved_bytes + need > self.budget_bytes:
            self.refused += 1
            raise RestoreprofError(
                f"no room for {name} ({need / MIB:.0f} MiB): the hot snapshots are in use",
                hint="retry after the running restores, or raise --hold-mib")

    @staticmethod
    def _retire(hot: HotSnapshot) -> None:
        hot.evicted = True
        if hot.users == 0:
            hot.free()  # else the last user frees it (preload)

    # --- serving ---

    def preload(self, fd: int, name: str, cfg: OptimizerConfig) -> PreloadedSnapshot | None:
        """The snapshot open on fd, loaded into exportable GPU memory from its hot copy; None
        when it is not held hot or the file is not the one taken in (the caller reads the
        file). Raises when the hot copy fails its checks (it is then dropped)."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        with self._lock:
            hot = self._held.get(key)
            if hot is None or (hot.identity.size, hot.identity.mtime_ns) != (st.st_size,
                                                                              st.st_mtime_ns):
                return None
            hot.users += 1
        try:
            if SnapshotIdentity.of(fd)[0] != hot.identity:
                return None  # a rewritten table with the same size and mtime: not ours
            return self._send(hot, name, cfg)
        finally:
            with self._lock:
                hot.users -= 1
                hot.last_used = time.monotonic()
                if hot.evicted and hot.users == 0:
                    hot.free()

    def _send(self, hot: HotSnapshot, name: str, cfg: OptimizerConfig) -> PreloadedSnapshot:
        params = engine.EngineParams.of(replace(cfg, threads=cfg.send_threads or cfg.threads))
        items = (engine.Preloaded * MAX_RECORDS)()
        err = ctypes.create_string_buffer(512)
        start = time.monotonic()
        phase_ns = (ctypes.c_uint64 * 3)()
        count = _library().rp_snapshot_preload_hot(hot.table, len(hot.table), hot.buffers,
                                                   hot.count, ctypes.byref(params), items,
                                                   len(items), err, len(err), phase_ns)
        if count < 0:
            with self._lock:  # a copy that failed its checks is never tried again
                if self._held.get((hot.identity.device, hot.identity.inode)) is hot:
                    del self._held[(hot.identity.device, hot.identity.inode)]
                    hot.evicted = True
            raise RestoreprofError(f"preloading {name} from its hot copy failed: "
                                   f"{err.value.decode(errors='replace')}",
                                   hint="the hot copy was dropped; the pool reads the file")
        hot.served += 1
        # where the last send's time went: making the GPU memory, the copy, exporting it
        hot.last_send_s = tuple(round(ns / 1e9, 4) for ns in phase_ns)
        return PreloadedSnapshot(Path(name), items, count, time.monotonic() - start)

    # --- accounting ---

    def held_bytes(self) -> int:
        return sum(h.held_bytes for h in self._held.values())

    def pinned_ranges(self) -> list[list[int]]:
        with self._lock:
            return [r for h in self._held.values() for r in h.ranges()]

    def status(self) -> dict:
        """What is held, for describe, doctor and the TUI: bytes pinned now (held and being
        taken in), the budget, and each snapshot."""
        with self._lock:
            return {"budget_bytes": self.budget_bytes, "held_bytes": self.held_bytes(),
                    # being taken in, and kept by cancelled intakes until the restore is over
                    "intake_bytes": self._reserved_bytes + _library().rp_hot_cancelled_bytes(),
                    "auto_hold": self.auto_hold,
                    "evictions": self.evictions, "refused": self.refused,
                    "intakes_cancelled": self.intakes_cancelled,
                    "intakes_waiting": len(self._waiting),
                    "snapshots": [h.describe() for h in sorted(self._held.values(),
                                                               key=lambda h: -h.last_used)]}

    def release(self, timeout_s: float = 120) -> None:
        """Free every hot copy, after the intakes under way, told to stop (the driver must
        outlive them)."""
        self._closing = True
        with self._lock:
            for token in self._cancels.values():
                token.value = 1
            waiting, self._waiting = self._waiting, {}
        for own, _name in waiting.values():
            os.close(own)
        deadline = time.monotonic() + timeout_s
        for thread in list(self._intakes):
            thread.join(max(0.0, deadline - time.monotonic()))
        _library().rp_hot_free_cancelled()  # what the intakes told to stop had pinned
        with self._lock:
            for hot in self._held.values():
                self._retire(hot)
            self._held.clear()


def snapshots_in(target: Path) -> list[Path]:
    """The GPU snapshots a --hold names: the file itself, or each gpu-*.snap of a checkpoint
    folder."""
    if target.is_dir():
        found = sorted(target.glob("gpu-*.snap"))
        if not found:
            raise RestoreprofError(f"{target} holds no GPU snapshot (gpu-*.snap)",
                                   hint="checkpoint a process started with 'restoreprof exec' "
                                        "(only offloaded GPU memory can be held hot)")
        return found
    if not target.exists():
        raise RestoreprofError(f"{target} does not exist",
                               hint="name a checkpoint folder or a gpu-*.snap file in one")
    return [target]

