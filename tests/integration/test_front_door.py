"""The `restoreprof` command's native front door (restoreprof/front/front.c) against a stand-in
pool socket and a stand-in restoreprof-py: what it sends, how it reads every answer, and each
way it hands the command to Python instead. (tests/integration/test_pooled_restore.py runs it
against a real warm pool restoring a checkpoint on the fake driver.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from restoreprof.front.build import build_front

TRICKY = 'a "quoted" \\ back\tslash\nnewline \x01 é 漢 🚀'


@pytest.fixture(scope="module")
def front(tmp_path_factory) -> Path:
    """The front door with a restoreprof-py that says what it was given, and exits 7."""
    folder = tmp_path_factory.mktemp("bin")
    entry = folder / "restoreprof-py"
    entry.write_text('#!/bin/sh\necho "python: $* pool=${RESTOREPROF_POOL_RESTORE-unset}"\nexit 7\n')
    entry.chmod(0o755)
    return build_front(folder / "restoreprof")


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(folder))
    monkeypatch.delenv("RESTOREPROF_POOL_RESTORE", raising=False)
    return folder


class StandInPool:
    """Listens where this user's pool would; records the request; answers `answer` (bytes or
    a dict), or hangs up without one (None)."""

    def __init__(self, run_dir: Path, answer: dict | bytes | None, delay_s: float = 0) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(run_dir / f"warm-{os.geteuid()}.sock"))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.requests: list[dict] = []
        self.thread = threading.Thread(target=self._serve, args=(answer, delay_s), daemon=True)
        self.thread.start()

    def _serve(self, answer, delay_s: float) -> None:
        try:
            conn, _ = self.listener.accept()
        except (TimeoutError, OSError):
            return
        with conn:
            self.requests.append(json.loads(conn.recv(1 << 16)))
            time.sleep(delay_s)
            if answer is not None:
                with contextlib.suppress(BrokenPipeError):  # an interrupted client is gone
                    conn.send(answer if isinstance(answer, bytes) else json.dumps(answer).encode())

    def __enter__(self) -> StandInPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes an accept nobody came to
        self.listener.close()
        self.thread.join(timeout=15)


def run(front: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(front), *args], capture_output=True, timeout=30,
                          env={**os.environ, **(env or {})}, **kw)


def test_commands_other_than_restore_go_to_python_as_given(front, run_dir):
    with StandInPool(run_dir, {"exit_code": 0}) as pool:
        out = run(front, "checkpoint", "-p", "1", "-D", TRICKY)
    assert out.returncode == 7
    assert out.stdout.decode() == f"python: checkpoint -p 1 -D {TRICKY} pool=unset\n"
    assert pool.requests == []


def test_a_pool_answer_is_printed_as_given_and_its_exit_code_kept(front, run_dir, tmp_path):
    answer = {"stdout": f"restored {TRICKY}\n", "stderr": "a warning \U0001F680\n",
              "exit_code": 4}
    with StandInPool(run_dir, answer) as pool:
        out = run(front, "restore", "-D", TRICKY, "--json", cwd=tmp_path,
                  env={"RESTOREPROF_LAZY_THREADS": "3", "OTHER": "x\"y"})
    assert (out.returncode, out.stdout.decode(), out.stderr.decode()) == \
        (4, answer["stdout"], answer["stderr"])
    [request] = pool.requests
    assert request["op"] == "restore" and request["argv"] == ["-D", TRICKY, "--json"]
    assert request["cwd"] == str(tmp_path)
    assert request["env"]["RESTOREPROF_LAZY_THREADS"] == "3" and request["env"]["OTHER"] == 'x"y'


@pytest.mark.parametrize("answer", [
    {"declined": "the pool runs with another HOME"},
    {"error": "expected a preload request with one descriptor\n  -> ..."},  # an older pool
], ids=["declined", "older-pool"])
def test_a_restore_the_pool_does_not_take_runs_in_python(front, run_dir, answer):
    with StandInPool(run_dir, answer) as pool:
        out = run(front, "restore", "-D", "/x")
    assert out.returncode == 7 and len(pool.requests) == 1
    told_not_to_ask = "declined" in answer  # asked once: Python need not ask again
    assert out.stdout.decode() == f"python: restore -D /x pool={'0' if told_not_to_ask else 'unset'}\n"


@pytest.mark.parametrize("answer", [None, b"not json", {"stdout": "x"}],
                         ids=["hung-up", "unreadable", "no-exit-code"])
def test_a_pool_lost_after_the_request_is_reported_never_retried(front, run_dir, answer):
    with StandInPool(run_dir, answer) as pool:
        out = run(front, "restore", "-D", "/x")
    assert len(pool.requests) == 1  # asked once,
    assert out.returncode == 1 and out.stdout == b""  # and Python was not run: no second restore
    assert b"the warm pool stopped answering during the restore" in out.stderr
    assert b"--gpu-only" in out.stderr


def test_no_pool_and_a_pool_turned_off_go_to_python_without_asking(front, run_dir):
    out = run(front, "restore", "-D", "/x")
    assert out.returncode == 7 and out.stdout.decode() == "python: restore -D /x pool=unset\n"
    with StandInPool(run_dir, {"exit_code": 0}) as pool:
        off = run(front, "restore", "-D", "/x", env={"RESTOREPROF_POOL_RESTORE": " 0 "})
    assert off.returncode == 7 and pool.requests == []


@pytest.mark.parametrize("damage", ["group-writable", "symlink"])
def test_a_socket_in_an_untrusted_folder_is_left_to_python(front, run_dir, tmp_path,
                                                           monkeypatch, damage):
    with StandInPool(run_dir, {"exit_code": 0}) as pool:
        if damage == "group-writable":
            run_dir.chmod(0o770)
        else:
            link = tmp_path / "link"
            link.symlink_to(run_dir)
            monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(link))
        out = run(front, "restore", "-D", "/x")
    assert out.returncode == 7 and pool.requests == []  # Python says what it refused


def test_arguments_that_are_not_utf8_are_left_to_python(front, run_dir):
    with StandInPool(run_dir, {"exit_code": 0}) as pool:
        out = subprocess.run([str(front).encode(), b"restore", b"-D", b"/x\xff"],
                             capture_output=True, timeout=30)
    assert out.returncode == 7 and pool.requests == []


def test_an_interrupt_while_the_pool_restores_says_the_pool_finishes_it(front, run_dir):
    with StandInPool(run_dir, {"exit_code": 0}, delay_s=3) as pool:
        proc = subprocess.Popen([str(front), "restore", "-D", "/x"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not pool.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and b"the warm pool finishes the restore it began" in err


def test_without_restoreprof_py_beside_it_it_says_how_to_mend_it(front, run_dir, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(front, alone / "restoreprof")
    out = run(alone / "restoreprof", "doctor")
    assert out.returncode == 3
    assert b"restoreprof-py" in out.stderr and b"reinstall restoreprof" in out.stderr
