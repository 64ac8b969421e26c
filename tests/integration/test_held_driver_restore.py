"""The driver's restore of a process's GPU state runs while the program is still held: on the
driver's restore thread alone, under ptrace, once CRIU is done and the images have passed; the
program's own threads stay stopped until everything is in. The fake driver has a restore
thread of its own, refuses a restore while that thread is stopped (the real one would wait for
it), and writes down the state of every thread of the process at the moment of the restore:
that record is what these tests read."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

from restoreprof.checkpoint import api, checkpoint, held_thread, restore
from restoreprof.checkpoint.gpu import HeldRestores
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
HELD = OptimizerConfig(held_driver_restore=True)  # the default, named: these tests are about it


@pytest.fixture
def driver_state(fake_driver) -> Path:
    """The driver state the restore and the program share (fake_driver's), as a real driver's."""
    return Path(os.environ["FAKECUDA_STATE_DIR"])


def _threads_at_restore(folder: Path, pid: int) -> tuple[str, dict[int, str]]:
    """(the restore thread's state, {tid: state} of every other thread) when the driver's
    restore ran, as the fake driver wrote them down."""
    restore_state, others = "", {}
    for line in (folder / f"pid-{pid}.restore").read_text().splitlines():
        if line.startswith("reply "):
            continue
        tid, state, *restore_thread = line.split()
        if restore_thread:
            restore_state = state
        else:
            others[int(tid)] = state
    return restore_state, others


def _checkpointed(tmp_path) -> HeldMemory:
    w = HeldMemory.start(tmp_path / "state", 8, gpu_mib=16,
                         prefix=[sys.executable, "-m", "restoreprof", "exec", "--"])
    checkpoint(w.pid, tmp_path / "ckpt", optimizer=HELD)  # which notes the restore thread
    assert not w.alive()
    return w


def _span(restored, name: str) -> tuple[int, int]:
    steps = [s for s in restored.steps if s.name == name]
    assert len(steps) == 1, [s.name for s in restored.steps]
    return steps[0].start_ns, steps[0].end_ns


def _driver_restore_after_resume(restored) -> bool:
    _, resumed = _span(restored, "resume processes")
    driver_start, _ = _span(restored, HeldRestores.STEP)
    return resumed <= driver_start


def test_driver_restore_runs_while_the_program_is_held(driver_state, tmp_path):
    w = _checkpointed(tmp_path)
    try:
        restored = restore(tmp_path / "ckpt", optimizer=HELD)
        assert not restored.notes  # no fallback taken
        own, others = _threads_at_restore(driver_state, w.pid)
        assert own in ("R", "S"), own  # the driver's thread ran...
        assert others and set(others.values()) == {"T"}, others  # ...and only it
        _, driver_end = _span(restored, HeldRestores.STEP)
        resumed, _ = _span(restored, "resume processes")
        assert driver_end <= resumed
        assert w.verify(), "the GPU memory differs after the restore"
    finally:
        w.stop()


def test_off_the_program_resumes_first(driver_state, tmp_path):
    w = _checkpointed(tmp_path)
    try:
        restored = restore(tmp_path / "ckpt", optimizer=OptimizerConfig(held_driver_restore=False))
        assert not restored.notes
        own, others = _threads_at_restore(driver_state, w.pid)
        assert own in ("R", "S") and "T" not in others.values(), others
        assert _driver_restore_after_resume(restored)
        assert w.verify()
    finally:
        w.stop()


@pytest.mark.parametrize("restore_tid", ["none", "gone", "foreign", "refused"])
def test_a_thread_that_cannot_be_held_is_restored_after_the_resume(driver_state, tmp_path,
                                                                   monkeypatch, restore_tid):
    """The checkpoint names no restore thread, one that is gone, or a thread of another process
    (never let run), or ptrace refuses the thread: the restore goes on the old way (resume, then
    the driver's restore), says so, and is bit-exact."""
    if restore_tid == "refused":
        @contextlib.contextmanager
        def refused(tid):
            raise held_thread.HeldThreadError(f"ptrace(0x4206, {tid}): Operation not permitted")
            yield

        monkeypatch.setattr(held_thread, "running_alone", refused)
    else:
        monkeypatch.setenv("FAKECUDA_RESTORE_TID", restore_tid)  # asked at checkpoint, here
    w = _checkpointed(tmp_path)
    try:
        restored = restore(tmp_path / "ckpt", optimizer=HELD)
        assert len(restored.notes) == 1, restored.notes
        assert {"none": "no restore thread", "gone": "is not one of its threads",
                "foreign": "is not one of its threads",
                "refused": "held restore thread failed (ptrace"}[restore_tid] in restored.notes[0]
        assert _driver_restore_after_resume(restored)
        assert w.verify()
    finally:
        w.stop()


def _restore_thread_reply(folder: Path, pid: int) -> str:
    """What the fake driver's restore thread answered: "ok missing=A,B,C,D" (pages of each
    quarter of its memory not in yet when it began), "ok none" (no host state), or "bad: why"."""
    replies = [line.removeprefix("reply ") for line in
               (folder / f"pid-{pid}.restore").read_text().splitlines() if line.startswith("reply ")]
    assert len(replies) == 1, replies
    return replies[0]


@pytest.mark.parametrize("held", [True, False], ids=["held", "resumed first"])
def test_the_driver_changes_its_mappings_while_the_last_pages_arrive(driver_state, tmp_path,
                                                                     monkeypatch, held):
    """The driver's thread reads, unmaps, discards and moves its own host memory as it restores
    (the fake: 512 MiB in four quarters). Held, it does so while the lazy page server still
    brings that memory in (one copy thread, no image check to wait for): the server follows
    each change (nothing copied into the unmapped quarter or over the discarded one, the moved
    one's pages follow it), the thread reads its bytes right, and nothing falls back. Resumed
    first, everything is in before it starts."""
    monkeypatch.setenv("FAKECUDA_DRIVER_HOST_MIB", "512")  # inherited by the program
    w = _checkpointed(tmp_path)
    try:
        restored = restore(tmp_path / "ckpt", verify=False,
                           optimizer=OptimizerConfig(lazy_threads=1, held_driver_restore=held))
        assert not restored.notes  # no lazy-page failure, no fallback
        names = [s.name for s in restored.steps]
        assert "lazy pages (after CRIU)" in names, names
        reply = _restore_thread_reply(driver_state, w.pid)
        assert reply.startswith("ok missing="), reply
        missing = [int(n) for n in reply.removeprefix("ok missing=").split(",")]
        if held:  # it moved, discarded and unmapped pages still coming: the server followed
            assert missing[3] > 0 and missing[2] > 0, reply
            driver_start, _ = _span(restored, HeldRestores.STEP)
            _, tail_end = _span(restored, "lazy pages (after CRIU)")
            assert driver_start < tail_end
        else:
            assert sum(missing) == 0, reply
        assert w.verify(), "the program's memory differs after the restore"
    finally:
        w.stop()


def test_a_driver_restore_that_waits_on_the_program_gets_it_resumed(driver_state, tmp_path,
                                                                   monkeypatch):
    """A driver whose restore also needs a thread the hold keeps stopped (the fake: the main
    thread) would wait for good: after HELD_PATIENCE_S the processes are resumed (every page is
    in, the images passed), the driver's restore ends, the restore says so and is bit-exact."""
    monkeypatch.setattr(api, "HELD_PATIENCE_S", 0.5)
    monkeypatch.setenv("FAKECUDA_RESTORE_WAITS_FOR_MAIN", "1")  # this process's fake driver
    w = _checkpointed(tmp_path)
    try:
        restored = restore(tmp_path / "ckpt", optimizer=HELD)
        assert len(restored.notes) == 1 and "were resumed for it" in restored.notes[0], \
            restored.notes
        names = [s.name for s in restored.steps]
        assert names.count("resume processes") == 1, names  # once, not again after
        resumed, _ = _span(restored, "resume processes")
        driver_start, driver_end = _span(restored, HeldRestores.STEP)
        assert driver_start < resumed < driver_end
        assert restored.total_s < 5, restored.total_s  # no second wait for a stop
        assert w.verify()
    finally:
        w.stop()
