"""restoreprof run: tune restores end to end and remember the best settings for this host.

    restoreprof run -D DIR      tune restores of a checkpoint
    restoreprof run -p PID      checkpoint PID first (it stops), then tune
    restoreprof run             tune the built-in workload (GPU memory where there is a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from restoreprof import __version__
from restoreprof.checkpoint import checkpoint
from restoreprof.checkpoint.manifest import Manifest
from restoreprof.commands._output import JSON_VERSION
from restoreprof.errors import RestoreprofError, require_root
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.tuner.autotune import MIN_BUDGET, MIN_REPEAT, tune
from restoreprof.tuner.database import TuningDatabase
from restoreprof.tuner.identity import identify
from restoreprof.tuner.trial import Check, TrialRunner, pids_alive
from restoreprof.workloads.controller import HeldMemory

name = "run"
help = "tune restores of a checkpoint (or of a built-in workload) and remember the best settings"

DEFAULT_BUDGET = 16
DEFAULT_REPEAT = 3


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("-D", "--dir", type=Path, help="checkpoint folder to tune restores of")
    what.add_argument("-p", "--pid", type=int,
                      help="checkpoint this process tree first (it stops), into OUTDIR/checkpoint")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="OUTDIR",
                        help="where trial traces go (default ./restoreprof-run-<time>)")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, metavar="N",
                        help=f"restores the search may spend (default {DEFAULT_BUDGET})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="K",
                        help="final runs of default, plain path and winner, for the spread "
                             f"(default {DEFAULT_REPEAT}, at least {MIN_REPEAT})")
    parser.add_argument("--db", type=Path, default=None, metavar="PATH",
                        help="tuning database (default $RESTOREPROF_TUNING_DB, else "
                             "~/.config/restoreprof/tuning.json)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="leave the images in the page cache between trials (default: evict "
                             "them, as after a reboot or on a new node)")
    parser.add_argument("--no-trace", action="store_true",
                        help="time trials from the restore's steps only, without the profiler")
    parser.add_argument("--no-save", action="store_true",
                        help="do not write the tuning database (a winner that is not "
                             "significantly faster is never saved)")
    parser.add_argument("--mib", type=int, default=None, metavar="MIB",
                        help="built-in workload: host memory it holds (default 512, 256 with a GPU)")
    parser.add_argument("--gpu-mib", type=int, default=None, metavar="MIB",
                        help="built-in workload: GPU memory it holds (default 2048 with a GPU)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON at the end")


def run(args: argparse.Namespace) -> int:
    require_root("restoreprof run")
    if args.repeat < MIN_REPEAT:
        raise RestoreprofError(f"--repeat {args.repeat} cannot measure the run-to-run spread",
                               hint=f"give --repeat {MIN_REPEAT} or more (default "
                                    f"{DEFAULT_REPEAT})")
    if args.budget < MIN_BUDGET:
        raise RestoreprofError(f"--budget {args.budget} is too small to search",
                               hint=f"give at least {MIN_BUDGET} restores (16 or more is better)")
    if args.dir is not None:
        Manifest.load(args.dir)   # a bad -D fails here, before anything is created
    outdir = _new_folder(args.output or Path(f"restoreprof-run-{time.strftime('%Y%m%d-%H%M%S')}"))
    say = _printer(sys.stderr if args.json else sys.stdout)
    holders: list[HeldMemory] = []
    with _terminate_as_interrupt():
        try:
            directory, check = _checkpoint_to_tune(args, outdir, holders, say)
            return _tune(args, directory, outdir, check, say)
        finally:
            for holder in holders:
                holder.stop()   # only still running when something failed before its checkpoint


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so a trial's cleanup (its restored processes killed, its
    copy of the checkpoint removed) runs either way."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _printer(stream) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=stream, flush=True)
    return say


def _new_folder(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise RestoreprofError(f"{path} is not empty",
                               hint="give -o a new or empty folder; restoreprof never overwrites one")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _checkpoint_to_tune(args: argparse.Namespace, outdir: Path, holders: list[HeldMemory],
                        say: Callable[[str], None]) -> tuple[Path, Check]:
    """(checkpoint folder, how to check a restored tree) for -D, -p or the built-in workload."""
    if args.dir is not None:
        return args.dir.resolve(), pids_alive
    if args.pid is not None:
        say(f"checkpointing PID {args.pid} into {outdir / 'checkpoint'} (it stops; restore it "
            f"later with 'restoreprof restore -D {outdir / 'checkpoint'}')")
        checkpoint(args.pid, outdir / "checkpoint", leave_running=False,
                   optimizer=OptimizerConfig.load())
        return outdir / "checkpoint", pids_alive
    holder = _start_workload(args, outdir, say)
    holders.append(holder)
    group = [holder, *holder.children()]
    checkpoint(holder.pid, outdir / "checkpoint", leave_running=False,
               optimizer=OptimizerConfig.load())
    holders.clear()   # checkpointed: CRIU has stopped it

    def data_intact(result: dict) -> str | None:
        bad = [h.pid for h in group if not h.verify()]
        return f"restored data differs from what PIDs {bad} held" if bad else pids_alive(result)

    return outdir / "checkpoint", data_intact


def _start_workload(args: argparse.Namespace, outdir: Path, say: Callable[[str], None]) -> HeldMemory:
    from restoreprof.cuda import driver

    gpu = driver.available()
    mib = args.mib if args.mib is not None else (256 if gpu else 512)
    gpu_mib = (args.gpu_mib if args.gpu_mib is not None else 2048) if gpu else 0
    prefix = None
    if gpu and _shim_ready():
        prefix = [sys.executable, "-m", "restoreprof", "exec", "--"]
    say(f"built-in workload: {mib} MiB of host memory" +
        (f", {gpu_mib} MiB of GPU memory" if gpu_mib else " (no GPU here)") +
        (" under the interception library" if prefix else ""))
    return HeldMemory.start(outdir / "workload", mib, gpu_mib=gpu_mib, prefix=prefix)


def _shim_ready() -> bool:
    from restoreprof.system.paths import shim_library_path

    try:
        return shim_library_path().exists()
    except (ImportError, RestoreprofError):
        return False


def _tune(args: argparse.Namespace, directory: Path, outdir: Path, check: Check,
          say: Callable[[str], None]) -> int:
    host = identify(directory)
    db = TuningDatabase(args.db)
    stored = db.lookup(host)
    start = None
    if stored:
        _key, entry = stored
        start = entry["settings"] | entry.get("restore", {})
    cache = "warm" if args.warm_cache else "cold"
    say(f"restoreprof run: tuning restores of {directory}")
    say(f"host: {host.key}; page cache {cache}")
    runner = TrialRunner(directory, outdir, check, trace=not args.no_trace, cold=not args.warm_cache,
                         say=say)
    outcome = tune(runner, budget=args.budget, repeat=args.repeat, start=start, say=say)
    say("")
    for line in outcome.summary_lines():
        say(line)
    spreads = outcome.spreads
    facts = {"restore": {"verify": outcome.winner.get("verify", True)},
             "significant": outcome.significant,
             "spread_s_max": outcome.spread_s if math.isfinite(outcome.spread_s) else None,
             "tuned_s": spreads["tuned"].median_s, "default_s": spreads["default"].median_s,
             "plain_s": spreads["plain"].median_s,
             "speedup_over_default": round(outcome.speedup_over_default, 3),
             "speedup_over_plain": round(outcome.speedup_over_plain, 3),
             "spread_s": {k: sorted(s.times_s) for k, s in spreads.items()},
             "bottleneck": outcome.bottleneck, "checkpoint": str(directory),
             "trials": len(outcome.trials), "cache": cache, "traced": runner.traced}
    summary = {"version": JSON_VERSION, "schema": "run", "restoreprof": __version__,
               "host": host.to_dict(), "key": host.key, "winner": outcome.winner, **facts,
               "outdir": str(outdir), "trial_results": [t.to_dict() for t in outcome.trials]}
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not outcome.significant:
        say(f"nothing saved in {db.path}: {outcome.verdict()}")
    elif not args.no_save:
        db.record(host, outcome.settings(), **facts)
        say(f"saved for '{host.key}' in {db.path}: 'restoreprof restore' and 'restoreprof exec' "
            "now start from these settings")
    say(f"traces and reports of every trial: {outdir}/trial-N/")
    if args.json:
        print(json.dumps(summary, indent=2))  # versioned above, as summary.json is
    return 0
