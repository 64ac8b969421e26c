"""Test-wide rules: which tests need root/BPF/CRIU or a GPU, and when a skip is a failure.

Tests marked ``root`` need root, BPF, tracefs and CRIU. They skip only where the machine truly
lacks one; where RESTOREPROF_REQUIRE_ROOT_TESTS=1 (as .ci/run sets), a missing piece fails them.
Tests marked ``gpu`` need an NVIDIA GPU and skip cleanly without one (CI has none).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pytest


@lru_cache(maxsize=1)
def root_capabilities_missing() -> str:
    if os.geteuid() != 0:
        return "not root"
    if not Path("/sys/kernel/tracing/events").is_dir():
        return "tracefs not mounted"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc not importable"
    from restoreprof.errors import RestoreprofError
    from restoreprof.system.paths import criu_path

    try:
        criu_path()
    except RestoreprofError as exc:
        return str(exc)
    return ""


@lru_cache(maxsize=1)
def gpu_missing() -> str:
    """A real NVIDIA GPU, seen through NVML (the fake libcuda test double has no NVML)."""
    from restoreprof.system.gpus import nvml_gpus

    return "" if nvml_gpus() else "no NVIDIA GPU seen through NVML"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root"):
        missing = root_capabilities_missing()
        if missing:
            if os.environ.get("RESTOREPROF_REQUIRE_ROOT_TESTS") == "1":
                pytest.fail(f"root/BPF/CRIU test cannot run here ({missing}), and this run requires it")
            pytest.skip(f"needs root, BPF and CRIU: {missing}")
    if item.get_closest_marker("gpu"):
        missing = gpu_missing()
        if missing:
            pytest.skip(f"needs a GPU: {missing}")


@pytest.fixture(scope="session")
def fake_libcuda() -> Path:
    """tests/fakecuda's libcuda.so.1 test double, built once (rebuilt when its source changes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fakecuda_build", Path(__file__).parent / "fakecuda" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_fake_libcuda()


@pytest.fixture
def fake_driver(monkeypatch, fake_libcuda, tmp_path):
    """Point restoreprof, and the programs it starts, at the fake driver for one test; sockets
    (the library's, a warm pool's) go to a run directory of the test's own, and the driver's
    state of each process (checkpointed, locked; its restore thread) to a folder every process
    of the test sees, as the real driver's is (a warm pool restores what the test checkpointed)."""
    (tmp_path / "driver-state").mkdir(exist_ok=True)
    monkeypatch.setenv("FAKECUDA_STATE_DIR", str(tmp_path / "driver-state"))
    monkeypatch.setenv("RESTOREPROF_LIBCUDA", str(fake_libcuda))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(fake_libcuda.parent))
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(tmp_path / "run"))
    return fake_libcuda


@pytest.fixture
def restoreprof_cli():
    """Run the restoreprof CLI in a subprocess; returns CompletedProcess (text)."""
    import subprocess
    import sys

    def run(*args: str, check: bool = False, timeout: float = 300, **kwargs):
        return subprocess.run([sys.executable, "-m", "restoreprof", *args], capture_output=True,
                              text=True, check=check, timeout=timeout, **kwargs)

    return run


@pytest.fixture(scope="session")
def front_door(tmp_path_factory) -> Path:
    """The `restoreprof` command's native front door (restoreprof/front/front.c), built here,
    with the restoreprof-py it hands over to beside it (this interpreter's restoreprof)."""
    import stat
    import sys

    from restoreprof.front.build import build_front

    folder = tmp_path_factory.mktemp("front")
    entry = folder / "restoreprof-py"
    entry.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m restoreprof "$@"\n')
    entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return build_front(folder / "restoreprof")
