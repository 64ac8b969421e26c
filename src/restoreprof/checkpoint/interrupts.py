"""Steps that must not stop half way: Ctrl-C and SIGTERM are noted meanwhile, then acted on."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Noted:
    """Whether an interrupt arrived while deferred."""

    arrived = False


_active: Noted | None = None  # the outermost deferral's note: nested ones share it


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[Noted]:
    """Ctrl-C and SIGTERM are noted, not raised, while a step that must not stop half way runs
    (CRIU, the manifest's writing, the resume of checked processes); the caller reads .arrived.
    Off the main thread (where Python delivers signals) this changes nothing."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active or Noted()
        return
    noted = Noted()

    def note(signum, frame) -> None:
        noted.arrived = True

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    _active = noted
    try:
        yield noted
    finally:
        _active = None
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
