"""restoreprof store verify: hash every chunk and name those whose contents no longer match
their name. A restore refuses such a chunk anyway (the engine checks each one as it copies);
this finds them ahead of a restore, and --delete lets the next checkpoint write them afresh
(a checkpoint only skips a chunk that is there and complete)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from restoreprof.store.layout import Store


@dataclass
class VerifyResult:
    checked: int = 0
    checked_bytes: int = 0
    damaged: list[str] = field(default_factory=list)


def verify(store: Store, *, delete: bool = False, threads: int | None = None) -> VerifyResult:
    from restoreprof.optimizer.engine import chunk_name as digest  # frees the GIL

    def check(path: Path) -> tuple[Path, int, bool]:
        data = path.read_bytes()
        return path, len(data), digest(data) == path.name

    result = VerifyResult()
    with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as pool:
        for path, size, good in pool.map(check, list(store.chunk_files())):
            result.checked += 1
            result.checked_bytes += size
            if not good:
                result.damaged.append(path.name)
                if delete:
                    path.unlink(missing_ok=True)
    return result
