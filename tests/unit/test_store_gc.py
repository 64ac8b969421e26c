"""gc's decisions on a store made by hand: what a complete checkpoint names stays, a reference
of an unfinished checkpoint goes once its process is gone, nothing goes while a live process of
one may still be writing, a damaged reference stops gc, and a running checkpoint blocks it."""

import json
import os
import subprocess

import pytest

from restoreprof.errors import RestoreprofError
from restoreprof.store.gc import gc
from restoreprof.store.layout import Store


def _chunk(store: Store, name: str) -> None:
    (store.chunks / name[:2]).mkdir(exist_ok=True)
    (store.chunks / name[:2] / name).write_bytes(b"x" * 10)


def _ref(store: Store, ref_id: str, checkpoint, chunks, pids=(), tables=()) -> None:
    (store.refs / f"{ref_id}.json").write_text(json.dumps({
        "id": ref_id, "checkpoint": str(checkpoint), "chunks": {c: 10 for c in chunks},
        "logical_bytes": 10 * len(chunks), "written_bytes": 0, "pids": list(pids),
        "tables": [str(t) for t in tables]}))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def store(tmp_path):
    return Store.open(tmp_path / "store", create=True, chunk_mb=1)


def test_complete_checkpoints_keep_their_chunks_and_the_rest_goes(store, tmp_path):
    for name in ("aa" * 32, "bb" * 32, "cc" * 32):
        _chunk(store, name)
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "restoreprof.json").write_text(json.dumps(
        {"processes": [{"offload": {"store_ref": "r1"}}]}))
    _ref(store, "r1", tmp_path / "c1", ["aa" * 32])
    _ref(store, "r2", tmp_path / "gone", ["bb" * 32], pids=[_dead_pid()])
    (store.chunks / "cc" / ".tmp-1-2").write_bytes(b"half")
    result = gc(store)
    assert result.kept_chunks == 1 and result.deleted_chunks == 2
    assert result.dropped_refs == ["r2"] and result.deleted_temporary == 1
    assert [p.name for p in store.chunk_files()] == ["aa" * 32]


def test_nothing_goes_while_a_live_process_may_still_be_writing(store, tmp_path):
    _chunk(store, "dd" * 32)
    _ref(store, "r3", tmp_path / "c3", [], pids=[os.getpid()], tables=[tmp_path / "c3" / "x.snap"])
    result = gc(store)
    assert result.deferred and result.held_refs == ["r3"] and result.deleted_chunks == 0
    assert len(list(store.chunk_files())) == 1


def test_a_damaged_reference_stops_gc(store, tmp_path):
    _chunk(store, "ee" * 32)
    (store.refs / "bad.json").write_text("{")
    with pytest.raises(RestoreprofError, match="is damaged") as err:
        gc(store)
    assert "delete the file" in err.value.hint
    assert len(list(store.chunk_files())) == 1


def test_a_running_checkpoint_blocks_gc(store):
    with store.locked(exclusive=False), pytest.raises(RestoreprofError, match="busy") as err:
        gc(store)
    assert "retry" in err.value.hint
