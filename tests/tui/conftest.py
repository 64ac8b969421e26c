"""Shared pieces of the TUI tests: the recorded trace, an app over it, and a wait helper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from restoreprof.tui.app import RestoreprofApp
from restoreprof.tui.feed import ReplayFeed

from restoreprof.analysis.ceilings import CALIBRATED, Ceilings

DATA = Path(__file__).parent / "data"
RECORDED_TRACE = DATA / "preadv_restore.rptrace"

# Fixed so snapshots do not depend on this machine's calibrate cache or optimizer config.
CEILINGS = Ceilings(htod_pinned_gbps=55.0, htod_pageable_gbps=25.0, dtoh_pinned_gbps=52.0,
                    dtoh_pageable_gbps=20.0, host_memcpy_gbps=12.0, disk_read_gbps=3.5,
                    disk_path="/ckpt", hostname="ci", measured_at="2025-01-01T00:00:00+00:00",
                    source=CALIBRATED)


def ceilings() -> Ceilings:
    """A fresh copy of CEILINGS (Ceilings is mutable)."""
    return Ceilings.from_dict(CEILINGS.to_dict())
OPTIMIZER_CONFIG = {"streams": 8, "chunk_mb": 64, "threads": 8, "pinned": True,
                    "prewarm": True, "readahead": True, "offload": True, "source": "defaults"}
TERMINAL_SIZE = (120, 40)


@pytest.fixture
def recorded_trace():
    from restoreprof.tui.pipeline import load_trace

    return load_trace(RECORDED_TRACE)


def make_app(trace, *, speed: float = 0, until_ns: int | None = None,
             export_dir: Path | None = None,
             with_ceilings: Ceilings | None = None) -> RestoreprofApp:
    feed = ReplayFeed(trace, speed=speed, until_ns=until_ns,
                      ceilings=with_ceilings if with_ceilings is not None else ceilings())
    return RestoreprofApp(feed, export_dir=export_dir, optimizer_config=dict(OPTIMIZER_CONFIG))


async def wait_until(pilot, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)


async def wait_finished(pilot) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: app.shown is not None and app.shown.finished)
    await pilot.pause()
