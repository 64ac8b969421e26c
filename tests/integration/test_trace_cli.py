"""restoreprof trace / report / calibrate from the command line, errors included."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest
from _bpf import fake_libcuda, readers
from export_checks import check_all

pytestmark = pytest.mark.root


def test_trace_command_writes_every_output(tmp_path, restoreprof_cli):
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * (1 << 20))
    out = restoreprof_cli("trace", "-o", str(tmp_path / "out"), "--", str(readers()), str(data))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Tracing reads, CUDA calls and process tree of command: ")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["flame.folded", "flame.svg", "report.json", "speedscope.json",
                     "trace.json", "trace.rptrace"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["io"]["preadv2"]["bytes"] == 11 * 12288
    ET.parse(tmp_path / "out" / "flame.svg")
    assert "bottleneck:" in out.stdout
    check_all(tmp_path / "out")


def test_format_selects_exports(tmp_path, restoreprof_cli):
    out = restoreprof_cli("trace", "-o", str(tmp_path / "o"), "--format", "speedscope",
                          "--", "true")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "report.json", "speedscope.json", "trace.rptrace"]


def test_duration_stops_a_long_command(tmp_path, restoreprof_cli):
    out = restoreprof_cli("trace", "-d", "1", "-o", str(tmp_path / "o"), "--", "sleep", "30",
                          timeout=60)
    assert out.returncode == 0, out.stderr
    assert "for 1 s" in out.stdout.splitlines()[0]


def test_cuda_command_through_fake_driver(tmp_path, restoreprof_cli):
    from _bpf import cuda_calls

    env = {**os.environ, "RESTOREPROF_LIBCUDA": str(fake_libcuda())}
    out = restoreprof_cli("trace", "-o", str(tmp_path / "o"), "--", str(cuda_calls()), env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["cuda"]["htod"]["bytes"] == 808_000
    assert "3 CUDA objects probed" in out.stderr


def test_ebpf_flag_prints_the_program(restoreprof_cli):
    out = restoreprof_cli("trace", "-o", "/nonexistent", "--ebpf")
    assert out.returncode == 0
    assert "BPF_RINGBUF_OUTPUT(events" in out.stdout and "sys_enter_preadv2" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["trace", "-o", "x"], "exactly one of -p PID, --restore DIR, --cgroup PATH, --comm NAME, "
                           "--all or -- CMD"),
    (["trace", "-o", "x", "-p", "999999999"], "no process with PID 999999999"),
    (["trace", "-o", "x", "--restore", "/nonexistent-ckpt"], "is not a folder"),
    (["trace", "-o", "x", "--", "/nonexistent-program"], "cannot run /nonexistent-program"),
    (["report", "/nonexistent.rptrace"], "no trace at"),
])
def test_errors_say_what_to_do(args, message, restoreprof_cli):
    out = restoreprof_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and "->" in out.stderr


def test_report_rejects_a_file_that_is_not_a_trace(tmp_path, restoreprof_cli):
    bad = tmp_path / "bad.rptrace"
    bad.write_text("hello")
    out = restoreprof_cli("report", str(bad))
    assert out.returncode == 2 and "cannot read trace" in out.stderr


def test_calibrate_caches_measured_ceilings(tmp_path, restoreprof_cli):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    (tmp_path / "disk").mkdir()
    out = restoreprof_cli("calibrate", "-D", str(tmp_path / "disk"), "--no-gpu", "--json",
                          "--disk-mib", "64", env=env)
    assert out.returncode == 0, out.stderr
    cached = json.loads((tmp_path / "cache" / "restoreprof" / "ceilings.json").read_text())
    (entry,) = cached.values()
    assert entry["host_memcpy_gbps"] > 0 and entry["disk_read_gbps"] > 0
    assert entry["htod_pinned_gbps"] == 0.0   # not measured: no GPU, never guessed
    shown = restoreprof_cli("calibrate", "--show", env=env)
    assert "calibrated" in shown.stdout and "not measured" in shown.stdout


def test_trace_returns_the_commands_exit_status(tmp_path, restoreprof_cli):
    """A script sees the traced command fail; report.json says how it ended."""
    out = restoreprof_cli("trace", "-o", str(tmp_path / "o"), "--", "sh", "-c", "exit 3")
    assert out.returncode == 3, out.stderr
    assert "exited with status 3" in out.stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["exit_status"] == 3
    ok = restoreprof_cli("trace", "-o", str(tmp_path / "ok"), "--", "true")
    assert ok.returncode == 0
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["exit_status"] == 0
    killed = restoreprof_cli("trace", "-o", str(tmp_path / "k"), "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + 9


def test_output_onto_a_file_is_refused_before_tracing(tmp_path, restoreprof_cli):
    target = tmp_path / "existing"
    target.write_text("keep me")
    out = restoreprof_cli("trace", "-o", str(target), "--", "true")
    assert out.returncode != 0 and "is a file, not a folder" in out.stderr
    assert "Tracing" not in out.stdout and target.read_text() == "keep me"
