"""One trial's restore, in a fresh process (the one the profiler traces).

    python -m restoreprof.tuner.restore_once DIR RESULT.json CONFIG_JSON [--no-verify]

A fresh process per trial keeps trials alike: cuInit, imports and the pre-warm start cold
every time. The configuration comes as an argument, so nothing from the environment, the
config file or the tuning database leaks into a trial. Writes RestoreResult.to_dict() (or
{"error": ...}) to RESULT.json. It leads a process group of its own, written to restore.pid
beside RESULT.json, so an interrupted `restoreprof run` can kill it and its criu at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from restoreprof.checkpoint import restore
from restoreprof.errors import RestoreprofError
from restoreprof.optimizer.config import OptimizerConfig

PID_FILE_NAME = "restore.pid"


def command(directory: Path, result_path: Path, config: OptimizerConfig, verify: bool) -> list[str]:
    argv = [sys.executable, "-m", "restoreprof.tuner.restore_once", str(directory), str(result_path),
            json.dumps(config.as_dict())]
    return argv if verify else [*argv, "--no-verify"]


def main(argv: list[str]) -> int:
    directory, result_path, config_json = Path(argv[0]), Path(argv[1]), argv[2]
    verify = "--no-verify" not in argv[3:]
    with contextlib.suppress(PermissionError):  # already a group leader
        os.setpgid(0, 0)
    pid_file = result_path.parent / PID_FILE_NAME
    pid_file.write_text(str(os.getpid()))
    config = OptimizerConfig(**json.loads(config_json))
    try:
        # CRIU's log and the restore's journal go to the trial's folder, beside its result
        result = restore(directory, optimizer=config, verify=verify, parallel=config.parallel,
                         work_dir=result_path.parent)
        data = result.to_dict()
    except RestoreprofError as exc:
        data = {"error": str(exc)}
    result_path.write_text(json.dumps(data))
    pid_file.unlink()  # ended on its own: nothing for an interrupted run to kill
    return 1 if "error" in data else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
