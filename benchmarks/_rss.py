"""Resident-memory figures of this process (no imports beyond the standard library, so a
measurement taken before the heavy imports stays clean)."""

from __future__ import annotations

import sys


def maxrss_mb():
    """Peak resident set size of this process in MB.

    Linux: ``VmHWM``, the high-water mark of this program's own memory.
    ``ru_maxrss`` is not that in a child: Linux carries it over ``exec``, so
    a child of a parent that once held 1.9 GB reported 1.9 GB (bench_large's
    parent makes the 4096 x 4096 frame). Elsewhere ``ru_maxrss`` (macOS
    bytes, others kilobytes).
    """
    hwm = _status_mb("VmHWM:")
    if hwm == hwm:
        return hwm
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def _status_mb(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def vmrss_mb():
    """Current resident set size of this process in MB (NaN where /proc is absent)."""
    return _status_mb("VmRSS:")
