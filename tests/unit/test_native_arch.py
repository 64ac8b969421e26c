"""The native library is portable: its crc32c table fallback is right, it compiles for
aarch64 (GH200, GB200) with a cross compiler, and the path code knows aarch64's folders."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import sys

import pytest
from test_crc32c import crc32c_reference

from restoreprof.optimizer.shim import build
from restoreprof.system import cbuild, paths

CROSS_CC = "aarch64-linux-gnu-gcc"
EM_AARCH64 = 183


def _elf_machine(path) -> int:
    with open(path, "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF"
    return struct.unpack_from("<H", header, 18)[0]


def test_the_portable_crc32c_matches_the_definition(tmp_path):
    """The table path (every CPU without a crc32c instruction), built alone."""
    lib = tmp_path / "crc32c_portable.so"
    build.write_settings_header()  # shim.h includes the generated defaults
    subprocess.run([cbuild.c_compiler(), "-O2", "-fPIC", "-shared", "-Wall", "-Werror",
                    "-DRP_CRC32C_PORTABLE", f"-I{cbuild.cuda_include_dir()}",
                    f"-I{build.SOURCE_DIR}", "-o", str(lib), str(build.SOURCE_DIR / "crc32c.c"),
                    "-lpthread"], check=True)
    crc = ctypes.CDLL(str(lib)).rp_crc32c
    crc.restype = ctypes.c_uint32
    crc.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
    assert crc(0, b"123456789", 9) == 0xE3069283
    for size in (0, 1, 7, 8, 9, 24_577, 100_003):
        data = os.urandom(size)
        assert crc(0, data, size) == crc32c_reference(data)


def test_the_library_compiles_for_aarch64(tmp_path, monkeypatch):
    if not shutil.which(CROSS_CC):
        if os.environ.get("RESTOREPROF_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail(f"no {CROSS_CC}: ./scripts/setup.sh installs gcc-aarch64-linux-gnu")
        pytest.skip(f"no {CROSS_CC} (apt-get install gcc-aarch64-linux-gnu)")
    monkeypatch.setenv("CC", CROSS_CC)
    out = build.build_library(out_dir=tmp_path, force=True)
    assert _elf_machine(out) == EM_AARCH64


def test_libcuda_is_looked_for_in_this_architectures_folder(monkeypatch):
    monkeypatch.setattr(sys.implementation, "_multiarch", "aarch64-linux-gnu", raising=False)
    dirs = paths.libcuda_dirs()
    assert "/usr/lib/aarch64-linux-gnu" in dirs
    assert not any("x86_64" in d for d in dirs)
    monkeypatch.delattr(sys.implementation, "_multiarch", raising=False)
    monkeypatch.setattr(paths.platform, "machine", lambda: "aarch64")
    assert paths.multiarch() == "aarch64-linux-gnu"
