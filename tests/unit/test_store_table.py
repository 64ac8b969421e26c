"""The library's BLAKE3 (vendored, SIMD picked at run time) against the official test vectors,
and snapshot tables (versions 3 and 4) as restoreprof.store.table reads and rewrites them."""

import ctypes
import struct

import pytest

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.shim.build import build_library
from restoreprof.store.table import chunk_path, read_table

MIB = 1 << 20
# BLAKE3-team/BLAKE3 test_vectors/test_vectors.json: input byte i is i % 251
VECTORS = {
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    1: "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
    1023: "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
    1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
    8193: "bab6c09cb8ce8cf459261398d2e7aef35700bf488116ceb94a36d0f5f1b7bc3b",
    16384: "f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4",
    31744: "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47",
    102400: "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
}


@pytest.fixture(scope="module")
def blake3():
    lib = ctypes.CDLL(str(build_library()))
    lib.rp_blake3.restype = None
    lib.rp_blake3.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]

    def digest(data: bytes) -> str:
        out = ctypes.create_string_buffer(32)
        lib.rp_blake3(data, len(data), out)
        return out.raw.hex()

    return digest


@pytest.mark.parametrize("length", sorted(VECTORS))
def test_blake3_matches_the_official_vectors(blake3, length):
    assert blake3(bytes(i % 251 for i in range(length))) == VECTORS[length]


def test_a_chunk_name_is_the_hash_of_its_pieces_hashes(blake3):
    from restoreprof.optimizer.engine import chunk_name

    data = bytes(range(256)) * (MIB // 256) * 2 + b"tail"
    pieces = [data[i:i + MIB] for i in range(0, len(data), MIB)]
    expected = blake3(b"".join(bytes.fromhex(blake3(p)) for p in pieces))
    assert chunk_name(data) == expected and len(pieces) == 3


def _crc(i: int, k: int) -> int:
    return 0x10000 * (i + 1) + k


def _table(chunk_dir: bytes, chunk: int, sizes: list[int], piece: int = MIB,
           mappings: int = 0, version: int = 4, kind: int | None = None) -> bytes:
    """A table as shim/snapshot.c lays it out (shim.h): version 4 (a crc32c per piece, the array
    padded to 8 bytes) or 3 (a BLAKE3-256 per piece)."""
    dir_bytes = -(-(len(chunk_dir) + 1) // 8) * 8
    body = b""
    for i, size in enumerate(sizes):
        n, pieces = -(-size // chunk), -(-size // piece)
        body += struct.pack("<QQQQiIIIQiiiIBBHI", 0x1000 * (i + 1), size, size, 0, 0, n,
                            1 if mappings else 0, mappings, 0x77 if mappings else 0,
                            0, 0, 0, 0, 0, 0, 0, 0)
        body += b"".join(struct.pack("<QQQ", 0x9000 + m, MIB, m * MIB) for m in range(mappings))
        body += b"".join(bytes([i, k]) * 16 for k in range(n))  # names
        if version == 3:
            body += b"".join(bytes([i, 128 + k]) * 16 for k in range(pieces))
        else:
            body += b"".join(struct.pack("<I", _crc(i, k)) for k in range(pieces))
            body += b"\0" * (4 * (pieces % 2))
    header_bytes = 72
    total = header_bytes + dir_bytes + len(body)
    kind = kind if kind is not None else {3: 2, 4: 3}.get(version, 1)
    header = struct.pack("<8sIIQQQQQQQ", b"RPSNAP1\0", version, kind, chunk, len(sizes),
                         sum(sizes), total, dir_bytes, 5, piece)
    return header + chunk_dir.ljust(dir_bytes, b"\0") + body


@pytest.mark.parametrize("version", [3, 4])
def test_a_table_lists_its_chunks_and_can_name_another_folder(tmp_path, version):
    path = tmp_path / "gpu-1.snap"
    # 5 pieces, then 3: an odd count pads version 4's crc32c array
    path.write_bytes(_table(b"/var/lib/restoreprof/store/chunks", 2 * MIB, [5 * MIB, 2 * MIB + 7],
                            version=version))
    table = read_table(path)
    assert table.version == version
    assert str(table.folder) == "/var/lib/restoreprof/store/chunks"  # absolute: a store
    lengths = [n for _, n in table.chunks()]
    assert lengths == [2 * MIB, 2 * MIB, MIB, 2 * MIB, 7] and table.written_bytes == 5
    assert table.chunks()[3][0] == bytes([1, 0]).hex() * 16  # the second record's first name
    if version == 3:
        assert [len(r.pieces) for r in table.records] == [5, 3]
        assert table.records[1].pieces[2] == bytes([1, 130]).hex() * 16
        assert all(r.piece_crcs == () for r in table.records)
    else:
        assert [r.piece_crcs for r in table.records] == \
            [tuple(_crc(0, k) for k in range(5)), tuple(_crc(1, k) for k in range(3))]
        assert all(r.pieces == () for r in table.records)
    assert chunk_path(table.folder, table.chunks()[0][0]).parent.name == table.chunks()[0][0][:2]
    moved = tmp_path / "moved.snap"
    moved.write_bytes(table.with_chunk_dir("moved.snap.chunks"))
    again = read_table(moved)
    assert again.folder == tmp_path / "moved.snap.chunks"
    assert again.chunks() == table.chunks() and again.records == table.records
    assert again.version == version


@pytest.mark.parametrize("damage", ["truncate", "magic", "count", "piece", "kind", "version",
                                    "extra"])
def test_a_damaged_table_is_refused_with_a_hint(tmp_path, damage):
    raw = bytearray(_table(b"x.chunks", 2 * MIB, [5 * MIB]))
    if damage == "truncate":
        raw = raw[:-10]
    elif damage == "magic":
        raw[0:8] = b"RPSNAPX\0"
    elif damage == "count":
        struct.pack_into("<Q", raw, 24, 7)  # more records than the table holds
    elif damage == "piece":
        struct.pack_into("<Q", raw, 64, 4096)  # pieces of another size
    elif damage == "kind":
        struct.pack_into("<I", raw, 12, 2)  # version 4 saying BLAKE3 pieces: not what it holds
    elif damage == "version":
        struct.pack_into("<I", raw, 8, 5)  # newer than this restoreprof
    else:
        raw += b"\0" * 8  # bytes past the last record
        struct.pack_into("<Q", raw, 40, len(raw))
    path = tmp_path / "bad.snap"
    path.write_bytes(bytes(raw))
    with pytest.raises(RestoreprofError, match="not a usable snapshot table") as err:
        read_table(path)
    assert "take a new one" in err.value.hint


def test_a_physical_record_with_mappings_is_read_past(tmp_path):
    path = tmp_path / "gpu-2.snap"
    path.write_bytes(_table(b"c", MIB, [3 * MIB, MIB + 1], mappings=2))
    table = read_table(path)
    assert [(r.kind, r.handle) for r in table.records] == [(1, 0x77), (1, 0x77)]
    assert [n for _, n in table.chunks()] == [MIB, MIB, MIB, MIB, 1]


def test_an_in_file_snapshot_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "gpu-3.snap"
    path.write_bytes(_table(b"c", MIB, [MIB], version=2))
    with pytest.raises(RestoreprofError, match="version 2 snapshot") as err:
        read_table(path)
    assert "take a new checkpoint" in err.value.hint
