"""restoreprof exec: run a program with the interception library preloaded."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import config
from restoreprof.optimizer.config import OptimizerConfig
from restoreprof.optimizer.startup_hook import HOOK_DIR
from restoreprof.system.paths import libcuda_path, shim_library_path

name = "exec"
help = "run a program with the interception library (fast pageable copies, GPU memory offload)"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]",
                        help="the program to run")


def shim_library() -> str:
    """The built library; built now if the setup command has not done it yet."""
    path = shim_library_path()
    if not path.exists():
        from restoreprof.optimizer.shim.build import build_library

        try:
            path = build_library()
        except (OSError, FileNotFoundError, ValueError) as exc:
            raise RestoreprofError(f"the interception library is not built: {exc}",
                                   hint="run ./scripts/setup.sh (it needs gcc and cuda.h)") from None
    return str(path)


def exec_environment(cfg: OptimizerConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a program runs in under the library."""
    env = dict(os.environ if base is None else base)
    env.update(cfg.to_env())
    preload = [shim_library()] + [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    env["LD_PRELOAD"] = ":".join(dict.fromkeys(preload))
    real = libcuda_path()
    if real and "RESTOREPROF_REAL_LIBCUDA" not in env:
        env["RESTOREPROF_REAL_LIBCUDA"] = real
    if cfg.release_caches and cfg.offload:
        # A Python program then registers a release hook with the library at start-up, so a
        # checkpoint frees its frameworks' cached GPU blocks instead of saving them.
        paths = [str(HOOK_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise RestoreprofError("no program to run", hint="restoreprof exec [FLAGS] -- CMD [ARG ...]")
    env = exec_environment(config.from_args(args))
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        raise RestoreprofError(f"cannot run {cmd[0]}: {exc.strerror}",
                               hint="check the program name and PATH") from None
    return 127  # not reached: exec replaced this process
