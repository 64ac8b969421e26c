"""Screen captures of the live view during a real restore, without a terminal (no tmux needed).

Runs the ``restoreprof tui --restore DIR`` app headless (Textual's ``run_test``) on
``Target(restore_dir=DIR)``, and prints the screen as plain text every --interval seconds
while the restore runs, then once more after it ended, for pasting into an issue:

    source benchmarks/h100/env.sh
    rp_python benchmarks/h100/tui_capture.py -D /path/to/checkpoint [--save DIR] [-o OUTDIR]

Needs root (eBPF), like the view itself. The ceilings are this machine's calibrated ones (run
'restoreprof calibrate' first to get reference lines on the graphs). The restored processes
keep running afterwards: stop them yourself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-D", "--dir", type=Path, required=True,
                        help="checkpoint folder (from 'restoreprof checkpoint -D')")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between captures during the restore (default 0.5)")
    parser.add_argument("--size", default="120x40", help="terminal size COLSxROWS (default 120x40)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="stop tracing after this many seconds (default 600)")
    parser.add_argument("--final-only", action="store_true",
                        help="print only the capture after the restore ended")
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="also write each capture to DIR/capture-NNN.txt (final: final.txt)")
    parser.add_argument("-o", "--output", type=Path, metavar="OUTDIR",
                        help="export the trace at the end, as 'restoreprof trace -o' does")
    args = parser.parse_args(argv)
    try:
        cols, rows = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r} is not COLSxROWS")
    args.size = (cols, rows)
    if not args.dir.is_dir():
        parser.error(f"no checkpoint folder at {args.dir}")
    if args.interval <= 0:
        parser.error("--interval must be positive")
    return args


def emit(title: str, screen: str, save: Path | None, name: str) -> None:
    text = "\n".join(line.rstrip() for line in screen.rstrip("\n").splitlines())
    print(f"----- {title} " + "-" * max(0, 60 - len(title)), flush=True)
    print(text, flush=True)
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / f"{name}.txt").write_text(text + "\n")


async def capture(args: argparse.Namespace) -> int:
    from restoreprof.tui.app import RestoreprofApp
    from restoreprof.tui.feed import LiveFeed

    from restoreprof.probes.session import Target

    feed = LiveFeed(Target(restore_dir=args.dir.resolve()), duration_s=args.timeout)
    app = RestoreprofApp(feed)
    t0 = time.monotonic()
    count = 0
    async with app.run_test(size=args.size) as pilot:
        while True:
            await pilot.pause(args.interval)
            shown = app.shown
            if app.feed_error is not None or (shown is not None and shown.finished):
                break
            if app.return_code is not None:  # the app gave up (e.g. the feed failed at start)
                break
            if shown is None or args.final_only:
                continue
            count += 1
            emit(f"t={time.monotonic() - t0:5.1f} s (capture {count})", app.export_screen_text(),
                 args.save, f"capture-{count:03d}")
        await pilot.pause(0.3)  # the last frame drawn
        emit(f"final, t={time.monotonic() - t0:.1f} s", app.export_screen_text(), args.save,
             "final")
        await pilot.press("q")
    if app.feed_error is not None:
        print(f"the trace feed failed: {app.feed_error}", file=sys.stderr)
        return 1
    if args.output is not None and feed.final_trace is not None:
        from restoreprof.tui import pipeline

        report = pipeline.analyze(feed.final_trace, feed.ceilings)
        paths = pipeline.export_all(feed.final_trace, report, args.output)
        print(f"exported {len(paths)} files to {args.output.resolve()}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from restoreprof.errors import RestoreprofError, require_root

    try:
        require_root("tui_capture.py (live tracing)")
        return asyncio.run(capture(args))
    except RestoreprofError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
