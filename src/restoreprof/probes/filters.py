"""Which processes a trace follows when it did not start them: a cgroup, a command name, or all.

A restore started by a container runtime (podman, CRI-O, containerd) runs in processes the
profiler neither starts nor knows the PID of beforehand. The BPF program decides in the kernel,
per event, from what the current task is:

    --cgroup PATH   bpf_get_current_ancestor_cgroup_id(level of PATH) == id of PATH: the cgroup
                    and every cgroup below it, including those a runtime creates during the
                    trace (a restored container's own cgroup is made by the restore)
    --comm NAME     the task's command name (the kernel's 15 characters) is NAME
    --all           every process

A task that matches is followed into its children (sched_process_fork puts them in the traced
set), so the processes CRIU forks for a restore stay traced after they take their checkpointed
names. The filter costs one helper call per event of an untraced task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from restoreprof.errors import RestoreprofError

COMM_BYTES = 16  # TASK_COMM_LEN, the NUL included


@dataclass(frozen=True)
class CgroupFilter:
    path: Path      # the cgroup's folder in the cgroup2 file system
    cgroup_id: int  # its inode number: what bpf_get_current_cgroup_id() returns
    level: int      # its depth below the root cgroup (0)

    def bpf(self) -> str:
        return (f"return bpf_get_current_ancestor_cgroup_id({self.level}) == "
                f"{self.cgroup_id}ULL;")

    def pids(self) -> list[int]:
        """The processes in the cgroup and below it now."""
        found: list[int] = []
        for procs in self.path.rglob("cgroup.procs"):
            try:
                found += [int(p) for p in procs.read_text().split()]
            except (OSError, ValueError):
                continue
        return found

    def describe(self) -> str:
        return f"cgroup {self.path}"


@dataclass(frozen=True)
class CommFilter:
    comm: str

    def bpf(self) -> str:
        # Compared byte by byte, NUL included: verifier-friendly and exact.
        checks = [f"comm[{i}] == {b}" for i, b in enumerate(self.comm.encode() + b"\0")]
        return (f"char comm[{COMM_BYTES}] = {{}};\n    bpf_get_current_comm(&comm, sizeof(comm));\n"
                f"    return {' && '.join(checks)};")

    def pids(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if Path(f"/proc/{entry}/comm").read_text().rstrip("\n") == self.comm:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def describe(self) -> str:
        return f"processes named {self.comm}"


@dataclass(frozen=True)
class AllFilter:
    def bpf(self) -> str:
        return "return 1;"

    def pids(self) -> list[int]:
        return []  # every process matches: nothing to seed, libcuda is probed where it lives

    def describe(self) -> str:
        return "all processes"


TargetFilter = CgroupFilter | CommFilter | AllFilter
NO_FILTER = "return 0;"  # a PID, a command or a restore: the traced set alone decides


def cgroup2_mount() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrids)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise RestoreprofError("no cgroup v2 hierarchy is mounted",
                           hint="mount -t cgroup2 none /sys/fs/cgroup (the BPF cgroup id is v2's)")


def cgroup_filter(path: str | os.PathLike) -> CgroupFilter:
    """A cgroup given as its folder (/sys/fs/cgroup/...) or as /proc/PID/cgroup names it
    (/machine.slice/...)."""
    root = cgroup2_mount()
    given = Path(path)
    folder = given if given.is_absolute() and root in (given, *given.parents) else \
        root / str(given).lstrip("/")
    if not (folder / "cgroup.procs").is_file():
        raise RestoreprofError(
            f"--cgroup {path}: {folder} is not a cgroup v2 folder",
            hint=f"name a folder under {root}, or a path as /proc/PID/cgroup shows it "
                 "(e.g. 'cat /proc/PID/cgroup' of a container's process)")
    level = len(folder.relative_to(root).parts)
    return CgroupFilter(folder, folder.stat().st_ino, level)


def comm_filter(name: str) -> CommFilter:
    if not name or len(name.encode()) >= COMM_BYTES:
        raise RestoreprofError(
            f"--comm {name!r}: a command name is 1 to {COMM_BYTES - 1} bytes",
            hint="use the name as 'ps -o comm' or /proc/PID/comm shows it (the kernel cuts "
                 f"longer names to {COMM_BYTES - 1})")
    return CommFilter(name)
