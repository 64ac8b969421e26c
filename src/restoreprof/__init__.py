"""restoreprof: make GPU process restore visible (eBPF profiler) and fast (optimizer)."""

__version__ = "0.1.0"
