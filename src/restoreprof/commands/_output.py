"""Small printing helpers shared by the commands: the step table, and progress while long work
runs (on a terminal only: piped, redirected, --json or --quiet, nothing is drawn)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator

from restoreprof import __version__

# Bumped when a JSON output changes incompatibly; each output's JSON Schema is
# restoreprof/schemas/<name>.json (the package ships them).
JSON_VERSION = 1


def print_json(data: dict, schema: str) -> None:
    """One JSON document on stdout, with its version and the name of the schema it follows."""
    document = {"version": JSON_VERSION, "schema": schema, "restoreprof": __version__, **data}
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def print_steps(steps, title: str = "step") -> None:
    """One line per timed step, then the wall time from the first start to the last end."""
    if not steps:
        return
    origin = min(s.start_ns for s in steps)
    print(f"  {title:<34} {'pid':>7} {'start s':>8} {'time s':>8}")
    for s in sorted(steps, key=lambda s: (s.start_ns, s.end_ns)):
        pid = str(s.pid) if s.pid else ""
        print(f"  {s.name:<34} {pid:>7} {(s.start_ns - origin) / 1e9:>8.3f} {s.seconds:>8.3f}")
    total = (max(s.end_ns for s in steps) - origin) / 1e9
    print(f"  {'total':<34} {'':>7} {'':>8} {total:>8.3f}")


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="draw no progress (none is drawn when stderr is not a terminal)")


def progress_wanted(args: argparse.Namespace, stream=None) -> bool:
    """Progress only for a person watching: stderr a terminal, not --quiet, not --json."""
    stream = sys.stderr if stream is None else stream
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class StepProgress:
    """Each running step as a spinner line with its elapsed time, on stderr (a StepObserver).

    Steps run concurrently on several threads (one per restored process): each gets its own
    line, keyed by name, pid and thread. The lines vanish when the work ends, so the step
    table printed afterwards stands alone.
    """

    def __init__(self, title: str, stream=None) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._console = Console(file=stream or sys.stderr)
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=self._console, transient=True)
        self._title = title
        self._overall = self._progress.add_task(title, total=None)
        self._tasks: dict[tuple[str, int | None, int], int] = {}
        self._lock = threading.Lock()
        self.finished = 0

    def step_started(self, name: str, pid: int | None) -> None:
        label = f"  {name}" + (f" (pid {pid})" if pid else "")
        with self._lock:
            self._tasks[(name, pid, threading.get_ident())] = self._progress.add_task(label,
                                                                                     total=None)

    def step_finished(self, step) -> None:
        with self._lock:
            task = self._tasks.pop((step.name, step.pid, threading.get_ident()), None)
            self.finished += 1
        if task is not None:
            self._progress.remove_task(task)
        self._progress.update(self._overall,
                              description=f"{self._title}: {self.finished} steps done")

    def describe(self, text: str) -> None:
        """Say what runs now (for work without steps: calibrate's measurements)."""
        self._progress.update(self._overall, description=text)

    def __enter__(self) -> StepProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()


@contextlib.contextmanager
def step_progress(args: argparse.Namespace, title: str) -> Iterator[StepProgress | None]:
    """Progress for the steps of the work inside the block, where wanted (else None): every
    StepClock made inside reports to it."""
    from restoreprof.checkpoint.steps import observing

    if not progress_wanted(args):
        yield None
        return
    with StepProgress(title) as progress, observing(progress):
        yield progress
