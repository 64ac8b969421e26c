"""The GPUs the header shows: name, PCIe link and memory in use, through NVML.

A machine without an NVIDIA driver gets an empty list, never an error: the view still works.
"""

from __future__ import annotations


def query_gpus() -> list[dict]:
    """The machine's GPUs with PCIe link and memory in use (restoreprof.system.gpus)."""
    from restoreprof.system.gpus import nvml_gpus

    return nvml_gpus()


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
