"""Checkpoint and restore of process trees: CRIU for the CPU side, the CUDA driver for the GPU.

    from restoreprof.checkpoint import checkpoint, restore
"""

from restoreprof.checkpoint.api import (
    CheckpointResult,
    RestoreResult,
    abort_restore,
    checkpoint,
    recover_checkpoint,
    restore,
)

__all__ = ["CheckpointResult", "RestoreResult", "abort_restore", "checkpoint", "recover_checkpoint",
           "restore"]
