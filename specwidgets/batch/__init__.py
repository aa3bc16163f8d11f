"""Batch runs: calibrations once, then every science exposure, on Dask.

One machine or a cluster; outputs are the same FITS files as the dashboard's
export. See :func:`run_batch` and ``specwidgets batch --help``.

Layer: uses :mod:`specwidgets.core` and :mod:`specwidgets.io`; never the widgets.
"""

# The package's public names are the runner's (one list: runner.__all__).
from .runner import *  # noqa: F403
from .runner import __all__  # noqa: F401
