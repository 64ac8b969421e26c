"""The one event schema. Probes produce these, analysis, exports and the TUI read them.

Times are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns), the clock the probes stamp with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

# Event kinds
SYSCALL = "syscall"   # preadv, preadv2, pread64, read, openat
CUDA = "cuda"         # driver and runtime API calls (cuMemcpyHtoD_v2, cudaMemcpy, ...)
PROCESS = "process"   # fork, exec, exit of traced processes
MARK = "mark"         # a step announced by restoreprof itself ("criu restore", "gpu restore")

# Copy directions
HTOD, DTOH, DTOD, HTOH = "htod", "dtoh", "dtod", "htoh"
# Host memory classes of a copy's host pointer
PINNED, PAGEABLE = "pinned", "pageable"


@dataclass(slots=True)
class Event:
    kind: str
    name: str
    pid: int
    tid: int
    start_ns: int
    end_ns: int
    bytes: int = 0          # io: bytes returned; cuda: bytes requested
    ret: int = 0            # syscall return value or CUresult / cudaError_t
    fd: int = -1
    direction: str = ""     # HTOD, DTOH, DTOD, HTOH for copies
    host_memory: str = ""   # PINNED or PAGEABLE for copies that touch host memory
    stream: int = 0
    address: int = 0        # device pointer of an allocation or a copy's device side
    path: str = ""          # file name (openat), comm (process), label (mark)
    complete_ns: int = 0    # async work: when the next synchronizing call that covers it returned
    extra: dict = field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def to_dict(self) -> dict:
        # Keep files small: drop fields at their defaults.
        return {k: v for k, v in asdict(self).items() if k in _REQUIRED or v != _DEFAULTS[k]}

    @classmethod
    def from_dict(cls, data: dict) -> Event:
        return cls(**{k: data[k] for k in _FIELD_NAMES if k in data})


_FIELD_NAMES = tuple(f.name for f in fields(Event))
_DEFAULTS = {f.name: ({} if f.name == "extra" else f.default) for f in fields(Event)}
_REQUIRED = ("kind", "name", "pid", "tid", "start_ns", "end_ns")
