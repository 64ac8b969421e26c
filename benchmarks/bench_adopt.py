"""ADOPT against ADOPTV: how long handing N preloaded allocations to a process takes, one
control request each against batches (optimizer/preload.py: adopt).

    python benchmarks/bench_adopt.py [--allocations 400] [--mib 2] [--repeat 2]
        [--fake tests/fakecuda/build/libcuda.so.1]

A cuda-python program under the interception library allocates N buffers; each round offloads
them, preloads the snapshot in this process and adopts it, first one request per allocation
(ADOPT_BATCH 1), then in batches (the default). With --fake it runs on the fake driver of the
CPU tests (the protocol's cost alone); without it, on the GPU. Needs cuda-python.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """
import sys
from cuda.bindings import driver as cu
cu.cuInit(0)
ctx = cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1]
cu.cuCtxSetCurrent(ctx)
ptrs = [cu.cuMemAlloc(int(sys.argv[2]) << 20)[1] for _ in range(int(sys.argv[1]))]
print("ready", flush=True)
sys.stdin.read()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocations", type=int, default=400)
    parser.add_argument("--mib", type=int, default=2, help="each allocation's size")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--fake", type=Path, help="the fake libcuda (CPU machine)")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="rp-adopt-run-"))
    run.chmod(0o700)
    os.environ["RESTOREPROF_RUN_DIR"] = str(run)
    if args.fake:
        os.environ["RESTOREPROF_REAL_LIBCUDA"] = str(args.fake.resolve())
    from restoreprof.optimizer import control
    from restoreprof.optimizer.config import OptimizerConfig
    from restoreprof.optimizer.preload import adopt, preload_snapshot
    from restoreprof.optimizer.shim.build import build_library

    default_batch = control.ADOPT_BATCH
    env = dict(os.environ, LD_PRELOAD=str(build_library()))
    proc = subprocess.Popen([sys.executable, "-c", APP, str(args.allocations), str(args.mib)],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", "the program did not start"
    cfg = OptimizerConfig.load()
    ctl = control.ShimControl(proc.pid)
    try:
        for _ in range(args.repeat):
            for batch in (1, default_batch):
                control.ADOPT_BATCH = batch
                with tempfile.TemporaryDirectory() as folder:
                    snap = Path(folder) / "gpu.snap"
                    ctl.offload(snap, cfg)
                    loaded = preload_snapshot(snap, cfg)
                    start = time.perf_counter()
                    adopt(proc.pid, loaded)
                    seconds = time.perf_counter() - start
                    loaded.release()
                print(f"{'one request each' if batch == 1 else f'batches of {batch}':<20} "
                      f"{args.allocations} allocations adopted in {seconds * 1e3:7.1f} ms "
                      f"({seconds / args.allocations * 1e6:.0f} us each)", flush=True)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
