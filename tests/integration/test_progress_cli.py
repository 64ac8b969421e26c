"""checkpoint and restore draw progress on a terminal, and nothing when piped or --quiet."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root


def _run_on_tty(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run restoreprof with stderr a terminal; returns (result, what the terminal showed)."""
    main_fd, tty_fd = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "restoreprof", *args],
                              stdout=subprocess.PIPE, stderr=tty_fd, text=True, timeout=300,
                              env={**os.environ, "TERM": "xterm"})
        os.close(tty_fd)
        tty_fd = -1
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return done, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(main_fd)
        if tty_fd >= 0:
            os.close(tty_fd)


def test_checkpoint_and_restore_progress(tmp_path, restoreprof_cli):
    holder = HeldMemory.start(tmp_path / "state", 64)
    try:
        done, shown = _run_on_tty("checkpoint", "-p", str(holder.pid), "-D",
                                  str(tmp_path / "ckpt"))
        assert done.returncode == 0, shown
        assert "checkpoint: " in shown and "steps done" in shown
        assert "criu dump" in done.stdout   # the step table still goes to stdout
        done, shown = _run_on_tty("restore", "-D", str(tmp_path / "ckpt"), "--quiet")
        assert done.returncode == 0, shown
        assert shown == ""
        assert holder.alive() and holder.verify()
    finally:
        holder.stop()
    holder = HeldMemory.start(tmp_path / "state2", 64)
    try:
        dumped = restoreprof_cli("checkpoint", "-p", str(holder.pid), "-D",
                                 str(tmp_path / "ckpt2"))
        assert dumped.returncode == 0 and dumped.stderr == ""   # piped: no progress
        done, shown = _run_on_tty("restore", "-D", str(tmp_path / "ckpt2"))
        assert done.returncode == 0, shown
        assert "restore: " in shown and "steps done" in shown
        assert holder.alive() and holder.verify()
    finally:
        holder.stop()
