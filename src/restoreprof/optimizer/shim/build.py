"""Compile the LD_PRELOAD interception library from the C sources beside this file.

It builds against the CUDA headers only: libcuda is opened with dlopen at run time, so the
library builds on machines without a GPU driver.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

SOURCE_DIR = Path(__file__).parent
LIBRARY_NAME = "librestoreprof_shim.so"
# Hidden by default: only what RP_EXPORT marks (the driver's names, dlsym) leaves the library.
CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-pthread", "-fvisibility=hidden"]


def cuda_include_dir() -> Path:
    """The folder holding cuda.h: $CUDA_HOME/include, then the usual install places."""
    candidates = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    candidates += sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))
    for base in candidates:
        if base and (Path(base) / "include" / "cuda.h").exists():
            return Path(base) / "include"
    if Path("/usr/include/cuda.h").exists():
        return Path("/usr/include")
    raise FileNotFoundError(
        "cuda.h not found: install the CUDA toolkit headers "
        "(or set CUDA_HOME to a folder with include/cuda.h)"
    )


def c_compiler() -> str:
    """$CC, else cc, else gcc; FileNotFoundError saying what to install when there is none."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise FileNotFoundError("no C compiler: apt-get install gcc")
    return compiler


BLAKE3_DIR = SOURCE_DIR / "blake3"


def blake3_sources() -> list[Path]:
    """The vendored BLAKE3 (blake3/README.md): its C, and on x86-64 its assembly (the SIMD
    kernels, picked at run time), so that hashing keeps up with the engine's copies."""
    srcs = sorted(BLAKE3_DIR.glob("*.c"))
    if platform.machine() in ("x86_64", "AMD64"):
        srcs += sorted(BLAKE3_DIR.glob("*_x86-64_unix.S"))
    return srcs


def blake3_flags() -> list[str]:
    hidden = '__attribute__((visibility("hidden")))'
    flags = [f"-DBLAKE3_API={hidden}", f"-DBLAKE3_PRIVATE={hidden}",
             f"-include{BLAKE3_DIR / 'rp_prefix.h'}", f"-I{BLAKE3_DIR}"]
    if platform.machine() not in ("x86_64", "AMD64"):
        flags += ["-DBLAKE3_NO_SSE2", "-DBLAKE3_NO_SSE41", "-DBLAKE3_NO_AVX2", "-DBLAKE3_NO_AVX512"]
    return flags


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c"))


def library_path() -> Path:
    return SOURCE_DIR / LIBRARY_NAME


def build_library(out_dir: Path | None = None, force: bool = False) -> Path:
    """Compile the library into out_dir (default: beside the sources); skip when up to date."""
    out = Path(out_dir or SOURCE_DIR) / LIBRARY_NAME
    srcs = sources()
    if not srcs:
        raise FileNotFoundError(f"no C sources in {SOURCE_DIR}")
    headers = list(SOURCE_DIR.glob("*.h")) + list(BLAKE3_DIR.glob("*.h"))
    newest = max(p.stat().st_mtime for p in srcs + headers + blake3_sources())
    if out.exists() and out.stat().st_mtime >= newest and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [c_compiler(), *CFLAGS, *blake3_flags(), f"-I{cuda_include_dir()}", f"-I{SOURCE_DIR}",
           "-o", str(out)]
    cmd += [str(s) for s in srcs + blake3_sources()] + ["-ldl", "-lpthread"]
    subprocess.run(cmd, check=True)
    return out
