"""The tuner: restores a checkpoint again and again under the profiler, searches the optimizer's
settings from the bottleneck, and remembers the winner per host in the tuning database.

    space.py      what may change, and what to try first for a bottleneck
    search.py     coordinate descent + successive halving (pure; tested on a simulated restore)
    trial.py      one restore of an untouched copy, profiled, checked, cleaned up
    autotune.py   the loop tying them together
    report.py     progress lines and the final comparison
    identity.py   GPU, PCIe, driver and storage: the database key
    database.py   the JSON file, and install_tuned_defaults() for every other command
"""

from restoreprof.tuner.database import TuningDatabase, install_tuned_defaults, uninstall_tuned_defaults

__all__ = ["TuningDatabase", "install_tuned_defaults", "uninstall_tuned_defaults"]
