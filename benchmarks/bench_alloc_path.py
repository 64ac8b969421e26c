"""What the interception library's allocation paths cost per call: stream-ordered alloc + free
(served from its VMM cache), and the application's own VMM calls (translated handles).

    python benchmarks/bench_alloc_path.py                       # the fake driver (CPU machine)
    python benchmarks/bench_alloc_path.py --driver REAL         # a GPU machine: libcuda.so.1

Builds tests/programs/alloc_loop.c, runs it with the driver alone and under the library
(RESTOREPROF_OFFLOAD=1, as 'restoreprof exec' runs programs), a few times each, and prints the
median ns per call for: one cuMemAllocAsync + cuMemFreeAsync pair (8 MiB, one stream), the same
with 64 allocations live at once, and a cuMemCreate + cuMemMap + cuMemSetAccess + cuMemUnmap +
cuMemRelease cycle. On the fake driver it also prints how many driver calls one pair makes.
On the fake the driver's own cost is a host mmap, not a GPU's; read the library's column as
"what the library adds", and rerun on the GPU for the real figures (about 10 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:  # the installed restoreprof (the GPU machine's), else this checkout's
    import restoreprof  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "src"))

from restoreprof.optimizer.shim.build import build_library  # noqa: E402
from restoreprof.system.cbuild import c_compiler, cuda_include_dir  # noqa: E402


def _build(out: Path) -> Path:
    binary = out / "alloc_loop"
    subprocess.run([c_compiler(), "-O2", f"-I{cuda_include_dir()}", "-o", str(binary),
                    str(ROOT / "tests" / "programs" / "alloc_loop.c"), "-ldl"], check=True)
    return binary


def _fake_driver() -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "fakecuda"))
    from build import build_fake_libcuda

    return build_fake_libcuda()


def _run(binary: Path, driver: str, shim: bool, iterations: int, size: int) -> dict[str, float]:
    env = dict(os.environ, RESTOREPROF_LIBCUDA=driver)
    env.pop("LD_PRELOAD", None)
    if shim:
        env.update(LD_PRELOAD=str(build_library()), RESTOREPROF_REAL_LIBCUDA=driver,
                   RESTOREPROF_OFFLOAD="1", RESTOREPROF_RUN_DIR=tempfile.mkdtemp(prefix="rp-"))
    out = subprocess.run([str(binary), str(iterations), str(size)], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    if out.returncode != 0:
        raise SystemExit(f"alloc_loop failed ({'library' if shim else 'driver'}): {out.stderr}")
    return {k: float(v) for k, v in (w.split("=") for w in out.stdout.split())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", default="", help="libcuda path (default: the fake driver)")
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--size-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    driver = args.driver or str(_fake_driver())
    with tempfile.TemporaryDirectory() as tmp:
        binary = _build(Path(tmp))
        runs = {shim: [_run(binary, driver, shim, args.iterations, args.size_mib << 20)
                       for _ in range(args.repeat)] for shim in (False, True)}
    print(f"allocation paths, {args.size_mib} MiB, median of {args.repeat} runs of "
          f"{args.iterations} iterations; driver: {driver}")
    print(f"{'ns per call':<44} {'driver alone':>14} {'with library':>14}")
    rows = [("cuMemAllocAsync + cuMemFreeAsync (pair)", "async_pair_ns"),
            ("  same, 64 live at once (per pair)", "async_batch_ns"),
            ("create+map+access+unmap+release (cycle)", "vmm_cycle_ns")]
    for label, key in rows:
        alone, ours = (statistics.median(r[key] for r in runs[s]) for s in (False, True))
        print(f"{label:<44} {alone:>14.0f} {ours:>14.0f}")
    calls = runs[True][0]["driver_calls"]
    if calls >= 0:
        print(f"driver calls per pair under the library (fake driver counts them): {calls:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
