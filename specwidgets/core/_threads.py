"""Share work among threads without numba's ``parallel=True``.

A ``parallel=True`` kernel costs seconds of extra compilation on first use
(numba's parfor lowering), which every new user waits for. The kernels are
compiled with ``nogil=True`` instead, and these helpers run chunks of their
work in ordinary Python threads: the same parallel speed on the cores, at
the compile cost of the serial kernel.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import wait

import numpy as np
from numba import njit

__all__ = ["chunk_bounds", "interp_in_threads", "map_in_threads", "run_in_threads"]


def chunk_bounds(n, n_chunks):
    """``[(start, stop), ...]``: ``range(n)`` cut into ``n_chunks`` contiguous, near-equal pieces.

    Examples
    --------
    >>> chunk_bounds(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    return [(c * n // n_chunks, (c + 1) * n // n_chunks) for c in range(n_chunks)]


_POOL = None
_POOL_LOCK = threading.Lock()
_POOL_PID = None
_IN_POOL = threading.local()


def _pool(n_workers):
    """The process's shared worker threads (at least ``n_workers``), made on first use.

    Starting and joining threads for every call cost ~1-3 ms each, dozens of
    times per sky fit. A pool made before a ``fork`` has no threads in the
    child, so a child process makes its own.
    """
    global _POOL, _POOL_PID
    from concurrent.futures import ThreadPoolExecutor

    with _POOL_LOCK:
        pid = os.getpid()
        if _POOL is None or _POOL_PID != pid or _POOL._max_workers < n_workers:
            old = _POOL if _POOL_PID == pid else None
            _POOL = ThreadPoolExecutor(max(n_workers, 1), thread_name_prefix="specwidgets",
                                       initializer=_mark_pool_thread)
            _POOL_PID = pid
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def _mark_pool_thread():
    _IN_POOL.active = True


def run_in_threads(tasks):
    """Call every zero-argument callable in ``tasks`` concurrently; their results, in order.

    The first runs in the calling thread, the others in the process's shared
    worker threads; an exception in any is raised here once all have
    finished. Called from one of those worker threads, the tasks run one
    after the other (a task waiting for the pool it runs in could deadlock).

    Examples
    --------
    >>> run_in_threads([lambda: 1, lambda: 2, lambda: 3])
    [1, 2, 3]
    """
    tasks = list(tasks)
    if len(tasks) <= 1 or getattr(_IN_POOL, "active", False):
        return [task() for task in tasks]
    futures = [_pool(len(tasks) - 1).submit(task) for task in tasks[1:]]
    try:
        first = tasks[0]()
    finally:
        # Every task has finished before returning (or raising): they write
        # into the caller's arrays.
        wait(futures)
    return [first] + [future.result() for future in futures]


def map_in_threads(fn, items):
    """``[fn(item) for item in items]``, the calls made concurrently; their results, in order.

    For independent pieces of work that are each too small to be split
    (one exposure's fit of a short slit): inside them, ``run_in_threads``
    runs its tasks one after the other, so that the pieces, not their
    parts, share the cores.

    Examples
    --------
    >>> map_in_threads(lambda x: x * x, [1, 2, 3])
    [1, 4, 9]
    """
    items = list(items)
    n_threads = min(len(items), _n_threads())
    if n_threads <= 1 or getattr(_IN_POOL, "active", False):
        return [fn(item) for item in items]

    def serial_inside(group):
        # As many threads as cores, each taking its share in turn: more
        # would only hold more work arrays at once.
        before = getattr(_IN_POOL, "active", False)
        _IN_POOL.active = True
        try:
            return [fn(item) for item in group]
        finally:
            _IN_POOL.active = before

    groups = [items[start:stop] for start, stop in chunk_bounds(len(items), n_threads)]
    return [result for part in run_in_threads([(lambda group=group: serial_inside(group)) for group in groups])
            for result in part]


def _n_threads():
    """The threads to share work among: numba's setting (``NUMBA_NUM_THREADS``, default the cores)."""
    import numba

    return numba.get_num_threads()


@njit(cache=True, nogil=True)
def _interp_table(x, xp, fp, out):
    """``out[:] = np.interp(x, xp, fp)`` for ``xp`` strictly increasing and ``xp``, ``fp`` finite.

    The same numbers as NumPy's (its end rules, its interval, its formula
    ``slope * (x - xp[j]) + fp[j]``; the retry NumPy makes when that is NaN
    cannot happen with finite tables), about twice as fast: each point's
    interval is guessed as if ``xp`` were evenly spaced (the tables here
    are) and checked, a step fixing rounding and a bisection anything else,
    where NumPy searches from the last point's interval.
    """
    n = xp.shape[0]
    inv_dx = (n - 1) / (xp[n - 1] - xp[0])
    for i in range(x.shape[0]):
        xi = x[i]
        if math.isnan(xi):
            out[i] = xi
            continue
        if xi < xp[0]:
            out[i] = fp[0]
            continue
        if xi >= xp[n - 1]:
            out[i] = fp[n - 1]  # (at the last entry NumPy takes fp[-1] too)
            continue
        j = min(max(int((xi - xp[0]) * inv_dx), 0), n - 2)
        if xp[j] > xi and j > 0 and xp[j - 1] <= xi:
            j -= 1
        elif xp[j + 1] <= xi and j < n - 2 and xp[j + 2] > xi:
            j += 1
        if not (xp[j] <= xi and xi < xp[j + 1]):
            a, b = 0, n - 1  # xp[a] <= xi < xp[b]
            while b - a > 1:
                m = (a + b) >> 1
                if xp[m] <= xi:
                    a = m
                else:
                    b = m
            j = a
        if xp[j] == xi:
            out[i] = fp[j]
            continue
        slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
        out[i] = slope * (xi - xp[j]) + fp[j]


# Below this many points one np.interp call does the work.
_INTERP_MIN_POINTS = 200_000
# Points interpolated at a time in a thread (8 MB of float64).
_INTERP_PART = 1 << 20


def interp_in_threads(x, xp, fp):
    """``np.interp(x, xp, fp)`` (float64 ``x``), its points cut into pieces interpolated side by side.

    np.interp releases the GIL and each point's value depends on that point
    only, so the pieces give the same numbers; on a full frame's million
    samples it is ~10 ms a call.

    Examples
    --------
    >>> x = np.linspace(-1.0, 5.0, 300_001)
    >>> bool(np.array_equal(interp_in_threads(x, [0.0, 1.0, 4.0], [0.0, 2.0, 3.0]),
    ...                     np.interp(x, [0.0, 1.0, 4.0], [0.0, 2.0, 3.0])))
    True
    """
    x = np.asarray(x, dtype=np.float64)
    xp = np.asarray(xp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    n_threads = _n_threads()
    # (np.interp computes its slopes ahead only for more points than table
    # entries, by another formula: each piece keeps to the whole's case.)
    if (x.size < _INTERP_MIN_POINTS or n_threads <= 1 or getattr(_IN_POOL, "active", False)
            or x.size // n_threads < xp.size):
        return np.interp(x, xp, fp)
    flat = x.ravel()
    out = np.empty(flat.size)
    if xp.size >= 2 and np.isfinite(xp).all() and np.isfinite(fp).all() and np.all(np.diff(xp) > 0):
        flat = np.ascontiguousarray(flat).view()
        flat.flags.writeable = False  # (one compiled signature)
        xp, fp = xp.view(), fp.view()
        xp.flags.writeable = fp.flags.writeable = False
        run_in_threads([(lambda start=start, stop=stop: _interp_table(flat[start:stop], xp, fp, out[start:stop]))
                        for start, stop in chunk_bounds(flat.size, n_threads)])
        return out.reshape(x.shape)

    def piece(start, stop):
        # In parts: np.interp returns a new array, and a thread's whole share
        # at once would add half of ``out`` to the peak memory (64 MB on a
        # 4096 x 4096 frame). Each part keeps to the table's size or more.
        n_parts = max(1, (stop - start) // max(_INTERP_PART, xp.size))
        for a, b in chunk_bounds(stop - start, n_parts):
            out[start + a:start + b] = np.interp(flat[start + a:start + b], xp, fp)

    run_in_threads([(lambda start=start, stop=stop: piece(start, stop))
                    for start, stop in chunk_bounds(flat.size, n_threads)])
    return out.reshape(x.shape)
