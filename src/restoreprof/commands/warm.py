"""restoreprof warm: the warm pool. Hold cuInit, the CUDA contexts and the engine's staging pool,
and preload snapshots for `restoreprof restore` (optimizer.pool), until stopped.

Its settings are resolved here as every command resolves them (flags, environment, config
file, tuning DB): the staging it pins is the one a restore with the same settings uses as it is.

Hot snapshots (optimizer.hot_snapshots): --hold keeps snapshots in pinned memory from the
start; after a restore read one from the page cache, the pool takes it in too (auto-hold),
both within --hold-mib, least recently used first out.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import threading
from pathlib import Path

from restoreprof.commands.pooled_restore import prepare_restores, serve_restore
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import config
from restoreprof.optimizer.hot_snapshots import HotSnapshots, default_budget_bytes, snapshots_in
from restoreprof.optimizer.pool import WarmPool, hold_through_pool, pool_running

name = "warm"
help = ("keep CUDA warm (contexts, pinned staging pool) and preload GPU memory for "
        "'restoreprof restore'")
HOLD_ENV = "RESTOREPROF_HOLD_MIB"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-staging", action="store_true",
                        help="hold contexts only, no staging pool (made on first use)")
    parser.add_argument("--hold", action="append", default=[], type=Path,
                        metavar="DIR_OR_SNAPSHOT",
                        help="keep this checkpoint's GPU snapshots (or this gpu-*.snap) in "
                             "pinned memory, for restores at the link's rate (repeatable; where "
                             "a pool runs already, it is asked to and this command returns)")
    parser.add_argument("--hold-mib", type=int, default=None, metavar="N",
                        help=f"pinned memory hot snapshots may use, MiB (default ${HOLD_ENV}, "
                             "else a quarter of this host's memory; 0: none)")
    parser.add_argument("--restores", action=argparse.BooleanOptionalAction, default=True,
                        help="carry out this user's 'restoreprof restore' here, so its start-up "
                             "and imports are paid once (the command restores by itself where "
                             "no pool runs or this one declines)")
    parser.add_argument("--auto-hold", action=argparse.BooleanOptionalAction, default=True,
                        help="after a restore read a snapshot from disk, hold it hot (within "
                             "--hold-mib)")
    config.add_arguments(parser)


def hold_budget_bytes(flag_mib: int | None) -> int:
    """--hold-mib, else $RESTOREPROF_HOLD_MIB, else default_budget_bytes()."""
    text = os.environ.get(HOLD_ENV, "")
    if flag_mib is None and text.strip():
        try:
            flag_mib = int(text, 0)
        except ValueError:
            flag_mib = -1
        if flag_mib < 0:
            raise RestoreprofError(f"{HOLD_ENV}={text!r} is not a number of MiB",
                                   hint=f"set {HOLD_ENV} to 0 or more, or unset it")
    if flag_mib is not None and flag_mib < 0:
        raise RestoreprofError(f"--hold-mib {flag_mib} is negative",
                               hint="give 0 (no hot snapshots) or more MiB")
    return default_budget_bytes() if flag_mib is None else flag_mib << 20


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    hot = HotSnapshots(hold_budget_bytes(args.hold_mib), cfg.threads, args.auto_hold)
    if args.hold and hot.budget_bytes == 0:
        raise RestoreprofError("--hold with --hold-mib 0 holds nothing",
                               hint="give --hold-mib room for the snapshots, or drop --hold")
    targets = [s for target in args.hold for s in snapshots_in(target)]
    if targets and pool_running():  # one pool per user: the running one takes them in
        for snapshot in targets:
            held = hold_through_pool(snapshot)
            print(f"warm: the running pool holds {snapshot} hot: {held['bytes'] >> 20} MiB pinned, "
                  f"checked, in {held['intake_s']:.2f} s")
        return 0
    # kill -USR1 PID: every thread's Python stack on stderr (what a pool that hangs is doing)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    warm_pool = WarmPool(cfg, with_staging=not args.no_staging, hot=hot)
    if args.restores:
        prepare_restores()
        warm_pool.handlers["restore"] = serve_restore
    t = warm_pool.warmed.timings
    staging = (f"{warm_pool.staging_bytes() >> 20} MiB pinned" if cfg.pinned
               else "pageable (--no-pinned: nothing pinned)")
    print(f"warm: {t.devices} GPU(s); cuInit {t.init_s * 1e3:.0f} ms, "
          f"contexts {t.contexts_s * 1e3:.0f} ms, staging pool {staging} in "
          f"{warm_pool.staging_s * 1e3:.0f} ms")
    try:
        for snapshot in targets:
            held = hot.hold_file(snapshot)
            print(f"warm: holding {snapshot} hot: {held.held_bytes >> 20} MiB pinned, checked, "
                  f"in {held.intake_s:.2f} s")
        path = warm_pool.bind()
        print(f"serving preloads on {path}; hot snapshots within {hot.budget_bytes >> 20} MiB, "
              f"auto-hold {'on' if hot.auto_hold else 'off'}; Ctrl-C or SIGTERM to stop",
              flush=True)
        warm_pool.serve(stop)
    finally:
        warm_pool.release()
    s = warm_pool.stats
    print(f"warm: released; {s.served} snapshot(s) preloaded ({s.bytes / 1e9:.2f} GB), "
          f"{s.failed} failed; {s.hot} sent from hot copies; {s.handled.get('restore', 0)} "
          f"restore(s) carried out")
    return 0
