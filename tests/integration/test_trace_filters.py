"""Real eBPF: tracing processes the profiler did not start, filtered in the kernel by cgroup,
by command name, or not at all (`restoreprof trace --cgroup | --comm | --all`). Each test runs a
reader that matches and one that does not, started after the probes are attached."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from _bpf import readers

from restoreprof.errors import RestoreprofError
from restoreprof.probes import filters
from restoreprof.probes.session import Target, TraceSession

pytestmark = pytest.mark.root

EXPECTED = {"read": (3, 3 * 4096), "pread64": (5, 5 * 8192), "preadv": (7, 7 * 8192),
            "preadv2": (11, 11 * 12288)}  # what tests/programs/readers.c does to its file


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("filters") / "data.bin"
    path.write_bytes(bytes(range(256)) * 8192)
    return path


@pytest.fixture
def programs(tmp_path):
    """The reader under two names, and a shell under a name of its own (comm = file name)."""
    other = tmp_path / "otherreader"
    shutil.copy(readers(), other)
    gate_shell = tmp_path / "rpgate-sh"
    shutil.copy(shutil.which("sh") or "/bin/sh", gate_shell)
    return readers(), other, gate_shell


def reads_by_pid(trace, path: Path) -> dict[int, dict[str, tuple[int, int]]]:
    found: dict[int, dict[str, list[int]]] = {}
    for e in trace.events:
        if e.kind == "syscall" and e.path == str(path) and e.name in EXPECTED:
            counts = found.setdefault(e.pid, {name: [0, 0] for name in EXPECTED})
            counts[e.name][0] += 1
            counts[e.name][1] += e.bytes
    return {pid: {n: tuple(v) for n, v in c.items()} for pid, c in found.items()}


def trace_while(target_filter, start_processes) -> tuple[object, list[subprocess.Popen]]:
    """Attach, start the processes, trace until they end; (trace, processes)."""
    session = TraceSession(Target(filter=target_filter))
    session.start()
    procs = start_processes()
    try:
        deadline = time.monotonic() + 60
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            session.poll(50)
        session.poll(50)
    finally:
        trace = session.stop()
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
    return trace, procs


def test_comm_filter_follows_children_and_skips_others(data_file, programs):
    reader, other, gate_shell = programs

    def start():
        # the shell matches; its child (comm "readers") is followed; otherreader is not traced
        shell = subprocess.Popen([str(gate_shell), "-c", f"{reader} {data_file} > /dev/null; :"])
        stranger = subprocess.Popen([str(other), str(data_file)], stdout=subprocess.DEVNULL)
        return [shell, stranger]

    trace, (shell, stranger) = trace_while(filters.comm_filter("rpgate-sh"), start)
    by_pid = reads_by_pid(trace, data_file)
    assert stranger.pid not in by_pid, "a process of another name was traced"
    followed = [pid for pid in by_pid if pid != shell.pid]
    assert len(followed) == 1 and by_pid[followed[0]] == EXPECTED, by_pid
    assert trace.meta.target == "processes named rpgate-sh"


def test_cgroup_filter_takes_the_cgroup_and_those_below(data_file, programs, tmp_path):
    reader, other, gate_shell = programs
    outer = filters.cgroup2_mount() / f"restoreprof-test-{os.getpid()}"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    gate = tmp_path / "gate"
    try:
        target = filters.cgroup_filter(outer)
        assert target.level >= 1 and target.cgroup_id == outer.stat().st_ino

        def start():
            shell = subprocess.Popen([str(gate_shell), "-c", f"while [ ! -e {gate} ]; do sleep "
                                      f"0.02; done; {reader} {data_file} > /dev/null"])
            (inner / "cgroup.procs").write_text(str(shell.pid))  # a cgroup below the target
            gate.touch()
            stranger = subprocess.Popen([str(other), str(data_file)], stdout=subprocess.DEVNULL)
            return [shell, stranger]

        trace, (_shell, stranger) = trace_while(target, start)
        by_pid = reads_by_pid(trace, data_file)
        assert stranger.pid not in by_pid, "a process outside the cgroup was traced"
        assert list(by_pid.values()) == [EXPECTED], by_pid
    finally:
        for cgroup in (inner, outer):
            with contextlib.suppress(OSError):
                cgroup.rmdir()


def test_all_takes_every_process(data_file, programs):
    reader, other, _ = programs

    def start():
        return [subprocess.Popen([str(p), str(data_file)], stdout=subprocess.DEVNULL)
                for p in (reader, other)]

    trace, procs = trace_while(filters.AllFilter(), start)
    by_pid = reads_by_pid(trace, data_file)
    assert {p.pid for p in procs} <= set(by_pid), by_pid
    assert all(by_pid[p.pid] == EXPECTED for p in procs)


def test_bad_filters_say_what_to_do(tmp_path):
    with pytest.raises(RestoreprofError, match="not a cgroup v2 folder") as err:
        filters.cgroup_filter(tmp_path / "nothing")
    assert "/proc/PID/cgroup" in err.value.hint
    with pytest.raises(RestoreprofError, match="1 to 15 bytes"):
        filters.comm_filter("a-name-longer-than-15")
    with pytest.raises(RestoreprofError, match="1 to 15 bytes"):
        filters.comm_filter("")


def test_trace_cli_takes_one_target(restoreprof_cli, tmp_path):
    result = restoreprof_cli("trace", "--comm", "criu", "--all", "-o", str(tmp_path / "out"))
    assert result.returncode != 0 and "exactly one of" in result.stderr
    result = restoreprof_cli("trace", "--comm", "criu", "-d", "0.5", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "processes named criu" in result.stdout
    assert (tmp_path / "out" / "report.json").exists()
