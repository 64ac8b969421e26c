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
