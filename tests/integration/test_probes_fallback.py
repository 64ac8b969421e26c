"""Kernels before 6.6 have no uprobe_multi links: the profiler then compiles one entry
program per CUDA function and attaches them one by one through bcc. Same figures."""

from __future__ import annotations

from collections import Counter

import pytest
from _bpf import cuda_calls_static, fake_libcuda

from restoreprof.analysis import analyze
from restoreprof.probes import uprobe_multi
from restoreprof.probes.session import Target, record

pytestmark = pytest.mark.root


def test_per_function_uprobes_give_the_same_figures(monkeypatch):
    monkeypatch.setenv("RESTOREPROF_LIBCUDA", str(fake_libcuda()))
    monkeypatch.setattr(uprobe_multi, "supported", lambda: False)
    trace = record(Target(command=[str(cuda_calls_static())]))
    report = analyze(trace)
    assert report["cuda"]["htod"]["bytes"] == 808_000
    assert report["cuda"]["dtod"]["calls"] == 9
    assert Counter(e.name for e in trace.events)["cudaMemcpy"] == 4
    assert trace.meta.lost_events == 0
