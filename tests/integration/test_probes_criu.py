"""Real eBPF on real CRIU restores: the page reads match the images, phases come in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from export_checks import check_all

from restoreprof.analysis import analyze
from restoreprof.checkpoint import checkpoint
from restoreprof.probes.session import Target, record
from restoreprof.system.paths import criu_path
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root


def _pages_bytes(images):
    return sum(p.stat().st_size for p in images.glob("pages-*.img"))


@pytest.fixture
def dumped(tmp_path):
    """A process holding 64 MiB, dumped with plain criu (it is gone afterwards)."""
    holder = HeldMemory.start(tmp_path / "state", 64)
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run([criu_path(), "dump", "-t", str(holder.pid), "-D", str(images),
                    "-o", "dump.log"], check=True)
    yield holder, images
    holder.stop()


def test_criu_restore_preadv_bytes_match_pages(dumped):
    holder, images = dumped
    trace = record(Target(command=[criu_path(), "restore", "-D", str(images), "-o",
                                   "restore.log", "--restore-detached"]))
    assert holder.alive() and holder.verify()
    report = analyze(trace)
    pages = _pages_bytes(images)
    assert pages >= 64 << 20
    preadv = report["io"]["preadv"]["bytes"]
    assert abs(preadv - pages) <= pages / 100, (preadv, pages)
    assert holder.pid in report["pids"]         # the restored process, created by CRIU
    cpu = next(p for p in report["phases"] if p["name"] == "cpu memory restore")
    assert abs(cpu["bytes"] - pages) <= pages / 100
    assert report["bottleneck"]["phase"] in ("cpu memory restore", "other")
    assert report["lost_events"] == 0


@pytest.mark.parametrize("lazy", [False, True], ids=["criu reads", "lazy pages"])
def test_trace_cli_restore_dir_marks_and_phase_order(tmp_path, restoreprof_cli, lazy):
    """The restore's page reads inside CRIU's step (CRIU reading every page), or, with
    restoreprof's lazy page server, CRIU's few reads and the server's copies: either way the
    CPU memory restore is every byte of the page images."""
    holder = HeldMemory.start(tmp_path / "state", 64)
    try:
        result = checkpoint(holder.pid, tmp_path / "ckpt")
        out = restoreprof_cli("trace", "--restore", str(result.directory), "-o",
                              str(tmp_path / "out"),
                              env={**os.environ, "RESTOREPROF_LAZY_PAGES": str(int(lazy))})
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0].startswith("Tracing ")
        summary = out.stdout.splitlines()[1:-1]   # between "Tracing ..." and "wrote ..."
        assert summary and all(len(line) <= 80 for line in summary)
        assert holder.alive() and holder.verify()
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        pages = _pages_bytes(result.directory)
        marks = [e for e in _events(tmp_path / "out") if e.kind == "mark"]
        by_name = {m.name: m for m in marks}
        assert by_name["verify images"].end_ns <= by_name["criu restore"].start_ns
        assert by_name["verify page images"].end_ns <= by_name["resume processes"].start_ns
        criu_step = next(m for m in marks if m.name == "criu restore")
        cpu = next(p for p in report["phases"] if p["name"] == "cpu memory restore")
        assert abs(cpu["bytes"] - pages) <= pages / 100
        if not lazy:  # the page reads happen inside CRIU's step
            assert abs(report["io"]["preadv"]["bytes"] - pages) <= pages / 100
            assert criu_step.start_ns <= cpu["start_ns"] <= cpu["end_ns"] <= criu_step.end_ns
        else:  # CRIU reads what is not lazy; the server copies the rest, until it is all in
            served = by_name["host memory, lazy pages (overlapped)"]
            assert served.bytes >= 64 << 20
            assert abs(report["io"]["preadv"]["bytes"] + served.bytes - pages) <= pages / 100
            assert criu_step.start_ns <= cpu["start_ns"] and cpu["end_ns"] == max(
                served.end_ns, by_name["lazy pages (after CRIU)"].end_ns)
            assert served.end_ns <= by_name["resume processes"].start_ns
        starts = [p["start_ns"] for p in report["phases"] if p["name"] != "other"]
        assert starts == sorted(starts)
        for name in ("trace.json", "flame.folded", "flame.svg", "speedscope.json",
                     "trace.rptrace"):
            assert (tmp_path / "out" / name).stat().st_size > 0
        check_all(tmp_path / "out")
        again = restoreprof_cli("report", str(tmp_path / "out"), "-o", str(tmp_path / "re"))
        assert again.returncode == 0, again.stderr
        assert json.loads((tmp_path / "re" / "report.json").read_text())["io"] == report["io"]
    finally:
        holder.stop()


def _events(outdir):
    from restoreprof.trace.model import Trace

    return Trace.load(outdir / "trace.rptrace").events


def test_sys_executable_is_the_restore_driver():
    assert Target(restore_dir=__import__("pathlib").Path("/x")).argv()[:3] == [
        sys.executable, "-m", "restoreprof"]
