"""Issue 19 (S2, S4, manifest coverage), issue 18 (exit codes, JSON errors, schemas) and issue 16
(read-only checkpoint folders), on real CRIU checkpoints of a small process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from restoreprof import schemas
from restoreprof.checkpoint import checkpoint, restore
from restoreprof.checkpoint.manifest import MANIFEST_NAME
from restoreprof.errors import EXIT_ENVIRONMENT, EXIT_INTEGRITY, EXIT_TARGET, EXIT_USAGE, IntegrityError
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
NOBODY = 65534


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """One real checkpoint of a process holding 8 MiB (the process is gone); tests copy it."""
    base = tmp_path_factory.mktemp("trust")
    w = HeldMemory.start(base / "state", 8)
    result = checkpoint(w.pid, base / "images")
    return w, result


@pytest.fixture
def copy(small_checkpoint, tmp_path):
    def make(name: str = "c") -> Path:
        dst = tmp_path / name
        subprocess.run(["cp", "-a", str(small_checkpoint[1].directory), str(dst)], check=True)
        return dst
    return make


def _validate(document: dict, name: str) -> None:
    import jsonschema

    jsonschema.validate(document, schemas.load(name))


def _no_traceback(out) -> None:
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr


# --- S2: private checkpoints ------------------------------------------------------------------


def test_checkpoint_folder_and_files_are_private(small_checkpoint):
    _, result = small_checkpoint
    st = os.stat(result.directory)
    assert stat.S_IMODE(st.st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in result.directory.iterdir()}
    assert modes and all(m == 0o600 for m in modes.values()), modes
    assert "pstree.img" in modes and "criu-dump.log" in modes


@pytest.mark.parametrize("owner, mode", [(NOBODY, 0o700), (0, 0o777), (0, 0o770)])
def test_checkpoint_refuses_a_folder_others_could_write(tmp_path, owner, mode, restoreprof_cli):
    w = HeldMemory.start(tmp_path / "state", 4)
    try:
        folder = tmp_path / "theirs"
        folder.mkdir()
        os.chown(folder, owner, owner)
        os.chmod(folder, mode)
        out = restoreprof_cli("checkpoint", "-p", str(w.pid), "-D", str(folder))
        assert out.returncode == EXIT_INTEGRITY, out.stderr
        assert "could read or replace" in out.stderr
        assert list(folder.iterdir()) == [] and w.alive()
    finally:
        w.stop()


def test_checkpoint_D_a_file_and_a_read_only_filesystem(tmp_path, restoreprof_cli):
    w = HeldMemory.start(tmp_path / "state", 4)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o700)
    subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        a_file = tmp_path / "file"
        a_file.write_text("x")
        out = restoreprof_cli("checkpoint", "-p", str(w.pid), "-D", str(a_file))
        _no_traceback(out)
        assert out.returncode == EXIT_USAGE and "is not a folder" in out.stderr
        out = restoreprof_cli("checkpoint", "-p", str(w.pid), "-D", str(ro / "c"), "--json")
        _no_traceback(out)
        assert out.returncode == EXIT_ENVIRONMENT, out.stderr
        error = json.loads(out.stdout)
        _validate(error, "error")
        assert error["error"]["kind"] == "environment" and "writable" in error["error"]["hint"]
        assert w.alive() and w.verify()
    finally:
        subprocess.run(["umount", str(ro)], check=False)
        w.stop()


# --- S4: restore trusts only what nobody else could have written ------------------------------


@pytest.mark.parametrize("tamper", ["folder-owner", "folder-mode", "file-owner", "file-group-write",
                                    "symlink", "fifo", "parent-world-writable"])
def test_restore_refuses_what_others_could_write(copy, tamper, restoreprof_cli, tmp_path):
    images = copy()
    page = sorted(images.glob("pages-*.img"))[0]
    if tamper == "folder-owner":
        os.chown(images, NOBODY, NOBODY)
    elif tamper == "folder-mode":
        os.chmod(images, 0o757)
    elif tamper == "file-owner":
        os.chown(page, NOBODY, NOBODY)
    elif tamper == "file-group-write":
        os.chmod(page, 0o620)
    elif tamper == "symlink":
        (images / "extra.img").symlink_to("/etc/shadow")
    elif tamper == "fifo":
        os.mkfifo(images / "extra.img")
    elif tamper == "parent-world-writable":
        os.chmod(tmp_path, 0o777)
    try:
        out = restoreprof_cli("restore", "-D", str(images))
    finally:
        os.chmod(tmp_path, 0o700)
    _no_traceback(out)
    assert out.returncode == EXIT_INTEGRITY, out.stderr
    assert "others" in out.stderr or "link" in out.stderr or "plain file" in out.stderr


def test_unlisted_image_is_refused(copy, restoreprof_cli):
    """A flipped page whose manifest entry was removed must never restore."""
    images = copy()
    manifest = json.loads((images / MANIFEST_NAME).read_text())
    page = sorted(images.glob("pages-*.img"))[0]
    manifest["images"] = [i for i in manifest["images"] if i["name"] != page.name]
    (images / MANIFEST_NAME).write_text(json.dumps(manifest))
    with open(page, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 16)
    out = restoreprof_cli("restore", "-D", str(images))
    assert out.returncode == EXIT_INTEGRITY and "not in the manifest" in out.stderr
    assert page.name in out.stderr


@pytest.mark.parametrize("name", ["../escape.img", "/etc/passwd", "sub/x.img", "..", ""])
def test_image_names_cannot_escape(copy, name, restoreprof_cli):
    images = copy()
    manifest = json.loads((images / MANIFEST_NAME).read_text())
    manifest["images"].append({"name": name, "bytes": 1, "sha256_segments": ["0" * 64]})
    (images / MANIFEST_NAME).write_text(json.dumps(manifest))
    out = restoreprof_cli("restore", "-D", str(images))
    _no_traceback(out)
    assert out.returncode == EXIT_INTEGRITY, out.stderr
    size = str(Path("/etc/passwd").stat().st_size)
    assert f"{size} bytes" not in out.stderr  # never a size of a file outside


@pytest.mark.parametrize("edit", [
    lambda m: [],                                         # not an object
    lambda m: {**m, "processes": 5},
    lambda m: {**m, "processes": [{"pid": "1", "comm": "x", "cuda": False}]},
    lambda m: {**m, "processes": [{**m["processes"][0], "cuda": "yes"}]},
    lambda m: {**m, "root_pid": True},
    lambda m: {**m, "images": [{"name": 3, "bytes": 1, "sha256_segments": []}]},
    lambda m: {**m, "images": {"a": 1}},
    lambda m: {**m, "segment_bytes": 0},
    lambda m: {**m, "processes": [{**m["processes"][0], "offload": {"snapshot": 1}}]},
])
def test_manifests_of_the_wrong_types(copy, edit, restoreprof_cli):
    images = copy()
    manifest = json.loads((images / MANIFEST_NAME).read_text())
    (images / MANIFEST_NAME).write_text(json.dumps(edit(manifest)))
    out = restoreprof_cli("restore", "-D", str(images), "--json")
    _no_traceback(out)
    assert out.returncode == EXIT_INTEGRITY, out.stderr
    _validate(json.loads(out.stdout), "error")


@pytest.mark.parametrize("edit", ["empty", "bogus-pid", "extra-pid", "root"])
def test_process_list_is_checked_against_criu(copy, edit, small_checkpoint):
    images = copy()
    manifest = json.loads((images / MANIFEST_NAME).read_text())
    first = manifest["processes"][0]
    if edit == "empty":
        manifest["processes"] = []
    elif edit == "bogus-pid":
        manifest["processes"] = [{**first, "pid": 4_000_000}]
        manifest["root_pid"] = 4_000_000
    elif edit == "extra-pid":
        manifest["processes"].append({**first, "pid": 4_000_001})
    else:
        manifest["root_pid"] = 4_000_002
    (images / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError):
        restore(images)
    assert not Path(f"/proc/{small_checkpoint[0].pid}").exists()


# --- issue 16: read-only folders; nothing written into a checkpoint -----------------------------


def test_restore_from_a_read_only_bind_mount(copy, small_checkpoint, tmp_path, restoreprof_cli):
    w, _ = small_checkpoint
    images = copy()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in images.iterdir())
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o700)
    subprocess.run(["mount", "--bind", str(images), str(ro)], check=True)
    work = tmp_path / "work"
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        out = restoreprof_cli("restore", "-D", str(ro), "-o", str(work), "--json")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        _validate(result, "restore")
        assert result["pids"] == [w.pid] and w.verify()
        assert (work / "criu-restore.log").exists()
    finally:
        w.stop()
        subprocess.run(["umount", str(ro)], check=False)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in images.iterdir()) == before


def test_planted_log_symlink_never_overwrites_its_target(copy, small_checkpoint, tmp_path):
    w, _ = small_checkpoint
    target = tmp_path / "precious"
    target.write_text("keep me")
    images = copy()
    (images / "criu-restore.log").symlink_to(target)  # in the checkpoint: refused outright
    with pytest.raises(IntegrityError, match="link"):
        restore(images)
    (images / "criu-restore.log").unlink()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    (work / "criu-restore.log").symlink_to(target)   # in a work folder: replaced, not followed
    (work / "restored.pid").symlink_to(target)
    try:
        restore(images, work_dir=work)
        assert w.verify()
    finally:
        w.stop()
    assert target.read_text() == "keep me"
    assert not (work / "criu-restore.log").is_symlink()


# --- issue 18: the script contract --------------------------------------------------------------


def test_checkpoint_json_and_manifest_follow_their_schemas(tmp_path, restoreprof_cli):
    w = HeldMemory.start(tmp_path / "state", 4)
    try:
        out = restoreprof_cli("checkpoint", "-p", str(w.pid), "-D", str(tmp_path / "c"),
                              "--leave-running", "--json")
        assert out.returncode == 0, out.stderr
        document = json.loads(out.stdout)
        _validate(document, "checkpoint")
        assert document["version"] == 1
        _validate(json.loads((tmp_path / "c" / MANIFEST_NAME).read_text()), "manifest")
        taken = restoreprof_cli("restore", "-D", str(tmp_path / "c"), "--json")
        assert taken.returncode == EXIT_TARGET and "in use" in taken.stderr
        _validate(json.loads(taken.stdout), "error")
        assert w.verify()
    finally:
        w.stop()


def test_exit_codes_are_listed_in_help(restoreprof_cli):
    out = restoreprof_cli("--help")
    for code in ("2", "3", "4", "5", "130"):
        assert f"\n  {code} " in out.stdout
    out = restoreprof_cli("restore", "--help")
    assert "integrity" in out.stdout and "--abort" in out.stdout and "--work-dir" in out.stdout
    out = restoreprof_cli("restore")  # argparse: usage
    assert out.returncode == EXIT_USAGE


def test_restore_into_a_closed_pipe(copy, small_checkpoint):
    """`restoreprof restore --json | head -c 1`: no traceback, the process restored."""
    import sys

    w, _ = small_checkpoint
    images = copy()
    script = (f"{sys.executable} -m restoreprof restore -D {images} --json | head -c 1 >/dev/null; "
              "exit ${PIPESTATUS[0]}")
    try:
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
        _no_traceback(out)
        assert w.verify()
    finally:
        w.stop()


def test_plain_input_errors_have_no_traceback(tmp_path, restoreprof_cli):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = restoreprof_cli("restore", "-D", str(a_file))
    assert out.returncode == EXIT_USAGE and "is not a folder" in out.stderr
    out = restoreprof_cli("checkpoint", "-D", str(tmp_path / "c"))
    assert out.returncode == EXIT_USAGE and "-p PID" in out.stderr
    out = restoreprof_cli("checkpoint", "-p", "-3", "-D", str(tmp_path / "c"))
    assert out.returncode == EXIT_USAGE
    out = restoreprof_cli("checkpoint", "--recover", "-D", str(tmp_path))
    assert out.returncode == EXIT_USAGE and "no interrupted checkpoint" in out.stderr
    out = restoreprof_cli("restore", "--abort", "-D", str(tmp_path), "-o", str(tmp_path / "w"))
    assert out.returncode == 0 and "no interrupted restore" in out.stdout
    out = restoreprof_cli("checkpoint", "-p", str(os.getpid()), "-D", str(tmp_path / "c"))
    assert out.returncode == EXIT_USAGE and "runs it" in out.stderr


def test_another_user_can_neither_read_nor_plant(small_checkpoint, tmp_path):
    """S2 as a second, unprivileged user: the images and the folder are closed to it (the
    folder above is opened to it, so only the checkpoint's own modes stand in the way)."""
    _, result = small_checkpoint
    images = result.directory
    page = sorted(images.glob("pages-*.img"))[0]
    parents = [p for p in images.parents if str(p).startswith("/tmp/")]
    old = {p: stat.S_IMODE(p.stat().st_mode) for p in parents}
    for p in parents:
        os.chmod(p, 0o755)
    try:
        pid = os.fork()
        if pid == 0:  # the other user
            code = 0
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                for attempt in (lambda: page.read_bytes(), lambda: os.listdir(images),
                                lambda: (images / "planted.img").write_bytes(b"x")):
                    try:
                        attempt()
                        code |= 1  # it worked: S2 is broken
                    except PermissionError:
                        pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "another user read or wrote the checkpoint"
    finally:
        for p, mode in old.items():
            os.chmod(p, mode)
