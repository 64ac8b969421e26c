"""restoreprof doctor on this machine (real bcc, the fake driver for CUDA)."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.root


def _rows(stdout: str) -> dict[str, str]:
    """{check name: status and detail} from the printed table."""
    return {m[1]: m[2] for m in re.finditer(r"^  (\S.*?)\s{2,}(\S.*)$", stdout, re.MULTILINE)}


def test_doctor_reports_the_start_up_shortcut_and_the_drivers_storage(fake_driver,
                                                                       restoreprof_cli):
    out = restoreprof_cli("doctor")
    rows = _rows(out.stdout)
    assert rows["BPF syscall"].startswith("ok"), out.stdout
    assert rows["bcc start-up shortcut"].startswith("ok"), out.stdout
    # the fake driver, like driver 580, has no custom checkpoint storage
    assert "driver has no custom storage" in rows["checkpoint storage"], out.stdout


NEEDED = "cap_sys_admin,cap_bpf,cap_perfmon,cap_checkpoint_restore"


def _doctor_as(prefix: list[str]):
    import shlex
    import subprocess
    import sys

    doctor = [sys.executable, "-m", "restoreprof", "doctor"]
    if prefix[0] == "capsh":   # capsh runs what follows -- as bash's arguments
        doctor = ["-c", f"exec {shlex.join(doctor)}"]
    return subprocess.run([*prefix, *doctor], capture_output=True, text=True, timeout=120)


def test_root_without_the_capabilities_is_named_not_ok():
    """Root in a container without CAP_BPF and CAP_PERFMON: 'privileges ok root' was a lie."""
    out = _doctor_as(["capsh", f"--drop={NEEDED}", "--"])
    rows = _rows(out.stdout)
    assert rows["privileges"].startswith("MISSING"), out.stdout
    for cap in ("CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"):
        assert cap in rows["privileges"]
    assert out.returncode == 1 and "NOT ready" in out.stdout
    # libbpf's own complaint goes into the table, never above it
    assert "Failed to load" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.startswith("restoreprof doctor:")


def test_only_the_missing_ones_are_named():
    """Without CAP_BPF and CAP_PERFMON, CAP_SYS_ADMIN still lets BPF load: named, yet ok."""
    out = _doctor_as(["capsh", "--drop=cap_bpf,cap_perfmon", "--"])
    rows = _rows(out.stdout)
    privileges = rows["privileges"]
    assert "without CAP_PERFMON, CAP_BPF (CAP_SYS_ADMIN covers them)" in privileges
    assert privileges.startswith("ok") and rows["BPF syscall"].startswith("ok")


def test_a_user_without_rights_gets_the_table_not_a_traceback():
    out = _doctor_as(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"])
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 1 and "NOT ready" in out.stdout
    assert "uid 65534 without CAP_SYS_ADMIN" in _rows(out.stdout)["privileges"]
