"""A small traced workload: reads a file with preadv (through libc) and preadv2 (os.preadv).

CRIU restores pages with preadv; Python's os.preadv issues preadv2. The live test checks that
the view shows both.
"""

import ctypes
import os
import sys

CHUNK = 1 << 20


def main(path: str, rounds: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(CHUNK)

    class IoVec(ctypes.Structure):
        _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]

    iov = IoVec(ctypes.cast(buffer, ctypes.c_void_p), CHUNK)
    libc.preadv.argtypes = [ctypes.c_int, ctypes.POINTER(IoVec), ctypes.c_int, ctypes.c_long]
    libc.preadv.restype = ctypes.c_ssize_t
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(rounds):
            for offset in range(0, size, CHUNK):
                if libc.preadv(fd, ctypes.byref(iov), 1, offset) < 0:
                    raise OSError(ctypes.get_errno(), "preadv")
                os.preadv(fd, [bytearray(CHUNK)], offset)
    finally:
        os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
