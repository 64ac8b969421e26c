"""Each engine setting, set by flag, environment, config file or tuning DB, arrives unchanged in
the engine that uses it: the restore's preload, the warm pool's staging, OFFLOAD and RELOAD in
the process, and the copies of a program under `restoreprof exec`.

Settings are resolved by each command's own parser (as the CLI does), and the fake libcuda
records what the engine did: the streams it made, the threads and streams its copies ran on,
the size of each copy and whether it staged through pinned or pageable memory.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from restoreprof.commands import checkpoint as checkpoint_command
from restoreprof.commands import exec_ as exec_command
from restoreprof.commands import restore as restore_command
from restoreprof.commands import warm as warm_command
from restoreprof.optimizer import config, engine
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.preload import preload_snapshot
from restoreprof.settings import SETTINGS
from restoreprof.tuner import install_tuned_defaults, uninstall_tuned_defaults
from restoreprof.tuner.database import TuningDatabase
from restoreprof.tuner.identity import identify

MIB = 1 << 20
SOURCES = ("flag", "environment", "config file", "tuning DB")
# Every value differs from its default, and from what the application's own environment says.
WANT = {"streams": 3, "chunk_mb": 3, "threads": 5, "pinned": False}
SIZES = [24 * MIB + 5, 24 * MIB]  # 16+ chunks of 3 MiB: every one of 5 threads gets some
COPY_DELAY_US = "20000"  # each fake copy takes 20 ms, as a real one takes time: no thread idles,
# even on a loaded 2-core machine (at 2 ms one of 5 threads found no chunk left in a full run)

# Run in the test and in the applications: what the fake driver saw since fakecuda_reset().
RECORD = textwrap.dedent("""
    def fake_record(fake):
        fake.fakecuda_async_max_bytes.restype = ctypes.c_size_t
        fake.fakecuda_host_alloc_bytes_max.restype = ctypes.c_size_t
        for name in ("fakecuda_async_pinned", "fakecuda_async_pageable", "fakecuda_calls"):
            getattr(fake, name).restype = ctypes.c_ulong
        fake.fakecuda_calls.argtypes = [ctypes.c_char_p]
        return {"copy_bytes_max": fake.fakecuda_async_max_bytes(),
                "streams_used": fake.fakecuda_async_streams(),
                "threads_used": fake.fakecuda_async_threads(),
                "pinned_copies": fake.fakecuda_async_pinned(),
                "pageable_copies": fake.fakecuda_async_pageable(),
                "streams_created": fake.fakecuda_calls(b"cuStreamCreate"),
                "pinned_allocs": fake.fakecuda_calls(b"cuMemHostAlloc"),
                "pinned_frees": fake.fakecuda_calls(b"cuMemFreeHost"),
                "pinned_alloc_bytes_max": fake.fakecuda_host_alloc_bytes_max()}
""")
_scope: dict = {"ctypes": ctypes}
exec(RECORD, _scope)
fake_record = _scope["fake_record"]

APP = RECORD + textwrap.dedent("""
    import ctypes, json, os, sys
    import numpy as np
    from cuda.bindings import driver as cu
    assert cu.cuInit(0)[0] == 0
    cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
    fake = ctypes.CDLL(os.environ["RESTOREPROF_REAL_LIBCUDA"])
    sizes = [int(x) for x in sys.argv[1:]]
    data = [np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8) for n in sizes]
    ptrs = [cu.cuMemAlloc(n)[1] for n in sizes]
    fake.fakecuda_reset()
    for p, d in zip(ptrs, data):   # pageable copies: through the engine under the library
        assert cu.cuMemcpyHtoD(p, d.ctypes.data, d.nbytes)[0] == 0
    print(json.dumps(fake_record(fake)), flush=True)
    for line in sys.stdin:
        if line.strip() == "record":
            print(json.dumps(fake_record(fake)), flush=True)
        elif line.strip() == "reset":
            fake.fakecuda_reset()
            print("reset", flush=True)
        elif line.strip() == "check":
            same = True
            for p, d in zip(ptrs, data):
                back = np.zeros_like(d)
                assert cu.cuMemcpyDtoH(back.ctypes.data, p, d.nbytes)[0] == 0
                same = same and bool((back == d).all())
            print("ok" if same else "bad", flush=True)
""")

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def isolated(tmp_path, monkeypatch, fake_driver):
    """No setting leaks in from this machine: no config file, variables or tuning DB."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RESTOREPROF_TUNING_DB", str(tmp_path / "tuning.json"))
    monkeypatch.setenv("RESTOREPROF_REAL_LIBCUDA", str(fake_driver))
    monkeypatch.setenv("FAKECUDA_COPY_DELAY_US", COPY_DELAY_US)
    for setting in SETTINGS:
        for var in setting.env:
            monkeypatch.delenv(var, raising=False)
    yield
    uninstall_tuned_defaults()


@pytest.fixture
def fake(fake_driver):
    lib = ctypes.CDLL(str(fake_driver))  # the driver loaded in this process: the same globals
    lib.fakecuda_reset()
    engine.release_staging()
    yield lib
    engine.release_staging()


def set_by(source: str, tmp_path: Path, monkeypatch, directory: Path | None = None,
           want: dict = WANT) -> list[str]:
    """Put want where source says; returns the command-line flags that go with it."""
    if source == "flag":
        return _flags(want)
    if source == "environment":  # the seed plan's names where there is one
        for name, value in want.items():
            var = next(s.env[-1] for s in SETTINGS if s.name == name)
            monkeypatch.setenv(var, str(int(value)))
        return []
    if source == "config file":
        path = tmp_path / "optimizer.toml"
        path.write_text("[optimizer]\n" + "".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in want.items()))
        return ["--config", str(path)]
    db = TuningDatabase(tmp_path / "tuning.json")
    db.record(identify(directory), dict(want))
    install_tuned_defaults(directory, db.path, announce=False)
    return []


def _flags(want: dict) -> list[str]:
    out = []
    for name, value in want.items():
        flag = name.replace("_", "-")
        out += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else \
            [f"--{flag}", str(value)]
    return out


def resolve(command, argv: list[str], source: str, want: dict = WANT) -> OptimizerConfig:
    """What `restoreprof <command> argv` resolves, checked against where it was set."""
    parser = argparse.ArgumentParser()
    command.prepare_parser(parser)
    cfg, sources = config.resolve_args(parser.parse_args(argv))
    for name, value in want.items():
        assert getattr(cfg, name) == value, (name, sources[name])
        assert sources[name].startswith({"flag": "flag", "environment": "environment",
                                         "config file": "config file",
                                         "tuning DB": "tuning DB"}[source]), sources[name]
    return cfg


def assert_engine_used(record: dict, want: dict) -> None:
    chunk = want["chunk_mb"] * MIB
    assert record["copy_bytes_max"] == chunk, record
    assert record["streams_used"] == want["streams"], record
    assert record["threads_used"] == want["threads"], record
    if want["pinned"]:
        assert record["pageable_copies"] == 0 and record["pinned_copies"] > 0, record
    else:
        assert record["pinned_copies"] == 0 and record["pageable_copies"] > 0, record
        assert record["pinned_allocs"] == 0, record


@pytest.fixture
def snapshot(tmp_path, fake_driver):
    """A snapshot of SIZES, offloaded by an application under the library (then stopped)."""
    app = App(tmp_path, [])
    snap = tmp_path / "gpu.snap"
    ShimControl(app.proc.pid).offload(snap)
    app.close()
    return snap


class App:
    """APP under `restoreprof exec FLAGS --` (its environment: this test's, plus env)."""

    def __init__(self, tmp_path: Path, flags: list[str], env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "restoreprof", "exec", *flags, "--",
             sys.executable, "-c", APP, *map(str, SIZES)],
            env={**os.environ, "RESTOREPROF_RUN_DIR": str(tmp_path / "run"), **(env or {})},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.line(60)
        assert line, self.proc.stderr.read() if self.proc.poll() is not None else "no answer"
        self.first_copies = json.loads(line)

    def line(self, timeout: float = 30) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def ask(self, cmd: str) -> str | None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.mark.parametrize("source", SOURCES)
def test_restore_preload_uses_the_restore_settings(source, snapshot, fake, tmp_path, monkeypatch):
    argv = ["-D", str(tmp_path), *set_by(source, tmp_path, monkeypatch, tmp_path)]
    cfg = resolve(restore_command, argv, source)
    fake.fakecuda_reset()
    loaded = preload_snapshot(snapshot, cfg)
    try:
        assert loaded.bytes == sum(SIZES)
        record = fake_record(fake)
    finally:
        loaded.release()
    assert_engine_used(record, WANT)
    assert record["streams_created"] == WANT["streams"]


@pytest.mark.parametrize("source", SOURCES)
def test_exec_gives_the_library_its_settings(source, tmp_path, monkeypatch, fake_driver):
    want = WANT | {"min_intercept_bytes": MIB}
    flags = set_by(source, tmp_path, monkeypatch, None, want)
    resolve(exec_command, [*flags, "--", "true"], source, want)
    app = App(tmp_path, flags)
    try:
        assert_engine_used(app.first_copies, want)
    finally:
        app.close()


@pytest.mark.parametrize("source", SOURCES)
def test_offload_and_reload_use_the_commands_settings(source, tmp_path, monkeypatch, fake_driver):
    app = App(tmp_path, [])  # the application's own settings: the defaults
    try:
        flags = set_by(source, tmp_path, monkeypatch, tmp_path)
        ctl = ShimControl(app.proc.pid)
        snap = tmp_path / "gpu.snap"
        assert app.ask("reset") == "reset"
        ctl.offload(snap, resolve(checkpoint_command, ["-p", "1", "-D", str(tmp_path), *flags],
                                  source))
        assert_engine_used(json.loads(app.ask("record")), WANT)
        assert app.ask("reset") == "reset"
        ctl.reload(snap, resolve(restore_command, ["-D", str(tmp_path), *flags], source))
        assert_engine_used(json.loads(app.ask("record")), WANT)
        assert app.ask("check") == "ok"
    finally:
        app.close()


@pytest.mark.parametrize("source", SOURCES)
def test_the_warm_pool_pins_its_settings_and_a_restore_with_them_keeps_its_staging(
        source, snapshot, fake, tmp_path, monkeypatch):
    from restoreprof.optimizer.pool import WarmPool, preload_through_pool

    want = WANT | {"pinned": True}
    flags = set_by(source, tmp_path, monkeypatch, tmp_path, want)
    fake.fakecuda_reset()
    pool = WarmPool(resolve(warm_command, flags, source, want))
    stop = threading.Event()
    server = threading.Thread(target=pool.serve, args=(stop,))
    try:
        pinned = fake_record(fake)
        assert pinned["streams_created"] == want["streams"]
        assert pinned["pinned_allocs"] == 2 * want["threads"]   # two buffers per thread
        assert pinned["pinned_alloc_bytes_max"] == want["chunk_mb"] * MIB
        pool.bind()
        server.start()
        fake.fakecuda_reset()
        loaded = preload_through_pool(snapshot, resolve(restore_command, ["-D", str(tmp_path),
                                                                          *flags], source, want))
        assert loaded is not None and loaded.bytes == sum(SIZES)
        loaded.release()
        record = fake_record(fake)
        assert_engine_used(record, want)
        # The staging pinned at start-up served the preload: nothing freed, pinned or made again.
        assert (record["pinned_allocs"], record["pinned_frees"], record["streams_created"]) == \
            (0, 0, 0), record
    finally:
        stop.set()
        if server.is_alive():
            server.join(timeout=10)
        pool.release()


def test_warm_no_pinned_stages_through_pageable_memory(snapshot, fake, tmp_path, monkeypatch):
    from restoreprof.optimizer.pool import WarmPool

    fake.fakecuda_reset()
    pool = WarmPool(resolve(warm_command, ["--no-pinned"], "flag", {"pinned": False}))
    try:
        assert fake_record(fake)["pinned_allocs"] == 0
        assert pool.staging_bytes() == 0  # nothing pinned to describe
        loaded = preload_snapshot(snapshot, pool.cfg)
        loaded.release()
        record = fake_record(fake)
        assert record["pinned_copies"] == 0 and record["pageable_copies"] > 0
    finally:
        pool.release()


# The library's own switches, one per source (the layers are the same code for every setting:
# tests/unit/test_settings.py): each turns off what the library does with the copies above.
LIBRARY_CASES = {
    "flag": {"min_intercept_bytes": 64 * MIB},       # the 24 MiB copies are now too small
    "environment": {"intercept": False},              # through CUDA_INTERCEPT_RESTORE=0
    "config file": {"parallel": False},               # the driver alone: no engine, no VMM
    "tuning DB": {"offload": False},                  # no VMM, so no control socket
}


@pytest.mark.parametrize("source", SOURCES)
def test_the_librarys_switches_reach_it(source, tmp_path, monkeypatch, fake_driver):
    from restoreprof.errors import RestoreprofError

    want = LIBRARY_CASES[source]
    flags = set_by(source, tmp_path, monkeypatch, None, want)
    resolve(exec_command, [*flags, "--", "true"], source, want)
    app = App(tmp_path, flags)
    try:
        copies = app.first_copies["pinned_copies"] + app.first_copies["pageable_copies"]
        if "offload" in want or "parallel" in want:
            with pytest.raises(RestoreprofError, match="without restoreprof's interception"):
                ShimControl(app.proc.pid)
        else:
            assert ShimControl(app.proc.pid).status()["allocations"] == len(SIZES)
        if "offload" in want:
            assert copies > 0  # the engine still routes the copies: only VMM is off
        else:
            assert copies == 0, app.first_copies  # the driver's own copies, none through ours
    finally:
        app.close()


def test_a_preload_request_carries_the_settings_the_pool_uses_and_the_pool_takes_them():
    """The restore's resolved settings reach the pool's preload: the engine's, and send_threads
    (its hot send's), each taken from the request over the pool's own."""
    from restoreprof.optimizer.pool import REQUEST_SETTINGS, _request_settings

    asked = {"streams": 3, "threads": 5, "chunk_mb": 3, "pinned": False, "send_threads": 4}
    assert set(REQUEST_SETTINGS) == set(asked)
    own = OptimizerConfig()
    assert all(getattr(own, name) != value for name, value in asked.items())
    taken = _request_settings(asked, own)
    assert {name: getattr(taken, name) for name in asked} == asked
    assert _request_settings({}, own) == own  # an older client's request: the pool's own
