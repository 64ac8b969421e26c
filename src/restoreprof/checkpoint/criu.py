"""Running CRIU: dump and restore, with their logs kept and their failures explained."""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from restoreprof.checkpoint.interrupts import deferred_interrupts
from restoreprof.errors import RestoreprofError, TargetFailure
from restoreprof.system.paths import criu_path, criu_version  # noqa: F401 (re-exported)

DUMP_LOG = "criu-dump.log"
RESTORE_LOG = "criu-restore.log"
PIDFILE_NAME = "restored.pid"


def _tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in text if "Error" in line or "error" in line]
    return "\n    ".join((errors or text)[-lines:])


def needs_shell_job(pid: int, tree: list[int]) -> bool:
    """CRIU needs --shell-job when the tree's session or group leader lives outside the tree."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    pgid, sid = int(fields[2]), int(fields[3])
    return pgid not in tree or sid not in tree


def _run(cmd: list[str], on_start: Callable[[int], None] | None) -> tuple[int, str, bool]:
    """Run CRIU in a session of its own and wait for it, Ctrl-C and SIGTERM included: CRIU
    interrupted half way leaves processes half-dumped or half-restored (every signal blocked),
    so it always runs to its end, and the caller decides what to do with the result. Its stderr
    goes to an unlinked file, not a pipe: if this process dies, CRIU must not die of SIGPIPE.
    Returns (exit status, stderr, whether an interrupt arrived meanwhile)."""
    with tempfile.TemporaryFile() as stderr, deferred_interrupts() as interrupt:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
        if on_start:
            on_start(proc.pid)
        proc.wait()
        stderr.seek(0)
        return proc.returncode, stderr.read().decode(errors="replace"), interrupt.arrived


def running_criu(verb: str, directory: Path) -> list[int]:
    """PIDs of CRIU processes running `verb` on directory (found by their command line), for
    a guardian whose command died before it could note CRIU's PID."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _is_criu_on(args, verb.encode(), os.fsencode(directory)):
            found.append(int(entry.name))
    return found


def _is_criu_on(args: list[bytes], verb: bytes, directory: bytes) -> bool:
    # criu itself, or its private loader running it (setup.sh's wrapper: ld.so ... criu ARGS)
    if not any(os.path.basename(a) == b"criu" for a in args[:5]) or verb not in args:
        return False
    return any(a == b"-D" and b == directory for a, b in itertools.pairwise(args))


def dump(pid: int, directory: Path, *, leave_running: bool, shell_job: bool, extra: list[str],
         on_start: Callable[[int], None] | None = None) -> bool:
    """criu dump; returns whether an interrupt arrived while it ran (it ran to its end)."""
    cmd = [criu_path(), "dump", "-t", str(pid), "-D", str(directory), "-o", DUMP_LOG, "-v4"]
    if leave_running:
        cmd.append("--leave-running")
    if shell_job:
        cmd.append("--shell-job")
    cmd += extra
    returncode, stderr, interrupted = _run(cmd, on_start)
    if returncode != 0:
        raise TargetFailure(
            f"criu dump of PID {pid} failed (exit {returncode}):\n    "
            f"{_tail(directory / DUMP_LOG) or stderr.strip()}",
            hint=f"the full log is {directory / DUMP_LOG}",
        )
    return interrupted


def restore(directory: Path, work_dir: Path, *, shell_job: bool, extra: list[str],
            on_start: Callable[[int], None] | None = None) -> tuple[int, bool]:
    """criu restore --restore-detached --leave-stopped: every restored process is left
    stopped (SIGCONT resumes it). CRIU writes its log, PID file and stats into work_dir, never
    into the checkpoint folder (which may be read-only). Returns (root PID, interrupted)."""
    log, pidfile = work_dir / RESTORE_LOG, work_dir / PIDFILE_NAME
    for stale in (log, pidfile, work_dir / "stats-restore"):
        stale.unlink(missing_ok=True)  # CRIU follows a planted link; nothing is left to follow
    cmd = [criu_path(), "restore", "-D", str(directory), "-W", str(work_dir), "-o", RESTORE_LOG,
           "-v4", "--restore-detached", "--pidfile", str(pidfile), "--leave-stopped"]
    if shell_job:
        cmd.append("--shell-job")
    cmd += extra
    returncode, stderr, interrupted = _run(cmd, on_start)
    if returncode != 0:
        raise TargetFailure(
            f"criu restore from {directory} failed (exit {returncode}):\n    "
            f"{_tail(log) or stderr.strip()}",
            hint=f"the checkpoint is untouched; the full log is {log}",
        )
    try:
        return int(pidfile.read_text().strip()), interrupted
    except (OSError, ValueError) as exc:
        raise TargetFailure(f"criu restore wrote no usable PID file {pidfile} ({exc})",
                            hint=f"see {log}") from None


def check() -> tuple[bool, str]:
    """criu check: (works, what it said)."""
    try:
        path = criu_path()
    except RestoreprofError as exc:
        return False, str(exc)
    result = subprocess.run([path, "check"], capture_output=True, text=True, env=os.environ)
    said = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, said[-1] if said else ""
