"""The settings schema: `restoreprof config show`, each value's source, errors without
tracebacks, and C defaults that are the schema's (the library logs the values it loaded)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from restoreprof.cli import main
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.shim.build import build_library, settings_header_text
from restoreprof.settings import SETTINGS, resolve


@pytest.fixture(autouse=True)
def clean(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RESTOREPROF_TUNING_DB", str(tmp_path / "tuning.json"))
    for setting in SETTINGS:
        for var in setting.env:
            monkeypatch.delenv(var, raising=False)


def show(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["config", "show", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_config_show_names_every_source(tmp_path, monkeypatch, capsys):
    path = tmp_path / "optimizer.toml"
    path.write_text("[optimizer]\nthreads = 6\nstreams = 9\n")
    monkeypatch.setenv("CRIU_CUDA_CHUNK_MB", "8")
    monkeypatch.setenv("RESTOREPROF_STREAMS", "7")  # beats the file
    code, out, _ = show(capsys, "--json", "--config", str(path), "--no-pinned")
    assert code == 0
    settings = json.loads(out)["settings"]
    assert settings["threads"] == {**settings["threads"], "value": 6,
                                   "source": f"config file {path}"}
    assert (settings["streams"]["value"], settings["streams"]["source"]) == \
        (7, "environment RESTOREPROF_STREAMS")
    assert (settings["chunk_mb"]["value"], settings["chunk_mb"]["source"]) == \
        (8, "environment CRIU_CUDA_CHUNK_MB")
    assert (settings["pinned"]["value"], settings["pinned"]["source"]) == \
        (False, "flag --no-pinned")
    assert settings["preload"]["source"] == "default"
    code, text, _ = show(capsys, "--config", str(path))
    assert code == 0 and "environment RESTOREPROF_STREAMS" in text and "precedence:" in text


def test_the_tuning_db_sits_below_the_file(tmp_path, monkeypatch, capsys):
    from restoreprof.tuner.database import TuningDatabase, uninstall_tuned_defaults
    from restoreprof.tuner.identity import identify

    TuningDatabase().record(identify(None), {"threads": 3, "streams": 5})
    path = tmp_path / "optimizer.toml"
    path.write_text("streams = 2\n")
    try:
        _code, out, err = show(capsys, "--json", "--config", str(path))
    finally:
        uninstall_tuned_defaults()
    settings = json.loads(out)["settings"]
    assert settings["threads"]["value"] == 3
    assert settings["threads"]["source"].startswith("tuning DB (")
    assert settings["streams"]["source"] == f"config file {path}"
    assert "using tuned settings" in err


@pytest.mark.parametrize("content, message", [
    ("streams = \n", "is not valid TOML"),
    ("streams = \"8\"\n", "streams=str '8' is not valid: streams must be an integer from 1 to 32"),
    ("[optimizer]\nchunk_mb = 9999\n", "chunk_mb=9999 is not valid"),
    ("pinned = 2\n", "pinned must be 0 or 1"),
    ("stream = 4\n", "unknown optimizer setting 'stream'"),
    ("optimizer = 3\n", "'optimizer' must be a table"),
])
def test_a_bad_config_file_is_a_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "optimizer.toml"
    path.write_text(content)
    code, out, err = show(capsys, "--config", str(path))
    assert code == 2 and out == ""
    assert message in err and str(path) in err
    assert "->" in err and "Traceback" not in err


def test_bad_environment_and_flags_are_clear_errors(monkeypatch, capsys):
    monkeypatch.setenv("CRIU_CUDA_STREAMS", "64")
    code, _, err = show(capsys)
    assert code == 2 and "CRIU_CUDA_STREAMS=64 is not valid" in err and "->" in err
    monkeypatch.delenv("CRIU_CUDA_STREAMS")
    code, _, err = show(capsys, "--threads", "0")
    assert code == 2 and "flag --threads: threads=0 is not valid" in err


def test_defaults_come_from_the_schema_only():
    assert OptimizerConfig().as_dict() == {s.name: s.default for s in SETTINGS}
    assert resolve(environ={}, tuned=None).values == OptimizerConfig().as_dict()
    header = settings_header_text()
    for s in SETTINGS:
        assert f"#define RP_SETTING_{s.name.upper()}_DEFAULT {int(s.default)}L" in header
        assert f'#define RP_SETTING_{s.name.upper()}_ENV "{s.env[0]}"' in header


def test_the_library_loads_the_schemas_defaults(tmp_path):
    """The library, loaded with nothing set, logs the values it took: the schema's."""
    env = {k: v for k, v in os.environ.items()
           if not any(k in s.env for s in SETTINGS)} | {"RESTOREPROF_SHIM_DEBUG": "1",
                                                       "LD_PRELOAD": str(build_library()),
                                                       "RESTOREPROF_RUN_DIR": str(tmp_path)}
    err = subprocess.run(["true"], env=env, capture_output=True, text=True, timeout=30).stderr
    d = OptimizerConfig()
    assert (f"config: streams={d.streams} chunk={d.chunk_mb} MiB threads={d.threads} "
            f"pinned={int(d.pinned)} min_intercept={d.min_intercept_bytes} "
            f"offload={int(d.offload)} intercept={int(d.intercept)}") in err, err


@pytest.mark.parametrize("command, argv, call", [
    ("checkpoint", ["-p", "1", "-D", "ckpt"], "checkpoint"),
    ("restore", ["-D", "ckpt"], "restore"),
])
def test_commands_hand_their_resolved_settings_on(command, argv, call, monkeypatch):
    """checkpoint and restore pass what they resolved (flags, environment, ...) to the API,
    which hands it to the engine (tests/integration/test_settings_reach.py follows it there)."""
    import importlib

    module = importlib.import_module(f"restoreprof.commands.{command}")
    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(module, call, capture)
    monkeypatch.setenv("CRIU_CUDA_STREAMS", "7")
    with pytest.raises(Stop):
        main([command, *argv, "--chunk-mb", "5", "--no-pinned", "--no-offload"])
    optimizer = seen["optimizer"]
    assert (optimizer.streams, optimizer.chunk_mb, optimizer.pinned, optimizer.offload) == \
        (7, 5, False, False)
    if command == "checkpoint":
        assert seen["offload"] is False  # --no-offload: nothing offloaded through the library
