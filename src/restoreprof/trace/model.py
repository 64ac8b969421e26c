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
    coverage: list[dict] = field(default_factory=list)  # a traced restore's GPU memory per
    #                                    process: offloaded per kind, left to the driver

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TraceMeta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
                if header.get("format") != FORMAT:
                    raise ValueError("not a restoreprof trace")
                if header.get("version", 0) > FORMAT_VERSION:
                    raise RestoreprofError(
                        f"{path} was written by a newer restoreprof (format "
                        f"{header['version']})", hint="upgrade restoreprof to read it")
                events: list[Event] = []
                for line in f:
                    events.extend(_unblock(json.loads(line)))
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise RestoreprofError(
                f"cannot read trace {path}: {exc}",
                hint="pass a file written by 'restoreprof trace' (OUTDIR/trace.rptrace)",
            ) from exc
        return cls(TraceMeta.from_dict(header["meta"]), events)

    def sorted_events(self) -> list[Event]:
        return sorted(self.events, key=lambda e: (e.start_ns, e.end_ns))


def _block(events: list[Event]) -> dict:
    columns = {name: [getattr(e, name) for e in events] for name in _COLUMNS}
    extras = {str(i): e.extra for i, e in enumerate(events) if e.extra}
    return {"n": len(events), "columns": columns, "extra": extras}


def _unblock(block: dict) -> list[Event]:
    columns = block["columns"]
    n = block["n"]
    defaults = {f.name: f.default for f in fields(Event) if f.name != "extra"}
    values = [columns.get(name) or [defaults[name]] * n for name in _COLUMNS]
    events = [Event(*row) for row in zip(*values, strict=True)]
    for index, extra in block.get("extra", {}).items():
        events[int(index)].extra = extra
    return events
