"""The view's links to analysis and ceilings: the graphs' reference lines are the analysis's."""

from __future__ import annotations

from restoreprof.tui import pipeline
from restoreprof.tui.pipeline import H2D_COPIES, PAGE_READS, graph_ceiling

from restoreprof.analysis.ceilings import CALIBRATED, Ceilings

from .conftest import TERMINAL_SIZE, ceilings, make_app, wait_finished


def _report(page_gbps: float) -> dict:
    return {"phases": [{"name": PAGE_READS, "gbps": page_gbps}], "cuda": {}}


def test_page_reads_are_measured_against_the_disk():
    line = graph_ceiling(ceilings(), _report(page_gbps=2.0), PAGE_READS)
    assert (line.gbps, line.label, line.missing) == (3.5, "disk read", "")


def test_page_reads_faster_than_the_disk_came_from_the_page_cache():
    line = graph_ceiling(ceilings(), _report(page_gbps=4.3), PAGE_READS)
    assert (line.gbps, line.label) == (12.0, "host memcpy (page cache)")


def test_h2d_copies_are_measured_against_pinned_h2d():
    line = graph_ceiling(ceilings(), None, H2D_COPIES)  # before the first report too
    assert (line.gbps, line.label) == (55.0, "H2D pinned")


def test_nothing_calibrated_draws_no_line():
    for phase in (PAGE_READS, H2D_COPIES):
        line = graph_ceiling(Ceilings(), _report(page_gbps=2.0), phase)
        assert line.gbps == 0.0 and line.missing == "uncalibrated"


def test_a_calibrated_machine_without_gpu_numbers_says_not_measured():
    no_gpu = Ceilings(disk_read_gbps=3.5, host_memcpy_gbps=12.0, source=CALIBRATED)
    line = graph_ceiling(no_gpu, None, H2D_COPIES)
    assert (line.gbps, line.missing) == (0.0, "not measured")


def test_ceilings_come_from_the_calibrate_cache(tmp_path, monkeypatch):
    from restoreprof.analysis import ceilings as ceilings_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    gpus = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1234"}]
    assert pipeline.load_ceilings("host-a", gpus).source == "uncalibrated"
    ceilings_module.save(Ceilings(htod_pinned_gbps=53.1, disk_read_gbps=2.4, hostname="host-a",
                                  gpu=gpus[0]))
    loaded = pipeline.load_ceilings("host-a", gpus)
    assert (loaded.source, loaded.htod_pinned_gbps, loaded.disk_read_gbps) == (CALIBRATED, 53.1, 2.4)


async def test_the_graph_titles_name_the_ceilings(recorded_trace):
    app = make_app(recorded_trace)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_finished(pilot)
        screen = app.export_screen_text()
    assert "ceiling 55.0 GB/s" in screen and "H2D pinned ╌" in screen
    assert "ceiling 12.0 GB/s" in screen and "host memcpy (page cache) ╌" in screen
    assert "uncalibrated" not in screen and "analysis:" not in screen


async def test_uncalibrated_graphs_say_so_and_draw_no_line(recorded_trace):
    app = make_app(recorded_trace, with_ceilings=Ceilings(hostname="ci"))
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await wait_finished(pilot)
        screen = app.export_screen_text()
        assert app.shown.report["bottleneck"]["phase"] == "gpu memory restore"
    assert "disk read ceiling: uncalibrated" in screen
    assert "H2D pinned ceiling: uncalibrated" in screen
    assert "╌" not in screen and "┤" not in screen
