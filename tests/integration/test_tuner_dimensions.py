"""Every dimension the tuner searches acts: one checkpoint (GPU memory offloaded, on the fake
driver) restored with the untuned point and with each dimension changed, through the tuner's
own split() of a point into settings and restore options. Each change shows in what the
restore or its engine did: the restore's steps, or the fake driver's record of the engine's
copies (the preload runs in this process)."""

from __future__ import annotations

import ctypes
import shutil
import sys

import pytest

from restoreprof.checkpoint import checkpoint, restore
from restoreprof.checkpoint.gpu import PRELOAD_STEP
from restoreprof.tuner.space import DIMENSIONS, build_space, default_point, split
from restoreprof.tuner.trial import link_copy, stop_tree
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
SPACE = build_space(has_cuda=True, has_offload=True)
RECORD_FUNCTIONS = {"copy_bytes_max": "fakecuda_async_max_bytes",
                    "streams_used": "fakecuda_async_streams",
                    "threads_used": "fakecuda_async_threads",
                    "pageable_copies": "fakecuda_async_pageable"}


@pytest.fixture(scope="module")
def setup(fake_libcuda, tmp_path_factory):
    """A checkpoint of a process under the library holding 24 MiB of (fake) GPU memory."""
    base = tmp_path_factory.mktemp("dimensions")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESTOREPROF_LIBCUDA", str(fake_libcuda))
        mp.setenv("RESTOREPROF_REAL_LIBCUDA", str(fake_libcuda))
        mp.setenv("LD_LIBRARY_PATH", str(fake_libcuda.parent))
        mp.setenv("RESTOREPROF_RUN_DIR", str(base / "run"))  # no warm pool: preload here
        (base / "driver-state").mkdir()  # shared by every process, as the real driver's state
        mp.setenv("FAKECUDA_STATE_DIR", str(base / "driver-state"))
        holder = HeldMemory.start(base / "state", 16, gpu_mib=24,
                                  prefix=[sys.executable, "-m", "restoreprof", "exec", "--"])
        try:
            checkpoint(holder.pid, base / "ckpt")
        finally:
            holder.stop()
        # so that every engine thread gets chunks: at 2 ms a copy, 16 threads used only 8 of
        # the 12 chunks once in a full CI run on the loaded 2-core machine
        mp.setenv("FAKECUDA_COPY_DELAY_US", "20000")
        fake = ctypes.CDLL(str(fake_libcuda))
        fake.fakecuda_async_max_bytes.restype = ctypes.c_size_t
        fake.fakecuda_async_pageable.restype = ctypes.c_ulong
        yield base, fake


def restore_at(point: dict, setup) -> dict:
    """Restore a copy of the checkpoint as a trial at point would; what it did."""
    base, fake = setup
    config, options = split(point)
    copy = base / "trial"
    shutil.rmtree(copy, ignore_errors=True)
    link_copy(base / "ckpt", copy)
    fake.fakecuda_reset()
    result = None
    try:
        result = restore(copy, optimizer=config, verify=options["verify"], parallel=config.parallel)
        done = {name: getattr(fake, function)() for name, function in RECORD_FUNCTIONS.items()}
        return done | {"steps": {s.name for s in result.steps}, "notes": result.notes}
    finally:
        from restoreprof.checkpoint.manifest import Manifest

        stop_tree(result.pids if result else [p.pid for p in Manifest.load(copy).processes])
        shutil.rmtree(copy, ignore_errors=True)


# What each dimension changes, seen from outside the restore.
EFFECTS = {
    "verify": lambda done: "verify images" in done["steps"],
    "readahead": lambda done: "image read-ahead (overlapped)" in done["steps"],
    "threads": lambda done: done["threads_used"],
    "parallel": lambda done: PRELOAD_STEP in done["steps"],   # off: no preload, a reload
    "preload": lambda done: PRELOAD_STEP in done["steps"],
    "streams": lambda done: done["streams_used"],
    "chunk_mb": lambda done: done["copy_bytes_max"],
    "pinned": lambda done: done["pageable_copies"] > 0,
}


def test_every_searched_dimension_has_an_effect_here():
    assert {d.name for d in SPACE} == set(EFFECTS)
    assert set(DIMENSIONS) == set(EFFECTS), "a new dimension needs its effect shown here"


@pytest.fixture(scope="module")
def baselines(setup):
    start = default_point(SPACE)
    return {"verify on": restore_at(start, setup),
            "verify off": restore_at(start | {"verify": False}, setup)}


@pytest.mark.parametrize("name", list(EFFECTS))
def test_changing_a_dimension_changes_the_restore(name, setup, baselines):
    start = default_point(SPACE)
    if name == "readahead":  # acts only without the image check, which reads every image
        start = start | {"verify": False}
    dim = next(d for d in SPACE if d.name == name)
    assert dim.active(start)
    value = dim.values[dim.index(start[name]) - 1] if dim.ordered else not start[name]
    before = baselines["verify off" if not start["verify"] else "verify on"]
    after = restore_at(start | {name: value}, setup)
    assert not after["notes"], after["notes"]  # no fallback: the changed path itself ran
    assert EFFECTS[name](after) != EFFECTS[name](before), (name, value, before, after)
