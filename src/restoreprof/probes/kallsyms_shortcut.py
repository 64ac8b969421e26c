"""The kallsyms shortcut (kallsyms_shortcut.c): build it, and load it ahead of bcc.

bcc reads the whole of /proc/kallsyms on every compile to learn whether the probe-read BPF
helpers exist; the shortcut answers that from the verifier instead. It changes no answer, only how it is
found, and everything else bcc looks up still goes to bcc.

    install()        # before bcc is imported: True when in place and answering
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_suffix(".c")
LIBRARY_NAME = "librestoreprof_kallsyms.so"
CFLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-fvisibility=hidden", "-pthread"]

_installed: bool | None = None


def library_path(directory: Path | None = None) -> Path:
    return Path(directory or SOURCE.parent) / LIBRARY_NAME


def build(out_dir: Path | None = None, force: bool = False) -> Path:
    """Compile the library (beside the source unless out_dir); skip when up to date."""
    out = library_path(out_dir)
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime and not force:
        return out
    from restoreprof.system.cbuild import c_compiler

    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([c_compiler(), *CFLAGS, "-o", str(out), str(SOURCE), "-ldl"], check=True)
    return out


def install() -> bool:
    """Load the library RTLD_GLOBAL, so that libbcc's own lookups find it first. It must be
    loaded before libbcc is: ctypes opens libbcc with RTLD_NOW, which binds all its calls then.
    False when the library is not built, when bcc was imported first (too late: bcc works as it
    always does, only slower) or when the verifier could not be asked."""
    global _installed
    if _installed is None:
        if "bcc.libbcc" in sys.modules:
            _installed = False
            return _installed
        try:
            lib = ctypes.CDLL(str(library_path()), mode=ctypes.RTLD_GLOBAL)
            _installed = lib.restoreprof_kallsyms_shortcut_answers() == 4
        except OSError:
            _installed = False
    return _installed


if __name__ == "__main__":  # python -m restoreprof.probes.kallsyms_shortcut build
    try:
        print(f"kallsyms shortcut: {build(force='--force' in sys.argv)}")
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"kallsyms shortcut not built: {exc}", file=sys.stderr)
        sys.exit(1)
