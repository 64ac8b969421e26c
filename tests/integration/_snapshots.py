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


MIB = 1 << 20
_ALIGN = 4096


def in_file_copy(snapshot: Path, out: Path, version: int) -> Path:
    """The version 3 snapshot (table + chunks) rewritten as an older restoreprof wrote it: version
    1 (allocations only) or 2 (record kinds and mappings), the bytes inside the file with a
    crc32c per MiB (shim.h). Lets tests prove that old snapshots are still read."""
    import struct

    from restoreprof.optimizer.engine import crc32c

    table = read_table(snapshot)
    raw = table.raw
    dir_bytes = struct.unpack_from("<Q", raw, 48)[0]
    offset = 72 + dir_bytes  # version 3's header, then the chunk folder's path
    records, datas = [], []
    for r in table.records:
        data = b"".join(chunk_path(table.folder, h).read_bytes() for h in r.hashes)
        assert len(data) == r.size
        n_maps = struct.unpack_from("<I", raw, offset + 44)[0]
        head = raw[offset:offset + 80 + 24 * n_maps]  # the record and its mappings
        offset += 80 + 24 * n_maps + 32 * (len(r.hashes) + len(r.pieces))
        sums = [crc32c(data[i:i + MIB]) for i in range(0, len(data), MIB)]
        if version == 1:
            assert r.kind == 0 and not r.mappings, "version 1 held allocations only"
            head = head[:40]
        records.append((head, sums))
        datas.append(data)
    header_bytes = 64
    sizes = [len(h) + 4 * (len(s) + len(s) % 2) for h, s in records]
    table_bytes = header_bytes + sum(sizes)
    at = -(-table_bytes // _ALIGN) * _ALIGN
    body, blobs = b"", []
    for (head, sums), data in zip(records, datas, strict=True):
        head = bytearray(head)
        struct.pack_into("<Q", head, 24, at)  # data_offset
        struct.pack_into("<I", head, 36, len(sums))  # n_chunks: one crc32c per MiB
        body += bytes(head) + struct.pack(f"<{len(sums)}I", *sums) + b"\0" * (4 * (len(sums) % 2))
        blobs.append((at, data))
        at = -(-(at + len(data)) // _ALIGN) * _ALIGN
    header = struct.pack("<8sIIQQQQQQ", b"RPSNAP1\0", version, 1, MIB, len(records),
                         table.total_bytes, table_bytes, 0, 0)
    with open(out, "wb") as f:
        f.write(header + body)
        for at, data in blobs:
            f.seek(at)
            f.write(data)
    return out
