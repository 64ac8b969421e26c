"""The tuner's search against a deterministic simulated restore (no CRIU, no GPU)."""

from __future__ import annotations

import math
import random

import pytest

from restoreprof.tuner.search import coordinate_descent, freeze, successive_halving
from restoreprof.tuner.space import (
    build_space,
    default_point,
    describe,
    order_for_bottleneck,
    plain_point,
    split,
)

OPTIMUM = {"verify": False, "readahead": True, "threads": 8, "parallel": True,
           "streams": 4, "chunk_mb": 64, "pinned": True, "preload": True}


def simulated_restore_s(p: dict) -> float:
    """An 8 GiB GPU restore: checksums, CRIU pages, cuInit, driver restore, the reload's copy.

    Settings interact as on the real thing: read-ahead and its threads help only without the
    checksum pass (which reads every image itself), pageable copies cap PCIe at ~9 GB/s, a
    preload hides part of the copy behind CRIU.
    """
    verify_s = 0.40 if p["verify"] else 0.0
    criu_s = 1.0
    if p["readahead"] and not p["verify"]:
        criu_s -= 0.4 * min(p["threads"], 8) / 8
    criu_s += 0.01 * max(0, p["threads"] - 8)
    driver_s = 0.2 if p["parallel"] else 0.35
    gbps = 50.0 if p["pinned"] else 9.0
    gbps *= 1 - 0.25 * abs(math.log2(p["streams"]) - 2)
    gbps *= 1 - 0.15 * abs(math.log2(p["chunk_mb"]) - 6)
    gbps *= min(p["threads"], 8) / 8
    copy_s = 8.6 / gbps - (0.05 if p["preload"] and p["parallel"] else 0.0)
    return verify_s + criu_s + driver_s + copy_s


def grid_size(space) -> int:
    return math.prod(len(d.values) for d in space)


@pytest.fixture
def space():
    return build_space(has_cuda=True, has_offload=True)


def test_finds_the_known_optimum_from_the_default_within_budget(space):
    result = coordinate_descent(space, simulated_restore_s, budget=30, start=default_point(space))
    assert result.best == OPTIMUM
    assert result.best_s == pytest.approx(simulated_restore_s(OPTIMUM))
    assert result.trials <= 30 < grid_size(space) / 100


def test_finds_the_optimum_from_a_bad_start_within_budget(space):
    start = {"verify": True, "readahead": False, "threads": 1,
             "parallel": False, "streams": 1, "chunk_mb": 8, "pinned": False, "preload": False}
    result = coordinate_descent(space, simulated_restore_s, budget=40, start=start)
    assert result.best == OPTIMUM
    assert result.trials <= 40


def test_budget_is_never_exceeded(space):
    calls = []

    def measure(p):
        calls.append(p)
        return simulated_restore_s(p)

    result = coordinate_descent(space, measure, budget=5, start=default_point(space))
    assert len(calls) == result.trials == 5
    assert result.best_s == min(simulated_restore_s(p) for p in calls)


def test_known_points_are_not_measured_again(space):
    start = default_point(space)
    calls = []

    def measure(p):
        calls.append(freeze(p))
        return simulated_restore_s(p)

    coordinate_descent(space, measure, budget=30, start=start,
                       known={freeze(start): [simulated_restore_s(start)]})
    assert freeze(start) not in calls
    assert len(calls) == len(set(calls))


def test_the_bottleneck_decides_what_is_tried_first(space):
    seen = []

    def measure(p):
        seen.append(p)
        return simulated_restore_s(p)

    start = default_point(space)
    order = order_for_bottleneck(space, "GPU memory reload")
    assert [d.name for d in order[:4]] == ["streams", "chunk_mb", "threads", "pinned"]
    coordinate_descent(order, measure, budget=30, start=start)
    assert describe(seen[1], start).startswith("streams=")

    order = order_for_bottleneck(space, "criu restore")
    assert [d.name for d in order[:3]] == ["readahead", "threads", "verify"]
    assert order_for_bottleneck(space, "verify images")[0].name == "verify"
    assert order_for_bottleneck(space, None) == space


def test_noisy_measurements_still_pick_a_near_optimal_winner(space):
    rng = random.Random(7)

    def noisy(p):
        return simulated_restore_s(p) * rng.uniform(0.97, 1.03)

    found = coordinate_descent(space, noisy, budget=40, start=default_point(space))
    finalists = [p for p, _ in found.ranked()[:4]]
    final = successive_halving(finalists, noisy, budget=8)
    assert final.trials <= 8
    assert simulated_restore_s(final.best) <= simulated_restore_s(OPTIMUM) * 1.05


def test_successive_halving_keeps_the_faster_half():
    costs = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    measured = []

    def measure(p):
        measured.append(p["x"])
        return costs[p["x"]]

    result = successive_halving([{"x": x} for x in (4, 3, 2, 1)], measure, budget=10)
    assert result.best == {"x": 1}
    assert sorted(measured) == [1, 1, 2, 2, 3, 4]


def test_cpu_only_space_and_the_plain_path():
    space = build_space(has_cuda=False, has_offload=False)
    assert [d.name for d in space] == ["verify", "readahead", "threads"]
    plain = plain_point(space)
    config, options = split(plain)
    assert (config.readahead, config.parallel, config.preload) == (False,) * 3
    assert options == {"verify": True}
    config, options = split({"verify": False, "readahead": True, "threads": 2})
    assert (config.threads, config.readahead, options["verify"]) == (2, True, False)


def test_settings_that_do_nothing_are_not_timed():
    """Read-ahead runs only without the checksum pass: no trial varies it while verify is on."""
    space = build_space(has_cuda=False, has_offload=False)
    seen = []

    def cpu_restore_s(p):
        seen.append(p)
        ahead = p["readahead"] and not p["verify"]
        reads = 1.0 - (0.1 * min(p["threads"], 4) - 0.02 * max(0, p["threads"] - 4) if ahead else 0)
        return (0.5 if p["verify"] else 0.0) + reads

    result = coordinate_descent(order_for_bottleneck(space, "cpu memory restore"), cpu_restore_s,
                                budget=20, start=default_point(space))
    assert result.best == {"verify": False, "readahead": True, "threads": 4}
    # The start, and verify turned back on once from the best point: nothing else with checksums.
    assert len([p for p in seen if p["verify"]]) == 2
