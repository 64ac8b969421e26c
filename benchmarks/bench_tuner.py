"""Tune an 8 GiB GPU restore with 'restoreprof run' and print default vs tuned, with spread.

    python benchmarks/bench_tuner.py                      8 GiB on the GPU (the H100 case)
    python benchmarks/bench_tuner.py --gpu-mib 0 --mib 512   CPU only (no GPU needed)

Runs `restoreprof run` on the built-in workload (under the interception library where it is
built, so GPU memory is offloaded at checkpoint and the tuner searches streams, chunk size,
threads and pinned staging), with its own tuning database so the host's stays as it is. The
final runs of the default, the plain path and the winner are interleaved, `--repeat`
times each; the table shows min / median / max of each. --json FILE keeps run's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-mib", type=int, default=8192)
    parser.add_argument("--mib", type=int, default=256, help="host memory the workload holds")
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warm-cache", action="store_true", help="keep images in the page cache")
    parser.add_argument("--no-trace", action="store_true", help="without the profiler")
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="copy run's summary.json here")
    args = parser.parse_args()

    out = args.output or Path(tempfile.mkdtemp(prefix="bench-tuner-")) / "run"
    cmd = [sys.executable, "-m", "restoreprof", "run", "-o", str(out), "--budget", str(args.budget),
           "--repeat", str(args.repeat), "--mib", str(args.mib), "--gpu-mib", str(args.gpu_mib),
           "--db", str(out.parent / "bench-tuning.json")]
    cmd += ["--warm-cache"] * args.warm_cache + ["--no-trace"] * args.no_trace
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd, env=os.environ).returncode != 0:
        return 1
    summary = json.loads((out / "summary.json").read_text())
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\nhost: {summary['key']}; cache {summary['cache']}; "
          f"{summary['trials']} restores; profiler {'on' if summary['traced'] else 'off'}")
    print(f"winner: {summary['winner']}")
    print(f"{'':<10} {'min s':>8} {'median s':>9} {'max s':>8}  runs")
    for label in ("default", "plain", "tuned"):
        times = summary["spread_s"][label]
        if times:
            print(f"{label:<10} {min(times):>8.3f} {statistics.median(times):>9.3f} "
                  f"{max(times):>8.3f}  {len(times)}")
    print(f"speedup: {summary['speedup_over_default']:.2f}x over the default, "
          f"{summary['speedup_over_plain']:.2f}x over the plain path")
    spread = summary.get("spread_s_max")
    print(f"run-to-run spread {spread:.3f} s; " if spread is not None else "spread unknown; ",
          end="")
    print("winner saved (significant)" if summary.get("significant") else
          "no significant difference: nothing saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
