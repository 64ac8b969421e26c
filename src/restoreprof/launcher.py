"""`restoreprof-py` (what the native `restoreprof` front door, restoreprof/front, hands over to)
and `python -m restoreprof`: a restore is handed to a running warm pool before the command
line's parser and commands are imported (they cost the client about a third of its own start:
10 of 35 ms on the development machine), everything else, and a restore no pool takes, goes to
cli.main."""

from __future__ import annotations

import contextlib
import os
import sys


def main() -> int:
    if sys.argv[1:2] == ["restore"]:  # a running warm pool restores, warm
        from restoreprof.commands.pooled_restore import restore_through_pool

        code = restore_through_pool(sys.argv[2:])
        if code is not None:
            # The pool's answer is printed: nothing else of this process is left to run or
            # keep, and the interpreter's teardown would add 5 ms to the restore's wall clock.
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):  # a reader gone (`| head`)
                    stream.flush()
            os._exit(code)
    from restoreprof.cli import main as cli_main

    return cli_main()
