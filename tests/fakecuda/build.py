"""Build the fake libcuda.so.1 that tests load instead of the NVIDIA driver.

    from tests.fakecuda.build import build_fake_libcuda
    path = build_fake_libcuda()          # tests/fakecuda/build/libcuda.so.1, rebuilt when stale

Point restoreprof at it with RESTOREPROF_LIBCUDA=<path> (and RESTOREPROF_REAL_LIBCUDA for the
interception library), or put its folder first on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "fake_cuda.c"
LIBRARY_NAME = "libcuda.so.1"
CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-pthread", "-fvisibility=hidden", f"-Wl,-soname,{LIBRARY_NAME}"]


def _cuda_include_dir() -> Path:
    from restoreprof.system.cbuild import cuda_include_dir

    return cuda_include_dir()


def build_fake_libcuda(out_dir: Path | None = None) -> Path:
    """Compile fake_cuda.c into OUT_DIR/libcuda.so.1 (default tests/fakecuda/build/)."""
    out = Path(out_dir or HERE / "build") / LIBRARY_NAME
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise FileNotFoundError("no C compiler: apt-get install gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{LIBRARY_NAME}.{os.getpid()}")
    cmd = [compiler, *CFLAGS, f"-I{_cuda_include_dir()}", "-o", str(tmp), str(SOURCE), "-lpthread"]
    subprocess.run(cmd, check=True)
    tmp.replace(out)  # atomic: parallel test workers never load a half-written file
    return out


if __name__ == "__main__":
    print(build_fake_libcuda(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
