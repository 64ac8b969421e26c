"""doctor's row on the restore's work folder: tmpfs passes; a disk file system is advice."""

from pathlib import Path

from restoreprof.doctor import mount_of, restore_work_check

MOUNTS = """/dev/vda / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev 0 0
tmpfs /run/user/1000 tmpfs rw 0 0
/dev/vdb /srv/my\\040disk xfs rw 0 0
"""


def test_the_longest_mount_point_holding_the_path_wins():
    assert mount_of(Path("/run/restoreprof/restores"), MOUNTS) == ("/run", "tmpfs")
    assert mount_of(Path("/runner/x"), MOUNTS) == ("/", "ext4")
    assert mount_of(Path("/srv/my disk/a"), MOUNTS) == ("/srv/my disk", "xfs")


def test_tmpfs_passes():
    check = restore_work_check(Path("/run/restoreprof/restores"), MOUNTS)
    assert check.ok is True and not check.required


def test_a_disk_file_system_is_advice_with_a_fix():
    no_tmpfs = "\n".join(line for line in MOUNTS.splitlines() if " /run " not in line)
    check = restore_work_check(Path("/run/restoreprof/restores"), no_tmpfs)
    assert check.ok is None and not check.required
    assert "on ext4 (/)" in check.detail and "tmpfs" in check.fix


def test_criu_kernel_cache_rows():
    from restoreprof.doctor import criu_cache_check

    assert criu_cache_check(True, False, "tmpfs").ok is True
    stale = criu_cache_check(False, True, "tmpfs")
    assert stale.ok is None and stale.fix == "rm /run/criu.kdat.tmp"
    assert "mount a tmpfs" in criu_cache_check(False, True, "ext4").fix
    disk = criu_cache_check(False, False, "ext4")
    assert disk.ok is None and "only on tmpfs" in disk.detail and not disk.required
    assert criu_cache_check(False, False, "tmpfs").ok is None
