"""DIR/restoreprof.json: what a checkpoint holds, and the check that it is whole.

Every image file is recorded with its size and the SHA-256 of each 32 MiB segment, so a
truncated or altered checkpoint is caught before CRIU is started. Segments hash in parallel
(hashlib releases the GIL), which keeps the check well under the time of a restore.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from restoreprof.errors import RestoreprofError

MANIFEST_NAME = "restoreprof.json"
FORMAT = "restoreprof-checkpoint/1"
# Small enough that even a checkpoint of a few images keeps every core hashing.
SEGMENT_BYTES = 32 << 20
_READ_BYTES = 8 << 20


@dataclass
class ProcessRecord:
    pid: int
    comm: str
    cuda: bool
    cuda_state: str | None = None   # the driver's state after the checkpoint
    offload: dict | None = None      # GPU memory snapshot written by the interception library
    stopped: bool = False            # stopped by a signal when checkpointed: restored stopped
    coverage: dict | None = None     # GPU memory offloaded per kind, and left to the driver


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

    @property
    def cuda_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.cuda]

    def save(self, directory: Path) -> None:
        tmp = directory / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, directory / MANIFEST_NAME)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise RestoreprofError(f"{directory} does not exist", hint="pass the -D DIR of a checkpoint")
        if not path.exists():
            raise RestoreprofError(
                f"{directory} is not a restoreprof checkpoint (no {MANIFEST_NAME})",
                hint="make one with 'restoreprof checkpoint -p PID -D DIR'",
            )
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            data["processes"] = [ProcessRecord(**p) for p in data["processes"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise RestoreprofError(
                f"{path} is corrupt: {exc}", hint="the checkpoint cannot be trusted; take a new one"
            ) from exc


def _segment_digest(path: Path, offset: int, length: int) -> str:
    h = hashlib.sha256()
    buffer = bytearray(min(_READ_BYTES, max(length, 1)))
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < length:
            n = os.preadv(fd, [view[: min(len(buffer), length - done)]], offset + done)
            if n <= 0:
                break
            h.update(view[:n])
            done += n
    finally:
        os.close(fd)
    return h.hexdigest()


def _segments(size: int, segment: int) -> list[tuple[int, int]]:
    return [(off, min(segment, size - off)) for off in range(0, size, segment)] or [(0, 0)]


def _hash_files(directory: Path, names: list[str], threads: int,
                segment: int = SEGMENT_BYTES) -> dict[str, list[str]]:
    jobs = [(name, off, length) for name in names
            for off, length in _segments((directory / name).stat().st_size, segment)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = list(pool.map(lambda j: _segment_digest(directory / j[0], j[1], j[2]), jobs))
    out: dict[str, list[str]] = {name: [] for name in names}
    for (name, _, _), digest in zip(jobs, digests, strict=True):
        out[name].append(digest)
    return out


def default_threads() -> int:
    return min(16, os.cpu_count() or 1)


def record_images(directory: Path, threads: int | None = None,
                  segment: int = SEGMENT_BYTES) -> list[dict]:
    """Size and segment digests of every file in directory except the manifest and logs."""
    names = sorted(p.name for p in directory.iterdir()
                   if p.is_file() and p.name != MANIFEST_NAME and not p.name.endswith((".log", ".tmp")))
    digests = _hash_files(directory, names, threads or default_threads(), segment)
    return [{"name": n, "bytes": (directory / n).stat().st_size, "sha256_segments": digests[n]}
            for n in names]


def is_page_data(name: str) -> bool:
    """CRIU's pages-N.img hold memory contents only, which CRIU copies without reading them;
    every other image (pagemap, core, mm, files...) steers what CRIU does."""
    return name.startswith("pages-") and name.endswith(".img")


def verify_images(directory: Path, manifest: Manifest, threads: int | None = None,
                  skip: tuple[str, ...] = (), only=None) -> None:
    """Raise RestoreprofError naming the first missing, truncated or altered image. Every image's
    presence and size is checked; contents are hashed for those only(name) accepts, not in skip."""
    names = []
    for image in manifest.images:
        path = directory / image["name"]
        if not path.exists():
            raise RestoreprofError(f"checkpoint image {path} is missing",
                                   hint="the checkpoint is incomplete; take a new one")
        size = path.stat().st_size
        if size != image["bytes"]:
            raise RestoreprofError(
                f"checkpoint image {path} is {size} bytes, the manifest says {image['bytes']} (truncated?)",
                hint="the checkpoint is damaged; restore from an intact copy or take a new one",
            )
        if image["name"] not in skip and (only is None or only(image["name"])):
            names.append(image["name"])
    expected = {i["name"]: i["sha256_segments"] for i in manifest.images}
    found = _hash_files(directory, names, threads or default_threads(), manifest.segment_bytes)
    for name, digests in found.items():
        if digests != expected[name]:
            raise RestoreprofError(
                f"checkpoint image {directory / name} was altered (checksum mismatch)",
                hint="the checkpoint is damaged; restore from an intact copy or take a new one",
            )
