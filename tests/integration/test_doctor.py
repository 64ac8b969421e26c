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
