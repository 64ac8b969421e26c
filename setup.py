"""Package layout and the native build step (metadata lives in pyproject.toml).

The Textual app sits in the top-level tui/ folder and installs as ``restoreprof.tui``.
The LD_PRELOAD interception library is compiled while the package is built, so an installed
restoreprof carries it; ``scripts/setup.sh`` builds it in place for the editable install.
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

        out_dir = Path(self.build_lib) / "restoreprof" / "optimizer" / "shim"
        try:
            build_library(out_dir=out_dir)
        except Exception as exc:  # the package still works without it; doctor says so
            print(f"warning: interception library not built: {exc}", file=sys.stderr)


setup(
    packages=find_packages("src") + ["restoreprof.tui"],
    package_dir={"": "src", "restoreprof.tui": "tui"},
    cmdclass={"build_py": BuildPyWithShim},
)
