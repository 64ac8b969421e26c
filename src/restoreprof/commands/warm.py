"""restoreprof warm: the warm pool. Hold cuInit, the CUDA contexts and the engine's staging pool,
and preload snapshots for `restoreprof restore` (optimizer.pool), until stopped.

Its settings are resolved here as every command resolves them (flags, environment, config
file, tuning DB): the staging it pins is the one a restore with the same settings uses as it is.
"""

from __future__ import annotations

import argparse
import signal
import threading

from restoreprof.optimizer import config
from restoreprof.optimizer.pool import WarmPool

name = "warm"
help = ("keep CUDA warm (contexts, pinned staging pool) and preload GPU memory for "
        "'restoreprof restore'")


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-staging", action="store_true",
                        help="hold contexts only, no staging pool (made on first use)")
    config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    warm_pool = WarmPool(cfg, with_staging=not args.no_staging)
    t = warm_pool.warmed.timings
    staging = (f"{warm_pool.staging_bytes() >> 20} MiB pinned" if cfg.pinned
               else "pageable (--no-pinned: nothing pinned)")
    print(f"warm: {t.devices} GPU(s); cuInit {t.init_s * 1e3:.0f} ms, "
          f"contexts {t.contexts_s * 1e3:.0f} ms, staging pool {staging} in "
          f"{warm_pool.staging_s * 1e3:.0f} ms")
    path = warm_pool.bind()
    print(f"serving preloads on {path}; Ctrl-C or SIGTERM to stop", flush=True)
    try:
        warm_pool.serve(stop)
    finally:
        warm_pool.release()
    s = warm_pool.stats
    print(f"warm: released; {s.served} snapshot(s) preloaded ({s.bytes / 1e9:.2f} GB), "
          f"{s.failed} failed")
    return 0
