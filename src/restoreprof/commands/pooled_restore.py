"""`restoreprof restore` carried out by a running warm pool, so that Python's start-up and the
restore's imports (checkpoint, CUDA bindings, the engine: about 0.2 s on the H200) are paid once
per host, by the pool, instead of once per restore.

    # restoreprof restore ... (restoreprof.launcher, before anything else is imported)
    code = restore_through_pool(argv)   # None: no pool, or it declined: restore here

    # restoreprof warm
    pool.handlers["restore"] = serve_restore

The client side imports only the socket framing (and restoreprof/front/front.c is the same
client in C, the `restoreprof` command's native front door). It sends {"op": "restore", "argv",
"cwd", "env"} (its restoreprof-related environment variables; the native client sends all, and
the pool keeps those); the pool runs the command line's own
code for `restore argv` in the client's working directory with the client's settings variables,
its output captured, and answers {"stdout", "stderr", "exit_code"}: exactly what the command
would have printed and returned. It declines ({"declined": why}) what it would not run as the
client would: --criu-arg (CRIU would not see the client's descriptors), or an environment that
differs in anything but the settings (another CRIU, libcuda, run directory, config or tuning
file). A declined or unanswered request runs here as if no pool ran. Once the pool has accepted
a restore, its answer is the restore's: a pool that dies midway is reported, never retried
here (the processes may be restored already). Interrupting the command (Ctrl-C, SIGTERM) does
not interrupt a restore the pool has begun: it runs to its end, and the pool's output says how
it went.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator

from restoreprof.errors import EXIT_INTERRUPTED

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
        except KeyboardInterrupt:
            sys.stderr.write("restoreprof restore: interrupted; the warm pool finishes the "
                             "restore it began\n  -> see the pool's output for how it went\n")
            return EXIT_INTERRUPTED
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
    ours = relevant_environment(os.environ)
    for var in sorted(set(ours) | set(client)):
        if var not in _settings_variables() and var not in NEUTRAL and \
                ours.get(var) != client.get(var):
            return var
    return None


def _settings_variables() -> set[str]:
    from restoreprof.settings import SETTINGS

    return {var for s in SETTINGS for var in s.env}


class _RoutedStream:
    """sys.stdout or sys.stderr in the pool: a thread that carries out a restore writes into
    its own buffer, every other thread to the pool's real stream."""

    def __init__(self, real) -> None:
        self.real = real
        self.local = threading.local()

    def _target(self):
        return getattr(self.local, "buffer", None) or self.real

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:  # nobody watches a captured restore: no progress is drawn
        return self._target() is self.real and self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """This thread's stdout and stderr, into buffers, for the block."""
    for name in ("stdout", "stderr"):
        if not isinstance(getattr(sys, name), _RoutedStream):
            setattr(sys, name, _RoutedStream(getattr(sys, name)))
    out, err = io.StringIO(), io.StringIO()
    sys.stdout.local.buffer, sys.stderr.local.buffer = out, err
    try:
        yield out, err
    finally:
        sys.stdout.local.buffer = sys.stderr.local.buffer = None


@contextlib.contextmanager
def _as_the_client(cwd: str, env: dict[str, str]) -> Iterator[None]:
    """The client's working directory and settings variables, for the block (both are the
    process's: the caller holds _restore_lock, and nothing else in the pool reads them)."""
    before_cwd = os.getcwd()
    names = _settings_variables()
    before = {k: os.environ.get(k) for k in names}
    try:
        os.chdir(cwd)
        for k in names:
            if k in env:
                os.environ[k] = env[k]
            else:
                os.environ.pop(k, None)
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.chdir(before_cwd)


def prepare_restores() -> None:
    """What a restore imports and probes, done once when the pool starts: the pool's first
    restore on the H200 started CRIU 0.2 s after its first step (imports, the userfaultfd
    probe), the later ones after 0.03 to 0.05 s."""
    from restoreprof import cli
    from restoreprof.checkpoint import api, lazy_pages
    from restoreprof.commands import restore
    from restoreprof.optimizer.engine import library

    del cli, api, restore
    lazy_pages.userfaultfd_works()
    with contextlib.suppress(Exception):  # not built: the restore says so itself
        library()


def serve_restore(request: dict) -> dict:
    """A client's `restoreprof restore`, run here by the command line's own code: its reply
    (see the module's docstring)."""
    argv, cwd, env = request.get("argv"), request.get("cwd"), request.get("env")
    if not (isinstance(argv, list) and isinstance(cwd, str) and isinstance(env, dict)):
        return {"declined": "a malformed restore request"}
    # The native client sends its whole environment: only what matters to a restore is kept.
    argv, env = [str(a) for a in argv], relevant_environment({str(k): str(v)
                                                              for k, v in env.items()})
    if any(a in LOCAL_ONLY or a.startswith("--criu-arg=") for a in argv):
        return {"declined": "--criu-arg runs in the client"}
    differs = _environment_differs(env)
    if differs:
        return {"declined": f"the pool runs with another {differs}"}
    if not os.path.isdir(cwd):
        return {"declined": "the client's working directory is not visible here"}
    from restoreprof import cli

    with _restore_lock, _captured() as (out, err), _as_the_client(cwd, env):
        try:
            # as_program: errors are reported as the command reports them, never raised here
            code = cli._main(["restore", *argv], as_program=True)
        except SystemExit as exc:  # argparse, having printed its usage and error
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception as exc:  # reported to the client as the command reports a bug
            err.write(f"restoreprof restore: error: internal error in the warm pool: "
                      f"{type(exc).__name__}: {exc}\n")
            code = 1
    return {"stdout": out.getvalue(), "stderr": err.getvalue(), "exit_code": code}
