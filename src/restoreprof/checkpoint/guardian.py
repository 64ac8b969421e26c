"""A small process that finishes or undoes a checkpoint or restore whose command died.

The command starts it in a session of its own (a terminal's Ctrl-C and a kill of the command's
process group miss it) with the read end of a pipe. The command writes "done" when it has
finished or put everything back itself; if the pipe closes without it (kill -9, a crash), the
guardian reads the journal and acts on it (see checkpoint.recovery). It runs as a plain script,
so it starts on the standard library alone; restoreprof is imported only when there is work.

    guard = Guardian.start("restore", work_dir)   # ... journal phases ...
    guard.release()                              # all done: the guardian exits
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

_DONE = b"done"


class Guardian:
    def __init__(self, proc: subprocess.Popen | None, write_fd: int | None) -> None:
        self._proc = proc
        self._write_fd = write_fd

    @classmethod
    def start(cls, kind: str, folder: Path, log: Path | None = None) -> Guardian:
        """Watch this process; on its death, recover the checkpoint (kind "checkpoint", folder
        the checkpoint folder) or the restore (kind "restore", folder its work folder)."""
        read_fd, write_fd = os.pipe()
        stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, __file__, kind, str(folder), str(read_fd)],
                pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True, cwd="/")
        finally:
            os.close(read_fd)
            if log:
                stderr.close()
        # reap it when it exits, so a long-lived caller (the API, a test) keeps no zombie
        threading.Thread(target=proc.wait, daemon=True).start()
        return cls(proc, write_fd)

    def release(self) -> None:
        """The work is finished or undone: the guardian exits without touching anything."""
        if self._write_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._write_fd, _DONE)
        os.close(self._write_fd)
        self._write_fd = None


def _wait_for_command(read_fd: int) -> bool:
    """True when the command said done; False when it died first."""
    said = b""
    while True:
        try:
            chunk = os.read(read_fd, 16)
        except InterruptedError:
            continue
        if not chunk:
            return said.startswith(_DONE)
        said += chunk


def main(argv: list[str]) -> int:
    kind, folder, read_fd = argv[0], Path(argv[1]), int(argv[2])
    if _wait_for_command(read_fd):
        return 0
    from restoreprof.checkpoint import recovery

    if kind == "checkpoint":
        outcome = recovery.recover_checkpoint(folder)
    else:
        outcome = recovery.recover_restore(folder)
    print(f"restoreprof guardian ({kind} {folder}): {outcome}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Run as a script: its own folder must not shadow standard modules (lock, tree, ...).
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    raise SystemExit(main(sys.argv[1:]))
