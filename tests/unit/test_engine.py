"""The parallel engine against the fake libcuda: bit-exact at odd sizes, offsets and configs."""

import ctypes
from pathlib import Path

import numpy as np
import pytest

from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.engine import (
    ChecksumMismatch,
    CudaCallError,
    Engine,
    StagingPool,
    crc32c,
)

FAKE_BUILD = Path(__file__).parents[1] / "fakecuda" / "build.py"


@pytest.fixture
def drv(monkeypatch, fake_libcuda):
    monkeypatch.setenv("RESTOREPROF_LIBCUDA", str(fake_libcuda))
    from restoreprof.optimizer import engine

    d = engine.driver()
    d.primary_context(0)
    yield d


def device_alloc(drv, nbytes):
    return drv.out("cuMemAlloc_v2", ctypes.c_uint64, nbytes)


def pattern(nbytes, seed=1):
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


CONFIGS = [
    OptimizerConfig(threads=1, streams=1, chunk_mb=1),
    OptimizerConfig(threads=3, streams=2, chunk_mb=1),
    OptimizerConfig(threads=8, streams=5, chunk_mb=1, pinned=False),
]
SIZES = [1, 4095, (1 << 20) - 1, (1 << 20) + 1, 3 * (1 << 20) + 12345]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["1x1", "3x2", "8x5-pageable"])
def test_memory_round_trip_odd_sizes(drv, cfg):
    with Engine(cfg, drv=drv) as engine:
        for size in SIZES:
            data = pattern(size, size)
            dptr = device_alloc(drv, size + 64)
            engine.to_device(dptr + 7, data)  # odd device offset too
            back = np.zeros(size, np.uint8)
            stats = engine.to_host(back, dptr + 7)
            assert np.array_equal(back, data), size
            chunk = engine.pool.buffer_bytes
            assert stats.checksums == [crc32c(memoryview(data[i:i + chunk].tobytes()))
                                       for i in range(0, size, chunk)]
            drv.call("cuMemFree_v2", dptr)


def test_file_round_trip_with_offset_and_checksums(drv, tmp_path):
    cfg = OptimizerConfig(threads=4, streams=3, chunk_mb=1)
    size = 5 * (1 << 20) + 333
    data = pattern(size, 7)
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 1001 + data.tobytes() + b"tail")
    with Engine(cfg, drv=drv) as engine:
        dptr = device_alloc(drv, size)
        engine.file_to_device(dptr, src, offset=1001, nbytes=size)
        out = tmp_path / "out.bin"
        stats = engine.device_to_file(out, 4096, dptr, size)
        assert out.read_bytes()[4096:] == data.tobytes()
        # the checksums written out verify the file on the way back in
        dptr2 = device_alloc(drv, size)
        engine.file_to_device(dptr2, out, 4096, size, expected_crc32c=stats.checksums)
        back = np.zeros(size, np.uint8)
        engine.to_host(back, dptr2)
        assert np.array_equal(back, data)
        stats.checksums[2] ^= 1
        with pytest.raises(ChecksumMismatch, match="crc32c"):
            engine.file_to_device(dptr2, out, 4096, size, expected_crc32c=stats.checksums)


def test_one_async_copy_per_chunk(drv):
    lib = ctypes.CDLL(drv.path)
    lib.fakecuda_calls.restype = ctypes.c_ulong
    with Engine(OptimizerConfig(threads=2, streams=2, chunk_mb=1), drv=drv) as engine:
        dptr = device_alloc(drv, 4 << 20)
        before = lib.fakecuda_calls(b"cuMemcpyHtoDAsync_v2")
        engine.to_device(dptr, pattern(4 << 20))
        assert lib.fakecuda_calls(b"cuMemcpyHtoDAsync_v2") - before == 4


def test_pool_is_reused_and_sized(drv):
    cfg = OptimizerConfig(threads=2, chunk_mb=4, pool_mb=4)
    pool = StagingPool.for_config(cfg, drv)
    assert len(pool.addresses) == 4 and pool.buffer_bytes == 1 << 20
    with Engine(cfg, pool=pool) as engine:
        dptr = device_alloc(drv, 3 << 20)
        engine.to_device(dptr, pattern(3 << 20))
    assert pool.addresses  # the engine does not free a pool it was lent
    pool.close()


def test_error_names_the_call(drv):
    with Engine(OptimizerConfig(threads=1, chunk_mb=1), drv=drv) as engine, \
            pytest.raises(CudaCallError, match="cuMemcpyHtoDAsync_v2"):
        engine.to_device(0, pattern(100))  # null device pointer
