"""restoreprof's lazy page server, through real CRIU: the processes' memory comes back bit-exact
through userfaultfd, a tree of processes too; a failure of the server kills the processes
(which never ran) and CRIU restores them again reading every page itself; the setting turns it
off."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from restoreprof.checkpoint import checkpoint, lazy_pages, restore
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root

LAZY_STEP = "host memory, lazy pages (overlapped)"

needs_uffd = pytest.mark.skipif(not lazy_pages.userfaultfd_works(),
                                reason="userfaultfd is not available here")


@pytest.fixture(scope="module")
def tree_checkpoint(tmp_path_factory):
    """A parent and two children, each child holding 96 MiB of seeded data (all gone after)."""
    base = tmp_path_factory.mktemp("lazy-tree")
    root = HeldMemory.start(base / "state", 96, children=2)
    children = root.children()
    result = checkpoint(root.pid, base / "images")
    assert not root.alive()
    return root, children, result.directory


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _restore_and_verify(images: Path, root: HeldMemory, children: list[HeldMemory], **kwargs):
    result = restore(images, **kwargs)
    try:
        assert sorted(result.pids) == sorted([root.pid] + [c.pid for c in children])
        assert all(c.verify() for c in children), "a child's memory differs after the restore"
        return result
    finally:
        root.stop()
        for c in children:
            c.stop()


@needs_uffd
def test_a_tree_comes_back_bit_exact_through_the_page_server(tree_checkpoint, tmp_path):
    root, children, images = tree_checkpoint
    result = _restore_and_verify(_copy(images, tmp_path / "c"), root, children)
    names = [s.name for s in result.steps]
    assert LAZY_STEP in names and "lazy pages (after CRIU)" in names
    assert not result.notes, result.notes
    served = next(s for s in result.steps if s.name == LAZY_STEP)
    assert served.end_ns > served.start_ns


@needs_uffd
def test_the_thread_setting_reaches_the_page_server(tree_checkpoint, tmp_path, monkeypatch):
    root, children, images = tree_checkpoint
    started = []
    start = lazy_pages.LazyPages.start

    def counted(self):
        started.append(self.threads)
        return start(self)

    monkeypatch.setattr(lazy_pages.LazyPages, "start", counted)
    monkeypatch.setenv("RESTOREPROF_LAZY_THREADS", "3")
    result = _restore_and_verify(_copy(images, tmp_path / "c"), root, children)
    assert started == [3] and not result.notes


@needs_uffd
def test_a_work_folder_too_long_for_a_socket_name_is_served_and_leaves_no_descriptor(
        tree_checkpoint, tmp_path):
    """A unix socket's name holds 108 bytes: a longer work folder is bound through a descriptor
    of the folder, closed with the server."""
    root, children, images = tree_checkpoint
    work = tmp_path / ("w" * 60) / ("x" * 60)
    assert len(str(work / lazy_pages.SOCKET_NAME)) > 108
    before = len(os.listdir("/proc/self/fd"))
    result = _restore_and_verify(images, root, children, work_dir=work)
    assert LAZY_STEP in [s.name for s in result.steps] and not result.notes, result.notes
    assert len(os.listdir("/proc/self/fd")) == before


@needs_uffd
@pytest.mark.parametrize("where", ["first copy", "sixth copy", "image preparation"])
def test_a_failing_page_server_falls_back_to_criu_reading_every_page(tree_checkpoint, tmp_path,
                                                                     monkeypatch, where):
    """Wherever the server fails (before CRIU registers the memory, half way, or before it
    knows the pages), CRIU is not left hanging on a fault, the processes that never ran are
    killed, and CRIU restores them again, bit-exact."""
    root, children, images = tree_checkpoint
    if where == "image preparation":
        def broken(*args, **kwargs):
            raise lazy_pages.LazyPagesError("injected failure")
        monkeypatch.setattr(lazy_pages, "PagesImage", broken)
    else:
        real_copy, calls = lazy_pages.LazyPages._copy, []
        fail_after = 0 if where == "first copy" else 5

        def copy_then_fail(self, piece):
            calls.append(piece.start)
            if len(calls) > fail_after:
                raise lazy_pages.LazyPagesError("injected failure")
            return real_copy(self, piece)

        monkeypatch.setattr(lazy_pages.LazyPages, "_copy", copy_then_fail)
    result = _restore_and_verify(_copy(images, tmp_path / "c"), root, children)
    names = [s.name for s in result.steps]
    assert "criu restore (every page)" in names and LAZY_STEP not in names
    assert any("injected failure" in n and "CRIU restored every page itself" in n
               for n in result.notes), result.notes


@needs_uffd
def test_the_setting_turns_the_page_server_off(tree_checkpoint, tmp_path, monkeypatch):
    root, children, images = tree_checkpoint
    monkeypatch.setenv("RESTOREPROF_LAZY_PAGES", "0")
    assert OptimizerConfig.load().lazy_pages is False
    result = _restore_and_verify(_copy(images, tmp_path / "c"), root, children)
    names = [s.name for s in result.steps]
    assert LAZY_STEP not in names and "criu restore" in names


def test_small_or_incremental_images_are_left_to_criu(tree_checkpoint, tmp_path, monkeypatch):
    _, _, images = tree_checkpoint
    monkeypatch.setattr(lazy_pages, "userfaultfd_works", lambda: True)
    assert lazy_pages.why_not(images) is None
    monkeypatch.setattr(lazy_pages, "MIN_LAZY_BYTES", 1 << 40)
    assert "MiB of lazy pages" in lazy_pages.why_not(images)


@needs_uffd
def test_a_restore_whose_page_server_died_is_ended_by_its_recovery(tmp_path):
    """The command dies while CRIU restores with lazy pages: CRIU's restorer, which keeps its
    own userfaultfd, waits forever on its first fault. The guardian's recovery kills the
    processes (they never ran), which ends CRIU, instead of waiting for it."""
    import socket
    import threading
    import time

    from restoreprof.checkpoint import criu, recovery
    from restoreprof.checkpoint.journal import restore_journal

    w = HeldMemory.start(tmp_path / "state", 96)
    images = checkpoint(w.pid, tmp_path / "images").directory
    work = tmp_path / "work"
    work.mkdir()
    # a server that takes CRIU's descriptors and never answers a fault (what a dead
    # restoreprof leaves: the restorer's own descriptor keeps every fault waiting)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(work / lazy_pages.SOCKET_NAME))
    listener.listen(1)
    held: list = []

    def take_and_hold():
        client, _ = listener.accept()
        held.append(client)
        client.recv(4)
        held.append(socket.recv_fds(client, 1, 1)[1])

    threading.Thread(target=take_and_hold, daemon=True).start()
    outcome: dict = {}

    def run_criu():
        try:
            outcome["result"] = criu.restore(images, work, shell_job=False,
                                             extra=["--lazy-pages"],
                                             on_start=lambda pid: outcome.update(pid=pid))
        except Exception as exc:  # CRIU fails once its tasks are killed
            outcome["error"] = exc

    runner = threading.Thread(target=run_criu, daemon=True)
    runner.start()
    time.sleep(3)
    assert runner.is_alive(), f"CRIU did not wait on the unanswered fault: {outcome}"
    journal = restore_journal(work)
    journal.data = {"directory": str(images), "pids": [w.pid], "lazy_pages": True,
                    "criu_pid": outcome["pid"]}
    journal.write("criu")
    started = time.monotonic()
    said = recovery.recover_restore_locked(journal, abort=False)
    runner.join(timeout=30)
    assert not runner.is_alive() and time.monotonic() - started < 30
    assert "killed the restored processes" in said
    assert not os.path.exists(f"/proc/{w.pid}") or not w.alive()
    listener.close()
