"""Would compressing snapshot chunks win? zstd and lz4 on bf16-like weights, per 8 MiB chunk,
plain and byte-grouped (the high bytes of every bf16 value, then the low bytes), on this
machine's cores. Prints the ratio and the per-core compress/decompress rates, and the verdict
for a disk of --disk-gbps: compression wins a cold restore only when reading the smaller chunks
plus decompressing them on --cores cores beats reading them whole, and it must not slow the
checkpoint (compressing on the offload path) below --offload-gbps.

    .venv/bin/python benchmarks/bench_compression.py [--mib 64] [--disk-gbps 1.5] [--cores 16]

Needs the zstandard and lz4 packages (pip install zstandard lz4), or else pyarrow's codecs
(the same libzstd and liblz4; the GPU machine has pyarrow); they are not dependencies of
restoreprof: compression is not shipped (benchmarks/RESULTS.md has the numbers). --cores N also
measures compression and decompression on N threads at once (the codecs release the GIL).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def bf16_weights(n_values: int, seed: int = 0) -> np.ndarray:
    """Random normal weights (std 0.02, like an initialised or trained linear layer) cast to
    bf16: the high 16 bits of each float32 (numpy has no bf16), as uint16."""
    w = np.random.default_rng(seed).normal(0, 0.02, n_values).astype(np.float32)
    return (w.view(np.uint32) >> 16).astype(np.uint16)


def grouped(values: np.ndarray) -> bytes:
    b = values.view(np.uint8).reshape(-1, 2)
    return b[:, 1].tobytes() + b[:, 0].tobytes()  # high bytes (sign, exponent) first


def rate(fn, data, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(data)
        best = min(best, time.perf_counter() - start)
    return best, out


def codecs() -> tuple[str, dict]:
    """{name: (compress, decompress(data, size))} from zstandard and lz4, else pyarrow."""
    try:
        import lz4.frame
        import zstandard
    except ImportError:
        import pyarrow as pa

        def arrow(name: str, level: int | None = None):
            codec = pa.Codec(name, compression_level=level) if level else pa.Codec(name)
            return (lambda b: codec.compress(b, asbytes=True),
                    lambda b, n: codec.decompress(b, decompressed_size=n, asbytes=True))

        return f"pyarrow {pa.__version__}", {"zstd-1": arrow("zstd", 1),
                                             "zstd-3": arrow("zstd", 3), "lz4": arrow("lz4")}
    # one compressor per call: zstandard's objects must not be shared between threads
    return "zstandard, lz4", {
        "zstd-1": (lambda b: zstandard.ZstdCompressor(level=1).compress(b),
                   lambda b, n: zstandard.ZstdDecompressor().decompress(b)),
        "zstd-3": (lambda b: zstandard.ZstdCompressor(level=3).compress(b),
                   lambda b, n: zstandard.ZstdDecompressor().decompress(b)),
        "lz4": (lz4.frame.compress, lambda b, n: lz4.frame.decompress(b)),
    }


def on_threads(fn, items, threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--disk-gbps", type=float, default=1.5)
    parser.add_argument("--offload-gbps", type=float, default=10.0)
    parser.add_argument("--cores", type=int, default=16)
    args = parser.parse_args()
    values = bf16_weights((args.mib << 20) // 2)
    chunk = args.chunk_mib << 20
    layouts = {"plain": values.tobytes(), "byte-grouped": b"".join(
        grouped(values[i:i + chunk // 2]) for i in range(0, values.size, chunk // 2))}
    library, codec_table = codecs()
    print(f"{args.mib} MiB of bf16 N(0, 0.02) weights, {args.chunk_mib} MiB chunks, one core "
          f"({library})")
    print(f"{'layout':<13} {'codec':<7} {'ratio':>6} {'comp GB/s':>10} {'decomp GB/s':>12} "
          f"{'restore x':>10} {'offload GB/s':>13} {'comp, N thr':>12} {'decomp, N thr':>14}")
    for layout, data in layouts.items():
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
        for name, (comp, decomp) in codec_table.items():
            c_s, packed = rate(lambda ps, comp=comp: [comp(p) for p in ps], pieces)
            d_s, _ = rate(lambda ps, decomp=decomp: [decomp(p, chunk) for p in ps], packed)
            many_c = len(data) / on_threads(comp, pieces, args.cores) / 1e9
            many_d = len(data) / on_threads(lambda b, decomp=decomp: decomp(b, chunk), packed,
                                            args.cores) / 1e9
            size = sum(len(p) for p in packed)
            ratio = len(data) / size
            comp_gbps, decomp_gbps = len(data) / c_s / 1e9, len(data) / d_s / 1e9
            # cold restore: read the compressed bytes, decompress on all cores (overlapped: the
            # slower of the two), against reading the raw bytes
            restore_s = max(size / (args.disk_gbps * 1e9), len(data) / (decomp_gbps * args.cores * 1e9))
            speedup = (len(data) / (args.disk_gbps * 1e9)) / restore_s
            offload = comp_gbps * args.cores
            print(f"{layout:<13} {name:<7} {ratio:>6.3f} {comp_gbps:>10.2f} {decomp_gbps:>12.2f} "
                  f"{speedup:>9.2f}x {offload:>12.1f} {many_c:>12.1f} {many_d:>14.1f}")
    print(f"restore x: cold restore speed-up on a {args.disk_gbps} GB/s disk with {args.cores} "
          f"cores decompressing; offload GB/s: compression on {args.cores} cores "
          f"(the checkpoint target is {args.offload_gbps} GB/s into the page cache), from one "
          f"core's rate; 'N thr': measured on {args.cores} threads at once")


if __name__ == "__main__":
    main()
