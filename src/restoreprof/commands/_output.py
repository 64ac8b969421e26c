"""Small printing helpers shared by the commands."""

from __future__ import annotations


def print_steps(steps, title: str = "step") -> None:
    """One line per timed step, then the wall time from the first start to the last end."""
    if not steps:
        return
    origin = min(s.start_ns for s in steps)
    print(f"  {title:<34} {'pid':>7} {'start s':>8} {'time s':>8}")
    for s in sorted(steps, key=lambda s: (s.start_ns, s.end_ns)):
        pid = str(s.pid) if s.pid else ""
        print(f"  {s.name:<34} {pid:>7} {(s.start_ns - origin) / 1e9:>8.3f} {s.seconds:>8.3f}")
    total = (max(s.end_ns for s in steps) - origin) / 1e9
    print(f"  {'total':<34} {'':>7} {'':>8} {total:>8.3f}")
