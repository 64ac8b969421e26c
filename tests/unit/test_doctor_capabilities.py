"""Which capabilities doctor says are missing, from a CapEff mask."""

from __future__ import annotations

from restoreprof.doctor import effective_capabilities, missing_capabilities

ALL = (1 << 41) - 1


def test_a_full_mask_misses_nothing():
    assert missing_capabilities(ALL, 40) == []


def test_a_docker_default_root_misses_all_four():
    docker_default = effective_capabilities("Name:\tsh\nCapEff:\t00000000a80425fb\n")
    assert missing_capabilities(docker_default, 40) == [
        "CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]


def test_capabilities_the_kernel_does_not_have_are_not_asked_for():
    # a 5.4 kernel: no CAP_PERFMON, CAP_BPF or CAP_CHECKPOINT_RESTORE (last cap 37)
    assert missing_capabilities(1 << 21, 37) == []
