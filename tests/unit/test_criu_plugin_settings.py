"""The CRIU plugin's CRIU_CUDA_* check (settings.c), called through ctypes: the same ranges as
restoreprof.settings.schema, and a message that says what to do."""

from __future__ import annotations

import ctypes

import pytest

from restoreprof.criu_plugin import build_plugin
from restoreprof.settings import SETTINGS


class Settings(ctypes.Structure):  # struct rpc_settings in plugin.h
    _fields_ = [("streams", ctypes.c_int), ("chunk_mb", ctypes.c_int), ("pinned", ctypes.c_int),
                ("parallel", ctypes.c_int)]


@pytest.fixture(scope="module")
def load():
    lib = ctypes.CDLL(str(build_plugin()))
    lib.rpc_settings_load.argtypes = [ctypes.POINTER(Settings), ctypes.c_char_p, ctypes.c_size_t]

    def run(monkeypatch, **env: str) -> tuple[int, Settings, str]:
        for name in ("CRIU_CUDA_STREAMS", "CRIU_CUDA_CHUNK_MB", "CRIU_CUDA_USE_PINNED_MEM",
                     "CRIU_CUDA_PARALLEL_RESTORE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        out, err = Settings(), ctypes.create_string_buffer(1024)
        rc = lib.rpc_settings_load(ctypes.byref(out), err, len(err))
        return rc, out, err.value.decode()

    return run


def _range(var: str) -> tuple[int, int]:
    setting = next(s for s in SETTINGS if var in s.env)
    return (0, 1) if setting.kind is bool else (setting.low, setting.high)


def test_valid_values_are_taken(load, monkeypatch):
    rc, out, _ = load(monkeypatch, CRIU_CUDA_STREAMS="32", CRIU_CUDA_CHUNK_MB="64",
                      CRIU_CUDA_USE_PINNED_MEM="0", CRIU_CUDA_PARALLEL_RESTORE="0")
    assert rc == 0
    assert (out.streams, out.chunk_mb, out.pinned, out.parallel) == (32, 64, 0, 0)
    rc, out, _ = load(monkeypatch)
    assert rc == 0 and (out.pinned, out.parallel) == (1, 1)  # unset: the defaults


@pytest.mark.parametrize("var", ["CRIU_CUDA_STREAMS", "CRIU_CUDA_CHUNK_MB",
                                 "CRIU_CUDA_USE_PINNED_MEM", "CRIU_CUDA_PARALLEL_RESTORE"])
def test_the_schema_ranges_bound_each_variable(load, monkeypatch, var):
    low, high = _range(var)
    assert load(monkeypatch, **{var: str(low)})[0] == 0
    assert load(monkeypatch, **{var: str(high)})[0] == 0
    for bad in (str(low - 1), str(high + 1), "many", "4x", " "):
        rc, _, message = load(monkeypatch, **{var: bad})
        if bad == " ":  # blank is not empty: still not a number
            assert rc != 0
            continue
        assert rc != 0, f"{var}={bad} was accepted"
        assert f"{var}={bad} is not valid" in message and f"{low} to {high}" in message
        assert "fix or unset it" in message
