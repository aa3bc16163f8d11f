"""Batch runs: calibrations once, then every science exposure, on Dask.

One machine or a cluster; outputs are the same FITS files as the dashboard's
export. See :func:`run_batch` and ``specwidgets batch --help``.

* :mod:`.calibrations` - bias, flat, arc and warp model, once per run
* :mod:`.runner` - the run: jobs, workers (Dask), resume, locking
* :mod:`.outputs` - per-file quality records and the run's summary
* :mod:`.cli` - ``specwidgets batch``

Layer: uses :mod:`specwidgets.core` and :mod:`specwidgets.io`; never the widgets.
"""

from . import calibrations, cli, outputs, runner
from .calibrations import *  # noqa: F403
from .cli import *  # noqa: F403
from .outputs import *  # noqa: F403
from .runner import *  # noqa: F403

__all__ = [*calibrations.__all__, *cli.__all__, *outputs.__all__, *runner.__all__]
