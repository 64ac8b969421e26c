"""Optimizer benchmark: one run, one table. For the H100; smoke-test anywhere with the fake.

    python benchmarks/bench_optimizer.py --gib 8                # on the GPU machine
    RESTOREPROF_LIBCUDA=tests/fakecuda/build/libcuda.so.1 \\
        python benchmarks/bench_optimizer.py --gib 0.1          # here, numbers meaningless

(a) H2D of GIB from pageable memory by a cuda-python program: plain vs `restoreprof exec`
(b) the engine preloading (d)'s snapshot, file (page cache) -> GPU with every chunk's crc32c
    checked, vs a plain read + cuMemcpyHtoD of the same bytes
(c) cuInit + contexts: cold, and what is left after an overlapped pre-warm
(d) offload / reload of GIB through the control socket
Every transfer is verified; a mismatch is printed in the table, never hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import restoreprof
from restoreprof.commands.exec_ import exec_environment
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.system.paths import libcuda_path

PACKAGE_ROOT = Path(restoreprof.__file__).resolve().parents[1]  # the installed one, shim built

GOALS = {"a": "goal >= 4x and >= 35 GB/s", "b": "goal >= 45 GB/s"}

PAGEABLE_H2D = textwrap.dedent("""
    import ctypes, json, os, sys, time
    ctypes.CDLL(os.environ["BENCH_LIBCUDA"], mode=ctypes.RTLD_GLOBAL)
    import numpy as np
    from cuda.bindings import driver as cu
    n = int(sys.argv[1])
    cu.cuInit(0)
    ctx = cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1]
    cu.cuCtxSetCurrent(ctx)
    host = np.arange(n // 8, dtype=np.uint64).view(np.uint8)   # pageable, touched
    d = cu.cuMemAlloc(n)[1]
    assert cu.cuMemcpyHtoD(d, host.ctypes.data, 64 << 20)[0] == 0   # warm-up (pool, paths)
    cu.cuCtxSynchronize()
    t = time.perf_counter()
    rc = cu.cuMemcpyHtoD(d, host.ctypes.data, n)[0]
    cu.cuCtxSynchronize()
    seconds = time.perf_counter() - t
    back = np.zeros_like(host)
    cu.cuMemcpyDtoH(back.ctypes.data, d, n)
    print(json.dumps({"rc": int(rc), "seconds": seconds, "ok": bool((back == host).all())}))
""")

HOLDER = textwrap.dedent("""
    import ctypes, os, sys
    ctypes.CDLL(os.environ["BENCH_LIBCUDA"], mode=ctypes.RTLD_GLOBAL)
    import numpy as np
    from cuda.bindings import driver as cu
    n = int(sys.argv[1])
    cu.cuInit(0)
    cu.cuCtxSetCurrent(cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1])
    host = np.arange(n // 8, dtype=np.uint64).view(np.uint8)
    d = cu.cuMemAlloc(n)[1]
    cu.cuMemcpyHtoD(d, host.ctypes.data, n)
    print("ready", flush=True)
    sys.stdin.readline()
    back = np.zeros_like(host)
    cu.cuMemcpyDtoH(back.ctypes.data, d, n)
    print("ok" if (back == host).all() else "bad", flush=True)
""")

COLD_START = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from restoreprof.optimizer.prewarm import Prewarm, warm
    if sys.argv[2] == "cold":
        t = warm().timings
        print(json.dumps({"init": t.init_s, "contexts": t.contexts_s, "waited": t.total_s}))
    else:
        pre = Prewarm().start()
        time.sleep(float(sys.argv[3]))      # stands for criu restore running meanwhile
        t0 = time.perf_counter()
        t = pre.wait().timings
        print(json.dumps({"init": t.init_s, "contexts": t.contexts_s,
                          "waited": time.perf_counter() - t0}))
""")


def child_json(code: str, args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True, timeout=900, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:6.1f} GB/s" if seconds > 0 else "   n/a"


def bench_pageable(n: int, cfg: OptimizerConfig, env: dict[str, str]) -> list[tuple]:
    plain = child_json(PAGEABLE_H2D, [str(n)], env)
    shim = child_json(PAGEABLE_H2D, [str(n)], exec_environment(cfg, env))
    rows = []
    for label, r in (("(a) pageable H2D, plain", plain), ("(a) pageable H2D, exec", shim)):
        if "error" in r:
            rows.append((label, "error", r["error"][:60]))
        else:
            rows.append((label, f"{r['seconds']:.3f} s", gbps(n, r["seconds"]),
                         "verified" if r["ok"] else "MISMATCH"))
    if "error" not in plain and "error" not in shim:
        rows.append(("(a) speed-up", f"{plain['seconds'] / shim['seconds']:.1f}x", "",
                     GOALS["a"]))
    return rows


def bench_preload(snap: Path, n: int, cfg: OptimizerConfig, repeat: int) -> list[tuple]:
    """The engine in this process: the snapshot into new GPU memory (median of repeat), each
    chunk's crc32c checked by the engine; then a plain read + cuMemcpyHtoD of as many bytes."""
    import numpy as np

    from restoreprof.cuda import driver
    from restoreprof.optimizer.preload import preload_snapshot

    times = []
    for _ in range(repeat):
        loaded = preload_snapshot(snap, cfg)
        times.append(loaded.seconds)
        loaded.release()
    seconds = sorted(times)[len(times) // 2]
    rows = [("(b) engine preload (file->GPU)", f"{seconds:.3f} s", gbps(n, seconds),
             "crc32c checked")]
    driver.primary_context(0)
    dptr = driver.mem_alloc(n)
    host = np.empty(n, dtype=np.uint8)
    t = time.perf_counter()
    with open(snap, "rb") as f:
        f.seek(os.path.getsize(snap) - n)
        f.readinto(memoryview(host))
    driver.copy_htod(dptr, host)
    plain = time.perf_counter() - t
    driver.mem_free(dptr)
    rows.append(("(b) read + cuMemcpyHtoD", f"{plain:.3f} s", gbps(n, plain), ""))
    rows.append(("(b) speed-up", f"{plain / seconds:.1f}x", "", GOALS["b"]))
    return rows


def bench_prewarm(env: dict[str, str], overlap_s: float) -> list[tuple]:
    rows = []
    cold = child_json(COLD_START, [str(PACKAGE_ROOT), "cold"], env)
    warm = child_json(COLD_START, [str(PACKAGE_ROOT), "warm", str(overlap_s)], env)
    for label, r in (("(c) cold: init+ctx", cold),
                     (f"(c) pre-warmed, {overlap_s:.1f} s overlap", warm)):
        if "error" in r:
            rows.append((label, "error", r["error"][:60]))
        else:
            rows.append((label, f"{r['waited']:.3f} s on the path",
                         f"init {r['init']:.3f} ctx {r['contexts']:.3f}", ""))
    return rows


def bench_offload(n: int, cfg: OptimizerConfig, env: dict[str, str], workdir: Path,
                  preload_repeat: int) -> list[tuple]:
    from restoreprof.optimizer.control import ShimControl

    child_env = exec_environment(cfg, env)
    child_env["RESTOREPROF_RUN_DIR"] = str(workdir)
    os.environ["RESTOREPROF_RUN_DIR"] = str(workdir)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(n)], env=child_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            return [("(d) offload/reload", "error", "holder did not start")]
        ctl = ShimControl(proc.pid)
        snap = workdir / "gpu.snap"
        out = ctl.offload(snap, cfg)
        rows = bench_preload(snap, n, cfg, preload_repeat) if preload_repeat else []
        back = ctl.reload(snap, cfg)
        proc.stdin.write("check\n")
        proc.stdin.flush()
        verdict = proc.stdout.readline().strip()
        return [*rows, ("(d) offload (GPU->file)", f"{out['seconds']:.3f} s", gbps(n, out["seconds"]), ""),
                ("(d) reload (file->GPU)", f"{back['seconds']:.3f} s", gbps(n, back["seconds"]),
                 "verified" if verdict == "ok" else "MISMATCH")]
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=8.0, help="transfer size (default 8)")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--repeat", type=int, default=3, help="engine preload runs (median)")
    parser.add_argument("--only", nargs="+", choices=list("abcd"), default=list("abcd"),
                        help="parts to run (default all)")
    parser.add_argument("--overlap", type=float, default=1.0,
                        help="seconds of CRIU work the pre-warm overlaps with (default 1.0)")
    args = parser.parse_args()
    real = libcuda_path()
    if not real:
        print("no libcuda: set RESTOREPROF_LIBCUDA (the fake is tests/fakecuda/build/libcuda.so.1)")
        return 2
    n = int(args.gib * (1 << 30)) // 4096 * 4096
    cfg = OptimizerConfig.load()
    env = dict(os.environ, BENCH_LIBCUDA=real)
    print(f"restoreprof optimizer benchmark: {n / (1 << 30):.2f} GiB, driver {real}")
    print(f"config: streams={cfg.streams} threads={cfg.threads} chunk={cfg.chunk_mb} MiB "
          f"pinned={cfg.pinned}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        workdir = Path(tmp)
        rows = bench_pageable(n, cfg, env) if "a" in args.only else []
        rows += bench_prewarm(env, args.overlap) if "c" in args.only else []
        if "b" in args.only or "d" in args.only:  # (b) preloads the snapshot (d) wrote
            rows += bench_offload(n, cfg, env, workdir, args.repeat if "b" in args.only else 0)
    width = max(len(r[0]) for r in rows)
    for row in rows:
        print(f"{row[0]:<{width}}  " + "  ".join(str(c) for c in row[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
