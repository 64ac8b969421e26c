"""The warm pool's socket, as its clients reach it: where it is, the message framing, and the
"describe" request.

Neutral ground: the warm pool (optimizer/pool.py) serves on it, the restore asks it to preload,
and the profiler (probes/session.py) asks it to describe its pinned staging, without either
pipeline importing the other.

Framing: AF_UNIX SOCK_SEQPACKET, each message one JSON object, descriptors riding along
(SCM_RIGHTS). {"op": "describe"} is answered with {"pid": PID, "pinned": [[base, bytes], ...]}.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

from restoreprof.system.sockets import UntrustedSocketError, connect_checked, user_run_dirs

MESSAGE_BYTES = 1 << 16
CONNECT_TIMEOUT_S = 1.0  # a pool that does not answer at once is treated as absent


def socket_name() -> str:
    return f"warm-{os.geteuid()}.sock"


def find_socket() -> Path | None:
    """This user's pool socket, or None when no pool was started."""
    for directory in user_run_dirs(os.geteuid()):
        candidate = directory / socket_name()
        if candidate.exists():
            return candidate
    return None


def connect() -> socket.socket | None:
    """A connection to this user's pool, proved to be served by this user or root from a
    private directory; None when none answers (no socket, a stale one a killed pool left, one
    we may not use) or when one is refused (with a warning: the caller does without the pool)."""
    uid = os.geteuid()
    for directory in user_run_dirs(uid):
        try:
            conn = connect_checked(
                directory, socket_name(), socket.SOCK_SEQPACKET, uids={uid, 0}, pid=None,
                what="the warm pool's socket", timeout_s=CONNECT_TIMEOUT_S,
                hint=f"another user may have put it there: stop any 'restoreprof warm', remove "
                     f"{directory} and start 'restoreprof warm' again (it makes the directory "
                     f"private); this restore preloads without the pool")
        except UntrustedSocketError as exc:
            print(f"restoreprof: warning: {exc}", file=sys.stderr)
            continue
        except OSError:
            continue
        if conn is not None:
            return conn
    return None


def send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.send(data)


def receive(conn: socket.socket, max_fds: int) -> tuple[dict, list[int]]:
    """One message and its descriptors; ({}, []) when the other side hung up. ValueError for a
    message that is not a JSON object, its descriptors closed: nothing received is leaked."""
    data, fds, _flags, _addr = socket.recv_fds(conn, MESSAGE_BYTES, max_fds)
    fds = list(fds)
    message = None
    if data:
        with contextlib.suppress(ValueError):  # not JSON, or not UTF-8
            message = json.loads(data)
    if not isinstance(message, dict):
        for fd in fds:
            os.close(fd)
        if data:
            raise ValueError("a malformed message (not a JSON object)")
        return {}, []
    return message, fds


def describe_pool() -> dict | None:
    """{"pid", "pinned": [[base, bytes], ...]} of this user's running pool, or None. The
    profiler traces the pool beside a restore; its staging buffers were pinned before the trace
    began, so the profiler learns them here to classify the pool's copies."""
    conn = connect()
    if conn is None:
        return None
    with conn:
        try:
            send(conn, {"op": "describe"})
            reply, _ = receive(conn, 0)
        except (OSError, ValueError):
            return None
    return reply if "pid" in reply else None


def pinned_summary(describe: dict) -> str:
    """What a pool's describe answer says it holds pinned, in 46 columns (doctor's detail, the
    TUI's line): staging plus hot snapshots held or being taken in, and their budget."""
    staging = sum(size for _base, size in describe.get("staging", describe.get("pinned", [])))
    hot = describe.get("hot") or {}
    held = hot.get("held_bytes", 0) + hot.get("intake_bytes", 0)
    return (f"PID {describe.get('pid')}, {(staging + held) / 2**30:.1f} GiB pinned "
            f"(hot {len(hot.get('snapshots', []))}: {held / 2**30:.1f}/"
            f"{hot.get('budget_bytes', 0) / 2**30:.0f})")
