"""The Python half of restoreprof's CRIU plugin (plugin.c): the parts that move GPU memory.

The plugin starts it detached, with one end of a socketpair on fd 3, and sends one line per
request; each answer is one "OK ..." or "ERR ..." line, after any number of "LOG ..." lines
that the plugin writes into CRIU's log.

    python -m restoreprof.criu_plugin.agent dump IMAGES
        CHECK <pid>                  -> OK | ERR why (a runtime whose checkpoint the driver
                                        cannot restore: checkpoint.compat)
        OFFLOAD <pid> <vpid>         -> OK <snapshot> <bytes> | OK - 0 (no library) | ERR why
        RELOAD <pid> <vpid> <snap>   -> OK | ERR why          (a failed dump, pid still runs)
        WATCH <pid> <vpid> <snap|->  -> OK                    (a process CRIU holds frozen)
        RESUME done|failed           -> OK, then: once CRIU lets the watched processes go,
                                        those that live on get their GPU back (driver restore
                                        + unlock, then a reload of offloaded memory)
    python -m restoreprof.criu_plugin.agent restore IMAGES
        (preloads every snapshot of IMAGES/restoreprof-criu.txt at once, through the warm pool
        when one runs, while CRIU restores)
        ADOPT <pid> <vpid> <snap>    -> OK <what happened> | ERR why
        end of input                 -> what nobody adopted is released; the agent exits

Snapshots are opened here and handed to the interception library as descriptors: a process in
a container cannot open a path of the host's images folder, and the images may be read-only
at restore (nothing is written there then).

Ways out, for a person reading CRIU's log after a failure:
    python -m restoreprof.criu_plugin.agent reload PID SNAPSHOT
    python -m restoreprof.criu_plugin.agent resume PID
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig

RECORD_NAME = "restoreprof-criu.txt"  # plugin.c: RPC_RECORD
RELEASE_TIMEOUT_S = 120.0


def snapshot_name(vpid: int) -> str:
    return f"gpu-{vpid}.snap"


def read_record(images: Path) -> dict[int, tuple[str | None, int]]:
    """{vpid: (snapshot or None, bytes)} from the plugin's record beside CRIU's images."""
    entries = {}
    with contextlib.suppress(FileNotFoundError):
        for line in (images / RECORD_NAME).read_text().splitlines():
            words = line.split()
            if len(words) == 3 and words[0].isdigit():
                entries[int(words[0])] = (None if words[1] == "-" else words[1], int(words[2]))
    return entries


# --- the interception library, spoken to with the snapshot as a descriptor ---------------------


def _transfer(verb: str, pid: int, fd: int, cfg: OptimizerConfig, safe: bool = False) -> int:
    from restoreprof.optimizer.control import ShimControl

    streams, threads = (1, 1) if safe else (cfg.streams, cfg.threads)
    # OFFLOAD: how long the program's release hooks may take (0: do not run them), as
    # ShimControl's own OFFLOAD asks.
    release = f" {cfg.release_timeout_s if cfg.release_caches else 0}" if verb == "OFFLOAD" else ""
    answer = ShimControl(pid).request(
        f"{verb} - {streams} {cfg.chunk_mb} {threads} {int(cfg.pinned)}{release}", fd=fd)
    return int(answer.split()[0]) if answer else 0


def offload(pid: int, path: Path, cfg: OptimizerConfig) -> int:
    """pid's GPU memory -> path (created here); bytes written. Raises; nothing is left behind."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return _transfer("OFFLOAD", pid, fd, cfg)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def reload(pid: int, path: Path, cfg: OptimizerConfig) -> str:
    """path -> pid's GPU memory, inside the process; on a fast-path failure once more on the
    plainest path (one thread, one stream). Raises when both fail (the process stays held)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            return f"{_transfer('RELOAD', pid, fd, cfg)} bytes reloaded inside the process"
        except RestoreprofError as first:
            done = _transfer("RELOAD", pid, fd, cfg, safe=True)
            return f"{done} bytes reloaded on the plain path after: {first}"
    finally:
        os.close(fd)


# --- the driver, for processes that live on after a dump ----------------------------------------


def resume_driver(pid: int) -> str:
    """Driver restore (when checkpointed) and unlock (when locked) of pid."""
    from restoreprof.cuda import driver

    state = driver.process_state(pid)
    if state == "checkpointed":
        driver.process_restore(pid)
        state = driver.process_state(pid)
    if state == "locked":
        driver.process_unlock(pid)
    return f"CUDA state was {state}, now {driver.process_state(pid)}"


def released(pid: int) -> bool | None:
    """True once no tracer holds pid; None when it is gone or dying (SIGKILL pending)."""
    try:
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return None
    if status.get("State", "").strip()[:1] in ("Z", "X"):
        return None
    kill_bit = 1 << (9 - 1)
    if any(int(status.get(k, "0").strip(), 16) & kill_bit for k in ("ShdPnd", "SigPnd")):
        return None
    return int(status.get("TracerPid", "0").strip()) == 0


def wait_released(pid: int, timeout_s: float = RELEASE_TIMEOUT_S) -> bool | None:
    deadline = time.monotonic() + timeout_s
    while (state := released(pid)) is False and time.monotonic() < deadline:
        time.sleep(0.005)
    return state


# --- the conversation with the plugin -----------------------------------------------------------


class Channel:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.reader = self.sock.makefile("r", encoding="utf-8", errors="replace")

    def lines(self):
        for line in self.reader:
            yield line.strip()

    def say(self, kind: str, text: str = "") -> None:
        text = " ".join(text.split())  # one line, whatever the message held
        with contextlib.suppress(OSError):
            self.sock.sendall(f"{kind} {text}\n".encode() if text else f"{kind}\n".encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()


def serve_dump(channel: Channel, images: Path, cfg: OptimizerConfig) -> list[tuple[int, Path | None]]:
    """Answers the dump's requests; returns the processes to resume once CRIU lets them go
    (empty when the dump succeeded and the processes end with it)."""
    from restoreprof.checkpoint.gpu import has_shim

    watched: list[tuple[int, Path | None]] = []
    for line in channel.lines():
        words = line.split()
        try:
            if words[:1] == ["CHECK"]:
                from restoreprof.checkpoint.compat import refuse_unrestorable

                refuse_unrestorable([int(words[1])])
                channel.say("OK")
            elif words[:1] == ["OFFLOAD"]:
                pid, vpid = int(words[1]), int(words[2])
                if not (has_shim(pid) and cfg.offload and cfg.parallel):
                    channel.say("OK", "- 0")  # the driver checkpoints its GPU memory
                    continue
                name = snapshot_name(vpid)
                start = time.monotonic()
                nbytes = offload(pid, images / name, cfg)
                channel.say("LOG", f"PID {pid}: offloaded {nbytes} bytes in "
                                   f"{time.monotonic() - start:.2f} s")
                channel.say("OK", f"{name} {nbytes}")
            elif words[:1] == ["RELOAD"]:
                channel.say("OK", reload(int(words[1]), images / words[3], cfg))
            elif words[:1] == ["WATCH"]:
                snap = None if words[3] == "-" else images / words[3]
                watched.append((int(words[1]), snap))
                channel.say("OK")
            elif words[:1] == ["RESUME"]:
                channel.say("OK")
                return watched
            else:
                channel.say("ERR", f"unknown request {line!r}")
        except RestoreprofError as exc:
            channel.say("ERR", f"{exc.args[0]} ({exc.hint})" if exc.hint else str(exc))
        except (OSError, ValueError, IndexError) as exc:
            channel.say("ERR", str(exc))
    return []  # the plugin hung up without RESUME: CRIU ended, nothing is ours to resume


def resume_watched(watched: list[tuple[int, Path | None]], cfg: OptimizerConfig) -> int:
    """After CRIU let them go: give each process that lives on its GPU back. Logs to stderr
    (CRIU's, which has usually exited by then); returns how many failed."""
    failed = 0
    for pid, snapshot in watched:
        if not wait_released(pid):
            continue  # gone with the dump (CRIU kills a dumped tree), or never let go
        try:
            said = resume_driver(pid)
            if snapshot is not None:
                said += "; " + reload(pid, snapshot, cfg)
            print(f"restoreprof criu agent: PID {pid} resumed: {said}", file=sys.stderr)
        except (RestoreprofError, OSError) as exc:
            failed += 1
            print(f"restoreprof criu agent: PID {pid} could not be resumed: {exc}; see "
                  f"'python -m restoreprof.criu_plugin.agent resume|reload'", file=sys.stderr)
    return failed


class Preloads:
    """Every snapshot loaded into GPU memory in the background, for its process to adopt."""

    def __init__(self, images: Path, cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preload")
        self.futures: dict[str, Future] = {}
        if cfg.parallel and cfg.preload:
            for snapshot, _ in read_record(images).values():
                if snapshot:
                    self.futures[snapshot] = self._pool.submit(self._load, images / snapshot)

    def _load(self, path: Path):
        from restoreprof.optimizer.pool import preload_through_pool
        from restoreprof.optimizer.preload import preload_snapshot

        start = time.monotonic()
        pooled = preload_through_pool(path, self.cfg)
        if pooled is not None:
            return pooled, f"warm pool, {time.monotonic() - start:.2f} s"
        return preload_snapshot(path, self.cfg), f"this agent, {time.monotonic() - start:.2f} s"

    def adopt(self, pid: int, images: Path, snapshot: str) -> str:
        """pid maps its preloaded memory; on any failure its snapshot is reloaded instead."""
        from restoreprof.optimizer.preload import adopt

        future = self.futures.pop(snapshot, None)
        loaded = None
        try:
            if future is None:
                raise RestoreprofError("nothing was preloaded (CRIU_CUDA_PARALLEL_RESTORE=0?)")
            loaded, where = future.result()
            done = adopt(pid, loaded)
            return f"adopted {done['bytes']} bytes preloaded ({where})"
        except Exception as exc:  # the snapshot is intact: reload it inside the process
            return f"{reload(pid, images / snapshot, self.cfg)} (preload not adopted: {exc})"
        finally:
            if loaded is not None:
                loaded.release()

    def release(self) -> None:
        for future in self.futures.values():
            with contextlib.suppress(Exception):  # a failed preload holds nothing
                future.result()[0].release()
        self.futures.clear()
        self._pool.shutdown(wait=False)


def serve_restore(channel: Channel, images: Path, cfg: OptimizerConfig) -> None:
    preloads = Preloads(images, cfg)
    try:
        for line in channel.lines():
            words = line.split()
            try:
                if words[:1] == ["ADOPT"]:
                    channel.say("OK", preloads.adopt(int(words[1]), images, words[3]))
                else:
                    channel.say("ERR", f"unknown request {line!r}")
            except (RestoreprofError, OSError, ValueError, IndexError) as exc:
                channel.say("ERR", str(exc))
    finally:
        preloads.release()


def main(argv: list[str]) -> int:
    usage = ("usage: python -m restoreprof.criu_plugin.agent dump|restore IMAGES (from the CRIU "
             "plugin) | reload PID SNAPSHOT | resume PID")
    if len(argv) < 2:
        print(usage, file=sys.stderr)
        return 2
    try:
        cfg = OptimizerConfig.load()
        if argv[0] == "reload" and len(argv) == 3:
            print(reload(int(argv[1]), Path(argv[2]), cfg))
            return 0
        if argv[0] == "resume" and len(argv) == 2:
            print(resume_driver(int(argv[1])))
            return 0
        if argv[0] not in ("dump", "restore") or len(argv) != 2:
            print(usage, file=sys.stderr)
            return 2
    except (RestoreprofError, ValueError) as exc:
        print(f"restoreprof criu agent: {exc}", file=sys.stderr)
        return 1
    channel = Channel(3)
    images = Path(argv[1])
    if argv[0] == "restore":
        serve_restore(channel, images, cfg)
        return 0
    watched = serve_dump(channel, images, cfg)
    channel.close()  # CRIU goes on; the processes are let go after it returns from fini
    return 1 if resume_watched(watched, cfg) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
