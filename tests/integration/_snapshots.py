"""Helpers for tests that checkpoint a process under the interception library."""

from __future__ import annotations

import shutil
from pathlib import Path

from restoreprof.checkpoint import checkpoint
from restoreprof.store.table import chunk_path, read_table


def damage_chunk(snapshot: Path, index: int = -1) -> Path:
    """Flip 8 bytes in chunk index of snapshot's table (in whatever folder holds it); returns
    the chunk's path."""
    table = read_table(snapshot)
    chunk = chunk_path(table.folder, table.chunks()[index][0])
    with open(chunk, "r+b") as f:
        f.seek(max(0, chunk.stat().st_size - 100))
        f.write(b"\xff" * 8)
    return chunk


def damaged_copy(snapshot: Path, out: Path, index: int = 1) -> Path:
    """A copy of snapshot (table and chunk folder) at out with chunk index damaged; the
    original stays intact."""
    table = read_table(snapshot)
    folder = out.parent / f"{out.name}.chunks"
    shutil.copytree(table.folder, folder)
    out.write_bytes(table.with_chunk_dir(folder.name))
    damage_chunk(out, index)
    return out


def checkpoint_with_damaged_snapshot(pid: int, directory: Path) -> Path:
    """Checkpoint pid (running under 'restoreprof exec') into directory, then flip 8 bytes near
    the end of the last chunk of its GPU memory snapshot; returns the snapshot's path."""
    result = checkpoint(pid, directory)
    snapshot = directory / result.manifest.processes[0].offload["snapshot"]
    damage_chunk(snapshot)
    return snapshot
