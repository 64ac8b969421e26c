"""Snapshot tables (versions 3 and 4), as the interception library writes them
(shim/snapshot.c; shim.h has the layouts).

A GPU memory snapshot is a small table file naming chunks by their BLAKE3-256; the bytes are the
chunks, in a content-addressed folder: the checkpoint's own (DIR/gpu-<pid>.snap.chunks), a
store shared by checkpoints (restoreprof.store.layout), or an export's. Each MiB piece of a
chunk also has a check in the table, which a restore recomputes as it copies: its crc32c
(version 4, written now) or its BLAKE3-256 (version 3). The names are the same in both, so both
share one store. This module reads and rewrites tables; it never needs the chunks' contents.
(Versions 1 and 2 hold their bytes inside the snapshot file and name no chunks: the library
reads them, this module refuses them.)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError

MAGIC = b"RPSNAP1\0"  # every version's; the version field tells them apart
VERSION = 4  # written now (RP_SNAP_VERSION); 3 is read too
# checksum_kind by version (RP_SNAP_BLAKE3, RP_SNAP_BLAKE3_CRC32C): chunks named by BLAKE3,
# pieces checked by BLAKE3 (3) or by crc32c (4)
CHECKSUM_KINDS = {3: 2, 4: 3}
HASH_BYTES = 32
CRC_BYTES = 4
PIECE_BYTES = 1 << 20  # what one piece check covers (RP_PIECE_BYTES)
# struct snap_header: magic, version, checksum_kind, chunk_bytes, count, total_bytes,
# table_bytes, dir_bytes, written_bytes, piece_bytes
_HEADER = struct.Struct("<8sIIQQQQQQQ")
# struct snap_record: address, size, reserved, data_offset, device, n_chunks, kind, n_mappings,
# handle, struct snap_prop (type, location_type, location_id, handle_types, compression, rdma,
# usage, padding); then n_mappings struct snap_mapping (va, size, offset)
_RECORD = struct.Struct("<QQQQiIIIQiiiIBBHI")
_MAPPING_BYTES = 24
PHYSICAL = 1  # enum rp_snap_kind: the application's physical allocation (cuMemCreate)


@dataclass(frozen=True)
class Record:
    address: int
    size: int
    device: int
    kind: int  # 0: an allocation of the library's; PHYSICAL: the application's (handle)
    handle: int
    mappings: tuple[tuple[int, int, int], ...]  # (va, size, offset) where a handle was mapped
    hashes: tuple[str, ...]  # hex, one per chunk: its name (shim/chunks.c: rp_chunk_name)
    pieces: tuple[str, ...]  # version 3: hex, the BLAKE3-256 of each PIECE_BYTES piece; 4: ()
    piece_crcs: tuple[int, ...]  # version 4: the crc32c of each PIECE_BYTES piece; 3: ()


@dataclass(frozen=True)
class Table:
    path: Path
    version: int
    chunk_bytes: int
    chunk_dir: str  # as written: relative to the table's folder unless absolute
    total_bytes: int
    written_bytes: int
    records: tuple[Record, ...]
    raw: bytes

    @property
    def folder(self) -> Path:
        """The chunk folder, resolved."""
        return Path(self.chunk_dir) if os.path.isabs(self.chunk_dir) \
            else self.path.parent / self.chunk_dir

    def chunks(self) -> list[tuple[str, int]]:
        """(hash, length) of every chunk, in order (repeats included)."""
        out = []
        for r in self.records:
            for i, h in enumerate(r.hashes):
                out.append((h, min(self.chunk_bytes, r.size - i * self.chunk_bytes)))
        return out

    def with_chunk_dir(self, chunk_dir: str) -> bytes:
        """The same table naming another chunk folder (for an export)."""
        _, version, kind, chunk, count, total, _table_bytes, dir_bytes, written, piece = \
            _HEADER.unpack_from(self.raw)
        encoded = chunk_dir.encode()
        new_dir = -(-(len(encoded) + 1) // 8) * 8
        body = self.raw[_HEADER.size + dir_bytes:]
        header = _HEADER.pack(MAGIC, version, kind, chunk, count, total,
                              _HEADER.size + new_dir + len(body), new_dir, written, piece)
        return header + encoded.ljust(new_dir, b"\0") + body


def chunk_path(folder: Path, hash_hex: str) -> Path:
    return folder / hash_hex[:2] / hash_hex


def _damaged(path: Path, what: str) -> RestoreprofError:
    return RestoreprofError(f"{path} is not a usable snapshot table ({what})",
                            hint="the checkpoint is damaged or from another restoreprof version; "
                                 "take a new one")


def read_table(path: Path) -> Table:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RestoreprofError(f"cannot read the snapshot table {path}: {exc.strerror}",
                               hint="check the checkpoint folder") from None
    if len(raw) < _HEADER.size:
        raise _damaged(path, "cut short")
    magic, version, kind, chunk, count, total, table_bytes, dir_bytes, written, piece = \
        _HEADER.unpack_from(raw)
    if magic == MAGIC and version in (1, 2):
        raise RestoreprofError(f"{path} is a version {version} snapshot: its bytes are inside it, "
                               "not chunks", hint="the store takes snapshots of version 3 or 4; "
                                                  "take a new checkpoint to put it in a store")
    if magic != MAGIC or CHECKSUM_KINDS.get(version) != kind:
        raise _damaged(path, "not version 3 or 4")
    if table_bytes != len(raw) or not 0 < dir_bytes <= 4096 or piece != PIECE_BYTES or \
            chunk == 0 or chunk % PIECE_BYTES:
        raise _damaged(path, "sizes disagree")
    chunk_dir = raw[_HEADER.size:_HEADER.size + dir_bytes].split(b"\0", 1)[0].decode()
    offset = _HEADER.size + dir_bytes
    records = []
    for _ in range(count):
        if offset + _RECORD.size > len(raw):
            raise _damaged(path, "cut short")
        address, size, _, _, device, n, kind, n_mappings, handle, *_ = \
            _RECORD.unpack_from(raw, offset)
        maps_at = offset + _RECORD.size
        offset = maps_at + n_mappings * _MAPPING_BYTES
        n_pieces = -(-size // PIECE_BYTES)
        names_end = offset + n * HASH_BYTES
        end = names_end + _checks_bytes(version, n_pieces)
        if end > len(raw) or n != -(-size // chunk) or kind > PHYSICAL:
            raise _damaged(path, "record out of bounds")
        hashes = tuple(raw[o:o + HASH_BYTES].hex() for o in range(offset, names_end, HASH_BYTES))
        pieces: tuple[str, ...] = ()
        crcs: tuple[int, ...] = ()
        if version == 3:
            pieces = tuple(raw[o:o + HASH_BYTES].hex()
                           for o in range(names_end, end, HASH_BYTES))
        else:
            crcs = struct.unpack_from(f"<{n_pieces}I", raw, names_end)
        mappings = tuple(struct.unpack_from("<QQQ", raw, maps_at + _MAPPING_BYTES * m)
                         for m in range(n_mappings))
        records.append(Record(address, size, device, kind, handle, mappings, hashes, pieces,
                              crcs))
        offset = end
    if offset != len(raw):
        raise _damaged(path, "sizes disagree")
    return Table(path, version, chunk, chunk_dir, total, written, tuple(records), raw)


def _checks_bytes(version: int, n_pieces: int) -> int:
    """A record's piece checks: a BLAKE3-256 each (version 3), or a crc32c each padded to 8
    bytes (version 4: every record stays 8-byte aligned, as shim/snapshot.c writes it)."""
    if version == 3:
        return n_pieces * HASH_BYTES
    return -(-n_pieces * CRC_BYTES // 8) * 8


def is_chunked_table(path: Path) -> bool:
    """Whether path is a version 3 or 4 snapshot (a table of chunks); False for a version 1 or 2
    snapshot (its bytes inside it) and for anything that cannot be read as either (the caller's
    checks refuse it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[:8] == MAGIC and struct.unpack_from("<I", head, 8)[0] >= 3
