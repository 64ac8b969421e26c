"""Analysis of synthetic restores: exact counts, phases, critical path, ceilings, bottleneck."""

from __future__ import annotations

import pytest

from restoreprof.analysis import analyze
from restoreprof.analysis import ceilings as ceilings_module
from restoreprof.analysis.ceilings import Ceilings
from restoreprof.exports.report import summary
from restoreprof.trace.events import CUDA, MARK, SYSCALL, Event
from restoreprof.trace.model import Trace, TraceMeta

MS = 1_000_000
PAGES = "/ckpt/pages-1.img"


def restore_trace(*, pinned: bool = False, driver_restore: bool = False) -> Trace:
    """verify (0-100 ms, reads pages too), criu restore (100-600 ms, 500 MB of preadv),
    cuInit+context (150-300 ms, overlapped), GPU restore (600-1000 ms: 4 x 100 MB H2D)."""
    ev = [Event(MARK, "verify images", 1, 1, 0, 100 * MS, path="verify images"),
          Event(MARK, "criu restore", 1, 1, 100 * MS, 600 * MS, path="criu restore"),
          Event(MARK, "GPU restore", 1, 1, 600 * MS, 1000 * MS, path="GPU restore"),
          Event(SYSCALL, "read", 1, 1, 10 * MS, 90 * MS, bytes=500_000_000, fd=3, path=PAGES)]
    for i in range(5):   # CRIU's page reads: 5 x 100 MB, 100 ms each
        ev.append(Event(SYSCALL, "preadv", 2, 2, (100 + 100 * i) * MS, (200 + 100 * i) * MS,
                        bytes=100_000_000, fd=4, path=PAGES))
    ev.append(Event(SYSCALL, "pread64", 2, 2, 120 * MS, 121 * MS, bytes=4096, fd=5,
                    path="/ckpt/core-2.img"))
    ev.append(Event(CUDA, "cuInit", 1, 3, 150 * MS, 250 * MS))
    ev.append(Event(CUDA, "cuDevicePrimaryCtxRetain", 1, 3, 250 * MS, 300 * MS))
    if driver_restore:
        ev.append(Event(CUDA, "cuCheckpointProcessRestore", 1, 1, 600 * MS, 1000 * MS,
                        extra={"target_pid": 2}))
    else:
        for i in range(4):
            start = (600 + 100 * i) * MS
            ev.append(Event(CUDA, "cuMemcpyHtoD_v2", 1, 1, start, start + 100 * MS,
                            bytes=100_000_000, direction="htod",
                            host_memory="pinned" if pinned else "pageable", address=0x7000))
    ev.append(Event(CUDA, "cudaMemcpy", 1, 1, 599 * MS, 1001 * MS, bytes=1,
                    direction="htod", extra={"outer": True}))   # wraps: never counted
    return Trace(TraceMeta(target="restore: /ckpt", pids=[1, 2], lost_events=0), ev)


CALIBRATED = Ceilings(htod_pinned_gbps=50.0, htod_pageable_gbps=9.0, host_memcpy_gbps=10.0,
                      disk_read_gbps=2.0, source="calibrated")


def test_concurrent_calls_count_once_in_busy_time():
    """16 threads each copying 100 MB at once for 100 ms: 1.6 GB in 0.1 s of busy time (16 GB/s),
    not in the 1.6 s the calls add up to; the same for reads."""
    ev = []
    for tid in range(16):
        ev.append(Event(CUDA, "cuMemcpyHtoDAsync_v2", 1, 100 + tid, 0, 10 * MS,
                        bytes=100_000_000, direction="htod", host_memory="pinned",
                        complete_ns=100 * MS))
        ev.append(Event(SYSCALL, "pread64", 1, 100 + tid, 0, 50 * MS, bytes=100_000_000, fd=3,
                        path="/ckpt/gpu-1.snap"))
    ev.append(Event(CUDA, "cuMemcpyHtoD_v2", 1, 1, 200 * MS, 300 * MS, bytes=100_000_000,
                    direction="htod", host_memory="pinned"))  # alone, later: adds its own time
    report = analyze(Trace(TraceMeta(target="t", pids=[1], lost_events=0), ev), CALIBRATED)
    htod = report["cuda"]["htod"]
    assert htod["transfer_ns"] == 16 * 100 * MS + 100 * MS
    assert htod["busy_ns"] == 200 * MS
    assert report["io"]["pread64"]["ns"] == 16 * 50 * MS
    assert report["io"]["pread64"]["busy_ns"] == 50 * MS
    from restoreprof.exports.report import summary

    table = summary(report)
    assert "busy s" in table
    htod_row = next(line for line in table.splitlines() if line.startswith("htod"))
    assert htod_row.split()[4:6] == ["0.200", "8.50"]  # busy s, GB/s: 1.7 GB in 0.2 s


def test_report_has_the_promised_shape():
    report = analyze(restore_trace(), CALIBRATED)
    assert set(report) >= {"pids", "wall_ns", "io", "cuda", "phases", "bottleneck", "lost_events"}
    assert report["pids"] == [1, 2]
    assert report["wall_ns"] == 1001 * MS
    for name in ("preadv", "preadv2", "pread64", "read"):
        assert set(report["io"][name]) == {"calls", "bytes", "ns", "busy_ns"}
    for name in ("htod", "dtoh", "dtod"):
        assert set(report["cuda"][name]) >= {"calls", "bytes", "api_ns", "pageable_bytes",
                                             "pinned_bytes"}
    for name in ("context_create", "checkpoint_api"):
        assert set(report["cuda"][name]) >= {"calls", "ns"}
    for phase in report["phases"]:
        assert {"name", "start_ns", "end_ns", "bytes"} <= set(phase)
        assert isinstance(phase["bytes"], int)
    assert set(report["bottleneck"]) >= {"phase", "achieved_gbps", "ceiling_gbps",
                                         "recommendation"}
    assert isinstance(report["bottleneck"]["achieved_gbps"], float)


def test_counts_are_exact():
    report = analyze(restore_trace(), CALIBRATED)
    # back to back, so the busy time equals the summed time
    assert report["io"]["preadv"] == {"calls": 5, "bytes": 500_000_000, "ns": 500 * MS,
                                      "busy_ns": 500 * MS}
    assert report["io"]["read"]["bytes"] == 500_000_000
    assert report["io"]["pread64"]["calls"] == 1
    htod = report["cuda"]["htod"]
    assert (htod["calls"], htod["bytes"], htod["pageable_bytes"], htod["pinned_bytes"]) == (
        4, 400_000_000, 400_000_000, 0)
    assert report["cuda"]["context_create"] == {"calls": 1, "ns": 50 * MS}


def test_phases_in_order_with_critical_path():
    report = analyze(restore_trace(), CALIBRATED)
    names = [p["name"] for p in report["phases"]]
    assert names == ["cpu memory restore", "gpu context creation", "gpu memory restore", "other"]
    cpu = report["phases"][0]
    # the checksum reads of pages-1.img happen before "criu restore": not the restore
    assert (cpu["start_ns"], cpu["end_ns"], cpu["bytes"]) == (100 * MS, 600 * MS, 500_000_000)
    assert cpu["gbps"] == 1.0
    context = report["phases"][1]
    assert context["exclusive_ns"] == 0   # hidden under CRIU's page reads
    path = {c["phase"]: c["ns"] for c in report["critical_path"]}
    assert path["cpu memory restore"] == 500 * MS
    assert path["gpu memory restore"] == 400 * MS
    assert sum(path.values()) == report["wall_ns"]


def test_bottleneck_cpu_memory_against_disk_ceiling():
    b = analyze(restore_trace(), CALIBRATED)["bottleneck"]
    assert b["phase"] == "cpu memory restore"
    assert (b["achieved_gbps"], b["ceiling_gbps"]) == (1.0, 2.0)
    assert "readahead=on" in b["recommendation"]
    # read-ahead can bring the page reads up to the disk's rate (2 GB/s), not past it
    assert "expected gain: up to 0.25 s of 0.50 s" in b["recommendation"]


def test_bottleneck_pageable_copies_recommend_pinned():
    trace = restore_trace()
    trace.events = [e for e in trace.events if e.name != "preadv"]
    b = analyze(trace, CALIBRATED)["bottleneck"]
    assert b["phase"] == "gpu memory restore" and b["ceiling_gbps"] == 50.0
    assert b["recommendation"].startswith("pinned=on") and "9.0 -> 50.0 GB/s" in b["recommendation"]


def test_bottleneck_pinned_copies_recommend_streams():
    trace = restore_trace(pinned=True)
    trace.events = [e for e in trace.events if e.name != "preadv"]
    b = analyze(trace, CALIBRATED)["bottleneck"]
    assert b["recommendation"].startswith("streams, chunk_mb, threads")
    assert "restoreprof run" in b["recommendation"]
    assert "expected gain: up to 0.39 s of 0.40 s" in b["recommendation"]


def test_bottleneck_driver_restore_recommends_offload():
    trace = restore_trace(driver_restore=True)
    trace.events = [e for e in trace.events if e.name != "preadv"]
    b = analyze(trace, CALIBRATED)["bottleneck"]
    assert b["phase"] == "gpu memory restore" and "offload=on" in b["recommendation"]


def test_gpu_memory_in_page_images_recommends_offload():
    """The plain driver path: CRIU reads the GPU memory back as pages; offload is the fix."""
    trace = restore_trace(driver_restore=True)
    b = analyze(trace, CALIBRATED)["bottleneck"]
    assert b["phase"] == "cpu memory restore"
    assert "offload=on" in b["recommendation"] and "restoreprof exec" in b["recommendation"]


def test_pages_at_disk_rate_say_only_fewer_pages_help():
    trace = restore_trace()
    fast = CALIBRATED.__class__(**{**CALIBRATED.to_dict(), "disk_read_gbps": 0.9})
    b = analyze(trace, fast)["bottleneck"]
    assert b["phase"] == "cpu memory restore" and "only fewer pages help" in b["recommendation"]


def test_context_creation_recommends_the_warm_pool():
    ev = [Event(CUDA, "cuInit", 1, 1, 0, 200 * MS), Event(CUDA, "cuCtxCreate_v2", 1, 1,
                                                          200 * MS, 300 * MS)]
    b = analyze(Trace(TraceMeta(target="x"), ev), CALIBRATED)["bottleneck"]
    assert b["phase"] == "gpu context creation" and "restoreprof warm" in b["recommendation"]


def test_uncalibrated_ceilings_are_labelled_not_invented(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    report = analyze(restore_trace())
    b = report["bottleneck"]
    assert b["ceiling_gbps"] == 0.0 and b["ceiling_source"] == "uncalibrated"
    assert "restoreprof calibrate" in b["recommendation"]
    assert all(p["ceiling_gbps"] == 0.0 for p in report["phases"])


def test_ceiling_cache_per_machine_and_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    gpu = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1"}
    ceilings_module.save(Ceilings(hostname="h", gpu=gpu, htod_pinned_gbps=55.0))
    ceilings_module.save(Ceilings(hostname="h", host_memcpy_gbps=11.0))
    assert ceilings_module.load("h", [gpu]).htod_pinned_gbps == 55.0
    assert ceilings_module.load("h", [gpu]).source == "calibrated"
    assert ceilings_module.load("h", []).host_memcpy_gbps == 11.0
    other = ceilings_module.load("h", [{"name": "A100", "uuid": "GPU-2"}])
    assert other.source == "uncalibrated" and other.htod_pinned_gbps == 0.0


def test_measure_without_gpu_notes_it(tmp_path):
    ceilings = ceilings_module.measure(tmp_path, gpu=False)
    assert ceilings.host_memcpy_gbps > 0 and ceilings.disk_read_gbps > 0
    assert ceilings.htod_pinned_gbps == 0.0
    assert any("not measured" in n for n in ceilings.notes)


@pytest.mark.parametrize("events", [[]])
def test_empty_trace(events):
    report = analyze(Trace(TraceMeta(target="x"), events), CALIBRATED)
    assert report["wall_ns"] == 0 and report["phases"] == []
    assert report["bottleneck"]["phase"] == ""


def test_a_saved_trace_is_judged_by_the_ceilings_it_was_recorded_with(tmp_path, monkeypatch):
    """Calibrating again later (another disk, a new driver) does not change an old verdict."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    trace = restore_trace()
    ceilings_module.save(Ceilings(hostname=trace.meta.hostname, disk_read_gbps=2.0,
                                  host_memcpy_gbps=10.0))
    first = analyze(trace)
    saved = trace.save(tmp_path / "t.rptrace")
    ceilings_module.save(Ceilings(hostname=trace.meta.hostname, disk_read_gbps=20.0,
                                  host_memcpy_gbps=30.0))
    again = analyze(Trace.load(saved))
    assert again["ceilings"]["disk_read_gbps"] == 2.0
    assert again["bottleneck"] == first["bottleneck"]
    # a trace recorded before any calibration takes the calibration made since
    fresh = restore_trace()
    fresh.meta.ceilings = Ceilings(hostname=fresh.meta.hostname).to_dict()
    assert analyze(fresh)["ceilings"]["disk_read_gbps"] == 20.0


def test_bottleneck_names_the_kind_left_to_the_driver():
    """The checkpoint's coverage record reaches the advice: memory of a kind the library does
    not serve, and a process not started under restoreprof exec, are named; a context alone is
    not."""
    trace = restore_trace(driver_restore=True)
    trace.events = [e for e in trace.events if e.name != "preadv"]
    trace.meta.coverage = [
        {"pid": 2, "comm": "python3", "shim": True, "left_to_driver_bytes": 3_000_000_000,
         "offloaded": {"cuMemAlloc": {"count": 4, "bytes": 8 << 30}}, "offloaded_bytes": 8 << 30},
        {"pid": 3, "comm": "python3", "shim": True, "left_to_driver_bytes": 400_000_000,
         "offloaded": {"vmm": {"count": 1, "bytes": 1 << 30}}, "offloaded_bytes": 1 << 30},
        {"pid": 4, "comm": "jax", "shim": False, "left_to_driver_bytes": None,
         "offloaded": {}, "offloaded_bytes": 0}]
    report = analyze(trace, CALIBRATED)
    b = report["bottleneck"]
    assert b["phase"] == "gpu memory restore"
    assert b["uncovered"]["pids"] == [2, 4] and b["uncovered"]["bytes"] is None
    assert "managed, host-registered" in b["recommendation"]
    assert "not started with 'restoreprof exec'" in b["recommendation"]
    assert report["coverage"] == trace.meta.coverage
    from restoreprof.exports.report import summary

    text = summary(report)
    assert "pid 2" in text and "cuMemAlloc 4" in text and "3.000" in text
    assert "none (no restoreprof exec)" in text and "unknown" in text


def test_no_coverage_record_changes_nothing():
    trace = restore_trace(driver_restore=True)
    trace.events = [e for e in trace.events if e.name != "preadv"]
    b = analyze(trace, CALIBRATED)["bottleneck"]
    assert b["uncovered"] is None and b["recommendation"].startswith("offload=on")


def test_the_lazy_page_servers_steps_are_the_cpu_memory_restore():
    """With lazy pages CRIU reads almost no pages: the server's copies (UFFDIO_COPY, no reads)
    are the CPU memory restore, and its wait after CRIU is on the critical path."""
    from restoreprof.analysis.phases import CPU_MEMORY, phases

    ev = [Event(MARK, "criu restore", 1, 1, 0, 200 * MS, path="criu restore"),
          Event(MARK, "host memory, lazy pages (overlapped)", 1, 1, 50 * MS, 320 * MS,
                bytes=1 << 30),
          Event(MARK, "lazy pages (after CRIU)", 1, 1, 200 * MS, 320 * MS),
          Event(MARK, "GPU restore", 1, 1, 320 * MS, 600 * MS, path="GPU restore")]
    result, critical, _ = phases(ev)
    cpu = next(p for p in result if p["name"] == CPU_MEMORY)
    assert (cpu["start_ns"], cpu["end_ns"]) == (50 * MS, 320 * MS)
    assert dict((c["phase"], c["ns"]) for c in critical)[CPU_MEMORY] == 270 * MS
    assert cpu["bytes"] == 1 << 30  # what the server copied, which no read shows


def test_other_is_given_out_by_the_restore_steps():
    """A warm restore's trace: what no phase covers goes to the step on the restore's path that
    covers it (CRIU's own work, not the overlapped preload), and what no step covers to the
    command's start and its answer: the critical path accounts for every instant."""
    from restoreprof.analysis.phases import AFTER_STEPS, BEFORE_STEPS, BETWEEN_STEPS

    def mark(name, start, end):
        return Event(MARK, name, 1, 1, start * MS, end * MS, path=name)

    ev = [Event(SYSCALL, "openat", 1, 1, 0, 1 * MS, path="/usr/lib/python3"),  # start-up
          mark("verify images", 60, 70), mark("start lazy page server", 70, 80),
          mark("GPU memory preload (warm pool, overlapped)", 75, 400),
          mark("criu restore", 90, 300), mark("lazy pages (after CRIU)", 300, 380),
          mark("resume processes", 380, 382), mark("GPU driver restore", 385, 600),
          Event(CUDA, "cuCheckpointProcessRestore", 1, 1, 385 * MS, 600 * MS,
                extra={"target_pid": 2}),
          mark("GPU memory adopt", 600, 640),
          Event(SYSCALL, "write", 1, 1, 700 * MS, 701 * MS, bytes=10, fd=1, path="")]
    report = analyze(Trace(TraceMeta(target="restore: /ckpt", pids=[1, 2], lost_events=0), ev),
                     CALIBRATED)
    path = {c["phase"]: c for c in report["critical_path"]}
    assert sum(c["ns"] for c in path.values()) == report["wall_ns"] == 701 * MS
    assert path["cpu memory restore"]["ns"] == 80 * MS  # the page server's tail after CRIU
    assert path["gpu memory restore"]["ns"] == 215 * MS  # the driver's restore
    parts = {p["step"]: p["ns"] for p in path["other"]["parts"]}
    assert sum(parts.values()) == path["other"]["ns"]
    assert parts == {
        "criu restore": 210 * MS,  # not the overlapped preload that also covers it
        AFTER_STEPS: 61 * MS,
        BEFORE_STEPS: 60 * MS,
        "GPU memory adopt": 40 * MS,
        # 80-90 ms (before CRIU began) and 382-385 ms (after the resume): only the preload ran
        "GPU memory preload (warm pool, overlapped)": 13 * MS,
        "verify images": 10 * MS,
        "start lazy page server": 10 * MS,  # 75-80 ms too: on the path, before the preload
        "resume processes": 2 * MS,
    }
    assert BETWEEN_STEPS not in parts
    assert next(iter(parts)) == "criu restore"  # largest first
    text = summary(report)
    assert "critical path" in text and "  criu restore" in text
    # the restore's own path: CRIU and the driver's restore are on it, the preload is not
    steps = {p["step"]: p["ns"] for p in report["restore_path"]}
    assert sum(steps.values()) == report["wall_ns"]
    assert steps["criu restore"] == 210 * MS and steps["GPU driver restore"] == 215 * MS
    assert steps["lazy pages (after CRIU)"] == 80 * MS
    assert steps["GPU memory preload (warm pool, overlapped)"] == 13 * MS
    assert steps[BEFORE_STEPS] == 60 * MS and steps[AFTER_STEPS] == 61 * MS
    assert "restore path (its steps)" in text


def test_a_trace_without_restore_steps_has_no_restore_path():
    trace = restore_trace()
    trace.events = [e for e in trace.events if e.kind != MARK]
    assert analyze(trace, CALIBRATED)["restore_path"] is None
