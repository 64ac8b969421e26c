"""The optimizer configuration: layers, aliases, and errors that name the variable."""

import argparse

import pytest

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import SETTINGS, OptimizerConfig, add_arguments, from_args
from restoreprof.settings import layers as settings_layers


def load(env=None, path=None, **overrides):
    return OptimizerConfig.load(path, environ=env or {}, overrides=overrides)


def test_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    cfg = load()
    assert cfg == OptimizerConfig()
    assert cfg.chunk_bytes == cfg.chunk_mb << 20


def test_layers_file_env_flags(tmp_path):
    path = tmp_path / "opt.toml"
    path.write_text("streams = 4\nchunk_mb = 32\n[optimizer]\nthreads = 3\n")
    cfg = load(path=path)
    assert cfg.threads == 3
    path.write_text("streams = 4\nchunk_mb = 32\nthreads = 3\n")
    cfg = load({"RESTOREPROF_STREAMS": "6"}, path=path, chunk_mb=16)
    assert (cfg.streams, cfg.chunk_mb, cfg.threads) == (6, 16, 3)


def test_seed_aliases():
    cfg = load({
        "CRIU_CUDA_PARALLEL_RESTORE": "0", "CRIU_CUDA_STREAMS": "12", "CRIU_CUDA_CHUNK_MB": "8",
        "CRIU_CUDA_USE_PINNED_MEM": "0", "CUDA_INTERCEPT_RESTORE": "0",
    })
    assert (cfg.parallel, cfg.streams, cfg.chunk_mb, cfg.pinned, cfg.intercept) == (
        False, 12, 8, False, False)


def test_primary_name_beats_alias():
    assert load({"CRIU_CUDA_STREAMS": "12", "RESTOREPROF_STREAMS": "2"}).streams == 2


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_env_var_rejects_bad_values(setting):
    bad = ["x", "2"] if setting.kind is bool else ["x", str(setting.low - 1), str(setting.high + 1)]
    for var in setting.env:
        for text in bad:
            with pytest.raises(RestoreprofError) as info:
                load({var: text})
            message = str(info.value)
            assert var in message
            assert setting.describe() in message


def test_streams_range_message():
    with pytest.raises(RestoreprofError, match=r"CRIU_CUDA_STREAMS=33.*from 1 to 32"):
        load({"CRIU_CUDA_STREAMS": "33"})


def test_bad_file_key_and_value(tmp_path):
    path = tmp_path / "opt.toml"
    path.write_text("stream = 4\n")
    with pytest.raises(RestoreprofError, match="unknown optimizer setting 'stream'"):
        load(path=path)
    path.write_text("streams = 0\n")
    with pytest.raises(RestoreprofError, match="streams"):
        load(path=path)
    with pytest.raises(RestoreprofError, match="does not exist"):
        load(path=tmp_path / "missing.toml")


def test_to_env_round_trip():
    cfg = OptimizerConfig(streams=3, pinned=False, min_intercept_bytes=12345)
    env = cfg.to_env()
    assert env["RESTOREPROF_STREAMS"] == "3" and env["RESTOREPROF_PINNED"] == "0"
    assert load(env) == cfg


def test_cli_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("RESTOREPROF_THREADS", "5")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_args(parser.parse_args(["--streams", "2", "--no-pinned"]))
    assert (cfg.streams, cfg.pinned, cfg.threads) == (2, False, 5)
    with pytest.raises(RestoreprofError, match="flag --streams: streams=40"):
        from_args(parser.parse_args(["--streams", "40"]))


def test_tuned_defaults_hook(monkeypatch):
    monkeypatch.setattr(settings_layers, "tuned_provider",
                        lambda: ({"streams": 16, "chunk_mb": 128}, "gpu X in db.json"))
    cfg, sources = OptimizerConfig.resolve(environ={"RESTOREPROF_CHUNK_MB": "32"})
    assert (cfg.streams, cfg.chunk_mb) == (16, 32)
    assert sources["streams"] == "tuning DB (gpu X in db.json)"
    assert sources["chunk_mb"] == "environment RESTOREPROF_CHUNK_MB"
