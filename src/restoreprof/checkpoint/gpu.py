"""The GPU side of checkpoint and restore: the driver's process API, and GPU memory offload.

Offload: where a process runs with restoreprof's interception library, its GPU memory is
written to DIR/gpu-<pid>.snap through the library's control channel and released before the
driver's checkpoint. On restore it is preloaded by restoreprof while CRIU works and adopted by
the process after the driver's restore (or, failing that, streamed back inside the process).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from restoreprof.checkpoint.tree import is_stopped, maps_library
from restoreprof.checkpoint.trust import CHUNK_DIR_SUFFIX
from restoreprof.cuda import driver
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import TargetStoppedError

SHIM_MARKER = "librestoreprof_shim"
PRELOAD_STEP = "GPU memory preload (overlapped)"
POOL_PRELOAD_STEP = "GPU memory preload (warm pool, overlapped)"


def snapshot_name(pid: int) -> str:
    return f"gpu-{pid}.snap"


def cuda_processes(tree: list[int]) -> list[int]:
    """The PIDs of tree that hold CUDA state, per the driver. Raises for locked/checkpointed
    ones, and for a stopped one: the driver answers through the process itself, so it is never
    asked about a stopped process (its state query waited for good on a stopped process on the
    H200, driver 580)."""
    users = [pid for pid in tree if maps_library(pid, "libcuda.so")]
    if not users:
        return []
    refuse_stopped(users, "nothing was touched")
    try:
        driver.init()
    except driver.NoDriverError as exc:
        raise RestoreprofError(
            f"PID {users[0]} uses CUDA, but restoreprof cannot reach the CUDA driver: {exc.args[0]}",
            hint="run restoreprof where the process's GPU driver is installed",
        ) from exc
    found = []
    for pid in users:
        state = driver.process_state(pid)
        if state is None:
            continue  # maps libcuda but has no context: nothing on the GPU to save
        if state != "running":
            raise RestoreprofError(
                f"PID {pid} is already {state} by the CUDA driver",
                hint="another checkpoint is in progress, or a restore did not finish: "
                     "'restoreprof restore -D DIR --gpu-only' resumes it",
            )
        found.append(pid)
    return found


def _map_parallel(fn, pids: list[int], parallel: bool = True) -> list:
    if len(pids) <= 1 or not parallel:
        return [fn(pid) for pid in pids]
    with ThreadPoolExecutor(max_workers=len(pids)) as pool:
        return list(pool.map(fn, pids))


def restore_thread_ids(pids: list[int]) -> dict[int, int]:
    """The driver's restore thread of each of pids that has one, asked while they run (the
    driver asks the process itself: a stopped one never answers, H200, driver 580)."""
    found = {}
    for pid in pids:
        tid = driver.restore_thread_id(pid)
        if tid is not None:
            found[pid] = tid
    return found


def refuse_stopped(pids: list[int], done: str) -> None:
    """Raises if any of pids (CUDA processes) is stopped now (SIGSTOP, or a debugger): the
    driver checkpoints a process's GPU state through the process itself, and its library serves
    the offload, so neither may be asked about a stopped one (the driver's state query waited
    for good on the H200, driver 580). Asked before each step that would ask them: a process may
    be stopped by another hand at any point of a checkpoint. done: what the checkpoint had done
    so far, for the message."""
    stopped = [pid for pid in pids if is_stopped(pid)]
    if stopped:
        listed = " ".join(map(str, stopped))
        raise RestoreprofError(
            f"PID {listed} uses CUDA and is stopped (SIGSTOP, or a debugger): the CUDA driver "
            "checkpoints a process's GPU state through the process itself, which a stopped "
            f"one cannot answer (the checkpoint would wait for good); {done}",
            hint=f"resume it ('kill -CONT {listed}') and checkpoint it running; the checkpoint "
                 "stops it while it is taken",
        )


def lock_and_checkpoint(pids: list[int], lock_timeout_ms: int) -> None:
    locked, done = [], []
    try:
        for pid in pids:
            driver.process_lock(pid, lock_timeout_ms)
            locked.append(pid)
        for pid in pids:
            driver.process_checkpoint(pid)
            done.append(pid)
    except RestoreprofError:
        for pid in done:
            driver.process_restore(pid)
        for pid in locked:
            driver.process_unlock(pid)
        raise


# --- offload through the interception library ------------------------------------------------


def _shim_control(pid: int):
    from restoreprof.optimizer.control import ShimControl

    return ShimControl(pid)


def has_shim(pid: int) -> bool:
    return maps_library(pid, SHIM_MARKER)


def _in_chunks_of(store, optimizer):
    """optimizer with the store's chunk size (else the store's chunks would never match); as it
    is without a store."""
    if store is None:
        return optimizer
    return replace(optimizer or OptimizerConfig(), chunk_mb=store.chunk_mb)


def offload_all(pids: list[int], directory: Path, optimizer, store=None,
                sync: bool = False) -> dict[int, dict]:
    """Offload the GPU memory of every process running with the library; {pid: record}. Each
    snapshot's chunks go to its own folder beside it, or to store (a store.session.StoreSession)."""
    records = {}
    optimizer = _in_chunks_of(store, optimizer)
    with_shim = [p for p in pids if has_shim(p)]
    if store is not None and with_shim:
        store.pending(with_shim, [directory / snapshot_name(p) for p in with_shim])
    for pid in with_shim:
        name = snapshot_name(pid)
        start = time.monotonic()
        try:
            result = _shim_control(pid).offload(directory / name, optimizer,
                                                chunk_dir=store.chunk_dir if store else None,
                                                sync=sync)
        except TargetStoppedError:
            # Stopped since the checkpoint began: the driver may not be asked about it either.
            # What was offloaded before it is put back, and the checkpoint refused.
            reload_all(records, directory, optimizer)
            refuse_stopped([pid], "the processes offloaded before it have their GPU memory back")
            raise  # resumed meanwhile: its library did not answer the offload all the same
        except RestoreprofError:
            # One process refused (or failed): those offloaded before it get their memory back,
            # so the whole tree runs on as it was.
            reload_all(records, directory, optimizer)
            raise
        records[pid] = {"snapshot": name, "bytes": int(result.get("bytes", 0)),
                        "written_bytes": int(result.get("written", 0)),
                        "seconds": round(time.monotonic() - start, 6),
                        # the program's cached free blocks, freed before the offload
                        "reserved_bytes": int(result.get("reserved", 0)),
                        "released_bytes": int(result.get("released", 0)),
                        "release": str(result.get("release", "unknown")),
                        # blocks freed inside allocations the program keeps: saved as zeros
                        # (free_blocks: used, stale (the GPU was used since), none)
                        "free_bytes": int(result.get("free", 0)),
                        "free_blocks": str(result.get("free_blocks", "none")),
                        # inside the library: its release hooks, then the snapshot (to READY);
                        # the rest of its time gave the memory back
                        "release_seconds": round(float(result.get("release_seconds", 0.0)), 6),
                        "ready_seconds": round(float(result.get("ready_seconds", 0.0)), 6),
                        "library_seconds": round(float(result.get("seconds", 0.0)), 6)}
    return records


def precopy_all(pids: list[int], directory: Path, optimizer, store=None) -> dict[int, dict]:
    """checkpoint --pre-copy, while the processes run on: write the chunks each offload would
    write (into the folder or store that offload will use), then wait until they are on disk.
    The offload that follows, with the processes stopped, then copies and hashes every byte
    again but writes only the chunks that changed, and its writes (and CRIU's) are not
    throttled behind gigabytes of dirty page cache. {pid: record}; a process whose library
    cannot pre-copy is noted and left to the offload, which decides (and explains) for it."""
    optimizer = _in_chunks_of(store, optimizer)
    records = {}
    for pid in [p for p in pids if has_shim(p)]:
        # the folder the offload will write to (offload_all): the store's, or the snapshot's own
        folder = Path(store.chunk_dir) if store else \
            directory / f"{snapshot_name(pid)}{CHUNK_DIR_SUFFIX}"
        try:
            result = _shim_control(pid).precopy(folder, optimizer)
        except RestoreprofError as exc:
            print(f"restoreprof: note: PID {pid}: no pre-copy ({exc.args[0]}); its offload "
                  f"writes every chunk", file=sys.stderr)
            continue
        records[pid] = {"folder": folder, "bytes": int(result.get("bytes", 0)),
                        "written_bytes": int(result.get("written", 0)),
                        "seconds": round(float(result.get("seconds", 0.0)), 6)}
    return records


def write_back(records: dict[int, dict]) -> None:
    """Wait until what the pre-copy wrote is on disk: syncfs of each chunk folder's file system
    (which writes back whatever else is dirty there too)."""
    for folder in sorted({record["folder"] for record in records.values()}):
        _syncfs(folder)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc().syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise RestoreprofError(f"writing {path} back to disk failed: {os.strerror(error)}",
                                   hint="check the disk (dmesg) and its free space")
    finally:
        os.close(fd)


# --- coverage: what was offloaded, per allocation kind, and what the driver copies itself ---

KIND_NAMES = {"cuMemAlloc": "cuMemAlloc", "vmm": "app VMM", "async": "stream-ordered"}


def coverage_all(pids: list[int], offloaded: dict[int, dict]) -> dict[int, dict]:
    """Per CUDA process, after the offload and before the driver's checkpoint: what the library
    offloaded per kind (its STATUS), and what the driver is left to copy (NVML's count of the
    process's GPU memory now: the context, allocations the library does not serve such as
    managed or host-registered memory; None where NVML cannot tell)."""
    from restoreprof.system.gpus import process_gpu_memory_bytes

    coverage = {}
    for pid in pids:
        record = offloaded.get(pid)
        kinds: dict[str, dict] = {}
        # A report, never a reason to fail the checkpoint: what cannot be read stays unknown.
        with contextlib.suppress(Exception):
            if record is not None:
                kinds = {k: v for k, v in _shim_control(pid).kinds().items() if v["count"]}
        left = None
        with contextlib.suppress(Exception):
            left = process_gpu_memory_bytes(pid)
        coverage[pid] = {
            "offloaded": kinds,
            "offloaded_bytes": sum(k["bytes"] for k in kinds.values()),
            # what holds the program's data: the blocks it had freed are saved as zeros
            "saved_bytes": record["bytes"] - record.get("free_bytes", 0) if record else 0,
            "free_bytes": (record or {}).get("free_bytes", 0),
            "reserved_bytes": (record or {}).get("reserved_bytes", 0),
            "released_bytes": (record or {}).get("released_bytes", 0),
            "release": (record or {}).get("release", "not offloaded"),
            "left_to_driver_bytes": left,
            "shim": has_shim(pid),
        }
    return coverage


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def coverage_summary(processes) -> list[str]:
    """Lines for `restoreprof checkpoint`: per CUDA process, what was offloaded by kind, what
    was left to the driver, and saved against reserved bytes."""
    lines = []
    for p in processes:
        c = getattr(p, "coverage", None)
        if not p.cuda or c is None:
            continue
        lines.append(f"GPU memory of PID {p.pid} ({p.comm}):")
        for kind, k in c["offloaded"].items():
            lines.append(f"  offloaded       {KIND_NAMES.get(kind, kind):<15}{k['count']:>6} "
                         f"allocations {_gb(k['bytes']):>10}")
        if not c["shim"]:
            lines.append("  offloaded       nothing: not started with 'restoreprof exec'")
        elif not c["offloaded"]:
            lines.append("  offloaded       nothing" + (" (offload off)" if c["release"] ==
                                                        "not offloaded" else ""))
        left = c["left_to_driver_bytes"]
        left_text = _gb(left) + " (NVML)" if left is not None else "unknown (no NVML here)"
        lines.append(f"  left to driver  {left_text}: context, managed, host-registered...")
        if c["shim"] and c["release"] != "not offloaded":
            reserved = max(c["reserved_bytes"], c["saved_bytes"])
            lines.append(f"  saved           {_gb(c['saved_bytes'])} of {_gb(reserved)} reserved")
            if c.get("free_bytes"):
                lines.append(f"  not saved       {_gb(c['free_bytes'])} of blocks freed inside "
                             "allocations (restored as zeros)")
            lines.append(f"  freed first     {_gb(max(0, c['released_bytes']))} of cached blocks "
                         f"({_release_text(c['release'])})")
    return lines


def _release_text(outcome: str) -> str:
    return {"ok": "release hook: ok",
            "none": "no release hook: not Python, or exec --no-release-caches",
            "off": "checkpoint --no-release-caches",
            "timeout": "release hook timed out: cached blocks saved too",
            "busy": "release hook still busy from an earlier checkpoint",
            "failed": "release hook failed: see the program's stderr"}.get(
                outcome, f"release: {outcome}")


def _reload(pid: int, directory: Path, record: dict, optimizer) -> str | None:
    """Reload offloaded memory; on a fast-path failure retry once on the plain path."""
    control = _shim_control(pid)
    try:
        control.reload(directory / record["snapshot"], optimizer)
        return None
    except RestoreprofError as first:
        try:
            control.reload(directory / record["snapshot"], None, safe=True)
        except RestoreprofError as second:
            raise RestoreprofError(
                f"PID {pid}: GPU memory reload failed ({second}); the process is restored but "
                f"held before its next CUDA call; {directory / record['snapshot']} was not loaded",
                hint="retry with 'restoreprof restore -D DIR --gpu-only'",
            ) from second
        return f"PID {pid}: fast reload failed ({first}); reloaded on the plain path"


class Preloads:
    """Offloaded snapshots loaded into GPU memory by this process while CRIU restores (see
    optimizer.preload); each process adopts its own after the driver's restore."""

    def __init__(self, offload: dict[int, dict], directory: Path, optimizer, clock) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preload")
        self._futures = {pid: self._pool.submit(self._load, pid, directory / rec["snapshot"],
                                                optimizer, clock)
                         for pid, rec in offload.items()}
        self._pool.shutdown(wait=False)

    @staticmethod
    def _load(pid: int, snapshot: Path, optimizer, clock):
        """Through the warm pool where one runs (it is warm already), else in this process."""
        from restoreprof.optimizer.pool import preload_through_pool
        from restoreprof.optimizer.preload import preload_snapshot

        start = time.monotonic_ns()
        pooled = preload_through_pool(snapshot, optimizer)
        if pooled is not None:
            clock.add(POOL_PRELOAD_STEP, start, time.monotonic_ns(), pid=pid)
            return pooled
        return clock.run(PRELOAD_STEP, preload_snapshot, snapshot, optimizer, pid=pid)

    def covers(self, pid: int) -> bool:
        return pid in self._futures

    def adopt(self, pid: int, directory: Path, record: dict, optimizer) -> str | None:
        """pid maps its preloaded memory; on any failure its snapshot is reloaded instead."""
        from restoreprof.optimizer.preload import adopt

        future = self._futures.pop(pid, None)
        loaded = None
        try:
            if future is None:
                raise RestoreprofError("nothing was preloaded")
            loaded = future.result()
            adopt(pid, loaded)
            return None
        except Exception as exc:  # the snapshot is intact: reload it inside the process
            note = _reload(pid, directory, record, optimizer)
            return f"PID {pid}: preloaded memory not adopted ({exc}); reloaded instead" + \
                (f"; {note}" if note else "")
        finally:
            if loaded is not None:
                loaded.release()

    def release(self) -> None:
        """Drop whatever was loaded and not adopted (after a failed restore)."""
        for future in self._futures.values():
            with contextlib.suppress(Exception):  # a failed preload holds nothing
                future.result().release()
        self._futures.clear()


def start_preloads(manifest, directory: Path, optimizer, clock) -> Preloads | None:
    # A process that held no GPU memory has nothing to adopt, and only a RELOAD (of its empty
    # snapshot) reopens its library's gate: without it, its next checkpoint was refused
    # ("already offloaded") and its next allocation would wait (e.g. the parent of a job's ranks).
    offload = {p.pid: p.offload for p in manifest.processes if p.offload
               and p.offload.get("bytes", 1)}
    return Preloads(offload, directory, optimizer, clock) if offload else None


def reload_all(offloaded: dict[int, dict], directory: Path, optimizer) -> list[str]:
    return [n for n in (_reload(pid, directory, rec, optimizer) for pid, rec in offloaded.items()) if n]


def resume_all(pids: list[int], offloaded: dict[int, dict], directory: Path, optimizer) -> None:
    """Undo a checkpoint in the original processes: driver restore + unlock, then reload."""
    for pid in pids:
        if driver.process_state(pid) == "checkpointed":
            driver.process_restore(pid)
        if driver.process_state(pid) == "locked":
            driver.process_unlock(pid)
    reload_all(offloaded, directory, optimizer)


def restore_all(pids: list[int], manifest, directory: Path, pairs, parallel: bool, optimizer,
                clock, preloads: Preloads | None = None) -> list[str]:
    offload = {p.pid: p.offload for p in manifest.processes if p.offload}

    def one(pid: int) -> str | None:
        try:
            return restore_one(pid)
        except Exception as exc:  # any failure: say where the process stands and how to resume
            state = driver.process_state(pid)
            raise RestoreprofError(
                f"PID {pid}: the GPU restore failed ({exc}); CRIU restored the process and the "
                f"driver holds it {state}",
                hint="fix the cause, then resume it with 'restoreprof restore -D DIR --gpu-only'",
            ) from exc

    def restore_one(pid: int) -> str | None:
        state = driver.process_state(pid)
        if state == "checkpointed":
            clock.run(HeldRestores.STEP, driver.process_restore, pid, pairs, pid=pid)
            state = "locked"
        if state == "locked":
            clock.run("GPU unlock", driver.process_unlock, pid, pid=pid)
        elif state != "running":
            raise RestoreprofError(f"PID {pid} is in CUDA state {state!r}, cannot restore it",
                                   hint="see the driver log (dmesg) and 'restoreprof doctor'")
        if pid in offload and preloads and preloads.covers(pid):
            return clock.run("GPU memory adopt", preloads.adopt, pid, directory, offload[pid],
                             optimizer, pid=pid)
        if pid in offload:
            return clock.run("GPU memory reload", _reload, pid, directory, offload[pid], optimizer,
                             pid=pid)
        return None

    return [n for n in _map_parallel(one, pids, parallel) if n]


class HeldRestores:
    """The driver's restore of each CUDA process run while its program is still held: on the
    driver's restore thread alone (checkpoint.held_thread), once CRIU is done and `passed()`
    says the images are sound, before any of the program's threads runs (as CRIU's CUDA plugin
    does it: a program thread running meanwhile could touch memory the driver has not mapped
    back yet). join() waits. A process it cannot do (the checkpoint names no restore thread,
    ptrace refuses, the driver fails) is left as it was, for restore_all after the resume, with a note;
    a restore_all that finds a process "locked" goes on from there."""

    STEP = "GPU driver restore"

    def __init__(self, manifest, pairs, clock, passed) -> None:
        records = [p for p in manifest.processes if p.cuda and not p.stopped]
        self._in_driver: dict[int, float] = {}  # PID -> when its driver's restore began
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(records)),
                                            thread_name_prefix="held-restore")
        self._futures = [self._executor.submit(self._one, p.pid, p.restore_tid, pairs, clock,
                                               passed) for p in records]
        self._executor.shutdown(wait=False)

    def _one(self, pid: int, tid: int | None, pairs, clock, passed) -> str | None:
        """No driver query here but the restore itself: the driver asks the process, and its
        threads are stopped (a state query blocked for good on the H200)."""
        from restoreprof.checkpoint.held_thread import running_alone

        try:
            if not passed():  # a damaged image: the caller kills the processes, none ran
                return None
        except Exception:  # the driver unreachable here: restore_all meets it and says so
            return None
        if tid is None:
            return f"PID {pid}: the checkpoint names no restore thread of the driver; its GPU " \
                   "state was restored after the resume"
        if not os.path.isdir(f"/proc/{pid}/task/{tid}"):  # never let another process's run
            return f"PID {pid}: the restore thread the checkpoint names ({tid}) is not one of " \
                   "its threads; its GPU state was restored after the resume"
        try:
            with running_alone(tid):
                self._in_driver[pid] = time.monotonic()
                try:
                    clock.run(HeldRestores.STEP, driver.process_restore, pid, pairs, pid=pid)
                finally:
                    self._in_driver.pop(pid, None)
        except Exception as exc:  # left to restore_all, which reports the driver's state
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return f"PID {pid}: the driver's restore on its held restore thread failed " \
                   f"({why}); tried again after the resume"
        return None

    def join_or_let_go(self, patience_s: float, let_go) -> list[str]:
        """join(); but should a driver's restore still run patience_s after it began (the
        driver may wait on a thread the hold keeps stopped), let_go() is called once (it
        resumes the processes) and the restores are then waited for, with a note."""
        notes = []
        while wait(self._futures, timeout=0.02).not_done:
            now = time.monotonic()
            slow = sorted(pid for pid, began in list(self._in_driver.items())
                          if now - began > patience_s)
            if slow:
                let_go()
                notes.append(f"PIDs {slow}: the driver's restore on the held restore thread had "
                             f"not ended after {patience_s:.0f} s; the processes were resumed "
                             "for it")
                break
        return notes + self.join()

    def join(self, timeout_s: float | None = None) -> list[str]:
        """The notes of the restores, once all have ended; RestoreprofError when one has not
        within timeout_s (the driver's call does not return: the PIDs are not free yet)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        notes = []
        for f in self._futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                note = f.result(timeout=left)
            except TimeoutError as exc:
                raise RestoreprofError(
                    f"the driver's restore of a held process did not end within {timeout_s:.0f} s",
                    hint="see the driver log (dmesg); restore again once its PIDs are free") \
                    from exc
            if note:
                notes.append(note)
        return notes


# --- GPUs --------------------------------------------------------------------------------------


def gpu_records() -> list[dict]:
    return [{"index": g.index, "name": g.name, "uuid": g.uuid} for g in driver.gpus()]


def driver_version_string() -> str:
    v = driver.driver_version()
    return f"{v // 1000}.{(v % 1000) // 10}"


def _resolve_gpu(spec: str, gpus: list[dict], what: str) -> dict:
    for g in gpus:
        if spec == str(g["index"]) or spec.lower() == g["uuid"].lower():
            return g
    known = ", ".join(f"{g['index']}={g['uuid']}" for g in gpus) or "none"
    raise RestoreprofError(f"--gpu-map: {what} GPU {spec!r} not found (known: {known})",
                           hint="name GPUs by index or by UUID as nvidia-smi -L shows them")


def gpu_pairs(saved: list[dict], gpu_map: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    """Driver GPU pairs (old UUID, new UUID) from --gpu-map OLD=NEW; OLD is a checkpoint GPU.

    The driver wants every checkpointed GPU in the pairs, so the named moves are completed to a
    one-to-one map: each GPU not named keeps its place where it is free, else takes a free one.
    """
    if not gpu_map:
        return []
    present = gpu_records()
    moves = {}
    for old, new in gpu_map.items():
        moves[_resolve_gpu(old, saved, "checkpoint's")["uuid"]] = \
            _resolve_gpu(new, present, "this machine's")["uuid"]
    if len(set(moves.values())) != len(moves):
        raise RestoreprofError("--gpu-map sends two GPUs to one", hint="map each GPU to its own")
    free = [g["uuid"] for g in present if g["uuid"] not in moves.values()]
    for gpu in saved:
        if gpu["uuid"] in moves:
            continue
        if not free:
            raise RestoreprofError(f"no GPU left here for the checkpoint's GPU {gpu['uuid']}",
                                   hint="name a target for every GPU with --gpu-map")
        target = gpu["uuid"] if gpu["uuid"] in free else free[0]
        free.remove(target)
        moves[gpu["uuid"]] = target
    return [(driver.uuid_to_bytes(old), driver.uuid_to_bytes(new)) for old, new in moves.items()]


class _PrewarmStep:
    """cuInit, done in the background while CRIU works: the driver's restore needs it.

    No context is made here: the driver's checkpoint calls need none, a preload makes its own,
    and on the H100 the restore was faster without one (8 GiB, warm pool, 8 runs each: the
    restore's steps 0.715 -> 0.68 s, its wall clock 1.39 -> 1.28 s, medians; RESULTS.md).
    """

    def __init__(self, optimizer, clock) -> None:
        from restoreprof.optimizer.prewarm import Prewarm

        self._clock = clock
        self._start_ns = time.monotonic_ns()
        self._warm = Prewarm(contexts=False).start()
        self._lock = threading.Lock()
        self._done = False

    def wait(self) -> None:
        """Until cuInit is done (any thread, any number of times: its step is noted once)."""
        with self._lock:
            if not self._done:
                ready = self._warm.wait()
                self._clock.add("prewarm: cuInit (overlapped)", self._start_ns,
                                self._start_ns + int(ready.timings.total_s * 1e9))
                self._done = True
        driver.init()  # cuda-python's view of the same driver, now initialised


def start_prewarm(optimizer, clock) -> _PrewarmStep:
    return _PrewarmStep(optimizer, clock)
