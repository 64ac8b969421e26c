"""A process that holds distinctive data in host (and optionally GPU) memory and can verify it.

    python -m restoreprof.workloads.hold_memory --mib 1024 [--gpu-mib 8192] --state DIR

It fills its buffers from a seeded generator, writes the SHA-256 of what it holds to
DIR/ready, then waits. On SIGUSR1 it recomputes the digest of what it holds now (reading the
GPU memory back to the host) and writes "OK <digest>" or "MISMATCH <digest>" to DIR/verified,
then pid= and, with GPU memory, gpu=<the ordinal of the GPU that memory is on now>.
With GPU memory, SIGUSR2 writes new data over the first half of it (as a program that runs on
between a checkpoint's pre-copy and its stop) and writes the new digest to DIR/refilled.
SIGTERM ends it. Its stdio must not be a pipe to an outside process, so that CRIU can dump it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

_CHUNK_BYTES = 64 << 20


def _fill(buffer: np.ndarray, seed: int) -> None:
    """Distinctive data at memory speed: a random 64 MiB block, xor-ed with each chunk's index."""
    block = np.random.default_rng(seed).integers(0, 2**64, size=_CHUNK_BYTES // 8, dtype=np.uint64)
    words = buffer.view(np.uint64)
    for index, start in enumerate(range(0, words.size, block.size)):
        end = min(start + block.size, words.size)
        np.bitwise_xor(block[: end - start], np.uint64(index * 0x9E3779B97F4A7C15 % 2**64),
                       out=words[start:end])


def _digest(*buffers: np.ndarray) -> str:
    """SHA-256 over per-chunk SHA-256s, the chunks hashed in parallel (hashlib frees the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    views = [memoryview(b).cast("B") for b in buffers]
    chunks = [v[s : s + _CHUNK_BYTES] for v in views for s in range(0, len(v), _CHUNK_BYTES)]
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        digests = pool.map(lambda c: hashlib.sha256(c).digest(), chunks)
    return hashlib.sha256(b"".join(digests)).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _GpuBuffer:
    """Device memory filled from host data; read back on verification (cuda-python driver API)."""

    def __init__(self, host: np.ndarray, device: int = 0) -> None:
        from restoreprof.cuda import driver as cu

        self._cu = cu
        self.nbytes = host.nbytes
        self.context = cu.primary_context(device)
        self.pointer = cu.mem_alloc(self.nbytes)
        cu.copy_htod(self.pointer, host)

    def read_back(self) -> np.ndarray:
        host = np.empty(self.nbytes, dtype=np.uint8)
        self._cu.copy_dtoh(host, self.pointer)
        return host

    def device(self) -> int:
        return self._cu.pointer_device(self.pointer)

    def overwrite_first_half(self, seed: int) -> None:
        half = np.empty(self.nbytes // 2, dtype=np.uint8)
        _fill(half, seed)
        self._cu.copy_htod(self.pointer, half)


def serve(state: Path, expected: str, digest_now, gpu: _GpuBuffer | None = None,
          refill=None) -> None:
    """The ready/verified protocol (see the module's doc), until SIGTERM: never returns.
    refill(): change the memory held (SIGUSR2), returning the new expected digest."""

    def verify(signum: int, frame: object) -> None:
        now = digest_now()
        verdict = "OK" if now == expected else "MISMATCH"
        where = f" gpu={gpu.device()}" if gpu else ""
        _write_atomic(state / "verified", f"{verdict} {now} pid={os.getpid()}{where}\n")

    def change(signum: int, frame: object) -> None:
        nonlocal expected
        expected = refill()
        _write_atomic(state / "refilled", f"{expected}\n")

    signal.signal(signal.SIGUSR1, verify)
    if refill is not None:
        signal.signal(signal.SIGUSR2, change)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (state / "verified").unlink(missing_ok=True)
    _write_atomic(state / "ready", f"{expected} pid={os.getpid()}\n")
    # Short sleeps: the kernel may hand SIGUSR1 to another thread (numpy's BLAS pool), which
    # then does not interrupt this one; Python runs the handler when this sleep ends. Seen
    # after criu restore -d: a long sleep left a verification unanswered for its whole length.
    while True:
        time.sleep(0.2)


def _parent(args: argparse.Namespace) -> int:
    """A process tree: one parent, N holders, so a checkpoint holds several CUDA processes."""
    import subprocess

    children = []
    for i in range(args.children):
        state = args.state / f"child-{i}"
        state.mkdir(exist_ok=True)
        (state / "ready").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "restoreprof.workloads.hold_memory", "--mib", str(args.mib),
               "--gpu-mib", str(args.gpu_mib), "--seed", str(args.seed + 10 * i), "--state", str(state),
               "--gpu", str(i if args.gpu_per_child else args.gpu)]
        children.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
    while not all((args.state / f"child-{i}" / "ready").exists() for i in range(args.children)):
        if any(c.poll() is not None for c in children):
            return 1
        time.sleep(0.05)
    signal.signal(signal.SIGTERM, lambda *_: [c.terminate() for c in children] and sys.exit(0))
    _write_atomic(args.state / "ready", f"tree pid={os.getpid()}\n")
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="host memory to hold, MiB")
    parser.add_argument("--gpu-mib", type=int, default=0, help="GPU memory to hold, MiB")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--state", type=Path, required=True, help="folder for ready/verified files")
    parser.add_argument("--gpu", type=int, default=0, help="the GPU (ordinal) to hold memory on")
    parser.add_argument("--gpu-per-child", action="store_true",
                        help="with --children: child N holds its GPU memory on GPU N (a job of "
                             "one process per GPU)")
    parser.add_argument("--children", type=int, default=0,
                        help="hold nothing here; start this many holders as children (state/child-N)")
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    if args.children:
        return _parent(args)

    host = np.empty(args.mib << 20, dtype=np.uint8)
    _fill(host, args.seed)
    gpu = None
    if args.gpu_mib:
        staging = np.empty(args.gpu_mib << 20, dtype=np.uint8)
        _fill(staging, args.seed + 1)
        gpu = _GpuBuffer(staging, args.gpu)
        expected = _digest(host, staging)
        del staging
    else:
        expected = _digest(host)

    def digest_now() -> str:
        return _digest(*([host] + ([gpu.read_back()] if gpu else [])))

    def refill() -> str:
        gpu.overwrite_first_half(args.seed + 2)
        return digest_now()

    serve(args.state, expected, digest_now, gpu, refill if gpu else None)


if __name__ == "__main__":
    raise SystemExit(main())
