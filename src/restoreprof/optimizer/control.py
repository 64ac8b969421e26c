"""Client of the interception library's control socket (see shim/control.c).

    ctl = ShimControl(pid)
    ctl.offload(Path("/ckpt/gpu-123.snap"), cfg)   # GPU memory -> file, physical memory released
    ...                                            # driver checkpoint, criu dump / restore
    ctl.reload(Path("/ckpt/gpu-123.snap"), cfg)    # file -> GPU at the same addresses
    ctl.adopt(address, gpu_uuid, fd)               # or: memory preloaded by restoreprof
    ctl.status()                                   # {"state": "running", "allocations": 3, ...}

One request per connection: the library closes the connection as soon as it has replied, so
no connected socket is left in the process for `criu dump` to refuse.

Trust: the socket is used only once proved to be the target's own (system.sockets: a private
directory of the target's user or root, and SO_PEERCRED naming the target process), before
anything is sent. A process in its own PID and mount namespaces (a container) is found from the
host: its socket is named by its PID there (NSpid) and reached through /proc/PID/root.

A stopped target (SIGSTOP, a debugger) is refused at once (TargetStoppedError): its library
cannot answer, and waiting would only hold the caller. An OFFLOAD is two-phase: the library
answers READY once the snapshot is complete, and releases the memory only when this client
confirms (COMMIT); a client that is gone before confirming leaves the process running.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.system.sockets import UntrustedSocketError, connect_checked, user_run_dirs

__all__ = ["ShimControl", "TargetStoppedError", "UntrustedSocketError", "run_dirs",
           "socket_path", "user_run_dirs"]

DEFAULT_TIMEOUT_S = 600.0  # an offload of tens of GiB to a slow disk takes minutes
CONNECT_TIMEOUT_S = 5.0
STATE_POLL_S = 0.5  # how often a waiting client looks whether its target stopped or exited


class TargetStoppedError(RestoreprofError):
    """The target process is stopped (SIGSTOP, Ctrl-Z, a debugger): its library cannot answer.
    A checkpoint leaves such a process's GPU memory to the driver (checkpoint.gpu)."""


@dataclass(frozen=True)
class _Target:
    """A process as its library sees itself: its PID in its own PID namespace (the socket's
    name), its user, its environment, and where its filesystem root lies from here."""

    pid: int
    ns_pid: int
    uid: int
    root: str  # "" when it shares our mount namespace and root, else /proc/PID/root
    environ: dict[str, str] | None

    @classmethod
    def of(cls, pid: int) -> _Target:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            raise RestoreprofError(
                f"no process with PID {pid}",
                hint="check the PID (ps -p PID), or whether it has already exited") from None
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        ns_pids = fields.get("NSpid", str(pid)).split()
        uid = int(fields["Uid"].split()[1])  # effective: what the library's geteuid() saw
        return cls(pid, int(ns_pids[-1]), uid, _root_prefix(pid), _environ(pid))

    def run_dirs(self) -> list[Path]:
        dirs = user_run_dirs(self.uid, self.environ)
        # A program started as root that later changed user bound its socket as root.
        dirs += [d for d in user_run_dirs(0, self.environ) if d not in dirs]
        return [Path(self.root + str(d)) for d in dirs]

    @property
    def socket_name(self) -> str:
        return f"shim-{self.ns_pid}.sock"


def _root_prefix(pid: int) -> str:
    """"" when pid sees our filesystem, else /proc/PID/root (another mount namespace, or a
    chroot), through which its run directory is reached."""
    try:
        same_ns = os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        same_root = os.readlink(f"/proc/{pid}/root") == os.readlink("/proc/self/root")
    except OSError:
        return ""  # not ours to inspect: the socket will refuse us anyway
    return "" if same_ns and same_root else f"/proc/{pid}/root"


def _environ(pid: int) -> dict[str, str] | None:
    """The environment pid started with (its library chose its run directory from it)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.decode(errors="surrogateescape").partition("=") for item in raw.split(b"\0"))
    return {name: value for name, sep, value in pairs if sep}


def _state(pid: int) -> str | None:
    """pid's one-letter state (R, S, T, t, Z...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def run_dirs(pid: int) -> list[Path]:
    """Where pid's library puts its socket, in the order it tries them, as reached from here."""
    return _Target.of(pid).run_dirs()


def _listening_paths(pid: int) -> set[str] | None:
    """Paths of the Unix sockets pid itself listens on (its own descriptors, matched by inode in
    its network namespace's table), or None where /proc does not let us see them."""
    try:
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        table = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    inodes = {h[len("socket:["):-1] for h in held if h.startswith("socket:[")}
    paths = set()
    for line in table:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000: listening
        if len(fields) >= 8 and int(fields[3], 16) & 0x10000 and fields[6] in inodes:
            paths.add(fields[7])
    return paths


def socket_path(pid: int) -> Path:
    """The control socket of pid, or a RestoreprofError saying why there is none."""
    target = _Target.of(pid)
    listening = _listening_paths(pid)
    for directory in target.run_dirs():
        candidate = directory / target.socket_name
        # A socket file a process of the same PID left behind (killed before it could remove
        # it) is stale: the path must be one the target itself listens on, where that can be seen.
        in_namespace = str(candidate).removeprefix(target.root)
        if candidate.exists() and (listening is None or in_namespace in listening):
            return candidate
    raise RestoreprofError(
        f"PID {pid} runs without restoreprof's interception library (no control socket "
        f"{target.socket_name} in {', '.join(str(d) for d in target.run_dirs())})",
        hint="start the program with 'restoreprof exec -- CMD' to offload its GPU memory",
    )


def _parse_ok_numbers(text: str) -> dict[str, Any]:
    """'<bytes> <ns> [name_ns=<ns> ...]' -> {bytes, seconds, gbps, name_seconds...}."""
    words = text.split()
    nbytes, ns = (int(x) for x in words[:2])
    seconds = ns / 1e9
    result = {"bytes": nbytes, "seconds": seconds,
              "gbps": nbytes / seconds / 1e9 if seconds > 0 else 0.0}
    # RELOAD's map_ns, pool_ns; ADOPT's remaining; OFFLOAD's reserved, released, release(_ns),
    # ready_ns
    for word in words[2:]:
        name, _, value = word.partition("=")
        if not value:
            continue
        number = _integer(value)
        if number is None:
            result[name] = value  # a word, e.g. release=timeout
        elif name.endswith("_ns"):
            result[name.removesuffix("_ns") + "_seconds"] = number / 1e9
        else:
            result[name] = number
    return result


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_kinds(status: dict[str, Any]) -> dict[str, dict[str, int]]:
    """STATUS's kind.<name>=<count>:<bytes> fields -> {name: {count, bytes}} (what the library
    serves, per allocation kind; see shim/coverage.c)."""
    kinds = {}
    for key, value in status.items():
        if key.startswith("kind.") and isinstance(value, str) and ":" in value:
            count, _, nbytes = value.partition(":")
            kinds[key.removeprefix("kind.")] = {"count": int(count), "bytes": int(nbytes)}
    return kinds


# ADOPTV's allocations per request: the library's RP_ADOPT_BATCH (shim/control.c)
ADOPT_BATCH = 64


class ShimControl:
    """Requests to one process's interception library, over a socket proved to be its own."""

    def __init__(self, pid: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.pid = pid
        self.timeout_s = timeout_s
        self.path = socket_path(pid)
        self._target = _Target.of(pid)

    def request(self, line: str, fd: int | None = None, fds: list[int] | None = None) -> str:
        """Send one request line (with fd attached, for ADOPT); the text after OK, or
        RestoreprofError with the library's ERR. An OFFLOAD is confirmed (COMMIT) once its
        snapshot is complete: the library releases the memory only then, and rolls the offload
        back when this client is gone before confirming."""
        verb = line.split()[0]
        self._require_running(verb)
        with self._connect() as sock:
            data = line.encode() + b"\n"
            sent = [fd] if fd is not None else list(fds or [])
            if sent:  # the descriptors ride on the first byte; the rest follows
                socket.send_fds(sock, [data[:1]], sent)
                data = data[1:]
            sock.sendall(data)
            text = self._reply(sock, verb)
            if verb == "OFFLOAD" and text.startswith("READY"):
                with contextlib.suppress(OSError):  # a library that rolled back has hung up
                    sock.sendall(b"COMMIT\n")
                text = self._reply(sock, verb) or (
                    "ERR the library rolled the offload back before this client confirmed it "
                    "(the memory was never released; the process runs on)")
        if text.startswith("OK"):
            return text[2:].strip()
        message = text.removeprefix("ERR").strip() or "no reply"
        if "permission" in message:
            hint = "run as the process owner or as root"
        elif message.startswith("cannot checkpoint"):  # refused before anything was touched
            hint = ("the process keeps running, untouched; stop sharing the memory named (or "
                    "free it), then checkpoint again")
        else:
            hint = "see the process's stderr (RESTOREPROF_SHIM_DEBUG=1 logs more)"
        raise RestoreprofError(f"PID {self.pid}: {verb} failed: {message}", hint=hint)

    def _require_running(self, verb: str, during: bool = False) -> None:
        """TargetStoppedError when the target is stopped, RestoreprofError when it is gone: its
        library would not answer, and a client waiting on it would wait out its timeout."""
        state = _state(self.pid)
        if state is None or state in "ZX":
            raise RestoreprofError(f"PID {self.pid} exited{' during ' + verb if during else ''}",
                                   hint="check the process (ps -p PID) and its output")
        if state in "Tt":
            why = "a debugger holds it" if state == "t" else "a signal stopped it (SIGSTOP, Ctrl-Z)"
            raise TargetStoppedError(
                f"PID {self.pid} is stopped ({why}){' during ' + verb if during else ''}: its "
                f"interception library cannot answer {verb}" +
                ("; an OFFLOAD not yet confirmed is rolled back when it runs again" if during
                 else ""),
                hint=f"resume it ('kill -CONT {self.pid}', or detach the debugger) and retry; "
                     "a checkpoint leaves a stopped process's GPU memory to the driver")

    def _connect(self) -> socket.socket:
        """A connection to the target's own control socket (sockets.connect_checked)."""
        target = self._target
        hint = (f"another user may have put or replaced the socket: make the run directory "
                f"private to UID {target.uid} (chmod 700, or remove it and restart the program "
                f"under 'restoreprof exec')")
        refused: UntrustedSocketError | None = None
        for directory in target.run_dirs():
            try:
                conn = connect_checked(directory, target.socket_name, socket.SOCK_STREAM,
                                       uids={target.uid, 0}, pid=self.pid,
                                       what=f"PID {self.pid}'s control socket", hint=hint,
                                       timeout_s=CONNECT_TIMEOUT_S)
            except UntrustedSocketError as exc:
                refused = refused or exc
                continue
            except PermissionError:
                raise RestoreprofError(
                    f"not allowed to use PID {self.pid}'s control socket in {directory}",
                    hint="run as the process owner or as root") from None
            if conn is not None:
                return conn
        if refused is not None:
            raise refused
        raise RestoreprofError(
            f"PID {self.pid}'s control socket {self.path} does not answer",
            hint="the process may have exited, or its library stopped serving; check it with ps")

    def _reply(self, sock: socket.socket, verb: str) -> str:
        """One reply line, waited for at most timeout_s; looks at the target meanwhile so that a
        stopped or exited one ends the wait at once instead of at the timeout."""
        deadline = time.monotonic() + self.timeout_s
        reply = b""
        while not reply.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RestoreprofError(
                    f"PID {self.pid} did not answer {verb} within {self.timeout_s:.0f} s",
                    hint="the process may be stuck; an OFFLOAD not yet confirmed is rolled back "
                         "by the library once it notices this client is gone")
            sock.settimeout(min(STATE_POLL_S, remaining))
            try:
                data = sock.recv(4096)
            except TimeoutError:
                self._require_running(verb, during=True)
                continue
            except OSError as exc:
                raise RestoreprofError(f"PID {self.pid}: {verb}: the connection failed: {exc}",
                                       hint="check the process (ps -p PID) and its stderr") from None
            if not data:
                break
            reply += data
        return reply.decode(errors="replace").strip()

    def _transfer(self, verb: str, path: Path, cfg: OptimizerConfig | None,
                  safe: bool = False, extra: str = "") -> dict[str, Any]:
        path = Path(path).resolve()  # PRECOPY's: its chunk folder
        if any(c.isspace() for c in str(path)):
            raise RestoreprofError(f"snapshot path {path} contains whitespace",
                                   hint="use a checkpoint directory without spaces")
        cfg = cfg or OptimizerConfig()
        # safe: one thread and one stream, the plainest path, for a retry after a failure.
        streams, threads = (1, 1) if safe else (cfg.streams, cfg.threads)
        # OFFLOAD, PRECOPY: how long the program's release hooks may take (0: not run).
        release = f" {cfg.release_timeout_s if cfg.release_caches else 0}" \
            if verb in ("OFFLOAD", "PRECOPY") else ""
        start = time.monotonic()
        result = _parse_ok_numbers(self.request(
            f"{verb} {path} {streams} {cfg.chunk_mb} {threads} {int(cfg.pinned)}{release}{extra}"))
        result["wall_seconds"] = time.monotonic() - start
        return result

    def offload(self, path: Path, cfg: OptimizerConfig | None = None, *,
                chunk_dir: str | None = None, sync: bool = False) -> dict[str, Any]:
        """Write all GPU allocations as chunks (into chunk_dir: relative to path's folder unless
        absolute; default <path's name>.chunks) and their table to path, and release their
        memory; {bytes, seconds, gbps, written, reserved, released, release, release_seconds}.
        sync: durable before it returns. The program's release hooks run first (reserved: bytes
        the library served before them; released: what they gave back)."""
        extra = ""
        if chunk_dir is not None or sync:
            chunk_dir = chunk_dir or f"{Path(path).name}.chunks"
            if any(c.isspace() for c in chunk_dir):
                raise RestoreprofError(f"chunk folder {chunk_dir} contains whitespace",
                                       hint="use a store path without spaces")
            extra = f" {chunk_dir} {int(sync)}"
        return self._transfer("OFFLOAD", path, cfg, extra=extra)

    def precopy(self, chunk_dir: Path, cfg: OptimizerConfig | None = None) -> dict[str, Any]:
        """Write the chunks an OFFLOAD would write into chunk_dir while the program runs on
        (nothing is released, no table): the OFFLOAD that follows writes only what changed
        since. {bytes, seconds, gbps, written, release_seconds}."""
        return self._transfer("PRECOPY", chunk_dir, cfg)

    def reload(self, path: Path, cfg: OptimizerConfig | None = None,
               safe: bool = False) -> dict[str, Any]:
        """Map memory at the same addresses again and load path into it (checksums verified)."""
        return self._transfer("RELOAD", path, cfg, safe)

    def adopt(self, address: int, gpu_uuid: str, fd: int, handle: int = 0) -> dict[str, Any]:
        """Map preloaded memory (fd, see optimizer.preload) at an offloaded allocation's address,
        or, given the application's handle of a physical allocation, wherever that was mapped;
        {bytes, seconds, remaining}. When none remains offloaded, the process runs on."""
        suffix = f" {handle:x}" if handle else ""
        return _parse_ok_numbers(self.request(f"ADOPT {address:x} {gpu_uuid}{suffix}", fd))

    def adopt_many(self, gpu_uuid: str, entries: list[tuple[int, int, int]]) -> dict[str, Any]:
        """ADOPT of each (address, handle, fd) in one request (ADOPTV, at most ADOPT_BATCH, all
        on one GPU); {bytes, seconds, remaining, adopted}. The first refusal ends it (those
        before it stay adopted) and raises."""
        pairs = " ".join(f"{address:x}:{handle:x}" for address, handle, _ in entries)
        return _parse_ok_numbers(self.request(f"ADOPTV {gpu_uuid} {pairs}",
                                              fds=[fd for _, _, fd in entries]))

    def status(self) -> dict[str, Any]:
        fields = dict(item.split("=", 1) for item in self.request("STATUS").split())
        return {k: int(v) if v.isdigit() else v for k, v in fields.items()}

    def kinds(self) -> dict[str, dict[str, int]]:
        """What the library serves now, per allocation kind: {name: {count, bytes}}."""
        return parse_kinds(self.status())
