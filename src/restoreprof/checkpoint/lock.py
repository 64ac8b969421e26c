"""One restore of a checkpoint folder at a time, and where each restore keeps its own files.

The lock is flock(2) on the checkpoint folder itself, opened read-only: it needs no writable
place (the folder may be read-only, issue 16), it follows the folder's inode through any path
or bind mount, and the kernel drops it when its holder dies, kill -9 included.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from restoreprof.checkpoint import trust
from restoreprof.errors import EXIT_ENVIRONMENT, RestoreprofError

RUN_ROOT = Path("/run/restoreprof/restores")


def default_work_dir(directory: Path) -> Path:
    """/run/restoreprof/restores/<hash of the folder's path>: the restore's log, PID file,
    CRIU's stats and journal."""
    root = RUN_ROOT
    key = hashlib.sha256(os.fsencode(os.path.realpath(directory))).hexdigest()[:16]
    return root / key


def work_dir(directory: Path, chosen: Path | None) -> Path:
    """The restore's work folder (chosen by -o/--work-dir, else the default), made private."""
    path = Path(os.path.abspath(chosen)) if chosen else default_work_dir(directory)
    if os.path.realpath(path) == os.path.realpath(directory):
        raise RestoreprofError("the work folder cannot be the checkpoint folder",
                               hint="pass another folder with -o/--work-dir")
    with trust.private_umask():
        return trust.private_work_dir(path)


@contextlib.contextmanager
def folder_lock(directory: Path, say=None) -> Iterator[None]:
    """Hold the exclusive lock of directory; wait (saying so) while another restore holds it."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise RestoreprofError(f"cannot open {directory}: {exc.strerror}", exit_code=EXIT_ENVIRONMENT,
                               hint="check the folder and its permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (say or _stderr)(f"waiting for another restore of {directory} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stderr(text: str) -> None:
    print(f"restoreprof: {text}", file=sys.stderr)
