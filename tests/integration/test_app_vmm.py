"""Issue 13's library side in a real process on the fake driver: the application's own VMM memory
(cuMemCreate, cuMemMap, ...) and stream-ordered allocations (cuMemAllocAsync, a pool) offloaded,
released and put back at the same addresses, by RELOAD and by preload + ADOPT; the handles the
program holds still work afterwards; shared memory is refused; every way a program finds the
driver reaches the library; stream-ordered frees are reused only in stream order; snapshots of
versions 1 and 2 (the bytes inside the file) are still read. The CRIU round trips are
test_app_memory_criu.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _snapshots import damaged_copy, in_file_copy

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.preload import adopt, preload_snapshot
from restoreprof.optimizer.shim.build import build_library
from restoreprof.store.table import read_table
from restoreprof.workloads.controller import HeldMemory

MIB = 1 << 20
U = 2 * MIB  # the workload's unit: the fake's granularity
VMM_BYTES = 7 * U  # H1 2U + H2 1U + H3 3U + H4 1U
ASYNC_BYTES = (U + U // 2 + 123) + (2 * U + 7)  # A1 and A3; A2 is the driver's, A4 was freed
CFG = OptimizerConfig(streams=2, threads=3, chunk_mb=1)
VHANDLE_BASE = 0x7270000000000000


def _env(fake: Path, run_dir: Path) -> dict[str, str]:
    return {"LD_PRELOAD": str(build_library()), "RESTOREPROF_REAL_LIBCUDA": str(fake),
            "LD_LIBRARY_PATH": str(fake.parent), "RESTOREPROF_RUN_DIR": str(run_dir),
            "RESTOREPROF_CHUNK_MB": "1"}


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    directory.mkdir()
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(directory))
    return directory


def _start(fake: Path, run_dir: Path, state: Path, *args: str) -> HeldMemory:
    cmd = [sys.executable, "-m", "restoreprof.workloads.app_memory", "--state", str(state), *args]
    return HeldMemory.start_command(cmd, state, env=_env(fake, run_dir), timeout_s=60)


@pytest.fixture
def workload(fake_libcuda, run_dir, tmp_path):
    w = _start(fake_libcuda, run_dir, tmp_path / "state")
    yield w
    w.stop()


def physical_memory(pid: int) -> int:
    """The fake driver's physical allocations open in pid (each holds its memfd)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in os.listdir(fd_dir):
        try:  # a descriptor the process closes meanwhile (its other threads run on) is not one
            count += "memfd:fakecuda-phys" in os.readlink(fd_dir / fd)
        except FileNotFoundError:
            continue
    return count


def teardown(w: HeldMemory, timeout_s: float = 30) -> str:
    done = w.state_dir / "teardown"
    done.unlink(missing_ok=True)
    os.kill(w.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return done.read_text().strip()


def test_status_counts_the_applications_handles(workload):
    status = ShimControl(workload.pid).status()
    assert status["app_handles"] == 4 and status["app_bytes"] == VMM_BYTES
    assert status["allocations"] == 2  # A1 and A3 from VMM; A4's block is cached, not live


def test_offload_releases_everything_and_reload_restores_it(workload, tmp_path):
    ctl = ShimControl(workload.pid)
    assert physical_memory(workload.pid) > 0
    for _ in range(2):
        snap = tmp_path / "gpu.snap"
        out = ctl.offload(snap, CFG)
        # each physical allocation once (H1 is mapped twice), the unmapped H4 too; the
        # stream-ordered cache (A4) is not saved
        assert out["bytes"] == VMM_BYTES + ASYNC_BYTES
        assert physical_memory(workload.pid) == 0, "offloaded memory must be released"
        ctl.reload(snap, CFG)
        assert workload.verify(), (workload.state_dir / "verified").read_text()
    assert teardown(workload) == "OK"
    assert ctl.status()["app_handles"] == 0 and ctl.status()["allocations"] == 0


def test_preloaded_memory_is_adopted_under_the_applications_handles(workload, fake_libcuda,
                                                                    monkeypatch, tmp_path):
    monkeypatch.setenv("RESTOREPROF_REAL_LIBCUDA", str(fake_libcuda))
    ctl = ShimControl(workload.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, CFG)
    loaded = preload_snapshot(snap, CFG)
    try:
        handles = sorted(a.handle for a in loaded.allocations() if a.handle)
        assert handles == [VHANDLE_BASE + i for i in (1, 2, 3, 4)]
        result = adopt(workload.pid, loaded)
        assert result["bytes"] == VMM_BYTES + ASYNC_BYTES
    finally:
        loaded.release()
    assert ctl.status()["gate"] == "open"
    assert workload.verify(), (workload.state_dir / "verified").read_text()
    # adopted memory offloads and reloads like any other, and is freed like the original
    again = tmp_path / "again.snap"
    ctl.offload(again, CFG)
    ctl.reload(again, CFG)
    assert workload.verify()
    assert teardown(workload) == "OK"


def test_the_gate_opens_only_when_every_handle_is_back(workload, fake_libcuda, monkeypatch,
                                                      tmp_path):
    """Adopting part of the memory leaves the process held; RELOAD completes the rest (and
    loads the bytes of what was adopted again)."""
    monkeypatch.setenv("RESTOREPROF_REAL_LIBCUDA", str(fake_libcuda))
    ctl = ShimControl(workload.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, CFG)
    loaded = preload_snapshot(snap, CFG)
    try:
        physical = [a for a in loaded.allocations() if a.handle]
        reply = ctl.adopt(physical[0].address, physical[0].uuid, physical[0].fd,
                          physical[0].handle)
        assert reply["remaining"] == len(loaded.allocations()) - 1
        assert ctl.status()["gate"] == "closed"
        with pytest.raises(RestoreprofError, match="no offloaded GPU memory handle"):
            ctl.adopt(physical[0].address, physical[0].uuid, physical[0].fd, physical[0].handle)
        with pytest.raises(RestoreprofError, match="the memory offered is on"):
            ctl.adopt(physical[1].address, "ab" * 16, physical[1].fd, physical[1].handle)
    finally:
        loaded.release()
    ctl.reload(snap, CFG)
    assert ctl.status()["gate"] == "open"
    assert workload.verify(), (workload.state_dir / "verified").read_text()
    assert teardown(workload) == "OK"


def _records(snap: Path) -> list[dict]:
    """The records of a snapshot (version 3: restoreprof.store.table reads it)."""
    return [{"address": r.address, "size": r.size, "kind": r.kind, "handle": r.handle,
             "mappings": list(r.mappings), "chunks": len(r.hashes)}
            for r in read_table(snap).records]


def test_the_snapshot_records_handles_and_mappings(workload, tmp_path):
    snap = tmp_path / "gpu.snap"
    ctl = ShimControl(workload.pid)
    ctl.offload(snap, CFG)
    try:
        physical = {r["handle"] - VHANDLE_BASE: r for r in _records(snap) if r["kind"] == 1}
        assert sorted(physical) == [1, 2, 3, 4]
        h1, h3, h4 = physical[1], physical[3], physical[4]
        assert len(h1["mappings"]) == 2 and {m[1:] for m in h1["mappings"]} == {(2 * U, 0)}
        assert [m[1:] for m in h3["mappings"]] == [(2 * U, U)]  # two units at offset one
        assert h4["mappings"] == [] and h4["size"] == U  # unmapped, saved all the same
    finally:
        ctl.reload(snap, CFG)


def test_a_damaged_physical_record_keeps_the_process_held(workload, tmp_path):
    ctl = ShimControl(workload.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, CFG)
    records = _records(snap)
    h3 = next(i for i, r in enumerate(records) if r["handle"] == VHANDLE_BASE + 3)
    chunk_bytes = read_table(snap).chunk_bytes
    # the chunk holding byte U + 11 of handle 3, in the table's order of chunks
    index = sum(r["chunks"] for r in records[:h3]) + (U + 11) // chunk_bytes
    (tmp_path / "bad").mkdir()
    bad = damaged_copy(snap, tmp_path / "bad" / "gpu.snap", index)
    with pytest.raises(RestoreprofError, match="damaged"):
        ctl.reload(bad, CFG)
    assert ctl.status()["state"] == "offloaded" and ctl.status()["gate"] == "closed"
    allocations = sum(r["kind"] == 0 for r in records)
    assert physical_memory(workload.pid) == allocations, \
        "allocations stay mapped for the retry; handles go back to offloaded"
    ctl.reload(snap, CFG)
    assert workload.verify(), (workload.state_dir / "verified").read_text()


def test_a_version_2_snapshot_with_handles_is_still_reloaded(workload, tmp_path):
    """Version 2 (record kinds and mappings, the bytes inside the file) is still read."""
    ctl = ShimControl(workload.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, CFG)
    v2 = in_file_copy(snap, tmp_path / "v2.snap", 2)
    assert v2.read_bytes()[8] == 2 and v2.stat().st_size > sum(r["size"] for r in _records(snap))
    raw = bytearray(v2.read_bytes())  # a damaged byte in the file is refused, the process held
    raw[-5] ^= 0xFF
    (tmp_path / "v2-bad.snap").write_bytes(raw)
    with pytest.raises(RestoreprofError, match="checksum mismatch"):
        ctl.reload(tmp_path / "v2-bad.snap", CFG)
    assert ctl.status()["state"] == "offloaded" and ctl.status()["gate"] == "closed"
    ctl.reload(v2, CFG)
    assert ctl.status()["gate"] == "open"
    assert workload.verify(), (workload.state_dir / "verified").read_text()


def test_an_exported_handle_refuses_the_offload_untouched(fake_libcuda, run_dir, tmp_path):
    w = _start(fake_libcuda, run_dir, tmp_path / "state", "--export")
    try:
        ctl = ShimControl(w.pid)
        before = physical_memory(w.pid)
        snap = tmp_path / "gpu.snap"
        with pytest.raises(RestoreprofError, match="exported as a POSIX file descriptor") as err:
            ctl.offload(snap, CFG)
        assert "keeps running" in err.value.hint
        assert not snap.exists(), "a refused offload writes nothing"
        status = ctl.status()
        assert status["state"] == "running" and status["gate"] == "open"
        assert physical_memory(w.pid) == before
        assert w.verify()
        assert teardown(w) == "OK"
    finally:
        w.stop()


def test_a_version_1_snapshot_is_still_reloaded(fake_libcuda, run_dir, tmp_path):
    """Version 1 held allocations only: a process with cuMemAlloc memory reloads one."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from cuda.bindings import driver as cu
        cu.cuInit(0)
        cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
        data = np.arange(3 << 20, dtype=np.uint8) * 7
        ptr = cu.cuMemAlloc(data.nbytes)[1]
        cu.cuMemcpyHtoD(ptr, data.ctypes.data, data.nbytes)
        print("ready", flush=True)
        sys.stdin.readline()
        back = np.zeros_like(data)
        cu.cuMemcpyDtoH(back.ctypes.data, ptr, data.nbytes)
        print("ok" if (back == data).all() else "bad", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **_env(fake_libcuda, run_dir)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        ctl = ShimControl(proc.pid)
        snap = tmp_path / "gpu.snap"
        ctl.offload(snap, CFG)
        v1 = in_file_copy(snap, tmp_path / "v1.snap", 1)
        assert v1.read_bytes()[8] == 1
        ctl.reload(v1, CFG)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
    finally:
        proc.kill()
        proc.wait()


PROBE = textwrap.dedent("""
    import ctypes, sys
    from cuda.bindings import driver as cu
    fake = sys.argv[1]
    cu.cuInit(0)
    cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
    prop = cu.CUmemAllocationProp()
    prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    out = []
    # cuGetProcAddress (cuda-python's path, cudart's)
    out.append(int(cu.cuMemCreate(2 << 20, prop, 0)[1]))
    # by symbol (global lookup: LD_PRELOAD first) and through dlsym on the driver's handle
    raw = (ctypes.c_ubyte * 64)()  # CUmemAllocationProp: type PINNED, location DEVICE 0
    raw[0] = 1
    raw[8] = 1
    for lib in (ctypes.CDLL(None), ctypes.CDLL(fake)):
        handle = ctypes.c_ulonglong()
        assert lib.cuMemCreate(ctypes.byref(handle), ctypes.c_size_t(2 << 20), raw,
                               ctypes.c_ulonglong(0)) == 0
        out.append(handle.value)
    # the per-thread variants through cuGetProcAddress
    ours = ctypes.CDLL(None)
    for name, symbol in [("cuMemAllocAsync", "cuMemAllocAsync_ptsz"),
                         ("cuMemFreeAsync", "cuMemFreeAsync_ptsz"), ("cuMemMap", "cuMemMap")]:
        fn = ctypes.c_void_p()
        status = ctypes.c_int()
        assert ours.cuGetProcAddress_v2(name.encode(), ctypes.byref(fn), 13000, ctypes.c_ulonglong(2),
                      ctypes.byref(status)) == 0
        out.append(int(fn.value == ctypes.cast(getattr(ours, symbol), ctypes.c_void_p).value))
    print(" ".join(str(x) for x in out))
""")


def test_every_path_to_the_driver_reaches_the_library(fake_libcuda, run_dir):
    out = subprocess.run([sys.executable, "-c", PROBE, str(fake_libcuda)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **_env(fake_libcuda, run_dir)})
    assert out.returncode == 0, out.stderr
    values = [int(x) for x in out.stdout.split()]
    handles, procs = values[:3], values[3:]
    assert all(h > VHANDLE_BASE for h in handles), [hex(h) for h in handles]
    assert len(set(handles)) == 3
    assert procs == [1, 1, 1], "cuGetProcAddress with the per-thread flag must give our variants"


ORDER = textwrap.dedent("""
    import ctypes, sys
    from cuda.bindings import driver as cu
    hold = ctypes.CDLL(sys.argv[1]).fakecuda_hold_stream
    hold.argtypes = [ctypes.c_void_p, ctypes.c_int]
    cu.cuInit(0)
    cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
    s1 = cu.cuStreamCreate(0)[1]
    s2 = cu.cuStreamCreate(0)[1]
    size = 3 << 20
    a = int(cu.cuMemAllocAsync(size, s1)[1])
    hold(int(s1), 1)                        # the GPU is still busy on s1
    assert cu.cuMemFreeAsync(a, s1)[0] == 0
    b = int(cu.cuMemAllocAsync(size, s2)[1])  # another stream: must not get a yet
    c = int(cu.cuMemAllocAsync(size, s1)[1])  # the freeing stream: may, in stream order
    hold(int(s1), 0)
    assert cu.cuMemFreeAsync(b, s2)[0] == 0
    d = int(cu.cuMemAllocAsync(size, s2)[1])  # b's free is done: cached
    print(int(b != a), int(c == a), int(d == b))
""")


def test_stream_ordered_frees_are_reused_only_in_stream_order(fake_libcuda, run_dir):
    out = subprocess.run([sys.executable, "-c", ORDER, str(fake_libcuda)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **_env(fake_libcuda, run_dir)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1"]


PEERS = textwrap.dedent("""
    import sys
    from cuda.bindings import driver as cu
    cu.cuInit(0)
    cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
    pool = cu.cuDeviceGetDefaultMemPool(0)[1]
    desc = cu.CUmemAccessDesc()
    desc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    desc.location.id = 1
    desc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    assert cu.cuMemPoolSetAccess(pool, [desc], 1)[0] == 0  # before any allocation (PyTorch)
    ptr = int(cu.cuMemAllocAsync(3 << 20, 0)[1])
    print(ptr, flush=True)
    for line in sys.stdin:
        print(int(cu.cuMemGetAccess(desc.location, ptr)[1]), flush=True)
""")


def test_peer_access_to_a_pool_reaches_its_blocks_and_survives_a_reload(fake_libcuda, run_dir,
                                                                        tmp_path):
    env = {**os.environ, **_env(fake_libcuda, run_dir), "FAKECUDA_DEVICES": "2"}
    proc = subprocess.Popen([sys.executable, "-c", PEERS], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert int(proc.stdout.readline()) > 0
        ctl = ShimControl(proc.pid)
        assert ctl.status()["allocations"] == 1, "served from the library's VMM"
        read_write = "3"  # CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == read_write
        snap = tmp_path / "gpu.snap"
        ctl.offload(snap, CFG)
        ctl.reload(snap, CFG)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == read_write
    finally:
        proc.kill()
        proc.wait()
