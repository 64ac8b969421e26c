"""What this machine can do for restoreprof: one check per piece, each with its exact fix."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator
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


# What tracing and CRIU need (capabilities(7) numbers). Root in a container often lacks some:
# then BPF loads or CRIU fails although the user is root.
CAPABILITIES = {"CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39,
                "CAP_CHECKPOINT_RESTORE": 40}
CAPABILITIES_FIX = ("run as root with them: sudo, or in a container --cap-add SYS_ADMIN "
                    "--cap-add BPF --cap-add PERFMON --cap-add CHECKPOINT_RESTORE (or --privileged)")


def effective_capabilities(status_text: str) -> int:
    """The CapEff mask of a /proc/PID/status text."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_capabilities(cap_eff: int, last_cap: int) -> list[str]:
    """The needed capabilities that cap_eff lacks, of those this kernel has (<= last_cap)."""
    return [name for name, bit in CAPABILITIES.items() if bit <= last_cap and not cap_eff >> bit & 1]


def _capabilities() -> Check:
    cap_eff = effective_capabilities(Path("/proc/self/status").read_text())
    try:
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last_cap = max(CAPABILITIES.values())
    missing = missing_capabilities(cap_eff, last_cap)
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if not missing:
        return Check("privileges", True, who)
    # CAP_SYS_ADMIN still grants what CAP_BPF, CAP_PERFMON and CAP_CHECKPOINT_RESTORE were
    # split from: without them, but with it, tracing and CRIU work
    if "CAP_SYS_ADMIN" not in missing:
        return Check("privileges", True, f"{who} without {', '.join(missing)} (CAP_SYS_ADMIN "
                     "covers them)", CAPABILITIES_FIX)
    return Check("privileges", False, f"{who} without {', '.join(missing)}", CAPABILITIES_FIX)


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
        with _stderr_captured() as said:   # libbpf prints its refusals straight to fd 2
            before = _bytes_read()
            prog = BPF(text="int probe(void *ctx) { return 0; }")
            compile_read = _bytes_read() - before
            prog.load_func("probe", bcc.BPF.KPROBE)
            prog.cleanup()
        checks.append(Check("BPF syscall", True, "compiled and loaded a program"))
        checks.append(_kallsyms_shortcut(compile_read))
    except Exception as exc:
        why = next((line for line in said if "bpf" in line.lower()), "") or str(exc)
        checks.append(Check("BPF syscall", False, why.splitlines()[0][:70] if why else "failed",
                            "needs root with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), a kernel "
                            "with CONFIG_BPF_SYSCALL, and kernel headers"))
    return checks


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what C libraries write to fd 2 inside the block (the lines, after it)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [line for line in sink.read().decode(errors="replace").splitlines()
                      if line.strip()]


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
    from restoreprof.system.paths import debian_arch

    arch = debian_arch()
    return Check("kernel headers", False, f"none at {build}",
                 f"apt-get install linux-headers-{arch} and ln -s /usr/src/linux-headers-*-{arch} "
                 f"{build} (./scripts/setup.sh does it)")


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


THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_hugepages(text: str) -> Check:
    """CRIU restores a process's memory with one read into fresh pages, bound by page faults:
    on the H200 a 16 GB Llama-shaped process's `criu restore` took 0.67 to 0.72 s with THP at
    'madvise' and 0.47 to 0.60 s at 'always' (benchmarks/RESULTS.md, fifth session)."""
    mode = text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text.strip()
    if mode == "always":
        return Check("transparent huge pages", True, "always", required=False)
    return Check("transparent huge pages", None,
                 f"{mode}: where CRIU reads the pages itself (no lazy pages), it restores "
                 "process memory about a quarter slower than with 'always'",
                 "for faster restores, on a host where THP suits the workloads: echo always > "
                 f"{THP_ENABLED}", required=False)


def lazy_pages_check(works: bool, enabled: bool) -> Check:
    """restoreprof's lazy page server (checkpoint/lazy_pages.py) restores the processes' memory
    instead of CRIU's one-threaded read: 0.26 s of CRIU against 0.76 s for a 16 GB model's
    process on the H200 (benchmarks/RESULTS.md, sixth session). It needs userfaultfd."""
    if not enabled:
        return Check("lazy pages", None, "off (RESTOREPROF_LAZY_PAGES=0): CRIU reads every page",
                     "unset RESTOREPROF_LAZY_PAGES for faster restores", required=False)
    if works:
        return Check("lazy pages", True, "userfaultfd works: restoreprof serves CRIU's page "
                     "restore", required=False)
    return Check("lazy pages", None, "userfaultfd is refused here (a seccomp filter, or a kernel "
                 "without it): CRIU reads every page itself, about 3x slower",
                 "allow the userfaultfd system call to restoreprof", required=False)


def _lazy_pages() -> Check:
    from restoreprof.checkpoint.lazy_pages import userfaultfd_works
    from restoreprof.optimizer.config import OptimizerConfig

    return lazy_pages_check(userfaultfd_works(), OptimizerConfig.load().lazy_pages)


def mount_of(path: Path, mounts_text: str) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding path, from /proc/mounts' text."""
    best = ("/", "unknown")
    target = os.path.realpath(path)
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def restore_work_check(path: Path, mounts_text: str) -> Check:
    """A restore writes its journal, CRIU's log and its sockets in its work folder (under
    /run/restoreprof/restores). On a disk file system, right after a large checkpoint, each small
    write there waited 0.1 to 0.2 s behind the write-back of the checkpoint's chunks (the H200
    VM's /run is its root ext4: benchmarks/RESULTS.md, eighth session); hosts mount /run as
    tmpfs."""
    point, fstype = mount_of(path, mounts_text)
    if fstype == "tmpfs":
        return Check("restore work folder", True, f"{path} on tmpfs", required=False)
    return Check("restore work folder", None,
                 f"{path} is on {fstype} ({point}), not tmpfs: a restore's journal writes can "
                 "wait behind disk write-back (0.1-0.2 s each after a large checkpoint)",
                 "mount a tmpfs on /run (as systemd does) or on /run/restoreprof",
                 required=False)


KDAT = Path("/run/criu.kdat")


def criu_cache_check(cache_exists: bool, stale_tmp: bool, run_fstype: str) -> Check:
    """CRIU probes the kernel at the start of every run unless it kept those answers in
    /run/criu.kdat, which it does only on a tmpfs /run. CRIU 4.1.1 on a disk /run leaves an
    empty criu.kdat.tmp behind, and while it is there no CRIU writes the cache again, on tmpfs
    either. The probes cost 20 to 30 ms a run on the development machine and 35 to 290 ms of the
    H200 VM's restores (benchmarks/RESULTS.md, eighth session), on the restore's path."""
    name = "CRIU's kernel cache"
    if cache_exists:
        return Check(name, True, f"{KDAT} (CRIU skips its kernel probes)", required=False)
    if stale_tmp:
        return Check(name, None, f"{KDAT}.tmp, left by an earlier CRIU, keeps CRIU from writing "
                     "its kernel cache: every restore probes the kernel again",
                     f"rm {KDAT}.tmp" + ("" if run_fstype == "tmpfs"
                                         else " and mount a tmpfs on /run"), required=False)
    if run_fstype != "tmpfs":
        return Check(name, None, f"/run is {run_fstype}: CRIU keeps its kernel cache only on "
                     "tmpfs, so every restore probes the kernel again",
                     "mount a tmpfs on /run (as systemd does)", required=False)
    return Check(name, None, "none yet: the next CRIU run writes it", required=False)


def _criu_cache() -> Check:
    _, fstype = mount_of(Path("/run"), Path("/proc/mounts").read_text())
    tmp = Path(f"{KDAT}.tmp")
    return criu_cache_check(KDAT.exists(), tmp.exists(), fstype)


def _restore_work() -> Check:
    from restoreprof.checkpoint.lock import RUN_ROOT

    return restore_work_check(RUN_ROOT, Path("/proc/mounts").read_text())


def _thp() -> Check:
    try:
        return transparent_hugepages(THP_ENABLED.read_text())
    except OSError:
        return Check("transparent huge pages", None, "not offered by this kernel", required=False)


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


def _warm_pool() -> Check:
    """The running warm pool and the host memory it holds pinned (optional)."""
    from restoreprof.system.warm_socket import describe_pool, pinned_summary

    described = describe_pool()
    if described is None:
        return Check("warm pool", None, "none running (restoreprof warm)", required=False)
    return Check("warm pool", True, pinned_summary(described), required=False)


def _guarded(name: str, check: Callable[[], Check | list[Check]]) -> list[Check]:
    """check's rows; a row saying why where the check itself failed (as a user without
    rights, /sys and /proc hold files it may not read): doctor never ends in a traceback."""
    try:
        result = check()
    except Exception as exc:
        return [Check(name, False, f"could not check: {exc}"[:90],
                      "run restoreprof doctor as root to check this")]
    return result if isinstance(result, list) else [result]


def diagnose() -> Report:
    report = Report()
    report.checks += _guarded("privileges", _capabilities)
    report.checks += _guarded("bcc", _bcc_and_bpf)
    report.checks += _guarded("kernel headers", _headers)
    report.checks += _guarded("tracefs", _tracefs)
    report.checks += _guarded("CRIU", _criu)
    report.checks += _guarded("lazy pages", _lazy_pages)
    report.checks += _guarded("transparent huge pages", _thp)
    report.checks += _guarded("restore work folder", _restore_work)
    report.checks += _guarded("CRIU's kernel cache", _criu_cache)
    try:
        cuda_checks, report.gpus = _cuda()
    except Exception as exc:
        cuda_checks = [Check("CUDA driver", False, f"could not check: {exc}"[:90],
                             "run restoreprof doctor as root to check this", required=False)]
    report.checks += cuda_checks
    report.checks += _guarded("interception library", _shim)
    report.checks += _guarded("warm pool", _warm_pool)
    return report


def kernel_summary() -> str:
    try:
        distro = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
                      if "=" in line).get("PRETTY_NAME", "").strip('"')
    except OSError:
        distro = "?"
    return f"{distro}, kernel {platform.release()}"


