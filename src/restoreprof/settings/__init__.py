"""The optimizer's settings: one schema, resolved once at each command's edge.

    schema.py    names, types, ranges, defaults, environment variables (CRIU_CUDA_* included)
    layers.py    flags > environment > config file > tuning DB > defaults, with each value's source

Python (optimizer.config.OptimizerConfig) and C (the interception library, through the header
that optimizer/shim/build.py generates from this schema) take their defaults from here only.
It imports nothing of restoreprof but errors, so every layer may use it.
"""

from restoreprof.settings.layers import Resolved, config_file_path, resolve
from restoreprof.settings.schema import BY_NAME, SETTINGS, Setting

__all__ = ["BY_NAME", "SETTINGS", "Resolved", "Setting", "config_file_path", "resolve"]
