"""One trial: restore an untouched copy of the checkpoint under the profiler, check, clean up.

    copy (hard links) -> evict its pages (cold cache) -> restore in a fresh process, traced
    -> check the restored processes -> kill and reap them -> keep the trace in OUTDIR/trial-N/

CRIU restores with the original PIDs, so every restored tree is gone before the next trial.
An interrupted trial (Ctrl-C, or SIGTERM, which `restoreprof run` turns into one) cleans up
the same way, with further signals held off meanwhile: the restore's own process group (it
and its criu) is killed, the restored processes are stopped and the copy removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from restoreprof.checkpoint.manifest import Manifest
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.tuner import restore_once
from restoreprof.tuner.space import Point, split

# check(restore result dict) -> None when the restored processes are right, else why not.
Check = Callable[[dict], str | None]


@dataclass
class Trial:
    number: int
    stage: str                  # "default", "search", "finalist", "repeat"
    point: Point
    seconds: float              # restore wall time, first step start to last step end; inf: failed
    error: str = ""
    steps: list[dict] = field(default_factory=list)
    report: dict | None = None  # the profiler's analysis of this restore
    directory: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.error and math.isfinite(self.seconds)

    def to_dict(self) -> dict:
        return {"number": self.number, "stage": self.stage, "point": self.point,
                "seconds": self.seconds if self.ok else None, "error": self.error,
                "steps": self.steps}


def link_copy(source: Path, destination: Path) -> None:
    """A hard-link copy of a checkpoint folder: instant, and restore never writes the images."""
    for root, _dirs, files in os.walk(source):
        target = destination / Path(root).relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(Path(root) / name, target / name)


def evict(directory: Path) -> None:
    """Drop directory's files from the page cache, so the restore reads them from storage."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)          # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):   # a restored tree may be reparented to us
        os.waitpid(pid, os.WNOHANG)


def stop_tree(pids: list[int], timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL, then wait until every PID is reaped (a restore needs them free)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s / 2
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in pids:
            _reap(pid)
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return
        time.sleep(0.01)
    left = [p for p in pids if Path(f"/proc/{p}").exists()]
    raise RestoreprofError(f"restored PIDs {left} are still there after SIGKILL",
                           hint=f"see 'ps -o pid,stat,cmd -p {','.join(map(str, left))}'; "
                                "the next restore needs these PIDs free")


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM off while cleanup runs (main thread only); one that came
    meanwhile is raised as KeyboardInterrupt afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: arrived.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if arrived:
        raise KeyboardInterrupt


def kill_restore(pid_file: Path, timeout_s: float = 10) -> None:
    """Kill a trial's restore process and its group (criu) if still there, and wait for them."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.01)


def pids_alive(result: dict) -> str | None:
    """The check for a user's checkpoint: every restored PID is running."""
    dead = [p for p in result.get("pids", []) if not _alive(p)]
    return f"restored PIDs {dead} are not running" if dead else None


class Profiler:
    """Runs a command under restoreprof's profiler, or says once why it cannot."""

    def __init__(self, enabled: bool, say: Callable[[str], None]) -> None:
        self.enabled, self._say = enabled, say

    def run(self, argv: list[str], trial_dir: Path, steps: Callable[[], list[dict]]) -> dict | None:
        """Run argv (traced when possible); returns the analysis report, or None untraced."""
        if self.enabled:
            try:
                return self._traced(argv, trial_dir, steps)
            except (ImportError, RestoreprofError) as exc:
                self.enabled = False
                reason = str(exc).splitlines()[0]
                self._say(f"profiler unavailable ({reason}): trials are timed from the "
                          "restore's own steps, without traces")
        with open(trial_dir / "restore.stderr", "wb") as stderr:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, check=False)
        return None

    @staticmethod
    def _traced(argv: list[str], trial_dir: Path, steps: Callable[[], list[dict]]) -> dict:
        from restoreprof.analysis import analyze
        from restoreprof.probes.session import Target, record, step_marks
        from restoreprof.trace.model import TRACE_FILE_NAME

        trace = record(Target(command=argv))
        # The restore's own steps, as marks, as the profiler adds them for 'restoreprof restore'.
        trace.events += step_marks(steps(), trace.events[0].pid if trace.events else 0)
        trace.save(trial_dir / TRACE_FILE_NAME)
        report = analyze(trace)
        (trial_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        from restoreprof.exports import write_all

        write_all(trace, report, trial_dir)
        return report


class TrialRunner:
    def __init__(self, checkpoint_dir: Path, outdir: Path, check: Check, *, trace: bool = True,
                 cold: bool = True, say: Callable[[str], None] = print) -> None:
        self.checkpoint_dir = Path(checkpoint_dir).resolve()
        self.outdir = Path(outdir)
        self.check, self.cold = check, cold
        self.manifest = Manifest.load(self.checkpoint_dir)
        self.profiler = Profiler(trace, say)
        self.trials: list[Trial] = []

    @property
    def traced(self) -> bool:
        return self.profiler.enabled

    def run(self, point: Point, stage: str) -> Trial:
        number = len(self.trials) + 1
        trial_dir = self.outdir / f"trial-{number}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        config, options = split(point)
        # Next to the checkpoint: hard links cannot cross filesystems.
        copy = self.checkpoint_dir.parent / f".{self.checkpoint_dir.name}.trial-{os.getpid()}-{number}"
        trial = Trial(number, stage, dict(point), math.inf, directory=trial_dir)
        result: dict = {}
        try:
            self._free_pids()
            link_copy(self.checkpoint_dir, copy)
            if self.cold:
                evict(copy)
            result, trial.report = self._restore(copy, trial_dir, config, options["verify"])
            trial.steps = result.get("steps", [])
            trial.error = result.get("error", "") or self.check(result) or ""
            if not trial.error:
                trial.seconds = _span_s(trial.steps)
        except RestoreprofError as exc:
            trial.error = str(exc)
        finally:
            with signals_held():
                kill_restore(trial_dir / restore_once.PID_FILE_NAME)
                stop_tree(result.get("pids") or self._manifest_pids())
                if (copy / "criu-restore.log").exists():
                    shutil.move(copy / "criu-restore.log", trial_dir / "criu-restore.log")
                shutil.rmtree(copy, ignore_errors=True)
        (trial_dir / "trial.json").write_text(json.dumps(
            trial.to_dict() | {"config": config.as_dict(), "verify": options["verify"]}, indent=2) + "\n")
        self.trials.append(trial)
        return trial

    def _restore(self, copy: Path, trial_dir: Path, config: OptimizerConfig,
                 verify: bool) -> tuple[dict, dict | None]:
        """(restore result dict, analysis report or None)."""
        result_path = trial_dir / "restore.json"
        result_path.unlink(missing_ok=True)

        def steps() -> list[dict]:
            return _read_json(result_path).get("steps", [])

        argv = restore_once.command(copy, result_path, config, verify)
        report = self.profiler.run(argv, trial_dir, steps)
        result = _read_json(result_path)
        if not result:
            result = {"error": f"the restore process wrote no result (see {trial_dir})"}
        return result, report

    def _manifest_pids(self) -> list[int]:
        return [p.pid for p in self.manifest.processes]

    def _free_pids(self) -> None:
        taken = [p for p in self._manifest_pids() if _alive(p)]
        if taken:
            raise RestoreprofError(
                f"PID {taken[0]} of the checkpoint is in use, and CRIU restores original PIDs",
                hint=f"stop PID {taken[0]} (is the checkpointed process still running?)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _span_s(steps: list[dict]) -> float:
    if not steps:
        return math.inf
    return (max(s["end_ns"] for s in steps) - min(s["start_ns"] for s in steps)) / 1e9


__all__ = ["Check", "Trial", "TrialRunner", "evict", "link_copy", "pids_alive", "stop_tree"]
