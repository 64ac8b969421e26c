"""Snapshot tables (version 2), as the interception library writes them (shim/snapshot.c).

A GPU memory snapshot is a small table file naming chunks by their BLAKE3-256; the bytes are the
chunks, in a content-addressed folder: the checkpoint's own (DIR/gpu-<pid>.snap.chunks), a
store shared by checkpoints (restoreprof.store.layout), or an export's. This module reads and
rewrites tables; it never needs the chunks' contents.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError

MAGIC = b"RPSNAP2\0"
VERSION = 2
BLAKE3 = 2
HASH_BYTES = 32
PIECE_BYTES = 1 << 20  # what one integrity hash covers (RP_PIECE_BYTES)
# struct snap_header: magic, version, checksum_kind, chunk_bytes, count, total_bytes,
# table_bytes, dir_bytes, written_bytes, piece_bytes
_HEADER = struct.Struct("<8sIIQQQQQQQ")
# struct snap_record: address, size, reserved, data_offset, device, n_chunks
_RECORD = struct.Struct("<QQQQiI")


@dataclass(frozen=True)
class Record:
    address: int
    size: int
    device: int
    hashes: tuple[str, ...]  # hex, one per chunk: its name (shim/chunks.c: rp_chunk_name)
    pieces: tuple[str, ...]  # hex, the BLAKE3-256 of each PIECE_BYTES piece


@dataclass(frozen=True)
class Table:
    path: Path
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
    if magic != MAGIC or version != VERSION or kind != BLAKE3:
        raise _damaged(path, f"not version {VERSION}")
    if table_bytes != len(raw) or not 0 < dir_bytes <= 4096 or piece != PIECE_BYTES or \
            chunk == 0 or chunk % PIECE_BYTES:
        raise _damaged(path, "sizes disagree")
    chunk_dir = raw[_HEADER.size:_HEADER.size + dir_bytes].split(b"\0", 1)[0].decode()
    offset = _HEADER.size + dir_bytes
    records = []
    for _ in range(count):
        if offset + _RECORD.size > len(raw):
            raise _damaged(path, "cut short")
        address, size, _, _, device, n = _RECORD.unpack_from(raw, offset)
        offset += _RECORD.size
        n_pieces = -(-size // PIECE_BYTES)
        names_end = offset + n * HASH_BYTES
        end = names_end + n_pieces * HASH_BYTES
        if end > len(raw) or n != -(-size // chunk):
            raise _damaged(path, "record out of bounds")
        hashes = tuple(raw[o:o + HASH_BYTES].hex() for o in range(offset, names_end, HASH_BYTES))
        pieces = tuple(raw[o:o + HASH_BYTES].hex() for o in range(names_end, end, HASH_BYTES))
        records.append(Record(address, size, device, hashes, pieces))
        offset = end
    return Table(path, chunk, chunk_dir, total, written, tuple(records), raw)
