"""A Python program with a caching allocator of its own, for the release hook tests.

    python release_hook_app.py --state DIR --hook own|torch [--hold-gil]

It holds "live" device buffers filled with distinctive data and "cached" ones it has finished
with but keeps, as a caching allocator does. Its cache is freed through the real driver calls
(cuMemFree, via cuda-python) by:
  own:   a release hook it registers itself with the interception library (ctypes), the C
         entry point any program can use;
  torch: restoreprof's own start-up hook (sitecustomize), which frees the caches of the
         frameworks in sys.modules; here a module named torch stands in, with the calls the
         hook makes (this CPU machine has no CUDA build of PyTorch; the GPU benchmark runs the
         real one).
--segment used|stale: the torch stand-in also keeps one 16 MiB segment whose middle 8 MiB is a
free block (memory_snapshot reports it), filled, like the rest, with data; "stale" has its
memory_snapshot write 2 MiB of that block again after reading it (the same bytes, counted as
live), as another thread allocating and writing a block just after the allocator was read would.
--hold-gil: once ready, a thread holds the GIL for good (libc's sleep called through
ctypes.PyDLL), as a program stuck in an extension would: no Python hook can run, nor can the
program answer the verify signal.

Speaks hold_memory's ready/verified protocol (the digest is over the live buffers only);
DIR/stats.json says which bytes are live and which cached.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np

from restoreprof.cuda import driver as cu
from restoreprof.workloads.hold_memory import serve

MIB = 1 << 20
LIVE_BYTES = [3 * MIB, 5 * MIB + 11]
CACHED_BYTES = [4 * MIB, 6 * MIB]


class Cache:
    def __init__(self) -> None:
        self.blocks = [cu.mem_alloc(n) for n in CACHED_BYTES]
        self.freed = 0

    def free_all(self) -> int:
        for pointer in self.blocks:
            cu.mem_free(pointer)
            self.freed += 1
        self.blocks.clear()
        return 0


# --segment: one segment, its blocks (offset, size, state) as PyTorch's memory_snapshot says
SEGMENT_BYTES = 16 * MIB
SEGMENT_BLOCKS = [(0, 3 * MIB, "active_allocated"), (3 * MIB, 8 * MIB, "inactive"),
                  (11 * MIB, 5 * MIB, "active_allocated")]
REWRITTEN = (4 * MIB, 2 * MIB)  # "stale": written again after the allocator was read


class Segment:
    def __init__(self, rng, stale: bool) -> None:
        self.pointer = cu.mem_alloc(SEGMENT_BYTES)
        self.data = rng.integers(0, 256, SEGMENT_BYTES, dtype=np.uint8)
        cu.copy_htod(self.pointer, self.data)
        self.stale = stale

    def live(self) -> list[tuple[int, int]]:
        """(offset, size) of the bytes the program still uses."""
        spans = [(o, n) for o, n, state in SEGMENT_BLOCKS if state != "inactive"]
        return spans + ([REWRITTEN] if self.stale else [])

    def memory_snapshot(self) -> list[dict]:
        view = [{"address": self.pointer, "total_size": SEGMENT_BYTES, "segment_pool_id": (0, 0),
                 "blocks": [{"size": n, "state": state} for _, n, state in SEGMENT_BLOCKS]}]
        if self.stale:  # a block handed out and written after this reading: a gated call
            offset, size = REWRITTEN
            cu.copy_htod(self.pointer + offset, self.data[offset:offset + size])
        return view


def fake_torch(cache: Cache, segment: Segment | None = None) -> types.ModuleType:
    """The calls restoreprof's start-up hook makes on torch, over this program's cache."""
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 1,
        memory_reserved=lambda device=0: sum(CACHED_BYTES) if cache.blocks else 0,
        current_device=lambda: 0,
        device=lambda index: _Nothing(),
        synchronize=lambda: None,
        empty_cache=cache.free_all,
    )
    if segment is not None:
        torch.cuda.memory_snapshot = segment.memory_snapshot
    return torch


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--hook", choices=["own", "torch"], required=True)
    parser.add_argument("--hold-gil", action="store_true")
    parser.add_argument("--segment", choices=["used", "stale"])
    args = parser.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)

    cu.primary_context(0)
    rng = np.random.default_rng(5)
    data = [rng.integers(0, 256, n, dtype=np.uint8) for n in LIVE_BYTES]
    live = [cu.mem_alloc(n) for n in LIVE_BYTES]
    for pointer, host in zip(live, data, strict=True):
        cu.copy_htod(pointer, host)
    cache = Cache()
    segment = Segment(rng, args.segment == "stale") if args.segment else None

    if args.hook == "own":
        callback = ctypes.CFUNCTYPE(ctypes.c_int)(cache.free_all)
        assert ctypes.CDLL(None).rp_register_before_offload(callback) == 0
    else:
        sys.modules["torch"] = fake_torch(cache, segment)
    loaded = "_restoreprof_sitecustomize" in sys.modules or \
        "startup_hook" in getattr(sys.modules.get("sitecustomize"), "__file__", "")
    (args.state / "stats.json").write_text(json.dumps({
        "live_bytes": sum(LIVE_BYTES), "cached_bytes": sum(CACHED_BYTES),
        "startup_hook_loaded": loaded,
        "segment": segment.pointer if segment else None}))

    def digest() -> str:
        sha = hashlib.sha256()
        for pointer, host in zip(live, data, strict=True):
            back = np.empty_like(host)
            cu.copy_dtoh(back, pointer)
            sha.update(back.tobytes())
        for offset, size in segment.live() if segment else []:
            back = np.empty(size, dtype=np.uint8)
            cu.copy_dtoh(back, segment.pointer + offset)
            sha.update(back.tobytes())
        return sha.hexdigest()

    if args.hold_gil:
        import threading

        holder = ctypes.PyDLL(None).sleep  # libc sleep() through PyDLL: the GIL stays held
        holder.argtypes = [ctypes.c_uint]
        # Once serve() has written DIR/ready; from then on nothing else in Python runs.
        threading.Timer(0.3, holder, args=(3600,)).start()
    serve(args.state, digest(), digest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
