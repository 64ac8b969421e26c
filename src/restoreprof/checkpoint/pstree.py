"""CRIU's own list of the processes it dumped: pstree.img, decoded.

The manifest's process list is what restoreprof saw; pstree.img is what CRIU froze and will
restore (children forked after restoreprof looked are in it). Restore checks one against the
other and resumes exactly CRIU's processes.

Records of protobuf PstreeEntry (criu_records reads them); only the varint fields are read:
pid = 1, ppid = 2, pgid = 3, sid = 4, threads = 5 (repeated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from restoreprof.checkpoint import criu_records
from restoreprof.checkpoint.criu_records import IMG_COMMON_MAGIC, PSTREE_MAGIC  # noqa: F401
from restoreprof.errors import IntegrityError

PSTREE_NAME = "pstree.img"


@dataclass
class PstreeEntry:
    pid: int
    ppid: int = 0
    pgid: int = 0
    sid: int = 0
    threads: list[int] = field(default_factory=list)


def _entry(data: bytes) -> PstreeEntry:
    entry = PstreeEntry(pid=-1)
    for number, wire, value in criu_records.fields(data):
        if number == 5 and wire == 0:
            entry.threads.append(value)
        elif number == 5 and wire == 2:  # packed threads, in case a writer packs them
            entry.threads.extend(criu_records.packed_varints(value))
        elif number in (1, 2, 3, 4) and wire == 0:
            setattr(entry, ("pid", "ppid", "pgid", "sid")[number - 1], value)
    if entry.pid <= 0:
        raise ValueError("an entry without a PID")
    return entry


def decode(data: bytes) -> list[PstreeEntry]:
    return [_entry(r) for r in criu_records.records(data, PSTREE_MAGIC, "pstree")]


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
