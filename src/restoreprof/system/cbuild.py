"""Building restoreprof's native pieces: the C compiler and the CUDA headers, found once.

Ground floor: the interception library's build (optimizer/shim/build.py) and the kallsyms
shortcut's (probes/kallsyms_shortcut.py) both use it, and neither pipeline imports the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def c_compiler() -> str:
    """$CC, else cc, else gcc; FileNotFoundError saying what to install when there is none."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise FileNotFoundError("no C compiler: apt-get install gcc")
    return compiler


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


def up_to_date(out: Path, inputs: list[Path]) -> bool:
    """out exists and is newer than every input."""
    return out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in inputs)


def compile_native(out: Path, sources: list[Path], cflags: list[str], libs: list[str]) -> Path:
    """cc CFLAGS -o OUT SOURCES LIBS (a library with -shared in cflags, else a program), written
    atomically (a reader never loads or runs half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    subprocess.run([c_compiler(), *cflags, "-o", str(tmp), *map(str, sources), *libs], check=True)
    tmp.replace(out)
    return out
