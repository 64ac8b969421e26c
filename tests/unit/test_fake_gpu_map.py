"""The fake libcuda's several devices and its checkpoint API's GPU map (issue 20): a restore with
gpuPairs moves the target's contexts and memory to their new devices, as the driver does, so that
CI can check where restoreprof's restores put each process's GPU memory."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from restoreprof.cuda import driver
from restoreprof.errors import RestoreprofError

# The target: a context and 1 MiB of distinctive memory on device 1; after each line on stdin it
# prints its context's device, the memory's device (the fake's record and the driver attribute)
# and whether the bytes are intact.
_TARGET = r"""
import ctypes, sys
cu = ctypes.CDLL(sys.argv[1])
assert cu.cuInit(0) == 0
ctx = ctypes.c_void_p()
assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), 1) == 0
assert cu.cuCtxSetCurrent(ctx) == 0
ptr = ctypes.c_uint64()
n = 1 << 20
assert cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(n)) == 0
pattern = bytes(range(251)) * (n // 251) + bytes(n % 251)
ctypes.memmove(ptr.value, pattern, n)
cu.fakecuda_device_of.argtypes = [ctypes.c_uint64]
print("ready", flush=True)
for _ in sys.stdin:
    ordinal = ctypes.c_int(-1)
    assert cu.cuPointerGetAttribute(ctypes.byref(ordinal), 9, ptr) == 0  # DEVICE_ORDINAL
    again = ctypes.c_void_p()
    assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(again), cu.fakecuda_ctx_device()) == 0
    print(cu.fakecuda_ctx_device(), cu.fakecuda_device_of(ptr.value), ordinal.value,
          again.value == ctx.value, ctypes.string_at(ptr.value, n) == pattern, flush=True)
"""


@pytest.fixture
def two_devices(fake_driver, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKECUDA_DEVICES", "2")
    monkeypatch.setenv("FAKECUDA_STATE_DIR", str(tmp_path))
    fake = ctypes.CDLL(str(fake_driver), mode=ctypes.RTLD_GLOBAL)  # restoreprof's driver here
    assert fake.cuInit(0) == 0  # two devices from now on
    driver.init()
    return fake_driver


def _ask(proc: subprocess.Popen) -> list[str]:
    proc.stdin.write("?\n")
    proc.stdin.flush()
    return proc.stdout.readline().split()


def _uuid(dev: int) -> bytes:
    return b"fakecuda" + bytes(7) + bytes([dev])


@pytest.mark.parametrize("pairs,device", [(None, "1"), ([(1, 0), (0, 1)], "0"), ([(1, 1)], "1")],
                         ids=["no map", "swapped", "identity"])
def test_restore_moves_state_to_the_mapped_device(two_devices, pairs, device):
    proc = subprocess.Popen([sys.executable, "-c", _TARGET, str(two_devices)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert _ask(proc) == ["1", "1", "1", "True", "True"]
        driver.process_lock(proc.pid, 1000)
        driver.process_checkpoint(proc.pid)
        driver.process_restore(proc.pid, [(_uuid(a), _uuid(b)) for a, b in pairs or []])
        driver.process_unlock(proc.pid)
        # its context and memory are on the new device; the context it had is the new one's
        assert _ask(proc) == [device, device, device, "True", "True"]
    finally:
        proc.kill()
        proc.wait()


def test_unknown_or_colliding_gpus_are_refused(two_devices):
    proc = subprocess.Popen([sys.executable, "-c", _TARGET, str(two_devices)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n"
        driver.process_lock(proc.pid, 1000)
        driver.process_checkpoint(proc.pid)
        for pairs in ([(_uuid(0), _uuid(5))], [(_uuid(0), _uuid(1))]):
            with pytest.raises(RestoreprofError):
                driver.process_restore(proc.pid, pairs)
        driver.process_restore(proc.pid, [])
        driver.process_unlock(proc.pid)
        assert _ask(proc) == ["1", "1", "1", "True", "True"]
    finally:
        proc.kill()
        proc.wait()
