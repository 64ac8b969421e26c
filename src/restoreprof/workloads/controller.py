"""Start, wait for and verify a hold_memory workload from another process (tests, demo, tuner)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError


@dataclass
class HeldMemory:
    """A running hold_memory process; after a restore, pid is the restored one's (same PID)."""

    pid: int
    state_dir: Path
    expected_digest: str

    @classmethod
    def start(cls, state_dir: Path, mib: int, gpu_mib: int = 0, seed: int = 1234,
              env: dict[str, str] | None = None, timeout_s: float = 300,
              prefix: list[str] | None = None, children: int = 0,
              gpu_per_child: bool = False) -> HeldMemory:
        """Start a holder (prefix: e.g. ['restoreprof', 'exec', '--']); children: a tree of N;
        gpu_per_child: child N holds its GPU memory on GPU N."""
        cmd = [*(prefix or []), sys.executable, "-m", "restoreprof.workloads.hold_memory",
               "--mib", str(mib), "--gpu-mib", str(gpu_mib), "--seed", str(seed),
               "--state", str(state_dir), "--children", str(children)]
        if gpu_per_child:
            cmd.append("--gpu-per-child")
        return cls.start_command(cmd, state_dir, env=env, timeout_s=timeout_s)

    @classmethod
    def start_command(cls, cmd: list[str], state_dir: Path, env: dict[str, str] | None = None,
                      timeout_s: float = 300) -> HeldMemory:
        """Start any program that speaks the ready/verified protocol (e.g. torch_model)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "ready").unlink(missing_ok=True)
        # Own session, no pipes: CRIU dumps it without --shell-job or external pipes.
        with open(state_dir / "stderr.log", "ab") as stderr:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=stderr, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout_s
        while not (state_dir / "ready").exists():
            if proc.poll() is not None:
                log = (state_dir / "stderr.log").read_text(errors="replace")[-2000:]
                raise RestoreprofError(f"workload exited with {proc.returncode}:\n{log}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RestoreprofError(f"workload not ready after {timeout_s:.0f} s")
            time.sleep(0.05)
        digest = (state_dir / "ready").read_text().split()[0]
        pid = int((state_dir / "ready").read_text().rsplit("pid=", 1)[1])
        # Reap the child in the background when it ends so it leaves no zombie.
        threading.Thread(target=proc.wait, daemon=True).start()
        return cls(pid, state_dir, digest)

    def children(self) -> list[HeldMemory]:
        """The holders of a tree started with children=N."""
        found = []
        for state in sorted(self.state_dir.glob("child-*")):
            text = (state / "ready").read_text()
            found.append(HeldMemory(int(text.rsplit("pid=", 1)[1]), state, text.split()[0]))
        return found

    def verify(self, timeout_s: float = 120) -> bool:
        """Ask the process to re-hash what it holds; True when it matches the digest at start."""
        verified = self.state_dir / "verified"
        verified.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while not verified.exists():
            if not Path(f"/proc/{self.pid}").exists():
                raise RestoreprofError(f"workload PID {self.pid} is gone")
            if time.monotonic() > deadline:
                raise RestoreprofError(f"workload PID {self.pid} did not answer in {timeout_s:.0f} s")
            time.sleep(0.02)
        verdict, digest = verified.read_text().split()[:2]
        return verdict == "OK" and digest == self.expected_digest

    def overwrite_gpu_memory(self, timeout_s: float = 60) -> None:
        """Have it write new data over the first half of its GPU memory (SIGUSR2); verify()
        expects the new contents from then on."""
        refilled = self.state_dir / "refilled"
        refilled.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        while not refilled.exists():
            if time.monotonic() > deadline:
                raise RestoreprofError(f"workload PID {self.pid} did not overwrite its GPU memory "
                                       f"in {timeout_s:.0f} s")
            time.sleep(0.02)
        self.expected_digest = refilled.read_text().split()[0]

    def gpu_device(self) -> int | None:
        """The GPU its GPU memory was on at the last verify (None: it holds none)."""
        fields = (self.state_dir / "verified").read_text().split()
        found = [int(f[4:]) for f in fields if f.startswith("gpu=")]
        return found[0] if found else None

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def alive(self) -> bool:
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def kill(self, timeout_s: float = 10) -> None:
        """SIGKILL, as a crash would, then wait until its PID is free (reaped here when it is
        this process's child), so that a restore of it can follow."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        # Wait until the PID is reaped, not only dead: a restore needs it free.
        while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline + timeout_s:
            time.sleep(0.01)
