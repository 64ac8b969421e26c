"""Checkpoint and restore as a Python API; the CLI, profiler, optimizer and tuner call these.

Checkpoint: (offload GPU memory through the interception library) -> driver lock + checkpoint
of every CUDA process -> criu dump -> manifest.
Restore: verify the manifest and CRIU's metadata images -> criu restore (processes left
stopped), with the page images' check, cuInit and the preload of offloaded GPU memory (by a
warm pool where one runs) overlapped -> resume once every image passed -> per CUDA process, in
parallel: driver restore -> unlock -> (adopt the preloaded GPU memory, or reload it).
A failure at any step puts the processes back the way they were, or says how to.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from restoreprof import __version__
from restoreprof.checkpoint import criu, gpu
from restoreprof.checkpoint.compat import refuse_unrestorable
from restoreprof.checkpoint.manifest import (
    MANIFEST_NAME,
    Manifest,
    ProcessRecord,
    is_page_data,
    record_images,
    verify_images,
)
from restoreprof.checkpoint.steps import Step, StepClock
from restoreprof.checkpoint.tree import comm, exists, is_stopped, process_tree, resume_stopped
from restoreprof.errors import RestoreprofError, require_root
from restoreprof.optimizer.config import OptimizerConfig

PIDFILE_NAME = "restored.pid"


@dataclass
class CheckpointResult:
    directory: Path
    manifest: Manifest
    steps: list[Step]

    def to_dict(self) -> dict:
        return {"directory": str(self.directory), "steps": [asdict(s) for s in self.steps],
                "processes": [asdict(p) for p in self.manifest.processes],
                "images_bytes": sum(i["bytes"] for i in self.manifest.images)}


@dataclass
class RestoreResult:
    directory: Path
    root_pid: int
    pids: list[int]
    cuda_pids: list[int]
    steps: list[Step]
    notes: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return (max(s.end_ns for s in self.steps) - min(s.start_ns for s in self.steps)) / 1e9

    def to_dict(self) -> dict:
        return {"directory": str(self.directory), "root_pid": self.root_pid, "pids": self.pids,
                "cuda_pids": self.cuda_pids, "steps": [asdict(s) for s in self.steps],
                "total_s": self.total_s, "notes": self.notes}


def _prepare_directory(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        what = "a checkpoint" if (directory / MANIFEST_NAME).exists() else "not empty"
        raise RestoreprofError(f"{directory} is {what}",
                               hint="choose a new or empty folder; restoreprof never overwrites one")
    directory.mkdir(parents=True, exist_ok=True)


def checkpoint(pid: int, directory: Path, *, leave_running: bool = False, offload: bool = True,
               lock_timeout_ms: int = 10_000, criu_args: list[str] | None = None,
               optimizer=None, store: Path | None = None, sync: bool = False) -> CheckpointResult:
    """store: the snapshot store to put GPU memory chunks in (restoreprof.store), else each
    snapshot's own folder; sync: report success only once everything is on disk."""
    session = _begin_store_session(store, directory, sync) if store and offload else None
    try:
        return _checkpoint(pid, directory, leave_running=leave_running, offload=offload,
                           lock_timeout_ms=lock_timeout_ms, criu_args=criu_args,
                           optimizer=optimizer, session=session, sync=sync)
    finally:
        if session:
            session.end()


def _begin_store_session(store: Path, directory: Path, sync: bool):
    """Issue 15's store: a shared hold on it from the first chunk to the manifest."""
    from restoreprof.store.session import StoreSession

    return StoreSession.begin(store, Path(directory).resolve(), sync)


def _checkpoint(pid: int, directory: Path, *, leave_running: bool, offload: bool,
                lock_timeout_ms: int, criu_args: list[str] | None, optimizer, session,
                sync: bool) -> CheckpointResult:
    require_root("restoreprof checkpoint")
    criu.criu_path()  # fail early, before anything is touched
    tree = process_tree(pid)
    names = {p: comm(p) for p in tree}
    stopped = {p for p in tree if is_stopped(p)}
    directory = Path(directory).resolve()
    clock = StepClock()
    cuda_pids = clock.run("find CUDA processes", gpu.cuda_processes, tree)
    refuse_unrestorable(cuda_pids)
    _prepare_directory(directory)

    offloaded: dict[int, dict] = {}
    optimizer = optimizer or OptimizerConfig.load()  # as restore(): never the bare defaults
    if offload:
        offloaded = clock.run("offload GPU memory", gpu.offload_all, cuda_pids, directory, optimizer,
                              session, sync)
    try:
        clock.run("GPU lock + checkpoint", gpu.lock_and_checkpoint, cuda_pids, lock_timeout_ms)
    except RestoreprofError:
        gpu.reload_all(offloaded, directory, optimizer)
        raise
    shell_job = criu.needs_shell_job(pid, tree)
    try:
        clock.run("criu dump", criu.dump, pid, directory, leave_running=leave_running,
                  shell_job=shell_job, extra=criu_args or [])
    except RestoreprofError as exc:
        # Nothing was lost: give the processes their GPUs back and let them run on.
        gpu.resume_all(cuda_pids, offloaded, directory, optimizer)
        raise RestoreprofError(f"{exc}\n  The processes were resumed and keep running.") from exc
    if leave_running:
        clock.run("GPU resume (leave running)", gpu.resume_all, cuda_pids, offloaded, directory,
                  optimizer)
    else:
        _wait_gone(tree)

    manifest = Manifest(
        root_pid=pid,
        processes=[ProcessRecord(p, names[p], p in cuda_pids,
                                 "checkpointed" if p in cuda_pids else None, offloaded.get(p),
                                 stopped=p in stopped)
                   for p in tree],
        gpus=gpu.gpu_records() if cuda_pids else [],
        shell_job=shell_job,
        versions=_versions(bool(cuda_pids)),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if session:  # the store's write-ahead reference, before the manifest completes the checkpoint
        clock.run("store reference", session.reference, offloaded)
    manifest.images = clock.run("checksum images", record_images, directory)
    if sync:
        clock.run("sync images", _make_durable, directory)
    manifest.steps = [{"name": s.name, "seconds": round(s.seconds, 6)} for s in clock.steps]
    manifest.save(directory)
    if sync:
        _make_durable(directory)  # the manifest, and its rename
    return CheckpointResult(directory, manifest, clock.steps)


def _make_durable(directory: Path) -> None:
    from restoreprof.store.session import make_durable

    make_durable(directory)


def restore(directory: Path, *, gpu_map: dict[str, str] | None = None, parallel: bool = True,
            verify: bool = True, criu_args: list[str] | None = None, optimizer=None,
            gpu_only: bool = False) -> RestoreResult:
    require_root("restoreprof restore")
    directory = Path(directory).resolve()
    manifest = Manifest.load(directory)
    clock = StepClock()
    cuda_pids = manifest.cuda_pids
    optimizer = optimizer or OptimizerConfig.load()
    pairs = gpu.gpu_pairs(manifest.gpus, gpu_map) if cuda_pids else []

    if gpu_only:  # retry the GPU step of a restore whose CRIU step succeeded
        clock.run("GPU restore", gpu.restore_all, cuda_pids, manifest, directory, pairs,
                  parallel, optimizer, clock)
        return RestoreResult(directory, manifest.root_pid, [p.pid for p in manifest.processes],
                             cuda_pids, clock.steps)

    criu.criu_path()
    taken = [p.pid for p in manifest.processes if exists(p.pid)]
    if taken:
        raise RestoreprofError(
            f"PID {taken[0]} is in use, and CRIU restores processes with their original PIDs",
            hint=f"stop the process now holding PID {taken[0]} (is the original still running?)",
        )
    # Every image's size and the contents of those that steer CRIU are checked first; the page
    # data (most of the bytes) is hashed while CRIU restores, and CRIU leaves the processes
    # stopped: none of them runs an instruction until every image has passed.
    check = None
    if verify:
        # GPU snapshots are tables naming their chunks by BLAKE3-256: verified here (SHA-256)
        # like any image; the chunks are checked by the engine as it copies them (issue 15).
        snapshots = ()
        clock.run("verify images", verify_images, directory, manifest, skip=snapshots,
                  only=lambda name: not is_page_data(name))
        check = _start_page_check(directory, manifest, snapshots, clock)
    # cuInit runs in this process while CRIU works: the driver's restore needs it, and it does
    # not need CRIU.
    warm = gpu.start_prewarm(optimizer, clock) if cuda_pids else None
    # Offloaded GPU memory is loaded here meanwhile, for each process to adopt once it is back;
    # a GPU remap changes devices, so then the processes reload it themselves.
    preloads = gpu.start_preloads(manifest, directory, optimizer, clock) \
        if cuda_pids and optimizer.preload and optimizer.parallel and not pairs else None
    # The image check reads every image; read-ahead helps only where it was skipped.
    readahead = _start_readahead(directory, optimizer) if not verify else None
    pidfile = directory / PIDFILE_NAME
    pidfile.unlink(missing_ok=True)
    try:
        try:
            root = clock.run("criu restore", criu.restore, directory,
                             shell_job=manifest.shell_job, pidfile=pidfile,
                             extra=criu_args or [], leave_stopped=check is not None)
        except RestoreprofError:
            if check:
                check.result()  # a damaged image explains a CRIU failure better than its log
            raise
        finally:
            pidfile.unlink(missing_ok=True)
            if readahead:
                _finish_readahead(readahead, clock)
        if check:
            _resume_after_page_check(check, manifest, clock)
        notes = []
        if cuda_pids:
            warm.wait()
            notes += clock.run("GPU restore", gpu.restore_all, cuda_pids, manifest, directory,
                               pairs, parallel, optimizer, clock, preloads)
    finally:
        if preloads:
            preloads.release()  # what a failure left unadopted
    return RestoreResult(directory, root, [p.pid for p in manifest.processes], cuda_pids,
                         clock.steps, notes)


def _start_page_check(directory: Path, manifest: Manifest, snapshots: tuple[str, ...],
                      clock: StepClock) -> Future:
    """Hash the page data on a thread of its own; result() waits and raises on damage. (GPU
    snapshots' chunks are not here: the engine checks each one's BLAKE3 as it loads it.)"""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-check")
    check = pool.submit(clock.run, "verify page images", verify_images, directory, manifest,
                        skip=snapshots, only=is_page_data)
    pool.shutdown(wait=False)  # the check runs on
    return check


def _pass_page_check_or_kill(check: Future, manifest: Manifest) -> None:
    """Resume the processes CRIU left stopped once every image passed; else kill them."""
    pids = [p.pid for p in manifest.processes]
    try:
        check.result()
    except RestoreprofError as exc:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise RestoreprofError(f"{exc.args[0]}\n  The restored processes were killed before "
                               "they ran; the checkpoint is untouched.", hint=exc.hint) from exc
    # one stopped when checkpointed stays stopped, as CRIU left it
    stuck = resume_stopped([r.pid for r in manifest.processes if not r.stopped])
    if stuck:
        raise RestoreprofError(f"PIDs {stuck} stay stopped after the restore",
                               hint=f"resume them with 'kill -CONT {' '.join(map(str, stuck))}'")


def _resume_after_page_check(check: Future, manifest: Manifest, clock: StepClock) -> None:
    clock.run("resume processes", _pass_page_check_or_kill, check, manifest)


def _start_readahead(directory: Path, optimizer: OptimizerConfig):
    if not optimizer.readahead:
        return None
    from restoreprof.optimizer.readahead import ReadAhead

    start = time.monotonic_ns()
    readahead = ReadAhead(directory, threads=optimizer.threads).start()
    readahead.started_ns = start
    return readahead


def _finish_readahead(readahead, clock: StepClock) -> None:
    stats = readahead.stop()
    clock.steps.append(Step("image read-ahead (overlapped)", readahead.started_ns,
                            readahead.started_ns + int(stats.seconds * 1e9)))


def _wait_gone(pids: list[int], timeout_s: float = 30) -> None:
    """CRIU kills a dumped tree; wait until the kernel has reaped it, so its PIDs are free."""
    deadline = time.monotonic() + timeout_s
    while any(exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def _versions(with_cuda: bool) -> dict:
    versions = {"restoreprof": __version__, "kernel": platform.release(),
                "criu": ".".join(map(str, criu.criu_version(criu.criu_path()) or ()))}
    if with_cuda:
        versions["cuda_driver"] = gpu.driver_version_string()
    versions["host"] = os.uname().nodename
    return versions
