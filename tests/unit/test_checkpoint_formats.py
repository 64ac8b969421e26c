"""CRIU's pstree.img decoder, the manifest's type checks and name confinement, and the error
kinds and their exit codes (issues 18 and 19)."""

from __future__ import annotations

import json
import struct

import pytest

from restoreprof import schemas
from restoreprof.checkpoint import pstree
from restoreprof.checkpoint.manifest import FORMAT, Manifest, check_name
from restoreprof.errors import (
    EXIT_CODES,
    EnvironmentProblem,
    IntegrityError,
    NotRootError,
    RestoreprofError,
    TargetFailure,
    exit_codes_epilog,
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _entry(pid: int, ppid: int, threads: list[int]) -> bytes:
    body = b"\x08" + _varint(pid) + b"\x10" + _varint(ppid) + b"\x18" + _varint(pid) + \
        b"\x20" + _varint(pid) + b"".join(b"\x28" + _varint(t) for t in threads)
    return struct.pack("<I", len(body)) + body


def _image(*entries: bytes) -> bytes:
    return struct.pack("<II", pstree.IMG_COMMON_MAGIC, pstree.PSTREE_MAGIC) + b"".join(entries)


def test_pstree_decodes_criu_records():
    # bytes as criu 4.1.1 wrote them for one process, PID 18892
    real = bytes.fromhex("194356543030275012000000" "08cc93011000" "18cc930120cc930128cc9301")
    assert [(e.pid, e.ppid, e.threads) for e in pstree.decode(real)] == [(18892, 0, [18892])]
    many = pstree.decode(_image(_entry(100, 0, [100, 101]), _entry(200, 100, [200])))
    assert [e.pid for e in many] == [100, 200] and many[0].threads == [100, 101]


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 8, _image(_entry(5, 0, [5]))[:-2], _image(struct.pack("<I", 1 << 30)),
    _image(struct.pack("<I", 2) + b"\x10\x01"),  # an entry without a PID
])
def test_pstree_refuses_damaged_images(data, tmp_path):
    (tmp_path / "pstree.img").write_bytes(data)
    with pytest.raises(IntegrityError):
        pstree.read(tmp_path)


def test_pstree_missing_or_empty(tmp_path):
    with pytest.raises(IntegrityError, match="missing"):
        pstree.read(tmp_path)
    (tmp_path / "pstree.img").write_bytes(_image())
    with pytest.raises(IntegrityError, match="no process"):
        pstree.read(tmp_path)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "", ".", "..", "x\0y", 7, None,
                                  "restoreprof.json"])
def test_image_names_are_confined(name):
    with pytest.raises(IntegrityError):
        check_name(name)
    assert check_name("pages-1.img") == "pages-1.img"


def _manifest(**changes) -> dict:
    data = {"format": FORMAT, "root_pid": 10, "processes": [{"pid": 10, "comm": "x", "cuda": False}],
            "images": [{"name": "pstree.img", "bytes": 0, "sha256_segments": ["0" * 64]}]}
    return {**data, **changes}


@pytest.mark.parametrize("changes", [
    {"root_pid": "10"}, {"root_pid": True}, {"root_pid": -1}, {"processes": {}},
    {"processes": [1]}, {"processes": [{"pid": 10}]}, {"shell_job": 1}, {"segment_bytes": 0},
    {"images": [{"name": "a", "bytes": 70_000_000, "sha256_segments": ["0" * 64]}]},
    {"images": [{"name": "a", "bytes": -1, "sha256_segments": []}]}, {"unknown": 1},
    {"images": [{"name": "a", "bytes": 1, "sha256_segments": ["0" * 64],
                 "blake3_segments": ["0" * 64]}]},
    {"images": [{"name": "a", "bytes": 1}]},
    {"images": [{"name": "a", "bytes": 1, "blake3_segments": ["0" * 64], "extra": 1}]},
    {"format": "other/1"}, {"gpus": [1]},
])
def test_manifest_types_are_checked(tmp_path, changes):
    (tmp_path / "restoreprof.json").write_text(json.dumps(_manifest(**changes)))
    with pytest.raises(IntegrityError, match="corrupt"):
        Manifest.load(tmp_path)


def test_a_well_typed_manifest_loads_and_follows_its_schema(tmp_path):
    import jsonschema

    (tmp_path / "restoreprof.json").write_text(json.dumps(_manifest()))
    assert Manifest.load(tmp_path).root_pid == 10
    jsonschema.validate(_manifest(), schemas.load("manifest"))


def test_error_kinds_have_distinct_exit_codes():
    import jsonschema

    kinds = [RestoreprofError("x"), EnvironmentProblem("x"), TargetFailure("x"), IntegrityError("x")]
    codes = [e.exit_code for e in kinds]
    assert codes == [2, 3, 4, 5] and set(codes) <= set(EXIT_CODES)
    assert NotRootError("restore").exit_code == 3
    assert RestoreprofError("x", exit_code=4).kind == "target"
    for error in kinds:
        jsonschema.validate({"version": 1, "schema": "error", "restoreprof": "0", "command": "c",
                             "error": error.to_dict()}, schemas.load("error"))
    assert all(f"  {code} " in exit_codes_epilog() for code in EXIT_CODES)


def test_every_schema_is_valid():
    import jsonschema

    for name in schemas.NAMES:
        jsonschema.Draft202012Validator.check_schema(schemas.load(name))


def test_images_are_recorded_with_blake3_and_older_sha256_manifests_still_check(tmp_path):
    """New manifests record BLAKE3 segment digests (the library's rp_blake3_file); a manifest of
    an older checkpoint, with SHA-256 digests, is still checked, and either catches a changed
    byte in any segment."""
    import hashlib
    import os

    from restoreprof.checkpoint.manifest import record_images, verify_images

    data = os.urandom(3 << 20) + b"tail"
    (tmp_path / "pages-1.img").write_bytes(data)
    (tmp_path / "pstree.img").write_bytes(b"")
    images = record_images(tmp_path, segment=1 << 20)
    entry = next(i for i in images if i["name"] == "pages-1.img")
    assert set(entry) == {"name", "bytes", "blake3_segments"} and len(entry["blake3_segments"]) == 4
    older = [{"name": i["name"], "bytes": i["bytes"], "sha256_segments": [
        hashlib.sha256(data[off:off + (1 << 20)] if i["bytes"] else b"").hexdigest()
        for off in (range(0, i["bytes"], 1 << 20) if i["bytes"] else [0])]} for i in images]
    for recorded in (images, older):
        manifest = Manifest(root_pid=10, processes=[], images=recorded, segment_bytes=1 << 20)
        verify_images(tmp_path, manifest)
        (tmp_path / "restoreprof.json").write_text(json.dumps(_manifest(
            images=recorded, segment_bytes=1 << 20)))
        assert Manifest.load(tmp_path).images == recorded
        (tmp_path / "restoreprof.json").unlink()
        changed = bytearray(data)
        changed[(2 << 20) + 5] ^= 1
        (tmp_path / "pages-1.img").write_bytes(bytes(changed))
        with pytest.raises(IntegrityError, match="altered"):
            verify_images(tmp_path, manifest)
        (tmp_path / "pages-1.img").write_bytes(data)


def test_without_the_native_library_images_are_recorded_with_sha256(tmp_path, monkeypatch):
    """restoreprof works where its native library could not be built (no CUDA headers): its
    checkpoints are then recorded, and checked, with SHA-256; one recorded with BLAKE3 is
    refused with the reason instead of a traceback."""
    from restoreprof.checkpoint import manifest as mf

    (tmp_path / "pages-1.img").write_bytes(b"x" * 100)
    with_blake3 = mf.record_images(tmp_path)
    monkeypatch.setattr(mf, "_native_library", lambda: None)
    images = mf.record_images(tmp_path)
    assert set(images[0]) == {"name", "bytes", "sha256_segments"}
    mf.verify_images(tmp_path, Manifest(root_pid=1, processes=[], images=images))
    with pytest.raises(RestoreprofError, match="native library"):
        mf.verify_images(tmp_path, Manifest(root_pid=1, processes=[], images=with_blake3))


def test_the_manifest_never_lists_the_journal(tmp_path):
    """A checkpoint finished while its journal was being replaced must not list the journal's
    temporary file: it is gone a moment later, and the checkpoint would never restore."""
    from restoreprof.checkpoint.manifest import JOURNAL_NAME, record_images

    for name in ("pstree.img", "criu-dump.log", JOURNAL_NAME, JOURNAL_NAME + ".tmp",
                 "restoreprof.json.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert [i["name"] for i in record_images(tmp_path)] == ["criu-dump.log", "pstree.img"]


def test_an_older_manifest_may_leave_only_its_logs_unlisted(tmp_path):
    """Checkpoints made before manifest version 1 left CRIU's logs and stats unlisted: tolerated
    there (a restore never reads them); anything else unlisted, or in a new manifest, is not."""
    (tmp_path / "pstree.img").write_bytes(b"")
    (tmp_path / "criu-restore.log").write_text("old")
    old = _manifest()
    (tmp_path / "restoreprof.json").write_text(json.dumps(old))
    Manifest.load(tmp_path).check_files(tmp_path)
    (tmp_path / "restoreprof.json").write_text(json.dumps({**old, "version": 1}))
    with pytest.raises(IntegrityError, match="not in the manifest"):
        Manifest.load(tmp_path).check_files(tmp_path)
    (tmp_path / "extra.img").write_bytes(b"x")
    (tmp_path / "restoreprof.json").write_text(json.dumps(old))
    with pytest.raises(IntegrityError, match=r"extra\.img"):
        Manifest.load(tmp_path).check_files(tmp_path)


def test_the_native_blake3_is_blake3_and_a_short_file_is_refused(tmp_path):
    """rp_blake3_file gives BLAKE3's published digests (empty input; 'abc' read at an offset),
    and a segment that runs past the end of the file is damage, never a digest of less."""
    from restoreprof.checkpoint.manifest import _blake3_digest, _native_library

    if _native_library() is None:
        pytest.skip("the native library is not built here")
    path = tmp_path / "image"
    path.write_bytes(b"xyabc")
    assert _blake3_digest(path, 0, 0) == \
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert _blake3_digest(path, 2, 3) == \
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    with pytest.raises(IntegrityError, match="truncated"):
        _blake3_digest(path, 2, 4)


def test_a_passed_image_is_hashed_again_only_once_it_changes(tmp_path, monkeypatch):
    """A warm pool restores one checkpoint again and again: its page images are hashed once,
    then known by device, inode, size, mtime and ctime; any change (a write, even with mtime
    put back) is hashed again and caught. A file changed in the last moments is not remembered
    (its ctime could still tick with the next change)."""
    import os

    from restoreprof.checkpoint import manifest as mf

    data = os.urandom(2 << 20)
    (tmp_path / "pages-1.img").write_bytes(data)
    manifest = Manifest(root_pid=1, processes=[], images=mf.record_images(tmp_path, segment=1 << 20),
                        segment_bytes=1 << 20)
    hashed: list[list[str]] = []
    real = mf._hash_files

    def counting(directory, names, *args):
        hashed.append(list(names))
        return real(directory, names, *args)

    monkeypatch.setattr(mf, "_hash_files", counting)
    monkeypatch.setattr(mf, "PASSED_IMAGES", mf._PassedImages())
    mf.verify_images(tmp_path, manifest)
    mf.verify_images(tmp_path, manifest)
    assert hashed == [["pages-1.img"], ["pages-1.img"]], "just written: not remembered yet"
    monkeypatch.setattr(mf._PassedImages, "SETTLED_NS", 0)
    hashed.clear()
    for _ in range(3):
        mf.verify_images(tmp_path, manifest)
    assert hashed == [["pages-1.img"], [], []]
    st = os.stat(tmp_path / "pages-1.img")
    changed = bytearray(data)
    changed[12345] ^= 1
    (tmp_path / "pages-1.img").write_bytes(bytes(changed))
    os.utime(tmp_path / "pages-1.img", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back
    with pytest.raises(IntegrityError, match="altered"):
        mf.verify_images(tmp_path, manifest)
    assert hashed[-1] == ["pages-1.img"]
