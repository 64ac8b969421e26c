"""Issue 8's library side in a real process: VMM-served allocations, OFFLOAD / RELOAD through
the control socket (bit-exact, checksummed, gated), the client's errors, and the preload path:
restoreprof loads a snapshot into GPU memory it makes itself (the fake driver's memory is
memfd-backed, so sharing it between processes works as on a GPU) and the application adopts it."""

import contextlib
import ctypes
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from _snapshots import damaged_copy, v3_copy

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.control import ShimControl
from restoreprof.optimizer.preload import adopt, preload_snapshot
from restoreprof.optimizer.shim.build import build_library
from restoreprof.store.table import read_table

MIB = 1 << 20
SIZES = [MIB, 2 * MIB + 3, 5 * MIB + 7]
# the engine's log line for a damaged piece (damaged_copy flips bytes in the second chunk, one
# MiB: its first and only piece)
DAMAGED_LOG = r"chunk [0-9a-f]{{64}} \(0 of this allocation\) is damaged \({} mismatch at byte 0 " \
              r"of it\): refusing to load it"

APP = textwrap.dedent("""
    import os, sys
    import numpy as np
    from cuda.bindings import driver as cu
    assert cu.cuInit(0)[0] == 0
    ctx = cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1]
    cu.cuCtxSetCurrent(ctx)
    sizes = [int(x) for x in sys.argv[1:]]
    rng = np.random.default_rng(11)
    data = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    ptrs = [cu.cuMemAlloc(n)[1] for n in sizes]
    small = cu.cuMemAlloc(4096)[1]  # below the VMM threshold: stays with cuMemAlloc
    cu.cuCtxSetLimit(cu.CUlimit.CU_LIMIT_STACK_SIZE, 2048)  # not the default: put back exactly
    for p, d in zip(ptrs, data):
        assert cu.cuMemcpyHtoD(p, d.ctypes.data, d.nbytes)[0] == 0
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "check":
            same = True
            for p, d in zip(ptrs, data):
                back = np.zeros_like(d)
                assert cu.cuMemcpyDtoH(back.ctypes.data, p, d.nbytes)[0] == 0
                same = same and bool((back == d).all())
            print("ok" if same else "bad", flush=True)
        elif cmd == "copy":
            assert cu.cuMemcpyHtoD(ptrs[0], data[0].ctypes.data, 16)[0] == 0
            print("copied", flush=True)
        elif cmd == "stack":  # not an intercepted call: it answers while offloaded too
            print(cu.cuCtxGetLimit(cu.CUlimit.CU_LIMIT_STACK_SIZE)[1], flush=True)
        elif cmd == "scratch":  # 2 MiB more, for the writes below
            scratch = cu.cuMemAlloc(2 << 20)[1]
            print("made", flush=True)
        elif cmd in ("memset", "dtod"):  # device writes other than copies from the host
            want = np.full(2 << 20, 0x5A, dtype=np.uint8) if cmd == "memset" else data[2][:2 << 20]
            if cmd == "memset":
                assert cu.cuMemsetD32(scratch, 0x5A5A5A5A, (2 << 20) // 4)[0] == 0
            else:
                assert cu.cuMemcpyDtoD(scratch, ptrs[2], 2 << 20)[0] == 0
            back = np.zeros(2 << 20, dtype=np.uint8)
            assert cu.cuMemcpyDtoH(back.ctypes.data, scratch, back.nbytes)[0] == 0
            print("written" if (back == want).all() else "lost", flush=True)
        elif cmd == "free":
            for p in ptrs:
                assert cu.cuMemFree(p)[0] == 0
            print("freed", flush=True)
""")


@pytest.fixture
def run_dir(monkeypatch):
    # World-traversable, so the wrong-uid test reaches the socket's own 0600 permission.
    directory = Path(tempfile.mkdtemp(prefix="rp-run-", dir="/tmp"))
    directory.chmod(0o755)
    monkeypatch.setenv("RESTOREPROF_RUN_DIR", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class App:
    def __init__(self, run_dir: Path, fake: Path) -> None:
        env = dict(os.environ, LD_PRELOAD=str(build_library()), RESTOREPROF_REAL_LIBCUDA=str(fake),
                   RESTOREPROF_RUN_DIR=str(run_dir), RESTOREPROF_CHUNK_MB="1",
                   RESTOREPROF_THREADS="3", RESTOREPROF_STREAMS="2")
        self.proc = subprocess.Popen([sys.executable, "-c", APP, *map(str, SIZES)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.line(timeout=60) == "ready", self.proc.stderr.read()

    def line(self, timeout: float = 30) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def ask(self, cmd: str, timeout: float = 30) -> str | None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.line(timeout)

    def physical_mappings(self) -> int:
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return sum("fakecuda-phys" in line for line in maps.splitlines())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def log(self) -> str:
        """What the library logged (its stderr), once the application has ended."""
        self.close()
        return self.proc.stderr.read()


@pytest.fixture
def app(run_dir, fake_libcuda):
    application = App(run_dir, fake_libcuda)
    yield application
    application.close()


def test_status_lists_vmm_allocations(app):
    status = ShimControl(app.proc.pid).status()
    assert status["state"] == "running" and status["gate"] == "open"
    assert status["allocations"] == len(SIZES)
    assert status["bytes"] == 2 * MIB + 4 * MIB + 6 * MIB  # rounded to the 2 MiB granularity
    assert app.physical_mappings() == len(SIZES)


def test_offload_reload_round_trip(app, tmp_path):
    ctl = ShimControl(app.proc.pid)
    cfg = OptimizerConfig(streams=2, threads=3, chunk_mb=1)
    snap = tmp_path / "gpu.snap"
    for _ in range(3):
        out = ctl.offload(snap, cfg)
        assert out["bytes"] == sum(SIZES)
        assert read_table(snap).version == 4  # pieces checked by crc32c
        assert ctl.status()["state"] == "offloaded"
        assert app.physical_mappings() == 0  # the memory is released, the addresses kept
        assert app.ask("stack") == "16"  # no kernel runs: the stacks' local memory goes too
        back = ctl.reload(snap, cfg)
        assert app.ask("stack") == "2048"
        assert back["bytes"] == sum(SIZES)
        # the breakdown: re-creating physical memory, and pinning the staging pool (new after
        # OFFLOAD; summed over the workers, which pin while others copy)
        assert 0 < back["map_seconds"] < back["seconds"]
        assert back["pool_seconds"] > 0
        assert ctl.status()["state"] == "running"
        assert app.ask("check") == "ok"


def test_application_waits_while_offloaded(app, tmp_path):
    ctl = ShimControl(app.proc.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap)
    assert app.ask("copy", timeout=0.5) is None  # held at the gate
    ctl.reload(snap)
    assert app.line() == "copied"
    assert app.ask("check") == "ok"


@pytest.mark.parametrize("write", ["memset", "dtod"])
def test_device_writes_wait_while_offloaded(app, tmp_path, write):
    """cuMemsetD32 and cuMemcpyDtoD (found through cuGetProcAddress, as cuda-python and cudart
    find them) wait at the gate like kernels and host copies, then land on the memory put back:
    none runs on memory that is away, and none is lost under the snapshot."""
    assert app.ask("scratch") == "made"
    ctl = ShimControl(app.proc.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap)
    assert app.ask(write, timeout=0.5) is None  # held at the gate
    ctl.reload(snap)
    assert app.line() == "written"
    assert app.ask("check") == "ok"


def test_corrupt_snapshot_is_refused_and_process_stays_held(app, tmp_path):
    ctl = ShimControl(app.proc.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, OptimizerConfig(chunk_mb=1))
    bad = damaged_copy(snap, tmp_path / "bad.snap")  # a byte in the second chunk
    with pytest.raises(RestoreprofError, match=r"a chunk is damaged or missing \(crc32c mismatch"):
        ctl.reload(bad)
    assert ctl.status()["state"] == "offloaded"
    with pytest.raises(RestoreprofError, match="already offloaded"):
        ctl.offload(snap)
    ctl.reload(snap, safe=True)
    assert app.ask("check") == "ok"
    with pytest.raises(RestoreprofError, match="not offloaded"):
        ctl.reload(snap)
    assert re.search(DAMAGED_LOG.format("crc32c"), app.log())


def test_a_version_3_snapshot_is_reloaded_and_checked_by_its_blake3(app, tmp_path):
    """Snapshots written before version 4 (a BLAKE3 per piece) still reload, and a damaged
    piece in one is still caught, by its BLAKE3."""
    ctl = ShimControl(app.proc.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, OptimizerConfig(chunk_mb=1))
    v3 = v3_copy(snap, tmp_path / "v3.snap")
    assert read_table(v3).version == 3
    bad = damaged_copy(v3, tmp_path / "bad.snap")
    assert read_table(bad).version == 3
    with pytest.raises(RestoreprofError, match=r"a chunk is damaged or missing \(BLAKE3 mismatch"):
        ctl.reload(bad, CFG)
    assert ctl.status()["state"] == "offloaded"
    shutil.rmtree(tmp_path / "gpu.snap.chunks")  # the version 4 snapshot's chunks: not used
    ctl.reload(v3, CFG)
    assert app.ask("check") == "ok"
    assert re.search(DAMAGED_LOG.format("BLAKE3"), app.log())


def test_free_releases_vmm_allocations(app):
    assert app.ask("free") == "freed"
    assert ShimControl(app.proc.pid).status()["allocations"] == 0
    assert app.physical_mappings() == 0


def test_socket_is_private(app, run_dir):
    sock = run_dir / f"shim-{app.proc.pid}.sock"
    assert sock.stat().st_mode & 0o777 == 0o600


def test_wrong_uid_is_refused(app):
    # Import first: the interpreter's own files may not be readable by uid 65534.
    code = ("import os\nfrom restoreprof.optimizer.control import ShimControl\n"
            "from restoreprof.errors import RestoreprofError\n"
            "os.setegid(65534); os.seteuid(65534)\n"
            f"ShimControl({app.proc.pid}).status()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode != 0
    assert "not allowed to use PID" in out.stderr and "owner or as root" in out.stderr


def test_absent_process_and_process_without_shim(run_dir):
    with pytest.raises(RestoreprofError, match="no process with PID"):
        ShimControl(2**22 + 12345)
    # A fresh process: this test process may have loaded the library itself (ctypes tests).
    plain = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(RestoreprofError,
                           match="without restoreprof's interception library") as info:
            ShimControl(plain.pid)
    finally:
        plain.kill()
        plain.wait()
    assert "restoreprof exec" in info.value.hint


# ---- preload and ADOPT ----

CFG = OptimizerConfig(streams=2, threads=3, chunk_mb=1)


@pytest.fixture
def ours(fake_libcuda, monkeypatch):
    """This process's side of preloading (the engine loaded with ctypes) on the same fake."""
    monkeypatch.setenv("RESTOREPROF_REAL_LIBCUDA", str(fake_libcuda))


def _our_physical_mappings() -> int:
    return sum("fakecuda-phys" in line for line in Path("/proc/self/maps").read_text().splitlines())


@contextlib.contextmanager
def _preloaded(app, tmp_path):
    """app offloaded to a snapshot, and that snapshot preloaded here: (control, snapshot,
    loaded); our references are dropped on the way out."""
    ctl = ShimControl(app.proc.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, CFG)
    loaded = preload_snapshot(snap, CFG)
    try:
        yield ctl, snap, loaded
    finally:
        loaded.release()


def test_preloaded_memory_is_adopted_bit_exact(app, ours, tmp_path):
    with _preloaded(app, tmp_path) as (ctl, snap, loaded):
        assert read_table(snap).version == 4
        assert app.physical_mappings() == 0
        assert loaded.count == len(SIZES) and loaded.bytes == sum(SIZES)
        assert _our_physical_mappings() == len(SIZES)
        assert ctl.status()["state"] == "offloaded"
        result = adopt(app.proc.pid, loaded)
        assert result["bytes"] == sum(SIZES)
    assert _our_physical_mappings() == 0  # ours dropped; the application's mapping keeps it
    status = ctl.status()
    assert status["state"] == "running" and status["gate"] == "open"
    assert app.ask("stack") == "2048"
    assert app.physical_mappings() == len(SIZES)
    assert app.ask("check") == "ok"
    # adopted memory is the process's own: it offloads and reloads like any other
    again = tmp_path / "again.snap"
    ctl.offload(again, CFG)
    ctl.reload(again, CFG)
    assert app.ask("check") == "ok"


def test_each_preloaded_allocation_holds_the_context_until_released(app, ours, fake_libcuda,
                                                                    tmp_path):
    fake = ctypes.CDLL(str(fake_libcuda))  # the driver the engine loaded here: the same globals
    before = fake.fakecuda_primary_refcount(0)
    with _preloaded(app, tmp_path) as (_, snap, loaded):
        assert fake.fakecuda_primary_refcount(0) == before + loaded.count
    assert fake.fakecuda_primary_refcount(0) == before, "release gives every reference back"
    with pytest.raises(RestoreprofError):
        preload_snapshot(_truncated(snap, tmp_path), CFG)
    assert fake.fakecuda_primary_refcount(0) == before, "a failed preload keeps none"


def test_the_gate_opens_only_when_every_allocation_is_back(app, ours, tmp_path):
    with _preloaded(app, tmp_path) as (ctl, snap, loaded):
        first = loaded.items[0]
        reply = ctl.adopt(first.address, bytes(first.uuid).hex(), first.fd)
        assert reply["remaining"] == len(SIZES) - 1
        assert ctl.status()["gate"] == "closed"
        with pytest.raises(RestoreprofError, match="no offloaded allocation"):
            ctl.adopt(first.address, bytes(first.uuid).hex(), first.fd)  # already back
        # RELOAD completes the rest (and rewrites the adopted one with the same bytes)
        ctl.reload(snap, CFG)
    assert ctl.status()["gate"] == "open"
    assert app.ask("check") == "ok"


def test_adopt_goes_in_batches_and_a_batch_refused_midway_keeps_what_it_adopted(
        app, ours, tmp_path, monkeypatch):
    """ADOPTV: the allocations go in batches of ADOPT_BATCH (two requests for three here), and
    come back bit-exact; a batch is checked against its descriptors, and one refused midway says
    after how many, keeping those before it."""
    from restoreprof.optimizer import control

    with _preloaded(app, tmp_path) as (ctl, _snap, loaded):
        items = list(loaded.allocations())
        uuid = items[0].uuid
        with pytest.raises(RestoreprofError, match="lists 2 allocations and carries 1 desc"):
            ctl.request(f"ADOPTV {uuid} {items[0].address:x}:0 {items[1].address:x}:0",
                        fds=[items[0].fd])
        assert ctl.status()["gate"] == "closed"  # nothing adopted
        entries = [(items[0].address, 0, items[0].fd), (0x1000, 0, items[1].fd)]
        with pytest.raises(RestoreprofError, match="after 1 of 2: no offloaded allocation"):
            ctl.adopt_many(uuid, entries)
        rest = [(i.address, i.handle, i.fd) for i in items[1:]]
        reply = ctl.adopt_many(uuid, rest)
        assert (reply["bytes"], reply["remaining"], reply["adopted"]) == (sum(SIZES[1:]), 0, 2)
    assert ctl.status()["gate"] == "open"
    assert app.ask("check") == "ok"
    # the same through preload.adopt, two to a request
    monkeypatch.setattr(control, "ADOPT_BATCH", 2)
    requests = []
    adopt_many = ShimControl.adopt_many
    monkeypatch.setattr(ShimControl, "adopt_many",
                        lambda self, uuid, entries: requests.append(len(entries)) or
                        adopt_many(self, uuid, entries))
    with _preloaded(app, tmp_path) as (ctl, _snap, loaded):
        assert adopt(app.proc.pid, loaded)["bytes"] == sum(SIZES)
    assert requests == [2, 1]
    assert ctl.status()["gate"] == "open" and app.ask("check") == "ok"


def test_a_library_without_adoptv_is_adopted_one_request_each(app, ours, tmp_path, monkeypatch):
    """A process started under an older library answers ADOPTV with "unknown request": the
    restore adopts one allocation per request instead."""
    def old_library(self, uuid, entries):
        raise RestoreprofError(f"PID {self.pid}: ADOPTV failed: unknown request (OFFLOAD, "
                               "PRECOPY, RELOAD, ADOPT or STATUS)")

    monkeypatch.setattr(ShimControl, "adopt_many", old_library)
    with _preloaded(app, tmp_path) as (ctl, _snap, loaded):
        assert adopt(app.proc.pid, loaded)["bytes"] == sum(SIZES)
    assert ctl.status()["gate"] == "open" and app.ask("check") == "ok"


def test_adopt_refuses_memory_of_another_gpu_and_a_missing_descriptor(app, ours, tmp_path):
    with _preloaded(app, tmp_path) as (ctl, snap, loaded):
        item = loaded.items[0]
        with pytest.raises(RestoreprofError, match="the memory offered is on"):
            ctl.adopt(item.address, "ab" * 16, item.fd)
        with pytest.raises(RestoreprofError, match="needs the memory's descriptor"):
            ctl.request(f"ADOPT {item.address:x} {bytes(item.uuid).hex()}")
        assert ctl.status()["state"] == "offloaded"
    ctl.reload(snap, CFG)
    assert app.ask("check") == "ok"


def test_a_damaged_snapshot_is_refused_and_nothing_is_left_allocated(app, ours, tmp_path,
                                                                    capfd):
    ctl = ShimControl(app.proc.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, CFG)
    bad = damaged_copy(snap, tmp_path / "bad.snap")  # a byte in the second chunk
    before = _our_physical_mappings()
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RestoreprofError, match=r"a chunk is damaged or missing \(crc32c mismatch"):
        preload_snapshot(bad, CFG)
    assert re.search(DAMAGED_LOG.format("crc32c"), capfd.readouterr().err)
    assert _our_physical_mappings() == before
    assert len(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(RestoreprofError, match="not a restoreprof snapshot"):
        preload_snapshot(_truncated(snap, tmp_path), CFG)
    ctl.reload(snap, CFG)
    assert app.ask("check") == "ok"


def test_a_version_3_snapshot_is_preloaded_and_adopted_bit_exact(app, ours, tmp_path, capfd):
    ctl = ShimControl(app.proc.pid)
    snap = tmp_path / "gpu.snap"
    ctl.offload(snap, CFG)
    v3 = v3_copy(snap, tmp_path / "v3.snap")
    bad = damaged_copy(v3, tmp_path / "bad.snap")
    before = _our_physical_mappings()
    with pytest.raises(RestoreprofError, match=r"a chunk is damaged or missing \(BLAKE3 mismatch"):
        preload_snapshot(bad, CFG)
    assert re.search(DAMAGED_LOG.format("BLAKE3"), capfd.readouterr().err)
    assert _our_physical_mappings() == before
    loaded = preload_snapshot(v3, CFG)
    try:
        assert adopt(app.proc.pid, loaded)["bytes"] == sum(SIZES)
    finally:
        loaded.release()
    assert app.ask("check") == "ok"


def _truncated(snap: Path, tmp_path: Path) -> Path:
    cut = tmp_path / "cut.snap"
    cut.write_bytes(snap.read_bytes()[:16])
    return cut
