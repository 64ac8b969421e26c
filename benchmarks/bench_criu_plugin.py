"""`criu restore` with restoreprof's CRIU plugin against plain `criu restore` + the driver's
restore, side by side in one run, data verified after every restore (issue 16's figure).

    python benchmarks/bench_criu_plugin.py --gib 8 --repeat 5 [--pool] [--cold]

On the GPU machine, from the repository root: `source benchmarks/h100/env.sh` (it installs
restoreprof, whose package build compiles the plugin), then
`rp_python benchmarks/bench_criu_plugin.py --gib 8 --repeat 5 --pool`. About 3 minutes at 8 GiB
with 5 restores per path.

Per path, one process holding GIB of GPU memory (restoreprof.workloads.hold_memory) is
checkpointed once, then restored REPEAT times from the same images (killed between restores):

- plain:  driver lock + checkpoint (this script, cuda-python), `criu dump`; timed: `criu restore
          --restore-detached`, then the driver's restore + unlock of the process.
- plugin: the process runs under `restoreprof exec`; `criu dump --lib DIR` (the plugin offloads,
          locks and checkpoints); timed: `criu restore --restore-detached --lib DIR` alone: the
          plugin preloads while CRIU restores, and CRIU returns once the driver's restore,
          unlock and the adoption are done. With --pool, a warm pool (`restoreprof warm`) runs.

Timed from the command's start to the GPU memory back, verified afterwards (not timed) by the
process re-hashing what it holds. Prints each restore, then the medians and the spread.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_checkpoint import WarmPool, drop_caches

from restoreprof.criu_plugin import build_plugin, plugin_dir
from restoreprof.cuda import driver
from restoreprof.system.paths import criu_path
from restoreprof.workloads.controller import HeldMemory

EXEC = [sys.executable, "-m", "restoreprof", "exec", "--"]


def criu(*args: str) -> float:
    """Runs criu; seconds it took. Exits with the log's tail on failure."""
    start = time.monotonic()
    result = subprocess.run([criu_path(), *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        log = Path(args[args.index("-o") + 1]) if "-o" in args else None
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else result.stderr
        raise SystemExit(f"criu {args[0]} failed ({result.returncode}):\n{tail}")
    return seconds


def wait_gone(pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def checkpoint(path: str, work: Path, gib: float, host_mib: int) -> tuple[HeldMemory, Path]:
    images = work / path / "images"
    shutil.rmtree(work / path, ignore_errors=True)
    images.mkdir(parents=True)
    holder = HeldMemory.start(work / path / "state", host_mib, gpu_mib=int(gib * 1024),
                              prefix=EXEC if path == "plugin" else None)
    dump = ["dump", "-t", str(holder.pid), "-D", str(images), "-o", str(work / path / "dump.log")]
    if path == "plugin":
        seconds = criu(*dump, "--lib", str(plugin_dir()))
    else:
        start = time.monotonic()
        driver.process_lock(holder.pid, 30_000)
        driver.process_checkpoint(holder.pid)
        criu(*dump)
        seconds = time.monotonic() - start
    print(f"{path}: checkpoint of {gib:g} GiB in {seconds:.2f} s "
          f"({sum(p.stat().st_size for p in images.iterdir()) / 1e9:.2f} GB of images)", flush=True)
    wait_gone(holder.pid)
    return holder, images


def restore(path: str, holder: HeldMemory, images: Path, work: Path, cold: bool) -> dict:
    if cold:
        drop_caches()
    log = work / path / "restore.log"  # outside the images: the plugin writes nothing there
    start = time.monotonic()
    args = ["restore", "-D", str(images), "-o", str(log), "-v3", "--restore-detached"]
    if path == "plugin":
        criu_s = criu(*args, "--lib", str(plugin_dir()))
        driver_s = 0.0
    else:
        criu_s = criu(*args)
        t = time.monotonic()
        # by state, as restoreprof restore does (the fake driver used to try this on a CPU
        # machine keeps its state per calling process)
        if driver.process_state(holder.pid) == "checkpointed":
            driver.process_restore(holder.pid)
        if driver.process_state(holder.pid) == "locked":
            driver.process_unlock(holder.pid)
        driver_s = time.monotonic() - t
    total_s = time.monotonic() - start
    verified = holder.verify()
    notes = [line.split("restoreprof: ", 1)[1] for line in log.read_text(errors="replace")
             .splitlines() if "restoreprof: PID" in line] if path == "plugin" else []
    holder.stop()
    wait_gone(holder.pid)
    return {"path": path, "total_s": total_s, "criu_s": criu_s, "driver_s": driver_s,
            "verified": verified, "notes": notes}


def summary(rows: list[dict], path: str) -> tuple[float, str]:
    times = [r["total_s"] for r in rows if r["path"] == path]
    median = statistics.median(times)
    return median, f"median {median:.2f} s, min {min(times):.2f}, max {max(times):.2f} (n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=8.0, help="GPU memory the process holds")
    parser.add_argument("--host-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="restores per path")
    parser.add_argument("--pool", action="store_true", help="run a warm pool for the plugin")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-bench-criu-plugin"))
    args = parser.parse_args()
    build_plugin()
    driver.init()  # the plain path's driver calls run in this process, warm: in its favour
    held = {path: checkpoint(path, args.work, args.gib, args.host_mib)
            for path in ("plain", "plugin")}
    rows = []
    with WarmPool(dict(os.environ)) if args.pool else contextlib.nullcontext():
        for i in range(args.repeat):
            for path in ("plain", "plugin"):  # interleaved: drift hits both alike
                row = restore(path, *held[path], args.work, args.cold)
                rows.append(row)
                print(f"{i + 1}/{args.repeat} {path:<6} total {row['total_s']:6.2f} s  "
                      f"(criu {row['criu_s']:.2f} s, driver after criu {row['driver_s']:.2f} s) "
                      f"data {'OK' if row['verified'] else 'MISMATCH'}"
                      + (f"  [{'; '.join(row['notes'])}]" if row["notes"] else ""), flush=True)
    plain, plain_text = summary(rows, "plain")
    plugin, plugin_text = summary(rows, "plugin")
    cache = "cold" if args.cold else "warm"
    print(f"\n{args.gib:g} GiB, {cache} page cache{', warm pool' if args.pool else ''}:")
    print(f"  plain criu + driver restore : {plain_text}")
    print(f"  criu with restoreprof plugin: {plugin_text}")
    print(f"  speedup (medians): {plain / plugin:.1f}x")
    bad = [r for r in rows if not r["verified"]]
    print("  data: all verified" if not bad else f"  data: {len(bad)} restores MISMATCHED")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
