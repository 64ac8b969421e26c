"""The library's crc32c (three interleaved hardware streams, combined by table) against the
bit-by-bit definition, at and around the block boundaries where the combining happens."""

import ctypes
import os

import pytest

from restoreprof.optimizer.shim.build import build_library

BLOCK = 8192


def crc32c_reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@pytest.fixture(scope="module")
def crc32c():
    lib = ctypes.CDLL(str(build_library()))
    lib.rp_crc32c.restype = ctypes.c_uint32
    lib.rp_crc32c.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
    return lambda data, seed=0: lib.rp_crc32c(seed, data, len(data))


def test_check_value(crc32c):
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 3 * BLOCK - 1, 3 * BLOCK, 3 * BLOCK + 1,
                                  6 * BLOCK + 77, 100_003])
def test_matches_definition(crc32c, size):
    data = os.urandom(size)
    assert crc32c(data) == crc32c_reference(data)


def test_continues_across_calls(crc32c):
    data = os.urandom(5 * BLOCK + 123)
    split = 3 * BLOCK + 5
    assert crc32c(data[split:], crc32c(data[:split])) == crc32c(data)
