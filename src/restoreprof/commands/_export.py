"""A standalone, portable copy of a checkpoint (restoreprof store export / checkpoint --export).
(Here, above both restoreprof.checkpoint and restoreprof.store, since it uses the two.)

CRIU's images are copied as they are; each GPU snapshot's chunks are copied (every one checked
against its BLAKE3-256 on the way: damage is caught here, not on the other host) into
OUT/<snapshot>.chunks, and its table rewritten to name that folder. The copy's manifest is
recorded anew and written last, so an interrupted export is never taken for a checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.engine import chunk_name
from restoreprof.store.table import chunk_path, read_table

MANIFEST_NAME = "restoreprof.json"


def export(directory: Path, out: Path) -> dict:
    from restoreprof.checkpoint.manifest import Manifest, record_images

    directory, out = Path(directory).resolve(), Path(out).resolve()
    manifest = Manifest.load(directory)
    if out.exists() and any(out.iterdir()):
        raise RestoreprofError(f"{out} is not empty", hint="export into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    tables = {p.offload["snapshot"] for p in manifest.processes if p.offload}
    copied = 0
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name == MANIFEST_NAME or path.name.endswith(".tmp"):
            continue
        if path.name not in tables:
            shutil.copy2(path, out / path.name)
            continue
        table = read_table(path)
        folder = out / f"{path.name}.chunks"
        for hash_hex, length in dict(table.chunks()).items():
            target = chunk_path(folder, hash_hex)
            if target.exists():
                continue
            data = chunk_path(table.folder, hash_hex).read_bytes() \
                if chunk_path(table.folder, hash_hex).exists() else None
            if data is None or len(data) != length or chunk_name(data) != hash_hex:
                raise RestoreprofError(
                    f"chunk {hash_hex} of {path.name} is {'missing' if data is None else 'damaged'}"
                    f" in {table.folder}", hint="the checkpoint cannot be exported whole; take "
                                                 "a new one")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            copied += length
        (out / path.name).write_bytes(table.with_chunk_dir(folder.name))
    for record in manifest.processes:
        if record.offload:
            record.offload.pop("store", None)
            record.offload.pop("store_ref", None)
    manifest.images = record_images(out)
    manifest.save(out)
    return {"directory": str(out), "chunk_bytes": copied, "images": len(manifest.images)}
