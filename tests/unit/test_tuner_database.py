"""The tuning database: keys, lookup, reuse by OptimizerConfig.load(), corruption recovery."""

from __future__ import annotations

import json

import pytest

from restoreprof.optimizer import config as optimizer_config
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.tuner import database
from restoreprof.tuner.database import TuningDatabase, install_tuned_defaults, uninstall_tuned_defaults
from restoreprof.tuner.identity import HostIdentity, identify, storage_of

H100 = HostIdentity("NVIDIA H100 80GB HBM3", "Gen5 x16", "580.159.04", "nvme0n1 (SAMSUNG MZ)")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(database.ENV_VAR, raising=False)
    for setting in optimizer_config.SETTINGS:
        for var in setting.env:
            monkeypatch.delenv(var, raising=False)
    yield
    uninstall_tuned_defaults()


def test_default_path_and_overrides(tmp_path, monkeypatch):
    assert database.default_path() == tmp_path / "config" / "restoreprof" / "tuning.json"
    monkeypatch.setenv(database.ENV_VAR, str(tmp_path / "env.json"))
    assert TuningDatabase().path == tmp_path / "env.json"
    assert TuningDatabase(tmp_path / "flag.json").path == tmp_path / "flag.json"


def test_key_names_gpu_link_driver_and_storage():
    assert H100.key == ("NVIDIA H100 80GB HBM3 | Gen5 x16 | driver 580.159.04 | "
                        "storage nvme0n1 (SAMSUNG MZ)")
    cpu = HostIdentity("cpu", "", "", "vda")
    assert cpu.key == "cpu | storage vda"


def test_this_machine_without_a_gpu_is_keyed_cpu(tmp_path):
    host = identify(tmp_path)
    assert host.gpu == "cpu" or host.pcie.startswith("Gen")
    assert host.storage == storage_of(tmp_path) != ""
    assert host.key.startswith(host.gpu)


def test_storage_names_block_devices_and_virtual_filesystems():
    assert storage_of("/proc") == "proc:proc"
    assert storage_of("/proc/self/no/such/path") == "proc:proc"


def test_record_then_lookup_exact_and_same_gpu_fallback(tmp_path):
    db = TuningDatabase(tmp_path / "db.json")
    db.record(H100, {"streams": 4, "chunk_mb": 32}, tuned_s=0.5)
    again = TuningDatabase(tmp_path / "db.json")
    key, entry = again.lookup(H100)
    assert key == H100.key and entry["settings"] == {"streams": 4, "chunk_mb": 32}
    other_disk = HostIdentity(H100.gpu, H100.pcie, H100.driver, "sda")
    assert again.lookup(other_disk)[0] == H100.key          # same GPU: reused
    no_storage = HostIdentity(H100.gpu, H100.pcie, H100.driver, "")
    assert again.lookup(no_storage)[0] == H100.key          # exec, no DIR
    other_driver = HostIdentity(H100.gpu, H100.pcie, "570.1", H100.storage)
    assert again.lookup(other_driver) is None


def test_record_rejects_unknown_settings(tmp_path):
    with pytest.raises(ValueError):
        TuningDatabase(tmp_path / "db.json").record(H100, {"verify": False})


def test_reset_one_or_all(tmp_path):
    db = TuningDatabase(tmp_path / "db.json")
    db.record(H100, {"streams": 4})
    db.record(HostIdentity("cpu", "", "", "vda"), {"threads": 2})
    assert db.reset(H100.key) == 1
    assert list(TuningDatabase(tmp_path / "db.json").entries) == ["cpu | storage vda"]
    assert db.reset() == 1
    assert TuningDatabase(tmp_path / "db.json").entries == {}


def test_load_picks_up_tuned_values_below_env_and_flags(tmp_path, capsys):
    db = TuningDatabase()
    db.record(identify(tmp_path), {"threads": 3, "readahead": False})
    install_tuned_defaults(tmp_path)
    config = OptimizerConfig.load(environ={})
    assert (config.threads, config.readahead) == (3, False)
    assert config.streams == OptimizerConfig().streams            # not tuned: built-in default
    err = capsys.readouterr().err
    assert "using tuned settings for" in err and "threads=3" in err
    assert OptimizerConfig.load(environ={"RESTOREPROF_THREADS": "5"}).threads == 5
    assert OptimizerConfig.load(environ={}, overrides={"threads": 7}).threads == 7
    assert capsys.readouterr().err == ""                           # said once per process


def test_without_an_entry_nothing_changes(tmp_path, capsys):
    install_tuned_defaults(tmp_path)
    assert OptimizerConfig.load(environ={}) == OptimizerConfig()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content", [
    "{not json", "[]", '{"format": "something else", "entries": {}}',
    '{"format": "restoreprof-tuning", "version": 1, "entries": {"k": {"settings": {"bogus": 1}}}}',
    '{"format": "restoreprof-tuning", "version": 1, "entries": {"k": {"settings": {"streams": 999}}}}',
])
def test_a_corrupt_database_is_moved_aside_and_rebuilt(tmp_path, capsys, content):
    path = tmp_path / "db.json"
    path.write_text(content)
    db = TuningDatabase(path)
    assert db.entries == {}
    aside = list(tmp_path.glob("db.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == content
    assert json.loads(path.read_text())["entries"] == {}           # rebuilt, empty
    assert "corrupt" in capsys.readouterr().err
    db.record(H100, {"streams": 2})
    assert TuningDatabase(path).lookup(H100)[1]["settings"] == {"streams": 2}


def test_a_corrupt_database_never_breaks_a_restore(tmp_path, capsys):
    database.default_path().parent.mkdir(parents=True)
    database.default_path().write_text("garbage")
    install_tuned_defaults(tmp_path)
    assert OptimizerConfig.load(environ={}) == OptimizerConfig()
    assert "corrupt" in capsys.readouterr().err
