"""Runtimes whose checkpoints the driver cannot restore: refused before anything is touched.

A checkpoint that cannot be restored must never be reported as a success. Measured on an H200
(driver 580.159.04, JAX 0.11.2, 2026-11-29, benchmarks/gpu/jax_probe.py): the driver's own
lock + checkpoint + restore + unlock of a live JAX process works in place, data verified, with
every XLA setting tried (default, XLA_PYTHON_CLIENT_PREALLOCATE=false,
XLA_PYTHON_CLIENT_ALLOCATOR=platform, command buffers off). But after `criu dump` and
`criu restore` the driver no longer knows the restored process (cuCheckpointProcessGetState:
CUDA_ERROR_NOT_INITIALIZED) and it segfaults inside libcuda, with or without restoreprof. With
JAX's default preallocation (75% of the GPU) `criu dump` itself fails. So a JAX process is
refused at checkpoint, and keeps running.

RESTOREPROF_TRY_UNRESTORABLE=1 skips the refusal, for trying a newer driver or JAX release.
"""

from __future__ import annotations

import os
from pathlib import Path

from restoreprof.errors import RestoreprofError

# Paths of mapped files that identify a runtime, and why its checkpoint cannot be restored.
_UNRESTORABLE = {
    "JAX/XLA": (("/jaxlib/", "xla_extension", "/jax_plugins/", "xla_cuda_plugin"),
                "the CUDA driver (580) cannot restore a JAX process after CRIU: the restored "
                "process is unknown to the driver and crashes in libcuda"),
}
OVERRIDE_ENV = "RESTOREPROF_TRY_UNRESTORABLE"


def mapped_runtimes(pid: int) -> dict[str, str]:
    """{runtime: a mapped file that shows it} for the runtimes of _UNRESTORABLE that pid maps."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:
        return {}
    found = {}
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) == 6 else ""
        for runtime, (markers, _) in _UNRESTORABLE.items():
            if runtime not in found and any(m in path for m in markers):
                found[runtime] = path.strip()
    return found


def refuse_unrestorable(pids: list[int]) -> None:
    """RestoreprofError naming the first process whose checkpoint could not be restored."""
    if os.environ.get(OVERRIDE_ENV) == "1":
        return
    for pid in pids:
        for runtime, path in mapped_runtimes(pid).items():
            raise RestoreprofError(
                f"PID {pid} runs {runtime} ({path}): {_UNRESTORABLE[runtime][1]}; nothing was "
                f"checkpointed and the process keeps running",
                hint=f"restart the program from its own saved state instead; to try anyway "
                     f"(a newer driver or {runtime} release), set {OVERRIDE_ENV}=1 and verify "
                     f"a restore before relying on it",
            )
