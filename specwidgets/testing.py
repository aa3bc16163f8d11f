"""Measure what the widgets send to the browser.

:class:`PayloadMeter` records every widget message sent while it is
active: state updates and custom messages (``Widget._send``) and the state
of newly opened widgets (``comm.create_comm``, e.g. the new
``ipywidgets.Image`` of each rendered picture), JSON plus binary buffers.
It works without a kernel, so tests and benchmarks can check the budget
of one interaction.

Examples
--------
>>> import ipywidgets
>>> slider = ipywidgets.IntSlider()
>>> with PayloadMeter() as meter:
...     slider.value = 3
>>> meter.n_messages, 0 < meter.total_bytes < 1000
(1, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import comm
import ipywidgets

__all__ = ["PayloadMeter", "Message"]


@dataclass
class Message:
    """One recorded message: ``kind`` is "update", "custom" or "open"."""

    kind: str
    widget: str
    json_bytes: int
    buffer_bytes: int

    @property
    def nbytes(self):
        return self.json_bytes + self.buffer_bytes


def _size(data, buffers):
    text = json.dumps(data, separators=(",", ":"), default=str)
    return len(text.encode()), sum(memoryview(b).nbytes for b in (buffers or ()))


class PayloadMeter:
    """Context manager counting the bytes the widgets send.

    Attributes
    ----------
    messages : list of Message
    """

    def __init__(self):
        self.messages = []
        self._saved = None

    def __enter__(self):
        send, create = ipywidgets.Widget._send, comm.create_comm
        meter = self

        def _send(widget, msg, buffers=None):
            meter.messages.append(Message(msg.get("method", "?"), type(widget).__name__, *_size(msg, buffers)))
            return send(widget, msg, buffers=buffers)

        def create_comm(*args, **kwargs):
            data = kwargs.get("data") or {}
            name = data.get("state", {}).get("_model_name", "?") if isinstance(data, dict) else "?"
            meter.messages.append(Message("open", name, *_size(data, kwargs.get("buffers"))))
            return create(*args, **kwargs)

        self._saved = (send, create)
        ipywidgets.Widget._send = _send
        comm.create_comm = create_comm
        return self

    def __exit__(self, *exc):
        ipywidgets.Widget._send, comm.create_comm = self._saved
        return False

    @property
    def n_messages(self):
        return len(self.messages)

    @property
    def total_bytes(self):
        """Bytes of every recorded message, JSON and buffers."""
        return sum(m.nbytes for m in self.messages)

    def by_widget(self):
        """Total bytes per widget class, largest first."""
        out = {}
        for m in self.messages:
            out[m.widget] = out.get(m.widget, 0) + m.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
