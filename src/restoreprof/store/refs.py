"""References: STORE/refs/<id>.json, one per checkpoint, naming every chunk it needs.

Written after the chunks and before the checkpoint's manifest (write-ahead): gc keeps what a
reference names while its checkpoint is complete, and drops a reference whose checkpoint never
completed (crashed, failed) or is gone.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.store.layout import Store
from restoreprof.store.table import read_table

MANIFEST_NAME = "restoreprof.json"  # checkpoint.manifest's; not imported: the store stays below it


@dataclass(frozen=True)
class Ref:
    id: str
    checkpoint: Path
    created: str
    tables: tuple[str, ...]
    chunks: dict[str, int]  # hash -> length, each once
    logical_bytes: int
    written_bytes: int
    pids: tuple[int, ...] = ()  # the processes offloaded into it

    def held_by_live_process(self) -> bool:
        """An incomplete checkpoint whose process is still alive: the process may be offloaded
        (a checkpoint killed between OFFLOAD and its manifest), and its only copy of its GPU
        memory is these chunks. gc keeps them until it is gone."""
        return any(os.path.exists(f"/proc/{pid}") for pid in self.pids)

    def tables_written(self) -> bool:
        return all(Path(t).exists() for t in self.tables)

    def table_chunks(self) -> dict[str, int]:
        """The chunks named by whichever of its tables exist (for an incomplete reference)."""
        found: dict[str, int] = {}
        for t in self.tables:
            try:
                found.update(read_table(Path(t)).chunks())
            except RestoreprofError:
                continue  # never written, or cut short by the crash
        return found

    def complete(self) -> bool:
        """Whether the checkpoint's manifest exists and names this reference."""
        try:
            manifest = json.loads((self.checkpoint / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            return False
        return any((p.get("offload") or {}).get("store_ref") == self.id
                   for p in manifest.get("processes", []))


def new_id() -> str:
    return uuid.uuid4().hex


def write_ref(store: Store, ref_id: str, checkpoint: Path, tables: list[Path], created: str,
              sync: bool = False, pids: list[int] | None = None, pending: bool = False) -> Ref:
    """pending: before the offload (tables not written yet): names the processes, no chunks."""
    chunks: dict[str, int] = {}
    logical = written = 0
    for path in [] if pending else tables:
        table = read_table(path)
        logical += table.total_bytes
        written += table.written_bytes
        chunks.update(table.chunks())
    ref = Ref(ref_id, Path(checkpoint).resolve(), created, tuple(str(t) for t in tables), chunks,
              logical, written, tuple(pids or ()))
    data = {"id": ref.id, "checkpoint": str(ref.checkpoint), "created": created,
            "tables": list(ref.tables), "chunks": chunks, "logical_bytes": logical,
            "written_bytes": written, "pids": list(ref.pids)}
    tmp = store.refs / f".{ref_id}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, store.refs / f"{ref_id}.json")
    if sync:
        fsync_dir(store.refs)
    return ref


def read_refs(store: Store) -> list[Ref]:
    refs = []
    for path in sorted(store.refs.glob("*.json")):
        try:
            d = json.loads(path.read_text())
            refs.append(Ref(d["id"], Path(d["checkpoint"]), d.get("created", ""),
                            tuple(d.get("tables", ())), {k: int(v) for k, v in d["chunks"].items()},
                            int(d["logical_bytes"]), int(d["written_bytes"]),
                            tuple(int(p) for p in d.get("pids", ()))))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # gc must not guess what a damaged reference protected
            raise RestoreprofError(f"the store reference {path} is damaged ({exc})",
                                   hint="if its checkpoint is gone, delete the file; else "
                                        "take that checkpoint again") from None
    return refs


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
