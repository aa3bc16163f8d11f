"""Batch runs: calibrations once, then every science exposure, on Dask.

One machine or a cluster; outputs are the same FITS files as the dashboard's
export. See :func:`run_batch` and ``specwidgets batch --help``.

Layer: uses :mod:`specwidgets.core` and :mod:`specwidgets.io`; never the widgets.
"""

from .runner import (
    FLAT_NORMS,
    BatchLockedError,
    BatchSummary,
    add_batch_parser,
    export_result,
    file_fingerprint,
    main,
    prepare_calibrations,
    read_frame,
    run_batch,
    run_batch_command,
)

__all__ = [
    "BatchLockedError",
    "BatchSummary",
    "FLAT_NORMS",
    "add_batch_parser",
    "export_result",
    "file_fingerprint",
    "main",
    "prepare_calibrations",
    "read_frame",
    "run_batch",
    "run_batch_command",
]
