"""CRIU's image files, read without CRIU's own decoder.

An image is two magic words (CRIU's common one, then the image kind's), then records of
(u32 length, protobuf message). CRIU ships a decoder (`crit`, in its Python package), but
neither Debian's criu nor the private CRIU that setup.sh installs carries it, and restoreprof
reads only a few plain fields: varints, fixed 64-bit words and nested messages.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

IMG_COMMON_MAGIC = 0x54564319
PSTREE_MAGIC = 0x50273030
PAGEMAP_MAGIC = 0x56084025
MM_MAGIC = 0x57492820
MAX_RECORD_BYTES = 64 << 20  # an mm image of a huge process is megabytes; more is damage


def varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(message: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field: an int for varints and fixed words,
    the bytes for length-delimited ones (strings, nested and packed fields)."""
    pos = 0
    while pos < len(message):
        key, pos = varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(message, pos)
        elif wire == 1:
            if pos + 8 > len(message):
                raise ValueError("truncated fixed64")
            (value,) = struct.unpack_from("<Q", message, pos)
            pos += 8
        elif wire == 2:
            length, pos = varint(message, pos)
            if pos + length > len(message):
                raise ValueError("a field longer than its message")
            value, pos = message[pos:pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(message):
                raise ValueError("truncated fixed32")
            (value,) = struct.unpack_from("<I", message, pos)
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def packed_varints(data: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = varint(data, pos)
        values.append(value)
    return values


def records(data: bytes, kind: int, what: str) -> list[bytes]:
    """The records of an image of the given kind; ValueError saying what is wrong."""
    if len(data) < 8:
        raise ValueError("shorter than its header")
    magic, found = struct.unpack_from("<II", data, 0)
    if magic != IMG_COMMON_MAGIC or found != kind:
        raise ValueError(f"magic {magic:#x}/{found:#x} is not CRIU's {what} image")
    out, pos = [], 8
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("a truncated record")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size > MAX_RECORD_BYTES or pos + size > len(data):
            raise ValueError("a record longer than the file")
        out.append(data[pos:pos + size])
        pos += size
    return out
