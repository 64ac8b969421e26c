"""Read-ahead really loads cold images into the page cache (checked with mincore)."""

import os

import pytest

from restoreprof.optimizer.readahead import (
    ReadAhead,
    drop_from_cache,
    image_files,
    resident_fraction,
)


def write_images(directory):
    chunk = os.urandom(1 << 20)
    for name, megabytes in (("pages-1.img", 48), ("pages-2.img", 8), ("core-1.img", 1)):
        (directory / name).write_bytes(chunk * megabytes)
    (directory / "notes.txt").write_text("not an image")


def test_order_pages_first(tmp_path):
    write_images(tmp_path)
    assert [p.name for p in image_files(tmp_path)] == ["pages-1.img", "pages-2.img", "core-1.img"]


def test_cold_images_become_resident(tmp_path):
    write_images(tmp_path)
    for image in image_files(tmp_path):
        drop_from_cache(image)
    big = tmp_path / "pages-1.img"
    if resident_fraction(big) > 0.2:
        pytest.skip("this filesystem keeps pages cached after POSIX_FADV_DONTNEED (tmpfs?)")
    with ReadAhead(tmp_path, threads=4) as ra:
        stats = ra.wait(timeout=60)
    assert stats.finished
    assert stats.files == 3
    assert stats.bytes_read == stats.bytes_total == (48 + 8 + 1) << 20
    assert resident_fraction(big) > 0.95
    assert stats.gbps > 0


def test_stop_early_is_clean(tmp_path):
    write_images(tmp_path)
    ra = ReadAhead(tmp_path, threads=2).start()
    stats = ra.stop()
    assert stats.bytes_read <= stats.bytes_total
    assert not ra._fds  # every descriptor closed
