"""Who may have written a checkpoint: private folders at checkpoint, and proof of that at restore.

A checkpoint holds a process's memory (secrets included), and its images steer what root's CRIU
restores. So: a checkpoint folder and every file in it are created 0700/0600 by the caller, and
a restore accepts only a folder that nobody but root and the caller could have written: the
folder, each file in it, and each folder above it (one that others can write could swap the
whole checkpoint, unless it is sticky as /tmp is). Symlinks are refused: they point outside.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from restoreprof.errors import EXIT_ENVIRONMENT, IntegrityError, RestoreprofError

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
# A GPU snapshot's own chunk folder (gpu-<pid>.snap.chunks, written by the library): the only
# folder a checkpoint holds. CRIU never reads it, and every chunk in it is named by its BLAKE3 and
# checked piece by piece as the engine copies it (crc32c from table version 4, BLAKE3 in version
# 3; the table itself is in the manifest), so its files need no checksums of the manifest. A
# crc32c catches damage, not forgery: what keeps others from altering a chunk is that the folder
# and the store are private (0700, owned by root or the user), checked before every restore;
# `restoreprof store verify` checks every chunk against its BLAKE3 name.
CHUNK_DIR_SUFFIX = ".chunks"


def _trusted_owners() -> tuple[int, ...]:
    return (0, os.geteuid())


def _others_can_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & _OTHERS_WRITE) or st.st_uid not in _trusted_owners()


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files made meanwhile (by restoreprof or by CRIU, which inherits the umask) are private."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RestoreprofError(f"cannot inspect {path}: {exc.strerror}", exit_code=EXIT_ENVIRONMENT,
                               hint="check the path and its permissions") from None


def check_ancestors(directory: Path, *, error=IntegrityError) -> None:
    """Every folder above directory (resolved) is owned by root or the caller, and nobody else
    may rename entries in it (not group/other-writable, or sticky)."""
    resolved = Path(os.path.realpath(directory.parent))
    for folder in [*reversed(resolved.parents), resolved]:
        _check_ancestor(folder, error)


def _check_ancestor(folder: Path, error) -> None:
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return  # made by this checkpoint, private
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if st.st_uid not in _trusted_owners() or (st.st_mode & _OTHERS_WRITE and not sticky):
        raise error(
            f"{folder} (above the checkpoint folder) can be changed by others "
            f"(owner UID {st.st_uid}, mode {stat.filemode(st.st_mode)}): they could swap the checkpoint",
            hint="keep checkpoints under folders owned by root (or you) that only the owner can write")


def prepare_checkpoint_directory(directory: Path, manifest_name: str) -> None:
    """A new folder (0700), or an empty one of the caller's that only the caller can write;
    refuse anything else with the reason."""
    st = _lstat(directory)
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise RestoreprofError(f"{directory} is a symbolic link",
                                   hint="pass the real folder; restoreprof does not follow links here")
        if not stat.S_ISDIR(st.st_mode):
            raise RestoreprofError(f"{directory} is not a folder",
                                   hint="-D takes a new or empty folder for the checkpoint's images")
        if any(directory.iterdir()):
            what = "a checkpoint" if (directory / manifest_name).exists() else "not empty"
            raise RestoreprofError(f"{directory} is {what}",
                                   hint="choose a new or empty folder; restoreprof never overwrites one")
        if st.st_uid != os.geteuid() or st.st_mode & _OTHERS_WRITE:
            raise IntegrityError(
                f"{directory} belongs to UID {st.st_uid} or others can write it "
                f"(mode {stat.filemode(st.st_mode)}): they could read or replace the images",
                hint="use a new folder (restoreprof creates it private), or one of your own "
                     "with mode 0700")
    check_ancestors(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        if st is None:
            os.mkdir(directory, DIR_MODE)
        os.chmod(directory, DIR_MODE, follow_symlinks=False)
        probe = directory / ".restoreprof-probe"
        probe.touch(mode=FILE_MODE)
        probe.unlink()
    except OSError as exc:
        raise RestoreprofError(
            f"cannot write the checkpoint folder {directory}: {exc.strerror}",
            exit_code=EXIT_ENVIRONMENT,
            hint="choose a folder on a writable filesystem with room for the images") from None


def make_private(directory: Path) -> None:
    """Close the folder and every file in it to others: 0700 and 0600, whatever made them
    (CRIU sets modes of its own on some images; a failed dump leaves partial ones). Only modes
    that differ are changed: a chmod is a journaled write of the filesystem, which can wait on
    the commit of gigabytes an offload has just left dirty; a stat is not."""
    _chmod_if_needed(directory, DIR_MODE)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                _chmod_if_needed(entry.path, FILE_MODE)


def _chmod_if_needed(path: Path | str, mode: int) -> None:
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode, follow_symlinks=False)


def check_checkpoint_directory(directory: Path) -> None:
    """Refuse a checkpoint that anyone but root and the caller could have written: the folder,
    the folders above it, and every entry in it (which must be plain files)."""
    st = _lstat(directory)
    if st is None:
        raise RestoreprofError(f"{directory} does not exist", hint="pass the -D DIR of a checkpoint")
    if stat.S_ISLNK(st.st_mode):
        raise IntegrityError(f"{directory} is a symbolic link",
                             hint="pass the real folder; a link could be swapped under the restore")
    if not stat.S_ISDIR(st.st_mode):
        raise RestoreprofError(f"{directory} is not a folder", hint="pass the -D DIR of a checkpoint")
    if _others_can_write(st):
        raise IntegrityError(
            f"{directory} can be written by others (owner UID {st.st_uid}, mode "
            f"{stat.filemode(st.st_mode)}): its images cannot be trusted",
            hint=f"if you trust its contents: chown root and chmod 700 {directory}, then retry")
    check_ancestors(directory)
    for entry in os.scandir(directory):
        est = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(est.st_mode):
            raise IntegrityError(f"{entry.path} is a symbolic link; a checkpoint holds plain files only",
                                 hint="remove the link; restoreprof never follows links out of a checkpoint")
        chunk_dir = stat.S_ISDIR(est.st_mode) and entry.name.endswith(CHUNK_DIR_SUFFIX)
        if not stat.S_ISREG(est.st_mode) and not chunk_dir:
            raise IntegrityError(f"{entry.path} is not a plain file; a checkpoint holds plain files "
                                 f"and GPU snapshot chunk folders (*{CHUNK_DIR_SUFFIX}) only",
                                 hint="remove it from the checkpoint folder")
        if _others_can_write(est):
            raise IntegrityError(
                f"{entry.path} can be written by others (owner UID {est.st_uid}, mode "
                f"{stat.filemode(est.st_mode)}): the checkpoint cannot be trusted",
                hint=f"if you trust it: chown root and chmod 600 the files in {directory}, then retry")


def private_work_dir(path: Path) -> Path:
    """A folder of the caller's for what a restore writes (logs, PID file, journal): created
    0700, refused when others could plant files (a log symlink) in it."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise RestoreprofError(f"cannot create the work folder {path}: {exc.strerror}",
                               exit_code=EXIT_ENVIRONMENT,
                               hint="pass a writable folder with -o/--work-dir") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RestoreprofError(f"the work folder {path} is not a plain folder",
                               hint="pass another folder with -o/--work-dir")
    if st.st_uid != os.geteuid() or st.st_mode & _OTHERS_WRITE:
        raise IntegrityError(
            f"the work folder {path} belongs to UID {st.st_uid} or others can write it "
            f"(mode {stat.filemode(st.st_mode)}): files in it could be planted",
            hint="pass a folder of your own with mode 0700 with -o/--work-dir")
    check_ancestors(path)
    return path
