"""Controls of the sky fit: spatial order, knot spacing, rejection threshold, gain and read noise.

Each control sets one :class:`~specwidgets.interactive.state.SkyState` input; the text
fields send their value when the user presses Enter or leaves the field
(``continuous_update=False``), so a half-typed number never starts a fit.
A value that cannot be used is shown in the status banner and the last good
fit stays on screen.

Examples
--------
>>> from specwidgets.io.synthetic import make_synthetic_longslit
>>> from specwidgets.interactive.state import SkyState
>>> frames = make_synthetic_longslit(shape=(40, 300), n_arc_lines=8, seed=1)
>>> state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows])
>>> controls = SkyFitControls(state)
>>> controls.read_noise.value          # filled from the frames
'4'
>>> controls.spatial_order.value = "1"
>>> state.spatial_order
1
>>> controls.knot_spacing.value = "-2"   # refused: reported, last fit kept
>>> "knot spacing" in controls.status.banner.value, state.knot_spacing is None
(True, True)
"""

from __future__ import annotations

import math

import ipywidgets
import traitlets as tl

from ..core.frames import ESTIMATE, noise_setting
from .state import require_state
from .status import StatusBar

__all__ = ["SkyFitControls", "parse_noise", "parse_optional_positive"]

#: Choices of the spatial-order menu; "auto" leaves the order to the fit.
SPATIAL_ORDERS = ("auto", "0", "1", "2", "3", "4")

_AUTO_WORDS = ("", "auto", "default")


def parse_optional_positive(text, what):
    """``""``/``"auto"``/``"default"`` -> None, else a positive finite number.

    Examples
    --------
    >>> parse_optional_positive(" auto ", "knot spacing"), parse_optional_positive("1.5", "knot spacing")
    (None, 1.5)
    """
    text = str(text).strip().lower()
    if text in _AUTO_WORDS:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: type a positive number, or 'auto'; got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: type a positive number, or 'auto'; got {text!r}")
    return value


def parse_noise(text, what, frames_value=None, positive=False):
    """A gain or read-noise field: blank -> None (the frames'), ``"estimate"``, or a number.

    A number equal to the frames' own value is None too: the fit then says
    the value came from the frames, not from the user.

    Examples
    --------
    >>> parse_noise("", "read noise"), parse_noise("Estimate", "read noise"), parse_noise("4.5", "read noise")
    (None, 'estimate', 4.5)
    >>> parse_noise("4.74", "read noise", frames_value=4.74) is None
    True
    """
    # The one rule for a noise setting (the state's validator uses it too).
    try:
        value = noise_setting(str(text), what, positive=positive)
    except ValueError:
        bound = "positive" if positive else "non-negative"
        raise ValueError(
            f"{what}: type a {bound} number, 'estimate', or leave it blank for the frames' value; got {str(text).strip()!r}"
        ) from None
    if value is None or value == ESTIMATE:
        return value
    if frames_value is not None and math.isclose(value, float(frames_value), rel_tol=1e-9, abs_tol=1e-12):
        return None
    return value


def _format(value):
    return f"{value:g}"


class SkyFitControls(ipywidgets.VBox):
    """Spatial order, knot spacing, rejection threshold, gain and read noise of one state.

    Parameters
    ----------
    state : SkyState
    status : StatusBar, optional
        Where refused values are reported (a new one when not given).

    Attributes
    ----------
    spatial_order : ipywidgets.Dropdown
        ``"auto"`` or ``"0"`` to ``"4"`` (``state.spatial_order``: None or the number).
    knot_spacing, reject_sigma : ipywidgets.Text
        A positive number, or blank/"auto" for the fit's default.
    read_noise, gain : ipywidgets.Text
        Filled with the frames' values (headers) when they have them; a
        number, "estimate", or blank for the frames' value.
    """

    def __init__(self, state, status=None, **kwargs):
        require_state(state, "SkyFitControls")
        self.state = state
        self._syncing = False
        self.status = status if status is not None else StatusBar(state)
        guard = self.status.guard
        style = {"description_width": "initial"}
        field = dict(continuous_update=False, style=style, layout=ipywidgets.Layout(width="190px"))
        self.spatial_order = ipywidgets.Dropdown(
            options=list(SPATIAL_ORDERS), value=self._order_text(), description="Spatial order",
            style=style, layout=ipywidgets.Layout(width="170px"),
            tooltip="Order of the sky's variation along the slit; auto lets the fit choose",
        )
        self.knot_spacing = ipywidgets.Text(
            value=self._optional_text(state.knot_spacing), placeholder="auto", description="Knot spacing", **field
        )
        self.reject_sigma = ipywidgets.Text(
            value=self._optional_text(state.reject_sigma), placeholder="default", description="Reject (σ)", **field
        )
        self.read_noise = ipywidgets.Text(
            value=self._noise_text("read_noise"), placeholder=ESTIMATE, description="Read noise (e-)", **field
        )
        self.gain = ipywidgets.Text(
            value=self._noise_text("gain"), placeholder=ESTIMATE, description="Gain (e-/unit)", **field
        )
        # No parsing can fail here (the options are the state's values): a link.
        self._order_link = tl.link((state, "spatial_order"), (self.spatial_order, "value"),
                                   transform=(_order_text, _order_value))
        self.knot_spacing.observe(guard(self._on_knots), names="value")
        self.reject_sigma.observe(guard(self._on_reject), names="value")
        self.read_noise.observe(guard(self._on_read_noise), names="value")
        self.gain.observe(guard(self._on_gain), names="value")
        state.observe(guard(self._on_state), names=["knot_spacing", "reject_sigma", "read_noise", "gain"])
        state.observe(guard(self._on_method), names="method")
        bspline = ipywidgets.HBox([self.spatial_order, self.knot_spacing, self.reject_sigma])
        noise = ipywidgets.HBox([self.read_noise, self.gain])
        super().__init__(children=[bspline, noise], **kwargs)
        self._on_method()

    # ----------------------------------------------------------- display
    def _order_text(self):
        return _order_text(self.state.spatial_order)

    @staticmethod
    def _optional_text(value):
        return "" if value is None else _format(value)

    def _noise_text(self, name):
        value = getattr(self.state, name)
        if value == ESTIMATE:
            return ESTIMATE
        if value is not None:
            return _format(value)
        frames_value = getattr(self.state.science, name, None)
        return "" if frames_value is None else _format(frames_value)

    def _frames_value(self, name):
        return getattr(self.state.science, name, None)

    # ---------------------------------------------------------- reactions
    def _on_knots(self, change):
        if not self._syncing:
            self.state.knot_spacing = parse_optional_positive(change["new"], "knot spacing")

    def _on_reject(self, change):
        if not self._syncing:
            self.state.reject_sigma = parse_optional_positive(change["new"], "rejection threshold")

    def _on_read_noise(self, change):
        if not self._syncing:
            self.state.read_noise = parse_noise(change["new"], "read noise", self._frames_value("read_noise"))

    def _on_gain(self, change):
        if not self._syncing:
            self.state.gain = parse_noise(change["new"], "gain", self._frames_value("gain"), positive=True)

    def _on_state(self, change=None):
        """Show the state's values (set from code, or normalised) in the fields."""
        self._syncing = True
        try:
            self.knot_spacing.value = self._optional_text(self.state.knot_spacing)
            self.reject_sigma.value = self._optional_text(self.state.reject_sigma)
            self.read_noise.value = self._noise_text("read_noise")
            self.gain.value = self._noise_text("gain")
        finally:
            self._syncing = False

    def _on_method(self, change=None):
        # The median of bins has none of the B-spline's options.
        median = self.state.method != "bspline"
        for widget in (self.spatial_order, self.knot_spacing, self.reject_sigma):
            widget.disabled = median


def _order_text(order):
    """``state.spatial_order`` (None or 0..4) as the dropdown's option."""
    return "auto" if order is None else str(order) if str(order) in SPATIAL_ORDERS else "auto"


def _order_value(text):
    """The dropdown's option as ``state.spatial_order``."""
    return None if text == "auto" else int(text)
