"""Helpers for tests that checkpoint a process under the interception library."""

from __future__ import annotations

from pathlib import Path

from restoreprof.checkpoint import checkpoint


def checkpoint_with_damaged_snapshot(pid: int, directory: Path) -> Path:
    """Checkpoint pid (running under 'restoreprof exec') into directory, then flip 8 bytes near
    the end of its GPU memory snapshot; returns the snapshot's path."""
    result = checkpoint(pid, directory)
    snapshot = directory / result.manifest.processes[0].offload["snapshot"]
    with open(snapshot, "r+b") as f:
        f.seek(snapshot.stat().st_size - 100)
        f.write(b"\xff" * 8)
    return snapshot
