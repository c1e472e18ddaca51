"""Process memory figures."""

from __future__ import annotations

import os
import resource


def peak_rss_mb() -> float:
    """This process's RSS high-water mark. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    exec from the forked parent, so a process started by a big one (a benchmark, a launcher) would report
    the parent's RSS."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def host_memory_gb() -> float | None:
    """This machine's physical memory in GiB (MemTotal of /proc/meminfo, else sysconf); None where neither says."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemTotal:")) / 2**20  # kB
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None
