"""Start a command held before exec, so that the probes are attached before it runs.

subprocess.Popen cannot do this: it waits for the exec before returning. The child here
forks, blocks reading a pipe and execs once ``release()`` writes to it. Its PID is known
(and traced) from the start; the blocked read began before tracing, so it leaves no event.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

from restoreprof.errors import RestoreprofError


class PausedChild:
    def __init__(self, argv: list[str], *, capture_stdout: bool = False) -> None:
        program = shutil.which(argv[0]) if os.sep not in argv[0] else argv[0]
        if not program or not os.access(program, os.X_OK):
            raise RestoreprofError(f"cannot run {argv[0]}: not found or not executable",
                                   hint="check the command name (and PATH)")
        go_read, self._go_write = os.pipe()
        out_read, out_write = os.pipe() if capture_stdout else (-1, -1)
        pid = os.fork()
        if pid == 0:  # child: only async-signal-safe work until exec
            try:
                os.close(self._go_write)
                if capture_stdout:
                    os.close(out_read)
                    os.dup2(out_write, 1)
                    os.close(out_write)
                os.read(go_read, 1)
                os.close(go_read)
                os.execv(program, argv)
            finally:
                os._exit(127)
        os.close(go_read)
        if capture_stdout:
            os.close(out_write)
        self.pid = pid
        self.stdout_fd = out_read
        self.returncode: int | None = None

    def release(self) -> None:
        if self._go_write >= 0:
            os.write(self._go_write, b"g")
            os.close(self._go_write)
            self._go_write = -1

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout_s: float | None = None) -> int | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        return self.returncode

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after timeout_s; releases it first if it never ran."""
        if self.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        self.release()
        if self.wait(timeout_s) is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()
