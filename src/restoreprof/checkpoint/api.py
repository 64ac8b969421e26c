"""Checkpoint and restore as a Python API; the CLI, profiler, optimizer and tuner call these.

Checkpoint: (offload GPU memory through the interception library) -> driver lock + checkpoint
of every CUDA process -> criu dump -> manifest.
Restore: verify the manifest -> criu restore, with cuInit and context pre-warm overlapped ->
per CUDA process, in parallel: driver restore -> unlock -> (reload offloaded GPU memory).
A failure at any step puts the processes back the way they were, or says how to.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from restoreprof import __version__
from restoreprof.checkpoint import criu, gpu
from restoreprof.checkpoint.manifest import (
    MANIFEST_NAME,
    Manifest,
    ProcessRecord,
    record_images,
    verify_images,
)
from restoreprof.checkpoint.steps import Step, StepClock
from restoreprof.checkpoint.tree import comm, exists, process_tree
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
               optimizer=None) -> CheckpointResult:
    require_root("restoreprof checkpoint")
    criu.criu_path()  # fail early, before anything is touched
    tree = process_tree(pid)
    names = {p: comm(p) for p in tree}
    directory = Path(directory).resolve()
    clock = StepClock()
    cuda_pids = clock.run("find CUDA processes", gpu.cuda_processes, tree)
    _prepare_directory(directory)

    offloaded: dict[int, dict] = {}
    if offload:
        offloaded = clock.run("offload GPU memory", gpu.offload_all, cuda_pids, directory, optimizer)
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
                                 "checkpointed" if p in cuda_pids else None, offloaded.get(p))
                   for p in tree],
        gpus=gpu.gpu_records() if cuda_pids else [],
        shell_job=shell_job,
        versions=_versions(bool(cuda_pids)),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest.images = clock.run("checksum images", record_images, directory)
    manifest.steps = [{"name": s.name, "seconds": round(s.seconds, 6)} for s in clock.steps]
    manifest.save(directory)
    return CheckpointResult(directory, manifest, clock.steps)


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
    if verify:
        skip = tuple(p.offload["snapshot"] for p in manifest.processes if p.offload)
        clock.run("verify images", verify_images, directory, manifest, skip=skip)
    taken = [p.pid for p in manifest.processes if exists(p.pid)]
    if taken:
        raise RestoreprofError(
            f"PID {taken[0]} is in use, and CRIU restores processes with their original PIDs",
            hint=f"stop the process now holding PID {taken[0]} (is the original still running?)",
        )
    # cuInit, the contexts and the staging pool warm up in this process while CRIU works: the
    # driver's restore needs cuInit, and none of it needs CRIU.
    warm = gpu.start_prewarm(optimizer, clock) if cuda_pids else None
    # Verification has just read every image; read-ahead helps only where it was skipped.
    readahead = _start_readahead(directory, optimizer) if not verify else None
    pidfile = directory / PIDFILE_NAME
    pidfile.unlink(missing_ok=True)
    try:
        root = clock.run("criu restore", criu.restore, directory, shell_job=manifest.shell_job,
                         pidfile=pidfile, extra=criu_args or [])
    finally:
        pidfile.unlink(missing_ok=True)
        if readahead:
            _finish_readahead(readahead, clock)
    notes = []
    if cuda_pids:
        warm.wait()
        notes += clock.run("GPU restore", gpu.restore_all, cuda_pids, manifest, directory, pairs,
                           parallel, optimizer, clock)
    return RestoreResult(directory, root, [p.pid for p in manifest.processes], cuda_pids,
                         clock.steps, notes)


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
