"""What a tuned result depends on: the GPU, its PCIe link, the driver, and the storage of DIR.

The tuning database is keyed by these, so a result measured on one machine is reused only
where the same hardware would restore the same way.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

CPU_ONLY = "cpu"


@dataclass(frozen=True)
class HostIdentity:
    gpu: str          # GPU model, or "cpu" where there is none
    pcie: str         # "Gen5 x16", or "" without a GPU
    driver: str       # NVIDIA driver version, or ""
    storage: str      # block device (and model) holding the checkpoint; "" when unknown

    @property
    def key(self) -> str:
        return " | ".join(part for part in (self.gpu, self.pcie, self.driver and f"driver {self.driver}",
                                            self.storage and f"storage {self.storage}") if part)

    def same_gpu(self, other: HostIdentity) -> bool:
        return (self.gpu, self.pcie, self.driver) == (other.gpu, other.pcie, other.driver)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HostIdentity:
        return cls(**{k: str(data.get(k, "")) for k in ("gpu", "pcie", "driver", "storage")})


def identify(directory: str | os.PathLike | None = None) -> HostIdentity:
    """This machine's identity; storage is that of directory (unknown when None)."""
    gpu, pcie, driver = _first_gpu()
    return HostIdentity(gpu, pcie, driver, storage_of(directory) if directory else "")


def _first_gpu() -> tuple[str, str, str]:
    """(model, "GenN xW", driver) of GPU 0 through NVML, or ("cpu", "", "") without one."""
    from restoreprof.system.gpus import nvml_gpus

    gpus = nvml_gpus()
    if not gpus:
        return CPU_ONLY, "", ""
    gpu = gpus[0]
    # The maximum link, not the current one: an idle GPU drops its link to save power.
    pcie = f"Gen{gpu['pcie_gen_max']} x{gpu['pcie_width_max']}"
    return gpu["name"], pcie, gpu["driver_version"]


def storage_of(directory: str | os.PathLike) -> str:
    """The block device holding directory, with its model: "nvme0n1 (Samsung ...)", "vda".

    Filesystems without one (tmpfs, overlay) are named by type and source: "tmpfs:tmpfs".
    """
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    dev = os.stat(path).st_dev
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if sys_dev.exists():
        block = sys_dev.resolve()
        if (block / "partition").exists():
            block = block.parent          # the disk, not the partition
        model = _read(block / "device" / "model")
        return f"{block.name} ({model})" if model else block.name
    return _mount_of(path)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _mount_of(path: Path) -> str:
    real, best = str(path.resolve()), ("", "?", "?")
    for line in _read(Path("/proc/self/mounts")).splitlines():
        source, point, fstype = line.split()[:3]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype, source)
    return f"{best[1]}:{best[2]}"
