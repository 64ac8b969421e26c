"""calibrate: the disk it measures must exist, and is read with parallel readers."""

from __future__ import annotations

import os
import threading
import time

import pytest

from restoreprof.analysis import ceilings as ceilings_module
from restoreprof.cli import main
from restoreprof.errors import RestoreprofError


def test_a_folder_that_does_not_exist_is_refused_and_never_created(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    missing = tmp_path / "nonexistent"
    code = main(["calibrate", "-D", str(missing), "--no-gpu", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "no such folder" in err and "->" in err
    assert not missing.exists()
    assert not (tmp_path / "cache" / "restoreprof" / "ceilings.json").exists()
    with pytest.raises(RestoreprofError):
        ceilings_module.measure_disk_read_gbps(missing)
    assert not missing.exists()


def test_the_disk_is_read_by_parallel_readers(tmp_path, monkeypatch):
    """One reader at queue depth 1 underestimates NVMe: several requests must be in flight."""
    in_flight, most = [0], [0]
    lock = threading.Lock()
    real_preadv = os.preadv

    def counting_preadv(fd, buffers, offset, *rest):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.002)   # a disk's latency: lets the other readers issue theirs
            return real_preadv(fd, buffers, offset, *rest)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(ceilings_module.os, "preadv", counting_preadv)
    gbps, how = ceilings_module.measure_disk_read_gbps(tmp_path, 64 << 20)
    assert gbps > 0
    assert most[0] >= 4, most[0]
    assert "parallel readers" in how and "16:" in how
    assert not list(tmp_path.iterdir())   # the test file is gone
