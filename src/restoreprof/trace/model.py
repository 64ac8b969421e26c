"""A trace: what was traced (TraceMeta) and the events, saved to and loaded from one file.

The file is gzip'd JSON lines: a header line with the meta, then blocks of up to
BLOCK_EVENTS events stored column by column (one JSON list per Event field), which json
encodes and decodes at C speed: a million events save and load in a few seconds.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from restoreprof import __version__
from restoreprof.errors import RestoreprofError
from restoreprof.trace.events import Event

FORMAT = "restoreprof-trace"
FORMAT_VERSION = 1
BLOCK_EVENTS = 65536
TRACE_FILE_NAME = "trace.rptrace"

_COLUMNS = tuple(f.name for f in fields(Event) if f.name != "extra")
# each column's one JSON type (the annotations are strings: events.py defers them)
_COLUMN_TYPES = {f.name: {"int": int, "str": str}[str(f.type)] for f in fields(Event)
                 if f.name != "extra"}


@dataclass(slots=True)
class TraceMeta:
    target: str                          # "pid 1234", "command: python x.py", "restore: DIR"
    pids: list[int] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    started_wall: float = field(default_factory=time.time)   # time.time() at start
    clock: str = "monotonic"             # event times: CLOCK_MONOTONIC ns
    hostname: str = field(default_factory=socket.gethostname)
    gpus: list[dict] = field(default_factory=list)
    lost_events: int = 0
    restoreprof_version: str = __version__
    start_ns: int = 0                    # CLOCK_MONOTONIC when tracing started
    end_ns: int = 0                      # and when it stopped
    # the traced command's exit status as os.waitstatus_to_exitcode gives it (-N: killed by
    # signal N); None for a PID, or a command that tracing stopped (duration, Ctrl-C)
    exit_status: int | None = None
    # the ceilings this trace was judged by when it was recorded (Ceilings.to_dict()): a saved
    # trace is judged against them again, not against whatever this machine measures later
    ceilings: dict | None = None
    coverage: list[dict] = field(default_factory=list)  # a traced restore's GPU memory per
    #                                    process: offloaded per kind, left to the driver

    @property
    def shell_exit_status(self) -> int | None:
        """exit_status as a shell reports it (128 + N for signal N)."""
        if self.exit_status is None:
            return None
        return self.exit_status if self.exit_status >= 0 else 128 - self.exit_status

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TraceMeta:
        """The meta of a trace file; TypeError where a field has the wrong JSON type."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name, value in values.items():
            if not isinstance(value, _META_TYPES[name]) or isinstance(value, bool):
                raise TypeError(f"meta field {name!r} is {type(value).__name__}")
        return cls(**values)


_META_TYPES: dict[str, tuple[type, ...]] = {
    "target": (str,), "pids": (list,), "command": (list,), "started_wall": (int, float),
    "clock": (str,), "hostname": (str,), "gpus": (list,), "lost_events": (int,),
    "restoreprof_version": (str,), "start_ns": (int,), "end_ns": (int,),
    "exit_status": (int, type(None)), "ceilings": (dict, type(None)), "coverage": (list,),
}


@dataclass(slots=True)
class Trace:
    meta: TraceMeta
    events: list[Event] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
            header = {"format": FORMAT, "version": FORMAT_VERSION, "meta": self.meta.to_dict()}
            f.write(json.dumps(header) + "\n")
            for first in range(0, len(self.events), BLOCK_EVENTS):
                f.write(json.dumps(_block(self.events[first:first + BLOCK_EVENTS]),
                                   separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                header = json.loads(f.readline())
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise ValueError("not a restoreprof trace")
                if not isinstance(header.get("version", 0), int) or not isinstance(
                        header.get("meta"), dict):
                    raise ValueError("its header has no version number or no meta object")
                if header.get("version", 0) > FORMAT_VERSION:
                    raise RestoreprofError(
                        f"{path} was written by a newer restoreprof (format "
                        f"{header['version']})", hint="upgrade restoreprof to read it")
                events: list[Event] = []
                for line in f:
                    events.extend(_unblock(json.loads(line)))
        except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
            # TypeError, AttributeError: JSON of the wrong shape (a list for a block, a string
            # for a column, a field of the wrong type)
            raise RestoreprofError(
                f"cannot read trace {path}: {exc}",
                hint="pass a file written by 'restoreprof trace' (OUTDIR/trace.rptrace)",
            ) from exc
        try:
            meta = TraceMeta.from_dict(header["meta"])
        except TypeError as exc:
            raise RestoreprofError(f"cannot read trace {path}: its meta is malformed ({exc})",
                                   hint="pass a file written by 'restoreprof trace' "
                                        "(OUTDIR/trace.rptrace)") from exc
        return cls(meta, events)

    def sorted_events(self) -> list[Event]:
        return sorted(self.events, key=lambda e: (e.start_ns, e.end_ns))


def find_trace_file(path: str | Path) -> Path:
    """The trace file a user means by path: the file itself, or the trace file in a folder
    that 'restoreprof trace -o' wrote (an export beside it, like trace.json, also leads there)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRACE_FILE_NAME
    elif path.name != TRACE_FILE_NAME and (path.parent / TRACE_FILE_NAME).exists() and (
            path.suffix in (".json", ".folded", ".svg")):
        path = path.parent / TRACE_FILE_NAME   # an export of that trace: read the trace itself
    if not path.exists():
        raise RestoreprofError(f"no trace at {path}",
                               hint="pass a folder written by 'restoreprof trace -o OUTDIR' (or "
                                    "OUTDIR/trace.rptrace in it); record one with "
                                    "'restoreprof trace -o OUTDIR -- CMD'")
    return path


def _block(events: list[Event]) -> dict:
    columns = {name: [getattr(e, name) for e in events] for name in _COLUMNS}
    extras = {str(i): e.extra for i, e in enumerate(events) if e.extra}
    return {"n": len(events), "columns": columns, "extra": extras}


def _unblock(block: dict) -> list[Event]:
    columns = block["columns"]
    n = block["n"]
    if not isinstance(n, int) or not isinstance(columns, dict):
        raise ValueError("an event block has no count or no columns")
    defaults = {f.name: f.default for f in fields(Event) if f.name != "extra"}
    values = [columns.get(name) or [defaults[name]] * n for name in _COLUMNS]
    for name, column in zip(_COLUMNS, values, strict=True):
        # type() over the column runs at C speed: a million events cost milliseconds
        if not isinstance(column, list) or len(column) != n or not set(
                map(type, column)) <= {_COLUMN_TYPES[name]}:
            raise ValueError(f"the column {name!r} of an event block is not {n} values of type "
                             f"{_COLUMN_TYPES[name].__name__}")
    events = [Event(*row) for row in zip(*values, strict=True)]
    extras = block.get("extra", {})
    if not isinstance(extras, dict) or not all(isinstance(x, dict) for x in extras.values()):
        raise ValueError("the extra fields of an event block are not objects")
    for index, extra in extras.items():
        events[int(index)].extra = extra
    return events
