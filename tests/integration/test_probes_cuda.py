"""Real eBPF on a fake libcuda: every probed CUDA function, with exact sizes, directions,
pinned/pageable classes, async completion and runtime-over-driver calls counted once.

tests/programs/cuda_calls.c makes the calls; the figures below are what it does.
"""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest
from _bpf import cuda_calls, cuda_calls_static, fake_libcuda

from restoreprof.analysis import analyze
from restoreprof.probes.cuda_functions import FUNCTIONS, SYMBOLS
from restoreprof.probes.session import Target, TraceSession, record
from restoreprof.system import paths

pytestmark = pytest.mark.root

EXPECTED_COPIES = {
    "htod": {"calls": 18, "bytes": 808_000, "pinned_bytes": 606_000, "pageable_bytes": 202_000},
    "dtoh": {"calls": 7, "bytes": 140_000, "pinned_bytes": 90_000, "pageable_bytes": 50_000},
    "dtod": {"calls": 9, "bytes": 130_000, "pinned_bytes": 0, "pageable_bytes": 0},
}
# The runtime calls the program makes, each wrapping one driver call
RUNTIME_CALLS = {"cudaMalloc": 1, "cudaHostAlloc": 1, "cudaMallocHost": 1, "cudaMemcpy": 4,
                 "cudaMemcpyAsync": 1, "cudaStreamSynchronize": 1, "cudaHostRegister": 1,
                 "cudaHostUnregister": 1, "cudaDeviceSynchronize": 1, "cudaFreeHost": 2,
                 "cudaFree": 1}
# Functions in the probe table that cuda_calls.c does not call (no fake exports them)
NOT_CALLED = {"cuMemcpyPeer_ptds", "cuMemcpyPeerAsync_ptsz", "cuMemcpy2D_v2_ptds",
              "cuMemcpy2DAsync_v2_ptsz", "cuMemAllocAsync_ptsz", "cuMemFreeAsync_ptsz",
              "cuCtxCreate_v4", "cudaMemcpy_ptds", "cudaMemcpyAsync_ptsz", "cudaStreamSynchronize_ptsz",
              "cudaEventRecord", "cudaEventRecord_ptsz", "cudaEventSynchronize",
              "cuCheckpointProcessGetRestoreThreadId"}


@pytest.fixture(scope="module", autouse=True)
def fake_driver():
    """restoreprof.system.paths.libcuda_path() resolves to the fake through this variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESTOREPROF_LIBCUDA", str(fake_libcuda()))
        assert paths.libcuda_path() == str(fake_libcuda())
        yield


def _check_copies(report):
    for direction, expected in EXPECTED_COPIES.items():
        got = {k: report["cuda"][direction][k] for k in expected}
        assert got == expected, direction


@pytest.fixture(scope="module")
def traced(fake_driver):
    trace = record(Target(command=[str(cuda_calls())]))
    return trace, analyze(trace)


def test_every_probed_function_fires(traced):
    trace, _report = traced
    seen = Counter(e.name for e in trace.events if e.kind == "cuda")
    assert set(seen) <= SYMBOLS
    missing = {f.symbol for f in FUNCTIONS} - set(seen) - NOT_CALLED
    assert not missing, f"probed functions that never fired: {sorted(missing)}"
    for name, calls in RUNTIME_CALLS.items():
        assert seen[name] == calls, name
    assert all(e.ret == 0 for e in trace.events if e.kind == "cuda")
    assert trace.meta.lost_events == 0


def test_copy_figures_are_exact(traced):
    _trace, report = traced
    _check_copies(report)
    assert report["cuda"]["context_create"]["calls"] == 3
    assert report["cuda"]["init"]["calls"] == 1
    assert report["cuda"]["checkpoint_api"]["calls"] == 5


def test_directions_sizes_and_pointers(traced):
    trace, _ = traced
    copies = [e for e in trace.events if e.kind == "cuda" and e.name.startswith("cuMemcpy")]
    by_call = {(e.name, e.bytes): e for e in copies}

    def kind(name, nbytes):
        return by_call[(name, nbytes)].direction, by_call[(name, nbytes)].host_memory

    assert kind("cuMemcpyHtoD_v2", 100000) == ("htod", "pageable")
    assert kind("cuMemcpyHtoD_v2", 200000) == ("htod", "pinned")      # cuMemHostAlloc
    assert kind("cuMemcpyHtoD_v2", 300000) == ("htod", "pinned")      # registered
    assert kind("cuMemcpyDtoH_v2", 50000) == ("dtoh", "pinned")       # cuMemAllocHost
    assert kind("cuMemcpy", 7000) == ("htod", "pinned")               # generic
    assert kind("cuMemcpy", 8000) == ("dtoh", "pageable")
    assert kind("cuMemcpy", 9000) == ("dtod", "")
    assert kind("cuMemcpy", 16000) == ("htod", "pageable")            # into a cuMemMap range
    assert kind("cuMemcpyHtoD_v2", 18000) == ("htod", "pageable")     # after unregister
    assert kind("cuMemcpy", 23000) == ("htod", "pageable")            # cudaMemcpyDefault
    assert kind("cuMemcpyPeer", 10000) == ("dtod", "")
    two_d = [e for e in copies if e.name.startswith("cuMemcpy2D")]
    assert [(e.bytes, e.direction, e.host_memory) for e in two_d] == [
        (12000, "htod", "pageable"), (12000, "htod", "pinned")]
    allocs = {e.name: e for e in trace.events if e.name.startswith("cuMemAlloc")}
    assert allocs["cuMemAllocPitch_v2"].bytes == 512 * 8
    assert allocs["cuMemAlloc_v2"].address != 0
    ckpt = [e for e in trace.events if e.name.startswith("cuCheckpointProcess")]
    assert {e.extra["target_pid"] for e in ckpt} == {4242}


def test_async_completion_inferred_at_sync(traced):
    trace, _ = traced
    events = sorted(trace.events, key=lambda e: e.start_ns)
    asyncs = [e for e in events if e.kind == "cuda" and e.extra.get("async")
              and not e.extra.get("outer")]
    assert len(asyncs) == 13
    assert all(e.complete_ns >= e.end_ns for e in asyncs), [e.name for e in asyncs
                                                             if not e.complete_ns]
    stream_sync = next(e for e in events if e.name == "cuStreamSynchronize")
    first_three = asyncs[:3]
    assert [e.bytes for e in first_three] == [11000, 12000, 13000]
    assert {e.complete_ns for e in first_three} == {stream_sync.end_ns}
    event_sync = next(e for e in events if e.name == "cuEventSynchronize")
    assert next(e for e in asyncs if e.bytes == 14000).complete_ns == event_sync.end_ns
    ctx_sync = next(e for e in events if e.name == "cuCtxSynchronize")
    assert next(e for e in asyncs if e.bytes == 15000).complete_ns == ctx_sync.end_ns


def test_runtime_wraps_driver_counted_once(traced):
    trace, _ = traced
    runtime = [e for e in trace.events if e.name == "cudaMemcpy"]
    assert len(runtime) == 4 and all(e.extra.get("outer") for e in runtime)
    inner = [e for e in trace.events if e.kind == "cuda" and not e.extra.get("outer")
             and any(r.start_ns <= e.start_ns and e.end_ns <= r.end_ns for r in runtime)]
    assert sorted(e.bytes for e in inner) == [21000, 22000, 23000, 25000]


def test_static_cudart_resolved_in_executable_by_pid():
    """-p PID: symbols resolved in what the process maps, the executable's cudart included."""
    program = cuda_calls_static()
    proc = subprocess.Popen([str(program), "--wait"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # wait until it mapped the fake driver
            with open(f"/proc/{proc.pid}/maps") as f:
                if "libcuda.so.1" in f.read():
                    break
            time.sleep(0.02)
        session = TraceSession(Target(pid=proc.pid))
        session.start()
        assert str(program) in session.probed_objects
        proc.stdin.write(b"g")
        proc.stdin.close()
        while session.running():
            session.poll(50)
        trace = session.stop()
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0
    seen = Counter(e.name for e in trace.events if e.kind == "cuda")
    for name, calls in RUNTIME_CALLS.items():
        assert seen[name] == calls, name
    _check_copies(analyze(trace))
