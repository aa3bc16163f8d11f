"""Warnings shown where the user's code called in, not at a line inside specwidgets."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def warn_at_caller(message, category=None):
    """Issue ``message`` at the first caller outside specwidgets (the user's line: a script's, a notebook cell's).

    ``message`` may be a Warning instance (its class is the category).
    """
    level, frame = 1, sys._getframe(0)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class warnings_at_caller:  # noqa: N801 - used as a context manager, like warnings.catch_warnings
    """Re-issue specwidgets' warnings raised inside the block at the user's line (``skip``'s classes dropped).

    A class rather than a generator: its ``__exit__`` runs in specwidgets'
    own frame, so the user's frame is the first one outside the package.
    """

    def __init__(self, skip=()):
        self.skip = tuple(skip)
        self._catch = warnings.catch_warnings(record=True)
        self._caught = None

    def __enter__(self):
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        for item in self._caught:
            if isinstance(item.message, self.skip):
                continue
            if os.path.abspath(item.filename).startswith(_PACKAGE_DIR + os.sep):
                warn_at_caller(item.message)
            else:
                # Another library's: where it was raised, under the filters
                # as they are (a DeprecationWarning hidden by default stays hidden).
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        return False
