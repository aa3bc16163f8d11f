"""Share work among threads without numba's ``parallel=True``.

A ``parallel=True`` kernel costs seconds of extra compilation on first use
(numba's parfor lowering), which every new user waits for. The kernels are
compiled with ``nogil=True`` instead, and these helpers run chunks of their
work in ordinary Python threads: the same parallel speed on the cores, at
the compile cost of the serial kernel.
"""

from __future__ import annotations

__all__ = ["chunk_bounds", "run_in_threads"]


def chunk_bounds(n, n_chunks):
    """``[(start, stop), ...]``: ``range(n)`` cut into ``n_chunks`` contiguous, near-equal pieces.

    Examples
    --------
    >>> chunk_bounds(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    return [(c * n // n_chunks, (c + 1) * n // n_chunks) for c in range(n_chunks)]


def run_in_threads(tasks):
    """Call every zero-argument callable in ``tasks`` concurrently; their results, in order.

    The first runs in the calling thread, the others each in a thread of
    their own; an exception in any is raised here once all have finished.

    Examples
    --------
    >>> run_in_threads([lambda: 1, lambda: 2, lambda: 3])
    [1, 2, 3]
    """
    tasks = list(tasks)
    if len(tasks) <= 1:
        return [task() for task in tasks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(tasks) - 1) as pool:
        futures = [pool.submit(task) for task in tasks[1:]]
        first = tasks[0]()
        return [first] + [future.result() for future in futures]
