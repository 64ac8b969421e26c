"""`restoreprof restore` carried out by a running warm pool (commands/pooled_restore.py) on the
fake driver: the same result as a restore in the command's own process, the same errors and exit
codes, and every way back to the local restore: no pool, a pool told not to, a pool that
declines (another environment, --criu-arg), a pool from before restores were served; and a
pool that dies midway is reported, never retried. The tests that run a real pool run each
client: Python's (restoreprof.launcher) and the native front door (restoreprof/front/front.c,
tests/integration/test_front_door.py for its own edge cases)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from restoreprof.checkpoint import checkpoint
from restoreprof.commands.pooled_restore import restore_through_pool
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]
CLI = [sys.executable, "-m", "restoreprof"]
CLIENT = list(CLI)  # the command the restores run: set per test by the client fixture


class Pool:
    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen([*CLI, "warm", *flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        banner = []
        while not (line := self.proc.stdout.readline()).startswith("serving preloads on"):
            assert line, f"restoreprof warm exited: {''.join(banner)}"
            banner.append(line)

    def stop(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=30)[0]


def _restore(ckpt: Path | str, *extra: str, env: dict | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, "restore", "-D", str(ckpt), *extra], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(params=["python", "native"])
def client(request, monkeypatch) -> list[str]:
    """The restore command: Python's launcher, or the native front door."""
    command = CLI if request.param == "python" else [str(request.getfixturevalue("front_door"))]
    monkeypatch.setattr(sys.modules[__name__], "CLIENT", list(command))
    return list(command)


@pytest.fixture
def held(fake_driver, tmp_path, client):
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=16, prefix=EXEC)
    checkpoint(w.pid, tmp_path / "ckpt")
    yield w, tmp_path / "ckpt"
    if w.alive():
        w.stop()


def test_the_pool_restores_and_the_client_prints_what_a_local_restore_prints(held):
    w, ckpt = held
    pool = Pool("--hold-mib", "0")
    try:
        out = _restore(ckpt, "--json", env={"RESTOREPROF_POOL_RESTORE": "1"})  # not a reason
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["root_pid"] == w.pid and result["cuda_pids"] == [w.pid]
        assert "GPU memory adopt" in {s["name"] for s in result["steps"]}
        assert w.verify()
        w.kill()
        text = _restore("ckpt", cwd=ckpt.parent)  # relative to the client's directory
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith(f"restored 1 processes (root PID {w.pid}, 1 with CUDA)")
        assert "  total" in text.stdout
        assert w.verify()
    finally:
        log = pool.stop()
    assert "2 restore(s) carried out" in log


def test_an_error_in_the_pool_reads_as_the_local_one(held):
    w, ckpt = held
    pool = Pool("--hold-mib", "0")
    try:
        assert _restore(ckpt).returncode == 0
        pooled = _restore(ckpt)  # again, while the restored process holds the PID
        pooled_json = _restore(ckpt, "--json")
    finally:
        log = pool.stop()
    local = _restore(ckpt, env={"RESTOREPROF_POOL_RESTORE": "0"})
    local_json = _restore(ckpt, "--json", env={"RESTOREPROF_POOL_RESTORE": "0"})
    assert pooled.returncode == local.returncode != 0
    assert pooled.stderr == local.stderr
    assert f"PID {w.pid} is in use" in pooled.stderr
    assert pooled_json.returncode == local_json.returncode
    assert json.loads(pooled_json.stdout) == json.loads(local_json.stdout)
    assert json.loads(pooled_json.stdout)["error"]
    assert "3 restore(s) carried out" in log


@pytest.mark.parametrize("env, flags", [
    ({"RESTOREPROF_POOL_RESTORE": "0"}, []),
    ({"HOME": "/nonexistent-home"}, []),        # another environment: declined
    ({}, ["--criu-arg=--log-file=criu-x.log"]),  # CRIU would see the pool's directory
], ids=["told-not-to", "other-environment", "criu-arg"])
def test_what_the_pool_should_not_run_is_restored_here(held, env, flags):
    w, ckpt = held  # checkpointed: the original is gone, its PID free for the restore
    pool = Pool("--hold-mib", "0")
    try:
        out = _restore(ckpt, *flags, env=env)
        assert out.returncode == 0, out.stderr
        assert w.verify()
    finally:
        log = pool.stop()
    assert "0 restore(s) carried out" in log


def test_a_pool_started_with_no_restores_leaves_them_here(held):
    w, ckpt = held
    pool = Pool("--hold-mib", "0", "--no-restores")
    try:
        out = _restore(ckpt)
        assert out.returncode == 0, out.stderr
        assert w.verify()
    finally:
        log = pool.stop()
    assert "0 restore(s) carried out" in log


def test_no_pool_costs_nothing(fake_driver):
    start = time.monotonic()
    for _ in range(100):
        assert restore_through_pool(["-D", "/nowhere"]) is None
    assert (time.monotonic() - start) / 100 < 0.005, "a restore without a pool must not wait"


class _FakePool:
    """A socket where the pool's would be: reads one request, answers `answer` (or nothing)."""

    def __init__(self, path: Path, answer: dict | None) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, args=(answer,), daemon=True)
        self.thread.start()

    def _serve(self, answer: dict | None) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            if answer is not None:
                conn.send(json.dumps(answer).encode())

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.mark.parametrize("answer, code", [
    ({"declined": "for a reason"}, None),
    ({"error": "expected a preload request with one descriptor\n  -> ..."}, None),  # older pool
    (None, 1),                                                  # died midway: reported
    ({"stdout": "out\n", "stderr": "", "exit_code": 0}, 0),
], ids=["declined", "older-pool", "died", "answered"])
def test_the_clients_answers(fake_driver, tmp_path, monkeypatch, capsys, answer, code):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(run_dir))
    fake = _FakePool(run_dir / f"warm-{os.geteuid()}.sock", answer)
    try:
        assert restore_through_pool(["-D", str(tmp_path)]) == code
    finally:
        fake.close()
    err = capsys.readouterr()
    if answer is None:
        assert "the warm pool stopped answering during the restore" in err.err
        assert "--gpu-only" in err.err
    if code == 0:
        assert err.out == "out\n"


def test_a_bad_command_line_reads_as_the_local_one(fake_driver, client):
    pool = Pool("--hold-mib", "0")
    try:
        pooled = subprocess.run([*client, "restore", "--bogus"], capture_output=True, text=True,
                                timeout=60)
    finally:
        pool.stop()
    local = subprocess.run([*CLI, "restore", "--bogus"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "RESTOREPROF_POOL_RESTORE": "0"})
    assert pooled.returncode == local.returncode == 2
    assert pooled.stderr == local.stderr and "arguments are required: -D/--dir" in pooled.stderr


def test_an_interrupted_client_says_the_pool_finishes_the_restore(fake_driver, tmp_path,
                                                                 monkeypatch, capsys):
    from restoreprof.system import warm_socket

    run_dir = tmp_path / "run"
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(run_dir))
    fake = _FakePool(run_dir / f"warm-{os.geteuid()}.sock", None)

    def interrupted(conn, max_fds):
        raise KeyboardInterrupt

    monkeypatch.setattr(warm_socket, "receive", interrupted)
    try:
        assert restore_through_pool(["-D", str(tmp_path)]) == 130
    finally:
        fake.close()
    assert "the warm pool finishes the restore it began" in capsys.readouterr().err
