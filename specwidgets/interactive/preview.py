"""The extracted 1D spectrum of the target beside the sky spectrum, with the sky-line score.

:class:`SpectrumPreview` traces the target in the sky-subtracted exposure
(within the masked rows), extracts it (optimal extraction with the sky
model's variance, or a boxcar), and draws it over the sky spectrum along
the same aperture. The brightest sky lines are marked on the spectrum,
coloured by their residual, and the sky-line residual score is written
above beside the same measure between the sky lines: the two alike when the
sky lines leave nothing behind (about 1 on a faint target). The residual is
the light in the aperture that does not follow the target's profile, so a
bright target's own absorption lines at the sky lines are not counted as
sky left over. Everything is
recomputed when the state's result or exposure changes (a new mask, a new
warp model, another method).

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> from specwidgets.interactive.state import SkyState
>>> frames = make_synthetic_longslit(shape=(60, 400), n_arc_lines=8, seed=1)
>>> state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows], read_noise=4.0)
>>> preview = SpectrumPreview(state)
>>> preview.extraction.flux.shape, 0.3 < preview.score.score < 3
((400,), True)
"""

from __future__ import annotations

import html

import bqplot
import ipywidgets
import numpy as np

from ..core.extract import EXTRACTION_METHODS, extract_spectrum, sky_line_residual_score, trace_spectrum
from ..display.debounce import Debounced
from .navigation import CursorReadout
from .state import require_state
from .status import StatusBar

__all__ = ["SpectrumPreview"]

_FIG_MARGIN = {"top": 30, "bottom": 45, "left": 80, "right": 80}
_TARGET_COLOR = "#222222"
_SKY_COLOR = "#6baed6"
# Colour thresholds of the score text: the score over its reference between the
# sky lines (counted as at least 1), so a bright target's own structure is not red.
_GOOD, _FAIR = 1.5, 3.0


def _score_color(score):
    return "#1b7a1b" if score < _GOOD else ("#b06000" if score < _FAIR else "#b00020")


class SpectrumPreview(ipywidgets.VBox):
    """Extracted target spectrum, the sky spectrum, and the sky-line residual score.

    Parameters
    ----------
    state : SkyState
    status : StatusBar, optional
        Shared busy indicator and error banner (a new, shown one if not given).
    x_scale : bqplot.LinearScale, optional
        Column scale to share with an image of the same detector: zooming
        either zooms both.
    height : str
        CSS height of the figure.
    follow_delay : float
        Seconds to wait after a new result before extracting and redrawing
        (in a running kernel; without an event loop at once): beside an image
        of the same result, the picture reaches the page first (see
        :class:`~specwidgets.interactive.SEDExplorer`).

    Attributes
    ----------
    method : ipywidgets.ToggleButtons
        ``"optimal"`` or ``"boxcar"``.
    shift, aperture : ipywidgets.FloatText
        Edits of the trace: rows to move it by; aperture width in rows
        (0: four times the trace's FWHM).
    trace : specwidgets.core.extract.Trace or None
    extraction : specwidgets.core.extract.Extraction or None
    sky : (n_cols,) array or None
        The background summed over the same aperture.
    score : specwidgets.core.extract.SkyLineScore or None
    info : ipywidgets.HTML
        The score, or why there is no spectrum.
    figure : bqplot.Figure
    flux_line, sky_line : bqplot.Lines
    line_marks : bqplot.Scatter
        The sky lines of the score, at the extracted flux.
    n_updates : int
        Extractions done (one per result or exposure change).
    """

    def __init__(self, state, *, status=None, x_scale=None, height="280px", follow_delay=0.0, **kwargs):
        require_state(state, "SpectrumPreview")
        super().__init__(**kwargs)
        self.state = state
        self.own_status = status is None
        self.status = StatusBar(state) if status is None else status
        guard = self.status.guard
        self.trace = self.extraction = self.sky = self.score = None
        self._spectrum_only = ""  # why the score is from the spectrum alone ("" when from the frame)
        self.n_updates = 0
        n_cols = state.shape[1]

        self.x_scale = x_scale if x_scale is not None else bqplot.LinearScale(
            min=-0.5, max=n_cols - 0.5, allow_padding=False)
        self.y_scale = bqplot.LinearScale(allow_padding=False)
        self.sky_scale = bqplot.LinearScale(allow_padding=False)
        self.sky_line = bqplot.Lines(
            x=[], y=[], scales={"x": self.x_scale, "y": self.sky_scale}, colors=[_SKY_COLOR], stroke_width=1,
            interactions={},
        )
        self.flux_line = bqplot.Lines(
            x=[], y=[], scales={"x": self.x_scale, "y": self.y_scale}, colors=[_TARGET_COLOR], stroke_width=1,
            interactions={},
        )
        self.line_marks = bqplot.Scatter(
            x=[], y=[], scales={"x": self.x_scale, "y": self.y_scale}, marker="triangle-down", default_size=40,
            colors=["#1b7a1b"], interactions={},
        )
        self.figure = bqplot.Figure(
            marks=[self.sky_line, self.flux_line, self.line_marks],
            axes=[
                bqplot.Axis(scale=self.x_scale, label="Column (dispersion axis) [pix]", grid_lines="none"),
                bqplot.Axis(scale=self.y_scale, side="left", label="Target [counts]", grid_lines="none",
                            tick_format="~s", label_offset="50px"),
                bqplot.Axis(scale=self.sky_scale, side="right", label="Sky [counts]", grid_lines="none",
                            tick_format="~s", label_offset="50px", color=_SKY_COLOR),
            ],
            title="1D preview: extracted target (black) and sky (blue) along the same aperture",
            fig_margin=dict(_FIG_MARGIN),
            padding_x=0.0,
            padding_y=0.0,
            interaction=bqplot.interacts.PanZoom(scales={"x": [self.x_scale]}),
            layout=ipywidgets.Layout(height=height),
        )
        self.method = ipywidgets.ToggleButtons(
            options=list(EXTRACTION_METHODS)[::-1], value="optimal", style={"button_width": "75px"},
            tooltips=["Horne (1986) optimal extraction with the sky model's variance", "sum over the aperture"],
        )
        self.info = ipywidgets.HTML()
        # Edits of the trace: move it by some rows, or fix the aperture width.
        self.shift = ipywidgets.FloatText(value=0.0, step=0.5, description="Shift [rows]",
                                          style={"description_width": "initial"}, layout=ipywidgets.Layout(width="165px"))
        self.aperture = ipywidgets.FloatText(value=0.0, step=1.0, description="Aperture [rows, 0: auto]",
                                             tooltip="0: four times the trace's FWHM",
                                             style={"description_width": "initial"},
                                             layout=ipywidgets.Layout(width="240px"))
        self.shift.observe(guard(lambda _: self.refresh()), names="value")
        self.aperture.observe(guard(lambda _: self.refresh()), names="value")
        self.readout = ipywidgets.HTML("<i>wheel: zoom, drag: pan (the image above follows)</i>")
        self.cursor = CursorReadout(self.figure, self.x_scale, self.y_scale, guard(self.show_readout))
        self.method.observe(guard(lambda _: self.refresh()), names="value")
        self._follow = Debounced(self.refresh, delay=follow_delay, on_error=self.status.report)
        state.observe(guard(lambda _: self._follow()), names="result")
        state.observe(guard(lambda _: self.refresh()), names="exposure")
        self.children = [
            *([self.status] if self.own_status else []),
            ipywidgets.HBox([self.method, self.shift, self.aperture, self.info]),
            self.figure,
            self.readout,
        ]
        self.add_class("sw-preview")
        guard(self.refresh)()

    def _say(self, text):
        self.info.value = f"<span style='font-size:90%'>{text}</span>"

    def refresh(self):
        """Trace, extract and score the current exposure of the current result, and redraw."""
        result = self.state.result
        if result is None:
            self._say("no sky fit yet: no spectrum")
            return
        k = self.state.exposure
        with self.status.working():
            corrected = result.data[k] - result.background[k]
            masks = self.state.mask_region
            try:
                trace = trace_spectrum(corrected, mask_region=masks or None)
            except ValueError as exc:
                self._clear()
                self._say(f"&#9888; no trace: {html.escape(str(exc))}")
                return
            if self.shift.value:
                trace = trace.shifted(self.shift.value)
            width = self.aperture.value if self.aperture.value > 0 else None
            # Only the rows the aperture touches take part in an extraction:
            # cut them out first (a full frame's variance costs more than the
            # extraction itself). The spectra are the same as on the whole frame.
            window = self._window(trace, width, corrected.shape[0])
            background = result.background[k][window]
            noise = np.clip(background, 0, None) / result.gain + (result.read_noise / result.gain) ** 2
            model = result.exposure_variance(k, rows=window)
            variance = noise + model
            local = trace.shifted(-window.start)
            # (The sky model's error is shared by a column's rows: given apart, summed as one.)
            spec = extract_spectrum(corrected[window], local, width=width, method=self.method.value,
                                    variance=noise, sky_variance=model, gain=result.gain)
            sky = extract_spectrum(background, local, width=spec.width, method="boxcar").flux
            try:
                # With the frame, the target's own spectrum (a bright target's
                # absorption lines at sky lines) is told apart from sky left over.
                score = sky_line_residual_score(spec, sky, image=corrected[window], variance=variance,
                                                gain=result.gain)
            except ValueError as exc:
                try:  # not measurable from the frame (e.g. a target filling the aperture): the spectrum alone
                    score = sky_line_residual_score(spec, sky)
                    self._spectrum_only = str(exc).split(": ", 1)[-1].split(";")[0]
                except ValueError:
                    score = None
            else:
                self._spectrum_only = ""
            self.trace, self.extraction, self.sky, self.score = trace, spec, sky, score
            self.n_updates += 1
            self._draw()

    @staticmethod
    def _window(trace, width, n_rows):
        """The rows an extraction along ``trace`` with ``width`` can touch (a slice)."""
        half = 0.5 * (width if width is not None else 4.0 * trace.fwhm) + 2.0
        rows = trace.rows
        start = max(0, int(np.floor(np.nanmin(rows) - half)))
        stop = min(n_rows, int(np.ceil(np.nanmax(rows) + half)) + 1)
        return slice(start, max(stop, start + 1))

    def show_readout(self, x, y=None):
        """Write the target and sky at column ``x`` under the figure (what the mouse does)."""
        spec = self.extraction
        if x is None or spec is None:
            return
        col = int(round(x))
        if not 0 <= col < spec.flux.size:
            return
        self.readout.value = (
            f"<code>col {col}: target = {spec.flux[col]:.5g} &plusmn; {spec.sigma[col]:.3g}, "
            f"sky = {self.sky[col]:.5g}</code>"
        )

    def _clear(self):
        self.trace = self.extraction = self.sky = self.score = None
        with self.flux_line.hold_sync(), self.sky_line.hold_sync(), self.line_marks.hold_sync():
            self.flux_line.x = self.flux_line.y = []
            self.sky_line.x = self.sky_line.y = []
            self.line_marks.x = self.line_marks.y = []

    def _draw(self):
        spec, sky, score = self.extraction, self.sky, self.score
        cols = np.arange(spec.flux.size, dtype=np.float32)
        flux = np.nan_to_num(spec.flux).astype(np.float32)
        lo, hi = np.percentile(flux, [0.5, 99.5]) if flux.size else (0.0, 1.0)
        pad = 0.08 * ((hi - lo) or 1.0)
        s_lo, s_hi = float(np.nanmin(sky)), float(np.nanmax(sky))
        with self.flux_line.hold_sync(), self.sky_line.hold_sync(), self.line_marks.hold_sync():
            self.flux_line.x, self.flux_line.y = cols, flux
            self.sky_line.x, self.sky_line.y = cols, np.nan_to_num(sky).astype(np.float32)
            if score is not None:
                at = score.lines.astype(int)
                self.line_marks.x = score.lines.astype(np.float32)
                self.line_marks.y = (flux[at] + np.float32(0.5 * pad)).astype(np.float32)
                self.line_marks.colors = [_score_color(abs(r) / score.scale)
                                          for r in np.nan_to_num(score.residuals, nan=99.0)]
            else:
                self.line_marks.x = self.line_marks.y = []
        with self.y_scale.hold_sync():
            self.y_scale.min, self.y_scale.max = float(lo - pad), float(hi + 3 * pad)
        with self.sky_scale.hold_sync():
            # The sky in the lower part of the plot, under the target.
            self.sky_scale.min, self.sky_scale.max = s_lo, s_lo + 1.6 * ((s_hi - s_lo) or 1.0)
        rows = self.trace.rows
        where = f"trace rows {rows.min():.1f}-{rows.max():.1f}, aperture {spec.width:.1f} rows"
        if score is None:
            self._say(f"{where}; no sky line to score")
            return
        color = _score_color(score.excess)
        between = (f", {score.reference:.2f} between them (alike when clean)" if np.isfinite(score.reference)
                   else " (about 1: clean)")
        if score.measured == "spectrum":
            why = html.escape(getattr(self, "_spectrum_only", "") or "")
            between += f"; from the spectrum alone ({why})" if why else "; from the spectrum alone"
        self._say(
            f"<b style='color:{color}'>Sky-line residual: {score.score:.2f} &sigma; RMS</b> at the "
            f"{score.n_lines} brightest sky lines (marked &#9660;){between} &middot; {where}"
        )
