"""The one exception type a user sees. Every message says what to do next."""


class RestoreprofError(Exception):
    """An error with a message fit for the user; the CLI prints it and exits non-zero."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  -> {self.hint}" if self.hint else text


class NotRootError(RestoreprofError):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs root (or CAP_SYS_ADMIN, CAP_BPF and CAP_PERFMON)",
            hint="run it with sudo",
        )


def require_root(what: str) -> None:
    import os

    if os.geteuid() != 0:
        raise NotRootError(what)
