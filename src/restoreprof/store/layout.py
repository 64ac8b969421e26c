"""The per-host snapshot store: one content-addressed chunk folder shared by checkpoints.

    STORE/config.json       format and chunk size (fixed when the store is made: chunks of
                            another size would never match)
    STORE/chunks/hh/<hash>  the chunks, named by BLAKE3-256 (written by the interception
                            library: temporary name, then rename)
    STORE/refs/<id>.json    one per checkpoint: its folder and every chunk it names
    STORE/lock              flock: a checkpoint holds it shared from its first chunk to its
                            manifest; gc holds it exclusive. A crash releases it.

A checkpoint is complete only once its manifest names its reference (written last, atomically):
a reference whose checkpoint has no such manifest is a crashed or failed one, which gc drops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError

DEFAULT_STORE = Path("/var/lib/restoreprof/store")
STORE_ENV = "RESTOREPROF_STORE"
FORMAT = "restoreprof-store/1"
# Dedup granularity, one file, and the engine's staging chunk at once. Cold reads of many small
# files run below one big file's rate (CPU machine, 16 readers, caches dropped, medians: 8 MiB
# files 1.09 GB/s, 16 MiB 1.3, 64 MiB 1.46, one file 1.48; RESULTS.md), while each MiB costs
# pinned staging (2 buffers x threads) and rewrite granularity: 16 MiB keeps a 16 GB model to
# 1000 files and the staging to 512 MiB with 16 threads.
DEFAULT_CHUNK_MB = 16


def default_store() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


@dataclass(frozen=True)
class Store:
    root: Path
    chunk_mb: int

    @property
    def chunks(self) -> Path:
        return self.root / "chunks"

    @property
    def refs(self) -> Path:
        return self.root / "refs"

    @classmethod
    def open(cls, root: Path | None = None, *, create: bool = False,
             chunk_mb: int = DEFAULT_CHUNK_MB) -> Store:
        """The store at root (default: $RESTOREPROF_STORE, else /var/lib/restoreprof/store);
        made (mode 0700) when create and absent."""
        root = Path(root or default_store()).resolve()
        config = root / "config.json"
        if not config.exists():
            if not create:
                raise RestoreprofError(f"no snapshot store at {root}",
                                       hint="make one with 'restoreprof checkpoint --store "
                                            f"{root} ...', or pass --store PATH")
            _make(root, chunk_mb)
        _check_private(root)
        try:
            data = json.loads(config.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(root, int(data["chunk_mb"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RestoreprofError(f"{config} is damaged: {exc}",
                                   hint="restore it from a backup, or move the store aside") from None

    @contextlib.contextmanager
    def locked(self, exclusive: bool, wait: bool = True) -> Iterator[None]:
        """Shared (a checkpoint writing) or exclusive (gc) hold on the store."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise RestoreprofError(f"the store {self.root} is busy (a checkpoint is writing "
                                       "to it)", hint="retry once it has finished") from None
            yield
        finally:
            os.close(fd)

    def chunk_files(self) -> Iterator[Path]:
        """Every complete chunk (temporary files left out)."""
        if not self.chunks.is_dir():
            return
        for sub in sorted(self.chunks.iterdir()):
            if sub.is_dir():
                yield from (p for p in sub.iterdir() if not p.name.startswith("."))

    def temporary_files(self) -> Iterator[Path]:
        if self.chunks.is_dir():
            yield from self.chunks.glob("*/.tmp-*")


def _make(root: Path, chunk_mb: int) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        for sub in ("chunks", "refs"):
            (root / sub).mkdir(mode=0o700, exist_ok=True)
        tmp = root / "config.json.tmp"
        tmp.write_text(json.dumps({"format": FORMAT, "chunk_mb": chunk_mb}) + "\n")
        os.replace(tmp, root / "config.json")
    except OSError as exc:
        raise RestoreprofError(f"cannot make the snapshot store {root}: {exc.strerror}",
                               hint="run as root, or pass --store PATH to a folder you own") from None


def _check_private(root: Path) -> None:
    """The store holds every checkpointed process's GPU memory: only its owner may read it."""
    st = root.stat()
    if st.st_uid != os.geteuid():
        raise RestoreprofError(f"the snapshot store {root} belongs to uid {st.st_uid}, not you",
                               hint="run as that user (root for the default store), or pass "
                                    "--store PATH to a store of your own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise RestoreprofError(
            f"the snapshot store {root} is open to others (mode {stat.S_IMODE(st.st_mode):o}, "
            f"owner uid {st.st_uid})",
            hint=f"chmod 700 {root}")
