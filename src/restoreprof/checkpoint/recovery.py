"""Finishing or undoing a checkpoint or restore from its journal: the one place that knows how.

The command itself calls these when it fails or is interrupted, and its guardian calls them when
the command died (kill -9). Every step is idempotent, so a second run after a partial first one
does no harm.

Checkpoint: before CRIU dumps, put the processes back (driver restore + unlock of each CUDA
process, offloaded memory reloaded through the library, CRIU left nothing). Once CRIU's dump has
completed, finish it: CRIU's process list, the checksums and the manifest. A completed dump is
never thrown away: with the processes gone (CRIU killed them), it is their only copy.

Restore: processes restored by CRIU stay stopped until every image has passed its check. An
interrupted restore kills them before they run; past the check, it brings them all the way back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from restoreprof.checkpoint import pstree, trust
from restoreprof.checkpoint.exits import alive, wait_gone
from restoreprof.checkpoint.journal import Journal, checkpoint_journal, restore_journal
from restoreprof.checkpoint.manifest import MANIFEST_NAME, Manifest, ProcessRecord, record_images
from restoreprof.checkpoint.tree import is_stopped, resume_stopped
from restoreprof.checkpoint.trust import CHUNK_DIR_SUFFIX
from restoreprof.errors import RestoreprofError
from restoreprof.store.session import make_durable

DUMP_SUCCESS_LINE = "Dumping finished successfully"  # criu dump -v4, its last line on success
CRIU_EXIT_WAIT_S = 600.0


def wait_criu(pid: int | None, verb: str, directory: Path) -> None:
    """Wait for the CRIU run of a dead command: by its noted PID, or (when the command died
    before it could note it) by its command line."""
    from restoreprof.checkpoint.criu import running_criu

    for criu_pid in [int(pid)] if pid else running_criu(verb, directory):
        wait_gone([criu_pid], timeout_s=CRIU_EXIT_WAIT_S, zombies_count=False)


def dump_succeeded(directory: Path, log_name: str) -> bool:
    try:
        with open(directory / log_name, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
            return DUMP_SUCCESS_LINE.encode() in log.read()
    except OSError:
        return False


# --- checkpoint -----------------------------------------------------------------------------


def put_back(data: dict, directory: Path, driver_used: bool = True) -> list[str]:
    """Undo a checkpoint whose dump did not complete: the GPU side back in every process
    (driver restore + unlock, offloaded memory reloaded). driver_used: whether the checkpoint
    got as far as the driver's lock (before it, the driver has nothing to give back and is not
    asked). Returns what could not be done.

    A stopped process (SIGSTOP, or a debugger) is asked nothing: the driver answers through the
    process itself (its state query waited for good on the H200) and the library runs in it.
    It is reported, with the way on: resume it, then --recover asks again."""
    problems: list[str] = []
    cuda_pids = [p for p in data.get("cuda_pids", []) if alive(p)] if driver_used else []
    offloaded = {int(k): v for k, v in data.get("offloaded", {}).items()}
    shim_pids = [p for p in data.get("shim_pids", []) if alive(p)]
    stopped = sorted(p for p in {*cuda_pids, *shim_pids} if is_stopped(p))
    for pid in stopped:
        problems.append(f"PID {pid} is stopped (SIGSTOP, or a debugger), so neither the driver "
                        f"nor its library can be asked to give its GPU state back: resume it "
                        f"('kill -CONT {pid}') and run 'restoreprof checkpoint --recover -D "
                        f"{directory}'")
    cuda_pids = [p for p in cuda_pids if p not in stopped]
    shim_pids = [p for p in shim_pids if p not in stopped]
    if cuda_pids:
        from restoreprof.cuda import driver

        for pid in cuda_pids:
            try:
                if driver.process_state(pid) == "checkpointed":
                    driver.process_restore(pid)
                if driver.process_state(pid) == "locked":
                    driver.process_unlock(pid)
            except RestoreprofError as exc:
                problems.append(f"PID {pid}: driver restore/unlock failed: {exc.message}")
    for pid in shim_pids:  # an offload that was under way may have finished since
        record = offloaded.get(pid) or {"snapshot": f"gpu-{pid}.snap"}
        try:
            _reload_if_offloaded(pid, directory / record["snapshot"])
        except RestoreprofError as exc:
            problems.append(f"PID {pid}: GPU memory reload failed: {exc.message}; "
                            f"{directory / record['snapshot']} is kept")
    return problems


def _reload_if_offloaded(pid: int, snapshot: Path) -> None:
    from restoreprof.optimizer.control import ShimControl

    control = ShimControl(pid, timeout_s=120.0)
    if control.status().get("state") == "running":
        return  # never offloaded, or reloaded already
    try:
        control.reload(snapshot)
    except RestoreprofError:
        control.reload(snapshot, None, safe=True)


def _clear(directory: Path) -> None:
    """Remove a put-back checkpoint's partial files, so the folder can be used again."""
    for entry in os.scandir(directory):
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False) and entry.name.endswith(CHUNK_DIR_SUFFIX):
                shutil.rmtree(entry.path)  # a GPU snapshot's own chunks (a store's stay)


def roll_back_checkpoint(directory: Path, journal: Journal) -> list[str]:
    problems = put_back(journal.data, directory,
                        driver_used=journal.phase not in ("started", "offloading"))
    if problems:
        journal.write("held", problems=problems)
        trust.make_private(directory)
    else:
        _clear(directory)  # the journal too
    return problems


def finish_checkpoint(directory: Path, journal: Journal, log_name: str,
                      phase: Callable[[str], None] | None = None) -> Manifest:
    """Write the manifest of a completed dump: CRIU's own process list, every file's checksums.
    phase: the command's step sequence (StepClock.sequence), told where each part begins."""
    phase = phase or (lambda name: None)
    data = journal.data
    steps = list(data.get("steps", []))  # the command's, up to CRIU's dump (journal "dumped")
    if data.get("leave_running"):
        if data.get("cuda_pids"):
            phase("GPU memory put back")
        start = time.monotonic()
        problems = put_back(data, directory)
        if problems:
            raise RestoreprofError(f"the checkpoint is complete, but {'; '.join(problems)}",
                                   hint="see 'restoreprof restore --help' for --gpu-only")
        if data.get("cuda_pids"):
            steps.append({"name": "GPU memory put back",
                          "seconds": round(time.monotonic() - start, 6)})
    phase("checksum images")
    start = time.monotonic()
    trust.make_private(directory)
    criu_pids = pstree.pids(directory)
    stopped, names = set(data.get("stopped", [])), data.get("names", {})
    cuda, offloaded = set(data.get("cuda_pids", [])), data.get("offloaded", {})
    coverage, restore_tids = data.get("coverage", {}), data.get("restore_tids", {})
    manifest = Manifest(
        root_pid=criu_pids[0],
        processes=[ProcessRecord(p, names.get(str(p), "?"), p in cuda,
                                 "checkpointed" if p in cuda else None, offloaded.get(str(p)),
                                 stopped=p in stopped, coverage=coverage.get(str(p)),
                                 restore_tid=restore_tids.get(str(p)))
                   for p in criu_pids],
        gpus=data.get("gpus", []), shell_job=bool(data.get("shell_job")),
        versions=data.get("versions", {}), created=data.get("created", ""),
    )
    manifest.images = record_images(directory)
    manifest.steps = [*steps, {"name": "checksum images",
                               "seconds": round(time.monotonic() - start, 6)}]
    sync = bool(data.get("sync"))
    if sync:  # checkpoint --sync: the images on disk before the manifest claims them
        phase("sync images")
        start = time.monotonic()
        make_durable(directory)
        manifest.steps.append({"name": "sync images", "seconds": round(time.monotonic() - start, 6)})
    phase("manifest")
    manifest.save(directory, durable=sync)
    trust.make_private(directory)
    if sync:
        make_durable(directory)  # the manifest, and its rename
    journal.remove()
    return manifest


def recover_checkpoint(directory: Path) -> str:
    """The guardian's work for a checkpoint command that died: finish or put back."""
    from restoreprof.checkpoint.criu import DUMP_LOG

    journal = Journal.read(checkpoint_journal(directory).path)
    if journal is None or (directory / MANIFEST_NAME).exists():
        if journal:
            journal.remove()
        return "nothing to do"
    with trust.private_umask():
        if journal.phase == "dumping":  # CRIU runs on: its outcome decides
            wait_criu(journal.data.get("criu_pid"), "dump", directory)
        if journal.phase in ("dumping", "dumped") and dump_succeeded(directory, DUMP_LOG):
            finish_checkpoint(directory, journal, DUMP_LOG)
            return "the dump had completed: the checkpoint was finished"
        problems = roll_back_checkpoint(directory, journal)
    return ("put back: the processes run on" if not problems
            else "put back only in part: " + "; ".join(problems))


# --- restore --------------------------------------------------------------------------------


def kill_unrun(pids: list[int], reaped_within_s: float = 5.0) -> None:
    """Kill restored processes that never ran (CRIU left them stopped), and wait a little for
    their PIDs to be reaped: a restore that follows needs them free."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + reaped_within_s
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def recover_restore(work_dir: Path, abort: bool = False) -> str:
    """The guardian's work for a restore command that died: kill what never ran, bring back
    what passed its checks. abort (restore --abort): kill whatever that restore left."""
    from restoreprof.checkpoint.lock import folder_lock

    journal = Journal.read(restore_journal(work_dir).path)
    if journal is None:
        return "nothing to do"
    directory = Path(journal.data.get("directory", "/"))
    with folder_lock(directory) if directory.is_dir() else contextlib.nullcontext():
        journal = Journal.read(journal.path)  # as it stands now that the lock is ours
        return recover_restore_locked(journal, abort) if journal else "nothing to do"


def recover_restore_locked(journal: Journal, abort: bool) -> str:
    data = journal.data
    pids = [int(p) for p in data.get("pids", [])]
    if journal.phase == "criu":
        if data.get("lazy_pages"):
            # The command's lazy page server died with it, and CRIU's restorer, which holds its
            # own userfaultfd, waits forever on its first fault. Its processes never ran:
            # killing them ends CRIU, as it ends any CRIU whose tasks die.
            kill_unrun(pids)
        wait_criu(data.get("criu_pid"), "restore", Path(data.get("directory", "/")))
    if journal.phase in ("criu", "restored") or (abort and journal.phase in ("verified", "gpu")):
        kill_unrun(pids)
        journal.remove()
        return f"killed the restored processes {pids}; the checkpoint is untouched"
    if journal.phase in ("verified", "gpu"):
        notes = bring_back(data)
        journal.remove()
        return "brought back after the image check" + (f" ({'; '.join(notes)})" if notes else "")
    journal.remove()
    return "nothing had been restored"


def bring_back(data: dict) -> list[str]:
    """Resume processes that passed every check, then the GPU step for each CUDA process."""
    stuck = resume_stopped([int(p) for p in data.get("resume", []) if alive(int(p))])
    notes = [f"PIDs {stuck} stay stopped"] if stuck else []
    cuda_pids = [int(p) for p in data.get("cuda_pids", []) if alive(int(p))]
    if cuda_pids:
        from restoreprof.checkpoint import gpu
        from restoreprof.checkpoint.steps import StepClock
        from restoreprof.optimizer.config import OptimizerConfig

        directory = Path(data["directory"])
        try:
            manifest = Manifest.load(directory)
            pairs = gpu.gpu_pairs(manifest.gpus, data.get("gpu_map") or None)
            notes += gpu.restore_all(cuda_pids, manifest, directory, pairs, True,
                                     OptimizerConfig.load(), StepClock())
        except RestoreprofError as exc:
            notes.append(f"GPU restore failed ({exc.message}): the processes are held by the "
                         f"driver; 'restoreprof restore --gpu-only -D {directory}' retries")
    return notes
