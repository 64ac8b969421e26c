"""What the `restoreprof` command's native front door costs a command it hands over to Python,
and what it saves a restore a warm pool carries out (no GPU needed for the first):

    .venv/bin/python benchmarks/bench_front_door.py [--runs 30] [--rounds 3]

Times `restoreprof restore -D MISSING` with no pool running (so every run goes to Python and
fails at once on the missing folder) through the front door (`BIN/restoreprof`) and straight
through `BIN/restoreprof-py`, alternated round by round so that drift hits both, and prints the
mean per command of each round and the median over rounds. BIN is this interpreter's folder.
(A pool restore's start, front door against Python, is bench_warm_limit.py --client.)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def per_command_ms(command: list[str], runs: int, env: dict) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        done = subprocess.run(command, capture_output=True, env=env)
        if b"does not exist" not in done.stderr:
            raise SystemExit(f"{command[0]} did not fail as expected:\n{done.stderr.decode()}")
    return (time.perf_counter() - start) / runs * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="commands per round and way")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    ways = {"front door (restoreprof)": bin_dir / "restoreprof",
            "Python (restoreprof-py)": bin_dir / "restoreprof-py"}
    for path in ways.values():
        if not path.exists():
            raise SystemExit(f"{path} not found: install restoreprof into this environment")
    with tempfile.TemporaryDirectory() as run_dir:  # an empty run folder: no pool answers
        env = {**os.environ, "RESTOREPROF_RUN_DIR": run_dir}
        missing = str(Path(run_dir) / "missing")
        rounds: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.rounds):
            for way, path in ways.items():
                rounds[way].append(per_command_ms([str(path), "restore", "-D", missing],
                                                  args.runs, env))
    print(f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{args.runs} commands per round, {args.rounds} rounds, no pool")
    for way, values in rounds.items():
        print(f"  {way:<26} median {statistics.median(values):7.1f} ms per command   rounds: "
              + ", ".join(f"{v:.1f}" for v in values))
    front, python = (statistics.median(v) for v in rounds.values())
    print(f"  the front door's cost: {front - python:+.1f} ms per command handed over")


if __name__ == "__main__":
    main()
