"""A process whose checkpoint the driver could not restore (JAX on driver 580, measured on an
H200: see checkpoint/compat.py) is refused before anything is touched, and keeps running."""

from __future__ import annotations

import sys

import pytest

from restoreprof.checkpoint import checkpoint
from restoreprof.checkpoint.compat import OVERRIDE_ENV, mapped_runtimes
from restoreprof.errors import RestoreprofError
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

# Maps a file where jaxlib keeps XLA, then holds (fake) GPU memory like any workload.
_LOOKS_LIKE_JAX = """
import mmap, sys
from pathlib import Path
lib = Path(sys.argv[1]) / "jaxlib" / "xla_extension.so"
lib.parent.mkdir(parents=True, exist_ok=True)
lib.write_bytes(b"\\0" * 4096)
with open(lib, "rb") as f:
    held = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
from restoreprof.workloads.hold_memory import main
sys.exit(main(sys.argv[2:]))
"""


def _start(tmp_path):
    state = tmp_path / "state"
    cmd = [sys.executable, "-c", _LOOKS_LIKE_JAX, str(tmp_path / "site"), "--mib", "16",
           "--gpu-mib", "8", "--state", str(state)]
    return HeldMemory.start_command(cmd, state)


def test_jax_process_is_refused_and_keeps_running(fake_driver, tmp_path):
    w = _start(tmp_path)
    try:
        assert "JAX/XLA" in mapped_runtimes(w.pid)
        with pytest.raises(RestoreprofError, match="cannot restore a JAX process") as err:
            checkpoint(w.pid, tmp_path / "ckpt")
        assert "keeps running" in str(err.value) and OVERRIDE_ENV in err.value.hint
        assert not (tmp_path / "ckpt").exists(), "a refused checkpoint writes nothing"
        assert w.alive() and w.verify()
    finally:
        w.stop()


def test_the_override_lets_it_through(fake_driver, tmp_path, monkeypatch):
    monkeypatch.setenv(OVERRIDE_ENV, "1")
    w = _start(tmp_path)
    try:
        result = checkpoint(w.pid, tmp_path / "ckpt", leave_running=True)
        assert result.manifest.processes[0].cuda
        assert w.alive() and w.verify()
    finally:
        w.stop()


def test_an_ordinary_process_maps_no_such_runtime(tmp_path):
    w = HeldMemory.start(tmp_path / "state", 16)
    try:
        assert mapped_runtimes(w.pid) == {}
    finally:
        w.stop()
