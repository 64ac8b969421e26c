"""Package layout and the native build step (metadata lives in pyproject.toml).

The Textual app sits in the top-level tui/ folder and installs as ``restoreprof.tui``.
The LD_PRELOAD interception library, the CRIU plugin and the kallsyms shortcut (probes/) are
compiled while the package is built, so an installed restoreprof carries them;
``scripts/setup.sh`` builds them in place for the editable install.
"""

import sys
from pathlib import Path

from setuptools import find_packages, setup
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
            build_library(out_dir=out_dir)
        except Exception as exc:  # the package still works without it; doctor says so
            print(f"warning: interception library not built: {exc}", file=sys.stderr)
        try:
            from restoreprof.criu_plugin.build import build_plugin

            build_plugin(out_dir=Path(self.build_lib) / "restoreprof" / "criu_plugin" / "lib")
        except Exception as exc:  # criu then runs without restoreprof's plugin; doctor says so
            print(f"warning: CRIU plugin not built: {exc}", file=sys.stderr)
        try:
            kallsyms_shortcut.build(out_dir=Path(self.build_lib) / "restoreprof" / "probes")
        except Exception as exc:  # bcc then compiles as it always does, only slower
            print(f"warning: kallsyms shortcut not built: {exc}", file=sys.stderr)


setup(
    packages=find_packages("src") + ["restoreprof.tui"],
    package_dir={"": "src", "restoreprof.tui": "tui"},
    cmdclass={"build_py": BuildPyWithShim},
)
