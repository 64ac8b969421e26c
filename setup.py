"""Package layout and the native build step (metadata lives in pyproject.toml).

The Textual app sits in the top-level tui/ folder and installs as ``restoreprof.tui``.
The LD_PRELOAD interception library, the CRIU plugin and the kallsyms shortcut (probes/) are
compiled while the package is built, so an installed restoreprof carries them;
``scripts/setup.sh`` builds them in place for the editable install. The `restoreprof` command
itself is the native front door (restoreprof/front/front.c, compiled by build_scripts), which
hands everything but a warm pool's restore to the restoreprof-py entry point; without a C
compiler it is the Python launcher (front/restoreprof).

Those libraries are native code for the building machine's architecture, loaded with dlopen
and LD_PRELOAD rather than imported: the wheel is tagged for the platform
(``py3-none-linux_x86_64``, ``py3-none-linux_aarch64``), never ``any``, and works with any
Python 3 of the requires-python range.
"""

import sys
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildPyWithShim(build_py):
    def run(self) -> None:
        super().run()
        sys.path.insert(0, str(ROOT / "src"))
        from restoreprof.optimizer.shim.build import build_library
        from restoreprof.probes import kallsyms_shortcut

        out_dir = Path(self.build_lib) / "restoreprof" / "optimizer" / "shim"
        try:
            build_library(out_dir=out_dir, force=True)   # for this machine, fresh
        except Exception as exc:  # the package still works without it; doctor says so
            print(f"warning: interception library not built: {exc}", file=sys.stderr)
        try:
            from restoreprof.criu_plugin.build import build_plugin

            build_plugin(out_dir=Path(self.build_lib) / "restoreprof" / "criu_plugin" / "lib",
                         force=True)
        except Exception as exc:  # criu then runs without restoreprof's plugin; doctor says so
            print(f"warning: CRIU plugin not built: {exc}", file=sys.stderr)
        try:
            kallsyms_shortcut.build(out_dir=Path(self.build_lib) / "restoreprof" / "probes",
                                    force=True)
        except Exception as exc:  # bcc then compiles as it always does, only slower
            print(f"warning: kallsyms shortcut not built: {exc}", file=sys.stderr)


# distutils' command, as setuptools provides it (setuptools has no module of its own for it)
build_scripts = Distribution().get_command_class("build_scripts")


class BuildScriptsWithFront(build_scripts):
    """The `restoreprof` script: front/restoreprof (Python, its #!python made this install's
    interpreter), then replaced by the native front door where it compiles."""

    def run(self) -> None:
        super().run()
        sys.path.insert(0, str(ROOT / "src"))
        from restoreprof.front.build import build_front

        try:
            build_front(Path(self.build_dir) / "restoreprof")
        except Exception as exc:  # the Python launcher stays: the same command, slower to start
            print(f"warning: native front door not built ({exc}): the restoreprof command "
                  "starts Python for every restore", file=sys.stderr)


class NativeDistribution(Distribution):
    """Carries native code: installs into platlib and is built per platform."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """A wheel for this platform whose Python part fits every Python 3: the native pieces are
    plain shared libraries (dlopen, LD_PRELOAD), not extension modules of one ABI."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform_tag = super().get_tag()
        return "py3", "none", platform_tag


setup(
    packages=[*find_packages("src"), "restoreprof.tui"],
    package_dir={"": "src", "restoreprof.tui": "tui"},
    scripts=["src/restoreprof/front/restoreprof"],
    cmdclass={"build_py": BuildPyWithShim, "build_scripts": BuildScriptsWithFront,
              "bdist_wheel": PlatformWheel},
    distclass=NativeDistribution,
)
