"""Run directories and the sockets in them, trusted only when proved.

restoreprof runs as root and hands what it connects to open descriptors of GPU snapshots and
GPU memory. A socket is used only when both hold:
- its directory is a real directory (not a symbolic link), owned by the expected user or root,
  and not writable by group or others, so nobody else can have put or swapped the socket;
- its listener, by SO_PEERCRED, is the expected user (or root) and, for a process's control
  socket, that very process.

Where sockets live (shim/control.c: run_dirs agrees, entry for entry):
  $RESTOREPROF_RUN_DIR                  when set (tests, unusual set-ups)
  /run/restoreprof                      for root
  $XDG_RUNTIME_DIR/restoreprof          for other users, when set
  /tmp/restoreprof-<uid>                for other users, last: used only when it is that user's
                                        own private directory (a foreign one is refused)
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

from restoreprof.errors import RestoreprofError

RUN_DIR_ENV = "RESTOREPROF_RUN_DIR"
ROOT_RUN_DIR = Path("/run/restoreprof")


class UntrustedSocketError(RestoreprofError):
    """A socket (or its directory) that someone other than the expected user could control."""


def user_run_dirs(uid: int, environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where uid's sockets go (the library's, a warm pool's), in the order they are tried;
    environ is the environment of the program that binds them (default: ours)."""
    env = os.environ if environ is None else environ
    dirs = []
    if env.get(RUN_DIR_ENV):
        dirs.append(Path(env[RUN_DIR_ENV]))
    if uid == 0:
        dirs.append(ROOT_RUN_DIR)
    else:
        runtime = env.get("XDG_RUNTIME_DIR", "")
        if runtime.startswith("/"):  # the XDG spec: a relative value is invalid, ignore it
            dirs.append(Path(runtime) / "restoreprof")
        dirs.append(Path(f"/tmp/restoreprof-{uid}"))
    return dirs


def directory_problem(st: os.stat_result, uids: set[int]) -> str | None:
    """Why a directory with this lstat/fstat may not hold trusted sockets, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid not in uids:
        return f"it is owned by UID {st.st_uid}, not {_uid_list(uids)}"
    if st.st_mode & 0o022:
        return f"group or others may write to it (mode {st.st_mode & 0o7777:04o})"
    return None


def make_private_dir(directory: Path, uid: int | None = None) -> None:
    """directory, created 0700 when missing; PermissionError when it is foreign (a symbolic
    link, owned by another user, or writable by group or others): a socket there could be
    swapped."""
    uid = os.geteuid() if uid is None else uid
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    problem = directory_problem(os.lstat(directory), {uid, 0})
    if problem:
        raise PermissionError(errno.EPERM, f"refusing run directory {directory}: {problem}")


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that listens on (or connected) conn's other end."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def _uid_list(uids: set[int]) -> str:
    return " or ".join(f"UID {u}" for u in sorted(uids))


def _is_thread_of(tid: int, pid: int) -> bool:
    return tid == pid or Path(f"/proc/{pid}/task/{tid}").exists()


def connect_checked(directory: Path, name: str, sock_type: int, *, uids: set[int],
                    pid: int | None, what: str, hint: str,
                    timeout_s: float) -> socket.socket | None:
    """A connection to directory/name after proving who may have put it there and who listens.

    None when there is no socket there, or nobody listens (a stale one); UntrustedSocketError
    when the directory or the listener is not who it must be (uids; pid and its threads when
    given); PermissionError when we may not use it. Nothing is sent before the checks pass.
    """
    path = directory / name
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UntrustedSocketError(
                f"refusing {what} {path}: its directory is a symbolic link or not a directory",
                hint=hint) from None
        raise  # PermissionError: the caller says whom the socket is for
    try:
        problem = directory_problem(os.fstat(dir_fd), uids)
        if problem:
            if not _has_socket(dir_fd, name):
                return None  # nothing to refuse: no socket was put there
            raise UntrustedSocketError(f"refusing {what} {path}: its directory {directory} "
                                       f"cannot be trusted: {problem}", hint=hint)
        if not _has_socket(dir_fd, name):
            return None
        conn = socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC)
        conn.settimeout(timeout_s)
        try:
            # Through the directory we checked: a swap of a parent after the check changes
            # nothing, and the path stays short however deep the run dir (sun_path: 108 bytes).
            conn.connect(f"/proc/self/fd/{dir_fd}/{name}")
        except PermissionError:
            conn.close()
            raise
        except OSError:  # nobody listens: a stale socket
            conn.close()
            return None
    finally:
        os.close(dir_fd)
    peer_pid, peer_uid, _ = peer_credentials(conn)
    if peer_uid not in uids:
        conn.close()
        raise UntrustedSocketError(f"refusing {what} {path}: it is served by UID {peer_uid} "
                                   f"(PID {peer_pid}), not {_uid_list(uids)}", hint=hint)
    if pid is not None and not _is_thread_of(peer_pid, pid):
        conn.close()
        raise UntrustedSocketError(f"refusing {what} {path}: it is served by PID {peer_pid}, "
                                   f"not by PID {pid}", hint=hint)
    return conn


def _has_socket(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
