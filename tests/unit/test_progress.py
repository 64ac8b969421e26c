"""Progress: StepClock tells an observer of each step; the commands draw it on a terminal only."""

from __future__ import annotations

import argparse
import io
import os
import pty
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from restoreprof.checkpoint.steps import StepClock, observing
from restoreprof.commands._output import StepProgress, progress_wanted


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int | None]] = []

    def step_started(self, name, pid):
        self.seen.append(("start", name, pid))

    def step_finished(self, step):
        self.seen.append(("end", step.name, step.pid))


def test_observer_hears_each_step_start_and_end_on_any_thread():
    recorder = Recorder()
    with observing(recorder):
        clock = StepClock()   # made inside the block, as checkpoint() and restore() make theirs
    assert clock.run("criu restore", lambda: 5) == 5
    with ThreadPoolExecutor(2) as pool:   # steps of restored processes run on pool threads
        list(pool.map(lambda pid: clock.run("GPU restore", lambda: None, pid=pid), [11, 12]))
    clock.add("measured elsewhere", 0, 10)
    assert recorder.seen[:2] == [("start", "criu restore", None), ("end", "criu restore", None)]
    assert sorted(recorder.seen[2:6]) == [("end", "GPU restore", 11), ("end", "GPU restore", 12),
                                          ("start", "GPU restore", 11),
                                          ("start", "GPU restore", 12)]
    assert recorder.seen[-1] == ("end", "measured elsewhere", None)
    assert StepClock().observer is None   # outside the block: no one listens


def test_a_failing_display_never_fails_the_work():
    class Broken:
        def step_started(self, name, pid):
            raise RuntimeError("terminal gone")

        step_finished = step_started

    clock = StepClock(observer=Broken())
    assert clock.run("criu dump", lambda: "done") == "done"
    assert [s.name for s in clock.steps] == ["criu dump"]


def test_a_sequence_times_every_moment_and_ends_on_error():
    recorder = Recorder()
    clock = StepClock(observer=recorder)
    try:
        with clock.sequence() as phase:
            phase("prepare")
            phase("criu dump")
            assert [s.name for s in phase.so_far()] == ["prepare", "criu dump"]  # open one too
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert [s.name for s in clock.steps] == ["prepare", "criu dump"]  # the last ended too
    assert clock.steps[0].end_ns == clock.steps[1].start_ns
    assert recorder.seen == [("start", "prepare", None), ("end", "prepare", None),
                             ("start", "criu dump", None), ("end", "criu dump", None)]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_for_a_terminal_and_never_with_quiet_or_json(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    plain = argparse.Namespace(quiet=False, json=False)
    assert progress_wanted(plain, Tty())
    assert not progress_wanted(plain, io.StringIO())          # piped
    assert not progress_wanted(argparse.Namespace(quiet=True, json=False), Tty())
    assert not progress_wanted(argparse.Namespace(quiet=False, json=True), Tty())


def test_step_progress_draws_running_steps():
    stream = Tty()
    with StepProgress("restore", stream=stream) as progress:
        progress.step_started("criu restore", None)
        progress._progress.refresh()
        progress.step_finished(type("S", (), {"name": "criu restore", "pid": None})())
    assert "criu restore" in stream.getvalue()
    assert progress.finished == 1


def _calibrate(tmp_path, stderr, *extra):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm"}
    return subprocess.run([sys.executable, "-m", "restoreprof", "calibrate", "-D", str(tmp_path),
                           "--no-gpu", "--disk-mib", "16", *extra], stdout=subprocess.PIPE,
                          stderr=stderr, env=env, timeout=120)


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:   # EIO: the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_calibrate_shows_progress_on_a_terminal_and_is_quiet_when_piped(tmp_path):
    main_fd, tty_fd = pty.openpty()
    try:
        done = _calibrate(tmp_path, tty_fd)
        os.close(tty_fd)
        tty_fd = -1
        drawn = _read_all(main_fd)
    finally:
        os.close(main_fd)
        if tty_fd >= 0:
            os.close(tty_fd)
    assert done.returncode == 0
    assert "calibrate: disk read" in drawn or "calibrate: host memcpy" in drawn, drawn
    piped = _calibrate(tmp_path, subprocess.PIPE)
    assert piped.returncode == 0 and piped.stderr == b""
    main_fd, tty_fd = pty.openpty()
    try:
        quiet = _calibrate(tmp_path, tty_fd, "--quiet")
        os.close(tty_fd)
        tty_fd = -1
        assert _read_all(main_fd) == ""
    finally:
        os.close(main_fd)
        if tty_fd >= 0:
            os.close(tty_fd)
    assert quiet.returncode == 0 and b"ceilings of" in quiet.stdout
