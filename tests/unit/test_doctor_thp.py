"""doctor's advice on transparent huge pages, from the kernel's setting text."""

from restoreprof.doctor import transparent_hugepages


def test_always_is_fine():
    check = transparent_hugepages("[always] madvise never\n")
    assert check.ok is True and not check.fix and not check.required


def test_madvise_gets_the_measured_advice():
    check = transparent_hugepages("always [madvise] never\n")
    assert check.ok is None and not check.required
    assert check.detail.startswith("madvise") and "echo always >" in check.fix


def test_never_gets_it_too():
    assert "never" in transparent_hugepages("always madvise [never]").detail
