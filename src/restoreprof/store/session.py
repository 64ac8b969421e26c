"""A checkpoint writing into the store (checkpoint.api calls these, nothing else).

    session = StoreSession.begin(store_path, directory, sync)  # shared lock from here
    session.pending(pids, tables)      # write-ahead: gc keeps what these processes need
    offload with chunk_dir=session.chunk_dir, chunk_mb=session.chunk_mb
    session.reference(offloaded)       # write-ahead reference, before the manifest
    ... manifest saved ...
    session.end()                      # lock released (also on failure)
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from restoreprof.store.layout import Store
from restoreprof.store.refs import fsync_dir, new_id, write_ref


class StoreSession:
    def __init__(self, store: Store, directory: Path, sync: bool) -> None:
        self.store = store
        self.directory = Path(directory)
        self.sync = sync
        self.ref_id = new_id()
        self._lock = contextlib.ExitStack()

    @classmethod
    def begin(cls, root: Path | None, directory: Path, sync: bool = False) -> StoreSession:
        session = cls(Store.open(root, create=True), directory, sync)
        session._lock.enter_context(session.store.locked(exclusive=False))
        return session

    @property
    def chunk_dir(self) -> str:
        return str(self.store.chunks)

    @property
    def chunk_mb(self) -> int:
        return self.store.chunk_mb

    def pending(self, pids: list[int], tables: list[Path]) -> None:
        """Before the offload: a reference naming the processes, so that gc keeps their chunks
        while they live even if this checkpoint dies before its manifest."""
        write_ref(self.store, self.ref_id, self.directory, tables,
                  datetime.now(UTC).isoformat(timespec="seconds"), self.sync, pids=pids,
                  pending=True)

    def reference(self, offloaded: dict[int, dict]) -> None:
        """Write the reference naming every chunk of these snapshots, and mark each offload
        record with it (the manifest, written after, completes the checkpoint)."""
        if not offloaded:
            return
        tables = [self.directory / rec["snapshot"] for rec in offloaded.values()]
        write_ref(self.store, self.ref_id, self.directory, tables,
                  datetime.now(UTC).isoformat(timespec="seconds"), self.sync,
                  pids=list(offloaded))
        for rec in offloaded.values():
            rec["store"] = str(self.store.root)
            rec["store_ref"] = self.ref_id

    def end(self) -> None:
        self._lock.close()


def make_durable(directory: Path) -> None:
    """fsync every file of a checkpoint folder, then the folder (checkpoint --sync): CRIU's
    images are written buffered; the GPU snapshots were synced as they were written."""
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(Path(directory))
