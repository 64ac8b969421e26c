"""`restoreprof restore` carried out by a running warm pool, so that Python's start-up and the
restore's imports (checkpoint, CUDA bindings, the engine: about 0.2 s on the H200) are paid once
per host, by the pool, instead of once per restore.

    # restoreprof restore ... (cli.main, before anything else is imported)
    code = restore_through_pool(argv)   # None: no pool, or it declined: restore here

    # restoreprof warm
    pool.handlers["restore"] = serve_restore

The client side imports only the socket framing. It sends {"op": "restore", "argv", "cwd",
"env"} (its restoreprof-related environment variables); the pool parses argv with the restore
command's own parser, resolves the settings from the client's variables, runs the command with
its output captured, and answers {"stdout", "stderr", "exit_code"}. It declines ({"declined":
why}) what it would not run as the client would: a request it cannot parse (the client then
shows the parser's error itself), --criu-arg (CRIU would see the pool's working directory), or
an environment that differs in anything but the settings (another CRIU, libcuda, run
directory, config or tuning file). A declined or unanswered request runs here as if no pool ran.
Once the pool has accepted a restore, its answer is the restore's: a pool that dies midway is
reported, never retried here (the processes may be restored already).
"""

from __future__ import annotations

import os
import sys
import threading

# Variables that change what a restore does: the settings (resolved per request from the
# client's values) and the rest (which must match the pool's own).
RELEVANT_PREFIXES = ("RESTOREPROF_", "CRIU_CUDA_", "CUDA_INTERCEPT_")
RELEVANT_NAMES = ("XDG_CONFIG_HOME", "HOME", "PATH", "LD_LIBRARY_PATH")
LOCAL_ONLY = ("-h", "--help", "--criu-arg")
OFF_ENV = "RESTOREPROF_POOL_RESTORE"  # 0: always restore in this process
# Variables that say nothing about how a restore runs: never a reason to decline.
NEUTRAL = (OFF_ENV, "RESTOREPROF_HOLD_MIB", "RESTOREPROF_REQUIRE_ROOT_TESTS",
           "RESTOREPROF_SHIM_DEBUG")
_restore_lock = threading.Lock()


def relevant_environment(environ) -> dict[str, str]:
    return {k: v for k, v in environ.items()
            if k.startswith(RELEVANT_PREFIXES) or k in RELEVANT_NAMES}


# --- the client: restoreprof restore ----------------------------------------------------------


def restore_through_pool(argv: list[str]) -> int | None:
    """Run `restoreprof restore argv` in this user's warm pool; its exit code, or None when no
    pool runs or it declined (the caller restores here)."""
    if os.environ.get(OFF_ENV, "1").strip() == "0":
        return None
    if any(a in LOCAL_ONLY or a.startswith("--criu-arg=") for a in argv):
        return None
    from restoreprof.system.warm_socket import connect, receive, send

    conn = connect()
    if conn is None:
        return None
    with conn:
        try:
            send(conn, {"op": "restore", "argv": argv, "cwd": os.getcwd(),
                        "env": relevant_environment(os.environ)})
        except OSError:
            return None  # nothing was asked: restore here
        try:
            conn.settimeout(None)  # a restore of a large checkpoint from a cold cache takes long
            reply, _ = receive(conn, 0)
        except (OSError, ValueError) as exc:
            reply = {"lost": str(exc)}
    if "declined" in reply or (reply.get("error", "").startswith("expected a preload")):
        return None  # declined, or a pool from before restores were served
    if "exit_code" not in reply:
        sys.stderr.write("restoreprof restore: error: the warm pool stopped answering during the "
                         f"restore ({reply.get('lost') or reply.get('error') or 'hung up'})\n"
                         "  -> see the pool's output: the processes may be restored already, "
                         "or held; 'restoreprof restore -D DIR --gpu-only' resumes a GPU step\n")
        return 1
    sys.stdout.write(str(reply.get("stdout", "")))
    sys.stderr.write(str(reply.get("stderr", "")))
    sys.stdout.flush()
    return int(reply["exit_code"])


# --- the pool: restoreprof warm ----------------------------------------------------------------


def _environment_differs(client: dict[str, str]) -> str | None:
    """The first non-setting variable whose value differs between the client and the pool."""
    from restoreprof.settings import SETTINGS

    settings_vars = {var for s in SETTINGS for var in s.env}
    ours = relevant_environment(os.environ)
    for var in sorted(set(ours) | set(client)):
        if var not in settings_vars and var not in NEUTRAL and ours.get(var) != client.get(var):
            return var
    return None


def serve_restore(request: dict) -> dict:
    """A client's `restoreprof restore`, run here: its reply (see the module's docstring)."""
    import contextlib
    import io
    from pathlib import Path

    argv, cwd, env = request.get("argv"), request.get("cwd"), request.get("env")
    if not (isinstance(argv, list) and isinstance(cwd, str) and isinstance(env, dict)):
        return {"declined": "a malformed restore request"}
    argv, env = [str(a) for a in argv], {str(k): str(v) for k, v in env.items()}
    differs = _environment_differs(env)
    if differs:
        return {"declined": f"the pool runs with another {differs}"}
    from restoreprof.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the client shows the parser's errors
            args = build_parser(["restore"]).parse_args(["restore", *argv])
    except SystemExit:
        return {"declined": "the pool could not parse the request"}
    if args.criu_arg:
        return {"declined": "--criu-arg runs in the client"}
    args.dir = Path(cwd, args.dir)
    if getattr(args, "config", None):
        args.config = str(Path(cwd, args.config))
    args.quiet = True  # the pool draws no progress on its own terminal
    out = io.StringIO()
    from restoreprof.commands import restore as command
    from restoreprof.errors import RestoreprofError
    from restoreprof.tuner import install_tuned_defaults

    with _restore_lock:  # the tuned defaults are process-wide: one restore at a time
        try:
            install_tuned_defaults(args.dir)
            code = command.run(args, environ=env, out=out)
            return {"stdout": out.getvalue(), "stderr": "", "exit_code": code}
        except RestoreprofError as exc:
            return {"stdout": out.getvalue(), "stderr": f"restoreprof restore: error: {exc}\n",
                    "exit_code": exc.exit_code}
        except Exception as exc:  # reported to the client as any failed restore is
            return {"stdout": out.getvalue(),
                    "stderr": f"restoreprof restore: error: the warm pool's restore failed: "
                              f"{exc!r}\n  -> see the pool's output; 'restoreprof restore -D DIR "
                              f"--gpu-only' resumes a GPU step\n", "exit_code": 1}

