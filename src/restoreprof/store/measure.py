"""restoreprof store list / measure: what the store holds, and what dedup saves."""

from __future__ import annotations

from restoreprof.store.layout import Store
from restoreprof.store.refs import read_refs


def measure(store: Store) -> dict:
    """Logical bytes (what the checkpoints name) against stored bytes (the chunk files), per
    checkpoint and in total; dedup ratio = logical / stored."""
    refs = read_refs(store)
    stored = {p.name: p.stat().st_size for p in store.chunk_files()}
    owners: dict[str, int] = {}
    for ref in refs:
        for h in ref.chunks:
            owners[h] = owners.get(h, 0) + 1
    checkpoints = []
    for ref in refs:
        unique = sum(n for h, n in ref.chunks.items() if owners[h] == 1)
        checkpoints.append({
            "id": ref.id, "checkpoint": str(ref.checkpoint), "created": ref.created,
            "complete": ref.complete(), "logical_bytes": ref.logical_bytes,
            "chunks": len(ref.chunks), "written_bytes": ref.written_bytes,
            "unique_bytes": unique,
            "missing_chunks": sum(1 for h in ref.chunks if h not in stored)})
    logical = sum(r.logical_bytes for r in refs)
    stored_bytes = sum(stored.values())
    return {"store": str(store.root), "chunk_bytes": store.chunk_mb << 20,
            "logical_bytes": logical, "stored_bytes": stored_bytes, "chunks": len(stored),
            "dedup_ratio": round(logical / stored_bytes, 4) if stored_bytes else None,
            "checkpoints": checkpoints}
