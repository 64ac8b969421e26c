"""Real eBPF: the four read syscalls, counted exactly, through TraceSession and the report."""

from __future__ import annotations

import subprocess

import pytest
from _bpf import readers

from restoreprof.analysis import analyze
from restoreprof.probes.session import Target, TraceSession, record

pytestmark = pytest.mark.root

# What tests/programs/readers.c does to its file: (calls, bytes) per syscall
EXPECTED = {"read": (3, 3 * 4096), "pread64": (5, 5 * 8192), "preadv": (7, 7 * 8192),
            "preadv2": (11, 11 * 12288)}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reads") / "data.bin"
    path.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    return path


def _by_file(trace, path):
    found = {name: [0, 0] for name in EXPECTED}
    for e in trace.events:
        if e.kind == "syscall" and e.path == str(path) and e.name in found:
            found[e.name][0] += 1
            found[e.name][1] += e.bytes
    return {name: tuple(v) for name, v in found.items()}


def test_command_reads_are_exact(data_file):
    trace = record(Target(command=[str(readers()), str(data_file)]))
    assert _by_file(trace, data_file) == EXPECTED
    assert trace.meta.lost_events == 0
    opens = [e for e in trace.events if e.name == "openat" and e.path == str(data_file)]
    assert len(opens) == 1 and opens[0].fd >= 3
    reads = [e for e in trace.events if e.path == str(data_file) and e.name != "openat"]
    assert all(e.fd == opens[0].fd and e.end_ns >= e.start_ns > 0 for e in reads)
    execs = [e for e in trace.events if e.kind == "process" and e.name == "exec"]
    assert execs and execs[0].path.endswith("readers")
    # the report counts the whole traced tree: the file's reads plus the loader's
    report = analyze(trace)
    for name, (calls, nbytes) in EXPECTED.items():
        assert report["io"][name]["calls"] >= calls
        assert report["io"][name]["bytes"] >= nbytes
    preadv = report["io"]["preadv"]
    # one thread, one call at a time: busy time is the summed time
    assert preadv == {"calls": 7, "bytes": 7 * 8192, "ns": preadv["ns"], "busy_ns": preadv["ns"]}


def test_pid_target_follows_children(data_file, tmp_path):
    """-p PID: a shell that forks the reader after tracing began; the child is traced."""
    gate = tmp_path / "gate"
    shell = subprocess.Popen(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; "
                                          f"{readers()} {data_file} >/dev/null"])
    session = TraceSession(Target(pid=shell.pid))
    session.start()
    gate.touch()
    while session.running():
        session.poll(50)
    trace = session.stop()
    shell.wait()
    assert _by_file(trace, data_file) == EXPECTED
    forks = [e for e in trace.events if e.kind == "process" and e.name == "fork"]
    assert forks and forks[0].pid == shell.pid
    assert len(trace.meta.pids) >= 2   # the shell and the reader it forked


def test_unrelated_processes_are_not_traced(data_file):
    other = subprocess.Popen(["sh", "-c", f"for i in 1 2 3 4 5 6 7 8 9 10; do "
                                          f"{readers()} {data_file} >/dev/null; sleep 0.05; done"])
    try:
        trace = record(Target(command=["sleep", "0.5"]))
    finally:
        other.wait()
    assert all(e.path != str(data_file) for e in trace.events)
    assert {e.pid for e in trace.events} <= set(trace.meta.pids)
