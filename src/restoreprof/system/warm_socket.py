"""The warm pool's socket, as its clients reach it: where it is, the message framing, and the
"describe" request.

Neutral ground: the warm pool (optimizer/pool.py) serves on it, the restore asks it to preload,
and the profiler (probes/session.py) asks it to describe its pinned staging, without either
pipeline importing the other.

Framing: AF_UNIX SOCK_SEQPACKET, each message one JSON object, descriptors riding along
(SCM_RIGHTS). {"op": "describe"} is answered with {"pid": PID, "pinned": [[base, bytes], ...]}.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from restoreprof.system.paths import user_run_dirs

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
    """A connection to this user's pool, or None when none answers (no socket, or a stale one
    a killed pool left, or one we may not use)."""
    path = find_socket()
    if path is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.send(data)


def receive(conn: socket.socket, max_fds: int) -> tuple[dict, list[int]]:
    """One message and its descriptors; ({}, []) when the other side hung up."""
    data, fds, _flags, _addr = socket.recv_fds(conn, MESSAGE_BYTES, max_fds)
    if not data:
        for fd in fds:
            os.close(fd)
        return {}, []
    return json.loads(data), list(fds)


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
