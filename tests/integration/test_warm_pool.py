"""The warm pool (restoreprof warm, optimizer/pool.py) on the fake driver: a real criu restore
whose GPU memory the pool preloads and the process adopts bit-exact, the pool's references
dropped once the restore hangs up, a damaged snapshot refused, a dead pool ignored, and a
socket that only its user and root may use."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from _snapshots import checkpoint_with_damaged_snapshot

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.checkpoint.gpu import POOL_PRELOAD_STEP, PRELOAD_STEP
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.pool import find_socket, preload_through_pool
from restoreprof.system.sockets import make_private_dir
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(directory))
    return directory


class Pool:
    """`restoreprof warm` in a subprocess, serving once its socket is up."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "restoreprof", "warm"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.banner = []
        while True:
            line = self.proc.stdout.readline()
            assert line, f"restoreprof warm exited: {''.join(self.banner)}"
            self.banner.append(line)
            if line.startswith("serving preloads on"):
                self.socket = Path(line.split()[3].rstrip(";"))
                return

    def physical_mappings(self) -> int:
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return sum("fakecuda-phys" in line for line in maps.splitlines())

    def wait_mappings(self, want: int, timeout_s: float = 10) -> int:
        deadline = time.monotonic() + timeout_s
        while (got := self.physical_mappings()) != want and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return out


@pytest.fixture
def pool(fake_driver, run_dir):
    p = Pool()
    yield p
    if p.proc.poll() is None:
        p.stop()


def test_restore_adopts_memory_the_pool_preloaded(pool, tmp_path):
    assert find_socket() == pool.socket
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=48, prefix=EXEC)
    try:
        checkpoint(w.pid, tmp_path / "ckpt")
        restored = restore(tmp_path / "ckpt", optimizer=OptimizerConfig(preload=True))
        steps = {s.name: s for s in restored.steps}
        assert not restored.notes, "no fallback may be taken"
        assert PRELOAD_STEP not in steps and "GPU memory reload" not in steps
        assert steps[POOL_PRELOAD_STEP].start_ns < steps["criu restore"].end_ns
        assert steps["criu restore"].end_ns <= steps["GPU memory adopt"].start_ns
        assert w.verify(), "GPU memory differs after a restore through the warm pool"
        # the restore hung up: the pool dropped its references, the process keeps the memory
        assert pool.wait_mappings(0) == 0
    finally:
        w.stop()
    out = pool.stop()
    assert pool.proc.returncode == 0
    assert "1 snapshot(s) preloaded (0.05 GB), 0 failed" in out
    assert not pool.socket.exists(), "a stopped pool leaves no socket behind"


def test_a_damaged_snapshot_is_refused_and_the_process_stays_held(pool, tmp_path):
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=8, prefix=EXEC)
    try:
        snapshot = checkpoint_with_damaged_snapshot(w.pid, tmp_path / "ckpt")
        with pytest.raises(RestoreprofError, match="a chunk is damaged or missing"):
            preload_through_pool(snapshot)
        with pytest.raises(RestoreprofError, match="reload failed"):
            restore(tmp_path / "ckpt")
        assert w.alive(), "a refused snapshot must leave the process alive and held"
        assert pool.physical_mappings() == 0, "a failed preload leaves nothing allocated"
        assert pool.proc.poll() is None, "the pool serves on after a failed preload"
    finally:
        w.stop()
    assert "2 failed" in pool.stop()


def test_a_dead_pool_is_ignored(fake_driver, run_dir, tmp_path):
    run_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(run_dir / f"warm-{os.geteuid()}.sock"))
    stale.close()  # the file stays, nobody listens: as after a killed pool
    assert find_socket() is not None
    assert preload_through_pool(tmp_path / "any.snap") is None


def test_only_the_pools_user_and_root_may_use_it(fake_driver, monkeypatch):
    # tmp_path's parents are private to root: this test's run dir must be reachable by others
    base = Path(tempfile.mkdtemp(prefix="rp-pool-"))
    base.chmod(0o755)
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(base / "run"))
    pool = Pool()
    try:
        _refuses_another_user(pool)
    finally:
        pool.stop()
        shutil.rmtree(base)


def _refuses_another_user(pool: Pool) -> None:
    st = pool.socket.stat()
    assert st.st_mode & 0o777 == 0o600
    assert pool.socket.parent.stat().st_mode & 0o777 == 0o700
    # Opened up by hand, the socket still refuses another user: the pool checks its peer.
    pool.socket.parent.chmod(0o755)
    pool.socket.chmod(0o666)
    client = (  # the interpreter's own files may not be readable by uid 65534: seteuid late
        "import json, os, socket, sys\n"
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        "os.setegid(65534); os.seteuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "s.connect(sys.argv[1])\n"
        "socket.send_fds(s, [json.dumps({'op': 'preload'}).encode()], [fd])\n"
        "print(s.recv(65536).decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", client, str(pool.socket)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert json.loads(out) == {"error": "UID 65534 may not use this warm pool\n  -> restore as "
                                        "the pool's user or as root, or start 'restoreprof "
                                        "warm' as this user"}


def test_a_run_dir_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="group or others may write"):
        make_private_dir(shared)
    make_private_dir(tmp_path / "mine")
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o700


def test_a_traced_restore_shows_the_pools_transfer(pool, tmp_path, restoreprof_cli):
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=48, prefix=EXEC)
    try:
        checkpoint(w.pid, tmp_path / "ckpt")
        out = restoreprof_cli("trace", "--restore", str(tmp_path / "ckpt"), "-o",
                              str(tmp_path / "trace"))
        assert out.returncode == 0, out.stderr
        assert w.verify()
        report = json.loads((tmp_path / "trace" / "report.json").read_text())
        # the GPU memory moved in the pool's process: the profiler followed it there
        assert pool.proc.pid in report["pids"] and w.pid in report["pids"]
        assert report["cuda"]["htod"]["bytes"] == 48 << 20
        # from staging the pool pinned before the trace began: it told the profiler
        assert report["cuda"]["htod"]["pinned_bytes"] == 48 << 20
        gpu = next(p for p in report["phases"] if p["name"] == "gpu memory restore")
        assert gpu["bytes"] == 48 << 20
        # the checkpoint's coverage: all of it offloaded as cuMemAlloc, the driver's part unknown
        assert report["coverage"] == [{**report["coverage"][0], "pid": w.pid}]
        assert report["coverage"][0]["offloaded"]["cuMemAlloc"]["bytes"] == 48 << 20
        assert report["coverage"][0]["left_to_driver_bytes"] is None
        assert f"pid {w.pid}" in out.stdout and "cuMemAlloc 1" in out.stdout
    finally:
        w.stop()


def test_a_request_without_its_descriptor_is_refused(pool):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(str(pool.socket))
    with conn:
        conn.send(json.dumps({"op": "preload"}).encode())
        reply = json.loads(conn.recv(65536))
    assert reply["error"].startswith("expected a preload request with one descriptor\n  -> ")
    assert pool.proc.poll() is None


class _FakePool:
    """A socket where the pool's would be: reads one request, sends the messages of `answer`
    (no descriptors), hangs up."""

    def __init__(self, path: Path, answer: list[dict]) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            socket.recv_fds(conn, 65536, 1)
            for message in self.answer:
                conn.send(json.dumps(message).encode())

    def close(self) -> None:
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.mark.parametrize("answer, error", [
    ([], "the warm pool hung up while preloading"),
    ([{"items": [{"address": 1, "size": 2, "uuid": "00"}]}],
     "the warm pool sent a malformed reply"),
], ids=["hung-up", "items-without-descriptors"])
def test_a_broken_pool_answer_is_an_error_the_restore_falls_back_from(run_dir, tmp_path,
                                                                      answer, error):
    snapshot = tmp_path / "gpu.snap"
    snapshot.write_bytes(b"not read by a fake pool")
    fake = _FakePool(run_dir / f"warm-{os.geteuid()}.sock", answer)
    try:
        with pytest.raises(RestoreprofError, match=error) as err:
            preload_through_pool(snapshot)
        assert "falls back to reloading inside the process" in str(err.value)
    finally:
        fake.close()


def test_no_usable_run_dir_says_where_to_put_the_socket(fake_driver, tmp_path, monkeypatch):
    from restoreprof.optimizer import pool as pool_module

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others could swap the socket: refused
    monkeypatch.setattr(pool_module, "user_run_dirs", lambda uid: [shared])
    warm = pool_module.WarmPool(OptimizerConfig(threads=2, chunk_mb=1))
    try:
        with pytest.raises(RestoreprofError, match="no run directory for the warm pool's socket")\
                as err:
            warm.bind()
        assert "RESTOREPROF_RUN_DIR" in err.value.hint
    finally:
        warm.release()


def test_a_staging_pool_that_cannot_be_pinned_is_a_clear_error(fake_driver):
    env = {**os.environ, "FAKECUDA_FAIL": "cuMemHostAlloc:0"}
    out = subprocess.run([sys.executable, "-m", "restoreprof", "warm"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode != 0
    assert "the engine's staging pool could not be made" in out.stderr
    assert "restoreprof warm --no-staging" in out.stderr
