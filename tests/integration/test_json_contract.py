"""Every JSON output carries a version and names the schema it follows, and follows it: the
commands' --json, report.json and run's summary (issue 18's script contract)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from restoreprof import schemas

TRACE = Path(__file__).parents[1] / "tui" / "data" / "preadv_restore.rptrace"


def _valid(document: dict, name: str) -> None:
    assert document["version"] == 1 and document["schema"] == name
    jsonschema.validate(document, schemas.load(name))


@pytest.mark.parametrize(("argv", "name"), [
    (["doctor", "--json"], "doctor"),
    (["config", "show", "--json"], "config"),
])
def test_command_json_is_versioned_and_valid(restoreprof_cli, argv, name):
    done = restoreprof_cli(*argv)
    assert done.returncode in (0, 1), done.stderr  # doctor: 1 when the machine is not ready
    _valid(json.loads(done.stdout), name)


def test_tuning_db_json(restoreprof_cli, tmp_path):
    done = restoreprof_cli("tune", "show", "--json", "--db", str(tmp_path / "tuning.json"))
    assert done.returncode == 0, done.stderr
    _valid(json.loads(done.stdout), "tuning")


def test_calibrate_json(restoreprof_cli, tmp_path):
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = restoreprof_cli("calibrate", "--no-gpu", "-D", str(tmp_path), "--disk-mib", "8",
                           "--json", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    _valid(json.loads(done.stdout), "ceilings")


def test_report_json_printed_and_written_agree(restoreprof_cli, tmp_path):
    printed = restoreprof_cli("report", "--json", str(TRACE), "-o", str(tmp_path / "out"))
    assert printed.returncode == 0, printed.stderr
    document = json.loads(printed.stdout)
    _valid(document, "report")
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    _valid(written, "report")
    assert written["phases"] == document["phases"]


def test_every_schema_loads_and_is_a_valid_schema():
    for name in schemas.NAMES:
        jsonschema.Draft202012Validator.check_schema(schemas.load(name))
