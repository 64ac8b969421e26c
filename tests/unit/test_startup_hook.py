"""The Python start-up hook that `restoreprof exec` adds (optimizer/startup_hook): it stands in
front of any sitecustomize the program has and runs it, leaves sys.path as it was, does nothing
where the interception library is not loaded, and is left out when switched off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from restoreprof.commands.exec_ import exec_environment
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.startup_hook import HOOK_DIR

PROBE = textwrap.dedent("""
    import json, sys
    ours = sys.modules.get("_restoreprof_sitecustomize") or sys.modules["sitecustomize"]
    print(json.dumps({"path": sys.path, "site": sys.modules["sitecustomize"].__file__,
                      "ours": ours.__file__, "registered": ours._registered is not None,
                      "marker": getattr(sys.modules["sitecustomize"], "MARKER", None)}))
""")


def run_probe(pythonpath: list[str], **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(pythonpath)},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_programs_own_sitecustomize_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("MARKER = 'the program\\'s own'\n")
    seen = run_probe([str(HOOK_DIR), str(tmp_path)])
    assert seen["marker"] == "the program's own"
    assert seen["site"] == str(tmp_path / "sitecustomize.py")
    assert seen["ours"] == str(HOOK_DIR / "sitecustomize.py")
    assert str(HOOK_DIR) not in seen["path"], "the hook's folder leaves sys.path again"
    assert str(tmp_path) in seen["path"]


def test_without_the_library_nothing_is_registered():
    seen = run_probe([str(HOOK_DIR)])
    assert seen["ours"] == str(HOOK_DIR / "sitecustomize.py") and not seen["registered"]


def test_exec_puts_the_hook_first_only_when_switched_on(tmp_path):
    base = {"PYTHONPATH": "/somewhere", "PATH": os.environ["PATH"]}
    on = exec_environment(OptimizerConfig(), base)
    assert on["PYTHONPATH"].split(os.pathsep) == [str(HOOK_DIR), "/somewhere"]
    assert on["RESTOREPROF_RELEASE_CACHES"] == "1" and on["RESTOREPROF_RELEASE_TIMEOUT_S"] == "10"
    off = exec_environment(OptimizerConfig(release_caches=False), base)
    assert off["PYTHONPATH"] == "/somewhere" and off["RESTOREPROF_RELEASE_CACHES"] == "0"


def test_the_hook_imports_nothing_from_restoreprof():
    """It runs with the program's Python, where restoreprof may not be installed."""
    source = Path(HOOK_DIR / "sitecustomize.py").read_text()
    assert "restoreprof." not in "\n".join(
        line for line in source.splitlines() if line.startswith(("import", "from")))
