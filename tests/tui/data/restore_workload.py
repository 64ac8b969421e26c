"""The workload behind preadv_restore.rptrace: a restore in miniature.

It reads a page image with preadv (as CRIU does), creates a CUDA context and copies the pages
to the device in chunks with cuMemcpyHtoD_v2 and cuMemcpyHtoDAsync_v2 (as a GPU restore does),
through whatever libcuda it is given (tests use tests/fakecuda's, which keeps "device" memory
on the host).
"""

import ctypes
import os
import sys
import time

CHUNK = 4 << 20


def main(image: str, libcuda: str) -> None:
    size = os.path.getsize(image)
    pages = bytearray(size)
    view = memoryview(pages)
    fd = os.open(image, os.O_RDONLY)
    for offset in range(0, size, CHUNK):
        os.preadv(fd, [view[offset:offset + CHUNK]], offset)
    os.close(fd)

    cuda = ctypes.CDLL(libcuda)
    time.sleep(0.7)  # let the tracer find the newly mapped libcuda and attach its probes
    check = _checker(cuda)
    check("cuInit", 0)
    device, context, dptr, stream = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64(), \
        ctypes.c_void_p()
    check("cuDeviceGet", ctypes.byref(device), 0)
    check("cuDevicePrimaryCtxRetain", ctypes.byref(context), device)
    check("cuCtxSetCurrent", context)
    check("cuMemAlloc_v2", ctypes.byref(dptr), ctypes.c_size_t(size))
    check("cuStreamCreate", ctypes.byref(stream), 0)
    source = (ctypes.c_char * size).from_buffer(pages)
    half = size // 2
    for offset in range(0, half, CHUNK):
        check("cuMemcpyHtoD_v2", ctypes.c_uint64(dptr.value + offset),
              ctypes.byref(source, offset), ctypes.c_size_t(min(CHUNK, half - offset)))
    for offset in range(half, size, CHUNK):
        check("cuMemcpyHtoDAsync_v2", ctypes.c_uint64(dptr.value + offset),
              ctypes.byref(source, offset), ctypes.c_size_t(min(CHUNK, size - offset)), stream)
    check("cuStreamSynchronize", stream)


def _checker(cuda):
    def check(name, *args):
        result = getattr(cuda, name)(*args)
        if result != 0:
            raise SystemExit(f"{name} failed: CUresult {result}")
    return check


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
