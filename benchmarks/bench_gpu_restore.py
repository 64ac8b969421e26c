"""Plain against optimized GPU process restore, side by side in one run (issue 8's figures).

    python benchmarks/bench_gpu_restore.py --gib 8 16 [--cold] [--modes plain reload preload pool]

For each size: a process holding that much GPU memory is checkpointed and restored through
restoreprof's commands twice: plain (CRIU + the driver's checkpoint/restore) and optimized
(started under 'restoreprof exec': GPU memory offloaded around the driver checkpoint, preloaded
by restoreprof while CRIU restores and adopted by the process after the driver's restore; the
"reload" column is that adoption, or the in-process reload where preload is off). "pool": the
same, with a warm pool (`restoreprof warm`) running, which does the preload. Data verified after
every restore. Prints the table: "after CRIU" is the GPU stage once CRIU is done (driver restore
+ adoption or reload), "GPU GB/s" the GPU memory over that stage, "preload GB/s" over the
preload (which overlaps CRIU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_checkpoint import run_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, nargs="+", default=[8.0])
    parser.add_argument("--host-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=["plain", "reload", "preload", "pool"],
                        default=["plain", "reload", "preload", "pool"],
                        help="plain: CRIU + driver; reload/preload: under restoreprof exec, the "
                             "GPU memory reloaded in the process / preloaded during CRIU; pool: "
                             "preloaded by a running warm pool")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rp-bench-gpu"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for gib in args.gib:
        for mode in args.modes:
            case = run_case(args.work, args.host_mib, int(gib * 1024), 1, args.cold, args.repeat,
                            optimized=mode != "plain", preload=mode in ("preload", "pool"),
                            pool=mode == "pool")
            case["mode"] = mode
            rows.append((gib, case))
            print(json.dumps(case), flush=True)
    print(f"\n{'GiB':>4} {'path':<8} {'cache':<5} {'total s':>8} {'criu s':>7} {'driver s':>8} "
          f"{'adopt/reload s':>14} {'after CRIU s':>12} {'GPU GB/s':>8} {'preload s':>9} "
          f"{'preload GB/s':>12} {'images GB':>9} {'wall s':>6} data")
    for gib, case in rows:
        for r in case["restores"]:
            driver_s = sum(r["gpu_driver_restore_s"])
            gpu_s = r["gpu_reload_s"] + driver_s
            gb = gib * 2**30 / 1e9
            preload = f"{gb / r['gpu_preload_s']:>12.1f}" if r["gpu_preload_s"] else f"{'-':>12}"
            by = r.get("preloaded_by")
            unused = " (the pool did not preload!)" if case["mode"] == "pool" and by != "pool" \
                else ""
            print(f"{gib:>4g} {case['mode']:<8} "
                  f"{'cold' if r['cold'] else 'warm':<5} {r['total_s']:>8.2f} "
                  f"{r['criu_restore_s']:>7.2f} {driver_s:>8.2f} {r['gpu_reload_s']:>14.2f} "
                  f"{gpu_s:>12.2f} {gb / gpu_s if gpu_s else 0:>8.1f} {r['gpu_preload_s']:>9.2f} "
                  f"{preload} {case['images_bytes'] / 1e9:>9.2f} {r['wall_s']:>6.2f} "
                  f"{'OK' if r['verified'] else 'MISMATCH'}{unused}")
    if args.json:
        args.json.write_text(json.dumps([c for _, c in rows], indent=2))


if __name__ == "__main__":
    main()
