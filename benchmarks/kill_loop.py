"""Kill checkpoint and restore at random points; count where each run ends (issue 19).

    sudo .venv/bin/python benchmarks/kill_loop.py [--iterations 100] [--kind cpu|gpu|both]
         [--seed 1] [--mib 64] [--gpu-mib 32]

Each iteration runs `restoreprof checkpoint` (when the process runs) or `restoreprof restore`
(when a checkpoint holds it), sends SIGKILL, SIGTERM or SIGINT (to the process group, as a
terminal's Ctrl-C) at a random point of it, waits for its guardian to settle, and classifies
the end state:

    checkpointed     the checkpoint finished (manifest written, every file checked)
    running          the original process runs on, its data verified
    restored         the restored process runs, its data verified
    not-restored     the restored processes were killed before they ran; the checkpoint is intact
    held             left held with one command to recover (that command is then run)
    FAILED: ...      anything else: a process stopped forever, data lost, a check that failed

"gpu" runs the process under `restoreprof exec` with the fake libcuda test double (its GPU
memory is offloaded and reloaded through the interception library); on a GPU machine the same
loop runs against the real driver with --real-gpu. It prints the tally and exits 1 on any
FAILED. A reduced form runs in CI (tests/integration/test_kill_loop.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from restoreprof.checkpoint.journal import RESTORE_JOURNAL_NAME
from restoreprof.checkpoint.manifest import JOURNAL_NAME, MANIFEST_NAME, Manifest
from restoreprof.checkpoint.tree import state
from restoreprof.errors import RestoreprofError
from restoreprof.workloads.controller import HeldMemory

REPO = Path(__file__).resolve().parents[1]
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
SETTLE_S = 120.0
STRATA = 8


def say_now(text: str) -> None:
    print(text, flush=True)


def fake_gpu_env(run_dir: Path) -> dict[str, str]:
    """Environment for the fake libcuda (tests/fakecuda), built on first use."""
    spec = importlib.util.spec_from_file_location("fakecuda_build", REPO / "tests/fakecuda/build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake = module.build_fake_libcuda()
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # the driver's per-process checkpoint state shared by all processes, as a real driver's is
    (run_dir / "driver-state").mkdir(exist_ok=True)
    return {"RESTOREPROF_LIBCUDA": str(fake), "LD_LIBRARY_PATH": str(fake.parent),
            "RESTOREPROF_RUN_DIR": str(run_dir), "FAKECUDA_STATE_DIR": str(run_dir / "driver-state")}


class Loop:
    def __init__(self, base: Path, kind: str, mib: int, gpu_mib: int, rng: random.Random,
                 env: dict[str, str], say=say_now) -> None:
        self.base, self.kind, self.rng, self.env, self.say = base, kind, rng, env, say
        prefix = [sys.executable, "-m", "restoreprof", "exec", "--"] if kind != "cpu" else None
        os.environ.update(env)  # the workload and the commands see the same driver
        self.held = HeldMemory.start(base / "state", mib, gpu_mib=gpu_mib if prefix else 0,
                                     prefix=prefix)
        self.checkpoint: Path | None = None  # the checkpoint that holds the process, if gone
        self.count = 0
        self.durations = {"checkpoint": 1.0, "restore": 1.0}
        self._strata: dict[str, list[int]] = {"checkpoint": [], "restore": []}

    # --- one command, killed at a random point ---------------------------------------------

    def _command(self, argv: list[str], what: str) -> tuple[str, float, int]:
        # anywhere from start-up to a little past the slowest whole run seen so far, spread
        # evenly: each of STRATA slices of that span is drawn once per STRATA runs
        if not self._strata[what]:
            self._strata[what] = self.rng.sample(range(STRATA), STRATA)
        part = self._strata[what].pop()
        delay = self.durations[what] * 1.3 * (part + self.rng.random()) / STRATA
        sig_name = self.rng.choice(list(SIGNALS))
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "restoreprof", *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=delay)
            if proc.returncode == 0:  # it beat the kill: runs take this long now
                self.durations[what] = max(self.durations[what], time.monotonic() - start)
        except subprocess.TimeoutExpired:
            try:
                if sig_name == "INT":
                    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
                else:
                    os.kill(proc.pid, SIGNALS[sig_name])
            except ProcessLookupError:
                pass
        _, self.last_stderr = proc.communicate(timeout=600)
        return sig_name, delay, proc.returncode

    def calibrate(self) -> None:
        """Time one whole checkpoint and restore, to place the kills inside them."""
        for what in ("checkpoint", "restore"):
            start = time.monotonic()
            argv = self._argv(what)
            out = subprocess.run([sys.executable, "-m", "restoreprof", *argv], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                raise RestoreprofError(f"calibration {what} failed: {out.stderr.strip()}")
            self.durations[what] = time.monotonic() - start
            if what == "checkpoint":
                self.checkpoint = Path(argv[-1])
                cuda = Manifest.load(self.checkpoint).cuda_pids
                self._require(bool(cuda) == (self.kind == "gpu"), f"CUDA processes: {cuda}")
            else:
                self.checkpoint = None
                self._require(self.held.verify(timeout_s=30), "calibration restore did not verify")

    def _argv(self, what: str) -> list[str]:
        if what == "checkpoint":
            self.count += 1
            return ["checkpoint", "-p", str(self.held.pid), "-D", str(self.base / f"c{self.count}")]
        return ["restore", "-D", str(self.checkpoint), "-o", str(self._work())]

    def _work(self) -> Path:
        return self.base / f"work-{self.checkpoint.name}"

    # --- where it ended ----------------------------------------------------------------------

    @staticmethod
    def _require(condition: bool, failure: str) -> None:
        if not condition:
            raise AssertionError(failure)

    def _settle(self, journal: Path) -> None:
        deadline = time.monotonic() + SETTLE_S
        while journal.exists() and time.monotonic() < deadline:
            data = json.loads(journal.read_text() or "{}") if journal.exists() else {}
            if data.get("phase") == "held":
                return
            time.sleep(0.02)

    def _alive(self) -> bool:
        return state(self.held.pid) not in (None, "Z")

    def _intact(self, folder: Path) -> bool:
        """Everything a restore checks before CRIU runs, page images included: no data lost."""
        from restoreprof.checkpoint import pstree, trust
        from restoreprof.checkpoint.manifest import verify_images

        trust.check_checkpoint_directory(folder)
        manifest = Manifest.load(folder)
        manifest.check_files(folder)
        verify_images(folder, manifest)
        manifest.check_processes(pstree.pids(folder))
        return True

    def step(self) -> str:
        what = "restore" if self.checkpoint else "checkpoint"
        argv = self._argv(what)
        sig_name, delay, code = self._command(argv, what)
        label = f"{what} {sig_name} at {delay:.2f}s"
        if what == "checkpoint":
            folder = Path(argv[-1])
            self._settle(folder / JOURNAL_NAME)
            outcome = self._after_checkpoint(folder)
        else:
            self._settle(self._work() / RESTORE_JOURNAL_NAME)
            outcome = self._after_restore()
        self.say(f"  {self.kind:<4} {label:<28} exit {code:<4} -> {outcome}")
        if outcome.startswith("FAILED") or (code not in (0, 130) and code > 0):
            self.say("    its stderr: " + self.last_stderr.strip().replace("\n", "\n    "))
        return outcome

    def _after_checkpoint(self, folder: Path) -> str:
        if (folder / JOURNAL_NAME).exists():
            return f"FAILED: {folder / JOURNAL_NAME} left: {(folder / JOURNAL_NAME).read_text()[:200]}"
        if (folder / MANIFEST_NAME).exists():
            if self._alive():
                return "FAILED: a manifest, yet the process still runs (not --leave-running)"
            try:
                self._intact(folder)
            except RestoreprofError as exc:
                return f"FAILED: the finished checkpoint does not check: {exc.message}"
            self.checkpoint = folder
            return "checkpointed"
        if not self._alive():
            return "FAILED: the process is gone and no checkpoint holds it (data lost)"
        if state(self.held.pid) == "T":
            return "FAILED: the original process is left stopped"
        shutil.rmtree(folder, ignore_errors=True)
        return "running" if self._verify() else "FAILED: the original's data does not verify"

    def _after_restore(self) -> str:
        journal = self._work() / RESTORE_JOURNAL_NAME
        if journal.exists() and json.loads(journal.read_text()).get("phase") in ("verified", "gpu"):
            # held by the driver after its GPU step failed: the one command that resumes it
            out = subprocess.run([sys.executable, "-m", "restoreprof", "restore", "-D",
                                  str(self.checkpoint), "-o", str(self._work()), "--gpu-only"],
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0 or journal.exists():
                return f"FAILED: restore --gpu-only did not recover it: {out.stderr.strip()[:300]}"
            if not self._verify():
                return "FAILED: the process resumed by --gpu-only does not verify"
            self.checkpoint = None
            return "held"
        if self._alive() and state(self.held.pid) == "T":
            if not journal.exists():
                return "FAILED: the restored process is stopped forever (no journal, no way out)"
            out = subprocess.run([sys.executable, "-m", "restoreprof", "restore", "-D",
                                  str(self.checkpoint), "-o", str(self._work()), "--abort"],
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0 or self._alive():
                return f"FAILED: restore --abort did not recover it: {out.stderr.strip()[:200]}"
            return "held"
        if journal.exists():
            return f"FAILED: {journal} left: {journal.read_text()[:200]}"
        if self._alive():
            if not self._verify():
                return "FAILED: the restored process's data does not verify"
            self.checkpoint = None
            return "restored"
        try:
            self._intact(self.checkpoint)
        except RestoreprofError as exc:
            return f"FAILED: the checkpoint was damaged: {exc.message}"
        return "not-restored"

    def _verify(self) -> bool:
        try:
            return self.held.verify(timeout_s=60)
        except RestoreprofError:
            return False

    def close(self) -> None:
        self.held.stop()


def run_loop(iterations: int, kinds: list[str], seed: int, mib: int, gpu_mib: int,
             base: Path, say=say_now) -> Counter:
    rng = random.Random(seed)
    tally: Counter = Counter()
    for kind in kinds:
        env = fake_gpu_env(base / f"{kind}-run") if kind == "gpu" else {}
        loop = Loop(base / kind, kind, mib, gpu_mib, rng, env, say)
        try:
            loop.calibrate()
            say(f"{kind}: a whole checkpoint takes {loop.durations['checkpoint']:.2f} s, "
                f"a restore {loop.durations['restore']:.2f} s")
            for _ in range(iterations):
                try:
                    outcome = loop.step()
                except AssertionError as exc:
                    outcome = f"FAILED: {exc}"
                tally[(kind, outcome if not outcome.startswith("FAILED") else "FAILED")] += 1
                if outcome.startswith("FAILED"):
                    tally[("failures", outcome)] += 1
                    break  # the state is unknown from here
        finally:
            loop.close()
            for key in list(env):
                os.environ.pop(key, None)
    return tally


def print_tally(tally: Counter) -> None:
    print(f"{'kind':<6} {'outcome':<14} {'count':>5}")
    for (kind, outcome), count in sorted(tally.items()):
        if kind != "failures":
            print(f"{kind:<6} {outcome:<14} {count:>5}")
    for (kind, outcome), _ in tally.items():
        if kind == "failures":
            print(outcome)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100, help="per kind (default 100)")
    parser.add_argument("--kind", choices=["cpu", "gpu", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mib", type=int, default=64, help="host memory the process holds")
    parser.add_argument("--gpu-mib", type=int, default=32, help="(fake) GPU memory it holds")
    parser.add_argument("--real-gpu", action="store_true",
                        help="gpu kind against this machine's driver instead of the fake one")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("kill_loop: needs root (CRIU)", file=sys.stderr)
        return 2
    if args.real_gpu:
        global fake_gpu_env
        fake_gpu_env = lambda run_dir: {}  # noqa: E731 (the machine's own driver)
    kinds = ["cpu", "gpu"] if args.kind == "both" else [args.kind]
    base = Path(tempfile.mkdtemp(prefix="restoreprof-kill-loop-"))
    start = time.monotonic()
    try:
        tally = run_loop(args.iterations, kinds, args.seed, args.mib, args.gpu_mib, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_tally(tally)
    failures = sum(c for (k, _), c in tally.items() if k == "failures")
    runs = sum(c for (k, _), c in tally.items() if k != "failures")
    print(f"{runs} runs in {time.monotonic() - start:.0f} s, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
