"""Kernel-side timings of widget work, for benchmarks: off unless asked for.

Set the environment variable :data:`TIMING_ENV` to a file path before the
kernel starts (``specwidgets dashboard`` passes its environment on) and every
widget callback, sky recomputation and picture rendering appends one JSON
line there::

    {"t": 1764320000.123, "what": "callback", "name": "ImageViewer._on_view_button", "ms": 12.3}
    {"t": ..., "what": "render", "ms": 8.1, "png_bytes": 41234, "shape": [400, 1000]}
    {"t": ..., "what": "compute", "name": "_update_sky", "ms": 61.0}

``t`` is the wall-clock end time (``time.time()``), so a browser on the same
machine can place it against its own ``performance.timeOrigin + now()``.
``benchmarks/bench_browser.py`` reads the file to split a round trip into
kernel compute, PNG encode and the rest. Unset, :func:`enabled` is False and
each hook costs one attribute lookup.

Examples
--------
>>> import json, os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "t.jsonl")
>>> log = TimingLog(path)
>>> with log.timed("render", png_bytes=10):
...     pass
>>> entry = json.loads(open(path).read())
>>> entry["what"], entry["png_bytes"], entry["ms"] >= 0
('render', 10, True)
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

__all__ = ["TIMING_ENV", "TimingLog", "enabled", "record", "timed"]

#: Environment variable naming the JSON-lines file the timings go to.
TIMING_ENV = "SPECWIDGETS_TIMING_LOG"


class TimingLog:
    """Append timing records, one JSON object a line, to ``path`` (None: record nothing)."""

    def __init__(self, path):
        self.path = os.fspath(path) if path else None

    @property
    def enabled(self):
        return self.path is not None

    def record(self, what, seconds, **extra):
        """Append ``{"t", "what", "ms", **extra}``; never raises (a benchmark aid must not break the page)."""
        if self.path is None:
            return
        entry = {"t": time.time(), "what": what, "ms": round(1000.0 * seconds, 3), **extra}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except (OSError, TypeError, ValueError):
            pass

    @contextmanager
    def timed(self, what, **extra):
        """Time the block and :meth:`record` it (``extra`` may be filled in inside the block)."""
        start = time.perf_counter()
        try:
            yield extra
        finally:
            self.record(what, time.perf_counter() - start, **extra)


_LOG = TimingLog(os.environ.get(TIMING_ENV) or None)


def enabled():
    """Whether timings are recorded in this process."""
    return _LOG.enabled


def record(what, seconds, **extra):
    """Record one timing in the process's log (see :class:`TimingLog`)."""
    _LOG.record(what, seconds, **extra)


def timed(what, **extra):
    """Context manager timing a block into the process's log."""
    return _LOG.timed(what, **extra)
