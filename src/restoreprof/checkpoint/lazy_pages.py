"""restoreprof's page server for CRIU's lazy restore: the restored processes' memory copied in
by several threads while CRIU restores everything else.

`criu restore` spends most of its time in one `preadv` of the processes' anonymous memory:
0.48 to 0.55 s of 0.6 to 0.7 s for a 16 GB model process on the H200, page-faulting fresh
memory on one thread at 2.2 GB/s (benchmarks/RESULTS.md, fifth session). With --lazy-pages
CRIU skips those pages, registers the memory with userfaultfd, and hands each process's
descriptor to a server listening on `lazy-pages.socket` in its work folder (the protocol of
criu/uffd.c: the PID as an int, then the descriptor by SCM_RIGHTS with one byte; a negative
PID for a zombie; finally LAZY_PAGES_RESTORE_FINISHED). CRIU's own server copies at about
1.2 GB/s. This one:

- knows from the images which pages are lazy (pagemap-PID.img: each entry's range and flags;
  mm-PID.img: the mappings, since one copy must stay inside one of them) and where their bytes
  are in pages-ID.img;
- copies them with UFFDIO_COPY from several threads in pieces of PIECE_BYTES, from the moment
  CRIU registers each mapping; a page fault on a piece not yet copied is served first, on the
  thread that reads the faults; a fault outside every piece (memory the process never touched)
  gets a zero page;
- closes every descriptor once the last piece is in, so that the processes' memory behaves
  as ordinary memory again.

The restore waits for the last piece before the program runs: CRIU leaves the processes
stopped (--leave-stopped) and restoreprof resumes them only after the image check and this
server have both finished. So a failure here, or a server that dies, never lets the program
run on memory that is missing: the restore kills the processes (they never ran) and restores
again without lazy pages (api._restore_locked).

One thread may run meanwhile: the CUDA driver's restore thread, which restores the GPU state
while the program's own threads stay stopped (checkpoint.held_thread), and maps, unmaps and
moves memory as it does. The server follows those changes (userfaultfd's UNMAP, REMOVE and
REMAP events): nothing is copied any more into a range unmapped or discarded (a discarded range
reads as zeros, as the thread asked), and the pieces of a moved range move with it. To apply a
change before any copy can land on the old layout, the fault thread stops the copies of that
process (Space.changing) and waits for those in flight before it reads the process's messages.
A FORK event is still a failure: the driver's thread does not fork.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import mmap
import os
import platform
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from restoreprof.checkpoint import criu_records, pstree
from restoreprof.errors import RestoreprofError

SOCKET_NAME = "lazy-pages.socket"
RESTORE_FINISHED = 0x52535446  # "ReSTore Finished", criu/uffd.c
PIECE_BYTES = 2 << 20
MIN_LAZY_BYTES = 64 << 20  # under this, CRIU's own read is as quick as starting the server

PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4  # criu/include/pagemap.h

# linux/userfaultfd.h
_UFFDIO = 0xAA
UFFD_API = 0xAA
_IOWR, _IOR = 3, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_UFFDIO << 8) | nr


UFFDIO_API = _ioc(_IOWR, 0x3F, 24)
UFFDIO_WAKE = _ioc(_IOR, 0x02, 16)
UFFDIO_COPY = _ioc(_IOWR, 0x03, 40)
UFFDIO_ZEROPAGE = _ioc(_IOWR, 0x04, 32)
EVENT_PAGEFAULT, EVENT_FORK, EVENT_REMAP, EVENT_REMOVE, EVENT_UNMAP = 0x12, 0x13, 0x14, 0x15, 0x16
_EVENT_NAMES = {EVENT_FORK: "fork", EVENT_REMAP: "mremap", EVENT_REMOVE: "madvise(DONTNEED)",
                EVENT_UNMAP: "munmap"}
MSG_BYTES = 32
_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class LazyPagesError(RestoreprofError):
    """The server could not bring every page in: the processes must not run."""


class _Copy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class _Zero(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("zeropage", ctypes.c_int64)]


class _Range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


# --- the images: which pages are lazy, and where their bytes are --------------------------------


@dataclass(frozen=True)
class PagemapEntry:
    vaddr: int
    nr_pages: int
    flags: int


_parsed: dict[tuple, object] = {}  # (what, path, mtime, size) -> decoded: a pool restores one
# checkpoint many times, and a CUDA process's images hold thousands of entries


def _cached(what: str, path: Path, decode):
    st = os.stat(path)
    key = (what, str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    if key not in _parsed:
        if len(_parsed) > 256:
            _parsed.clear()
        _parsed[key] = decode()
    return _parsed[key]


def read_pagemap(directory: Path, pid: int) -> tuple[int, list[PagemapEntry]]:
    """(pages image id, entries) of pid's pagemap-PID.img."""
    path = directory / f"pagemap-{pid}.img"
    return _cached("pagemap", path, lambda: _decode_pagemap(path))


def _decode_pagemap(path: Path) -> tuple[int, list[PagemapEntry]]:
    recs = criu_records.records(path.read_bytes(), criu_records.PAGEMAP_MAGIC, "pagemap")
    if not recs:
        raise ValueError(f"{path} has no header")
    pages_id = next((v for n, w, v in criu_records.fields(recs[0]) if n == 1 and w == 0), None)
    if pages_id is None:
        raise ValueError(f"{path}: a header without pages_id")
    entries = []
    for rec in recs[1:]:
        got = {n: v for n, w, v in criu_records.fields(rec) if w in (0, 1)}
        if 1 not in got:
            raise ValueError(f"{path}: an entry without vaddr")
        # criu's pagemap reader: an entry without flags is in the parent or present
        flags = got.get(4, PE_PARENT if got.get(3) else PE_PRESENT)
        entries.append(PagemapEntry(got[1], got.get(5, got.get(2, 0)), flags))
    return pages_id, entries


def read_mappings(directory: Path, pid: int) -> list[tuple[int, int]]:
    """(start, end) of every mapping in pid's mm-PID.img, sorted."""
    path = directory / f"mm-{pid}.img"
    return _cached("mm", path, lambda: _decode_mappings(path))


def _decode_mappings(path: Path) -> list[tuple[int, int]]:
    recs = criu_records.records(path.read_bytes(), criu_records.MM_MAGIC, "mm")
    if not recs:
        raise ValueError(f"{path} has no entry")
    vmas = []
    for number, wire, value in criu_records.fields(recs[0]):
        if number == 14 and wire == 2:
            got = {n: v for n, w, v in criu_records.fields(value) if w in (0, 1)}
            vmas.append((got[1], got[2]))
    return sorted(vmas)


@dataclass(eq=False)  # one piece is itself, whatever its fields say
class Piece:
    """A run of lazy pages inside one mapping, at most PIECE_BYTES, and where it is on file."""

    space: Space
    start: int
    length: int
    offset: int
    state: int = 0  # 0 waiting, 1 being copied, 2 in, GONE (unmapped, discarded, or split)


GONE = 3


@dataclass
class Space:
    """One restored process's memory, as this server fills it."""

    pid: int
    uffd: int = -1
    image: PagesImage | None = None  # where UFFDIO_COPY reads the bytes
    pieces: list[Piece] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    left: int = 0  # pieces not yet in
    copying: int = 0  # UFFDIO_COPYs in flight into this process
    changing: bool = False  # its messages are being read: no copy may start

    def find(self, address: int) -> Piece | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.pieces[i].start + self.pieces[i].length:
            return self.pieces[i]
        return None

    def reindex(self) -> None:
        self.pieces.sort(key=lambda p: p.start)
        self.starts = [p.start for p in self.pieces]


def plan_pieces(space: Space, entries: list[PagemapEntry], mappings: list[tuple[int, int]],
                page: int) -> int:
    """Fill space.pieces from the lazy entries; returns the bytes they hold."""
    offset = total = 0
    for e in entries:
        length = e.nr_pages * page
        if e.flags & PE_LAZY:
            start, end = e.vaddr, e.vaddr + length
            pos = start
            while pos < end:
                i = bisect.bisect_right(mappings, (pos, float("inf"))) - 1
                limit = mappings[i][1] if i >= 0 and mappings[i][0] <= pos < mappings[i][1] else end
                n = min(end, limit, pos + PIECE_BYTES) - pos
                space.pieces.append(Piece(space, pos, n, offset + (pos - start)))
                pos += n
            total += length
        if e.flags & PE_PRESENT:
            offset += length
    space.pieces.sort(key=lambda p: p.start)
    space.starts = [p.start for p in space.pieces]
    space.left = len(space.pieces)
    return total


class PagesImage:
    """One process's lazy pieces and its pages image mapped read-only, every page of it mapped
    in advance (MAP_POPULATE, from the page cache): prepared while CRIU starts, so the copies
    take no fault on their source."""

    def __init__(self, directory: Path, pid: int, page: int) -> None:
        self.pid = pid
        self.address = self.size = 0
        pages_id, entries = read_pagemap(directory, pid)
        self.plan = Space(pid)
        plan_pieces(self.plan, entries, read_mappings(directory, pid), page)
        path = directory / f"pages-{pages_id}.img"
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size = os.fstat(fd).st_size
            end = max((p.offset + p.length for p in self.plan.pieces), default=0)
            if end > self.size:
                raise LazyPagesError(f"{path} holds {self.size} bytes; its pagemap needs {end}")
            if self.size:
                address = _libc.mmap(None, self.size, mmap.PROT_READ,
                                     mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0x8000), fd, 0)
                if address in (None, _MAP_FAILED):
                    raise LazyPagesError(f"mmap of {path}: {os.strerror(ctypes.get_errno())}")
                self.address = address
        finally:
            os.close(fd)

    def space(self, uffd: int) -> Space:
        """A fresh Space for this process's descriptor (pieces copied: a plan serves once)."""
        space = Space(self.pid, uffd, image=self)
        space.pieces = [Piece(space, p.start, p.length, p.offset) for p in self.plan.pieces]
        space.starts = [p.start for p in space.pieces]
        space.left = len(space.pieces)
        return space

    def close(self) -> None:
        if self.address:
            _libc.munmap(self.address, self.size)
            self.address = 0


def why_not(directory: Path) -> str | None:
    """None when this checkpoint can be restored with lazy pages here, else the reason."""
    if not userfaultfd_works():
        return "userfaultfd is not available to this process"
    lazy = 0
    try:
        for pid in pstree.pids(directory):
            path = directory / f"pagemap-{pid}.img"
            if not path.exists():
                continue  # a zombie has no memory
            _, entries = read_pagemap(directory, pid)
            for e in entries:
                if e.flags & PE_LAZY and not e.flags & PE_PRESENT:
                    return f"{path.name} has lazy pages that are not in the images"
                if e.flags & PE_PARENT:
                    return f"{path.name} refers to a parent checkpoint's pages"
                if e.flags & PE_LAZY:
                    lazy += e.nr_pages * mmap.PAGESIZE
    except (OSError, ValueError, RestoreprofError) as exc:
        return f"the page images could not be read ({exc})"
    if lazy < MIN_LAZY_BYTES:
        return f"only {lazy >> 20} MiB of lazy pages"
    return None


def default_threads() -> int:
    """Copy threads: half the cores, 2 to 8 (on the H200's 16 cores, 8 copied a 16 GB model
    process's 1.04 GB at 5 to 7 GB/s while the engine's threads and the image check ran)."""
    return min(8, max(2, (os.cpu_count() or 4) // 2))


_uffd_probe: bool | None = None


def userfaultfd_works() -> bool:
    """Whether userfaultfd opens and answers UFFDIO_API here (seccomp or an old kernel may say
    no); probed once."""
    global _uffd_probe
    if _uffd_probe is None:
        nr = _SYS_USERFAULTFD.get(platform.machine())
        fd = _libc.syscall(nr, os.O_CLOEXEC | os.O_NONBLOCK) if nr else -1
        api = (ctypes.c_uint64 * 3)(UFFD_API, 0, 0)
        _uffd_probe = fd >= 0 and _libc.ioctl(fd, UFFDIO_API, ctypes.addressof(api)) == 0
        if fd >= 0:
            os.close(fd)
    return _uffd_probe


# --- the server ---------------------------------------------------------------------------------


@dataclass
class LazyStats:
    bytes: int = 0          # copied in by this server
    pieces: int = 0
    faults: int = 0         # page faults served (copied first, or given a zero page)
    zero_pages: int = 0
    processes: int = 0
    changes: int = 0        # mapping changes followed (munmap, madvise, mremap)
    dropped_bytes: int = 0  # not copied: unmapped or discarded before their turn
    first_ns: int = 0       # the first descriptor's arrival
    done_ns: int = 0        # the last piece in

    @property
    def seconds(self) -> float:
        return (self.done_ns - self.first_ns) / 1e9 if self.done_ns else 0.0


class LazyPages:
    """Serve the lazy pages of one `criu restore --lazy-pages -W work_dir` of directory."""

    def __init__(self, directory: Path, work_dir: Path, threads: int = 8,
                 timeout_s: float = 120.0) -> None:
        self.directory, self.work_dir = directory, work_dir
        self.threads, self.timeout_s = max(1, threads), timeout_s
        self.page = mmap.PAGESIZE
        self.stats = LazyStats()
        self.error: str | None = None
        self.spaces: list[Space] = []
        self._waiting: deque[Piece] = deque()
        self._lock = threading.Condition()
        self._finished = False  # CRIU said the restore is finished: no more processes
        self._closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._starter: threading.Thread | None = None
        self._images: dict[int, PagesImage] = {}  # by PID, prepared ahead
        self._prepared = threading.Event()
        self._dir_fd = -1  # the work folder, when its path is too long to bind by name

    # the restore's side

    def start(self) -> LazyPages:
        path = self.work_dir / SOCKET_NAME
        path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._listener.bind(self._socket_address(path))
        os.chmod(path, 0o600)
        self._listener.listen(1)  # CRIU may connect from now on; it is accepted once we run
        # Thread.start() waits for the new thread to run, which needs the GIL: in a warm pool
        # busy with a restore's other threads, starting a dozen here took 30 to 160 ms before
        # CRIU could start (H200). One starter thread starts the rest, off that path.
        self._starter = threading.Thread(target=self._start_threads, name="lazy-start",
                                         daemon=True)
        self._starter.start()
        return self

    def _start_threads(self) -> None:
        for name, target in [("lazy-prepare", self._prepare), ("lazy-intake", self._intake),
                             ("lazy-faults", self._serve_faults),
                             *[(f"lazy-copy-{n}", self._copy_loop) for n in range(self.threads)]]:
            with self._lock:
                if self._closed:
                    return
                self._spawn(name, target)

    def wait(self) -> LazyStats:
        """Block until every page is in (and every descriptor closed); LazyPagesError if not."""
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            while not self._complete() and self.error is None:
                if not self._lock.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic()))) \
                        and time.monotonic() >= deadline:
                    self._fail(f"not every page was in after {self.timeout_s:.0f} s")
        self.close()
        if self.error:
            raise LazyPagesError(f"the lazy page restore failed: {self.error}",
                                 hint="restore again with RESTOREPROF_LAZY_PAGES=0 to let CRIU "
                                      "read every page itself")
        return self.stats

    def close(self) -> None:
        """Stop every thread and close every descriptor (after wait(), or to give up)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.error is None and not self._complete():
                self.error = "stopped before every page was in"
            self._lock.notify_all()
        os.write(self._wake_w, b"x")  # before _closed is seen by _fail: it writes no more
        if self._listener:
            self._listener.close()
        if self._starter is not None:
            self._starter.join(timeout=10)  # no thread starts after this
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(timeout=10)
        for s in self.spaces:
            with self._lock:
                if s.uffd >= 0:
                    os.close(s.uffd)  # the kernel hands the memory back to ordinary faults
                s.uffd = -1
        if any(t.name == "lazy-prepare" for t in self._threads):
            self._prepared.wait(timeout=10)  # its mappings are made by then
        for image in self._images.values():
            image.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
        (self.work_dir / SOCKET_NAME).unlink(missing_ok=True)

    # internals

    def _socket_address(self, path: Path) -> str:
        if len(os.fsencode(path)) < 100:
            return str(path)
        # a long work folder: bind through a descriptor of the folder (sun_path holds 108 bytes)
        self._dir_fd = os.open(self.work_dir, os.O_PATH | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._dir_fd}/{SOCKET_NAME}"

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=self._guarded, args=(target,), name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _guarded(self, target) -> None:
        try:
            target()
        except Exception as exc:  # any failure stops the lazy restore
            with self._lock:
                self._fail(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")

    def _fail(self, why: str) -> None:  # with self._lock held
        if self.error is None:
            self.error = why
        self._lock.notify_all()
        self._poke()

    def _poke(self) -> None:
        """Wake the fault thread (a new descriptor, a failure); close() closes the pipe."""
        if not self._closed:
            os.write(self._wake_w, b"x")

    def _complete(self) -> bool:
        return self._finished and all(s.left == 0 for s in self.spaces)

    def _stopping(self) -> bool:
        return self._closed or self.error is not None

    def _intake(self) -> None:
        """Take CRIU's connection, then each process's PID and descriptor."""
        assert self._listener is not None
        while not self._closed:
            ready, _, _ = select.select([self._listener, self._wake_r], [], [], 1.0)
            if self._listener in ready:
                break
        else:
            return
        client, _ = self._listener.accept()
        client.settimeout(0.5)  # so that a stop is seen while CRIU is silent
        with client:
            while not self._closed:  # after a failure too: each descriptor must be served
                head = self._recv_exact(client, 4)
                if head is None:
                    with self._lock:
                        if not self._closed and not self._finished:
                            self._fail("CRIU closed the connection before the restore finished")
                    return
                (value,) = struct.unpack("<i", head)
                if value == RESTORE_FINISHED:  # nothing follows it
                    with self._lock:
                        self._finished = True
                        self._settled()
                    return
                if value < 0:
                    continue  # a zombie: no memory
                while True:
                    try:
                        _, fds, _, _ = socket.recv_fds(client, 1, 1)
                        break
                    except TimeoutError:
                        if self._closed:
                            return
                if not fds:
                    raise LazyPagesError(f"CRIU sent PID {value} without its userfaultfd")
                self._add_space(value, fds[0])

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                part = sock.recv(n - len(data))
            except TimeoutError:
                if self._closed:
                    return None
                continue
            if not part:
                return None
            data += part
        return data

    def _prepare(self) -> None:
        """Every process's plan and mapped pages image, before CRIU hands over descriptors."""
        try:
            for pid in pstree.pids(self.directory):
                if self._stopping():
                    return
                if (self.directory / f"pagemap-{pid}.img").exists():  # a zombie has none
                    self._images[pid] = PagesImage(self.directory, pid, self.page)
        finally:
            self._prepared.set()

    def _add_space(self, pid: int, uffd: int) -> None:
        try:
            self._prepared.wait()
            image = self._images.get(pid)
            if image is None:  # not in pstree.img (or the preparation failed): fail, say why
                image = self._images[pid] = PagesImage(self.directory, pid, self.page)
            space = image.space(uffd)
        except Exception as exc:  # served with zero pages until the end (below)
            space = Space(pid, uffd)
            with self._lock:
                self._fail(f"PID {pid}: {exc}")
        with self._lock:
            if not self.stats.first_ns:
                self.stats.first_ns = time.monotonic_ns()
            self.spaces.append(space)
            self.stats.processes += 1
            if self.error is None:
                self._waiting.extend(space.pieces)
            self._lock.notify_all()
        self._poke()  # the fault thread polls the new descriptor

    def _take(self) -> Piece | None:
        with self._lock:
            while True:
                if self._stopping() or self._complete():
                    return None
                while self._waiting:
                    piece = self._waiting.popleft()
                    if piece.state == 0:
                        piece.state = 1
                        return piece
                self._lock.wait(timeout=0.5)

    def _copy_loop(self) -> None:
        while (piece := self._take()) is not None:
            self._copy(piece)

    def _copy(self, piece: Piece) -> None:
        """Copy one piece in (its state is 1, owned by this thread), straight from the mapped
        pages image: the kernel reads the page cache into the new pages, one copy. Its place
        is read afresh before each attempt (a mapping change may have moved or split it)."""
        space = piece.space
        done = 0
        while True:
            with self._lock:
                while space.changing and not self._stopping():
                    self._lock.wait(timeout=0.5)
                if piece.state == GONE:
                    return  # unmapped or discarded, or split: its parts are queued
                if done >= piece.length:
                    break
                op = _Copy(piece.start + done, space.image.address + piece.offset + done,
                           piece.length - done, 0, 0)
                space.copying += 1
            try:
                copied = _libc.ioctl(space.uffd, UFFDIO_COPY, ctypes.addressof(op)) == 0
                err = 0 if copied else ctypes.get_errno()
            finally:
                with self._lock:
                    space.copying -= 1
                    if space.changing:
                        self._lock.notify_all()
            if copied:
                break
            if op.copy > 0:
                done += op.copy
            if err == errno.EEXIST:  # a page already there: leave it, go on after it
                done += self.page
                continue
            if err == errno.EAGAIN or (err == errno.ENOENT and not self._finished_seen()):
                # not registered yet (CRIU's restorer registers each mapping as it places it),
                # or the mappings are changing: hand the rest back and try again shortly
                self._requeue(piece, done)
                time.sleep(0.0005)
                return
            raise LazyPagesError(f"UFFDIO_COPY of {piece.length - done} bytes at "
                                 f"{piece.start + done:#x} in PID {space.pid}: {os.strerror(err)}")
        self._done(piece)

    def _finished_seen(self) -> bool:
        with self._lock:
            return self._finished

    def _requeue(self, piece: Piece, done: int) -> None:
        with self._lock:
            if piece.state == GONE:
                return
            if done:  # what is in stays in: the rest becomes the piece
                piece.start += done
                piece.offset += done
                piece.length -= done
                self.stats.bytes += done
                i = piece.space.pieces.index(piece)
                piece.space.starts[i] = piece.start
            piece.state = 0
            self._waiting.append(piece)
            self._lock.notify()

    def _done(self, piece: Piece) -> None:
        with self._lock:
            if piece.state == GONE:
                return
            piece.state = 2
            piece.space.left -= 1
            self.stats.bytes += piece.length
            self.stats.pieces += 1
            self._settled()

    def _serve_faults(self) -> None:
        """Read every descriptor's messages: serve page faults first, follow the changes to
        the mappings (see the module's doc).

        After a failure this goes on until close(), every fault answered with a zero page:
        CRIU's restorer holds its own reference to each descriptor until it ends, so a fault
        left unanswered would hang CRIU, and closing ours would not release it. CRIU then
        finishes, and the restore kills the processes, which never ran, and restores again."""
        poller = select.epoll()
        poller.register(self._wake_r, select.EPOLLIN)
        watched: set[int] = set()
        try:
            while not self._closed:
                with self._lock:
                    new = [s for s in self.spaces if s.uffd >= 0 and s.uffd not in watched]
                    spaces = list(self.spaces)
                for s in new:
                    poller.register(s.uffd, select.EPOLLIN)
                    watched.add(s.uffd)
                if self.error is not None:  # a fault read before the failure, on a piece that
                    for s in spaces:       # will never come, sleeps: it faults again, on zeros
                        if s.pieces and s.uffd >= 0:
                            last = s.pieces[-1]
                            self._wake(s, s.pieces[0].start, last.start + last.length)
                for fd, _ in poller.poll(0.5):
                    if fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        continue
                    space = next(s for s in self.spaces if s.uffd == fd)
                    self._read_messages(space)
        finally:
            poller.close()

    def _read_messages(self, space: Space) -> None:
        """One read of space's messages: the changes to its mappings are applied before any
        copy into it resumes, then its faults are served."""
        with self._lock:  # no copy lands on the old layout once a change has been read
            space.changing = True
            while space.copying:
                self._lock.wait(timeout=0.5)
        faults = []
        try:
            try:
                data = os.read(space.uffd, MSG_BYTES * 64)
            except (BlockingIOError, InterruptedError):
                return
            for pos in range(0, len(data) - MSG_BYTES + 1, MSG_BYTES):
                event = data[pos]
                if event == EVENT_PAGEFAULT:
                    faults.append(struct.unpack_from("<Q", data, pos + 16)[0])
                else:
                    self._follow(space, event, struct.unpack_from("<QQQ", data, pos + 8))
        finally:
            with self._lock:
                space.changing = False
                self._lock.notify_all()
        for fault in faults:
            self._answer_fault(space, fault & ~(self.page - 1))

    def _follow(self, space: Space, event: int, arg: tuple[int, int, int]) -> None:
        """Apply one change of space's mappings (uffd_msg's arg: remove.start/end, or
        remap.from/to/len)."""
        if event == EVENT_FORK:  # the child's descriptor, now ours: closing it lets the child go
            os.close(arg[0] & 0xFFFFFFFF)
        with self._lock:
            if event in (EVENT_UNMAP, EVENT_REMOVE) and self.error is None:
                self._forget(space, arg[0], arg[1])
            elif event == EVENT_REMAP and self.error is None:
                self._move(space, arg[0], arg[1], arg[2])
            elif self.error is None:
                self._fail(f"PID {space.pid} changed its memory map "
                           f"({_EVENT_NAMES.get(event, event)}) while its pages were being "
                           "restored")

    def _split_at(self, space: Space, at: int) -> None:
        """A piece boundary at `at` (with self._lock held): the piece across it is replaced by
        its two parts (one not yet in is GONE, its parts queued; its owner, if any, drops it)."""
        piece = space.find(at)
        if piece is None or piece.start == at:
            return
        cut = at - piece.start
        state = 2 if piece.state == 2 else 0
        parts = [Piece(space, piece.start, cut, piece.offset, state),
                 Piece(space, at, piece.length - cut, piece.offset + cut, state)]
        i = space.pieces.index(piece)
        space.pieces[i:i + 1] = parts
        space.starts[i:i + 1] = [p.start for p in parts]
        if state == 0:
            piece.state = GONE
            space.left += 1
            self._waiting.extend(parts)
            self._lock.notify_all()

    def _forget(self, space: Space, start: int, end: int) -> None:
        """[start, end) was unmapped or discarded: nothing of the image goes there any more (a
        discarded range faults in zero pages, as the program asked). With self._lock held."""
        self._split_at(space, start)
        self._split_at(space, end)
        kept = []
        for p in space.pieces:
            if start <= p.start < end:
                if p.state in (0, 1):
                    space.left -= 1
                    self.stats.dropped_bytes += p.length
                p.state = GONE
            else:
                kept.append(p)
        space.pieces = kept
        space.reindex()
        self.stats.changes += 1
        self._settled()

    def _move(self, space: Space, old: int, new: int, length: int) -> None:
        """mremap moved [old, old + length) to new: its pieces go with it (what was at new is
        replaced). With self._lock held."""
        self._forget(space, new, new + length)
        self._split_at(space, old)
        self._split_at(space, old + length)
        for p in space.pieces:
            if old <= p.start < old + length:
                p.start += new - old
        space.reindex()

    def _settled(self) -> None:
        """After the last piece came in, was dropped, or CRIU said it had finished (with
        self._lock held): once every piece is in, note when, and wake whoever waits for it."""
        if self._complete():
            if not self.stats.done_ns:
                self.stats.done_ns = time.monotonic_ns()
            self._lock.notify_all()

    def _answer_fault(self, space: Space, page: int) -> None:
        try:
            if self.error is None:
                self._serve_fault(space, page)
                return
        except Exception as exc:  # the fault is answered all the same
            with self._lock:
                self._fail(f"serving a page fault in PID {space.pid}: {exc}")
        self._zero_or_wake(space, page)

    def _serve_fault(self, space: Space, page: int) -> None:
        with self._lock:
            self.stats.faults += 1
            piece = space.find(page)
            mine = piece is not None and piece.state == 0
            if mine:
                piece.state = 1
        if mine:
            self._copy(piece)  # the copy wakes the faulting thread
        elif piece is None:
            err = self._zero_or_wake(space, page)
            if err:
                raise LazyPagesError(f"UFFDIO_ZEROPAGE at {page:#x} in PID {space.pid}: "
                                     f"{os.strerror(err)}")
        elif piece.state == 2:
            self._wake(space, page)  # in already: a fault read after the copy woke it
        # state 1: the thread copying it wakes the fault when it is done

    def _zero_or_wake(self, space: Space, page: int) -> int:
        """A zero page at page (memory the process never had, or after a failure); a page
        already there is only woken. 0, or UFFDIO_ZEROPAGE's errno when neither worked."""
        op = _Zero(page, self.page, 0, 0)
        if _libc.ioctl(space.uffd, UFFDIO_ZEROPAGE, ctypes.addressof(op)) == 0:
            with self._lock:
                self.stats.zero_pages += 1
            return 0
        err = ctypes.get_errno()
        self._wake(space, page)
        return 0 if err == errno.EEXIST else err

    def _wake(self, space: Space, page: int, end: int = 0) -> None:
        wake = _Range(page, (end or page + self.page) - page)
        _libc.ioctl(space.uffd, UFFDIO_WAKE, ctypes.addressof(wake))

