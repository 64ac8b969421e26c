"""Compile restoreprof's CRIU plugin from the C beside this file.

    from restoreprof.criu_plugin.build import build_plugin, plugin_dir
    build_plugin()                      # lib/restoreprof_criu.so, rebuilt when stale
    criu dump --lib {plugin_dir()} ...  # the folder holds this plugin only

CRIU loads every ``*.so`` of its plugin folder, so the plugin is built into a folder of its
own. It builds against CRIU 4.1.1's plugin header (vendor/, see its README) and the CUDA
headers; libcuda is opened at run time. The Python that runs the agent is baked in (the one
building it, which has restoreprof installed); RESTOREPROF_PYTHON overrides it at run time.
The CRIU_CUDA_* ranges come from restoreprof.settings.schema, so C and Python accept the same
values.
"""

from __future__ import annotations

import sys
from pathlib import Path

from restoreprof.settings import SETTINGS, schema
from restoreprof.system.cbuild import compile_native, cuda_include_dir, up_to_date

SOURCE_DIR = Path(__file__).parent
LIBRARY_NAME = "restoreprof_criu.so"
CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-Wall", "-Wextra", "-pthread",
          "-fvisibility=hidden"]


def plugin_dir() -> Path:
    """The folder to give `criu --lib` (or to link from CRIU's plugin folder)."""
    return SOURCE_DIR / "lib"


def plugin_path() -> Path:
    return plugin_dir() / LIBRARY_NAME


def range_flags() -> list[str]:
    """-D flags with the ranges of the settings that the CRIU_CUDA_* variables alias."""
    by_alias = {var: s for s in SETTINGS for var in s.env}
    flags = []
    for macro, var in (("STREAMS", "CRIU_CUDA_STREAMS"), ("CHUNK_MB", "CRIU_CUDA_CHUNK_MB")):
        setting = by_alias[var]
        flags += [f"-DRPC_{macro}_LOW={setting.low}", f"-DRPC_{macro}_HIGH={setting.high}"]
    return flags


def build_plugin(out_dir: Path | None = None, force: bool = False) -> Path:
    """Compile the plugin into out_dir (default plugin_dir()); skip when up to date."""
    out = Path(out_dir or plugin_dir()) / LIBRARY_NAME
    sources = sorted(SOURCE_DIR.glob("*.c"))
    inputs = [*sources, *SOURCE_DIR.glob("*.h"), *SOURCE_DIR.glob("vendor/*.h"),
              Path(__file__), Path(schema.__file__)]
    if up_to_date(out, inputs) and not force:
        return out
    cflags = [*CFLAGS, "-isystem", str(SOURCE_DIR / "vendor"), f"-I{SOURCE_DIR}",
              f"-I{cuda_include_dir()}", f'-DRPC_PYTHON="{sys.executable}"', *range_flags()]
    return compile_native(out, sources, cflags, ["-ldl", "-lpthread"])
