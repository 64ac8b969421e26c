"""Compile the native front door (front.c, its JSON in json.c) into an executable.

    python -m restoreprof.front.build OUT   # setup.py's build_scripts does this
"""

from __future__ import annotations

import sys
from pathlib import Path

from restoreprof.system.cbuild import compile_native

SOURCES = [Path(__file__).parent / name for name in ("front.c", "json.c")]
CFLAGS = ["-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong"]


def build_front(out: Path) -> Path:
    """The front door compiled to out (atomically); CalledProcessError or FileNotFoundError (no
    C compiler) when it cannot be."""
    return compile_native(Path(out), SOURCES, CFLAGS, [])


if __name__ == "__main__":
    print(build_front(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("restoreprof")))
