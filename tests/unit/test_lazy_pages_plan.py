"""The lazy page server's reading of CRIU's images: pagemap entries and mappings decoded from
bytes laid out as CRIU writes them, and the pieces planned from them (inside one mapping each,
at most PIECE_BYTES, at the right place in the pages image)."""

from __future__ import annotations

import struct

import pytest

from restoreprof.checkpoint import criu_records, lazy_pages
from restoreprof.checkpoint.lazy_pages import PE_LAZY, PE_PARENT, PE_PRESENT, PagemapEntry, Space

PAGE = 4096


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _image(kind: int, *messages: bytes) -> bytes:
    body = b"".join(struct.pack("<I", len(m)) + m for m in messages)
    return struct.pack("<II", criu_records.IMG_COMMON_MAGIC, kind) + body


def test_pagemap_and_mappings_are_read_as_criu_writes_them(tmp_path):
    (tmp_path / "pagemap-7.img").write_bytes(_image(
        criu_records.PAGEMAP_MAGIC, _field(1, 3),
        _field(1, 0x10000) + _field(2, 4) + _field(4, PE_PRESENT | PE_LAZY),
        _field(1, 0x20000) + _field(2, 0) + _field(5, 1 << 33) + _field(4, PE_PRESENT),
        _field(1, 0x30000) + _field(2, 2) + _field(3, 1)))  # no flags, in_parent: a parent's
    pages_id, entries = lazy_pages.read_pagemap(tmp_path, 7)
    assert pages_id == 3
    assert entries == [PagemapEntry(0x10000, 4, PE_PRESENT | PE_LAZY),
                       PagemapEntry(0x20000, 1 << 33, PE_PRESENT),
                       PagemapEntry(0x30000, 2, PE_PARENT)]
    def vma(start: int, end: int) -> bytes:
        return _field(14, _field(1, start) + _field(2, end) + _field(3, 0) + _field(6, 0x22))

    (tmp_path / "mm-7.img").write_bytes(_image(
        criu_records.MM_MAGIC, _field(1, 0x400000) + vma(0x30000, 0x40000) + vma(0x10000, 0x20000)))
    assert lazy_pages.read_mappings(tmp_path, 7) == [(0x10000, 0x20000), (0x30000, 0x40000)]


def test_a_damaged_image_is_refused():
    with pytest.raises(ValueError, match="not CRIU's pagemap"):
        criu_records.records(b"\0" * 16, criu_records.PAGEMAP_MAGIC, "pagemap")
    good = _image(criu_records.PAGEMAP_MAGIC, _field(1, 3))
    with pytest.raises(ValueError, match="longer than the file"):
        criu_records.records(good[:-1], criu_records.PAGEMAP_MAGIC, "pagemap")


def test_pieces_stay_inside_one_mapping_and_point_into_the_pages_image(monkeypatch):
    monkeypatch.setattr(lazy_pages, "PIECE_BYTES", 4 * PAGE)
    entries = [
        PagemapEntry(0x100000, 2, PE_PRESENT),            # eager: on file, not a piece
        PagemapEntry(0x200000, 10, PE_PRESENT | PE_LAZY),  # crosses a mapping border at +6 pages
        PagemapEntry(0x300000, 3, PE_PARENT),             # in a parent: not on file
        PagemapEntry(0x400000, 1, PE_PRESENT | PE_LAZY),
    ]
    mappings = [(0x100000, 0x102000), (0x200000, 0x206000), (0x206000, 0x210000),
                (0x400000, 0x401000)]
    space = Space(pid=1)
    total = lazy_pages.plan_pieces(space, entries, mappings, PAGE)
    assert total == 11 * PAGE
    got = [(p.start - 0x200000 if p.start < 0x400000 else p.start, p.length // PAGE,
            p.offset // PAGE) for p in space.pieces]
    # the 10-page entry starts at file page 2: 4 + 2 pages in the first mapping, 4 in the second
    assert got == [(0, 4, 2), (4 * PAGE, 2, 6), (6 * PAGE, 4, 8), (0x400000, 1, 12)]
    assert space.left == 4
    assert space.find(0x200000 + 5 * PAGE).length == 2 * PAGE
    assert space.find(0x100000) is None and space.find(0x200000 + 10 * PAGE) is None
