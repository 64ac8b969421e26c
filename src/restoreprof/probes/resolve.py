"""Which objects to probe, and which CUDA symbols each defines.

A running target is probed in the objects it maps (``/proc/PID/maps``), which covers a cudart
linked statically into the executable. A target that does not exist yet (``-- CMD``,
``--restore``) is probed in libcuda as ``restoreprof.system.paths.libcuda_path()`` resolves it,
in the command's executable and in the libraries it links; libraries loaded later with dlopen
are found by rescanning the maps of the traced processes while tracing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from restoreprof.probes.cuda_functions import SYMBOLS
from restoreprof.probes.elf import defined_functions
from restoreprof.system.paths import libcuda_path


@dataclass(frozen=True, slots=True)
class ProbeObject:
    """An ELF object and the CUDA functions it defines, each with its file offset."""

    path: str
    offsets: tuple[tuple[str, int], ...]

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.offsets)

    @property
    def identity(self) -> tuple[int, int]:
        # uprobes live on the inode: the same file reached by two paths is probed once.
        st = os.stat(self.path)
        return st.st_dev, st.st_ino


def cuda_symbols(path: str) -> tuple[tuple[str, int], ...]:
    """The CUDA functions the ELF file at path defines, with their file offsets."""
    return tuple(sorted(defined_functions(path, SYMBOLS).items()))


def mapped_files(pid: int) -> list[str]:
    """Executable file mappings of a process, in the order they appear."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    seen: dict[str, None] = {}
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/"):
            path = parts[5].rstrip("\n")
            if not path.endswith(" (deleted)"):
                seen.setdefault(path, None)
    return list(seen)


def objects_of_process(pid: int) -> list[ProbeObject]:
    """The objects process pid maps that define CUDA functions (its root is used for paths)."""
    found = []
    for path in mapped_files(pid):
        reachable = path if os.path.exists(path) else f"/proc/{pid}/root{path}"
        symbols = cuda_symbols(reachable)
        if symbols:
            found.append(ProbeObject(reachable, symbols))
    return found


def linked_libraries(executable: str) -> list[str]:
    """The shared libraries an executable links, as the dynamic loader resolves them."""
    ldd = shutil.which("ldd")
    if not ldd:
        return []
    try:
        out = subprocess.run([ldd, executable], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return re.findall(r"=>\s+(/\S+)", out)


def objects_for_command(argv: list[str]) -> list[ProbeObject]:
    """The objects to probe before a command starts: libcuda, the executable and its links."""
    candidates = []
    libcuda = libcuda_path()
    if libcuda:
        candidates.append(libcuda)
    executable = shutil.which(argv[0]) if argv else None
    if executable:
        executable = os.path.realpath(executable)
        candidates.append(executable)
        candidates.extend(linked_libraries(executable))
    return unique_objects(candidates)


def objects_for_filter(pids: list[int]) -> list[ProbeObject]:
    """The objects to probe for a filter (filters.py): the host's libcuda, and those the
    processes matching now map (a container's own copies among them)."""
    found = unique_objects([libcuda_path()] if libcuda_path() else [])
    return found + [o for pid in pids for o in objects_of_process(pid)]


def unique_objects(paths: list[str]) -> list[ProbeObject]:
    found: list[ProbeObject] = []
    identities: set[tuple[int, int]] = set()
    for path in paths:
        symbols = cuda_symbols(path)
        if not symbols:
            continue
        obj = ProbeObject(path, symbols)
        try:
            identity = obj.identity
        except OSError:
            continue
        if identity not in identities:
            identities.add(identity)
            found.append(obj)
    return found


def descendants(pid: int) -> list[int]:
    """pid's child processes, recursively, as /proc shows them now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
