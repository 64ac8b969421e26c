"""Just enough ELF to list the functions an object defines (``.symtab`` and ``.dynsym``).

The probes need to know which CUDA symbols a library or executable defines before asking bcc
to attach, without a dependency on binutils or pyelftools (the H100 machine has neither).
"""

from __future__ import annotations

import mmap
import os
import struct
from functools import lru_cache

_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC, _STT_GNU_IFUNC = 2, 10
_SHN_UNDEF = 0


_PT_LOAD = 1


def defined_functions(path: str, wanted: frozenset[str] | None = None) -> dict[str, int]:
    """The functions defined in the ELF file at path (only those in wanted, if given), each
    with its file offset (what a uprobe attaches to).

    Returns {} for a file that is not a readable 64-bit little-endian ELF.
    """
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return dict(_defined_functions(path, st.st_mtime_ns, st.st_size, wanted))


@lru_cache(maxsize=256)
def _defined_functions(path: str, _mtime_ns: int, _size: int,
                       wanted: frozenset[str] | None) -> tuple[tuple[str, int], ...]:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return tuple(sorted(_scan(data, wanted).items()))
    except (OSError, ValueError, struct.error):
        return ()


def _file_offset(segments: list[tuple[int, int, int]], vaddr: int) -> int | None:
    for p_offset, p_vaddr, p_filesz in segments:
        if p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    return None


def _mentions_cuda(data: mmap.mmap, offset: int, size: int) -> bool:
    return any(data.find(prefix, offset, offset + size) >= 0 for prefix in (b"\0cu", b"\0cuda"))


def _scan(data: mmap.mmap, wanted: frozenset[str] | None) -> dict[str, int]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segments = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            segments.append((p_offset, p_vaddr, p_filesz))
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    names: dict[str, int] = {}
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type not in (_SHT_SYMTAB, _SHT_DYNSYM) or not entsize:
            continue
        strtab_offset, strtab_size = sections[link][4], sections[link][5]
        if wanted is not None and not _mentions_cuda(data, strtab_offset, strtab_size):
            continue   # most objects have no CUDA symbol: skip their tables at C speed
        for i in range(size // entsize):
            st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from(
                "<IBBHQQ", data, offset + i * entsize)
            if st_shndx == _SHN_UNDEF or not st_value or (st_info & 0xF) not in (
                    _STT_FUNC, _STT_GNU_IFUNC):
                continue
            start = strtab_offset + st_name
            name = data[start:data.find(b"\0", start)].decode("ascii", "replace")
            if wanted is None or name in wanted:
                offset_in_file = _file_offset(segments, st_value)
                if offset_in_file is not None:
                    names[name] = offset_in_file
    return names
