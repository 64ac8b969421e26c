"""doctor's row on restoreprof's lazy page server: on, off by the setting, or refused here."""

from restoreprof.doctor import lazy_pages_check


def test_working_userfaultfd_is_a_pass():
    check = lazy_pages_check(works=True, enabled=True)
    assert check.ok is True and "userfaultfd works" in check.detail


def test_switched_off_says_how_to_switch_it_on():
    check = lazy_pages_check(works=True, enabled=False)
    assert check.ok is None and "RESTOREPROF_LAZY_PAGES" in check.fix


def test_refused_userfaultfd_is_advice_not_a_failure():
    check = lazy_pages_check(works=False, enabled=True)
    assert check.ok is None and not check.required and "CRIU reads every page" in check.detail


def test_run_on_tmpfs_is_found_from_the_mount_table():
    from restoreprof.doctor import mount_fstype, run_dir_check

    mounts = ("/dev/vda / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n"
              "tmpfs /run/user/0 tmpfs rw 0 0\n/dev/vdb /runner ext4 rw 0 0\n")
    assert mount_fstype("/run", mounts) == "tmpfs"
    assert mount_fstype("/run", "/dev/vda / ext4 rw 0 0\n/dev/vdb /runner xfs rw 0 0\n") == "ext4"
    assert run_dir_check("tmpfs").ok is True
    slow = run_dir_check("ext4")
    assert slow.ok is None and "probes the kernel again" in slow.detail and "tmpfs" in slow.fix
