"""Coalesce rapid calls into one, and keep widget callbacks from raising.

In a running kernel the front end can send many changes in a burst (a
dragged pan, several clicks, arrow keys on a slider). :class:`Debounced`
waits until the burst is over and then calls its function once, with the
latest arguments, from the kernel's asyncio loop. Without a running loop
(a plain script, a test, a benchmark) it calls the function at once, so
the widgets can be driven synchronously.

Examples
--------
>>> calls = []
>>> push = Debounced(calls.append, delay=0.05)
>>> push(1); push(2)        # no event loop here: each call runs at once
>>> calls
[1, 2]
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["Debounced", "running_loop"]

log = logging.getLogger(__name__)


def running_loop():
    """The running asyncio loop, or None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Debounced:
    """Call ``func`` once after ``delay`` seconds without a new call.

    Parameters
    ----------
    func : callable
        Called with the arguments of the last call of a burst.
    delay : float
        Quiet time in seconds that ends a burst; 0 (or less): no waiting,
        each call runs at once, as without a loop.
    on_error : callable, optional
        Receives any exception ``func`` raises; without one the exception
        is logged. It never propagates: a deferred call has no caller to
        catch it, and in a kernel it would end up in the log.
    leading : bool
        Call on the next turn of the event loop, without waiting ``delay``,
        when nothing ran or waited within the last ``delay`` seconds (a
        single edit, e.g. a slider release, is not delayed); calls that
        follow within ``delay`` are coalesced as without it.

    Attributes
    ----------
    n_calls : int
        How many times ``func`` actually ran.

    Examples
    --------
    >>> import asyncio
    >>> seen = []
    >>> push = Debounced(seen.append, delay=0.01)
    >>> async def burst():
    ...     for v in range(5):
    ...         push(v)
    ...     await asyncio.sleep(0.05)
    >>> asyncio.run(burst())
    >>> seen, push.n_calls
    ([4], 1)
    >>> first = []
    >>> lead = Debounced(first.append, delay=0.05, leading=True)
    >>> async def two_turns():
    ...     lead(1); await asyncio.sleep(0)   # alone: runs on the next turn
    ...     lead(2); lead(3); await asyncio.sleep(0.1)
    >>> asyncio.run(two_turns())
    >>> first
    [1, 3]
    """

    def __init__(self, func, delay=0.05, on_error=None, leading=False):
        self.func = func
        self.delay = float(delay)
        self.on_error = on_error
        self.leading = bool(leading)
        self.n_calls = 0
        self._handle = None
        self._pending = None
        self._last = None  # loop time the last call ended

    @property
    def pending(self):
        """True while a call is waiting for the burst to end."""
        return self._handle is not None

    def __call__(self, *args, **kwargs):
        loop = running_loop()
        if loop is None or self.delay <= 0:
            self.cancel()
            self._invoke(args, kwargs)
            return
        self._pending = (args, kwargs)
        if (self.leading and self._handle is None
                and (self._last is None or loop.time() - self._last >= self.delay)):
            # On the next turn of the loop, not now: calls made in this same
            # turn (a burst set in one go) still coalesce into the last one.
            self._handle = loop.call_soon(self._fire)
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_later(self.delay, self._fire)

    def _fire(self):
        args, kwargs = self._pending
        self._handle = self._pending = None
        try:
            self._invoke(args, kwargs)
        finally:
            loop = running_loop()
            self._last = loop.time() if loop is not None else None

    def flush(self):
        """Run a waiting call now (e.g. before reading results)."""
        if self._handle is not None:
            self._handle.cancel()
            self._fire()

    def cancel(self):
        """Drop a waiting call."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._pending = None

    def _invoke(self, args, kwargs):
        self.n_calls += 1
        try:
            self.func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the kernel
            if self.on_error is not None:
                self.on_error(exc)
            else:
                log.exception("debounced call of %r failed", self.func)
