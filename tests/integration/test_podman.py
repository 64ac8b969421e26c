"""Podman checkpoint/restore of containers: `podman container checkpoint --export` and
`podman container restore --import`, with runc and CRIU (as root, vfs storage in a folder of
the test's own, no network, images made here with `podman import`: no registry is reached).

- A CPU container (a static program) comes back and carries on.
- A container whose program runs under `restoreprof exec`, with the fake libcuda, checkpointed
  with restoreprof's CRIU plugin (named in a CRIU config file through the container's
  `org.criu.config` annotation, which runc hands to CRIU): its GPU memory comes back bit-exact,
  the plugin's snapshot travels inside the exported archive, and where the host can reach the
  container's control socket the fast path (offload, preload, adopt) is taken.

Skips, saying why, where podman, runc or a CRIU >= 4 on PATH are missing (scripts/setup.sh
installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from restoreprof.criu_plugin import build_plugin, plugin_dir
from restoreprof.system.paths import criu_version
from restoreprof.workloads.controller import HeldMemory

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def _podman_missing() -> str:
    for tool in ("podman", "runc", "criu"):
        if not shutil.which(tool):
            return f"{tool} is not on PATH (scripts/setup.sh installs podman and runc, and links criu)"
    version = criu_version(shutil.which("criu") or "criu")
    if not version or version < (4, 0):
        return f"runc would run criu {version} from PATH; CRIU >= 4 is needed on this kernel"
    return ""


class Podman:
    """podman with its own storage (vfs) and run folder; runc for checkpoints."""

    def __init__(self, base: Path) -> None:
        # podman refuses a run root longer than 50 characters: tmp_path is too long
        self.runroot = Path(tempfile.mkdtemp(prefix="rp-pod-", dir="/tmp"))
        self.prefix = ["podman", "--root", str(base / "storage"), "--runroot", str(self.runroot),
                       "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager",
                       "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        result = subprocess.run([*self.prefix, *args], capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr[-3000:]}")
        return result.stdout.strip()

    def image_from(self, root: Path, name: str) -> str:
        archive = root.with_suffix(".tar")
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        self("import", str(archive), name)
        return name

    def pid(self, name: str) -> int:
        return int(self("inspect", name, "--format", "{{.State.Pid}}"))

    def round_trip(self, name: str, archive: Path) -> None:
        """checkpoint --export, remove the container, restore --import."""
        self("container", "checkpoint", "--export", str(archive), name)
        self("rm", "-f", name)
        self("container", "restore", "--import", str(archive))

    def remove_all(self) -> None:
        self("rm", "-a", "-f", "-t", "0", check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)


# The sandbox this runs in may not let runc raise resource limits: ask for less than there is.
RUN = ["run", "-d", "--network", "none", "--ulimit", "nofile=1024:1024",
       "--ulimit", "nproc=1024:1024"]


@pytest.fixture
def podman(tmp_path):
    missing = _podman_missing()
    if missing:
        pytest.skip(f"podman cannot run here: {missing}")
    pod = Podman(tmp_path / "podman")
    yield pod
    pod.remove_all()


COUNTER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    size_t n = 32 << 20; unsigned char *buf = malloc(n); unsigned long sum = 0;
    for (size_t i = 0; i < n; i++) { buf[i] = (unsigned char)(i * 2654435761u >> 13); sum += buf[i]; }
    for (unsigned long tick = 0;; tick++) {
        unsigned long now = 0;
        for (size_t i = 0; i < n; i++) now += buf[i];
        printf("tick %lu %s\n", tick, now == sum ? "intact" : "DAMAGED"); fflush(stdout);
        usleep(100000);
    }
}
"""


def test_cpu_container_round_trip(podman, tmp_path):
    root = tmp_path / "counter"
    root.mkdir()
    (tmp_path / "counter.c").write_text(COUNTER_C)
    subprocess.run(["cc", "-static", "-O2", "-o", str(root / "counter"), str(tmp_path / "counter.c")],
                   check=True)
    image = podman.image_from(root, "localhost/restoreprof-counter:1")
    podman(*RUN, "--name", "counter", image, "/counter")
    time.sleep(0.5)
    before = podman("logs", "counter").splitlines()
    assert before and before[-1].endswith("intact")
    podman.round_trip("counter", tmp_path / "counter.tar.zst")
    time.sleep(0.5)
    after = podman("logs", "counter").splitlines()
    last = int(after[-1].split()[1])
    assert last > int(before[-1].split()[1]), "the restored container does not carry on"
    assert all(line.endswith("intact") for line in after)


def _host_root_image(podman: Podman, tmp_path: Path) -> str:
    """An image of mount points only: the host's /usr, this checkout and its Python come in as
    read-only bind mounts, so restoreprof runs inside without a registry."""
    root = tmp_path / "hostroot"
    for d in ("usr", "work", "root", "state", "proc", "sys", "dev", "tmp", "etc", "run"):
        (root / d).mkdir(parents=True)
    for link in ("lib", "lib64", "bin", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    return podman.image_from(root, "localhost/restoreprof-hostroot:1")


def _python_home() -> str:
    """The folder holding the real interpreter behind .venv/bin/python (e.g. pyenv's)."""
    real = Path(os.path.realpath(sys.executable))
    return str(real.parents[1])


def test_gpu_container_under_restoreprof_exec_with_the_plugin(podman, fake_driver, tmp_path):
    build_plugin()
    image = _host_root_image(podman, tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "criu.conf"  # runc hands the annotation's file to CRIU
    config.write_text(f"lib {plugin_dir()}\n")
    fake = str(fake_driver)
    python = f"{REPO}/.venv/bin/python"
    mounts = ["-v", "/usr:/usr:ro", "-v", f"{REPO}:{REPO}:ro", "-v", f"{state}:/state"]
    home = _python_home()
    if not home.startswith(("/usr/", str(REPO))):
        mounts += ["-v", f"{home}:{home}:ro"]
    podman(*RUN, "--name", "gpu", "--annotation", f"org.criu.config={config}", *mounts,
           "-e", f"LD_LIBRARY_PATH={fake_driver.parent}", "-e", f"RESTOREPROF_LIBCUDA={fake}",
           image, python, "-m", "restoreprof", "exec", "--",
           python, "-m", "restoreprof.workloads.hold_memory", "--mib", "8", "--gpu-mib", "24",
           "--state", "/state")
    deadline = time.monotonic() + 60
    while not (state / "ready").exists():
        assert time.monotonic() < deadline, podman("logs", "gpu", check=False)
        time.sleep(0.05)
    digest = (state / "ready").read_text().split()[0]
    host_pid = podman.pid("gpu")
    fast = _control_socket_reachable(host_pid)

    archive = tmp_path / "gpu.tar.zst"
    podman("container", "checkpoint", "--export", str(archive), "gpu")
    names = subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "checkpoint/restoreprof-criu.txt" in names, "the plugin did not run in the dump"
    if fast:
        assert "checkpoint/gpu-1.snap" in names, "the snapshot must travel in the export"
    podman("rm", "-f", "gpu")
    podman("container", "restore", "--import", str(archive))
    restored = HeldMemory(podman.pid("gpu"), state, digest)
    assert restored.verify(), "GPU memory differs after podman checkpoint/restore"
    if fast:
        from restoreprof.optimizer.control import ShimControl

        assert ShimControl(restored.pid).status()["state"] == "running"


def _control_socket_reachable(pid: int) -> bool:
    """Whether restoreprof finds, from the host, the control socket of a process in its own
    namespaces (restoreprof.optimizer.control); without that, the plugin takes the driver's
    plain path for it, which must still be bit-exact."""
    from restoreprof.errors import RestoreprofError
    from restoreprof.optimizer.control import socket_path

    try:
        socket_path(pid)
    except RestoreprofError:
        return False
    return True
