"""One value for a set of row ranges: the mask over the trace, a crop.

:class:`RowRanges` is what the state, :func:`~specwidgets.core.sky.api.fit_sky`,
the :class:`~specwidgets.core.sky.api.SkyResult`, the page, the session file,
batch and the FITS header (``SWMASK``) hold. It is immutable, parses every
form a user or a file gives (text ``"20:100, 104:113"``, a slider's
``(start, stop)``, a list of pairs, a header card), resolves ``None`` ends
against a frame height, and prints back to the text it was read from.

Rules (chosen once, here):

- rows count from 0; a range ``a:b`` is rows ``a .. b-1`` (a Python slice);
- a blank end (``None``) is the frame's edge; a negative row is refused (it is
  far more often a typo than "from the end"; write ``"700:"`` for the end);
- ``start < stop`` for every range;
- when resolved against a frame height, ranges are sorted, ranges sharing rows
  are merged into one (they mask the same rows), ranges that only touch stay
  two, every range must lie inside the frame, and together they may not cover
  every row (a sky fit would have no sky left).

Examples
--------
>>> r = RowRanges("104:113, 20:100")
>>> r
RowRanges('104:113,20:100')
>>> r.resolve(200)
RowRanges('20:100,104:113', n_rows=200)
>>> RowRanges((5, None)).resolve(50).pairs
((5, 50),)
>>> RowRanges([(10, 30), (25, 40)]).resolve(50)       # shared rows: merged
RowRanges('10:40', n_rows=50)
>>> RowRanges("20:100") == [(20, 100)], str(RowRanges(None))
(True, 'none')
>>> RowRanges("100:20")
Traceback (most recent call last):
...
ValueError: mask_region (100, 20) is reversed: start must be below stop
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["RowRanges"]

_ITEM = re.compile(r"\s*(-?\d*)\s*(?::|\.\.)\s*(-?\d*)\s*")
# The page's older single-range forms: "20, 100" and "20-100".
_LEGACY = re.compile(r"\s*(\d+)\s*(?:,|-)\s*(\d+)\s*")


def _is_row(value):
    return value is None or (isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)))


def _is_pair(value):
    return (
        isinstance(value, (Sequence, np.ndarray))
        and not isinstance(value, (str, bytes))
        and len(value) == 2
        and all(_is_row(v) for v in value)
    )


class RowRanges:
    """An immutable, validated set of ``(start, stop)`` row ranges.

    Parameters
    ----------
    ranges : str, (int, int), list of (int, int), RowRanges or None
        Text ``"20:100, 104:113"`` (``"none"`` or blank: no range), one pair
        (a slider's value; ``(None, None)`` is no range), a list of pairs, or
        another RowRanges (returned as is by :meth:`coerce`). A ``None`` end
        is the frame's edge.
    n_rows : int, optional
        Frame height: resolve now (see :meth:`resolve`).
    name : str
        The argument's name in error messages.

    Raises
    ------
    TypeError
        Not text, a pair or a list of pairs of integers.
    ValueError
        Text that is not ``start:stop`` items, a negative row, a reversed or
        empty range; with ``n_rows``: see :meth:`resolve`.

    Examples
    --------
    >>> RowRanges([(1, 3), (6, 8)]).rows(10).astype(int).tolist()
    [0, 1, 1, 0, 0, 0, 1, 1, 0, 0]
    >>> RowRanges(":12").text, RowRanges((None, None)).text
    (':12', 'none')
    """

    __slots__ = ("_pairs", "_n_rows")

    def __init__(self, ranges=None, n_rows=None, *, name="mask_region"):
        if isinstance(ranges, RowRanges):
            pairs = ranges._pairs
        else:
            pairs = _pairs_of(ranges, name)
        self._pairs = pairs
        self._n_rows = None
        if n_rows is not None:
            resolved = self.resolve(n_rows, name=name)
            self._pairs, self._n_rows = resolved._pairs, resolved._n_rows

    # ---------------------------------------------------------- constructors
    @classmethod
    def coerce(cls, value, name="mask_region", *, text=True):
        """``value`` as a RowRanges: the same object when it already is one.

        ``text=False`` refuses strings with a TypeError (the numeric API, as
        the seed's ``mask_region``, takes pairs).
        """
        if isinstance(value, cls):
            return value
        if not text and isinstance(value, (str, bytes)):
            raise TypeError(
                f"{name} must be a (start, stop) pair of row indices or a list of such pairs; got "
                f"{value!r} (for text, pass specwidgets.RowRanges({value!r}))"
            )
        return cls(value, name=name)

    @classmethod
    def parse(cls, text, name="mask_region"):
        """Ranges from text: ``"20:100, 104:113"``, ``"5:"``, ``":12"``, ``"none"``.

        >>> RowRanges.parse("20:100; 104..113").pairs
        ((20, 100), (104, 113))
        >>> RowRanges.parse("20, 100").pairs       # the page's single-range form
        ((20, 100),)
        """
        if not isinstance(text, str):
            raise TypeError(f"{name} must be text like '20:100, 104:113'; got {text!r}")
        return cls(text, name=name)

    @classmethod
    def from_header(cls, header, key="SWMASK"):
        """The ranges recorded in a FITS header card (as :meth:`header_value` writes).

        ``header`` is a header (or dict) holding ``key``, or the card's value.

        >>> RowRanges.from_header({"SWMASK": "20:100,104:113"}).pairs
        ((20, 100), (104, 113))
        """
        if isinstance(header, str):
            value = header
        else:
            try:
                value = header[key]
            except KeyError:
                raise ValueError(f"the header has no {key} card (row ranges)") from None
        return cls(str(value), name=key)

    # ------------------------------------------------------------- resolving
    def resolve(self, n_rows, name="mask_region"):
        """These ranges in a frame of ``n_rows`` rows: ints, sorted, overlaps merged.

        Returns ``self`` when already resolved for ``n_rows`` (so one value
        passes unchanged from the state to the fit and into its result).

        Raises
        ------
        ValueError
            A range outside ``0..n_rows``, or the ranges covering every row.
        """
        if isinstance(n_rows, bool) or not isinstance(n_rows, (numbers.Integral, np.integer)) or n_rows < 1:
            raise TypeError(f"n_rows must be a positive integer (the frame height); got {n_rows!r}")
        n_rows = int(n_rows)
        if self._n_rows == n_rows:
            return self
        spans = []
        for start, stop in self._pairs:
            start = 0 if start is None else start
            stop = n_rows if stop is None else stop
            if stop > n_rows or start >= n_rows:
                raise ValueError(
                    f"{name} ({start}, {stop}) is out of range: the images have "
                    f"{n_rows} rows (valid rows 0..{n_rows})"
                )
            spans.append((start, stop))
        spans.sort()
        merged = []
        for start, stop in spans:
            if merged and start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            else:
                merged.append((start, stop))
        if sum(b - a for a, b in merged) >= n_rows:
            raise ValueError(
                f"{name} {[tuple(p) for p in spans]} covers every one of the {n_rows} rows: "
                "no sky rows are left to estimate the background from"
            )
        out = object.__new__(RowRanges)
        out._pairs, out._n_rows = tuple(merged), n_rows
        return out

    @property
    def n_rows(self):
        """The frame height these ranges were resolved against (None: not yet)."""
        return self._n_rows

    @property
    def pairs(self):
        """The ranges as a tuple of ``(start, stop)`` tuples."""
        return self._pairs

    def rows(self, n_rows=None):
        """Boolean array of ``n_rows`` (default: the resolved height): True on the rows in a range."""
        if n_rows is None:
            if self._n_rows is None:
                raise ValueError("rows() needs n_rows: these ranges are not resolved against a frame height")
            n_rows = self._n_rows
        resolved = self.resolve(n_rows)
        masked = np.zeros(resolved._n_rows, bool)
        for start, stop in resolved._pairs:
            masked[start:stop] = True
        return masked

    # --------------------------------------------------------------- editing
    def replace(self, index, pair):
        """A copy with range ``index`` set to ``pair`` (appended when ``index == len(self)``)."""
        pairs = list(self._pairs)
        if not 0 <= index <= len(pairs):
            raise IndexError(f"range index {index} is outside 0..{len(pairs)}")
        new = _pairs_of(pair, "mask range")
        if len(new) != 1:
            raise ValueError(f"replace() takes one (start, stop) range; got {pair!r}")
        pairs[index:index + 1] = new
        return _rebuild(pairs, None)  # every pair checked already: no second parse

    def remove(self, index):
        """A copy without range ``index``."""
        pairs = list(self._pairs)
        del pairs[index]
        return _rebuild(pairs, None)

    def index_of(self, row):
        """Index of the range holding ``row`` (None if none does)."""
        for i, (start, stop) in enumerate(self._pairs):
            if (start is None or start <= row) and (stop is None or row < stop):
                return i
        return None

    # -------------------------------------------------------------- printing
    @property
    def text(self):
        """Slice text ``"20:100,104:113"`` (``"none"`` for no range); parses back to an equal value."""
        if not self._pairs:
            return "none"
        return ",".join(f"{'' if a is None else a}:{'' if b is None else b}" for a, b in self._pairs)

    def header_value(self):
        """The FITS card value (the :attr:`text`)."""
        return self.text

    def to_list(self):
        """``[(start, stop), ...]``: what the seed's ``mask_ranges`` returns."""
        return list(self._pairs)

    def __str__(self):
        return self.text

    def __repr__(self):
        height = "" if self._n_rows is None else f", n_rows={self._n_rows}"
        return f"RowRanges({self.text!r}{height})" if self._pairs else f"RowRanges(None{height})"

    # ------------------------------------------------------ sequence of pairs
    def __len__(self):
        return len(self._pairs)

    def __iter__(self):
        return iter(self._pairs)

    def __getitem__(self, index):
        return self._pairs[index]

    def __bool__(self):
        return bool(self._pairs)

    def __eq__(self, other):
        """Equal to another RowRanges with the same ranges, or to a list/tuple of the same pairs."""
        if isinstance(other, RowRanges):
            return self._pairs == other._pairs
        if isinstance(other, (list, tuple)):
            try:
                return self._pairs == tuple(tuple(p) for p in other)
            except TypeError:
                return False
        return NotImplemented

    def __hash__(self):
        return hash(self._pairs)

    def __reduce__(self):
        return (_rebuild, (self._pairs, self._n_rows))


def _rebuild(pairs, n_rows):
    out = object.__new__(RowRanges)
    out._pairs, out._n_rows = tuple(tuple(p) for p in pairs), n_rows
    return out


def _pairs_of(value, name):
    """The checked ``(start, stop)`` tuples of anything :class:`RowRanges` accepts."""
    if value is None:
        return ()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        raw = _parse_text(value, name)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.ndim in (1, 2):
        raw = [tuple(value.tolist())] if value.ndim == 1 else [tuple(p) for p in value.tolist()]
    elif _is_pair(value):
        raw = [tuple(value)]
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
        raw = []
        for item in value:
            if isinstance(item, str):
                raw.extend(_parse_text(item, name))
            elif _is_pair(item):
                raw.append(tuple(item))
            else:
                raise TypeError(
                    f"{name} must be a (start, stop) pair of row indices or a list of such pairs; "
                    f"got the item {item!r}"
                )
    else:
        raise TypeError(f"{name} must be a (start, stop) pair of row indices or a list of such pairs; got {value!r}")
    out = []
    for start, stop in raw:
        if start is None and stop is None:
            continue  # (None, None): the seed's "no mask"
        start = None if start is None else int(start)
        stop = None if stop is None else int(stop)
        if (start is not None and start < 0) or (stop is not None and stop < 0):
            raise ValueError(
                f"{name} ({start}, {stop}) is out of range: rows count from 0 "
                "(leave an end blank, or None, for the frame's edge)"
            )
        if start is not None and stop is not None:
            if stop < start:
                raise ValueError(f"{name} ({start}, {stop}) is reversed: start must be below stop")
            if stop == start:
                raise ValueError(f"{name} ({start}, {stop}) is empty: it masks no row")
        out.append((start, stop))
    return tuple(out)


def _parse_text(text, name):
    stripped = text.strip()
    if stripped.lower() in ("", "none", "null"):
        return []
    legacy = _LEGACY.fullmatch(stripped)
    if legacy is not None:
        return [(int(legacy.group(1)), int(legacy.group(2)))]
    out = []
    for item in re.split(r"[,;]", stripped):
        match = _ITEM.fullmatch(item)
        if match is None or not item.strip():
            raise ValueError(
                f"{name} {text!r} is not row-range text: write start:stop items separated by commas, "
                "e.g. 20:100, 104:113 (an end left blank is the frame's edge)"
            )
        start, stop = match.groups()
        if start == "-" or stop == "-":
            raise ValueError(f"{name} {text!r}: {item.strip()!r} is not start:stop")
        out.append((int(start) if start else None, int(stop) if stop else None))
    return out
