"""Running CRIU: dump and restore, with their logs kept and their failures explained."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.system.paths import criu_path, criu_version  # noqa: F401 (re-exported)

DUMP_LOG = "criu-dump.log"
RESTORE_LOG = "criu-restore.log"


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


def dump(pid: int, directory: Path, *, leave_running: bool, shell_job: bool, extra: list[str]) -> None:
    cmd = [criu_path(), "dump", "-t", str(pid), "-D", str(directory), "-o", DUMP_LOG, "-v4"]
    if leave_running:
        cmd.append("--leave-running")
    if shell_job:
        cmd.append("--shell-job")
    cmd += extra
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RestoreprofError(
            f"criu dump of PID {pid} failed (exit {result.returncode}):\n    "
            f"{_tail(directory / DUMP_LOG) or result.stderr.strip()}",
            hint=f"the full log is {directory / DUMP_LOG}",
        )


def restore(directory: Path, *, shell_job: bool, pidfile: Path, extra: list[str],
            leave_stopped: bool = False) -> int:
    """criu restore --restore-detached; returns the PID of the restored tree's root.
    leave_stopped: every restored process is left stopped (SIGCONT resumes it)."""
    cmd = [criu_path(), "restore", "-D", str(directory), "-o", RESTORE_LOG, "-v4",
           "--restore-detached", "--pidfile", str(pidfile)]
    if shell_job:
        cmd.append("--shell-job")
    if leave_stopped:
        cmd.append("--leave-stopped")
    cmd += extra
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RestoreprofError(
            f"criu restore from {directory} failed (exit {result.returncode}):\n    "
            f"{_tail(directory / RESTORE_LOG) or result.stderr.strip()}",
            hint=f"the checkpoint is untouched; the full log is {directory / RESTORE_LOG}",
        )
    return int(pidfile.read_text().strip())


def check() -> tuple[bool, str]:
    """criu check: (works, what it said)."""
    try:
        path = criu_path()
    except RestoreprofError as exc:
        return False, str(exc)
    result = subprocess.run([path, "check"], capture_output=True, text=True, env=os.environ)
    said = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode == 0, said[-1] if said else ""
