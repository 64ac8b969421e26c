"""Helpers for tests that checkpoint a process under the interception library."""

from __future__ import annotations

import shutil
import struct
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
_HEADER_V3 = 72  # struct snap_header of versions 3 and 4
_RECORD = 80  # struct snap_record
_MAPPING = 24


def _record_bytes(raw: bytes, offset: int, record, version: int) -> tuple[int, int]:
    """(bytes of the record, its mappings and its chunk names; bytes of its piece checks) of the
    version 3 or 4 record at offset (shim.h)."""
    n_maps = struct.unpack_from("<I", raw, offset + 44)[0]
    head = _RECORD + _MAPPING * n_maps + 32 * len(record.hashes)
    checks = 32 * len(record.pieces) if version == 3 else -(-4 * len(record.piece_crcs) // 8) * 8
    return head, checks


def chunk_data(table, record) -> bytes:
    """A record's bytes, read from its chunks."""
    return b"".join(chunk_path(table.folder, h).read_bytes() for h in record.hashes)


def v3_copy(snapshot: Path, out: Path) -> Path:
    """The version 4 snapshot rewritten as restoreprof wrote version 3 before it: the same chunk
    names (copied into a folder of out's own, so damaging them spares the original), each MiB
    piece checked by its BLAKE3-256 (computed here by the library's hash from the chunks)
    instead of its crc32c. Lets tests prove that version 3 snapshots are still read and checked.
    Checks on the way that the version 4 table's crc32c values match the chunks."""
    from restoreprof.optimizer.engine import blake3, crc32c

    table = read_table(snapshot)
    assert table.version == 4, table.version
    raw = table.raw
    offset = _HEADER_V3 + struct.unpack_from("<Q", raw, 48)[0]
    body = b""
    for r in table.records:
        data = chunk_data(table, r)
        pieces = [data[i:i + MIB] for i in range(0, len(data), MIB)]
        assert [crc32c(p) for p in pieces] == list(r.piece_crcs), "the table's crc32c"
        head, checks = _record_bytes(raw, offset, r, 4)
        body += raw[offset:offset + head] + b"".join(bytes.fromhex(blake3(p)) for p in pieces)
        offset += head + checks
    assert offset == len(raw)
    folder = out.parent / f"{out.name}.chunks"
    shutil.copytree(table.folder, folder)
    chunk_dir = folder.name.encode()
    dir_bytes = -(-(len(chunk_dir) + 1) // 8) * 8
    header = struct.pack("<8sIIQQQQQQQ", b"RPSNAP1\0", 3, 2, table.chunk_bytes, len(table.records),
                         table.total_bytes, _HEADER_V3 + dir_bytes + len(body), dir_bytes,
                         table.written_bytes, MIB)
    out.write_bytes(header + chunk_dir.ljust(dir_bytes, b"\0") + body)
    return out


def in_file_copy(snapshot: Path, out: Path, version: int) -> Path:
    """The version 3 or 4 snapshot (table + chunks) rewritten as an older restoreprof wrote it:
    version 1 (allocations only) or 2 (record kinds and mappings), the bytes inside the file
    with a crc32c per MiB (shim.h). Lets tests prove that old snapshots are still read."""
    from restoreprof.optimizer.engine import crc32c

    table = read_table(snapshot)
    raw = table.raw
    dir_bytes = struct.unpack_from("<Q", raw, 48)[0]
    offset = _HEADER_V3 + dir_bytes  # the header, then the chunk folder's path
    records, datas = [], []
    for r in table.records:
        data = chunk_data(table, r)
        assert len(data) == r.size
        n_maps = struct.unpack_from("<I", raw, offset + 44)[0]
        head = raw[offset:offset + _RECORD + _MAPPING * n_maps]  # the record and its mappings
        offset += sum(_record_bytes(raw, offset, r, table.version))
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
