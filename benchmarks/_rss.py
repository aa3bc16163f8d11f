"""Resident-memory figures of this process (no imports beyond the standard library, so a
measurement taken before the heavy imports stays clean)."""

from __future__ import annotations

import sys


def maxrss_mb():
    """Peak resident set size of this process in MB (Linux reports kilobytes, macOS bytes)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def vmrss_mb():
    """Current resident set size of this process in MB (NaN where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
