"""The one exception type a user sees. Every message says what to do next.

Exit codes are the script contract (README, `restoreprof --help`): a script can tell a typo from
a missing tool, from a process or CRIU that failed, from a checkpoint that cannot be trusted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1       # anything unforeseen (a bug: please report it)
EXIT_USAGE = 2         # bad arguments or input (argparse uses 2 too)
EXIT_ENVIRONMENT = 3   # this machine lacks something: root, CRIU, the CUDA driver, a writable folder
EXIT_TARGET = 4        # the process, CRIU or the driver failed at the job
EXIT_INTEGRITY = 5     # a checkpoint failed its checks: checksums, manifest, ownership, modes
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, as shells report it)

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "unexpected failure (a bug: please report it)",
    EXIT_USAGE: "usage: bad arguments or input",
    EXIT_ENVIRONMENT: "environment: missing root, CRIU, CUDA driver, or a usable folder",
    EXIT_TARGET: "target failure: the process, CRIU or the CUDA driver failed",
    EXIT_INTEGRITY: "integrity: a checkpoint failed its checksum, manifest or trust checks",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); anything held is named with its way out",
}

_KINDS = {EXIT_USAGE: "usage", EXIT_ENVIRONMENT: "environment", EXIT_TARGET: "target",
          EXIT_INTEGRITY: "integrity", EXIT_INTERRUPTED: "interrupted", EXIT_FAILURE: "failure"}


def exit_codes_epilog() -> str:
    """The exit codes as `--help` lists them."""
    return "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class RestoreprofError(Exception):
    """An error with a message fit for the user; the CLI prints it and exits with exit_code.

    The default is a usage error (bad input); the subclasses below name the other kinds. A
    raise site may also pass exit_code= where the kind depends on the case."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def kind(self) -> str:
        return _KINDS.get(self.exit_code, "failure")

    @property
    def message(self) -> str:
        return super().__str__()

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  -> {self.hint}" if self.hint else text

    def to_dict(self) -> dict:
        return {"message": self.message, "hint": self.hint, "kind": self.kind,
                "exit_code": self.exit_code}


class UsageError(RestoreprofError):
    exit_code = EXIT_USAGE


class EnvironmentProblem(RestoreprofError):
    """This machine lacks something restoreprof needs (root, CRIU, a driver, a writable folder)."""

    exit_code = EXIT_ENVIRONMENT


class TargetFailure(RestoreprofError):
    """The process, CRIU or the CUDA driver failed at the job."""

    exit_code = EXIT_TARGET


class IntegrityError(RestoreprofError):
    """A checkpoint that cannot be trusted: a checksum, the manifest, an owner or a mode."""

    exit_code = EXIT_INTEGRITY


class Interrupted(RestoreprofError):
    """Ctrl-C or SIGTERM, after what was running has been put back (or named, with its way out)."""

    exit_code = EXIT_INTERRUPTED


class NotRootError(EnvironmentProblem):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs root (or CAP_SYS_ADMIN, CAP_BPF and CAP_PERFMON)",
            hint="run it with sudo",
        )


def require_root(what: str) -> None:
    import os

    if os.geteuid() != 0:
        raise NotRootError(what)
