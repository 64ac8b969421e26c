"""Feeds: the background thread that turns an event stream into snapshots for the app.

``LiveFeed`` drives a ``TraceSession`` (the recorder's own session: its ``on_event`` callback is
the view's only source, there is no second collector). ``ReplayFeed`` plays a saved trace at
real or accelerated speed. Both own a ``LiveStats`` on their thread and hand the app one frozen
``Snapshot`` per frame through ``post``; the report is re-run at most about twice a second.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

from restoreprof.tui import pipeline
from restoreprof.tui.gpu import query_gpus
from restoreprof.tui.stats import LiveStats, Snapshot

from restoreprof.analysis.ceilings import Ceilings
from restoreprof.trace.events import Event

Post = Callable[[Snapshot], None]

FRAME_S = 0.1


class _ThrottledAnalysis:
    """Runs the analysis on the events so far, no more often than it can afford."""

    def __init__(self, ceilings: Ceilings, min_interval_s: float = 0.5) -> None:
        self.ceilings = ceilings
        self.min_interval_s = min_interval_s
        self.report: dict | None = None
        self.error = ""
        self._next_at = 0.0

    def maybe(self, trace_factory: Callable[[], object], force: bool = False) -> dict | None:
        now = time.monotonic()
        if not force and now < self._next_at:
            return self.report
        try:
            self.report = pipeline.analyze(trace_factory(), self.ceilings)
            self.error = ""
        except Exception as exc:
            self.error = f"analysis: {exc}"
        spent = time.monotonic() - now
        # A slow analysis must not starve the event loop: back off to a fifth of the time.
        self._next_at = time.monotonic() + max(self.min_interval_s, 4 * spent)
        return self.report


class Feed:
    """What the app needs from a feed: run on a thread, pause, stop, and the events so far."""

    mode = "feed"

    def __init__(self, target: str, ceilings: Ceilings) -> None:
        self.target = target
        self.ceilings = ceilings   # what analysis measures each phase against
        self.paused = threading.Event()
        self._stop = threading.Event()
        self.final_trace = None

    def run(self, post: Post) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self.paused.clear()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def events_so_far(self) -> list[Event]:
        raise NotImplementedError

    def meta(self):
        """The trace metadata as known so far (for analysis and export mid-run)."""
        raise NotImplementedError

    def trace_so_far(self):
        """The whole trace once the feed finished, else the events seen so far."""
        if self.final_trace is not None:
            return self.final_trace
        return pipeline.make_trace(self.meta(), self.events_so_far())


class ReplayFeed(Feed):
    """Plays a saved trace; ``speed`` 1 is real time, 10 ten times faster, 0 all at once.

    ``until_ns`` stops the replay that far into the trace, to show (and test) a mid-restore
    frame. ``ceilings`` default to the ones ``restoreprof report`` would use for this trace:
    the calibrate cache's entry for the trace's host and GPU, else uncalibrated.
    """

    mode = "replay"

    def __init__(self, trace, speed: float = 1.0, until_ns: int | None = None,
                 ceilings: Ceilings | None = None, clock: Callable[[], float] = time.monotonic,
                 target: str = "") -> None:
        if ceilings is None:
            ceilings = pipeline.trace_ceilings(trace.meta)
        super().__init__(target or _describe_target(trace.meta), ceilings)
        self.trace = trace
        self.speed = speed
        self.until_ns = until_ns
        self._clock = clock
        self._ordered = sorted(trace.events, key=lambda e: (e.end_ns, e.start_ns))
        self._released = 0  # events before this index have been shown
        self.start_ns = _trace_start_ns(trace)
        last_event_ns = max((e.end_ns for e in self._ordered), default=self.start_ns)
        self.end_ns = max(last_event_ns, getattr(trace.meta, "end_ns", 0) or 0)
        if until_ns is not None:
            self.end_ns = min(self.end_ns, self.start_ns + until_ns)

    def meta(self):
        return self.trace.meta

    def events_so_far(self) -> list[Event]:
        return self._ordered[: self._released]

    def run(self, post: Post) -> None:
        stats = LiveStats(self.target, self.mode, self.start_ns)
        analysis = _ThrottledAnalysis(self.ceilings)
        gpus = tuple(_meta_gpus(self.trace.meta))
        lost = int(getattr(self.trace.meta, "lost_events", 0) or 0)
        position_ns = 0.0
        last = self._clock()
        while not self.stopping:
            if self.paused.is_set():
                time.sleep(FRAME_S / 2)
                last = self._clock()
                continue
            now = self._clock()
            if self.speed > 0:
                position_ns += (now - last) * 1e9 * self.speed
            else:
                position_ns = float(self.end_ns - self.start_ns)
            last = now
            now_ns = min(self.end_ns, self.start_ns + int(position_ns))
            while (self._released < len(self._ordered)
                   and self._ordered[self._released].end_ns <= now_ns):
                stats.add(self._ordered[self._released])
                self._released += 1
            done = now_ns >= self.end_ns
            report = analysis.maybe(self.trace_so_far, force=done)
            post(stats.snapshot(now_ns, lost_events=lost, gpus=gpus, report=report,
                                ceilings=self.ceilings, finished=done,
                                note=analysis.error or ("replay finished" if done else "")))
            if done:
                if self.until_ns is None:
                    self.final_trace = self.trace
                return
            time.sleep(FRAME_S)


class LiveFeed(Feed):
    """Traces a target with ``restoreprof.probes.session.TraceSession`` and shows it live.

    ``label`` and ``command`` name the target where ``target`` wraps it (``restoreprof tui --
    CMD`` runs CMD under ``sh`` to send its output to a log); the trace's meta says them.
    ``ceilings`` default to this machine's calibrated ones (as 'restoreprof report' loads them).
    """

    mode = "live"

    def __init__(self, target, label: str = "", duration_s: float | None = None,
                 ceilings: Ceilings | None = None,
                 session_factory: Callable[..., object] | None = None,
                 command: list[str] | None = None) -> None:
        self.machine_gpus = pipeline.machine_gpus()
        if ceilings is None:
            ceilings = pipeline.load_ceilings(socket.gethostname(), self.machine_gpus)
        super().__init__(label or target.describe(), ceilings)
        self.command = list(command) if command is not None else (target.argv() or [])
        self.target_spec = target
        self.duration_s = duration_s
        self._session_factory = session_factory
        self.session = None
        self.start_ns = time.monotonic_ns()

    def _make_session(self, on_event: Callable[[Event], None]):
        if self._session_factory is not None:
            return self._session_factory(self.target_spec, on_event=on_event,
                                         duration_s=self.duration_s)
        from restoreprof.probes.session import TraceSession

        return TraceSession(self.target_spec, on_event=on_event, duration_s=self.duration_s)

    def events_so_far(self) -> list[Event]:
        # The session keeps the events; the view keeps none of its own.
        return list(self.session.events) if self.session is not None else []

    def meta(self):
        events = self.events_so_far()
        return pipeline.make_meta(target=self.target, command=list(self.command),
                                  pids=sorted({e.pid for e in events}), start_ns=self.start_ns,
                                  end_ns=time.monotonic_ns(), lost_events=self._lost_events(),
                                  gpus=list(self.machine_gpus))

    def _lost_events(self) -> int:
        return int(getattr(self.session, "lost_events", 0) or 0) if self.session else 0

    def run(self, post: Post) -> None:
        # bpf_ktime_get_ns is CLOCK_MONOTONIC, so the view's clock and the events' agree.
        self.start_ns = time.monotonic_ns()
        stats = LiveStats(self.target, self.mode, self.start_ns)
        analysis = _ThrottledAnalysis(self.ceilings)
        gpus: tuple[dict, ...] = tuple(query_gpus())
        gpus_at = time.monotonic()

        self.session = self._make_session(stats.add)
        self.session.start()
        try:
            next_frame = time.monotonic()
            while not self.stopping and self.session.running():
                self.session.poll(int(FRAME_S * 1000))
                if time.monotonic() < next_frame or self.paused.is_set():
                    continue
                next_frame = time.monotonic() + FRAME_S
                if time.monotonic() - gpus_at > 1.0:
                    gpus, gpus_at = tuple(query_gpus()), time.monotonic()
                report = analysis.maybe(self.trace_so_far)
                post(stats.snapshot(time.monotonic_ns(), lost_events=self._lost_events(),
                                    gpus=gpus, report=report, ceilings=self.ceilings,
                                    note=analysis.error))
        finally:
            final = self.session.stop()
            final.meta.target, final.meta.command = self.target, list(self.command)
            self.final_trace = final
        now_ns = time.monotonic_ns()
        report = analysis.maybe(lambda: self.final_trace, force=True)
        reason = "stopped" if self.stopping else "target finished"
        post(stats.snapshot(now_ns, lost_events=self._lost_events(), gpus=gpus, report=report,
                            ceilings=self.ceilings, finished=True,
                            note=analysis.error or reason))


def _trace_start_ns(trace) -> int:
    start = getattr(trace.meta, "start_ns", 0) or 0
    first = min((e.start_ns for e in trace.events), default=start)
    return min(start, first) if start else first


def _meta_gpus(meta) -> Sequence[dict]:
    return [dict(g) if isinstance(g, dict) else vars(g) for g in getattr(meta, "gpus", ()) or ()]


def _describe_target(meta) -> str:
    target = getattr(meta, "target", "") or ""
    return target if isinstance(target, str) else " ".join(map(str, target))
