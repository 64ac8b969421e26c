"""restoreprof warm: hold CUDA contexts and the staging pool until stopped."""

from __future__ import annotations

import argparse
import signal
import threading

from restoreprof.optimizer import config
from restoreprof.optimizer.prewarm import warm

name = "warm"
help = "keep CUDA initialised and a pinned staging pool ready (for hosts without persistence mode)"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-pool", action="store_true",
                        help="hold contexts only, no pinned staging pool")
    config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    ready = warm(cfg, with_pool=not args.no_pool)
    t = ready.timings
    print(f"warm: {t.devices} GPU(s); cuInit {t.init_s * 1e3:.0f} ms, "
          f"contexts {t.contexts_s * 1e3:.0f} ms, staging pool {t.pool_bytes >> 20} MiB in "
          f"{t.pool_s * 1e3:.0f} ms")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print("holding them; Ctrl-C or SIGTERM to stop", flush=True)
    while not stop.wait(3600):
        pass
    ready.release()
    print("warm: released")
    return 0
