"""CRIU's own list of the processes it dumped: pstree.img, decoded.

The manifest's process list is what restoreprof saw; pstree.img is what CRIU froze and will
restore (children forked after restoreprof looked are in it). Restore checks one against the
other and resumes exactly CRIU's processes.

CRIU ships a decoder (`crit`, in its Python package), but neither Debian's criu nor the
private CRIU that setup.sh installs carries it, and the format is tiny: two magic words, then
records of (u32 length, protobuf PstreeEntry). Only the varint fields are read:
pid = 1, ppid = 2, pgid = 3, sid = 4, threads = 5 (repeated).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from restoreprof.errors import IntegrityError

PSTREE_NAME = "pstree.img"
IMG_COMMON_MAGIC = 0x54564319
PSTREE_MAGIC = 0x50273030
_MAX_ENTRY_BYTES = 1 << 20  # a PstreeEntry is tens of bytes; more means a damaged file


@dataclass
class PstreeEntry:
    pid: int
    ppid: int = 0
    pgid: int = 0
    sid: int = 0
    threads: list[int] = field(default_factory=list)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip(data: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _varint(data, pos)
        return pos + length
    if wire == 5:
        return pos + 4
    raise ValueError(f"wire type {wire}")


def _entry(data: bytes) -> PstreeEntry:
    entry = PstreeEntry(pid=-1)
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number in (1, 2, 3, 4, 5) and wire == 0:
            value, pos = _varint(data, pos)
            if number == 5:
                entry.threads.append(value)
            else:
                setattr(entry, ("pid", "ppid", "pgid", "sid")[number - 1], value)
        elif number == 5 and wire == 2:  # packed threads, in case a writer packs them
            length, pos = _varint(data, pos)
            end, sub = pos + length, pos
            while sub < end:
                value, sub = _varint(data, sub)
                entry.threads.append(value)
            pos = end
        else:
            pos = _skip(data, pos, wire)
    if entry.pid <= 0:
        raise ValueError("an entry without a PID")
    return entry


def decode(data: bytes) -> list[PstreeEntry]:
    if len(data) < 8:
        raise ValueError("shorter than its header")
    magic, kind = struct.unpack_from("<II", data, 0)
    if magic != IMG_COMMON_MAGIC or kind != PSTREE_MAGIC:
        raise ValueError(f"magic {magic:#x}/{kind:#x} is not CRIU's pstree image")
    entries, pos = [], 8
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("a truncated record")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size > _MAX_ENTRY_BYTES or pos + size > len(data):
            raise ValueError("a record longer than the file")
        entries.append(_entry(data[pos:pos + size]))
        pos += size
    return entries


def read(directory: Path) -> list[PstreeEntry]:
    """The processes in directory's pstree.img, root first; IntegrityError when unreadable."""
    path = directory / PSTREE_NAME
    try:
        entries = decode(path.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing: CRIU's list of processes is part of every checkpoint",
                             hint="the checkpoint is incomplete; take a new one") from None
    except ValueError as exc:
        raise IntegrityError(f"{path} is not a valid CRIU process tree ({exc})",
                             hint="the checkpoint is damaged; take a new one") from None
    if not entries:
        raise IntegrityError(f"{path} lists no process",
                             hint="the checkpoint is damaged; take a new one")
    return entries


def pids(directory: Path) -> list[int]:
    return [e.pid for e in read(directory)]
