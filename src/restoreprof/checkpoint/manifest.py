"""DIR/restoreprof.json: what a checkpoint holds, and the check that it is whole.

Every image file is recorded with its size and the BLAKE3-256 of each 32 MiB segment, so a
truncated or altered checkpoint is caught before CRIU is started (the page data while CRIU
restores). Segments hash in parallel, each in one call into restoreprof's native library
(rp_blake3_file: BLAKE3's own SIMD code, the GIL given up once per segment). BLAKE3 replaced
SHA-256 in the seventh session: on the H200 the SHA-256 check of a 16 GB model's 1.1 GB of
page images, 16 Python threads hashing a MiB at a time, slowed the restore it overlaps by
0.05 to 0.08 s (CRIU and the page copy wait for the CPU). Checkpoints with SHA-256 digests are
still read and checked, and where the native library was not built (it needs the CUDA headers)
images are recorded with SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from restoreprof.checkpoint.trust import CHUNK_DIR_SUFFIX
from restoreprof.errors import IntegrityError, RestoreprofError

MANIFEST_NAME = "restoreprof.json"
# Files that checkpoints of restoreprof before manifest version 1 left unlisted (CRIU's logs and
# stats, the PID file of a restore): tolerated there, since a restore never reads them.
LEGACY_UNLISTED = frozenset({"criu-dump.log", "criu-restore.log", "restored.pid", "stats-dump",
                             "stats-restore"})
# Present only while a checkpoint is being made (see checkpoint.journal).
JOURNAL_NAME = ".restoreprof-journal.json"
FORMAT = "restoreprof-checkpoint/1"
# Small enough that even a checkpoint of a few images keeps every core hashing.
SEGMENT_BYTES = 32 << 20
# SHA-256 (older checkpoints), one read: fits a core's L2 cache, so the hash reads what the copy
# has just put there. The buffer is each hashing thread's own, made once.
_READ_BYTES = 1 << 20
_buffers = threading.local()
# An image entry's digests, by algorithm: what record_images writes first.
DIGEST_KEYS = {"blake3": "blake3_segments", "sha256": "sha256_segments"}


@dataclass
class ProcessRecord:
    pid: int
    comm: str
    cuda: bool
    cuda_state: str | None = None   # the driver's state after the checkpoint
    offload: dict | None = None      # GPU memory snapshot written by the interception library
    stopped: bool = False            # stopped by a signal when checkpointed: restored stopped
    coverage: dict | None = None     # GPU memory offloaded per kind, and left to the driver
    restore_tid: int | None = None   # the driver's restore thread (CRIU keeps thread IDs)


@dataclass
class Manifest:
    root_pid: int
    processes: list[ProcessRecord]
    gpus: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    shell_job: bool = False
    segment_bytes: int = SEGMENT_BYTES
    versions: dict = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT
    version: int = 1  # of this file's layout (schemas/manifest.json)

    @property
    def cuda_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.cuda]

    def save(self, directory: Path, durable: bool = True) -> None:
        """Written beside and renamed: the manifest is the commit point of a checkpoint, whole or
        absent. durable: on disk before the rename (a checkpoint whose images are not synced
        gains nothing from it: a crash that loses them is caught by their checksums)."""
        tmp = directory / (MANIFEST_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self), indent=2) + "\n")
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, directory / MANIFEST_NAME)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise RestoreprofError(f"{directory} does not exist", hint="pass the -D DIR of a checkpoint")
        if (directory / JOURNAL_NAME).exists():
            raise IntegrityError(
                f"{directory} holds an interrupted checkpoint ({JOURNAL_NAME}: the checkpoint "
                "did not finish, and its guardian has not put the process back yet)",
                hint="wait a few seconds and look again; if it stays, see "
                     f"{directory / JOURNAL_NAME} for where the process stands")
        if not path.exists():
            raise RestoreprofError(
                f"{directory} is not a restoreprof checkpoint (no {MANIFEST_NAME})",
                hint="make one with 'restoreprof checkpoint -p PID -D DIR'",
            )
        try:
            data = json.loads(path.read_text())
            _check_types(data)
            data.setdefault("version", 0)  # written before the manifest covered every file
            data["processes"] = [ProcessRecord(**p) for p in data["processes"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise IntegrityError(
                f"{path} is corrupt: {exc}", hint="the checkpoint cannot be trusted; take a new one"
            ) from None

    def check_files(self, directory: Path) -> None:
        """Every file in directory is listed (an unlisted one would never be checked), every
        listed name stays inside it, and the processes match CRIU's own list."""
        listed = [i["name"] for i in self.images]
        for name in listed:
            check_name(name)
        if len(set(listed)) != len(listed):
            raise IntegrityError(f"{directory / MANIFEST_NAME} lists an image twice",
                                 hint="the checkpoint cannot be trusted; take a new one")
        present = set(os.listdir(directory)) - {MANIFEST_NAME}
        # a listed snapshot's chunk folder: its chunks are checked piece by piece as they load
        # (the table's crc32c or BLAKE3), the folder's privacy checked (trust.py)
        chunk_dirs = {f"{p.offload.get('snapshot')}{CHUNK_DIR_SUFFIX}"
                      for p in self.processes if p.offload}
        present -= {n for n in chunk_dirs
                    if os.path.isdir(directory / n) and not os.path.islink(directory / n)}
        if self.version == 0:  # an older restoreprof's logs, which CRIU's restore never reads
            present -= LEGACY_UNLISTED
        unlisted = sorted(present - set(listed))
        if unlisted:
            raise IntegrityError(
                f"{directory / unlisted[0]} is not in the manifest: a file the checksums do not "
                "cover could steer CRIU, so the checkpoint is refused",
                hint=f"if it is yours (an old restore's log, say), move it out of {directory}")
        for p in self.processes:
            if p.offload and p.offload.get("snapshot") not in listed:
                raise IntegrityError(
                    f"PID {p.pid}'s GPU snapshot {p.offload.get('snapshot')!r} is not among the "
                    "checksummed images", hint="the checkpoint cannot be trusted; take a new one")
        if not self.processes:
            raise IntegrityError(f"{directory / MANIFEST_NAME} lists no process",
                                 hint="the checkpoint cannot be trusted; take a new one")

    def check_processes(self, criu_pids: list[int]) -> None:
        """The manifest's processes are exactly CRIU's (pstree.img, checked against its digest)."""
        mine = sorted(p.pid for p in self.processes)
        if mine != sorted(criu_pids) or self.root_pid != criu_pids[0]:
            raise IntegrityError(
                f"the manifest lists processes {mine[:8]} (root {self.root_pid}), CRIU's images "
                f"hold {sorted(criu_pids)[:8]} (root {criu_pids[0]})",
                hint="the checkpoint cannot be trusted; take a new one")


def check_name(name: object) -> str:
    """An image name is a plain file name in the checkpoint folder: no path, no escape."""
    if (not isinstance(name, str) or not name or name in (".", "..", MANIFEST_NAME)
            or "/" in name or "\0" in name or name != os.path.basename(name)):
        raise IntegrityError(f"the manifest names an image {name!r} outside the checkpoint folder",
                             hint="the checkpoint cannot be trusted; take a new one")
    return name


_TYPES = {"root_pid": int, "processes": list, "gpus": list, "images": list, "steps": list,
          "shell_job": bool, "segment_bytes": int, "versions": dict, "created": str, "format": str,
          "version": int}
_PROCESS_TYPES = {"pid": int, "comm": str, "cuda": bool, "cuda_state": (str, type(None)),
                  "offload": (dict, type(None)), "stopped": bool, "coverage": (dict, type(None)),
                  "restore_tid": (int, type(None))}


def _is(value, types) -> bool:
    # bool is an int to Python, never to a manifest
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        return False
    return isinstance(value, types)


def _check_types(data) -> None:
    """The manifest's fields have the types restoreprof wrote (ValueError naming the first
    that does not): a hand-edited or hostile manifest gets an error, never a traceback."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
    for key in ("root_pid", "processes"):
        if key not in data:
            raise ValueError(f"no {key!r}")
    for key, value in data.items():
        if key not in _TYPES:
            raise ValueError(f"unknown field {key!r} (written by a newer restoreprof?)")
        if not _is(value, _TYPES[key]):
            raise ValueError(f"{key!r} is a {type(value).__name__}")
    if data["root_pid"] <= 0 or data.get("segment_bytes", SEGMENT_BYTES) <= 0:
        raise ValueError("root_pid and segment_bytes must be positive")
    for p in data["processes"]:
        if not isinstance(p, dict) or not {"pid", "comm", "cuda"} <= set(p):
            raise ValueError("a process entry is not an object with pid, comm and cuda")
        for key, value in p.items():
            if key not in _PROCESS_TYPES or not _is(value, _PROCESS_TYPES[key]):
                raise ValueError(f"process field {key!r} is missing its type or unknown")
        if p["pid"] <= 0:
            raise ValueError(f"process PID {p['pid']}")
        offload = p.get("offload")
        if offload is not None and not (isinstance(offload.get("snapshot"), str)
                                        and _is(offload.get("bytes", 0), int)):
            raise ValueError("an offload entry without a snapshot name")
    segment = data.get("segment_bytes", SEGMENT_BYTES)
    for image in data.get("images", []):
        keys = [k for k in DIGEST_KEYS.values() if isinstance(image, dict) and k in image]
        if not (isinstance(image, dict) and _is(image.get("bytes"), int) and image["bytes"] >= 0
                and len(keys) == 1 and set(image) == {"name", "bytes", keys[0]}
                and isinstance(image[keys[0]], list)
                and all(isinstance(d, str) for d in image[keys[0]])):
            raise ValueError("an image entry is not {name, bytes, blake3_segments} (or "
                             "sha256_segments)")
        check_name(image.get("name"))
        if len(image[keys[0]]) != len(_segments(image["bytes"], segment)):
            raise ValueError(f"image {image['name']!r} has the wrong number of segment digests")
    for key in ("gpus", "steps"):
        if not all(isinstance(x, dict) for x in data.get(key, [])):
            raise ValueError(f"an entry of {key!r} is not an object")


def _read_buffer() -> memoryview:
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(_READ_BYTES))
    return view


def digests_of(image: dict) -> tuple[str, list]:
    """(algorithm, segment digests) of a manifest's image entry."""
    for algorithm, key in DIGEST_KEYS.items():
        if key in image:
            return algorithm, image[key]
    raise KeyError("no segment digests")


def _native_library():
    """restoreprof's native library (its BLAKE3), or None where it was not built (it needs the
    CUDA headers: restoreprof works without it, and doctor says so)."""
    from restoreprof.optimizer.engine import library

    try:
        return library()
    except (RestoreprofError, OSError):
        return None


def _blake3_digest(path: Path, offset: int, length: int) -> str:
    import ctypes

    lib = _native_library()
    if lib is None:
        raise RestoreprofError(
            f"checking {path} needs restoreprof's native library (its checksums are BLAKE3), "
            "which is not built here", hint="install restoreprof where the CUDA toolkit's "
            "headers are (cuda.h), or run ./scripts/setup.sh; 'restoreprof doctor' says why")
    out = ctypes.create_string_buffer(32)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if lib.rp_blake3_file(fd, offset, length, out) != 0:
            raise IntegrityError(f"reading checkpoint image {path} failed (truncated?)",
                                 hint="the checkpoint is damaged; restore from an intact copy "
                                      "or take a new one")
    finally:
        os.close(fd)
    return out.raw.hex()


def _segment_digest(path: Path, offset: int, length: int, algorithm: str) -> str:
    if algorithm == "blake3":
        return _blake3_digest(path, offset, length)
    h = hashlib.sha256()
    view = _read_buffer()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        done = 0
        while done < length:
            n = os.preadv(fd, [view[: min(len(view), length - done)]], offset + done)
            if n <= 0:
                break
            h.update(view[:n])
            done += n
    finally:
        os.close(fd)
    return h.hexdigest()


def _segments(size: int, segment: int) -> list[tuple[int, int]]:
    return [(off, min(segment, size - off)) for off in range(0, size, segment)] or [(0, 0)]


def _hash_files(directory: Path, names: list[str], threads: int, segment: int,
                algorithms: dict[str, str]) -> dict[str, list[str]]:
    """{name: segment digests}, each name hashed with algorithms[name] ("blake3", "sha256")."""
    jobs = [(name, off, length) for name in names
            for off, length in _segments((directory / name).stat().st_size, segment)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = list(pool.map(lambda j: _segment_digest(
            directory / j[0], j[1], j[2], algorithms[j[0]]), jobs))
    out: dict[str, list[str]] = {name: [] for name in names}
    for (name, _, _), digest in zip(jobs, digests, strict=True):
        out[name].append(digest)
    return out


def default_threads() -> int:
    return min(16, os.cpu_count() or 1)


def record_images(directory: Path, threads: int | None = None,
                  segment: int = SEGMENT_BYTES) -> list[dict]:
    """Size and segment digests of every file in directory but the manifest and the journal: a
    restore refuses any file the manifest does not cover (CRIU's log and stats included)."""
    names = sorted(p.name for p in directory.iterdir()
                   if p.is_file() and not p.is_symlink()
                   and p.name not in (MANIFEST_NAME, MANIFEST_NAME + ".tmp")
                   and not p.name.startswith(JOURNAL_NAME))  # the journal and its next version
    # BLAKE3 through the native library; SHA-256 where it was not built
    algorithm = "blake3" if _native_library() is not None else "sha256"
    digests = _hash_files(directory, names, threads or default_threads(), segment,
                          dict.fromkeys(names, algorithm))
    return [{"name": n, "bytes": (directory / n).stat().st_size,
             DIGEST_KEYS[algorithm]: digests[n]} for n in names]


def is_page_data(name: str) -> bool:
    """CRIU's pages-N.img hold memory contents only, which CRIU copies without reading them;
    every other image (pagemap, core, mm, files...) steers what CRIU does."""
    return name.startswith("pages-") and name.endswith(".img")


class _PassedImages:
    """Image files that passed their digests in this process, by what the kernel says of each
    file: device, inode, size, and the times of its last change of contents (mtime) and of any
    change at all (ctime, which no caller can set: a write, a truncate, a rename in place, an
    utime that puts mtime back, each moves it). A warm pool restores the same checkpoint again
    and again; its page images are hashed once (1.1 GB took 0.1 to 0.35 s of 16 threads on the
    H200, under CRIU and the page server) and then only looked at, until one changes. A
    one-shot restore starts with none."""

    LIMIT = 4096  # files remembered; beyond that, forgotten all at once
    # A file's times tick with the kernel's clock (a few ms), so a file changed within its
    # last change's tick keeps its ctime: only a file left alone this long is remembered,
    # and any later change moves its ctime.
    SETTLED_NS = 2_000_000_000

    def __init__(self) -> None:
        self._passed: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def known(self, st: os.stat_result, digests: tuple) -> bool:
        with self._lock:
            return self._passed.get(_file_identity(st)) == digests

    def add(self, st: os.stat_result, digests: tuple) -> None:
        if time.time_ns() - st.st_ctime_ns < self.SETTLED_NS:
            return
        with self._lock:
            if len(self._passed) >= self.LIMIT:
                self._passed.clear()
            self._passed[_file_identity(st)] = digests


def _file_identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


PASSED_IMAGES = _PassedImages()


def verify_images(directory: Path, manifest: Manifest, threads: int | None = None,
                  skip: tuple[str, ...] = (), only=None) -> None:
    """Raise RestoreprofError naming the first missing, truncated or altered image. Every image's
    presence and size is checked; contents are hashed for those only(name) accepts, not in skip,
    unless this process hashed the very same file already (PASSED_IMAGES)."""
    expected = {i["name"]: digests_of(i) for i in manifest.images}
    seen: dict[str, os.stat_result] = {}  # what each hashed file was before its hashing
    names = []
    for image in manifest.images:
        path = directory / check_name(image["name"])
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise IntegrityError(f"checkpoint image {path} is missing",
                                 hint="the checkpoint is incomplete; take a new one") from None
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"checkpoint image {path} is not a plain file",
                                 hint="the checkpoint cannot be trusted; take a new one")
        size = st.st_size
        if size != image["bytes"]:
            raise IntegrityError(
                f"checkpoint image {path} is {size} bytes, the manifest says {image['bytes']} (truncated?)",
                hint="the checkpoint is damaged; restore from an intact copy or take a new one",
            )
        name = image["name"]
        if name not in skip and (only is None or only(name)) and \
                not PASSED_IMAGES.known(st, _as_key(expected[name])):
            names.append(name)
            seen[name] = st
    found = _hash_files(directory, names, threads or default_threads(), manifest.segment_bytes,
                        {name: algorithm for name, (algorithm, _) in expected.items()})
    for name, digests in found.items():
        if digests != expected[name][1]:
            raise IntegrityError(
                f"checkpoint image {directory / name} was altered (checksum mismatch)",
                hint="the checkpoint is damaged; restore from an intact copy or take a new one",
            )
    for name in found:  # passed, and unchanged while hashed: remembered
        with contextlib.suppress(OSError):
            if _file_identity(os.lstat(directory / name)) == _file_identity(seen[name]):
                PASSED_IMAGES.add(seen[name], _as_key(expected[name]))


def _as_key(digests: tuple[str, list[str]]) -> tuple:
    algorithm, segments = digests
    return algorithm, tuple(segments)
