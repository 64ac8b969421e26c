"""The warm pool: a long-lived ``restoreprof warm`` process that has already paid for cuInit,
the primary contexts and the engine's pinned staging pool, and preloads snapshots for
``restoreprof restore``.

A restore that preloads in its own process first pays for cuInit, a context and pinning
(about 0.3 s on the H100) before the first byte moves. Through the pool, the copy starts as
soon as the restore asks, so it finishes while CRIU still runs and the driver's restore of
the contexts no longer shares the PCIe link with it.

    # restoreprof warm
    pool = WarmPool(cfg)          # cuInit, contexts, staging pool
    pool.serve(stop)              # until stop (a threading.Event) is set

    # restoreprof restore
    loaded = preload_through_pool(snapshot, cfg)   # None when no pool runs
    adopt(pid, loaded)                             # optimizer.preload
    loaded.release()                               # the pool drops its references

Protocol, one connection per snapshot, AF_UNIX SOCK_SEQPACKET (each message one JSON object):
the client sends {"op": "preload", "streams", "threads", "chunk_mb", "pinned",
"send_threads"} (its resolved settings, REQUEST_SETTINGS) with the snapshot's open descriptor
attached (the pool reads what the client could open, nothing else); the pool answers
{"items": [...]} messages carrying up to FDS_PER_MESSAGE descriptors of GPU memory each, then
{"done": true, "seconds": s} or {"error": "..."}. The pool holds its own references to that
memory until the client hangs up. Only the pool's user and root may connect, and a restore
uses a pool only once it is proved to be its user's or root's (system.sockets): a socket in a
directory others could write, or served by another user, is refused with a warning, and the
restore preloads the snapshot itself; its descriptor goes nowhere unproved.

A restore comes first: from a restore or preload request until its client hangs up, the hot
snapshots' auto-hold intakes under way are cancelled and none starts (HotSnapshots.restoring);
they are taken in once no restore runs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import engine
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.hot_snapshots import HotSnapshots
from restoreprof.optimizer.preload import Allocation, preload_snapshot
from restoreprof.system.sockets import make_private_dir, peer_credentials, user_run_dirs
from restoreprof.system.warm_socket import connect as _connect
from restoreprof.system.warm_socket import find_socket  # noqa: F401 (the pool's clients use it)
from restoreprof.system.warm_socket import receive as _receive
from restoreprof.system.warm_socket import send as _send
from restoreprof.system.warm_socket import socket_name as _socket_name

FDS_PER_MESSAGE = 200         # SCM_RIGHTS carries at most 253 descriptors a message
# A preload's settings, as the restore resolved them (the pool's own for any a client leaves out)
REQUEST_SETTINGS = ("streams", "threads", "chunk_mb", "pinned", "send_threads")
PRELOAD_TIMEOUT_S = 600.0


def pool_running() -> bool:
    conn = _connect()
    if conn is not None:
        conn.close()  # hanging up before a request is no request at all
    return conn is not None


# --- the pool's side ---------------------------------------------------------------------------


@dataclass
class PoolStats:
    served: int = 0
    bytes: int = 0
    failed: int = 0
    hot: int = 0       # of served: sent from a hot snapshot (optimizer.hot_snapshots)
    handled: dict[str, int] = field(default_factory=dict)  # requests served by handlers


class WarmPool:
    """cuInit, the primary contexts and the engine's staging pool, held; serve() preloads."""

    def __init__(self, cfg: OptimizerConfig | None = None, with_staging: bool = True,
                 hot: HotSnapshots | None = None) -> None:
        from restoreprof.optimizer.prewarm import warm

        self.cfg = cfg or OptimizerConfig()
        self.hot = hot  # snapshots held in pinned memory; None: none
        # Requests without descriptors that layers above serve ({"op": name} -> reply), e.g.
        # "restore" (commands/pooled_restore.py): the pool itself imports none of them.
        self.handlers: dict[str, Callable[[dict], dict]] = {}
        self._handling = threading.Condition()  # guards _in_handlers
        self._in_handlers = 0
        self.warmed = warm()
        self.staging_s = 0.0
        if with_staging and self.warmed.contexts:
            self.staging_s = _warm_engine(self.warmed, self.cfg)
        self.stats = PoolStats()
        self.path: Path | None = None
        self._listener: socket.socket | None = None

    def bind(self) -> Path:
        """Create the socket (0600, in a directory only this user can write); returns it."""
        tried: list[str] = []
        for directory in user_run_dirs(os.geteuid()):
            try:
                make_private_dir(directory)
                path = directory / _socket_name()
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # a stale one from an earlier pool
                old = os.umask(0o177)
                try:
                    listener.bind(str(path))
                finally:
                    os.umask(old)
                listener.listen(16)
                self._listener, self.path = listener, path
                return path
            except OSError as exc:
                tried.append(f"{directory}: {exc.strerror or exc}")
        raise RestoreprofError(f"no run directory for the warm pool's socket ({'; '.join(tried)})",
                               hint="set RESTOREPROF_RUN_DIR to a folder of yours that nobody "
                                    "else can write (chmod 700)")

    def serve(self, stop: threading.Event) -> None:
        """Answer preloads, each connection on a thread of its own, until stop is set."""
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        self._listener.settimeout(0.2)
        try:
            while not stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._serve_one, args=(conn,), daemon=True,
                                 name="warm-pool").start()
        finally:
            self.close()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None

    def staging_bytes(self) -> int:
        """The pinned staging the engine holds now."""
        return sum(size for _, size in engine.staging_ranges())

    def release(self, timeout_s: float = 600) -> None:
        """Stop serving, let a restore under way finish (it preloads through this pool), then
        free everything."""
        self.close()
        with self._handling:
            self._handling.wait_for(lambda: self._in_handlers == 0, timeout_s)
        if self.hot is not None:
            self.hot.release()
        engine.release_staging()
        self.warmed.release()

    def _serve_one(self, conn: socket.socket) -> None:
        loaded = None
        offer = None  # (fd, name) read from the page cache: hold it hot once the client is done
        restoring = contextlib.ExitStack()  # a restore or preload served: intakes give way
        with conn, restoring:
            try:
                # Read before refusing: closing on an unread request would reset the connection
                # and the client would never see why.
                request, fds = _receive(conn, 1)
                try:  # every descriptor received is closed, whatever the request held
                    if not request and not fds:
                        return  # hung up unasked (pool_running)
                    _check_peer(conn)
                    if request.get("op") == "describe" and not fds:
                        _send(conn, self.describe())
                        return
                    handler = self.handlers.get(str(request.get("op")))
                    if handler is not None and not fds:
                        op = str(request.get("op"))
                        if op == "restore":
                            restoring.enter_context(self._restoring())
                        reply = self._handle(handler, request)
                        if "declined" not in reply:
                            self.stats.handled[op] = self.stats.handled.get(op, 0) + 1
                        _send(conn, reply)
                        return
                    if request.get("op") == "hold" and len(fds) == 1 and self.hot is not None:
                        held = self.hot.hold(fds[0], str(request.get("name", "snapshot")))
                        _send(conn, {"held": held.describe()})
                        return
                    if request.get("op") != "preload" or len(fds) != 1:
                        raise RestoreprofError(
                            "expected a preload request with one descriptor",
                            hint="use optimizer.pool.preload_through_pool to talk to the pool")
                    cfg = _request_settings(request, self.cfg)
                    name = str(request.get("name", "snapshot"))
                    restoring.enter_context(self._restoring())  # until the client hangs up
                    loaded = self._preload_hot(fds[0], name, cfg)
                    if loaded is None:
                        loaded = preload_snapshot(Path(name), cfg, fd=fds[0])
                        offer = (os.dup(fds[0]), name) if self.hot is not None else None
                finally:
                    for fd in fds:
                        os.close(fd)
                allocations = loaded.allocations()
                for i in range(0, len(allocations), FDS_PER_MESSAGE):
                    batch = allocations[i:i + FDS_PER_MESSAGE]
                    _send(conn, {"items": [a.describe() for a in batch]}, [a.fd for a in batch])
                from_hot = self.hot is not None and offer is None
                _send(conn, {"done": True, "seconds": loaded.seconds, "hot": from_hot})
                self.stats.served += 1
                self.stats.hot += from_hot
                self.stats.bytes += loaded.bytes
                conn.settimeout(None)
                conn.recv(1)  # our references live until the client hangs up
            except (RestoreprofError, OSError, ValueError, TypeError) as exc:
                # TypeError: a field of the wrong JSON type ({"streams": null})
                self.stats.failed += 1
                with contextlib.suppress(OSError):
                    _send(conn, {"error": str(exc)})
            finally:
                if loaded is not None:
                    loaded.release()
                restoring.close()
                if offer is not None:  # after the restore, so the intake never competes with it
                    self.hot.offer(*offer)
                    os.close(offer[0])

    def _handle(self, handler: Callable[[dict], dict], request: dict) -> dict:
        with self._handling:
            self._in_handlers += 1
        try:
            return handler(request)
        finally:
            with self._handling:
                self._in_handlers -= 1
                self._handling.notify_all()

    def _restoring(self) -> contextlib.AbstractContextManager:
        """A restore (or a preload for one) served: auto-hold intakes give way until it ends
        (HotSnapshots.restoring); an explicit hold request does not."""
        return self.hot.restoring() if self.hot is not None else contextlib.nullcontext()

    def _preload_hot(self, fd: int, name: str, cfg: OptimizerConfig):
        """The snapshot from its hot copy, or None (not held, or its copy failed a check:
        then it was dropped, and the file is read as if it had never been held)."""
        if self.hot is None:
            return None
        try:
            return self.hot.preload(fd, name, cfg)
        except RestoreprofError as exc:
            print(f"warm: {exc}", flush=True)
            return None

    def describe(self) -> dict:
        """What a describe request answers: the pool's PID, every pinned range it holds (the
        profiler classifies copies from them), and the staging and hot snapshots apart."""
        staging = engine.staging_ranges()
        hot_ranges = self.hot.pinned_ranges() if self.hot is not None else []
        return {"pid": os.getpid(), "pinned": staging + hot_ranges, "staging": staging,
                "hot": self.hot.status() if self.hot is not None else None}


def _request_settings(request: dict, own: OptimizerConfig) -> OptimizerConfig:
    """The restore's engine settings, as it resolved them (the pool's own for any it left out):
    where they equal the pool's, the staging pinned at start-up is used as it is."""
    asked = {name: request[name] for name in REQUEST_SETTINGS if name in request}
    return OptimizerConfig(**(own.as_dict() | asked))


def _warm_engine(warmed, cfg: OptimizerConfig) -> float:
    """The C engine's staging pool, made now on the first GPU's primary context."""
    from restoreprof.cuda import driver

    start = time.monotonic()
    driver.set_current(warmed.contexts[min(warmed.contexts)])
    engine.warm_staging(cfg)
    return time.monotonic() - start




def _check_peer(conn: socket.socket) -> None:
    _pid, uid, _gid = peer_credentials(conn)
    if uid not in (os.geteuid(), 0):
        raise RestoreprofError(f"UID {uid} may not use this warm pool",
                               hint="restore as the pool's user or as root, or start "
                                    "'restoreprof warm' as this user")


# --- the restore's side ------------------------------------------------------------------------


@dataclass
class PooledSnapshot:
    """A snapshot the warm pool loaded: the memory's descriptors, ours until release()."""

    snapshot: Path
    items: list[Allocation]
    seconds: float
    _conn: socket.socket | None = None
    hot: bool = False  # sent from the pool's pinned copy (optimizer.hot_snapshots)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def bytes(self) -> int:
        return sum(a.size for a in self.items)

    def allocations(self) -> list[Allocation]:
        return self.items

    def release(self) -> None:
        """Close our descriptors and hang up: the pool drops its references."""
        for a in self.items:
            with contextlib.suppress(OSError):
                os.close(a.fd)
        self.items = []
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def preload_through_pool(snapshot: Path, cfg: OptimizerConfig | None = None) -> PooledSnapshot | None:
    """Have this user's warm pool load snapshot; None when no pool answers (the caller preloads
    itself). Raises RestoreprofError when the pool answered and failed (a damaged chunk)."""
    conn = _connect()
    if conn is None:
        return None
    cfg = cfg or OptimizerConfig()
    items: list[Allocation] = []
    try:
        conn.settimeout(PRELOAD_TIMEOUT_S)
        with open(snapshot, "rb") as f:
            _send(conn, {"op": "preload", "name": str(snapshot),
                         **{name: getattr(cfg, name) for name in REQUEST_SETTINGS}},
                  [f.fileno()])
        while True:
            try:
                message, fds = _receive(conn, FDS_PER_MESSAGE)
            except ValueError:
                raise RestoreprofError("the warm pool sent a malformed reply",
                                       hint="restart 'restoreprof warm'; the restore falls back "
                                            "to reloading inside the process") from None
            if not message:
                raise RestoreprofError(f"the warm pool hung up while preloading {snapshot}",
                                       hint="see its output; the restore falls back to "
                                            "reloading inside the process")
            if "error" in message:
                raise RestoreprofError(f"the warm pool could not preload {snapshot}: "
                                       f"{message['error']}",
                                       hint="the restore falls back to reloading inside the process")
            described = message.get("items", [])
            try:
                if not isinstance(described, list) or len(described) != len(fds):
                    raise ValueError("items and descriptors differ")
                items += [Allocation.from_description(d, fd)
                          for d, fd in zip(described, fds, strict=True)]
            except (ValueError, TypeError, KeyError, AttributeError):
                for fd in fds:  # none of this batch joined items
                    os.close(fd)
                raise RestoreprofError("the warm pool sent a malformed reply",
                                       hint="restart 'restoreprof warm'; the restore falls back "
                                            "to reloading inside the process") from None
            if message.get("done"):
                return PooledSnapshot(Path(snapshot), items, float(message["seconds"]), conn,
                                      hot=bool(message.get("hot")))
    except TimeoutError:
        PooledSnapshot(Path(snapshot), items, 0.0, conn).release()
        raise RestoreprofError(f"the warm pool did not finish preloading {snapshot} within "
                               f"{PRELOAD_TIMEOUT_S:.0f} s",
                               hint="see the pool's output; the restore falls back to reloading "
                                    "inside the process") from None
    except BaseException:
        PooledSnapshot(Path(snapshot), items, 0.0, conn).release()
        raise


def hold_through_pool(snapshot: Path, timeout_s: float = PRELOAD_TIMEOUT_S) -> dict:
    """Have this user's warm pool hold snapshot hot (optimizer.hot_snapshots): what it holds,
    once taken in. Raises when no pool runs or it could not."""
    conn = _connect()
    if conn is None:
        raise RestoreprofError("no warm pool runs", hint="start one: restoreprof warm --hold DIR")
    with conn, open(snapshot, "rb") as f:
        conn.settimeout(timeout_s)
        _send(conn, {"op": "hold", "name": str(snapshot)}, [f.fileno()])
        reply, _ = _receive(conn, 0)
    if "held" not in reply:
        raise RestoreprofError(f"the warm pool could not hold {snapshot}: "
                               f"{reply.get('error', 'no answer')}",
                               hint="see 'restoreprof doctor' for its budget; restart it with a "
                                    "larger --hold-mib")
    return reply["held"]
