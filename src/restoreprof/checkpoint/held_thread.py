"""One thread of a held process let run, every other thread left stopped.

The driver restores a process's GPU state on a thread of that process (the driver's restore
thread, `cuCheckpointProcessGetRestoreThreadId`). CRIU leaves the restored processes stopped
(--leave-stopped: a group stop, state T); resumed whole before the driver's restore, the
program's threads would run while the driver has not yet mapped its memory back. CRIU's own
CUDA plugin lets only the restore thread run, under ptrace, while the program's threads stay
frozen. That is what this module does:

    with running_alone(tid):          # PTRACE_SEIZE, signals blocked, PTRACE_CONT
        driver.process_restore(pid)   # the driver's thread works; the program's threads do not
    # PTRACE_INTERRUPT, the signal mask put back, PTRACE_DETACH: the thread rejoins the group
    # stop, and the whole process resumes later with one SIGCONT

If this process dies meanwhile, the kernel detaches the thread, which then stops with its
group again (the group stop is still in effect): the program's own threads never ran.

Every ptrace call of one thread must come from the thread that seized it (ptrace binds a tracee
to a tracer thread): use running_alone within one thread of this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Iterator

from restoreprof.errors import RestoreprofError

PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
_WALL = 0x40000000  # waitpid: threads too
_SIGTRAP = signal.SIGTRAP
STOP_TIMEOUT_S = 10.0  # a thread asked to stop that has not: something else holds it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


class HeldThreadError(RestoreprofError):
    """A thread could not be let run alone (ptrace refused, or it went away)."""


def _ptrace(request: int, tid: int, addr: int = 0, data: int | ctypes.Array | None = 0) -> None:
    if isinstance(data, ctypes.Array):
        data = ctypes.addressof(data)
    if _libc.ptrace(request, tid, addr, data) == -1:
        err = ctypes.get_errno()
        raise HeldThreadError(f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def _trapped(tid: int, timeout_s: float | None) -> int | None:
    """Wait until tid reports a ptrace stop, up to timeout_s (0: only one already reported; None:
    raise at STOP_TIMEOUT_S); returns the signal to hand back at detach (one that was on its way to
    the thread when it stopped) or 0, or None when nothing was reported in time."""
    deadline = time.monotonic() + (STOP_TIMEOUT_S if timeout_s is None else timeout_s)
    while True:
        try:
            got, status = os.waitpid(tid, _WALL | os.WNOHANG)
        except ChildProcessError as exc:
            raise HeldThreadError(f"thread {tid} is not traced by this process") from exc
        if got == tid and os.WIFSTOPPED(status):
            sig = os.WSTOPSIG(status)
            signal_delivery = (status >> 16) == 0 and sig != _SIGTRAP
            return sig if signal_delivery else 0
        if got == tid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            raise HeldThreadError(f"thread {tid} ended")
        if time.monotonic() >= deadline:
            if timeout_s is None:
                raise HeldThreadError(f"thread {tid} did not stop within {STOP_TIMEOUT_S} s")
            return None
        time.sleep(0.0002)


def _let_go(tid: int, mask: ctypes.Array) -> None:
    """Stop tid (unless it stopped by itself: a signal, a group stop), put its signal mask back,
    and detach it: it rejoins its group stop."""
    pending = _trapped(tid, 0)
    if pending is None:
        _ptrace(PTRACE_INTERRUPT, tid)
        pending = _trapped(tid, None)
    with contextlib.suppress(HeldThreadError):
        _ptrace(PTRACE_SETSIGMASK, tid, ctypes.sizeof(mask), mask)
    _ptrace(PTRACE_DETACH, tid, 0, pending)


def reap(tid: int, within_s: float = 2.0) -> None:
    """Collect tid's exit if it died while traced by this thread (a killed process's traced
    thread stays a zombie until its tracer waits, and its PID stays taken); nothing if it is
    not traced here any more."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            got, status = os.waitpid(tid, _WALL | os.WNOHANG)
        except ChildProcessError:
            return  # detached, or collected already
        if got == tid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.001)


@contextlib.contextmanager
def running_alone(tid: int) -> Iterator[None]:
    """Let thread tid run while the other threads of its (stopped) process stay stopped; on
    exit it is stopped again and handed back to its group stop. Signals other than SIGTRAP stay
    blocked on it meanwhile, so none of the program's handlers runs there. Raises
    HeldThreadError when ptrace refuses (the thread is left as it was) or the thread is gone."""
    _ptrace(PTRACE_SEIZE, tid)
    mask = (ctypes.c_uint64 * 1)()
    try:
        _trapped(tid, None)  # a stopped thread, seized, reports its stop as a trap
        _ptrace(PTRACE_GETSIGMASK, tid, ctypes.sizeof(mask), mask)
        block = (ctypes.c_uint64 * 1)(~(1 << (_SIGTRAP - 1)) & (2**64 - 1))
        _ptrace(PTRACE_SETSIGMASK, tid, ctypes.sizeof(block), block)
        _ptrace(PTRACE_CONT, tid)
    except BaseException:
        with contextlib.suppress(HeldThreadError):
            _ptrace(PTRACE_DETACH, tid)
        raise
    try:
        yield
    except BaseException:
        try:
            _let_go(tid, mask)
        except HeldThreadError:  # the body's failure is the one to report
            reap(tid)
        raise
    try:
        _let_go(tid, mask)
    except HeldThreadError:
        reap(tid)
        raise
