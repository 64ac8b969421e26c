"""The Python start-up hook that `restoreprof exec` puts on PYTHONPATH (see sitecustomize.py).

Only sitecustomize.py runs inside the user's program, with the user's Python: it imports
nothing from restoreprof, which may not be installed there.
"""

from __future__ import annotations

from pathlib import Path

HOOK_DIR = Path(__file__).parent
__all__ = ["HOOK_DIR"]
