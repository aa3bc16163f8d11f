"""Pick the arc lines the warp model is fit to, and see how well it fits.

:class:`WarpGuessPicker` shows the arc's profile at the reference row with
the lines :func:`~specwidgets.find_cal_lines` found, and the guesses in use.
Clicking the profile adds a guess there (if a line is within the tolerance;
otherwise a message next to the profile says so); clicking a guess removes it. The
fitted line curves are drawn over the arc image, a table lists each line's
residual RMS, and a warning names what is wrong with a poor model (too few
lines, lines that scatter, a narrow span: the seed's "Bad Warp Models").

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> from specwidgets.interactive.state import SkyState
>>> frames = make_synthetic_longslit(shape=(40, 300), n_arc_lines=8, seed=1)
>>> state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows])
>>> picker = WarpGuessPicker(state)
>>> n = len(state.guesses)
>>> def click(x):
...     picker.click_mark._handle_custom_msgs(None, {"event": "element_click",
...                                                  "data": {"click_x": x, "click_y": 0.0}})
>>> click(150.0)                       # no arc line there: said, not added
>>> len(state.guesses) == n, "No arc line" in picker.click_message.value
(True, True)
>>> click(196.0)                       # next to a line
>>> len(state.guesses) == n + 1
True
"""

from __future__ import annotations

import html

import bqplot
import ipywidgets
import numpy as np
import traitlets as tl

from ..core.lines import find_peaks, robust_noise, row_profile
from ..display.debounce import Debounced
from ..display.plotting import plot_image
from ..display.raster import to_indexed_png
from .navigation import CursorReadout
from .state import require_state
from .status import StatusBar

__all__ = ["WarpGuessPicker"]

_USED = "#00e5ff"
_REJECTED = "#ff5252"
_GUESS_USED = "#2ca02c"
_GUESS_UNUSED = "#d62728"
_CURVE_POINTS = 40
# A click adds a guess only if the profile has a peak this many noise sigma
# above its surroundings within the tolerance: otherwise the warp fit would
# not find a line there and the guess would sit unused.
_CLICK_PEAK_SIGMA = 5.0
_WARN_STYLE = (
    "background:#fff4e0;border:1px solid #e8b060;color:#6b4200;padding:4px 8px;border-radius:3px"
)


def _transparent_png():
    palette = np.zeros((1, 4), np.uint8)
    return to_indexed_png(np.zeros((1, 1), np.uint8), palette)


class WarpGuessPicker(ipywidgets.VBox):
    """Arc profile with clickable guesses, fitted line curves, residuals and warnings.

    Parameters
    ----------
    state : SkyState
        Must hold an arc frame.
    status : StatusBar, optional
        Shared busy indicator and error banner (a new, shown one if not given).
    figsize : (float, float), optional
        Size of the arc image in inches.
    debounce : float
        Seconds of quiet before a burst of clicks refits the warp model (in a
        running kernel; without an event loop each click refits at once).
    image_scales : dict, optional
        ``{"x": LinearScale, "y": LinearScale}`` of another image of the same
        detector, shared by the arc image so that both zoom together.

    Attributes
    ----------
    profile_figure : bqplot.Figure
        The profile; ``click_mark`` (a transparent image under the curve)
        turns clicks into new guesses.
    profile_line : bqplot.Lines
    found_mark : bqplot.Scatter
        Lines found by ``find_cal_lines`` at ``std_variation``.
    guess_mark : bqplot.Scatter
        The guesses (green: used by the model, red: not); click one to remove it.
    arc_figure : specwidgets.display.plotting.ImageFigure
        The arc with ``curves_mark`` (fitted line curves) and ``ref_row_mark``.
    tolerance, threshold : ipywidgets.FloatSlider
        ``state.tolerance`` and ``state.std_variation`` (``continuous_update=False``).
    residuals : ipywidgets.HTML
        Per-line table: guess, fitted reference column, used, RMS residual.
    warning : ipywidgets.HTML
        Shown when ``state.warp_model.is_poor``, listing ``quality_warnings``.
    """

    def __init__(self, state, *, status=None, figsize=None, debounce=0.05, image_scales=None, **kwargs):
        require_state(state, "WarpGuessPicker")
        super().__init__(**kwargs)
        if state.arc is None:
            raise ValueError("the warp-guess picker needs an arc frame in the state")
        self.state = state
        self.own_status = status is None
        self.status = StatusBar(state) if status is None else status
        guard = self.status.guard
        self._pending = None
        n_rows, n_cols = state.shape
        self.ref_row = state.warp_model.ref_row if state.warp_model is not None else n_rows // 2
        self.profile, _ = row_profile(state.arc, self.ref_row)

        # ------------------------------------------------------ profile plot
        finite = self.profile[np.isfinite(self.profile)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        span = (hi - lo) or 1.0
        self._y_range = (lo - 0.05 * span, hi + 0.12 * span)
        px = bqplot.LinearScale(min=-0.5, max=n_cols - 0.5, allow_padding=False)
        py = bqplot.LinearScale(min=self._y_range[0], max=self._y_range[1], allow_padding=False)
        scales = {"x": px, "y": py}
        self.click_mark = bqplot.Image(
            image=ipywidgets.Image(value=_transparent_png(), format="png"),
            x=(-0.5, n_cols - 0.5), y=self._y_range, scales=scales,
        )
        self.profile_line = bqplot.Lines(
            x=np.arange(n_cols, dtype=np.float32), y=np.nan_to_num(self.profile).astype(np.float32),
            scales=scales, colors=["#333333"], stroke_width=1, interactions={},
        )
        self.found_mark = bqplot.Scatter(
            x=[], y=[], scales=scales, marker="triangle-down", colors=["#888888"], default_size=30,
            interactions={}, labels=["found lines"],
        )
        self.guess_mark = bqplot.Scatter(
            x=[], y=[], scales=scales, marker="diamond", colors=[_GUESS_USED], default_size=70,
            stroke="black", interactions={}, labels=["guesses"],
        )
        self.profile_figure = bqplot.Figure(
            marks=[self.click_mark, self.profile_line, self.found_mark, self.guess_mark],
            axes=[
                bqplot.Axis(scale=px, label="Column", grid_lines="none"),
                bqplot.Axis(scale=py, side="left", label="Counts", grid_lines="none", tick_format="~s"),
            ],
            title=f"Arc profile at row {self.ref_row}: click to add a guess, click a guess to remove it",
            fig_margin={"top": 40, "bottom": 45, "left": 75, "right": 30},
            padding_x=0.0, padding_y=0.0,
            layout=ipywidgets.Layout(height="260px"),
        )

        # --------------------------------------------------------- arc image
        # ``image_scales``: the image viewer's, so both views of the detector zoom together.
        self.arc_figure = plot_image(state.arc, norm="log", figsize=figsize, title="Arc with the fitted line curves",
                                     scales=image_scales)
        arc_scales = {"x": self.arc_figure.x_scale, "y": self.arc_figure.y_scale}
        self.curves_mark = bqplot.Lines(
            x=[], y=[], scales=arc_scales, colors=[_USED], stroke_width=1.2, interactions={},
            preserve_domain={"x": True, "y": True},
        )
        self.ref_row_mark = bqplot.Lines(
            x=[-0.5, n_cols - 0.5], y=[self.ref_row, self.ref_row], scales=arc_scales, colors=["white"],
            line_style="dashed", stroke_width=1, interactions={}, preserve_domain={"x": True, "y": True},
        )
        self.arc_figure.marks = [*self.arc_figure.marks, self.curves_mark, self.ref_row_mark]
        self.arc_readout = ipywidgets.HTML("<i>wheel: zoom, drag: pan (the Sky tab's image follows)</i>")
        self.arc_cursor = CursorReadout(self.arc_figure, self.arc_figure.x_scale, self.arc_figure.y_scale,
                                        self.status.guard(self._on_arc_cursor))

        # ----------------------------------------------------------- controls
        self.tolerance = ipywidgets.FloatSlider(
            value=state.tolerance, min=0.5, max=50.0, step=0.5, description="Tolerance [px]",
            continuous_update=False, style={"description_width": "110px"}, layout=ipywidgets.Layout(width="420px"),
        )
        self.threshold = ipywidgets.FloatSlider(
            value=state.std_variation, min=2.0, max=300.0, step=1.0, description="Threshold [σ]",
            continuous_update=False, style={"description_width": "110px"}, layout=ipywidgets.Layout(width="420px"),
        )
        self.click_message = ipywidgets.HTML()
        self.click_message.add_class("sw-click-message")
        self.reset_button = ipywidgets.Button(description="Use found lines", icon="refresh",
                                              layout=ipywidgets.Layout(width="150px"))
        self.residuals = ipywidgets.HTML()
        self.warning = ipywidgets.HTML(layout=ipywidgets.Layout(display="none"))

        self._commit = Debounced(self._commit_now, delay=debounce, on_error=self.status.report)
        self.click_mark.on_element_click(guard(self._on_profile_click))
        self.guess_mark.on_element_click(guard(self._on_guess_click))
        # Two-way: the sliders show the state's values and set them (a value
        # above a slider's range stays in the state; the slider shows its end).
        self._links = [tl.link((state, "tolerance"), (self.tolerance, "value")),
                       tl.link((state, "std_variation"), (self.threshold, "value"))]
        self.reset_button.on_click(guard(lambda _: self.use_found_lines()))
        state.observe(guard(self._on_guesses), names="guesses")
        state.observe(guard(self._on_lines), names=["lines"])
        state.observe(guard(self._on_warp), names="warp_model")

        self._draw_found()
        self._draw_guesses()
        self._draw_model()
        self.children = [
            *([self.status] if self.own_status else []),
            ipywidgets.HBox([self.tolerance, self.threshold, self.reset_button]),
            self.warning,
            self.click_message,
            self.profile_figure,
            self.arc_figure,
            self.arc_readout,
            ipywidgets.HTML("<b>Traced lines</b>"),
            self.residuals,
        ]

    def _on_arc_cursor(self, x, y):
        if x is None:
            return
        n_rows, n_cols = self.state.shape
        col, row = int(round(x)), int(round(y))
        if 0 <= col < n_cols and 0 <= row < n_rows:
            self.arc_readout.value = f"<code>row {row}, col {col}: arc = {self.state.arc[row, col]:.5g}</code>"

    # ------------------------------------------------------------ guesses
    @property
    def guesses(self):
        """The guesses shown: pending clicks included."""
        return list(self.state.guesses) if self._pending is None else list(self._pending)

    def line_near(self, x):
        """Column of the strongest profile peak within the tolerance of ``x``, or None.

        A peak counts if it stands ``_CLICK_PEAK_SIGMA`` noise sigma above
        the lowest point between it and the window's edges (its prominence).
        """
        tol = max(float(self.state.tolerance), 1.0)
        n = self.profile.size
        c0, c1 = max(0, int(np.floor(x - tol))), min(n, int(np.ceil(x + tol)) + 1)
        window = np.nan_to_num(self.profile[c0:c1], nan=np.nanmin(self.profile))
        if window.size < 3:
            return None
        noise = robust_noise(self.profile) or 1.0
        peaks, props = find_peaks(window, prominence=_CLICK_PEAK_SIGMA * noise)
        if peaks.size == 0:
            return None
        return float(c0 + peaks[np.argmax(props["prominences"])])

    def add_guess(self, x, check=True):
        """Add a guess at column ``x`` (what a click on the profile does).

        With ``check`` a guess is added only where the profile has a line
        within the tolerance; otherwise :attr:`click_message` says so and
        nothing changes. Returns True when the guess was added.
        """
        n_cols = self.state.shape[1]
        if not -0.5 <= x <= n_cols - 0.5:
            raise ValueError(f"a guess must lie on the arc's columns 0..{n_cols - 1}; got {x:.1f}")
        if check and self.line_near(x) is None:
            self.click_message.value = (
                f"<span style='color:#8a1c1c'>&#9888; No arc line within {self.state.tolerance:g} px of column "
                f"{x:.1f}: no guess added. Click on a peak of the profile (or raise the tolerance).</span>"
            )
            return False
        self.click_message.value = ""
        self._pending = self.guesses + [float(x)]
        self._draw_guesses()
        self._commit()
        return True

    def remove_guess(self, index):
        """Remove guess number ``index`` (what a click on a guess does)."""
        guesses = self.guesses
        del guesses[int(index)]
        self._pending = guesses
        self._draw_guesses()
        self._commit()

    def use_found_lines(self):
        """Make the found lines the guesses."""
        if self.state.lines is None:
            raise ValueError("no lines were found on the arc: lower the threshold")
        self._pending = [float(v) for v in self.state.lines]
        self._commit()

    def _commit_now(self):
        guesses, self._pending = self._pending, None
        if guesses is not None:
            self.state.guesses = guesses
        self._draw_guesses()

    def _on_profile_click(self, mark, content):
        data = content.get("data") or {}
        if "click_x" in data:
            self.add_guess(float(data["click_x"]))

    def _on_guess_click(self, mark, content):
        data = content.get("data") or {}
        if data.get("index") is not None:
            self.remove_guess(int(data["index"]))

    def _on_guesses(self, change):
        if self._pending is None:
            self._draw_guesses()

    # ------------------------------------------------------------ drawing
    def _height_at(self, x):
        cols = np.clip(np.rint(np.asarray(x, dtype=float)).astype(int), 0, self.profile.size - 1)
        return np.nan_to_num(self.profile[cols], nan=self._y_range[0]).astype(np.float32)

    def _on_lines(self, change):
        self._draw_found()

    def _draw_found(self):
        lines = self.state.lines
        x = np.empty(0, np.float32) if lines is None else np.asarray(lines, np.float32)
        with self.found_mark.hold_sync():
            self.found_mark.x = x
            self.found_mark.y = self._height_at(x) + np.float32(0.04 * (self._y_range[1] - self._y_range[0]))

    def _used_flags(self, guesses):
        model = self.state.warp_model
        if model is None or model.traces is None:
            return [True] * len(guesses)
        t = model.traces
        used = {round(float(g), 6): bool(u) for g, u in zip(t.guesses, t.used)}
        return [used.get(round(float(g), 6), False) for g in guesses]

    def _draw_guesses(self):
        guesses = self.guesses
        x = np.asarray(guesses, np.float32)
        colors = [_GUESS_USED if u else _GUESS_UNUSED for u in self._used_flags(guesses)]
        with self.guess_mark.hold_sync():
            self.guess_mark.x = x
            self.guess_mark.y = self._height_at(x)
            self.guess_mark.colors = colors or [_GUESS_USED]

    def _on_warp(self, change):
        self._draw_model()
        self._draw_guesses()

    def _draw_model(self):
        model = self.state.warp_model
        n_rows = self.state.shape[0]
        if model is None or model.traces is None:
            with self.curves_mark.hold_sync():
                self.curves_mark.x, self.curves_mark.y = [], []
            self.residuals.value = "<i>no traced lines</i>"
            self._show_warnings([])
            return
        t = model.traces
        keep = np.isfinite(t.ref_positions)
        rows = np.linspace(0, n_rows - 1, min(n_rows, _CURVE_POINTS))
        curves = model.line_curves(rows)[keep]
        with self.curves_mark.hold_sync():
            if curves.size:
                self.curves_mark.x = curves.astype(np.float32)
                self.curves_mark.y = np.broadcast_to(rows, curves.shape).astype(np.float32)
                self.curves_mark.colors = [_USED if u else _REJECTED for u in t.used[keep]]
            else:
                self.curves_mark.x, self.curves_mark.y = [], []
        self.residuals.value = _residual_table(t)
        self._show_warnings(model.quality_warnings)

    def _show_warnings(self, warnings):
        if not warnings:
            self.warning.value = ""
            self.warning.layout.display = "none"
            return
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        self.warning.value = (
            f"<div style='{_WARN_STYLE}'><b>&#9888; Poor warp model</b>: the effective pixels, and so "
            f"the sky, may be wrong.<ul style='margin:2px 0'>{items}</ul></div>"
        )
        self.warning.layout.display = None


def _residual_table(traces):
    """HTML table of the traced lines: guess, fitted column, used, RMS residual."""
    rows = []
    for g, x, u, r in zip(traces.guesses, traces.ref_positions, traces.used, traces.rms):
        bad = not u or not np.isfinite(r) or r > 0.25
        style = " style='color:#b00020'" if bad else ""
        x_text = f"{x:.3f}" if np.isfinite(x) else "not found"
        r_text = f"{r:.4f}" if np.isfinite(r) else "-"
        rows.append(
            f"<tr{style}><td>{g:.2f}</td><td>{x_text}</td><td>{'yes' if u else 'no'}</td><td>{r_text}</td></tr>"
        )
    head = "<tr><th>guess</th><th>x at ref. row</th><th>used</th><th>RMS [px]</th></tr>"
    return (
        "<div style='max-height:220px;overflow-y:auto'><table style='font-family:monospace;font-size:90%'>"
        f"{head}{''.join(rows)}</table></div>"
    )
