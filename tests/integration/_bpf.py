"""Helpers for the eBPF tests: build the C programs under tests/programs, find the fake driver.

Tests that trace are marked ``pytest.mark.root``: tests/conftest.py skips them only where the
machine truly lacks root, BPF, tracefs or CRIU (and fails them on CI, which has all four).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "tests" / "programs"
BUILD = PROGRAMS / "build"
CUDA_INCLUDE = Path("/usr/local/cuda/include")


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise FileNotFoundError("no C compiler: apt-get install gcc")
    return compiler


def _stale(out: Path, sources: list[Path]) -> bool:
    return not out.exists() or any(s.stat().st_mtime > out.stat().st_mtime for s in sources)


def _build(out: Path, sources: list[Path], flags: list[str]) -> Path:
    if _stale(out, sources):
        BUILD.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        subprocess.run([_compiler(), "-O2", "-g", "-Wall", *map(str, sources), "-o", str(tmp),
                        *flags], check=True)
        tmp.replace(out)
    return out


def cuda_include_flags() -> list[str]:
    if (CUDA_INCLUDE / "cuda.h").exists():
        return [f"-I{CUDA_INCLUDE}"]
    from restoreprof.system.cbuild import cuda_include_dir

    return [f"-I{cuda_include_dir()}"]


def readers() -> Path:
    return _build(BUILD / "readers", [PROGRAMS / "readers.c"], [])


def fake_libcuda() -> Path:
    sys.path.insert(0, str(REPO))
    try:
        from tests.fakecuda.build import build_fake_libcuda
    finally:
        sys.path.remove(str(REPO))
    return build_fake_libcuda()


def fake_cudart() -> Path:
    return _build(BUILD / "libcudart.so.13", [PROGRAMS / "fake_cudart.c"],
                  ["-fPIC", "-shared", "-Wl,-soname,libcudart.so.13", "-ldl"])


def fake_cuda_extra() -> Path:
    return _build(BUILD / "libfakecuda_extra.so", [PROGRAMS / "fake_cuda_extra.c"],
                  ["-fPIC", "-shared", "-fvisibility=hidden", *cuda_include_flags()])


def cuda_calls() -> Path:
    """cuda_calls linked with the fake cudart and the extra driver entry points."""
    fake_cudart()
    fake_cuda_extra()
    return _build(BUILD / "cuda_calls", [PROGRAMS / "cuda_calls.c"],
                  [*cuda_include_flags(), f"-L{BUILD}", "-Wl,--no-as-needed",
                   "-l:libcudart.so.13", "-l:libfakecuda_extra.so", f"-Wl,-rpath,{BUILD}",
                   "-ldl"])


def cuda_calls_static() -> Path:
    """cuda_calls with the fake cudart compiled into the executable (a static cudart)."""
    fake_cuda_extra()
    return _build(BUILD / "cuda_calls_static",
                  [PROGRAMS / "cuda_calls.c", PROGRAMS / "fake_cudart.c"],
                  [*cuda_include_flags(), f"-L{BUILD}", "-Wl,--no-as-needed",
                   "-l:libfakecuda_extra.so", f"-Wl,-rpath,{BUILD}", "-ldl"])
