"""Load the BPF program and attach it: the checks a user can act on, then bcc.

``Probes`` owns the bcc object: the traced-tgid map, the uprobes on each object that defines
CUDA functions, the ring buffer and the lost-record counter.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from restoreprof.errors import RestoreprofError, require_root
from restoreprof.probes import bpf_program, kallsyms_shortcut, uprobe_multi
from restoreprof.probes.cuda_functions import BY_SYMBOL
from restoreprof.probes.resolve import ProbeObject

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
SETUP_HINT = "run ./scripts/setup.sh as root"


def check_environment(with_bcc: bool = True) -> None:
    """Raise a RestoreprofError that says what to do when this machine cannot trace. (Without
    with_bcc, bcc's import is left to Probes, which raises the same error.)"""
    require_root("restoreprof trace")
    if not any(os.path.isdir(os.path.join(d, "events", "syscalls")) for d in TRACEFS_DIRS):
        raise RestoreprofError(
            "tracefs is not mounted (no /sys/kernel/tracing/events/syscalls)",
            hint="mount -t tracefs tracefs /sys/kernel/tracing",
        )
    if not os.path.exists("/sys/fs/bpf") and not os.path.exists("/proc/sys/kernel/bpf_stats_enabled"):
        raise RestoreprofError("this kernel has no BPF support",
                               hint="trace on a kernel built with CONFIG_BPF_SYSCALL=y")
    release = platform.release()
    if not (Path(f"/lib/modules/{release}/build/include").exists()
            or Path("/sys/kernel/kheaders.tar.xz").exists()):
        raise RestoreprofError(
            f"no kernel headers for {release}, which bcc needs to compile the probes",
            hint=f"{SETUP_HINT} (it installs linux-headers and links them under "
                 f"/lib/modules/{release}/build)",
        )
    if with_bcc:
        import_bcc()


def import_bcc():  # -> type[bcc.BPF], untyped module
    # Before bcc is loaded: bcc's own lookups of the probe-read helpers then skip a read of all
    # of /proc/kallsyms (kallsyms_shortcut.c); without the library, nothing changes.
    kallsyms_shortcut.install()
    try:
        from bcc import BPF
    except ImportError as exc:
        raise RestoreprofError(
            f"bcc is not importable ({exc})",
            hint=f"{SETUP_HINT}; it installs python3-bpfcc and makes .venv see it "
                 "(the PyPI package named 'bcc' is unrelated: do not install it)",
        ) from exc
    return BPF


class Probes:
    """The loaded BPF program; seed() the tgids to trace, attach() objects, poll() records."""

    def __init__(self, text: str, *, uprobe_multi: bool = True) -> None:
        BPF = import_bcc()
        self.uprobe_multi = uprobe_multi
        self._links: list[int] = []
        self._multi_progs: tuple[int, int] | None = None
        try:
            self.bpf = BPF(text=text.encode())
        except Exception as exc:  # bcc raises bare Exception on compile and load errors
            raise RestoreprofError(
                f"the BPF program did not compile or load: {exc}",
                hint=f"check the compiler output above; {SETUP_HINT} if headers are missing",
            ) from exc
        self._traced = self.bpf["traced"]
        self._attached: dict[tuple[int, int], ProbeObject] = {}
        self.attach_errors: list[str] = []

    def seed(self, pids: list[int]) -> None:
        for pid in pids:
            self._traced[ct.c_uint32(pid)] = ct.c_uint8(1)

    def attached(self, obj: ProbeObject) -> bool:
        try:
            return obj.identity in self._attached
        except OSError:
            return True  # gone: nothing to attach

    def attach(self, obj: ProbeObject) -> int:
        """Attach entry and return probes to each CUDA function obj defines; returns how many."""
        if self.attached(obj):
            return 0
        self._attached[obj.identity] = obj
        if self.uprobe_multi:
            return self._attach_multi(obj)
        count = 0
        for symbol in sorted(obj.symbols):
            index = BY_SYMBOL[symbol]
            try:
                self.bpf.attach_uprobe(name=obj.path.encode(), sym=symbol.encode(),
                                       fn_name=bpf_program.entry_function(index).encode())
                self.bpf.attach_uretprobe(name=obj.path.encode(), sym=symbol.encode(),
                                          fn_name=bpf_program.RETURN_FUNCTION.encode())
                count += 1
            except Exception as exc:  # bcc: bare Exception
                self.attach_errors.append(f"{obj.path}:{symbol}: {exc}")
        return count

    def _attach_multi(self, obj: ProbeObject) -> int:
        if self._multi_progs is None:
            attach_type = uprobe_multi.BPF_TRACE_UPROBE_MULTI
            enter = self.bpf.load_func(bpf_program.ENTRY_FUNCTION.encode(), self.bpf.KPROBE,
                                       attach_type=attach_type)
            leave = self.bpf.load_func(bpf_program.RETURN_FUNCTION.encode(), self.bpf.KPROBE,
                                       attach_type=attach_type)
            self._multi_progs = (enter.fd, leave.fd)
        offsets = [offset for _, offset in obj.offsets]
        cookies = [bpf_program.cookie(BY_SYMBOL[name]) for name, _ in obj.offsets]
        try:
            self._links.append(uprobe_multi.attach(self._multi_progs[0], obj.path, offsets,
                                                   cookies))
            self._links.append(uprobe_multi.attach(self._multi_progs[1], obj.path, offsets,
                                                   cookies, retprobe=True))
        except OSError as exc:
            self.attach_errors.append(str(exc))
            return 0
        return len(offsets)

    @property
    def objects(self) -> list[ProbeObject]:
        return list(self._attached.values())

    def open(self, callback: Callable[[int, int, int], int]) -> None:
        self.bpf["events"].open_ring_buffer(callback)

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume(self) -> None:
        self.bpf.ring_buffer_consume()

    def lost(self) -> int:
        return int(sum(self.bpf["lost"][ct.c_int(0)]))

    def close(self) -> None:
        """Detach everything. Each uprobe or tracepoint detach waits for an RCU grace period
        (about 0.1 s on 6.x kernels), so they are closed from many threads at once: bcc's
        one-by-one cleanup takes 15 s for 130 uprobes, this takes well under a second."""
        from bcc import lib

        bpf = self.bpf
        fds = [(name, fd) for name, fd in bpf.uprobe_fds.items()]
        fds += [(None, fd) for fd in bpf.tracepoint_fds.values()]
        fds += [(None, fd) for fd in self._links]
        with ThreadPoolExecutor(max_workers=min(64, max(1, len(fds)))) as pool:
            list(pool.map(lambda item: _close(item[1]), fds))
        for name, _fd in fds:
            if name is not None:
                lib.bpf_detach_uprobe(name)
        bpf.uprobe_fds.clear()
        bpf.tracepoint_fds.clear()
        self._links.clear()
        bpf.cleanup()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
