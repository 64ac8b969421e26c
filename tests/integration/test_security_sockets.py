"""Issue 19's socket half, attacked for real: a fake warm pool (S1) and a swapped control socket
(S3) served by a second, unprivileged user (nobody, through setpriv); the library's own run
directory refusing a foreign one; no SIGPIPE death and no process left offloaded when a client
goes away; a stopped target refused at once; the warm pool's descriptor hygiene. Plus issue 16:
the control socket of a process in its own PID and mount namespaces, found from the host."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _snapshots import damaged_copy
from test_shim_offload import SIZES, App

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.shim.build import build_library

pytestmark = pytest.mark.root

NOBODY = 65534
# The attacker runs the system's interpreter: the project's venv lives under /root, which nobody
# may not read. Its scripts use the standard library only.
SYSTEM_PYTHON = "/usr/bin/python3"
CFG = OptimizerConfig(streams=2, threads=3, chunk_mb=1)

# Binds a socket at argv[1] (in a folder of its own, see evil()), then reports what each client
# sent (bytes, descriptors) and answers with a forgery: an empty "preload" for a pool, a
# "running" STATUS for a control socket.
ATTACKER = r"""
import json, os, socket, sys
path, kind = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if kind == "pool" else socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    data, fds, _, _ = socket.recv_fds(conn, 65536, 8)
    print(json.dumps({"bytes": len(data), "fds": len(fds)}), flush=True)
    try:
        if kind == "pool":
            conn.send(json.dumps({"done": True, "seconds": 0.0}).encode())
        else:
            conn.sendall(b"OK state=running allocations=0 bytes=0 gate=open forged=1\n")
    except OSError:
        pass
    conn.close()
"""


def as_user(uid: int, argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                             *argv], **kwargs)


class Attacker:
    """ATTACKER, run as nobody."""

    def __init__(self, path: Path, kind: str) -> None:
        assert Path(SYSTEM_PYTHON).exists(), f"the attacker needs {SYSTEM_PYTHON}"
        self.path = path
        self.proc = as_user(NOBODY, [SYSTEM_PYTHON, "-c", ATTACKER, str(path), kind],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._line(30) == "listening", self.proc.stderr.read()

    def _line(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline().strip() if ready else None

    def received(self, quiet_s: float = 1.0) -> list[dict]:
        """What clients sent, one report per connection, until quiet_s passes without one."""
        reports = []
        while (line := self._line(quiet_s)) is not None and line:
            reports.append(json.loads(line))
        return reports

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def base():
    """A folder under /tmp that nobody may enter but not write (tmp_path's parents are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="rp-sec-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def evil(base) -> Path:
    """The attacker's own folder (nobody's, 0700), beside ours."""
    directory = base / "evil"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    return directory


@pytest.fixture
def attackers():
    started: list[Attacker] = []
    yield lambda path, kind: started.append(Attacker(path, kind)) or started[-1]
    for a in started:
        a.stop()


def _swap_in(attacker_socket: Path, target: Path) -> None:
    """As a race or a writable folder would let another user: their socket at target's name."""
    os.rename(attacker_socket, target)


# ---- where sockets may live ----


def test_root_never_looks_in_tmp_and_others_use_their_runtime_dir():
    from restoreprof.system.sockets import user_run_dirs

    assert user_run_dirs(0, {}) == [Path("/run/restoreprof")]
    assert user_run_dirs(0, {"RESTOREPROF_RUN_DIR": "/x"}) == [Path("/x"), Path("/run/restoreprof")]
    assert user_run_dirs(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == [
        Path("/run/user/1000/restoreprof"), Path("/tmp/restoreprof-1000")]
    assert user_run_dirs(1000, {"XDG_RUNTIME_DIR": "relative"}) == [Path("/tmp/restoreprof-1000")]


# ---- S1: a fake warm pool ----


@pytest.fixture
def snapshot(base):
    path = base / "gpu.snap"
    path.write_bytes(b"a snapshot the attacker must never get a descriptor of")
    path.chmod(0o600)
    return path


def _pool_is_refused(snapshot: Path, attacker: Attacker, capfd, why: str) -> None:
    from restoreprof.optimizer.pool import preload_through_pool

    assert preload_through_pool(snapshot, CFG) is None, "a refused pool means: preload yourself"
    err = capfd.readouterr().err
    assert "refusing the warm pool's socket" in err and why in err
    assert all(r == {"bytes": 0, "fds": 0} for r in attacker.received()), \
        "the snapshot's descriptor (or anything) went to another user's socket"


def test_s1_a_fake_pool_in_another_users_folder_is_refused(evil, snapshot, attackers,
                                                            monkeypatch, capfd):
    attacker = attackers(evil / f"warm-{os.geteuid()}.sock", "pool")
    monkeypatch.setattr("restoreprof.system.warm_socket.user_run_dirs", lambda uid: [evil])
    _pool_is_refused(snapshot, attacker, capfd, f"owned by UID {NOBODY}")


def test_s1_a_fake_pool_swapped_into_a_private_folder_is_refused(base, evil, snapshot, attackers,
                                                                 monkeypatch, capfd):
    run = base / "run"
    run.mkdir(mode=0o700)
    attacker = attackers(evil / "pool.sock", "pool")
    _swap_in(attacker.path, run / f"warm-{os.geteuid()}.sock")
    monkeypatch.setattr("restoreprof.system.warm_socket.user_run_dirs", lambda uid: [run])
    _pool_is_refused(snapshot, attacker, capfd, f"served by UID {NOBODY}")


@pytest.mark.parametrize("planted", ["in-their-folder", "swapped-into-ours"])
def test_s1_the_native_front_door_sends_a_fake_pool_nothing(base, evil, attackers, front_door,
                                                            tmp_path, planted):
    """The `restoreprof` command (front.c) with another user's socket where the pool's would
    be: it sends nothing there and leaves the restore to restoreprof-py, which says what it
    refused and restores (here: fails on a missing checkpoint) by itself."""
    if planted == "in-their-folder":
        attacker = attackers(evil / f"warm-{os.geteuid()}.sock", "pool")
        run = evil
    else:
        run = base / "run"
        run.mkdir(mode=0o700)
        attacker = attackers(evil / "pool.sock", "pool")
        _swap_in(attacker.path, run / f"warm-{os.geteuid()}.sock")
    out = subprocess.run([str(front_door), "restore", "-D", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RESTOREPROF_RUN_DIR": str(run)})
    why = f"owned by UID {NOBODY}" if planted == "in-their-folder" else f"served by UID {NOBODY}"
    assert "refusing the warm pool's socket" in out.stderr and why in out.stderr, out.stderr
    assert "does not exist" in out.stderr and out.returncode != 0  # restored here: no such dir
    assert all(r == {"bytes": 0, "fds": 0} for r in attacker.received()), \
        "the request (argv, the environment) went to another user's socket"


def test_s1_a_refused_pool_leaves_the_restore_its_own_preload(base, evil, fake_libcuda, attackers,
                                                              monkeypatch, tmp_path, capfd):
    from restoreprof.checkpoint.gpu import PRELOAD_STEP, Preloads
    from restoreprof.checkpoint.steps import StepClock
    from restoreprof.optimizer.preload import PreloadedSnapshot, adopt

    run = base / "run"
    run.mkdir(mode=0o755)
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(run))
    monkeypatch.setenv("RESTOREPROF_REAL_LIBCUDA", str(fake_libcuda))  # our preload's driver
    attacker = attackers(evil / "pool.sock", "pool")
    _swap_in(attacker.path, run / f"warm-{os.geteuid()}.sock")
    app = App(run, fake_libcuda)
    try:
        ShimControl(app.proc.pid).offload(tmp_path / "gpu.snap", CFG)
        clock = StepClock()
        loaded = Preloads._load(app.proc.pid, tmp_path / "gpu.snap", CFG, clock)
        try:
            assert isinstance(loaded, PreloadedSnapshot), "preloaded by the restore itself"
            assert [s.name for s in clock.steps] == [PRELOAD_STEP]
            adopt(app.proc.pid, loaded)
        finally:
            loaded.release()
        assert app.ask("check") == "ok"
        assert "refusing the warm pool's socket" in capfd.readouterr().err
        assert all(r["fds"] == 0 for r in attacker.received())
    finally:
        app.close()


# ---- S3: a swapped control socket ----


@pytest.fixture
def app_in(base, fake_libcuda, monkeypatch):
    """A program under the library with its socket in base/run (root's, 0755)."""
    run = base / "run"
    run.mkdir(mode=0o755)
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(run))
    application = App(run, fake_libcuda)
    yield application, run
    application.close()


def test_s3_a_control_socket_swapped_by_another_user_is_refused(app_in, evil, attackers):
    from restoreprof.system.sockets import UntrustedSocketError

    app, run = app_in
    attacker = attackers(evil / "shim.sock", "control")
    _swap_in(attacker.path, run / f"shim-{app.proc.pid}.sock")
    with pytest.raises(UntrustedSocketError, match=f"served by UID {NOBODY}") as err:
        ShimControl(app.proc.pid).status()
    assert "restoreprof exec" in err.value.hint
    assert all(r == {"bytes": 0, "fds": 0} for r in attacker.received()), \
        "a request went to another user's socket"


def test_s3_a_control_socket_of_another_process_is_refused(app_in):
    from restoreprof.system.sockets import UntrustedSocketError

    app, run = app_in
    real = run / f"shim-{app.proc.pid}.sock"
    aside = run / "aside.sock"
    os.rename(real, aside)
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # root, but not the target
    try:
        impostor.bind(str(real))
        impostor.listen(1)
        with pytest.raises(UntrustedSocketError, match=f"served by PID {os.getpid()}, not by "
                                                       f"PID {app.proc.pid}"):
            ShimControl(app.proc.pid).status()
    finally:
        impostor.close()
        os.replace(aside, real)
    assert ShimControl(app.proc.pid).status()["state"] == "running"


def test_s3_a_control_socket_in_a_folder_others_can_write_is_refused(app_in):
    from restoreprof.system.sockets import UntrustedSocketError

    app, run = app_in
    run.chmod(0o777)
    try:
        with pytest.raises(UntrustedSocketError, match=r"group or others may write to it \(mode "
                                                       r"0777\)"):
            ShimControl(app.proc.pid).status()
    finally:
        run.chmod(0o755)
    assert ShimControl(app.proc.pid).status()["state"] == "running"


def _shim_env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(build_library()), **extra}


def _under_shim(uid: int, argv: list[str], **extra: str) -> list[str]:
    """argv as uid under the library. The library is preloaded after setpriv: setpriv changes
    users thread by thread with per-thread capabilities, and aborts in a process that already
    has a second thread (the library's control thread)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "env",
            *(f"{k}={v}" for k, v in _shim_env(**extra).items()), *argv]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for(predicate, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_s3_the_library_refuses_a_tmp_folder_another_user_made(base):
    """The issue's S3: a non-root program's fallback folder, made first (world-writable) by
    another user. The library must not put its socket there."""
    uid = 47000 + os.getpid() % 1000  # a user of its own, no passwd entry needed
    planted = Path(f"/tmp/restoreprof-{uid}")
    shutil.rmtree(planted, ignore_errors=True)
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    "sh", "-c", f"mkdir {planted} && chmod 777 {planted}"], check=True)
    program = subprocess.Popen(_under_shim(uid, ["sleep", "2"]), env={"PATH": "/usr/bin:/bin"},
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # the library chose its folder in its constructor, before sleep's main
        assert not (planted / f"shim-{program.pid}.sock").exists()
        err = program.communicate(timeout=10)[1]
        assert f"run directory {planted} refused: it is owned by UID {NOBODY}" in err
        assert "offload unavailable" in err
    finally:
        program.kill()
        shutil.rmtree(planted, ignore_errors=True)


def test_a_non_root_programs_socket_is_found_in_its_runtime_dir_and_proved(base):
    uid = 48000 + os.getpid() % 1000
    runtime = base / f"xdg-{uid}"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, uid, uid)
    program = subprocess.Popen(_under_shim(uid, ["sleep", "30"], XDG_RUNTIME_DIR=str(runtime)),
                               env={"PATH": "/usr/bin:/bin"})
    try:
        sock = runtime / "restoreprof" / f"shim-{program.pid}.sock"
        assert _wait_for(sock.exists), "the library's socket is in $XDG_RUNTIME_DIR/restoreprof"
        folder = sock.parent.stat()
        assert (folder.st_uid, folder.st_mode & 0o777) == (uid, 0o700)
        assert sock.stat().st_mode & 0o777 == 0o600
        # root finds it through the program's own environment (ours has no such XDG_RUNTIME_DIR),
        # once the library listens on it (the file appears at bind, a moment before listen)
        def status() -> dict | None:
            try:
                return ShimControl(program.pid).status()
            except RestoreprofError:
                return None

        assert _wait_for(status), "root finds and proves the program's socket"
        found = status()
        assert found["state"] == "running" and "forged" not in found
    finally:
        program.kill()
        program.wait()


def test_a_run_dir_that_is_a_symbolic_link_is_refused_by_every_side(base, monkeypatch, capfd):
    from restoreprof.optimizer.pool import preload_through_pool
    from restoreprof.system.sockets import make_private_dir

    real = base / "real"
    real.mkdir(mode=0o700)
    link = base / "link"
    link.symlink_to(real)
    # the pool's side: no socket is made behind a link
    with pytest.raises(PermissionError, match="symbolic link"):
        make_private_dir(link)
    # the client's side: a socket reached through a link is not used
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(real / f"warm-{os.geteuid()}.sock"))
    listener.listen(1)
    with listener:
        monkeypatch.setattr("restoreprof.system.warm_socket.user_run_dirs", lambda uid: [link])
        assert preload_through_pool(base / "any.snap") is None
        assert "its directory is a symbolic link" in capfd.readouterr().err
    # the library's side
    program = subprocess.run(["sleep", "0.2"], env=_shim_env(RESTOREPROF_RUN_DIR=str(link)),
                             capture_output=True, text=True, timeout=30)
    assert f"run directory {link} refused: it is a symbolic link" in program.stderr
    assert not any(p.name.startswith("shim-") for p in real.iterdir())


# ---- the library under a client that goes away ----


@pytest.fixture
def plain_program(base, monkeypatch):
    """`sleep` under the library: C, with SIGPIPE's default action (Python ignores SIGPIPE)."""
    run = base / "run"
    run.mkdir(mode=0o755)
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(run))
    program = subprocess.Popen(["sleep", "60"], env=_shim_env(RESTOREPROF_RUN_DIR=str(run)))
    sock = run / f"shim-{program.pid}.sock"
    assert _wait_for(sock.exists)
    yield program, sock
    program.kill()
    program.wait()


def _raw(sock_path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(str(sock_path))
    return conn


@pytest.mark.parametrize("how", ["hangs-up-at-once", "shuts-its-reading-side"])
def test_a_client_that_does_not_read_the_reply_does_not_kill_the_program(plain_program, how):
    program, sock = plain_program
    conn = _raw(sock)
    if how == "shuts-its-reading-side":
        conn.shutdown(socket.SHUT_RD)  # still connected: the library does answer, into EPIPE
    conn.sendall(b"STATUS\n")
    if how == "hangs-up-at-once":
        conn.close()
    # The library serves one request at a time: this one comes after the first was handled.
    assert ShimControl(program.pid).status()["state"] == "running"
    conn.close()
    assert program.poll() is None, f"the program died (status {program.returncode}): SIGPIPE"


def _offload_line(snap: Path) -> bytes:
    return f"OFFLOAD {snap} 2 1 3\n".encode()


@pytest.mark.parametrize("how", ["hangs-up-before-the-reply", "hangs-up-after-ready",
                                 "shuts-its-reading-side", "queued-while-stopped"])
def test_an_offload_whose_client_went_away_leaves_the_program_running(app_in, tmp_path, how):
    app, run = app_in
    snap = tmp_path / "gpu.snap"
    sock = run / f"shim-{app.proc.pid}.sock"
    if how == "queued-while-stopped":
        os.kill(app.proc.pid, signal.SIGSTOP)
    try:
        conn = _raw(sock)  # a stopped process's listener still takes it into its backlog
        if how == "shuts-its-reading-side":
            conn.shutdown(socket.SHUT_RD)
        conn.sendall(_offload_line(snap))
        if how == "hangs-up-after-ready":
            reply = b""
            while not reply.endswith(b"\n") and (data := conn.recv(4096)):
                reply += data
            assert reply.startswith(b"READY "), reply  # the snapshot is complete, nothing released
        conn.close()
    finally:
        os.kill(app.proc.pid, signal.SIGCONT)
    status = ShimControl(app.proc.pid).status()
    assert (status["state"], status["gate"]) == ("running", "open"), \
        "the process was left offloaded with nobody to bring it back"
    assert app.physical_mappings() == len(SIZES), "nothing was released"
    assert app.ask("copy") == "copied"
    assert app.ask("check") == "ok"


def test_a_confirmed_offload_is_reported_after_the_release(app_in, tmp_path):
    app, _ = app_in
    ctl = ShimControl(app.proc.pid)
    out = ctl.offload(tmp_path / "gpu.snap", CFG)
    assert out["bytes"] == sum(SIZES) and app.physical_mappings() == 0
    ctl.reload(tmp_path / "gpu.snap", CFG)
    assert app.ask("check") == "ok"


# ---- a stopped target ----


def test_a_stopped_target_is_refused_at_once(app_in, tmp_path):
    from restoreprof.optimizer.control import TargetStoppedError

    app, _ = app_in
    os.kill(app.proc.pid, signal.SIGSTOP)
    try:
        assert _wait_for(lambda: _state(app.proc.pid) == "T")  # a stop takes effect soon after
        start = time.monotonic()
        with pytest.raises(TargetStoppedError, match="is stopped") as err:
            ShimControl(app.proc.pid, timeout_s=30).offload(tmp_path / "gpu.snap", CFG)
        assert time.monotonic() - start < 2, "a stopped target must not be waited for"
        assert f"kill -CONT {app.proc.pid}" in err.value.hint
    finally:
        os.kill(app.proc.pid, signal.SIGCONT)
    status = ShimControl(app.proc.pid).status()
    assert (status["state"], status["gate"]) == ("running", "open")
    assert app.ask("check") == "ok"


def test_a_target_stopped_during_a_request_ends_the_wait_at_once(app_in):
    """Stopped once the request is on its way: the client sees the stop while it waits, and
    hangs up long before its timeout; the library, resumed, drops the request."""
    from restoreprof.optimizer.control import TargetStoppedError

    app, _ = app_in
    ctl = ShimControl(app.proc.pid, timeout_s=60)
    real = ctl._require_running
    calls = []

    def stop_after_sending(verb: str, during: bool = False) -> None:
        if not during and not calls:  # the request is about to go: stop the target under it
            os.kill(app.proc.pid, signal.SIGSTOP)
            assert _wait_for(lambda: _state(app.proc.pid) == "T")
            calls.append(verb)
            return
        real(verb, during)

    ctl._require_running = stop_after_sending
    try:
        start = time.monotonic()
        with pytest.raises(TargetStoppedError, match="during STATUS"):
            ctl.status()
        assert time.monotonic() - start < 10, "the wait ends long before the 60 s timeout"
    finally:
        os.kill(app.proc.pid, signal.SIGCONT)
    assert ShimControl(app.proc.pid).status()["state"] == "running"


def _continue_until_running(pid: int, timeout_s: float = 10.0) -> None:
    """SIGCONT pid until it reads as not stopped several times in a row: a stop CRIU scheduled
    can take effect after a first SIGCONT (seen once under a loaded CI machine)."""
    deadline = time.monotonic() + timeout_s
    running_seen = 0
    while running_seen < 5 and time.monotonic() < deadline:
        if _state(pid) == "T":
            running_seen = 0
            os.kill(pid, signal.SIGCONT)
        else:
            running_seen += 1
        time.sleep(0.02)
    assert running_seen >= 5, f"PID {pid} stays stopped"


def test_a_stopped_cuda_process_is_refused_before_the_driver_is_asked(fake_driver, tmp_path):
    """The driver answers through the process itself: asked about a stopped one, it waits for
    good (its state query did on the H200). The checkpoint refuses it at once, says how to go
    on, and leaves it as it was: stopped, its memory intact, nothing written."""
    from restoreprof.checkpoint import checkpoint
    from restoreprof.errors import RestoreprofError
    from restoreprof.workloads.controller import HeldMemory

    exec_prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=8, prefix=exec_prefix)
    try:
        os.kill(w.pid, signal.SIGSTOP)
        assert _wait_for(lambda: _state(w.pid) == "T")
        start = time.monotonic()
        with pytest.raises(RestoreprofError, match="uses CUDA and is stopped") as refused:
            checkpoint(w.pid, tmp_path / "ckpt", leave_running=True)
        assert time.monotonic() - start < 10
        assert f"kill -CONT {w.pid}" in refused.value.hint
        assert _state(w.pid) == "T"  # as it was found
        assert not (tmp_path / "ckpt" / "restoreprof.json").exists()
        _continue_until_running(w.pid)
        assert w.verify(), "the process runs on, its memory unchanged"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGCONT)
        w.stop()


def _stop_after(module, name: str, pid: int):
    """module.name, wrapped to stop pid (SIGSTOP) once it has returned: another hand stopping a
    CUDA process in the middle of its checkpoint."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(pid, signal.SIGSTOP)
        assert _wait_for(lambda: _state(pid) == "T")
        return result

    return wrapped


@pytest.mark.parametrize("when", ["before-the-offload", "before-the-driver-lock"])
def test_a_cuda_process_stopped_during_its_checkpoint_is_refused_and_put_back_once_resumed(
        fake_driver, fake_libcuda, tmp_path, monkeypatch, when):
    """Stopped by another hand after the checkpoint's first look (which refuses a stopped one):
    neither its library nor the driver is asked anything while it is stopped (the driver's
    state query waited for good on the H200); the checkpoint is refused, says how to go on, and
    once the process is resumed --recover gives its GPU memory back where it was offloaded."""
    from restoreprof.checkpoint import checkpoint, gpu, recover_checkpoint
    from restoreprof.errors import RestoreprofError
    from restoreprof.workloads.controller import HeldMemory

    fake = ctypes.CDLL(str(fake_libcuda))  # the driver this process's checkpoint loads
    fake.fakecuda_calls.restype = ctypes.c_ulong
    exec_prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    w = HeldMemory.start(tmp_path / "state", 16, gpu_mib=8, prefix=exec_prefix)
    ckpt = tmp_path / "ckpt"
    try:
        if when == "before-the-offload":
            monkeypatch.setattr(gpu, "cuda_processes", _stop_after(gpu, "cuda_processes", w.pid))
        else:  # the offload is done (the memory is in the snapshot): then it is stopped
            monkeypatch.setattr(gpu, "coverage_all", _stop_after(gpu, "coverage_all", w.pid))
        locks = fake.fakecuda_calls(b"cuCheckpointProcessLock")
        start = time.monotonic()
        with pytest.raises(RestoreprofError, match="uses CUDA and is stopped") as refused:
            checkpoint(w.pid, ckpt, leave_running=True)
        assert time.monotonic() - start < 30
        assert fake.fakecuda_calls(b"cuCheckpointProcessLock") == locks, "the driver was asked"
        message = str(refused.value)  # the refusal, then why it could not all be put back:
        assert f"resume it ('kill -CONT {w.pid}') and run 'restoreprof checkpoint --recover -D " \
               f"{ckpt}'" in message  # asking the stopped process was left for later
        assert not (ckpt / "restoreprof.json").exists()
        _continue_until_running(w.pid)
        assert recover_checkpoint(ckpt) == "put back: the processes run on"
        assert w.verify(), "the process runs on, its memory as it was"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGCONT)
        w.stop()


# ---- the warm pool's hygiene, and messages ----


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_pool_leaks_no_descriptor_per_malformed_request(fake_driver):
    from test_warm_pool import Pool

    pool = Pool()
    try:
        before = _fd_count(pool.proc.pid)
        malformed = [b"not json", b"{}", b"[]", b'"text"', b"\xff\xfe",
                     b'{"op": "preload", "streams": null}', b'{"op": "preload", "name": [1]}',
                     b'{"op": "describe"}', b'{"op": "nothing"}', b"null"] * 3
        for message in malformed:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            conn.settimeout(10)
            conn.connect(str(pool.socket))
            with conn, open("/dev/null", "rb") as f:
                socket.send_fds(conn, [message], [f.fileno()])
                with contextlib.suppress(OSError):
                    conn.recv(65536)  # the pool's error, or its hang-up
        assert _wait_for(lambda: _fd_count(pool.proc.pid) == before, 10), \
            f"{_fd_count(pool.proc.pid) - before} descriptor(s) leaked by {len(malformed)} requests"
        assert pool.proc.poll() is None
    finally:
        out = pool.stop()
    assert "Traceback" not in out, out


def test_a_damaged_snapshot_is_not_called_intact(app_in, tmp_path):
    from restoreprof.checkpoint import gpu

    app, _ = app_in
    snap = tmp_path / "gpu.snap"
    ShimControl(app.proc.pid).offload(snap, CFG)
    damaged_copy(snap, tmp_path / "bad.snap", 0)  # its first chunk, in a folder of its own
    with pytest.raises(RestoreprofError, match="damaged") as err:
        gpu._reload(app.proc.pid, tmp_path, {"snapshot": "bad.snap"}, CFG)
    assert "intact" not in str(err.value)
    ShimControl(app.proc.pid).reload(snap, CFG)
    assert app.ask("check") == "ok"


# ---- issue 16: a process in its own PID and mount namespaces ----


def test_a_namespaced_programs_socket_is_found_from_the_host(base, fake_libcuda, tmp_path):
    """The program is PID 1 of its own PID namespace, and its run folder is a tmpfs mounted in
    its own mount namespace only: the host sees neither its socket's name nor its folder."""
    from test_shim_offload import APP

    run = base / "run"
    run.mkdir(mode=0o755)
    env = dict(os.environ, RESTOREPROF_REAL_LIBCUDA=str(fake_libcuda), RESTOREPROF_RUN_DIR=str(run),
               LD_LIBRARY_PATH=str(fake_libcuda.parent), SHIM=str(build_library()),
               RESTOREPROF_CHUNK_MB="1", RESTOREPROF_THREADS="3", RESTOREPROF_STREAMS="2")
    script = ('mount -t tmpfs -o mode=0755 tmpfs "$RESTOREPROF_RUN_DIR" && '
              'exec env LD_PRELOAD="$SHIM" "$0" -c "$1" ' + " ".join(map(str, SIZES)))
    outer = subprocess.Popen(["unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child",
                              "sh", "-c", script, sys.executable, APP], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([outer.stdout], [], [], 60)
        assert ready and outer.stdout.readline().strip() == "ready", outer.stderr.read()
        children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
        pid = int(children[0])  # the program, as the host numbers it
        nspid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
        assert nspid == [str(pid), "1"]
        assert not list(run.iterdir()), "the host's folder is empty: the socket is in the tmpfs"
        ctl = ShimControl(pid)
        assert ctl.path == Path(f"/proc/{pid}/root{run}/shim-1.sock")
        assert ctl.status()["allocations"] == len(SIZES)
        ctl.offload(tmp_path / "gpu.snap", CFG)
        assert ctl.status()["state"] == "offloaded"
        ctl.reload(tmp_path / "gpu.snap", CFG)
        outer.stdin.write("check\n")
        outer.stdin.flush()
        assert outer.stdout.readline().strip() == "ok"
    finally:
        outer.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            outer.communicate(timeout=10)


def test_a_stale_socket_of_a_reused_pid_is_not_taken_for_the_library(tmp_path, monkeypatch):
    """A program killed before it removed its socket leaves shim-PID.sock; a later process with
    the same PID (no interception library) must not be taken for it (a CI run found one)."""
    from restoreprof.errors import RestoreprofError
    from restoreprof.optimizer.control import ShimControl

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(run))
    plain = subprocess.Popen(["sleep", "30"], env={**os.environ})
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # ours, not the target's
        listener.bind(str(run / f"shim-{plain.pid}.sock"))
        listener.listen(1)
        with listener, pytest.raises(RestoreprofError, match="without restoreprof's interception"):
            ShimControl(plain.pid)
    finally:
        plain.kill()
        plain.wait()
