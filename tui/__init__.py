"""The live view of a restore (``restoreprof tui``): a Textual app over the trace event stream."""

from __future__ import annotations

__all__ = ["LiveFeed", "ReplayFeed", "RestoreprofApp"]


def __getattr__(name: str):
    # Textual loads only when the view is used, not when the package is imported.
    if name == "RestoreprofApp":
        from restoreprof.tui.app import RestoreprofApp

        return RestoreprofApp
    if name in ("LiveFeed", "ReplayFeed"):
        from restoreprof.tui import feed

        return getattr(feed, name)
    raise AttributeError(name)
