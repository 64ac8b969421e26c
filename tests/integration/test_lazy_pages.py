"""restoreprof's lazy page server, through real CRIU: the processes' memory comes back bit-exact
through userfaultfd, a tree of processes too; a failure of the server kills the processes
(which never ran) and CRIU restores them again reading every page itself; the setting turns it
off."""

from __future__ import annotations

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
