"""Client of the interception library's control socket (see shim/control.c).

    ctl = ShimControl(pid)
    ctl.offload(Path("/ckpt/gpu-123.snap"), cfg)   # GPU memory -> file, physical memory released
    ...                                            # driver checkpoint, criu dump / restore
    ctl.reload(Path("/ckpt/gpu-123.snap"), cfg)    # file -> GPU at the same addresses
    ctl.adopt(address, gpu_uuid, fd)               # or: memory preloaded by restoreprof
    ctl.status()                                   # {"state": "running", "allocations": 3, ...}

One request per connection: the library closes the connection as soon as it has replied, so
no connected socket is left in the process for `criu dump` to refuse.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.system.paths import user_run_dirs

DEFAULT_TIMEOUT_S = 600.0  # an offload of tens of GiB to a slow disk takes minutes


def run_dirs(pid: int) -> list[Path]:
    """Where pid's library puts its socket, in the order it tries them."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        uid = os.geteuid()
    return user_run_dirs(uid)


def socket_path(pid: int) -> Path:
    """The control socket of pid, or a RestoreprofError saying why there is none."""
    if not Path(f"/proc/{pid}").exists():
        raise RestoreprofError(f"no process with PID {pid}",
                               hint="check the PID (ps -p PID), or whether it has already exited")
    for directory in run_dirs(pid):
        candidate = directory / f"shim-{pid}.sock"
        if candidate.exists():
            return candidate
    raise RestoreprofError(
        f"PID {pid} runs without restoreprof's interception library (no control socket "
        f"shim-{pid}.sock in {', '.join(str(d) for d in run_dirs(pid))})",
        hint="start the program with 'restoreprof exec -- CMD' to offload its GPU memory",
    )


def _parse_ok_numbers(text: str) -> dict[str, Any]:
    """'<bytes> <ns> [name_ns=<ns> ...]' -> {bytes, seconds, gbps, name_seconds...}."""
    words = text.split()
    nbytes, ns = (int(x) for x in words[:2])
    seconds = ns / 1e9
    result = {"bytes": nbytes, "seconds": seconds,
              "gbps": nbytes / seconds / 1e9 if seconds > 0 else 0.0}
    for word in words[2:]:  # RELOAD's map_ns, pool_ns; ADOPT's remaining
        name, _, value = word.partition("=")
        if not value.isdigit():
            continue
        if name.endswith("_ns"):
            result[name.removesuffix("_ns") + "_seconds"] = int(value) / 1e9
        else:
            result[name] = int(value)
    return result


class ShimControl:
    """Requests to one process's interception library."""

    def __init__(self, pid: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.pid = pid
        self.timeout_s = timeout_s
        self.path = socket_path(pid)

    def request(self, line: str, fd: int | None = None) -> str:
        """Send one request line (with fd attached, for ADOPT); the text after OK, or
        RestoreprofError with the library's ERR."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(self.path))
            except PermissionError:
                raise RestoreprofError(
                    f"not allowed to use PID {self.pid}'s control socket {self.path}",
                    hint="run as the process owner or as root") from None
            except OSError as exc:
                raise RestoreprofError(
                    f"PID {self.pid}'s control socket {self.path} does not answer: {exc}",
                    hint="the process may have exited or be stopped; check it with ps") from None
            data = line.encode() + b"\n"
            if fd is not None:  # the descriptor rides on the first byte; the rest follows
                socket.send_fds(sock, [data[:1]], [fd])
                data = data[1:]
            sock.sendall(data)
            reply = b""
            while not reply.endswith(b"\n"):
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        text = reply.decode(errors="replace").strip()
        if text.startswith("OK"):
            return text[2:].strip()
        message = text.removeprefix("ERR").strip() or "no reply"
        hint = ("run as the process owner or as root" if "permission" in message
                else "see the process's stderr (RESTOREPROF_SHIM_DEBUG=1 logs more)")
        raise RestoreprofError(f"PID {self.pid}: {line.split()[0]} failed: {message}", hint=hint)

    def _transfer(self, verb: str, path: Path, cfg: OptimizerConfig | None,
                  safe: bool = False, extra: str = "") -> dict[str, Any]:
        path = Path(path).resolve()
        if any(c.isspace() for c in str(path)):
            raise RestoreprofError(f"snapshot path {path} contains whitespace",
                                   hint="use a checkpoint directory without spaces")
        cfg = cfg or OptimizerConfig()
        # safe: one thread and one stream, the plainest path, for a retry after a failure.
        streams, threads = (1, 1) if safe else (cfg.streams, cfg.threads)
        start = time.monotonic()
        result = _parse_ok_numbers(self.request(
            f"{verb} {path} {streams} {cfg.chunk_mb} {threads} {int(cfg.pinned)}{extra}"))
        result["wall_seconds"] = time.monotonic() - start
        return result

    def offload(self, path: Path, cfg: OptimizerConfig | None = None, *,
                chunk_dir: str | None = None, sync: bool = False) -> dict[str, Any]:
        """Write all GPU allocations as chunks (into chunk_dir: relative to path's folder unless
        absolute; default <path's name>.chunks) and their table to path, and release their
        memory; {bytes, seconds, gbps, written}. sync: durable before it returns."""
        extra = ""
        if chunk_dir is not None or sync:
            chunk_dir = chunk_dir or f"{Path(path).name}.chunks"
            if any(c.isspace() for c in chunk_dir):
                raise RestoreprofError(f"chunk folder {chunk_dir} contains whitespace",
                                       hint="use a store path without spaces")
            extra = f" {chunk_dir} {int(sync)}"
        return self._transfer("OFFLOAD", path, cfg, extra=extra)

    def reload(self, path: Path, cfg: OptimizerConfig | None = None,
               safe: bool = False) -> dict[str, Any]:
        """Map memory at the same addresses again and load path into it (checksums verified)."""
        return self._transfer("RELOAD", path, cfg, safe)

    def adopt(self, address: int, gpu_uuid: str, fd: int) -> dict[str, Any]:
        """Map preloaded memory (fd, see optimizer.preload) at an offloaded allocation's address;
        {bytes, seconds, remaining}. When none remains offloaded, the process runs on."""
        return _parse_ok_numbers(self.request(f"ADOPT {address:x} {gpu_uuid}", fd))

    def status(self) -> dict[str, Any]:
        fields = dict(item.split("=", 1) for item in self.request("STATUS").split())
        return {k: int(v) if v.isdigit() else v for k, v in fields.items()}
