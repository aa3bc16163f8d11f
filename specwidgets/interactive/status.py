"""Busy indicator, timing and error banner shared by the widgets of one state.

Every widget callback runs through :meth:`StatusBar.guard`: an exception
becomes a message in the banner instead of a traceback in the kernel log,
and the view keeps what it showed before.

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> from specwidgets.interactive.state import SkyState
>>> frames = make_synthetic_longslit(shape=(40, 200), n_arc_lines=8, seed=1)
>>> state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows])
>>> status = StatusBar(state)
>>> state.mask_region = [(0, 40)]           # refused by the state
>>> "covers every" in status.banner.value
True
>>> status.guard(lambda: 1 / 0)()           # a failing callback: reported, not raised
>>> "ZeroDivisionError" in status.banner.value
True
"""

from __future__ import annotations

import functools
import html
import logging
import time
from contextlib import contextmanager

import ipywidgets

from ..core import _timing
from ..display.debounce import Debounced
from .state import require_state

__all__ = ["StatusBar"]

log = logging.getLogger(__name__)

_BANNER_STYLE = (
    "background:#fde8e8;border:1px solid #e0a0a0;color:#8a1c1c;"
    "padding:4px 8px;border-radius:3px;margin:2px 0"
)


def _describe(error):
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


class StatusBar(ipywidgets.VBox):
    """What the state is doing, how long the last step took, and what went wrong.

    Parameters
    ----------
    state : SkyState
    follow_delay : float
        Seconds to wait, in a running kernel, before showing a finished
        step's outcome ("ready" or the fit's warnings, and its noise model;
        "computing..." shows at once). Reading them makes the fit's quality
        report when the state left it for later: beside a picture of the
        new result, the picture reaches the page first.

    Attributes
    ----------
    busy_label : ipywidgets.HTML
        "computing..." while the state (or a view) works; else "ready" and the
        last duration, or, when the fit flags itself as suspect
        (``result.quality.suspect``), its warnings instead of "ready"; "no
        sky fit" before a first fit, and "last change not applied" while the
        state's error stands (its last good result is shown).
    noise_label : ipywidgets.HTML
        The noise model the current fit used and where it came from.
    banner : ipywidgets.HTML
        The state's error (its last good result stays shown) and any widget error.
    widget_error : str
        The last error of a widget callback ("" when the last one succeeded).
    """

    def __init__(self, state, follow_delay=0.0, **kwargs):
        require_state(state, "StatusBar")
        self.state = state
        self.widget_error = ""
        self._working = 0
        self._depth = 0
        self._reported = False
        self.busy_label = ipywidgets.HTML(layout=ipywidgets.Layout(min_width="14em"))
        self.noise_label = ipywidgets.HTML()
        self.banner = ipywidgets.HTML(layout=ipywidgets.Layout(display="none"))
        super().__init__(children=[self.busy_label, self.noise_label, self.banner], **kwargs)
        self._show_outcome = Debounced(self._refresh_busy, delay=follow_delay)
        state.observe(self._on_state, names=["busy", "last_duration"])
        if state.has_trait("result"):
            state.observe(self._on_state, names=["result"])
        state.observe(self._refresh_banner, names=["error"])
        state.observe(self._on_state, names=["error"])
        self._refresh_busy()
        self._refresh_banner()

    # ------------------------------------------------------------------ busy
    @property
    def busy(self):
        return bool(self.state.busy or self._working)

    @contextmanager
    def working(self):
        """Mark the views as busy while a block runs (nested blocks are fine)."""
        self._working += 1
        self._refresh_busy()
        try:
            yield
        finally:
            self._working -= 1
            self._refresh_busy()

    def _on_state(self, change):
        if self.busy:
            self._show_outcome.cancel()
            self._refresh_busy()
        else:
            self._show_outcome()

    def _refresh_busy(self, change=None):
        try:
            if self.busy:
                # U+25CF, in every text font: the hourglass U+23F3 needs an emoji font.
                text = "<span style='color:#e08000'>&#9679;</span> <b>computing&hellip;</b>"
            else:
                ms = 1000.0 * self.state.last_duration
                if getattr(self.state, "result", True) is None:
                    # Nothing fit yet (the banner says why): not "ready".
                    text = "<span style='color:#8a1c1c'>&#9888; <b>no sky fit</b></span>"
                elif getattr(self.state, "error", ""):
                    # The last change failed; its result is the one before it
                    # (whose own warnings return when the error is cleared).
                    text = (f"<span style='color:#8a1c1c'>&#9888; <b>last change not applied</b></span>: "
                            f"showing the last good fit &middot; last step {ms:.0f} ms")
                elif (warnings := self.quality_warnings) is not None:
                    # Sentences as they are ("...does.; On the..." read badly joined by "; ").
                    listed = " ".join(html.escape(w if w.rstrip().endswith((".", "!", "?")) else w.rstrip() + ".")
                                      for w in warnings)
                    text = (
                        f"<span style='color:#8a4b00'>&#9888; <b>suspect fit</b>: {listed}</span>"
                        f" &middot; last step {ms:.0f} ms"
                    )
                else:
                    text = f"&#10003; ready{self._bad_columns_text()} &middot; last step {ms:.0f} ms"
            self.busy_label.value = f"<span style='font-size:90%'>{text}</span>"
            if not self.busy:  # while computing, the last fit's noise model stays shown
                self._refresh_noise()
        except Exception:  # noqa: BLE001 - the indicator must never break a callback
            log.debug("busy indicator failed", exc_info=True)

    def _bad_columns_text(self):
        """`` · columns 12, 40 dead or hot (left out)`` for a fit that found some (not a warning), else ``""``."""
        try:
            quality = getattr(getattr(self.state, "result", None), "quality", None)
        except Exception:  # noqa: BLE001 - a report made on first access failed: quality_warnings says so
            return ""
        columns = tuple(getattr(quality, "bad_columns", ()) or ()) if not isinstance(quality, (list, tuple)) else ()
        if not columns:
            return ""
        listed = ", ".join(map(str, columns[:6])) + (f" and {len(columns) - 6} more" if len(columns) > 6 else "")
        return f" &middot; column{'s' if len(columns) > 1 else ''} {listed} dead or hot (left out)"

    @property
    def quality_warnings(self):
        """The current fit's warnings when it flags itself suspect, else None.

        Read from ``state.result.quality`` (``suspect``, ``warnings``); a
        result without a quality report is never called suspect here.
        """
        result = getattr(self.state, "result", None)
        try:
            quality = getattr(result, "quality", None) if result is not None else None
        except Exception as exc:  # noqa: BLE001 - a report made on first access (assess_later) failed
            log.debug("quality report failed", exc_info=True)
            return [f"its quality report failed ({_describe(exc)}): check this fit before using it"]
        if isinstance(quality, (list, tuple)):  # one report per exposure
            reports = [q for q in quality if getattr(q, "suspect", False)]
            if not reports:
                return None
            return [str(w) for q in reports for w in (getattr(q, "warnings", None) or [])] or [
                "the fit flags itself as suspect"
            ]
        if quality is None or not getattr(quality, "suspect", False):
            return None
        return [str(w) for w in (getattr(quality, "warnings", None) or [])] or ["the fit flags itself as suspect"]

    @property
    def noise_text(self):
        """One line on the noise model of the current fit ("" before a fit)."""
        model = getattr(self.state, "noise_model", None)
        if not model:
            return ""
        parts = []
        if model.get("read_noise") is not None:
            parts.append(f"read noise {float(model['read_noise']):.3g} e-")
        if model.get("gain") is not None:
            gain = float(model["gain"])
            source = str(model.get("source") or "")
            # Frames a loader read in electrons: the header's (or instrument's)
            # gain was applied then, so the fit's is 1, not the header's value.
            converted = (gain == 1.0 and "gain" in source.lower() and "estimated" not in source
                         and getattr(getattr(self.state, "science", None), "unit", None) == "electron")
            parts.append("gain 1 e-/unit (the frames' gain applied when they were read: data in e-)" if converted
                         else f"gain {gain:.3g} e-/unit")
        text = "noise model: " + ", ".join(parts)
        if model.get("source"):
            text += f" \u2014 {model['source']}"
        return text

    def _refresh_noise(self):
        text = self.noise_text
        self.noise_label.value = (
            f"<span style='font-size:80%;color:#555'>{html.escape(text)}</span>" if text else ""
        )

    # ---------------------------------------------------------------- errors
    def report(self, error):
        """Show ``error`` (an exception or text) from a widget callback in the banner."""
        try:
            self.widget_error = _describe(error)
            self._reported = True
            log.debug("widget callback failed: %s", self.widget_error, exc_info=isinstance(error, BaseException))
            self._refresh_banner()
        except Exception:  # noqa: BLE001
            log.debug("reporting failed", exc_info=True)

    def clear(self):
        """Forget the last widget error."""
        if self.widget_error:
            self.widget_error = ""
            self._refresh_banner()

    @property
    def messages(self):
        """The messages the banner shows, state first."""
        out = []
        if self.state.error:
            kept = " The last good result is still shown." if self.state.result is not None else ""
            out.append(f"{self.state.error}.{kept}" if not self.state.error.endswith(".") else self.state.error + kept)
        if self.widget_error:
            out.append(self.widget_error)
        return out

    def _refresh_banner(self, change=None):
        try:
            messages = self.messages
            if not messages:
                self.banner.value = ""
                self.banner.layout.display = "none"
                return
            body = "<br>".join("&#9888; " + html.escape(m) for m in messages)
            self.banner.value = f"<div style='{_BANNER_STYLE}'>{body}</div>"
            self.banner.layout.display = None
        except Exception:  # noqa: BLE001
            log.debug("banner update failed", exc_info=True)

    def guard(self, func):
        """Wrap a callback: exceptions are reported in the banner, never raised.

        A call that succeeds clears an earlier widget error: the banner
        describes the latest action.
        """

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            outermost = self._depth == 0
            if outermost:
                self._reported = False
            self._depth += 1
            start = time.perf_counter() if outermost and _timing.enabled() else None
            try:
                out = func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user instead
                self.report(exc)
                return None
            finally:
                self._depth -= 1
                if start is not None:
                    _timing.record("callback", time.perf_counter() - start, name=func.__qualname__)
            # An inner callback may have reported while this one went on.
            if outermost and not self._reported:
                self.clear()
            return out

        return wrapper
