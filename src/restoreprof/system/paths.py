"""The one place that resolves external programs and libraries.

Everything that runs CRIU, loads libcuda or preloads the interception library asks here.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from restoreprof.errors import EXIT_ENVIRONMENT, RestoreprofError

MIN_CRIU_VERSION = (4, 0)

def multiarch() -> str:
    """This machine's multiarch triplet (x86_64-linux-gnu, aarch64-linux-gnu): the folder
    under /usr/lib where Debian and Ubuntu put its libraries."""
    return getattr(sys.implementation, "_multiarch", "") or f"{platform.machine()}-linux-gnu"


def debian_arch() -> str:
    """This machine's Debian architecture name (amd64, arm64), as package names use it."""
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return out or {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def libcuda_dirs() -> tuple[str, ...]:
    """Where drivers put libcuda on the machines we know (NVIDIA containers use
    /usr/local/nvidia), for this machine's architecture (GH200 and GB200 are aarch64)."""
    return ("/usr/local/nvidia/lib64", f"/usr/lib/{multiarch()}", "/usr/lib64", "/usr/lib/wsl/lib")


def _venv_criu() -> Path:
    return Path(sys.prefix) / "libexec" / "restoreprof" / "criu"


def criu_candidates() -> list[str]:
    found = [os.environ.get("RESTOREPROF_CRIU", ""), os.environ.get("RP_CRIU", "")]
    found.append(str(_venv_criu()))
    found.append(shutil.which("criu") or "")
    return [c for c in found if c and os.access(c, os.X_OK)]


def criu_version(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Version:\s*([\d.]+)", out)
    return tuple(int(x) for x in match.group(1).split(".")) if match else None


@lru_cache(maxsize=1)
def criu_path() -> str:
    """Path to a CRIU >= 4.0, or a RestoreprofError that says how to get one."""
    seen = []
    for candidate in criu_candidates():
        version = criu_version(candidate)
        if version and version >= MIN_CRIU_VERSION:
            return candidate
        seen.append(f"{candidate} ({'.'.join(map(str, version)) if version else 'does not run'})")
    detail = f"; found only {', '.join(seen)}" if seen else ""
    raise RestoreprofError(
        f"CRIU >= {'.'.join(map(str, MIN_CRIU_VERSION))} not found{detail}",
        hint="run ./scripts/setup.sh as root, or set RESTOREPROF_CRIU=/path/to/criu",
        exit_code=EXIT_ENVIRONMENT,
    )


def libcuda_path() -> str | None:
    """The real CUDA driver library, or None on a machine without one."""
    override = os.environ.get("RESTOREPROF_LIBCUDA")
    if override:
        return override
    for directory in libcuda_dirs():
        hits = sorted(glob.glob(os.path.join(directory, "libcuda.so.*[0-9]")))
        if hits:
            return os.path.realpath(hits[-1])
    name = ctypes.util.find_library("cuda")
    return name


def shim_library_path() -> Path:
    """The LD_PRELOAD interception library built by the setup command (optimizer/shim/build.py
    writes it there; named here so the ground floor imports nothing above it)."""
    return Path(__file__).resolve().parent.parent / "optimizer" / "shim" / "librestoreprof_shim.so"
