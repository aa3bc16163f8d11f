"""Mouse and keyboard in the browser: a cursor readout under pan/zoom, and shortcut keys.

bqplot's ``PanZoom`` lays an event rectangle over the plot area, so marks
below it get no hover events: a readout built from mark hovers stops
working as soon as wheel zoom and drag pan are on. The browser's own
``mousemove`` still bubbles up to the figure's element, and `ipyevents
<https://github.com/mwcraig/ipyevents>`_ forwards it to the kernel;
:class:`CursorReadout` turns its position in the element into data
coordinates with the figure's margins and scales. ipyevents is optional:
without it :data:`HAVE_IPYEVENTS` is False, the image readout falls back to
mark hovers (which pan/zoom blocks) and Ctrl-Z does nothing (the Undo
button still works).

Examples
--------
>>> import bqplot
>>> x, y = bqplot.LinearScale(min=0.0, max=100.0), bqplot.LinearScale(min=0.0, max=10.0)
>>> fig = bqplot.Figure(fig_margin={"top": 10, "bottom": 10, "left": 10, "right": 10},
...                     axes=[bqplot.Axis(scale=x), bqplot.Axis(scale=y, side="left")])
>>> seen = []
>>> readout = CursorReadout(fig, x, y, lambda cx, cy: seen.append((cx, cy)))
>>> readout.handle({"type": "mousemove", "relativeX": 60, "relativeY": 60,
...                 "boundingRectWidth": 120, "boundingRectHeight": 120})
>>> seen
[(50.0, 5.0)]
"""

from __future__ import annotations

import logging

__all__ = ["HAVE_IPYEVENTS", "CursorReadout", "KeyShortcuts", "data_position"]

log = logging.getLogger(__name__)

try:
    from ipyevents import Event as _Event
except ImportError:  # pragma: no cover - depends on the machine
    _Event = None

#: True when ipyevents is installed (readouts under pan/zoom, Ctrl-Z).
HAVE_IPYEVENTS = _Event is not None

# Mouse positions sent per second at most: a readout needs no more.
_MOUSEMOVE_WAIT_MS = 60


def data_position(event, figure, x_scale, y_scale):
    """Data ``(x, y)`` under the mouse of an ipyevents mouse ``event`` on ``figure``, or None.

    The event gives the position in the figure's element and the element's
    size; the plot area is that size less ``figure.fig_margin``, mapped
    linearly onto the scales' ``min``..``max`` (y grows upwards).
    """
    try:
        px, py = float(event["relativeX"]), float(event["relativeY"])
        width, height = float(event["boundingRectWidth"]), float(event["boundingRectHeight"])
    except (KeyError, TypeError, ValueError):
        return None
    margin = figure.fig_margin or {}
    left, right = margin.get("left", 0), margin.get("right", 0)
    top, bottom = margin.get("top", 0), margin.get("bottom", 0)
    plot_w, plot_h = width - left - right, height - top - bottom
    if plot_w <= 0 or plot_h <= 0 or None in (x_scale.min, x_scale.max, y_scale.min, y_scale.max):
        return None
    fx, fy = (px - left) / plot_w, (py - top) / plot_h
    if not (0.0 <= fx <= 1.0 and 0.0 <= fy <= 1.0):
        return None  # over the axes or the colorbar
    x = x_scale.min + fx * (x_scale.max - x_scale.min)
    y = y_scale.max - fy * (y_scale.max - y_scale.min)
    return float(x), float(y)


class CursorReadout:
    """Call ``callback(x, y)`` with the data position under the mouse on ``figure``.

    Parameters
    ----------
    figure : bqplot.Figure
    x_scale, y_scale : bqplot.LinearScale
        The scales of the plot area.
    callback : callable
        ``callback(x, y)`` in data coordinates; ``callback(None, None)``
        when the mouse leaves the plot area.

    Attributes
    ----------
    event : ipyevents.Event or None
        The browser-event widget (None without ipyevents).
    """

    def __init__(self, figure, x_scale, y_scale, callback):
        self.figure, self.x_scale, self.y_scale, self.callback = figure, x_scale, y_scale, callback
        self.event = None
        if _Event is not None:
            self.event = _Event(
                source=figure, watched_events=["mousemove", "mouseleave"],
                throttle_or_debounce="throttle", wait=_MOUSEMOVE_WAIT_MS,
            )
            self.event.on_dom_event(self.handle)

    def handle(self, event):
        """Handle one ipyevents event dict (what the browser sends)."""
        if event.get("type") == "mouseleave":
            self.callback(None, None)
            return
        position = data_position(event, self.figure, self.x_scale, self.y_scale)
        if position is None:
            self.callback(None, None)
        else:
            self.callback(*position)

    def close(self):
        if self.event is not None:
            self.event.close()


class KeyShortcuts:
    """Ctrl-Z / Ctrl-Shift-Z / Ctrl-Y (Cmd on a Mac) over some widgets call ``undo`` / ``redo``.

    ipyevents captures every key press on the page while the pointer is over
    a watched widget (and stops it there), so only widgets without text
    fields should be watched: the figures. A text field keeps its own Ctrl-Z.

    Parameters
    ----------
    widgets : sequence of ipywidgets.DOMWidget
        Watched now; :meth:`add` watches more (e.g. a figure shown later).
    undo, redo : callable
    """

    def __init__(self, widgets, undo, redo):
        self.undo, self.redo = undo, redo
        self.events = []
        for widget in widgets:
            self.add(widget)

    def add(self, widget):
        """Watch key presses while the pointer is over ``widget`` (no-op without ipyevents)."""
        if _Event is None:
            return
        event = _Event(source=widget, watched_events=["keydown"], ignore_modifier_key_events=True)
        event.on_dom_event(self.handle)
        self.events.append(event)

    def handle(self, event):
        """Handle one ipyevents key event dict; returns what it did ("undo", "redo" or None)."""
        if event.get("type") != "keydown" or not (event.get("ctrlKey") or event.get("metaKey")):
            return None
        key = str(event.get("key", "")).lower()
        if key == "z" and not event.get("shiftKey"):
            self.undo()
            return "undo"
        if key == "y" or (key == "z" and event.get("shiftKey")):
            self.redo()
            return "redo"
        return None

    def close(self):
        for event in self.events:
            event.close()
        self.events = []
