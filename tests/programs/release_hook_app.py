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


def fake_torch(cache: Cache) -> types.ModuleType:
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
    args = parser.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)

    cu.primary_context(0)
    rng = np.random.default_rng(5)
    data = [rng.integers(0, 256, n, dtype=np.uint8) for n in LIVE_BYTES]
    live = [cu.mem_alloc(n) for n in LIVE_BYTES]
    for pointer, host in zip(live, data, strict=True):
        cu.copy_htod(pointer, host)
    cache = Cache()

    if args.hook == "own":
        callback = ctypes.CFUNCTYPE(ctypes.c_int)(cache.free_all)
        assert ctypes.CDLL(None).rp_register_before_offload(callback) == 0
    else:
        sys.modules["torch"] = fake_torch(cache)
    loaded = "_restoreprof_sitecustomize" in sys.modules or \
        "startup_hook" in getattr(sys.modules.get("sitecustomize"), "__file__", "")
    (args.state / "stats.json").write_text(json.dumps({
        "live_bytes": sum(LIVE_BYTES), "cached_bytes": sum(CACHED_BYTES),
        "startup_hook_loaded": loaded}))

    def digest() -> str:
        sha = hashlib.sha256()
        for pointer, host in zip(live, data, strict=True):
            back = np.empty_like(host)
            cu.copy_dtoh(back, pointer)
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
