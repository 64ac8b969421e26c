"""Image read-ahead: a checkpoint's images pulled into the page cache ahead of `criu restore`.

CRIU restores memory with one synchronous preadv at a time per process; from a cold cache
every one waits for the disk. Reading the images with several threads first (and while CRIU
runs) turns those waits into page-cache hits, without patching CRIU.

    with ReadAhead(images_dir, threads=8) as ra:
        run_criu_restore()
    print(ra.stats)

pages-*.img come first (the bulk of the bytes and what CRIU reads first), then the rest.
Leaving the block stops the readers; wait() blocks until everything is read.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

READ_BYTES = 8 << 20  # one pread; large enough for full-speed NVMe, small enough to stop quickly


@dataclass
class ReadAheadStats:
    files: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    finished: bool = False

    @property
    def gbps(self) -> float:
        return self.bytes_read / self.seconds / 1e9 if self.seconds > 0 else 0.0


def image_files(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint images in read order: pages-*.img by size (largest first), then the rest."""
    images = [p for p in Path(directory).glob("*.img") if p.is_file()]
    pages = sorted((p for p in images if p.name.startswith("pages-")),
                   key=lambda p: p.stat().st_size, reverse=True)
    return pages + sorted(p for p in images if not p.name.startswith("pages-"))


class ReadAhead:
    """Several threads reading a checkpoint's images into the page cache."""

    def __init__(self, directory: str | os.PathLike, threads: int = 8,
                 files: list[Path] | None = None) -> None:
        self.files = files if files is not None else image_files(directory)
        self.threads = max(1, threads)
        self.stats = ReadAheadStats(files=len(self.files))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._work: list[tuple[int, int, int]] = []  # (fd, offset, length), in reading order
        self._fds: list[int] = []
        self._start = 0.0

    def start(self) -> Self:
        self._start = time.perf_counter()
        for path in self.files:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # an image that vanished is CRIU's problem, not ours
            self._fds.append(fd)
            size = os.fstat(fd).st_size
            self.stats.bytes_total += size
            # Tell the kernel first: it starts I/O for the whole file at once.
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
            self._work += [(fd, off, min(READ_BYTES, size - off))
                           for off in range(0, size, READ_BYTES)]
        self._work.reverse()  # pop() from the end hands out the first piece first
        self._workers = [threading.Thread(target=self._read, name=f"restoreprof-readahead-{i}",
                                          daemon=True) for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def _read(self) -> None:
        buffer = bytearray(READ_BYTES)
        view = memoryview(buffer)
        while not self._stop.is_set():
            with self._lock:
                if not self._work:
                    return
                fd, offset, length = self._work.pop()
            try:
                n = os.preadv(fd, [view[:length]], offset)
            except OSError:
                continue
            with self._lock:
                self.stats.bytes_read += n

    def wait(self, timeout: float | None = None) -> ReadAheadStats:
        """Block until every image has been read (or timeout); return the stats so far."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._finish()
        return self.stats

    def stop(self) -> ReadAheadStats:
        self._stop.set()
        return self.wait()

    def _finish(self) -> None:
        if any(w.is_alive() for w in self._workers):
            return
        if self._fds:
            self.stats.seconds = time.perf_counter() - self._start
            self.stats.finished = not self._stop.is_set() or not self._work
            for fd in self._fds:
                os.close(fd)
            self._fds = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def drop_from_cache(path: str | os.PathLike) -> None:
    """Evict a file's pages (POSIX_FADV_DONTNEED): a cold cache for one file, without root."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: str | os.PathLike) -> float:
    """The share of a file's pages in the page cache (mincore over a read-only mapping)."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Python's mmap object hides its address, so map through libc directly.
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            if libc.mincore(address, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec) / pages
