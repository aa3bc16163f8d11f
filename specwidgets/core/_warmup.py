"""Compile the sky kernels ahead of need, in a background thread.

On a new machine (an empty numba cache) the first fit of a method waits for
numba to compile its kernels. The interactive state starts the kernels of
the methods it is not showing yet compiling in the background, so the first
switch of method is as quick as the later ones. Each kernel is compiled once
per process, or loaded from the per-user cache (:mod:`specwidgets.core._cache`).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["start_warm_up", "warm_up"]

_lock = threading.Lock()
_started = set()


def warm_up(methods=("bspline", "median")):
    """Compile (or load) the kernels of ``methods`` by fitting a tiny problem; returns ``methods``."""
    # The line fits of the warp model (every page fits one, every arc click another).
    from .peaks import fit_gaussian_windows

    cols = np.arange(9, dtype=float)[None, :]
    fit_gaussian_windows(cols, 10.0 + 100.0 * np.exp(-0.5 * (cols - 4.2) ** 2))
    for method in methods:
        if method == "median":
            from .sky.median import warm_up as median_warm_up

            median_warm_up()
        elif method == "bspline":
            from .sky.bspline import fit_bspline_sky
            from .sky.quality import _far_above, _row_chi_means, row_profile

            e = np.linspace(0.0, 20.0, 400)
            flux = 10.0 + np.sin(e)
            sky = fit_bspline_sky(e, flux, read_noise=1.0, knot_spacing=1.0)
            level = sky(e)
            # The default fit's other kernels: spatial orders 1 and 2 (what
            # "auto" picks besides 0) and the row statistics, with the dtypes
            # fit_sky passes (int32 pixel indices and rows).
            rows = np.repeat(np.arange(4, dtype=np.int32), 100)
            for order in (1, 2):
                fit_bspline_sky(e, flux, rows.astype(float), spatial_order=order, read_noise=1.0,
                                knot_spacing=1.0)(e, rows.astype(float))
            row_profile(rows, flux, level, level, 4)
            _far_above(flux[None], level[None], np.ones((1, 4)), rows, 1.0, 1.0)
            _row_chi_means(rows, 1, 4, level[:4], flux, 1.0, 1.0)
        else:
            raise ValueError(f"method must be one of 'bspline', 'median'; got {method!r}")
    return tuple(methods)


def start_warm_up(methods=("bspline", "median")):
    """Start :func:`warm_up` for the ``methods`` not yet started, in a daemon thread; returns it (or None)."""
    with _lock:
        todo = tuple(m for m in methods if m not in _started)
        _started.update(todo)
    if not todo:
        return None
    thread = threading.Thread(target=_quiet_warm_up, args=(todo,), name="specwidgets-warm-up", daemon=True)
    thread.start()
    return thread


def _quiet_warm_up(methods):
    try:
        warm_up(methods)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first fit compiles
        with _lock:
            _started.difference_update(methods)
