"""The schema: every optimizer setting, once, with its type, range, default and variables.

A setting is here only when some engine acts on it (the ``acts_on`` text says which); a test
per setting (tests/integration/test_settings_reach.py) shows the value set by flag,
environment, config file or tuning DB arriving unchanged there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from restoreprof.errors import RestoreprofError

MIB = 1 << 20


@dataclass(frozen=True)
class Setting:
    """What one setting accepts, its default, and which environment variables set it."""

    name: str
    kind: type  # int or bool
    default: int | bool
    low: int = 0
    high: int = 1
    env: tuple[str, ...] = ()  # the first is restoreprof's own; the rest are accepted aliases
    help: str = ""
    acts_on: str = ""

    def describe(self) -> str:
        return "0 or 1" if self.kind is bool else \
            f"an integer from {self.low} to {self.high}"

    def check(self, value: Any, source: str) -> int | bool:
        """value as this setting's type, or a RestoreprofError naming source."""
        if self.kind is bool:
            ok = isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and (
                self.low <= value <= self.high)
        if not ok:
            got = f"{type(value).__name__} {value!r}" if not isinstance(value, int) else repr(value)
            raise RestoreprofError(
                f"{source}: {self.name}={got} is not valid: {self.name} must be {self.describe()}",
                hint=f"set {self.name} in {source} to {self.describe()}",
            )
        return bool(value) if self.kind is bool else int(value)

    def parse_env(self, var: str, text: str) -> int | bool:
        """The value of environment variable var: an integer (0x hex too; 0 or 1 for on/off),
        as the interception library reads the same variables (shim/config.c)."""
        try:
            value = int(text.strip(), 0)
        except ValueError:
            value = None
        if value is None or (self.kind is bool and value not in (0, 1)) or (
                self.kind is int and not self.low <= value <= self.high):
            shown = repr(text) if value is None else str(value)
            raise RestoreprofError(
                f"{var}={shown} is not valid: {self.name} must be {self.describe()}",
                hint=f"set {var} to {self.describe()}, or unset it")
        return bool(value) if self.kind is bool else value


# Defaults from benchmarks/sweep_reload.py on the H100 (2026-11-26, 8 GiB offloaded then
# reloaded): 2 MiB chunks x 16 threads reloaded at 39.6 GB/s, 16 MiB x 8 at 23 GB/s, 64 MiB x 8
# at 10 GB/s. Small chunks stay in cache between the read, the checksum and the DMA, and the
# staging they need pins in milliseconds. `restoreprof run` tunes these per GPU.
_ENGINE = ("the engine: restore preload, the warm pool's staging, OFFLOAD/RELOAD in the "
           "process, intercepted copies")
SETTINGS: tuple[Setting, ...] = (
    Setting("streams", int, 4, 1, 32, ("RESTOREPROF_STREAMS", "CRIU_CUDA_STREAMS"),
            "CUDA streams the engine copies on", _ENGINE),
    Setting("chunk_mb", int, 2, 1, 4096, ("RESTOREPROF_CHUNK_MB", "CRIU_CUDA_CHUNK_MB"),
            "size of one staged copy, MiB", _ENGINE),
    Setting("threads", int, 16, 1, 128, ("RESTOREPROF_THREADS",),
            "host threads that read, checksum and issue copies",
            _ENGINE + "; read-ahead threads"),
    Setting("pinned", bool, True, env=("RESTOREPROF_PINNED", "CRIU_CUDA_USE_PINNED_MEM"),
            help="stage through pinned host buffers (off: pageable ones)", acts_on=_ENGINE),
    Setting("min_intercept_bytes", int, 16 * MIB, 0, 1 << 50,
            ("RESTOREPROF_MIN_INTERCEPT_BYTES",),
            "smallest pageable copy the interception library routes through the engine",
            "the interception library's copies (restoreprof exec)"),
    Setting("readahead", bool, True, env=("RESTOREPROF_READAHEAD",),
            help="read checkpoint images into the page cache ahead of criu restore (only "
                 "with --no-verify: the image check reads them anyway)",
            acts_on="restore"),
    Setting("offload", bool, True, env=("RESTOREPROF_OFFLOAD",),
            help="serve device memory from VMM and offload it around the driver checkpoint "
                 "(--no-offload at checkpoint: never offload through the library)",
            acts_on="the interception library (restoreprof exec); checkpoint"),
    Setting("intercept", bool, True, env=("RESTOREPROF_INTERCEPT", "CUDA_INTERCEPT_RESTORE"),
            help="route large pageable copies through the engine",
            acts_on="the interception library (restoreprof exec)"),
    Setting("parallel", bool, True, env=("RESTOREPROF_PARALLEL", "CRIU_CUDA_PARALLEL_RESTORE"),
            help="restore GPU memory with the parallel engine (off: the driver alone)",
            acts_on="restore; the interception library (off: no VMM, no interception)"),
    Setting("preload", bool, True, env=("RESTOREPROF_PRELOAD",),
            help="load offloaded GPU memory while CRIU restores, for the process to adopt",
            acts_on="restore"),
    # Two runs on the H200 (benchmarks/RESULTS.md, tenth session item 7, eleventh item 5): the
    # 16 GB hot restore ended 7 to 12 % sooner with the send on 6 threads (16 took cores from
    # CRIU and the page server beside it), while a page-cache preload wants its 16. Not the
    # default: where the send is the whole path (a hot snapshot of 40 GB) fewer threads slow it.
    Setting("send_threads", int, 0, 0, 128, ("RESTOREPROF_SEND_THREADS",),
            "threads that check and send a hot snapshot to the GPU (0: as `threads`; fewer "
            "leave cores to CRIU and the page server running beside them)",
            "restore from a hot snapshot (the warm pool)"),
    Setting("lazy_pages", bool, True, env=("RESTOREPROF_LAZY_PAGES",),
            help="restore the processes' host memory with restoreprof's own page server "
                 "(criu restore --lazy-pages, several copy threads, every page in before the "
                 "processes run; off: CRIU reads every page itself)",
            acts_on="restore"),
    Setting("lazy_threads", int, 0, 0, 64, ("RESTOREPROF_LAZY_THREADS",),
            "threads of the lazy page server that copy pages in (0: half the cores, 2 to 8)",
            "restore"),
    Setting("held_driver_restore", bool, True, env=("RESTOREPROF_HELD_DRIVER_RESTORE",),
            help="run the driver's restore of the GPU state on the driver's restore thread "
                 "alone (ptrace), the program's own threads still stopped and the last pages "
                 "still arriving, as CRIU's CUDA plugin does; off: after the processes are "
                 "resumed (every page in first)",
            acts_on="restore; checkpoint (notes each process's restore thread)"),
    Setting("sync", bool, False, env=("RESTOREPROF_SYNC",),
            help="report a checkpoint done only once every byte is on disk (fsync of the GPU "
                 "memory's chunks, the images, the manifest and their folders)",
            acts_on="checkpoint"),
    Setting("pre_copy", bool, False, env=("RESTOREPROF_PRE_COPY",),
            help="write the GPU memory's chunks while the processes still run, and wait until "
                 "they are on disk, before holding them: the downtime then copies and hashes "
                 "but writes only what changed (the command takes longer in all)",
            acts_on="checkpoint"),
    Setting("release_caches", bool, True, env=("RESTOREPROF_RELEASE_CACHES",),
            help="at checkpoint, first free the program's cached free GPU blocks (PyTorch, "
                 "CuPy: what empty_cache() does), so only live bytes are saved",
            acts_on="the interception library (restoreprof exec): its offload at checkpoint"),
    Setting("release_timeout_s", int, 10, 1, 3600, ("RESTOREPROF_RELEASE_TIMEOUT_S",),
            "how long a checkpoint waits for the program to free its cached blocks, s",
            "the interception library (restoreprof exec): its offload at checkpoint"),
)
BY_NAME = {s.name: s for s in SETTINGS}
DEFAULTS: dict[str, int | bool] = {s.name: s.default for s in SETTINGS}


def markdown_table() -> str:
    """The README's table of settings, made from this schema (a test keeps the README equal)."""
    rows = ["| variable (alias) | what it sets | accepts | default |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        name = f"`{s.env[0]}`" + (f" ({', '.join(f'`{a}`' for a in s.env[1:])})" if s.env[1:] else "")
        default = ("on" if s.default else "off") if s.kind is bool else str(s.default)
        accepts = "0/1" if s.kind is bool else f"{s.low}-{s.high}"
        rows.append(f"| {name} | {s.help} | {accepts} | {default} |")
    return "\n".join(rows)

