"""Name the bottleneck: the phase that holds most of the wall time on its own, measured
against its ceiling, with the optimizer setting that addresses it and the expected gain.

Optimizer settings: streams, chunk_mb, threads, pinned, readahead, offload (and the warm pool,
`restoreprof warm`, which holds cuInit and the contexts ahead of a restore).
"""

from __future__ import annotations

from restoreprof.analysis.ceilings import UNCALIBRATED, Ceilings
from restoreprof.analysis.phases import CPU_MEMORY, GPU_CONTEXT, GPU_MEMORY, OTHER

CALIBRATE_HINT = "run 'restoreprof calibrate' on this machine to measure the ceilings"


def _seconds(ns: float) -> str:
    return f"{ns / 1e9:.2f} s"


def phase_ceiling(phase: dict, cuda: dict, ceilings: Ceilings) -> tuple[float, str]:
    """(ceiling GB/s, what it is) for a phase; 0.0 where there is none or none measured."""
    name = phase["name"]
    if name == CPU_MEMORY:
        if ceilings.disk_read_gbps and phase["gbps"] > ceilings.disk_read_gbps:
            return ceilings.host_memcpy_gbps, "host memcpy (the images were in the page cache)"
        return ceilings.disk_read_gbps, "disk read"
    if name == GPU_MEMORY:
        return ceilings.htod_pinned_gbps, "H2D from pinned memory"
    return 0.0, ""


def _recommend(phase: dict, cuda: dict, ceilings: Ceilings, ceiling_gbps: float) -> str:
    name, ns = phase["name"], phase["exclusive_ns"]
    nbytes = phase["bytes"]
    at_ceiling_ns = nbytes / ceiling_gbps if ceiling_gbps and nbytes else None
    gain = (f"expected gain: up to {_seconds(max(0.0, ns - at_ceiling_ns))} of "
            f"{_seconds(ns)}" if at_ceiling_ns is not None else "")
    uncalibrated = ceilings.source == UNCALIBRATED
    if name == CPU_MEMORY:
        return _recommend_cpu_memory(phase, cuda, ceilings, ns, nbytes, uncalibrated)
    if name == GPU_MEMORY:
        htod = cuda.get("htod", {})
        if htod.get("bytes", 0) == 0:
            text = ("offload=on: run the application under 'restoreprof exec', so its GPU memory "
                    "is saved beside the images at checkpoint and streamed back from pinned "
                    "memory by the parallel engine instead of the driver's restore")
            return f"{text}; {CALIBRATE_HINT} for the expected gain" if uncalibrated else (
                f"{text}; the pinned H2D ceiling here is {ceiling_gbps:.1f} GB/s")
        if htod.get("pageable_bytes", 0) > htod.get("pinned_bytes", 0):
            pageable = ceilings.htod_pageable_gbps
            text = (f"pinned=on: {htod['pageable_bytes'] / 1e9:.2f} GB of the host-to-device "
                    "copies come from pageable memory; stage them through pinned buffers")
            if pageable and ceiling_gbps:
                text += f" ({pageable:.1f} -> {ceiling_gbps:.1f} GB/s)"
            return f"{text}; {gain}" if gain else f"{text}; {CALIBRATE_HINT}"
        text = ("streams, chunk_mb, threads: the copies are pinned but run below the link's "
                "rate; 'restoreprof run' tunes them for this GPU")
        return f"{text}; {gain}" if gain else f"{text}; {CALIBRATE_HINT}"
    if name == GPU_CONTEXT:
        return (f"restoreprof warm: hold cuInit and the contexts ahead of the restore "
                f"(cuInit and contexts took {_seconds(phase['busy_ns'])}); expected gain: up "
                f"to {_seconds(ns)}")
    return ("no single restore phase dominates: the time goes to process setup outside the "
            "page reads and GPU work; trace with -- CMD to see what the command does")


def _recommend_cpu_memory(phase: dict, cuda: dict, ceilings: Ceilings, ns: int, nbytes: int,
                          uncalibrated: bool) -> str:
    """CRIU's page reads: too slow a disk (read ahead), or too many pages (make fewer)."""
    disk = ceilings.disk_read_gbps
    gpu_in_images = cuda.get("checkpoint_api", {}).get("calls", 0) and not cuda.get(
        "htod", {}).get("bytes", 0)
    if gpu_in_images:
        return ("offload=on: the driver's checkpoint put the GPU memory into CRIU's page images, "
                "so CRIU reads it back one preadv at a time and the driver copies it again; run "
                "the application under 'restoreprof exec' and GPU memory skips both; expected "
                f"gain: most of {_seconds(ns)}")
    if disk and phase["gbps"] < 0.8 * disk:
        target_ns = nbytes / disk
        return ("readahead=on: read pages-*.img into the page cache in parallel before CRIU "
                "needs them; expected gain: up to "
                f"{_seconds(max(0.0, ns - target_ns))} of {_seconds(ns)}")
    if uncalibrated:
        return ("readahead=on: read pages-*.img into the page cache in parallel before CRIU "
                f"needs them; {CALIBRATE_HINT} for the expected gain")
    return (f"CRIU restores {nbytes / 1e9:.2f} GB of pages at {phase['gbps']:.2f} GB/s, as fast as "
            "this disk or page cache gives them to one reader: only fewer pages help (keep less "
            "host memory; GPU memory belongs outside the images: offload=on)")


def _source(ceilings: Ceilings, ceiling_gbps: float, what: str) -> str:
    if ceiling_gbps or not what:
        return ceilings.source
    return UNCALIBRATED if ceilings.source == UNCALIBRATED else f"{what}: not measured here"


# Left to the driver after the offload, a process still holds its context (about 0.3 to
# 0.5 GB): only more than this is memory of a kind the library did not take.
UNCOVERED_MIN_BYTES = 1 << 30


def uncovered(coverage: list[dict] | None) -> dict | None:
    """GPU memory a traced restore's checkpoint left to the driver, by kind: {bytes, pids, kinds}
    (bytes None where nothing could measure it), or None when the library took all of it."""
    pids, total, kinds = [], 0, []
    for c in coverage or []:
        left = c.get("left_to_driver_bytes")
        if not c.get("shim"):
            pids.append(c["pid"])
            total = None if left is None or total is None else total + left
            kinds.append("every kind (not started with 'restoreprof exec')")
        elif left is not None and left > UNCOVERED_MIN_BYTES:
            pids.append(c["pid"])
            total = None if total is None else total + left
            kinds.append("memory of a kind the library does not serve (managed, "
                         "host-registered or other)")
    if not pids:
        return None
    return {"bytes": total, "pids": pids, "kinds": sorted(set(kinds))}


def _uncovered_text(u: dict) -> str:
    size = f"{u['bytes'] / 1e9:.2f} GB" if u["bytes"] is not None else "GPU memory"
    return (f"{size} of PID {', '.join(map(str, u['pids']))} went through the driver's own "
            f"checkpoint and restore, at its 5 to 6 GB/s: {'; '.join(u['kinds'])}")


def bottleneck(phases: list[dict], cuda: dict, ceilings: Ceilings,
               coverage: list[dict] | None = None) -> dict:
    candidates = [p for p in phases if p["name"] != OTHER and p["exclusive_ns"] > 0]
    if not candidates:
        candidates = [p for p in phases if p["name"] == OTHER]
    if not candidates:
        return {"phase": "", "achieved_gbps": 0.0, "ceiling_gbps": 0.0,
                "ceiling_source": ceilings.source, "recommendation": "the trace holds no events"}
    worst = max(candidates, key=lambda p: p["exclusive_ns"])
    ceiling_gbps, what = phase_ceiling(worst, cuda, ceilings)
    recommendation = _recommend(worst, cuda, ceilings, ceiling_gbps)
    left = uncovered(coverage)
    if left and worst["name"] in (GPU_MEMORY, CPU_MEMORY):
        recommendation = f"{_uncovered_text(left)}; {recommendation}"
    return {
        "phase": worst["name"],
        "achieved_gbps": round(worst["gbps"], 3),
        "ceiling_gbps": round(ceiling_gbps, 3),
        "ceiling_source": _source(ceilings, ceiling_gbps, what),
        "ceiling_kind": what,
        "exclusive_ns": worst["exclusive_ns"],
        "recommendation": recommendation,
        "uncovered": left,
    }


def annotate_ceilings(phases: list[dict], cuda: dict, ceilings: Ceilings) -> None:
    """Each phase against its ceiling: ceiling_gbps and efficiency (achieved / ceiling)."""
    for phase in phases:
        ceiling_gbps, _what = phase_ceiling(phase, cuda, ceilings)
        phase["ceiling_gbps"] = round(ceiling_gbps, 3)
        phase["efficiency"] = round(phase["gbps"] / ceiling_gbps, 3) if ceiling_gbps else None
