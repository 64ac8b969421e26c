"""The package a fleet installs: 'pip wheel .' gives a platform wheel with the native pieces
compiled for this machine, and a fresh venv outside the checkout runs doctor and the demo
from it. (About 20 s: the build, a venv, a 64 MiB demo.)"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(out)])
    (built,) = out.glob("restoreprof-*.whl")
    return built


def test_the_wheel_is_tagged_for_this_platform_and_carries_its_libraries(wheel):
    assert wheel.name.endswith(f"-py3-none-linux_{platform.machine()}.whl"), wheel.name
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)
        for lib in ("restoreprof/optimizer/shim/librestoreprof_shim.so",
                    "restoreprof/probes/librestoreprof_kallsyms.so"):
            header = whl.read(lib)[:20]
            assert header[:4] == b"\x7fELF"
            assert int.from_bytes(header[18:20], "little") == ELF_MACHINE[platform.machine()]
        wheel_meta = whl.read(next(n for n in names if n.endswith("dist-info/WHEEL"))).decode()
        assert "Root-Is-Purelib: false" in wheel_meta
        # the restoreprof command: the native front door; restoreprof-py: Python's entry point
        front = next(n for n in names if n.endswith(".data/scripts/restoreprof"))
        assert whl.read(front)[:4] == b"\x7fELF"
        assert whl.getinfo(front).external_attr >> 16 & 0o111
        entries = whl.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "restoreprof-py = restoreprof.launcher:main" in entries


def test_a_fresh_venv_runs_doctor_and_the_demo(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
          str(wheel)])
    # The dependencies (textual, numpy, cuda-python) come from the checkout's environment, read
    # only as a path: its .pth files (the editable restoreprof among them) are not processed.
    # bcc is the distribution's, as setup.sh exposes it.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                         "['purelib'])"]).stdout.strip())
    deps = [sysconfig.get_paths()["purelib"], str(Path(sys.prefix) / "lib" / "restoreprof-bcc")]
    (site / "checkout-dependencies.pth").write_text("\n".join(deps) + "\n")
    env = {**os.environ, "RESTOREPROF_CRIU": str(Path(sys.prefix) / "libexec/restoreprof/criu"),
           "PYTHONPATH": ""}
    where = _run([str(python), "-c", "import restoreprof, restoreprof.tui, restoreprof.system."
                                     "paths as p; print(restoreprof.__file__); "
                                     "print(p.shim_library_path())"], cwd=tmp_path, env=env)
    module, shim = where.stdout.split()
    assert module.startswith(str(venv)) and shim.startswith(str(venv)), where.stdout
    doctor = _run([str(venv / "bin" / "restoreprof"), "doctor"], cwd=tmp_path, env=env)
    assert "ready: tracing and restore can work" in doctor.stdout
    assert f"interception library   ok       {venv}" in doctor.stdout, doctor.stdout
    demo = _run([str(venv / "bin" / "restoreprof"), "demo", "--cpu", "--mib", "64", "-o",
                 str(tmp_path / "demo")], cwd=tmp_path, env=env)
    assert "verified bit-exact" in demo.stdout, demo.stdout
    assert (tmp_path / "demo" / "cpu" / "trace" / "report.json").exists()
    version = _run([str(venv / "bin" / "restoreprof"), "--version"], cwd=tmp_path, env=env)
    assert version.stdout.strip().startswith("restoreprof ")  # the front door, then Python
