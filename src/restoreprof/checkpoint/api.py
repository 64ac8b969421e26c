"""Checkpoint and restore as a Python API; the CLI, profiler, optimizer and tuner call these.

Checkpoint: a private folder (trust) -> (offload GPU memory through the interception library)
-> driver lock + checkpoint of every CUDA process -> criu dump -> manifest of CRIU's own
process list and every file's checksums.
Restore: the folder's trust, the manifest's coverage and types, CRIU's metadata images and its
process list -> criu restore (processes left stopped; log and PID file in a work folder), with
the page images' check, cuInit and the preload of offloaded GPU memory (by a warm pool where
one runs) overlapped -> resume once every image passed -> per CUDA process, in parallel:
driver restore -> unlock -> (adopt the preloaded GPU memory, or reload it).
Each phase is journaled and watched by a guardian process (journal, guardian, recovery): a
failure or an interrupt at any point finishes the work or puts the processes back, or leaves
them held with the one command that recovers them.
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from restoreprof import __version__
from restoreprof.checkpoint import criu, gpu, lazy_pages, lock, pstree, recovery, trust
from restoreprof.checkpoint.compat import refuse_unrestorable
from restoreprof.checkpoint.exits import wait_gone
from restoreprof.checkpoint.guardian import Guardian
from restoreprof.checkpoint.interrupts import deferred_interrupts
from restoreprof.checkpoint.journal import Journal, checkpoint_journal, restore_journal
from restoreprof.checkpoint.manifest import JOURNAL_NAME, MANIFEST_NAME, Manifest, is_page_data, verify_images
from restoreprof.checkpoint.steps import Step, StepClock, StepSequence
from restoreprof.checkpoint.tree import comm, exists, is_stopped, process_tree, resume_stopped, state
from restoreprof.checkpoint.trust import private_umask
from restoreprof.errors import (
    EXIT_ENVIRONMENT,
    EXIT_TARGET,
    IntegrityError,
    Interrupted,
    RestoreprofError,
    TargetFailure,
    require_root,
)
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.store.table import is_chunked_table

GUARDIAN_LOG = "guardian.log"
PRE_COPY_STEP = "pre-copy GPU memory"
WRITE_BACK_STEP = "pre-copy write-back"
# The first step that holds the processes (an offload closes their library's gate; the
# driver's lock stops their GPU work; CRIU freezes them): a preemption's downtime starts there.
HOLDING_STEPS = ("offload GPU memory", "GPU memory coverage", "GPU lock + checkpoint", "criu dump")


@dataclass
class CheckpointResult:
    directory: Path
    manifest: Manifest
    steps: list[Step]

    @property
    def total_s(self) -> float:
        """From the first step's start to the last one's end: the steps tile the checkpoint."""
        return _span_s(self.steps)

    @property
    def downtime_s(self) -> float:
        """From the first step that holds the processes to the end: with --pre-copy, what came
        before ran while they ran on."""
        holding = [i for i, s in enumerate(self.steps) if s.name in HOLDING_STEPS]
        return _span_s(self.steps[holding[0]:]) if holding else self.total_s

    def to_dict(self) -> dict:
        return {"directory": str(self.directory), "steps": [asdict(s) for s in self.steps],
                "total_s": self.total_s, "downtime_s": self.downtime_s,
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
        return _span_s(self.steps)

    def to_dict(self) -> dict:
        return {"directory": str(self.directory), "root_pid": self.root_pid, "pids": self.pids,
                "cuda_pids": self.cuda_pids, "steps": [asdict(s) for s in self.steps],
                "total_s": self.total_s, "notes": self.notes}


def _span_s(steps: list[Step]) -> float:
    if not steps:
        return 0.0
    return (max(s.end_ns for s in steps) - min(s.start_ns for s in steps)) / 1e9


def checkpoint(pid: int, directory: Path, *, leave_running: bool = False, offload: bool = True,
               lock_timeout_ms: int = 10_000, criu_args: list[str] | None = None,
               optimizer=None, store: Path | None = None, sync: bool = False,
               pre_copy: bool = False) -> CheckpointResult:
    """store: the snapshot store to put GPU memory chunks in (restoreprof.store), else each
    snapshot's own folder; sync: report success only once everything is on disk; pre_copy:
    write the GPU memory's chunks while the processes run on, and wait until they are on disk,
    before holding them (gpu.precopy_all): the downtime then holds no bulk write.
    The result's steps follow each other with no gap: together they are the checkpoint's wall
    time."""
    require_root("restoreprof checkpoint")
    directory = Path(os.path.abspath(directory))
    clock = StepClock()
    with clock.sequence() as phase:
        session = None
        if store and offload:
            phase("store session begin")
            session = _begin_store_session(store, directory, sync)
        try:
            manifest, interrupted = _checkpoint(
                pid, directory, clock, phase, leave_running=leave_running, offload=offload,
                lock_timeout_ms=lock_timeout_ms, criu_args=criu_args, optimizer=optimizer,
                session=session, sync=sync, pre_copy=pre_copy)
        finally:
            if session:
                phase("store session end")
                session.end()
        if not leave_running:  # CRIU killed them: the command returns once they are dead
            phase("wait for exit")
            wait_gone([p.pid for p in manifest.processes], zombies_count=False)
    if interrupted:
        raise Interrupted(f"interrupted after CRIU's dump had completed: the checkpoint in "
                          f"{directory} was finished and is complete",
                          hint=f"restore it with 'restoreprof restore -D {directory}'")
    return CheckpointResult(directory, manifest, clock.steps)


def _begin_store_session(store: Path, directory: Path, sync: bool):
    """Issue 15's store: a shared hold on it from the first chunk to the manifest."""
    from restoreprof.store.session import StoreSession

    return StoreSession.begin(store, Path(directory).resolve(), sync)


def _checkpoint(pid: int, directory: Path, clock: StepClock, phase: StepSequence, *,
                leave_running: bool, offload: bool, lock_timeout_ms: int,
                criu_args: list[str] | None, optimizer, session,
                sync: bool, pre_copy: bool = False) -> tuple[Manifest, bool]:
    """The checkpoint's phases, each begun by phase(name); returns the manifest and whether an
    interrupt arrived after CRIU's dump (the checkpoint was finished regardless)."""
    phase("list processes")
    criu.criu_path()  # fail early, before anything is touched
    tree = process_tree(pid)
    names = {str(p): comm(p) for p in tree}
    stopped = sorted(p for p in tree if is_stopped(p))
    if pid == os.getpid() or pid in _ancestors():
        raise RestoreprofError(f"PID {pid} is restoreprof itself or runs it",
                               hint="checkpoint another process tree")
    phase("find CUDA processes")
    cuda_pids = gpu.cuda_processes(tree)
    phase("prepare folder")
    refuse_unrestorable(cuda_pids)
    optimizer = optimizer or OptimizerConfig.load()  # as restore(): never the bare defaults
    # For a held driver's restore: each one's restore thread, asked now, while they run (a
    # stopped CUDA process was refused: it does not answer the driver).
    restore_tids = gpu.restore_thread_ids(cuda_pids) if optimizer.held_driver_restore else {}
    shell_job = criu.needs_shell_job(pid, tree)
    with private_umask():
        trust.prepare_checkpoint_directory(directory, MANIFEST_NAME)
        # fsynced only with --sync: see checkpoint.journal for why that keeps every guarantee
        journal = checkpoint_journal(directory, durable=sync)
        journal.write("started", root_pid=pid, leave_running=leave_running, cuda_pids=cuda_pids,
                      shim_pids=[], offloaded={}, names=names, stopped=stopped, sync=sync,
                      restore_tids={str(p): t for p, t in restore_tids.items()},
                      shell_job=shell_job, gpus=gpu.gpu_records() if cuda_pids else [],
                      versions=_versions(bool(cuda_pids)),
                      created=datetime.now(UTC).isoformat(timespec="seconds"))
        phase("guardian start")
        guard = Guardian.start("checkpoint", directory)
        try:
            interrupted = _lock_and_dump(pid, directory, journal, clock, phase, offload=offload,
                                         leave_running=leave_running, shell_job=shell_job,
                                         lock_timeout_ms=lock_timeout_ms, criu_args=criu_args or [],
                                         optimizer=optimizer, session=session, sync=sync,
                                         pre_copy=pre_copy)
            # The dump completed: from here the checkpoint is finished, whatever arrives.
            with deferred_interrupts() as late:
                journal.write("dumped", steps=_step_records(phase.so_far()))
                manifest = recovery.finish_checkpoint(directory, journal, criu.DUMP_LOG, phase)
            interrupted = interrupted or late.arrived
            guard.release()
        except BaseException as exc:
            with deferred_interrupts():
                error = _settle_failed_checkpoint(exc, directory, journal)
                guard.release()
            raise error from exc
    return manifest, interrupted


def recover_checkpoint(directory: Path) -> str:
    """checkpoint --recover: finish or put back a checkpoint whose command and guardian died
    (or whose finishing failed); what it did."""
    require_root("restoreprof checkpoint --recover")
    directory = Path(os.path.abspath(directory))
    if not (directory / JOURNAL_NAME).exists():
        raise RestoreprofError(f"{directory} holds no interrupted checkpoint (no {JOURNAL_NAME})",
                               hint="nothing to recover")
    return recovery.recover_checkpoint(directory)


def _ancestors() -> set[int]:
    found, pid = set(), os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return found


def _lock_and_dump(pid: int, directory: Path, journal, clock: StepClock, phase: StepSequence,
                   *, offload: bool, leave_running: bool, shell_job: bool, lock_timeout_ms: int,
                   criu_args: list[str], optimizer, session=None, sync: bool = False,
                   pre_copy: bool = False) -> bool:
    """Offload, the driver's lock + checkpoint, criu dump; each phase journaled before it
    starts (in its own step). Returns whether an interrupt arrived while CRIU ran (it ran to
    its end)."""
    cuda_pids = journal.data["cuda_pids"]
    offloaded: dict[int, dict] = {}
    precopied: dict[int, dict] = {}
    # (no CUDA process was stopped when the checkpoint began: gpu.cuda_processes refuses one)
    if offload and cuda_pids and pre_copy:  # the processes run on meanwhile
        phase(PRE_COPY_STEP)
        precopied = gpu.precopy_all(cuda_pids, directory, optimizer, session)
        phase(WRITE_BACK_STEP)
        gpu.write_back(precopied)
    if offload and cuda_pids:
        phase("offload GPU memory")
        journal.write("offloading", shim_pids=[p for p in cuda_pids if gpu.has_shim(p)])
        offloaded = gpu.offload_all(cuda_pids, directory, optimizer, session, sync)
        for pid, record in precopied.items():
            if pid in offloaded:
                offloaded[pid]["pre_copy"] = {k: record[k]
                                              for k in ("bytes", "written_bytes", "seconds")}
        if session:  # the store's reference names every chunk; the manifest completes it later
            phase("store reference")
            session.reference(offloaded)
        journal.write("offloading", offloaded={str(p): r for p, r in offloaded.items()})
    coverage = {}
    if cuda_pids:
        # What was offloaded per kind and what the driver is left with: measured now, before
        # the driver's checkpoint takes the rest (a report only: it never fails the checkpoint).
        phase("GPU memory coverage")
        coverage = gpu.coverage_all(cuda_pids, offloaded)
    phase("GPU lock + checkpoint")
    # stopped by another hand since the checkpoint began? then the driver is not asked at all
    # (before the journal says it was: nothing of the driver's is to be put back)
    gpu.refuse_stopped(cuda_pids, "the driver was not asked")
    journal.write("gpu-locked", coverage={str(p): c for p, c in coverage.items()})
    gpu.lock_and_checkpoint(cuda_pids, lock_timeout_ms)
    phase("criu dump")
    journal.write("dumping", steps=_step_records(clock.steps))
    return criu.dump(pid, directory, leave_running=leave_running, shell_job=shell_job,
                     extra=criu_args,
                     on_start=lambda criu_pid: journal.write("dumping", criu_pid=criu_pid))


def _settle_failed_checkpoint(exc: BaseException, directory: Path, journal) -> BaseException:
    """After a failure or an interrupt: a dump that completed is finished (it may be the only
    copy of the processes), anything before it is put back. Returns the error to raise."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    if journal.phase in ("dumping", "dumped"):
        recovery.wait_criu(journal.data.get("criu_pid"), "dump", directory)
        if recovery.dump_succeeded(directory, criu.DUMP_LOG):
            try:
                recovery.finish_checkpoint(directory, journal, criu.DUMP_LOG)
            except (OSError, RestoreprofError) as late:
                return RestoreprofError(
                    f"CRIU's dump completed, but the checkpoint could not be finished: {late}",
                    exit_code=EXIT_ENVIRONMENT,
                    hint=f"the images are kept; fix the cause (free space?), then "
                         f"'restoreprof checkpoint --recover -D {directory}' finishes it")
            if interrupted:
                return Interrupted(f"interrupted after CRIU's dump had completed: the checkpoint "
                                   f"in {directory} was finished and is complete",
                                   hint=f"restore it with 'restoreprof restore -D {directory}'")
            return exc
    problems = recovery.roll_back_checkpoint(directory, journal)
    if problems:
        held = "; ".join(problems)
        return RestoreprofError(f"{exc}\n  Putting the processes back failed in part: {held}",
                                exit_code=EXIT_TARGET,
                                hint=f"see {journal.path} for where each process stands")
    if interrupted:
        return Interrupted("interrupted before CRIU's dump completed: the processes were put "
                           "back and keep running", hint="run the checkpoint again when ready")
    if isinstance(exc, RestoreprofError):
        exc.args = (f"{exc.message}\n  The processes were put back and keep running.",)
    return exc


def _step_records(steps: list[Step]) -> list[dict]:
    return [{"name": s.name, "seconds": round(s.seconds, 6)} for s in steps]


def abort_restore(directory: Path, work_dir: Path | None = None) -> str:
    """restore --abort: kill what an interrupted restore of directory left held."""
    require_root("restoreprof restore --abort")
    directory = Path(os.path.abspath(directory))
    work = lock.work_dir(directory, work_dir)
    with lock.folder_lock(directory):
        journal = Journal.read(restore_journal(work).path)
        if journal is None:
            return f"no interrupted restore of {directory} to abort (its work folder is {work})"
        return recovery.recover_restore_locked(journal, abort=True)


def restore(directory: Path, *, gpu_map: dict[str, str] | None = None, parallel: bool = True,
            verify: bool = True, criu_args: list[str] | None = None, optimizer=None,
            gpu_only: bool = False, work_dir: Path | None = None) -> RestoreResult:
    """Restore directory's checkpoint. Nothing is written into directory (it may be read-only):
    CRIU's log, the PID file and the journal go to work_dir (default: lock.default_work_dir)."""
    require_root("restoreprof restore")
    directory = Path(os.path.abspath(directory))
    trust.check_checkpoint_directory(directory)
    manifest = Manifest.load(directory)
    manifest.check_files(directory)
    work = lock.work_dir(directory, work_dir)
    with lock.folder_lock(directory):
        stale = Journal.read(restore_journal(work).path)
        if gpu_only:
            return _gpu_only(directory, manifest, stale, gpu_map, parallel, optimizer)
        if stale:  # a restore died before its guardian could act: act for it
            recovery.recover_restore_locked(stale, abort=False)
        return _restore_locked(directory, manifest, work, gpu_map=gpu_map, parallel=parallel,
                               verify=verify, criu_args=criu_args or [], optimizer=optimizer)


def _restore_locked(directory: Path, manifest: Manifest, work: Path, *, gpu_map, parallel: bool,
                    verify: bool, criu_args: list[str], optimizer) -> RestoreResult:
    clock = StepClock()
    cuda_pids = manifest.cuda_pids
    optimizer = optimizer or OptimizerConfig.load()
    pairs = gpu.gpu_pairs(manifest.gpus, gpu_map) if cuda_pids else []
    criu.criu_path()
    # a killed process keeps its PID until it is reaped: give the reaper a moment
    wait_gone([p.pid for p in manifest.processes if state(p.pid) == "Z"], timeout_s=30)
    taken = [p.pid for p in manifest.processes if exists(p.pid)]
    if taken:
        raise TargetFailure(
            f"PID {taken[0]} is in use, and CRIU restores processes with their original PIDs",
            hint=f"stop the process now holding PID {taken[0]} (is the original still running?)",
        )
    # Every image's size and the contents of those that steer CRIU are checked first; the page
    # data (most of the bytes) is hashed while CRIU restores, and CRIU leaves the processes
    # stopped: none of them runs an instruction until every image has passed.
    # A GPU snapshot of version 3 or 4 is a small table naming its chunks by BLAKE3-256: hashed
    # here like any image (the engine checks each chunk's pieces as it copies them, by the
    # table's crc32c or BLAKE3). An older one holds its bytes, each piece's crc32c checked by
    # the engine: not read a second time here.
    snapshots = tuple(p.offload["snapshot"] for p in manifest.processes
                      if p.offload and not is_chunked_table(directory / p.offload["snapshot"]))
    if verify:
        clock.run("verify images", verify_images, directory, manifest, skip=snapshots,
                  only=lambda name: not is_page_data(name))
    criu_pids = pstree.pids(directory)
    manifest.check_processes(criu_pids)
    stopped = {p.pid for p in manifest.processes if p.stopped}
    journal = restore_journal(work)
    journal.data = {"directory": str(directory), "pids": criu_pids, "gpu_map": gpu_map or {},
                    "resume": [p for p in criu_pids if p not in stopped], "cuda_pids": cuda_pids}
    journal.write("checking")
    guard = clock.run("start guardian", Guardian.start, "restore", work, log=work / GUARDIAN_LOG)
    check = warm = preloads = readahead = None
    try:
        if verify:
            check = _start_page_check(directory, manifest, snapshots, clock)
        # cuInit runs in this process while CRIU works: the driver's restore needs it, and it
        # does not need CRIU.
        warm = gpu.start_prewarm(optimizer, clock) if cuda_pids else None
        # Offloaded GPU memory is loaded here meanwhile, for each process to adopt once it is
        # back; a GPU remap changes devices, so then the processes reload it themselves.
        preloads = clock.run("start preloads", gpu.start_preloads, manifest, directory,
                             optimizer, clock) \
            if cuda_pids and optimizer.preload and optimizer.parallel and not pairs else None
        # The image check reads every image; read-ahead helps only where it was skipped.
        readahead = _start_readahead(directory, optimizer) if not verify else None
        notes = []
        held = _HeldStart(manifest, pairs, clock, check, warm) \
            if cuda_pids and optimizer.held_driver_restore else None
        resumed = False

        def let_go() -> None:  # a held driver's restore waits on the program: let it all run
            nonlocal resumed
            if check is not None:
                _pass_check_or_kill(check, criu_pids)
            _journal(clock, journal, "verified")
            clock.run("resume processes", _resume, journal.data["resume"])
            resumed = True

        try:
            root, interrupted = _criu_restore(directory, work, manifest, criu_args, journal,
                                              clock, optimizer, criu_pids, notes, held)
            if held and not interrupted:  # every page is in by now
                notes += held.join_or_let_go(HELD_PATIENCE_S, let_go)
        except RestoreprofError:
            if check:
                check.result()  # a damaged image explains a CRIU failure better than its log
            raise
        finally:
            if readahead:
                _finish_readahead(readahead, clock)
            if held:  # after a failure: the driver's restores begun under the held processes
                notes += held.join(timeout_s=60)
        if not resumed:
            _journal(clock, journal, "restored")
        if interrupted:
            raise KeyboardInterrupt
        if check is not None and not resumed:  # until it passes, the processes never ran
            _pass_check_or_kill(check, criu_pids)
        # Checked processes are brought all the way back, whatever arrives meanwhile.
        with deferred_interrupts() as late:
            if not resumed:
                _journal(clock, journal, "verified")
                clock.run("resume processes", _resume, journal.data["resume"])
            if cuda_pids:
                _journal(clock, journal, "gpu")
                warm.wait()
                notes += clock.run("GPU restore", gpu.restore_all, cuda_pids, manifest, directory,
                                   pairs, parallel, optimizer, clock, preloads)
            journal.remove()
        if late.arrived:
            notes.append("interrupted after the processes had passed every check: the restore "
                         "was completed")
        guard.release()
    except BaseException as exc:
        error = _unwind_restore(exc, journal, directory)
        guard.release()  # only once unwound: an interrupt meanwhile leaves the work to it
        raise error from exc
    finally:
        if preloads:
            preloads.release()  # what a failure left unadopted
    return RestoreResult(directory, root, criu_pids, cuda_pids, clock.steps, notes)


def _journal(clock: StepClock, journal, phase: str, **fields) -> None:
    """A write of the restore journal on the restore's path, timed as a step of its own: on a
    disk (not tmpfs) right after a large checkpoint one waited 0.1 to 0.35 s behind write-back
    (H200 VM), which a profile must show as what it is."""
    clock.run("restore journal", journal.write, phase, **fields)


HELD_PATIENCE_S = 10.0  # a held driver's restore longer than this: the processes are resumed


class _HeldStart:
    """gpu.HeldRestores, begun once CRIU has restored the processes (start), not before the
    page images have passed their check; join() waits for them (nothing when never begun)."""

    def __init__(self, manifest: Manifest, pairs, clock: StepClock, check: Future | None,
                 warm) -> None:
        self.manifest, self.pairs, self.clock, self.check = manifest, pairs, clock, check
        self.warm = warm
        self.running: gpu.HeldRestores | None = None

    def _ready(self) -> bool:
        """The driver is initialised here and every image passed (False: one did not)."""
        self.warm.wait()
        return self.check is None or self.check.exception() is None

    def start(self) -> None:
        self.running = gpu.HeldRestores(self.manifest, self.pairs, self.clock,
                                        passed=self._ready)

    def join(self, timeout_s: float | None = None) -> list[str]:
        running, self.running = self.running, None
        return running.join(timeout_s) if running else []

    def join_or_let_go(self, patience_s: float, let_go) -> list[str]:
        running, self.running = self.running, None
        return running.join_or_let_go(patience_s, let_go) if running else []


def _criu_restore(directory: Path, work: Path, manifest: Manifest, criu_args: list[str],
                  journal, clock: StepClock, optimizer: OptimizerConfig, criu_pids: list[int],
                  notes: list[str], held: _HeldStart | None = None) -> tuple[int, bool]:
    """criu restore, its processes' memory served by restoreprof's lazy page server where it
    can be (see lazy_pages); any failure there kills the processes, which never ran, and CRIU
    restores them again reading every page itself. Returns (root PID, interrupted). held, if
    given, is started as soon as CRIU's processes exist, under the page server's last pages."""
    server = why = None
    if optimizer.lazy_pages:
        why = clock.run("check lazy pages", lazy_pages.why_not, directory)
        if why is None:
            server = lazy_pages.LazyPages(
                directory, work, threads=optimizer.lazy_threads or lazy_pages.default_threads())
            clock.run("start lazy page server", server.start)
        elif why.startswith(("userfaultfd", "the page images")):
            notes.append(f"lazy pages not used: {why}")
    try:
        # a guardian must know: a CRIU whose page server died waits forever on the first fault
        _journal(clock, journal, "criu", lazy_pages=server is not None,
                 **({"lazy_not_used": why} if why else {}))
        root, interrupted = clock.run(
            "criu restore", criu.restore, directory, work, shell_job=manifest.shell_job,
            extra=criu_args + (["--lazy-pages"] if server else []),
            on_start=lambda criu_pid: journal.write("criu", criu_pid=criu_pid))
        # The driver's thread maps and unmaps memory as it works: the page server follows that,
        # so the held driver's restore runs under its last pages.
        if held and not interrupted:
            held.start()
        if server is None:
            return root, interrupted
        waited_ns = time.monotonic_ns()
        stats = server.wait()
        clock.add("lazy pages (after CRIU)", waited_ns, time.monotonic_ns())
        clock.add("host memory, lazy pages (overlapped)", stats.first_ns, stats.done_ns,
                  nbytes=stats.bytes)
        return root, interrupted
    except RestoreprofError as exc:
        if server is None:
            raise
        server.close()
        with deferred_interrupts():  # CRIU's processes never ran: none may run on missing memory
            recovery.kill_unrun(criu_pids)
            if held:  # their driver's restores end with them; then the PIDs are free
                held.join(timeout_s=60)
                recovery.kill_unrun(criu_pids)
        why = server.error or exc.message.splitlines()[0]  # the server's failure makes CRIU's
        notes.append(f"the lazy page restore failed ({why}); CRIU restored every page itself "
                     "instead")
        journal.write("criu", lazy_pages=False, lazy_failed=why)  # for whoever reads it next
        root, interrupted = clock.run(
            "criu restore (every page)", criu.restore, directory, work,
            shell_job=manifest.shell_job, extra=criu_args,
            on_start=lambda criu_pid: journal.write("criu", criu_pid=criu_pid))
        if held and not interrupted:
            held.start()
        return root, interrupted
    finally:
        if server is not None:
            server.close()


def _unwind_restore(exc: BaseException, journal, directory: Path) -> BaseException:
    """After a failure or an interrupt: processes that never ran are killed; ones that passed
    every check and then failed (the GPU step) stay held, with the way out in the message."""
    if journal.phase in ("criu", "restored"):
        with deferred_interrupts():
            recovery.wait_criu(journal.data.get("criu_pid"), "restore", directory)
            recovery.kill_unrun(journal.data["pids"])
            journal.remove()
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted("interrupted: the restored processes were killed before they ran; "
                               "the checkpoint is untouched", hint="restore again when ready")
        if isinstance(exc, RestoreprofError) and "killed before" not in exc.message:
            exc.args = (f"{exc.message}\n  The restored processes were killed before they ran; "
                        "the checkpoint is untouched.",)
        return exc
    if journal.phase in ("verified", "gpu"):  # kept: --gpu-only and --abort read it
        hint = (f"'restoreprof restore --gpu-only -D {directory}' retries the GPU step, "
                f"'restoreprof restore --abort -D {directory}' kills the processes")
        if isinstance(exc, RestoreprofError):
            exc.hint = f"{exc.hint}; {hint}" if exc.hint and "--gpu-only" not in exc.hint else \
                (exc.hint or hint)
            return exc
        return TargetFailure(f"the restore failed after the image check: {exc}", hint=hint)
    journal.remove()
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted before CRIU ran: nothing was restored",
                           hint="restore again when ready")
    return exc


def _gpu_only(directory: Path, manifest: Manifest, journal, gpu_map, parallel: bool,
              optimizer) -> RestoreResult:
    """Retry the GPU step of a restore whose CRIU step succeeded, never on a process that has
    not passed the image check, and never waiting on a stopped one (the driver would hang)."""
    if journal and journal.phase in ("criu", "restored"):
        raise IntegrityError(
            "the last restore of this checkpoint was interrupted before its images were checked: "
            "its processes must not run",
            hint=f"'restoreprof restore --abort -D {directory}' kills them; then restore again")
    pids = [p.pid for p in manifest.processes]
    resume = [p.pid for p in manifest.processes if not p.stopped]
    held = [p for p in resume if state(p) == "T"]
    if held and journal is None:
        raise TargetFailure(
            f"PIDs {held} are stopped, and no journal says whether they passed the image check",
            hint=f"'kill -CONT {' '.join(map(str, held))}' if you trust them, else kill them "
                 "and restore again")
    if held:
        resume_stopped(held)
    clock = StepClock()
    optimizer = optimizer or OptimizerConfig.load()
    cuda_pids = [p for p in manifest.cuda_pids if exists(p)]
    pairs = gpu.gpu_pairs(manifest.gpus, gpu_map) if cuda_pids else []
    notes = clock.run("GPU restore", gpu.restore_all, cuda_pids, manifest, directory, pairs,
                      parallel, optimizer, clock) if cuda_pids else []
    if journal:
        journal.remove()
    return RestoreResult(directory, manifest.root_pid, pids, cuda_pids, clock.steps, notes)


def _start_page_check(directory: Path, manifest: Manifest, snapshots: tuple[str, ...],
                      clock: StepClock) -> Future:
    """Hash the page data on a thread of its own; result() waits and raises on damage. (GPU
    snapshots' chunks are not here: the engine checks each one's pieces as it loads it.)"""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-check")
    check = pool.submit(clock.run, "verify page images", verify_images, directory, manifest,
                        skip=snapshots, only=is_page_data)
    pool.shutdown(wait=False)  # the check runs on
    return check


def _pass_check_or_kill(check: Future, pids: list[int]) -> None:
    """Wait for the page images' check; on damage, kill the processes before they run."""
    try:
        check.result()
    except RestoreprofError as exc:
        recovery.kill_unrun(pids)
        raise IntegrityError(f"{exc.message}\n  The restored processes were killed before "
                             "they ran; the checkpoint is untouched.", hint=exc.hint) from exc


def _resume(pids: list[int]) -> None:
    """Resume CRIU's processes (one stopped when checkpointed stays stopped, as CRIU left it)."""
    stuck = resume_stopped(pids)
    if stuck:
        raise TargetFailure(f"PIDs {stuck} stay stopped after the restore",
                            hint=f"resume them with 'kill -CONT {' '.join(map(str, stuck))}'")


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


def _versions(with_cuda: bool) -> dict:
    versions = {"restoreprof": __version__, "kernel": platform.release(),
                "criu": ".".join(map(str, criu.criu_version(criu.criu_path()) or ()))}
    if with_cuda:
        versions["cuda_driver"] = gpu.driver_version_string()
    versions["host"] = os.uname().nodename
    return versions
