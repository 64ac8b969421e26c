"""Where a checkpoint or restore stands, on disk, so that its guardian can finish or undo it.

One small JSON file, replaced atomically (written beside, renamed) at each phase: a reader sees
the old phase or the new one, never half of either. The checkpoint's journal lives in its folder
(DIR/.restoreprof-journal.json, gone once the manifest is written); a restore's in its work
folder (the checkpoint folder may be read-only).

Durable (fsynced before the rename) unless the caller says otherwise: a checkpoint without
--sync keeps its images in the page cache only, and its journal needs no more than they have.
Its readers (the guardian, the command's own unwinding, --recover while the processes live) read
it through the same page cache; a crash of the whole machine ends the processes it describes,
and what such a crash leaves of a checkpoint that was not synced is refused by a restore (no
manifest, or images that fail their checksums). Each fsync costs a journal commit of the
filesystem, which waits on the gigabytes an offload has just left dirty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from restoreprof.checkpoint.manifest import JOURNAL_NAME

RESTORE_JOURNAL_NAME = "restore-journal.json"

# Checkpoint phases, in order. Up to "gpu-locked" the processes are untouched by CRIU and are
# put back (driver restore + unlock, memory reloaded); from "dumping" on, CRIU's own outcome
# decides: a completed dump is finished (manifest written), a failed one is put back.
CHECKPOINT_PHASES = ("started", "offloading", "gpu-locked", "dumping", "dumped")
# Restore phases: "criu" and "restored" hold processes that never ran (killed on failure);
# from "verified" on, they passed every check and are brought all the way back.
RESTORE_PHASES = ("checking", "criu", "restored", "verified", "gpu")


class Journal:
    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self.data: dict = {}

    def write(self, phase: str, **fields) -> None:
        self.data.update(fields, phase=phase)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.data) + "\n")
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @property
    def phase(self) -> str:
        return self.data.get("phase", "")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)

    @classmethod
    def read(cls, path: Path) -> Journal | None:
        """The journal at path, or None where there is none (or it is not one of ours)."""
        journal = cls(path)
        try:
            journal.data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return journal if isinstance(journal.data, dict) else None


def checkpoint_journal(directory: Path, durable: bool = True) -> Journal:
    """durable: fsync each phase (checkpoint --sync); see the module's note for why not always."""
    return Journal(Path(directory) / JOURNAL_NAME, durable)


def restore_journal(work_dir: Path) -> Journal:
    """Never fsynced: it describes processes in this machine's memory, which a crash of the
    machine ends with the page cache its readers share. An fsync waits on whatever the machine
    has dirty (0.2 s with 15 GB dirty after a checkpoint, benchmarks/RESULTS.md, fifth
    session), and a restore writes its journal six times."""
    return Journal(Path(work_dir) / RESTORE_JOURNAL_NAME, durable=False)
