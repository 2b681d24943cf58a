"""How many cores this process may use: the parallel loops size their thread pools by it."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores the OS lets this process run on (its CPU affinity: `taskset` or a
    container's pinned cpuset narrow it; a CPU-time quota such as `docker --cpus` does not
    show here), else every core the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
