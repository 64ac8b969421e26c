"""The machine's NVIDIA GPUs through NVML: the one place that asks (doctor, traces, the live
view and the tuning key all read these dicts). No driver means an empty list, never an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(getter: Callable, handle: Any) -> Any:
    import pynvml

    try:
        return getter(handle)
    except pynvml.NVMLError:  # not supported on this GPU or driver
        return None


def nvml_gpus() -> list[dict]:
    """One dict per GPU: index, name, uuid, pcie_gen, pcie_width (current and _max),
    persistence, memory_total_bytes, memory_used_bytes, driver_version."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no pynvml, or no driver: NVMLError_LibraryNotFound and friends
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(h)
            persistence = _optional(pynvml.nvmlDeviceGetPersistenceMode, h)
            gpus.append({
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(h)),
                "uuid": _text(pynvml.nvmlDeviceGetUUID(h)),
                "pcie_gen": _optional(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
                "pcie_width": _optional(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h),
                "pcie_gen_max": _optional(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
                "pcie_width_max": _optional(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
                "persistence": None if persistence is None else bool(persistence),
                "memory_total_bytes": int(memory.total),
                "memory_used_bytes": int(memory.used),
                "driver_version": driver,
            })
        return gpus
    except pynvml.NVMLError:
        return []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def process_gpu_memory_bytes(pid: int) -> int | None:
    """The GPU memory NVML says pid uses, over every GPU; None where NVML cannot tell (no
    driver, no pynvml, the PID not visible to it: another PID namespace, or not reported)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no pynvml, or no driver
        return None
    try:
        total, seen = 0, False
        for index in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if proc.pid == pid and isinstance(proc.usedGpuMemory, int):
                    total += proc.usedGpuMemory
                    seen = True
        return total if seen else None
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
