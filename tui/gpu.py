"""The GPUs the header shows: name, PCIe link and memory in use, through NVML.

A machine without an NVIDIA driver gets an empty list, never an error: the view still works.
"""

from __future__ import annotations

import contextlib


def query_gpus() -> list[dict]:
    """One dict per GPU: index, name, pcie_gen, pcie_width, memory_used_bytes, memory_total_bytes."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # NVMLError_LibraryNotFound and friends: no driver here
        return []
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else name,
                "pcie_gen": _optional(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
                "pcie_width": _optional(pynvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
                "memory_used_bytes": int(memory.used),
                "memory_total_bytes": int(memory.total),
            })
    except pynvml.NVMLError:
        return gpus
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return gpus


def _optional(getter, handle) -> int | None:
    import pynvml

    try:
        return int(getter(handle))
    except pynvml.NVMLError:  # not supported on this GPU (e.g. SXM without a PCIe link to report)
        return None


def describe_gpu(gpu: dict) -> str:
    """``GPU0 NVIDIA H100 80GB HBM3 · PCIe Gen5 x16 · 2.1/80.0 GiB`` from a query_gpus dict."""
    parts = [f"GPU{gpu.get('index', 0)} {gpu.get('name', 'unknown GPU')}"]
    gen, width = gpu.get("pcie_gen"), gpu.get("pcie_width")
    if gen or width:
        parts.append(f"PCIe Gen{gen or '?'} x{width or '?'}")
    used = gpu.get("memory_used_bytes")
    total = gpu.get("memory_total_bytes") or gpu.get("memory_bytes")  # a trace's meta: total only
    if total and used is not None:
        parts.append(f"{used / 2**30:.1f}/{total / 2**30:.1f} GiB used")
    elif total:
        parts.append(f"{total / 2**30:.1f} GiB")
    return " · ".join(parts)
