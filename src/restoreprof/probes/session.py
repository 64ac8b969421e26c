"""The public API of the profiler: trace a process, a command or a restore, get a Trace.

    session = TraceSession(Target(restore_dir=Path("/ckpt")), on_event=print)
    session.start()
    while session.running():
        session.poll()
    trace = session.stop()

or simply ``trace = record(Target(pid=1234), duration_s=10)``.

``on_event`` is called from ``poll`` (the caller's thread) once per completed call, in the
order calls completed. Async copies get ``complete_ns`` later, when the synchronizing call
that covers them is seen: the Event object passed earlier is updated in place.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError
from restoreprof.probes import bpf_program, resolve, uprobe_multi
from restoreprof.probes.attach import Probes, check_environment
from restoreprof.probes.child import PausedChild
from restoreprof.probes.decode import Enricher, decode, enrich
from restoreprof.probes.filters import NO_FILTER, TargetFilter
from restoreprof.trace.events import MARK, Event
from restoreprof.trace.model import Trace, TraceMeta

RING_PAGES = 8192           # 32 MiB of ring buffer: ~350,000 records of slack
RESCAN_INTERVAL_S = 0.5     # how often the maps of traced processes are checked for new libs


@dataclass(frozen=True)
class Target:
    """What to trace: exactly one of pid, command or restore_dir, or a filter (filters.py: a
    cgroup, a command name, or all) for processes started by others, e.g. a container runtime."""

    pid: int | None = None
    command: list[str] | None = None
    restore_dir: Path | None = None
    filter: TargetFilter | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.pid, self.command, self.restore_dir, self.filter)
                 if x is not None]
        if len(given) != 1:
            raise ValueError("Target takes exactly one of pid=, command=, restore_dir= or filter=")
        if self.command is not None and not self.command:
            raise ValueError("Target(command=...) needs at least a program name")

    def argv(self) -> list[str] | None:
        """The command to start, or None for an existing process."""
        if self.restore_dir is not None:
            return [sys.executable, "-m", "restoreprof", "restore", "-D", str(self.restore_dir),
                    "--json"]
        return list(self.command) if self.command else None

    def describe(self) -> str:
        if self.filter is not None:
            return self.filter.describe()
        if self.pid is not None:
            return f"pid {self.pid}"
        if self.restore_dir is not None:
            return f"restore: {self.restore_dir}"
        return "command: " + " ".join(self.command or [])


class TraceSession:
    def __init__(self, target: Target, *, on_event: Callable[[Event], None] | None = None,
                 duration_s: float | None = None, ring_pages: int = RING_PAGES) -> None:
        self.target = target
        self.on_event = on_event
        self.duration_s = duration_s
        self.ring_pages = ring_pages
        self.events: list[Event] = []
        self.attach_s = 0.0            # start() to probes attached
        self.start_timings: dict[str, float] = {}  # seconds: compile, gpus, resolve, attach
        self._probes: Probes | None = None
        self._child: PausedChild | None = None
        self._stdout: list[str] = []
        self._stdout_thread: threading.Thread | None = None
        self._raw: list[bytes] = []
        self._enricher = Enricher()
        self._known_pinned: dict[int, list[list[int]]] = {}  # pid: pinned before the trace
        self._last_end_ns = 0
        self._out_of_order = False
        self._pids: set[int] = set()   # tasks to rescan for new CUDA libraries
        self._roots: list[int] = []
        self._next_rescan = 0.0
        self._deadline: float | None = None
        self._meta: TraceMeta | None = None
        self._lost = 0
        self._probed: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Compile and attach the probes, then start the command if the target is one."""
        t0 = time.monotonic()
        check_environment(with_bcc=False)  # bcc is imported by the compile, below
        target = self.target
        if target.pid is not None and not os.path.exists(f"/proc/{target.pid}"):
            raise RestoreprofError(f"no process with PID {target.pid}",
                                   hint="check the PID with 'ps -e' and try again")
        if target.restore_dir is not None and not Path(target.restore_dir).is_dir():
            raise RestoreprofError(f"{target.restore_dir} is not a folder",
                                   hint="pass the folder 'restoreprof checkpoint -D' wrote")
        argv = target.argv()
        # Importing bcc and compiling take most of the start-up: they run on a thread (the
        # compile outside the GIL), NVML lists the GPUs on another, while this one finds the
        # objects to probe.
        multi = uprobe_multi.supported()
        helpers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trace-start")
        text = bpf_program.render(ring_pages=self.ring_pages, uprobe_multi=multi,
                                  target_filter=target.filter.bpf() if target.filter
                                  else NO_FILTER)
        compiled = helpers.submit(_timed, Probes, text, uprobe_multi=multi)
        listed = helpers.submit(_timed, gpus)
        helpers.shutdown(wait=False)
        try:
            t_resolve = time.monotonic()
            if argv is not None:
                self._child = PausedChild(argv, capture_stdout=target.restore_dir is not None)
                roots = [self._child.pid]
                objects = resolve.objects_for_command(argv)
                if target.restore_dir is not None:
                    roots += self._follow_warm_pool()
            elif target.filter is not None:
                # Those matching now; the kernel finds later ones. libcuda is probed where the
                # host has it; a container's own copy when one of its processes is seen.
                roots = target.filter.pids()
                objects = resolve.objects_for_filter(roots)
            else:
                roots = [target.pid, *resolve.descendants(target.pid)]
                objects = [o for pid in roots for o in resolve.objects_of_process(pid)]
            self.start_timings["resolve_s"] = time.monotonic() - t_resolve
            found, self.start_timings["gpus_s"] = listed.result()
            self._meta = TraceMeta(target=target.describe(), command=argv or [], gpus=found,
                                   start_ns=time.monotonic_ns())
        except BaseException:
            with contextlib.suppress(Exception):
                compiled.result()[0].close()
            if self._child is not None:
                self._child.stop(timeout_s=1)
            raise
        try:
            self._probes, self.start_timings["compile_s"] = compiled.result()
            t_attach = time.monotonic()
            self._probes.seed(roots)
            for obj in objects:
                self._probes.attach(obj)
            self._probes.open(self._on_record)
            self.start_timings["attach_s"] = time.monotonic() - t_attach
        except BaseException:
            if self._child is not None:
                self._child.stop(timeout_s=1)
            raise
        self._pids.update(roots)
        self._roots = list(roots)
        self.attach_s = time.monotonic() - t0
        if self._child is not None:
            if self._child.stdout_fd >= 0:
                self._stdout_thread = threading.Thread(target=self._read_stdout, daemon=True)
                self._stdout_thread.start()
            self._child.release()
        self._next_rescan = time.monotonic() + RESCAN_INTERVAL_S
        if self.duration_s is not None:
            self._deadline = time.monotonic() + self.duration_s

    def _read_stdout(self) -> None:
        assert self._child is not None
        with os.fdopen(self._child.stdout_fd, "r", errors="replace") as f:
            self._stdout.append(f.read())

    def poll(self, timeout_ms: int = 100) -> None:
        """Drain the ring buffer (waiting up to timeout_ms) and call on_event for each event."""
        if self._probes is None:
            raise RuntimeError("TraceSession.poll() before start()")
        self._probes.poll(timeout_ms)
        self._drain()
        now = time.monotonic()
        if now >= self._next_rescan:
            self._rescan()
            self._next_rescan = now + RESCAN_INTERVAL_S

    def running(self) -> bool:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        if self._child is not None:
            return self._child.poll() is None
        if self.target.filter is not None:
            return True  # until the duration or Ctrl-C: others start and end the processes
        return self.target.pid is not None and _alive(self.target.pid)

    def stop(self) -> Trace:
        """Detach the probes and return the trace (its meta has lost_events set)."""
        if self._probes is None or self._meta is None:
            raise RuntimeError("TraceSession.stop() before start()")
        # the command's own exit status; none where tracing stopped it (duration, Ctrl-C)
        ended = self._child.poll() if self._child is not None else None
        self._stop_child()
        self._probes.consume()
        self._drain()
        self._lost = self._probes.lost()
        self._probed = self.probed_objects
        self._probes.close()
        if self._stdout_thread is not None:
            self._stdout_thread.join(timeout=10)
            self._add_steps()
        if self._out_of_order:
            enrich(self.events, self._known_pinned)
        meta = self._meta
        meta.end_ns = time.monotonic_ns()
        meta.exit_status = ended
        meta.lost_events = self._lost
        meta.pids = sorted({e.pid for e in self.events} | set(self._roots))
        self._probes = None
        return Trace(meta, self.events)

    @property
    def lost_events(self) -> int:
        if self._probes is not None:
            self._lost = self._probes.lost()
        return self._lost

    @property
    def probed_objects(self) -> list[str]:
        """The paths of the objects probed (still known after stop())."""
        return [o.path for o in self._probes.objects] if self._probes else self._probed

    # -- internals ------------------------------------------------------------------------

    def _follow_warm_pool(self) -> list[int]:
        """A running warm pool does a restore's GPU memory transfer in its own process: trace
        it too ([its PID], or []), knowing which of its buffers it pinned before the trace."""
        from restoreprof.system.warm_socket import describe_pool

        pool = describe_pool()
        if pool is None:
            return []
        self._known_pinned[pool["pid"]] = pool["pinned"]
        self._enricher.know_pinned(pool["pid"], pool["pinned"])
        return [pool["pid"]]

    def _on_record(self, _ctx: int, data: int, size: int) -> int:
        self._raw.append(ctypes.string_at(data, size))
        return 0

    def _drain(self) -> None:
        raw, self._raw = self._raw, []
        on_event, add, events = self.on_event, self._enricher.add, self.events
        for record in raw:
            event = decode(record)
            if event.end_ns < self._last_end_ns:
                self._out_of_order = True
            else:
                self._last_end_ns = event.end_ns
            add(event)
            events.append(event)
            if event.kind == "process":
                self._on_process(event)
            if on_event is not None:
                on_event(event)

    def _on_process(self, event: Event) -> None:
        if event.name == "fork":
            self._pids.add(int(event.extra.get("child", 0)))
        elif event.name == "exec":
            self._pids.add(event.pid)  # under a filter, the first sight of a process
            self._next_rescan = 0.0   # a new image: look for its CUDA libraries soon

    def _rescan(self) -> None:
        assert self._probes is not None
        for pid in list(self._pids):
            if not os.path.exists(f"/proc/{pid}"):
                self._pids.discard(pid)
                continue
            for obj in resolve.objects_of_process(pid):
                self._probes.attach(obj)

    def _stop_child(self) -> None:
        if self._child is not None:
            self._child.stop()

    def _add_steps(self) -> None:
        """The steps 'restoreprof restore --json' printed, as MARK events."""
        assert self._child is not None
        text = "".join(self._stdout).strip()
        try:
            result = json.loads(text[text.index("{"):]) if "{" in text else {}
        except ValueError:
            result = {}
        self.events += step_marks(result.get("steps", []), self._child.pid)
        self._roots.extend(int(p) for p in result.get("pids", []))


def step_marks(steps: list[dict], pid: int) -> list[Event]:
    """A restore's steps (as 'restoreprof restore --json' prints them) as MARK events of pid."""
    marks = []
    for step in steps:
        event = Event(MARK, step["name"], pid, pid, int(step["start_ns"]), int(step["end_ns"]),
                      bytes=int(step.get("bytes") or 0), path=step["name"])
        if step.get("pid"):
            event.extra = {"step_pid": step["pid"]}
        marks.append(event)
    return marks


def record(target: Target, duration_s: float | None = None,
           on_event: Callable[[Event], None] | None = None) -> Trace:
    """Trace target until it ends, duration_s passes or Ctrl-C; return the Trace."""
    session = TraceSession(target, on_event=on_event, duration_s=duration_s)
    session.start()
    try:
        while session.running():
            session.poll(100)
    except KeyboardInterrupt:
        pass
    return session.stop()


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie waiting for its parent to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _timed(fn, *args, **kwargs) -> tuple:
    """(fn's result, seconds it took)."""
    start = time.monotonic()
    return fn(*args, **kwargs), time.monotonic() - start


def gpus() -> list[dict]:
    """The GPUs of this machine (restoreprof.system.gpus), or [] where there is none."""
    from restoreprof.system.gpus import nvml_gpus

    return nvml_gpus()
