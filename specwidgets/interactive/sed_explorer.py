"""The super-sampled sky spectrum of one exposure, aggregated for display.

Every unmasked pixel is a sample at its effective position; a full Goodman
frame has ~1.8 million. :class:`SEDExplorer` never sends them: it draws,
per screen column of the visible range, the min/max envelope, the median
and the 99th percentile (:func:`~specwidgets.display.aggregate.aggregate_sed`),
on a log scale, with the sky model over it. Trace light in the sky rows
shows as an envelope far above the model; the rows that hold it are named
in a warning. Brushing a range of effective positions sets
:attr:`SEDExplorer.selected_range` when the mouse is released (the dashboard
outlines those pixels in the image viewer); zoom/pan mode re-aggregates the
visible range.

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> from specwidgets.interactive.state import SkyState
>>> frames = make_synthetic_longslit(shape=(40, 300), n_arc_lines=8, seed=1)
>>> state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows])
>>> sed = SEDExplorer(state, n_bins=200)
>>> sed.envelope.x.size <= 200
True
>>> sed.brush.brushing = True; sed.brush.selected = [100.0, 120.0]; sed.brush.brushing = False
>>> sed.selected_range
(100.0, 120.0)
"""

from __future__ import annotations

import bqplot
import ipywidgets
import numpy as np
import traitlets as tl

from ..core.sky.api import LEAK_NEAR_MASK, rows_from_mask
from ..display.aggregate import aggregate_sed, decimate_curve, leak_rows, row_ranges
from ..display.debounce import Debounced
from ..display.plotting import data_unit_label
from .state import require_state
from .status import StatusBar

__all__ = ["SEDExplorer"]

_FIG_MARGIN = {"top": 30, "bottom": 50, "left": 70, "right": 20}


def _swatch(color, dashed=False, band=False):
    if band:
        return f"<span style='display:inline-block;width:22px;height:9px;background:{color};opacity:.7'></span>"
    style = "dashed" if dashed else "solid"
    return f"<span style='display:inline-block;width:22px;border-top:2px {style} {color};vertical-align:middle'></span>"


# One HTML line instead of bqplot's legend, which would list the envelope's
# two edges and sit on top of the sky lines.
_LEGEND = (
    "<span style='font-size:85%'>"
    f"{_swatch('#9ecae1', band=True)} min-max of the samples per screen column &nbsp; "
    f"{_swatch('#f16913', dashed=True)} 99th percentile &nbsp; "
    f"{_swatch('#08306b')} median &nbsp; {_swatch('#e31a1c')} sky model"
    "</span>"
)


def _as_display(values):
    return np.ascontiguousarray(values, dtype=np.float32)


class SEDExplorer(ipywidgets.VBox):
    """Sky samples of the chosen exposure against effective position, with the sky model.

    Parameters
    ----------
    state : SkyState
    status : StatusBar, optional
        Shared busy indicator and error banner (a new, shown one if not given).
    n_bins : int
        Display bins over the visible range (about the plot width in pixels).
    height : str
        CSS height of the figure.
    debounce : float
        Seconds of quiet before a burst of zoom/pan changes re-aggregates
        (in a running kernel; without an event loop at once).
    follow_delay : float
        Seconds to wait after a new result before redrawing (in a running
        kernel; without an event loop at once). Beside an image of the same
        result (the dashboard), this lets the picture reach the page and be
        painted first: drawn at once, its message waits for this redraw's
        (the kernel's output thread needs the interpreter), and the page
        paints it only after handling these curves too.

    Attributes
    ----------
    selected_range : (float, float) or None
        The brushed effective-pixel range, set when the brush is released.
    aggregate : SEDAggregate or None
        What is drawn (per-bin min, max, median, 99th percentile, counts).
    leaking_rows : list of (int, int)
        Unmasked row ranges with light well above the sky model.
    figure : bqplot.Figure
    envelope, p99_line, median_line, model_line : bqplot.Lines
    brush : bqplot.interacts.BrushIntervalSelector
    panzoom : bqplot.interacts.PanZoom
    x_scale : bqplot.LinearScale
    y_scale : bqplot.LogScale
    """

    selected_range = tl.Tuple(default_value=None, allow_none=True)

    def __init__(self, state, *, status=None, n_bins=1000, height="320px", debounce=0.05, follow_delay=0.0,
                 **kwargs):
        require_state(state, "SEDExplorer")
        super().__init__(**kwargs)
        self.state = state
        self.own_status = status is None
        self.status = StatusBar(state) if status is None else status
        guard = self.status.guard
        self.n_bins = int(n_bins)
        self.aggregate = None
        self.leaking_rows = []
        self.n_aggregations = 0
        self._setting_range = False
        self._full_range = None
        self._info_base = ""

        self.x_scale = bqplot.LinearScale(allow_padding=False)
        self.y_scale = bqplot.LogScale()
        scales = {"x": self.x_scale, "y": self.y_scale}
        self.envelope = bqplot.Lines(
            x=[], y=[], scales=scales, fill="between", colors=["#6baed6", "#6baed6"],
            fill_colors=["#9ecae1", "#9ecae1"], fill_opacities=[0.55, 0.0], stroke_width=0.5, interactions={},
        )
        self.p99_line = bqplot.Lines(
            x=[], y=[], scales=scales, colors=["#f16913"], line_style="dashed", stroke_width=1,
            interactions={},
        )
        self.median_line = bqplot.Lines(
            x=[], y=[], scales=scales, colors=["#08306b"], stroke_width=1,
            interactions={},
        )
        self.model_line = bqplot.Lines(
            x=[], y=[], scales=scales, colors=["#e31a1c"], stroke_width=1.5,
            interactions={},
        )
        self.brush = bqplot.interacts.BrushIntervalSelector(scale=self.x_scale, color="#00bcd4")
        self.panzoom = bqplot.interacts.PanZoom(scales={"x": [self.x_scale]})
        self.figure = bqplot.Figure(
            marks=[self.envelope, self.p99_line, self.median_line, self.model_line],
            axes=[
                bqplot.Axis(scale=self.x_scale, label="Effective pixel", grid_lines="none"),
                bqplot.Axis(scale=self.y_scale, side="left", label=data_unit_label(state.science), grid_lines="none",
                            tick_format="~s"),
            ],
            interaction=self.brush,
            fig_margin=dict(_FIG_MARGIN),
            title="Super-sampled sky spectrum",
            layout=ipywidgets.Layout(height=height),
        )
        self.mode = ipywidgets.ToggleButtons(
            options=[("Brush", "brush"), ("Zoom / pan", "zoom")], value="brush", style={"button_width": "90px"}
        )
        self.reset_button = ipywidgets.Button(description="Full range", icon="arrows-h",
                                              layout=ipywidgets.Layout(width="110px"))
        self.clear_button = ipywidgets.Button(description="Clear highlight", layout=ipywidgets.Layout(width="130px"))
        self.info = ipywidgets.HTML()
        self.legend = ipywidgets.HTML(_LEGEND)
        self.leak_banner = ipywidgets.HTML(layout=ipywidgets.Layout(display="none"))

        self._reaggregate = Debounced(self._on_zoom_done, delay=debounce, on_error=self.status.report)
        # The map of the result drawn last: a new result on the same map keeps the zoom.
        self._drawn_map = state.result.effpix_map if state.result is not None else None
        self._follow = Debounced(self._redraw_result, delay=follow_delay, on_error=self.status.report)
        self.mode.observe(guard(self._on_mode), names="value")
        self.reset_button.on_click(guard(lambda _: self.reset_range()))
        self.clear_button.on_click(guard(lambda _: self.clear_selection()))
        self.brush.observe(guard(self._on_brushing), names="brushing")
        self.brush.observe(guard(self._on_brush_selected), names="selected")
        self.x_scale.observe(guard(self._on_x_range), names=["min", "max"])
        state.observe(guard(lambda _: self._follow()), names="result")
        state.observe(guard(self._on_exposure), names="exposure")

        self.children = [
            *([self.status] if self.own_status else []),
            ipywidgets.HBox([self.mode, self.reset_button, self.clear_button, self.info]),
            self.leak_banner,
            self.figure,
            self.legend,
        ]
        guard(self.refresh)(reset_range=True)

    # ------------------------------------------------------------ drawing
    @property
    def x_range(self):
        """The visible effective-pixel range ``(min, max)``."""
        return self.x_scale.min, self.x_scale.max

    def refresh(self, reset_range=False, check_leak=True):
        """Re-aggregate the current exposure over the visible range and redraw.

        ``check_leak=False`` skips the per-row leak check (a zoom or pan does
        not change the rows).
        """
        result = self.state.result
        if result is None:
            self._info_base = "no sky fit yet"
            self._show_info()
            return
        samples = result.samples
        k = self.state.exposure
        if samples.effpix.size == 0:
            self._info_base = "no sky samples"
            self._show_info()
            return
        full = (float(samples.effpix[0]), float(samples.effpix[-1]))
        if reset_range or self._full_range is None or self.x_scale.min is None:
            lo, hi = full
        else:
            lo, hi = self.x_range
        self._full_range = full
        label = data_unit_label(self.state.science)  # (the page may load other frames)
        if self.figure.axes[1].label != label:
            self.figure.axes[1].label = label
        with self.status.working():
            agg = aggregate_sed(samples.effpix, samples.flux[k], lo, hi, n_bins=self.n_bins)
            mx, my = decimate_curve(*result.model_curve(k), lo, hi, n_bins=self.n_bins)
            self.aggregate = agg
            self.n_aggregations += 1
            self._draw(agg, mx, my, lo, hi)
            if check_leak:
                self._update_leak(result, k)

    def _draw(self, agg, mx, my, lo, hi):
        finite = np.concatenate([agg.median[np.isfinite(agg.median)], my[np.isfinite(my)]])
        positive = finite[finite > 0]
        # Log axis: values at or below zero (read noise on a dark sky) sit on
        # a floor well below the typical sky instead of vanishing.
        floor = 0.3 * float(np.percentile(positive, 1)) if positive.size else 1.0
        top = np.nanmax(np.r_[agg.high, my, floor * 10]) if agg.x.size else floor * 10

        def clip(values):
            return _as_display(np.clip(np.nan_to_num(values, nan=floor), floor, None))

        x = _as_display(agg.x)
        with self.envelope.hold_sync(), self.p99_line.hold_sync(), self.median_line.hold_sync(), \
                self.model_line.hold_sync():
            self.envelope.x = x
            self.envelope.y = np.vstack([clip(agg.high), clip(agg.low)])
            self.p99_line.x, self.p99_line.y = x, clip(agg.p99)
            self.median_line.x, self.median_line.y = x, clip(agg.median)
            self.model_line.x, self.model_line.y = _as_display(mx), clip(my)
        self._set_scales(lo, hi, floor * 0.8, float(top) * 1.5)
        self._info_base = (
            f"exposure {self.state.exposure}: {agg.n_samples:,} samples in {lo:.1f}-{hi:.1f}, {agg.x.size} bins"
        )
        self._show_info()

    def _set_scales(self, lo, hi, ymin, ymax):
        self._setting_range = True
        try:
            with self.x_scale.hold_sync():
                self.x_scale.min, self.x_scale.max = float(lo), float(hi)
            with self.y_scale.hold_sync():
                self.y_scale.min, self.y_scale.max = float(ymin), float(ymax)
        finally:
            self._setting_range = False

    def _show_info(self):
        text = self._info_base
        if self.selected_range is not None:
            e0, e1 = self.selected_range
            text += f"; highlighted {e0:.2f}-{e1:.2f}"
        self.info.value = f"<span style='font-size:90%'>{text}</span>"

    def _update_leak(self, result, k):
        rows, _ = leak_rows(result, k)
        self.leaking_rows = row_ranges(rows)
        if not self.leaking_rows:
            self.leak_banner.value = ""
            self.leak_banner.layout.display = "none"
            return
        text = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in self.leaking_rows)
        distance = rows_from_mask(np.asarray(result.mask)[:, 0], rows)
        if distance is not None and distance <= LEAK_NEAR_MASK:
            cause = ("trace light leaking into the sky beside the mask? It lifts the envelope above the model and "
                     "biases the sky: widen the mask.")
        else:
            # As the fit's own leak warning: far from the mask it is not the masked trace's wings.
            cause = ("rows away from the mask, so another source (add a mask range), or light along the slit the "
                     "sky model does not follow (the slit's illumination for a method that does not model it, a "
                     "bias level left in).")
        self.leak_banner.value = (
            "<div style='background:#fff4e0;border:1px solid #e8b060;padding:3px 8px;border-radius:3px'>"
            f"&#9888; Light well above the sky model in unmasked rows {text}: {cause}</div>"
        )
        self.leak_banner.layout.display = None

    # ---------------------------------------------------------- reactions
    def _redraw_result(self):
        # Same frames and warp: keep the zoom; a new warp may move the range.
        result = self.state.result
        new_map = result.effpix_map if result is not None else None
        same_map = new_map is not None and new_map is self._drawn_map
        self._drawn_map = new_map
        self.refresh(reset_range=not same_map)

    def _on_exposure(self, change):
        self.refresh()

    def _on_x_range(self, change):
        if self._setting_range or self.x_scale.min is None or self.x_scale.max is None:
            return
        # A pan or zoom sends a stream of ranges: aggregate once it settles.
        self._reaggregate()

    def _on_zoom_done(self):
        if self.x_scale.min is not None and self.x_scale.max is not None and self.x_scale.max > self.x_scale.min:
            self.refresh(check_leak=False)

    def reset_range(self):
        """Show every sample again."""
        self.refresh(reset_range=True, check_leak=False)

    def _on_mode(self, change):
        self.figure.interaction = self.brush if change["new"] == "brush" else self.panzoom

    # -------------------------------------------------------------- brush
    def _on_brushing(self, change):
        if not change["new"]:
            self._take_selection()

    def _on_brush_selected(self, change):
        # Mid-drag values are only drawn by the browser: act on release.
        if not self.brush.brushing:
            self._take_selection()

    def _take_selection(self):
        sel = self.brush.selected
        if sel is None or len(sel) < 2 or not np.all(np.isfinite(sel)) or sel[0] == sel[1]:
            self.selected_range = None
        else:
            e0, e1 = sorted(float(v) for v in sel[:2])
            self.selected_range = (e0, e1)
        self._show_info()

    def clear_selection(self):
        """Remove the brush and the highlight."""
        self.brush.selected = None
        self.selected_range = None
