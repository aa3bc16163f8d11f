"""Undo and redo of a state's edits (mask ranges, warp guesses).

:class:`History` watches some input traits of a
:class:`~specwidgets.interactive.state.SkyState` and remembers their previous values;
:meth:`History.undo` puts the last one back (the state recomputes as for any
edit) and :meth:`History.redo` re-applies it.

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> from specwidgets.interactive.state import SkyState
>>> frames = make_synthetic_longslit(shape=(40, 300), n_arc_lines=8, seed=1)
>>> state = SkyState(frames.science, frames.arc, mask_region=[(10, 20)])
>>> history = History(state)
>>> state.mask_region = [(12, 25)]
>>> history.undo(), state.masks
('mask_region', [(10, 20)])
>>> history.redo(), state.masks
('mask_region', [(12, 25)])
"""

from __future__ import annotations

import copy

import traitlets as tl

__all__ = ["History"]


class History(tl.HasTraits):
    """Undo/redo stacks of a state's edits.

    Parameters
    ----------
    state : SkyState
    names : sequence of str
        The traits whose changes can be undone.
    limit : int
        Changes remembered at most.

    Attributes
    ----------
    can_undo, can_redo : bool
        Whether there is something to undo / redo (buttons follow them).
    """

    can_undo = tl.Bool(False)
    can_redo = tl.Bool(False)

    def __init__(self, state, names=("mask_region", "guesses"), limit=100):
        super().__init__()
        self.state = state
        self.names = tuple(names)
        self.limit = int(limit)
        self._undo = []  # (name, value before the change, value after it)
        self._redo = []
        self._applying = False
        state.observe(self._on_change, names=list(self.names))

    def _on_change(self, change):
        if self._applying or change["old"] == change["new"]:
            return
        self._undo.append((change["name"], copy.deepcopy(change["old"]), copy.deepcopy(change["new"])))
        del self._undo[: -self.limit]
        self._redo.clear()
        self._sync()

    def _sync(self):
        self.can_undo, self.can_redo = bool(self._undo), bool(self._redo)

    def _apply(self, name, value):
        self._applying = True
        try:
            setattr(self.state, name, copy.deepcopy(value))
        finally:
            self._applying = False

    def undo(self):
        """Put back the value before the last change; returns its trait name (None: nothing to undo)."""
        if not self._undo:
            return None
        name, before, after = self._undo.pop()
        self._redo.append((name, before, after))
        self._apply(name, before)
        self._sync()
        return name

    def redo(self):
        """Re-apply the last undone change; returns its trait name (None: nothing to redo)."""
        if not self._redo:
            return None
        name, before, after = self._redo.pop()
        self._undo.append((name, before, after))
        self._apply(name, after)
        self._sync()
        return name

    def close(self):
        self.state.unobserve(self._on_change, names=list(self.names))
