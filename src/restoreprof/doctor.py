"""What this machine can do for restoreprof: one check per piece, each with its exact fix."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool | None          # None: not applicable / optional piece absent
    detail: str
    fix: str = ""
    required: bool = True    # needed for tracing and restore to work

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    gpus: list[dict] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks if c.required)


def _capabilities() -> Check:
    if os.geteuid() == 0:
        return Check("privileges", True, "root")
    caps = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
    have = {"CAP_SYS_ADMIN": bool(caps >> 21 & 1), "CAP_BPF": bool(caps >> 39 & 1),
            "CAP_PERFMON": bool(caps >> 38 & 1)}
    ok = have["CAP_SYS_ADMIN"] or (have["CAP_BPF"] and have["CAP_PERFMON"])
    return Check("privileges", ok, ", ".join(k for k, v in have.items() if v) or "unprivileged",
                 "run restoreprof with sudo (CRIU needs root)")


def _bcc_and_bpf() -> list[Check]:
    from restoreprof.probes import kallsyms_shortcut

    kallsyms_shortcut.install()  # before bcc is loaded, as the profiler does
    try:
        import bcc
    except ImportError as exc:
        return [Check("bcc", False, f"not importable ({exc})",
                      "run ./scripts/setup.sh as root (installs python3-bpfcc, links it into .venv)"),
                Check("BPF syscall", None, "not tried (no bcc)", "", required=True)]
    checks = [Check("bcc", True, f"{bcc.__file__.rsplit('/', 2)[0]}")]
    try:
        from restoreprof.probes.attach import import_bcc

        BPF = import_bcc()
        before = _bytes_read()
        prog = BPF(text="int probe(void *ctx) { return 0; }")
        compile_read = _bytes_read() - before
        prog.load_func("probe", bcc.BPF.KPROBE)
        prog.cleanup()
        checks.append(Check("BPF syscall", True, "compiled and loaded a program"))
        checks.append(_kallsyms_shortcut(compile_read))
    except Exception as exc:
        checks.append(Check("BPF syscall", False, str(exc).splitlines()[0][:70],
                            "needs root, a kernel with CONFIG_BPF_SYSCALL, and kernel headers"))
    return checks


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def _kallsyms_shortcut(compile_read: int) -> Check:
    """Whether the shortcut is loaded, and whether bcc's compile above still read all of
    /proc/kallsyms (compile_read: bytes the compile read)."""
    from restoreprof.probes import kallsyms_shortcut

    name = "bcc start-up shortcut"
    if not kallsyms_shortcut.library_path().exists():
        return Check(name, False, "not built (each trace starts 0.1-0.3 s slower)",
                     "./scripts/setup.sh (needs gcc)", required=False)
    if not kallsyms_shortcut.install():
        return Check(name, False, "built, but not loaded before bcc or the verifier could not "
                     "be asked", "", required=False)
    with open("/proc/kallsyms", "rb") as f:
        kallsyms = len(f.read())
    if compile_read >= kallsyms:
        return Check(name, False, "loaded, but bcc still reads /proc/kallsyms (this bcc does "
                     "not look it up through its PLT)", "", required=False)
    return Check(name, True, "probe-read helpers asked of the verifier, not /proc/kallsyms",
                 required=False)


def _headers() -> Check:
    build = Path(f"/lib/modules/{platform.release()}/build")
    if (build / "include").exists():
        return Check("kernel headers", True, str(build.resolve()))
    if Path("/sys/kernel/btf/vmlinux").exists() and os.environ.get("BCC_KERNEL_SOURCE"):
        return Check("kernel headers", True, os.environ["BCC_KERNEL_SOURCE"])
    return Check("kernel headers", False, f"none at {build}",
                 f"apt-get install linux-headers-amd64 and ln -s /usr/src/linux-headers-*-amd64 {build}"
                 " (./scripts/setup.sh does it)")


def _tracefs() -> Check:
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if Path(path, "events").is_dir():
            return Check("tracefs", True, path)
    return Check("tracefs", False, "not mounted", "mount -t tracefs tracefs /sys/kernel/tracing")


def _criu() -> Check:
    from restoreprof.checkpoint import criu
    from restoreprof.errors import RestoreprofError

    try:
        path = criu.criu_path()
    except RestoreprofError as exc:
        return Check("CRIU", False, str(exc).split("\n")[0][:70], exc.hint)
    version = ".".join(map(str, criu.criu_version(path) or ()))
    works, said = criu.check()
    return Check("CRIU", works, f"{version} {path} ({said})",
                 "" if works else "see 'criu check' output; CRIU needs root and CHECKPOINT_RESTORE")


def _cuda() -> tuple[list[Check], list[dict]]:
    from restoreprof.system.paths import libcuda_path

    checks = []
    try:
        import cuda.bindings

        checks.append(Check("cuda-python", True, f"cuda.bindings {cuda.bindings.__version__}"))
    except ImportError:
        checks.append(Check("cuda-python", False, "not installed", "pip install cuda-python"))
    lib = libcuda_path()
    if not lib:
        checks.append(Check("CUDA driver", None, "no libcuda (no GPU): GPU features off",
                            "install the NVIDIA driver on a GPU machine", required=False))
        return checks, []
    from restoreprof.system.gpus import nvml_gpus

    gpus = nvml_gpus()
    if not gpus:
        checks.append(Check("CUDA driver", False, f"{lib}: NVML sees no GPU",
                            "check nvidia-smi; the driver may not match the kernel module",
                            required=False))
        return [*checks, _checkpoint_storage(lib)], gpus
    checks.append(Check("CUDA driver", True, f"{gpus[0]['driver_version']} ({lib})", required=False))
    checks.append(_checkpoint_storage(lib))
    for gpu in gpus:
        persistence = gpu["persistence"]
        checks.append(Check(
            f"GPU {gpu['index']}", True,
            f"{gpu['name']} PCIe Gen{gpu['pcie_gen']} x{gpu['pcie_width']} "
            f"{gpu['memory_total_bytes'] / 2**30:.0f} GiB, persistence {'on' if persistence else 'OFF'}",
            "" if persistence else "'restoreprof warm' keeps contexts warm without it",
            required=False))
    return checks, gpus


def _checkpoint_storage(lib: str) -> Check:
    """Whether the driver offers caller-driven checkpoint storage (CUDA 13.4's custom storage,
    completed by cuCheckpointOperationComplete). restoreprof does not use it yet."""
    from restoreprof.cuda import driver

    name = "checkpoint storage"
    try:
        present = driver.has_entry_point("cuCheckpointOperationComplete")
    except OSError as exc:
        return Check(name, None, f"cannot load {lib}: {exc}", "", required=False)
    if present:
        return Check(name, True, "driver offers custom storage; not used: the library offloads",
                     required=False)
    return Check(name, None, "driver has no custom storage (CUDA 13.4 adds it); the library "
                 "offloads", required=False)


def _shim() -> Check:
    from restoreprof.system.paths import shim_library_path

    path = shim_library_path()
    if path.exists():
        return Check("interception library", True, str(path), required=False)
    return Check("interception library", False, "not built",
                 "./scripts/setup.sh (needs gcc and CUDA headers: set CUDA_HOME)", required=False)


def diagnose() -> Report:
    report = Report()
    report.checks.append(_capabilities())
    report.checks += _bcc_and_bpf()
    report.checks.append(_headers())
    report.checks.append(_tracefs())
    report.checks.append(_criu())
    cuda_checks, report.gpus = _cuda()
    report.checks += cuda_checks
    report.checks.append(_shim())
    return report


def kernel_summary() -> str:
    try:
        distro = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
                      if "=" in line).get("PRETTY_NAME", "").strip('"')
    except OSError:
        distro = "?"
    return f"{distro}, kernel {platform.release()}"


