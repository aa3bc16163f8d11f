"""Compile the sky kernels ahead of need, in a background thread.

On a new machine (an empty numba cache) the first fit of a method waits for
numba to compile its kernels. The interactive state starts the kernels of
the methods it is not showing yet compiling in the background, so the first
switch of method is as quick as the later ones. Each kernel is compiled once
per process, or loaded from the per-user cache (:mod:`specwidgets.core._cache`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np

__all__ = ["kernels_cached", "start_warm_up", "start_warm_up_process", "warm_up"]

_lock = threading.Lock()
_started = set()


def warm_up(methods=("bspline", "median"), lines=True):
    """Compile (or load) the kernels of ``methods`` (and, with ``lines``, the line fits) on a tiny problem.

    Returns ``methods``.
    """
    if lines:
        # The line fits of the warp model (every page fits one, every arc click another).
        from .peaks import fit_gaussian_windows

        cols = np.arange(9, dtype=float)[None, :]
        fit_gaussian_windows(cols, 10.0 + 100.0 * np.exp(-0.5 * (cols - 4.2) ** 2))
        # The extraction preview's profile smoothing (every page, every fit).
        from .extract import running_median_rows

        running_median_rows(np.zeros((2, 8)), 3)
        # The arc tracer's block means of a large frame (one compiled pass).
        from .warp import _block_nanmeans

        _block_nanmeans(np.zeros((4, 3)), 2, np.zeros(4, np.bool_), np.empty((2, 3)))
    for method in methods:
        if method == "median":
            from .sky.median import warm_up as median_warm_up

            median_warm_up()
        elif method == "bspline":
            from .sky.bspline import fit_bspline_sky
            from .sky.quality import _far_above, _row_chi_means, _row_chi_means_in_rows, measure_flexure, row_profile

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
            # np.interp's twin for the adaptive knots' tables (as interp_in_threads passes them: read-only).
            from ._threads import _interp_table

            table = np.arange(2.0)
            table.flags.writeable = False
            _interp_table(table, table, table, np.empty(2))
            _row_chi_means_in_rows(flux.reshape(4, 100), level.reshape(4, 100), np.ones(4, bool), 1.0, 1.0)
            measure_flexure(e / 20.0 - 0.5, flux, level, np.cos(e), level)
            from .sky.slit import fit_slit_correction

            # The slit correction's column sums (int32 pixel indices, as fit_sky's).
            fit_slit_correction(np.arange(400, dtype=np.int32), flux, level, 8, 50, 1.0, 1.0)
            # The sample selection of large frames and of unlit rows.
            from .sky import _select

            flags = np.zeros(4, bool)
            _select.drop_flagged_rows(e, flux[None], rows.copy(), rows, flags)
            order = np.empty(rows.size, np.int32)
            _select._row_major(np.arange(rows.size), 4, 100, order)
            _select._copy_unmasked(order, 100, flags, np.empty(_select._count_unmasked(order, 100, flags), np.int32))
            _select._rows_of(order, 100, np.empty_like(order))
            # The sort of a large frame's effective pixels, merged from its two halves (argsort's int64).
            halves = np.arange(2.0), np.arange(2, dtype=np.int64)
            _select._merge_row_major(*halves, *halves, 2, 2, 2, np.empty(4, np.int32))
            # A large frame's sample selections (NumPy below a million samples): the fit's unusable
            # samples, and the adaptive knots' held-out rows (int32 rows, as fit_sky's).
            from .sky._kernels import _exclude_pass, _usable_in_rows

            _exclude_pass(e, flux, e, False, 0.0, 0.0, True, np.empty(e.size, np.bool_))
            _usable_in_rows(e, flux, rows, 0.0, 20.0, flags, None)
            _usable_in_rows(e, flux, rows, 0.0, 20.0, flags, np.empty(e.size, np.int64))
            # The quality checks' ceiling of the sky (saturation), int32 pixel indices.
            from .sky.quality import _ceiling_kernel

            _ceiling_kernel(flux[None], order, np.zeros((1, order.size), bool), 1e-3)
            # A large frame of whole-numbered values (integer ADU) gets its samples dithered.
            from .sky._kernels import _add_dither_pass

            _add_dither_pass(np.zeros(4), order[:4], 0.0, 1.0)
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


def kernels_cached(method):
    """Whether numba's cache already holds ``method``'s main kernel (False when it cannot tell)."""
    try:
        if method == "median":
            from .sky.median import _median_blocks as kernel
        elif method == "bspline":
            from .sky._kernels import _normal_pass_constant as kernel
        else:
            raise ValueError(f"method must be one of 'bspline', 'median'; got {method!r}")
        return os.path.exists(kernel._cache._cache_file._index_path)
    except AttributeError:  # a numba without this (internal) attribute: assume cold
        return False


def start_warm_up_process(methods=("median",)):
    """Compile ``methods``' kernels in another process, into the shared cache; returns it, or None if cached.

    numba compiles under a process-wide lock, so a warm-up *thread* cannot
    overlap the compilations the caller is about to do; a second process, on
    the other core, can. The caller waits for it (``.wait()``) before its
    first fit of those methods, which then loads the kernels from the cache
    instead of compiling them. Costs a Python start-up, so only on a cold cache.
    """
    todo = tuple(m for m in methods if not kernels_cached(m))
    if not todo:
        return None
    # Only the methods' kernels: the caller compiles the line fits itself, first.
    code = f"from specwidgets.core._warmup import warm_up; warm_up({todo!r}, lines=False)"
    try:
        # The child inherits NUMBA_CACHE_DIR (set at import by _cache), so it fills our cache.
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:  # no process to spare: the first fit compiles, as without a warm-up
        return None
