"""restoreprof store gc: delete chunks no complete checkpoint names.

Under the store's exclusive lock, so no checkpoint is between its first chunk and its manifest.
A reference whose checkpoint is not complete (crashed, failed, deleted) is dropped first, unless
one of its processes is alive (it may be offloaded, its memory only in these chunks); temporary
chunk files a crash left behind go too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from restoreprof.store.layout import Store
from restoreprof.store.refs import read_refs


@dataclass
class GcResult:
    kept_chunks: int = 0
    deleted_chunks: int = 0
    deleted_bytes: int = 0
    dropped_refs: list[str] = field(default_factory=list)
    held_refs: list[str] = field(default_factory=list)  # incomplete, its process still alive
    deferred: bool = False  # a held one has no table yet: no chunk was deleted
    deleted_temporary: int = 0


def gc(store: Store, *, wait: bool = False, dry_run: bool = False) -> GcResult:
    result = GcResult()
    with store.locked(exclusive=True, wait=wait):
        live: set[str] = set()
        for ref in read_refs(store):
            if ref.complete():
                live.update(ref.chunks)
            elif ref.held_by_live_process():
                live.update(ref.chunks)
                live.update(ref.table_chunks())
                result.held_refs.append(ref.id)
                # its process may still be writing (a checkpoint killed mid-OFFLOAD): until its
                # table exists, the chunks it reuses are unknown, so nothing may go
                result.deferred |= not ref.tables_written()
            else:
                result.dropped_refs.append(ref.id)
                if not dry_run:
                    (store.refs / f"{ref.id}.json").unlink(missing_ok=True)
        for path in [] if result.deferred else list(store.chunk_files()):
            if path.name in live:
                result.kept_chunks += 1
                continue
            result.deleted_chunks += 1
            result.deleted_bytes += path.stat().st_size
            if not dry_run:
                path.unlink(missing_ok=True)
        for path in [] if result.deferred else list(store.temporary_files()):
            result.deleted_temporary += 1
            if not dry_run:
                path.unlink(missing_ok=True)
    return result
