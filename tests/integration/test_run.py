"""'restoreprof run' tuning real CRIU restores of a real CPU process, under the real profiler."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from restoreprof.checkpoint.manifest import Manifest
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.trace.model import TRACE_FILE_NAME
from restoreprof.tuner import install_tuned_defaults, uninstall_tuned_defaults
from restoreprof.tuner.database import TuningDatabase
from restoreprof.tuner.identity import identify

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One real 'restoreprof run' of the built-in workload (CPU only here), small budget."""
    base = tmp_path_factory.mktemp("run")
    db = base / "tuning.json"
    env = {**os.environ, "RESTOREPROF_TUNING_DB": str(db)}
    proc = subprocess.run([sys.executable, "-m", "restoreprof", "run", "-o", str(base / "out"),
                           "--budget", "6", "--repeat", "2", "--mib", "128"],
                          capture_output=True, text=True, env=env, timeout=240)
    return proc, base / "out", db


def test_run_tunes_verifies_and_reports(tuned):
    proc, out, _db = tuned
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "built-in workload: 128 MiB of host memory (no GPU here)" in text
    assert "bottleneck:" in text
    for needed in ("trial   1 default", "winner:", "speedup:", "over the plain path",
                   "phase by phase", "median"):
        assert needed in text, needed
    summary = json.loads((out / "summary.json").read_text())
    trials = summary["trial_results"]
    assert 6 <= len(trials) <= 6 + 3 * 2
    assert all(t["error"] == "" and t["seconds"] > 0 for t in trials), trials
    stages = [t["stage"] for t in trials]
    assert stages[0] == "default" and stages[-3:] == ["default", "plain", "tuned"]
    assert len({json.dumps(t["point"], sort_keys=True) for t in trials}) >= 3   # it searched
    assert summary["spread_s"]["tuned"] and summary["speedup_over_default"] > 0


def test_every_trial_keeps_its_trace_and_report(tuned):
    _proc, out, _db = tuned
    for n in range(1, len(json.loads((out / "summary.json").read_text())["trial_results"]) + 1):
        trial = out / f"trial-{n}"
        assert (trial / "trial.json").exists()
        assert (trial / TRACE_FILE_NAME).exists()
        report = json.loads((trial / "report.json").read_text())
        assert report["bottleneck"]["phase"]
        assert (trial / "criu-restore.log").exists()


def test_no_restored_process_is_left_and_the_checkpoint_is_untouched(tuned):
    _proc, out, _db = tuned
    manifest = Manifest.load(out / "checkpoint")
    assert not any(os.path.exists(f"/proc/{p.pid}") for p in manifest.processes)
    assert not (out / "checkpoint" / "criu-restore.log").exists()
    assert not list(out.glob(".checkpoint.trial-*"))


def test_the_winner_is_stored_only_when_significant_and_load_uses_it(tuned):
    proc, out, db_path = tuned
    summary = json.loads((out / "summary.json").read_text())
    if not summary["significant"]:  # noise on this machine: nothing may be stored
        assert "no significant difference" in proc.stdout and "nothing saved" in proc.stdout
        assert not TuningDatabase(db_path).entries
        return
    db = TuningDatabase(db_path)
    host = identify(out / "checkpoint")
    assert host.key.startswith("cpu | storage ")
    key, entry = db.lookup(host)
    assert key == host.key and set(entry["settings"]) <= {"readahead", "threads"}
    install_tuned_defaults(out / "checkpoint", db_path, announce=False)
    try:
        config = OptimizerConfig.load(environ={})
    finally:
        uninstall_tuned_defaults()
    for name, value in entry["settings"].items():
        assert getattr(config, name) == value


def test_a_second_run_starts_from_the_stored_settings(tuned, restoreprof_cli, tmp_path):
    _proc, out, db_path = tuned
    db = TuningDatabase(db_path)
    host = identify(out / "checkpoint")
    db.record(host, {"readahead": True, "threads": 2}, restore={"verify": False})
    env = {**os.environ, "RESTOREPROF_TUNING_DB": str(db_path)}
    proc = restoreprof_cli("run", "-D", str(out / "checkpoint"), "-o", str(tmp_path / "again"),
                           "--budget", "4", "--repeat", "2", "--no-trace", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "starting from the tuned settings stored for this host: verify=off threads=2" in proc.stdout
    trials = json.loads((tmp_path / "again" / "summary.json").read_text())["trial_results"]
    assert trials[1]["point"] == {"verify": False, "readahead": True, "threads": 2}


def test_tune_show_and_reset(tuned, restoreprof_cli):
    _proc, out, db_path = tuned
    proc = restoreprof_cli("tune", "show", "--db", str(db_path), "-D", str(out / "checkpoint"))
    assert proc.returncode == 0 and "<- applies here" in proc.stdout
    assert identify(out / "checkpoint").key in proc.stdout
    proc = restoreprof_cli("tune", "reset", "--db", str(db_path))
    assert proc.returncode == 0 and "forgot" in proc.stdout
    assert TuningDatabase(db_path).entries == {}
