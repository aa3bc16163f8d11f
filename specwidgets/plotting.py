"""Show a 2D image as a bqplot figure, like the specsuite tutorial's ``plot_image``.

The image is coloured in Python (:mod:`specwidgets.raster`) and sent to the
browser as one small PNG inside bqplot's own ``Image`` mark, at about the
resolution of the plot area; a ``ColorAxis`` draws the matching colorbar.

Examples
--------
>>> import numpy as np
>>> from specwidgets.plotting import plot_image
>>> frame = np.random.default_rng(0).normal(500.0, 30.0, (100, 400))
>>> fig = plot_image(frame, norm="log", vmin=1e2, vmax=4e3, title="Raw frame")
>>> import bqplot
>>> isinstance(fig, bqplot.Figure), fig.color_axis.label
(True, 'Counts')
>>> fig.update_image(frame * 2)  # same figure and mark, new picture
"""

from __future__ import annotations

import math

import bqplot
import ipywidgets
import numpy as np

from . import raster

__all__ = ["ImageFigure", "plot_image", "update_image"]

# CSS pixels per inch: ``figsize`` is in inches, as in matplotlib.
_PX_PER_INCH = 96

_DEFAULT_HEIGHT_PX = 400
# Width of a figure whose width is left to the page ("auto"): a typical
# notebook cell.  Only used to choose the rendering resolution.
_ASSUMED_WIDTH_PX = 1000

# Room for the title (top), y tick labels and label (left), and the x axis
# plus the horizontal colorbar under it (bottom).  The colorbar goes under
# the image because bqplot draws a colorbar 200 px shorter than the plot
# area: a vertical one would nearly vanish on a wide, short spectrum.
_FIG_MARGIN = {"top": 50, "bottom": 115, "left": 75, "right": 30}

_MAX_LOG_TICKS = 9


class _Unchanged:
    """Marker for "keep the current setting" in :meth:`ImageFigure.update_image`."""

    def __repr__(self):
        return "UNCHANGED"


UNCHANGED = _Unchanged()


# --------------------------------------------------------------------------
# Colorbar ticks
# --------------------------------------------------------------------------


def _js_number(value):
    """Return the text JavaScript's ``String(value)`` gives for a float.

    bqplot looks tick labels up by that text, so the keys of ``tick_labels``
    must be spelled exactly like it.
    """
    value = float(value)
    if value == 0:
        return "0"
    if 1e-6 <= abs(value) < 1e21:
        return np.format_float_positional(value, unique=True, trim="-")
    return np.format_float_scientific(value, unique=True, trim="-", exp_digits=1)


def _tick_text(value):
    """Short label of a colorbar tick in data units, e.g. ``'200'``, ``'1e6'``."""
    if 1e-3 <= abs(value) < 1e5:
        return np.format_float_positional(value, precision=3, fractional=False, trim="-")
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _log_ticks(vmin, vmax):
    """Round values (1, 2, 5 x 10^k, ...) between ``vmin`` and ``vmax``."""
    first, last = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
    tolerance = 1e-9 * (vmax - vmin)

    def ticks(mantissas):
        values = (m * 10.0**k for k in range(first, last + 1) for m in mantissas)
        return [v for v in values if vmin - tolerance <= v <= vmax + tolerance]

    preferred = ticks((1, 2, 5))
    if len(preferred) > _MAX_LOG_TICKS:
        decades = ticks((1,))
        # Many decades: label every n-th one so the labels do not collide.
        return decades[:: math.ceil(len(decades) / _MAX_LOG_TICKS)]
    if len(preferred) >= 3:
        return preferred
    # Less than about a decade: every digit, if that gives two ticks at least.
    dense = ticks(range(1, 10))
    return dense if len(dense) >= 2 else [vmin, vmax]


def _colorbar_ticks(norm, vmin, vmax):
    """``(min, max, tick_values, tick_labels)`` of the colorbar scale.

    bqplot 0.13's ColorScale is linear only, so a log colorbar is a linear
    scale over ``log10(value)`` whose ticks are labelled with the values.
    """
    if norm != "log":
        return vmin, vmax, None, None
    ticks = _log_ticks(vmin, vmax)
    positions = np.log10(np.asarray(ticks, dtype=np.float64))
    labels = {_js_number(p): _tick_text(t) for p, t in zip(positions, ticks)}
    return math.log10(vmin), math.log10(vmax), positions, labels


# --------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------


def _figure_size(figsize):
    """``(layout, max_shape)`` of a figure ``figsize`` inches large."""
    if figsize is None:
        width_px, height_px = None, _DEFAULT_HEIGHT_PX
    else:
        try:
            width_in, height_in = (float(v) for v in figsize)
        except (TypeError, ValueError):
            raise ValueError(
                f"figsize must be a (width, height) pair in inches; got {figsize!r}"
            ) from None
        if not (width_in > 0 and height_in > 0 and math.isfinite(width_in * height_in)):
            raise ValueError(f"figsize must be positive; got {figsize!r}")
        width_px, height_px = round(width_in * _PX_PER_INCH), round(height_in * _PX_PER_INCH)
    layout = ipywidgets.Layout(height=f"{height_px}px")
    if width_px is not None:
        layout.width = f"{width_px}px"
    # Render at about the plot area's size: more pixels would only be thrown
    # away by the browser, and with pixelated drawing that drops rows.
    plot_rows = height_px - _FIG_MARGIN["top"] - _FIG_MARGIN["bottom"]
    plot_cols = (width_px or _ASSUMED_WIDTH_PX) - _FIG_MARGIN["left"] - _FIG_MARGIN["right"]
    return layout, (max(plot_rows, 50), max(plot_cols, 50))


class ImageFigure(bqplot.Figure):
    """A ``bqplot.Figure`` showing one image, with handles to update it in place.

    Made by :func:`plot_image`; displays like any bqplot figure.

    Attributes
    ----------
    image_mark : bqplot.Image
        The mark holding the PNG (``image_mark.image`` is an
        ``ipywidgets.Image``, replaced on every update).
    color_scale : bqplot.ColorScale
        Scale of the colorbar (over ``log10`` of the values under a log norm).
    color_axis : bqplot.ColorAxis
        The colorbar (replaced when its log ticks change).
    x_scale, y_scale : bqplot.LinearScale
        Column and row scales; their ``min``/``max`` are the visible range.
    """

    def __init__(self, *, image_mark, color_axis, settings, **kwargs):
        super().__init__(**kwargs)
        self.image_mark = image_mark
        self.color_axis = color_axis
        self.color_scale = color_axis.scale
        self.x_scale = image_mark.scales["x"]
        self.y_scale = image_mark.scales["y"]
        self._settings = settings

    @property
    def max_shape(self):
        """``(rows, cols)`` of the rendered picture at most: about the plot area in screen pixels."""
        return self._settings["max_shape"]

    def update_image(
        self,
        image=None,
        *,
        xlim=UNCHANGED,
        ylim=UNCHANGED,
        cmap=UNCHANGED,
        norm=UNCHANGED,
        vmin=UNCHANGED,
        vmax=UNCHANGED,
    ):
        """Show a new image or new display settings without a new figure.

        The figure, its mark, scales and x/y axes stay the same objects; each
        changed widget is updated inside ``hold_sync()``, so the browser gets
        one message per widget.  The picture is a new ``ipywidgets.Image``
        each time (bqplot redraws only on a new one; the old one is closed),
        and the colorbar axis is replaced when its log ticks change.
        Settings not given keep their current value; ``None`` means what it
        means in :func:`plot_image` (e.g. ``vmin=None`` is "from the data").

        Parameters
        ----------
        image : array_like, shape (rows, cols), optional
            The new image; ``None`` re-renders the current one.
        xlim, ylim, cmap, norm, vmin, vmax
            As in :func:`plot_image`.

        Raises
        ------
        ValueError, TypeError
            As :func:`plot_image`; the figure is then left unchanged.

        Examples
        --------
        >>> import numpy as np
        >>> fig = plot_image(np.ones((10, 20)))
        >>> mark = fig.image_mark
        >>> fig.update_image(xlim=(2, 5))
        >>> fig.image_mark is mark, fig.x_scale.min, fig.x_scale.max
        (True, 2.0, 5.0)
        """
        settings = dict(self._settings)
        changes = dict(xlim=xlim, ylim=ylim, cmap=cmap, norm=norm, vmin=vmin, vmax=vmax)
        settings.update({k: v for k, v in changes.items() if v is not UNCHANGED})
        if image is not None:
            settings["image"] = image
        # Render first: a bad setting raises before any widget is touched.
        state = _render(settings)
        _apply(self, state)
        self._settings = state["settings"]


def _render(settings):
    """Validate ``settings`` and compute every widget value that depends on them."""
    image = raster._as_image(settings["image"])
    norm = raster._check_norm(settings["norm"])
    xlim = raster._check_range(settings["xlim"], "xlim")
    ylim = raster._check_range(settings["ylim"], "ylim")
    rendered = raster.render_png(
        image,
        cmap=settings["cmap"],
        norm=norm,
        vmin=settings["vmin"],
        vmax=settings["vmax"],
        max_shape=settings["max_shape"],
        xlim=xlim,
        ylim=ylim,
        origin="lower",
    )
    c_min, c_max, tick_values, tick_labels = _colorbar_ticks(norm, rendered.vmin, rendered.vmax)
    return {
        "settings": dict(settings, image=image),
        "png": rendered.png,
        "mark_x": rendered.x,
        "mark_y": rendered.y,
        # Without limits the view is the whole image, not just the picture.
        "view_x": xlim or (-0.5, image.shape[1] - 0.5),
        "view_y": ylim or (-0.5, image.shape[0] - 0.5),
        "colors": raster.colormap_hex(settings["cmap"]),
        "c_min": c_min,
        "c_max": c_max,
        "tick_values": tick_values,
        "tick_labels": tick_labels,
    }


def _picture(png):
    return ipywidgets.Image(value=png, format="png")


def _color_axis(scale, label, state):
    return bqplot.ColorAxis(
        scale=scale,
        label=label,
        side="bottom",
        tick_values=state["tick_values"],
        tick_labels=state["tick_labels"],
    )


def _set(widget, **values):
    """Set traits of one widget; the browser gets them in one message."""
    with widget.hold_sync():
        for name, value in values.items():
            setattr(widget, name, value)


def _same_ticks(axis, state):
    old, new = axis.tick_values, state["tick_values"]
    if (old is None) != (new is None) or (new is not None and not np.array_equal(old, new)):
        return False
    return (axis.tick_labels or {}) == (state["tick_labels"] or {})


def _apply(fig, state):
    """Push a :func:`_render` result into an existing figure."""
    mark, old_picture, old_axis = fig.image_mark, fig.image_mark.image, fig.color_axis
    _set(fig.x_scale, min=state["view_x"][0], max=state["view_x"][1])
    _set(fig.y_scale, min=state["view_y"][0], max=state["view_y"][1])
    _set(fig.color_scale, colors=state["colors"], min=state["c_min"], max=state["c_max"])
    # bqplot's Image view redraws when ``image`` becomes another widget, not
    # when that widget's value changes, so each picture is a new widget.
    _set(mark, image=_picture(state["png"]), x=state["mark_x"], y=state["mark_y"])
    old_picture.close()
    if not _same_ticks(old_axis, state):
        # The colorbar view reads tick values and labels only when it is
        # first drawn (bqplot 0.13.1), so new ticks need a new axis.
        new_axis = _color_axis(fig.color_scale, old_axis.label, state)
        fig.axes = [new_axis if axis is old_axis else axis for axis in fig.axes]
        fig.color_axis = new_axis
        old_axis.close()


def plot_image(
    image,
    xlim=None,
    ylim=None,
    xlabel="Dispersion axis [pix]",
    ylabel="Cross-dispersion axis [pix]",
    cbar_label="Counts",
    title="",
    cmap="inferno",
    norm=None,
    vmin=None,
    vmax=None,
    figsize=None,
):
    """Plot a 2D image with a colorbar, as an interactive bqplot figure.

    Columns run along x (dispersion axis), rows along y with row 0 at the
    bottom; pixel centres sit at integer coordinates.  Only the visible part
    is rendered, block-averaged to about the plot area's resolution, so even
    large frames send well under 1 MiB to the browser.  NaN pixels, and
    pixels ``<= 0`` under ``norm='log'``, are transparent (white on a light
    page).

    Parameters
    ----------
    image : array_like, shape (rows, cols)
        The image; masked entries of a ``numpy.ma.MaskedArray`` count as NaN.
    xlim, ylim : (float, float), optional
        Visible column / row range, e.g. ``xlim=(20, 30)``.
    xlabel, ylabel : str, optional
        Axis labels.
    cbar_label : str, optional
        Colorbar label.
    title : str, optional
        Figure title.
    cmap : str, optional
        Colormap name: ``'inferno'``, ``'magma'``, ``'plasma'``,
        ``'viridis'``, ``'gray'``, each also reversed with ``'_r'``.
    norm : {None, 'linear', 'log'}, optional
        Colour scaling.  The colorbar of ``'log'`` is logarithmic too.
    vmin, vmax : float, optional
        Colour limits; missing ones are the 1st / 99.5th percentile of the
        finite (for ``'log'``: positive) values of the whole image.
    figsize : (float, float), optional
        ``(width, height)`` in inches (96 CSS pixels each); by default the
        figure is as wide as the page and 400 px high.

    Returns
    -------
    ImageFigure
        A ``bqplot.Figure``; it displays when it is the last expression of a
        notebook cell.  Use :meth:`ImageFigure.update_image` to change it.

    Raises
    ------
    ValueError
        If the image is not 2D or is empty, ``norm`` or ``cmap`` is unknown,
        ``vmin >= vmax``, a limit is not positive under ``norm='log'``, or
        ``xlim``/``ylim`` are reversed or miss the image.
    TypeError
        If the image is not numeric.

    Examples
    --------
    The calls of the seed tutorial:

    >>> import numpy as np
    >>> science = np.random.default_rng(1).normal(600.0, 50.0, (100, 500))
    >>> fig = plot_image(science, norm="log", vmin=1e2, vmax=4e3)
    >>> effpix_map = np.tile(np.arange(500.0), (100, 1))
    >>> fig = plot_image(effpix_map, cbar_label="Effective Pixel Location",
    ...                  xlim=(20, 30), vmin=20, vmax=30)
    >>> fig.x_scale.min, fig.x_scale.max
    (20.0, 30.0)
    >>> fig = plot_image(science - 600.0, title="Resulting Correction", norm="log")
    """
    layout, max_shape = _figure_size(figsize)
    settings = {
        "image": image,
        "xlim": xlim,
        "ylim": ylim,
        "cmap": cmap,
        "norm": norm,
        "vmin": vmin,
        "vmax": vmax,
        "max_shape": max_shape,
    }
    state = _render(settings)

    (x_min, x_max), (y_min, y_max) = state["view_x"], state["view_y"]
    x_scale = bqplot.LinearScale(min=x_min, max=x_max, allow_padding=False)
    y_scale = bqplot.LinearScale(min=y_min, max=y_max, allow_padding=False)
    color_scale = bqplot.ColorScale(colors=state["colors"], min=state["c_min"], max=state["c_max"])
    image_mark = bqplot.Image(
        image=_picture(state["png"]),
        x=state["mark_x"],
        y=state["mark_y"],
        scales={"x": x_scale, "y": y_scale},
    )
    axes = [
        bqplot.Axis(scale=x_scale, label=xlabel, grid_lines="none"),
        bqplot.Axis(scale=y_scale, label=ylabel, side="left", grid_lines="none"),
    ]
    color_axis = _color_axis(color_scale, cbar_label, state)
    return ImageFigure(
        image_mark=image_mark,
        color_axis=color_axis,
        settings=state["settings"],
        marks=[image_mark],
        axes=[*axes, color_axis],
        title=title,
        fig_margin=dict(_FIG_MARGIN),
        padding_x=0.0,
        padding_y=0.0,
        layout=layout,
    )


def update_image(fig, image=None, **settings):
    """Update a figure made by :func:`plot_image` in place.

    Same as ``fig.update_image(image, **settings)``; see
    :meth:`ImageFigure.update_image`.

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_image(np.ones((10, 20)))
    >>> update_image(fig, np.zeros((10, 20)), vmin=-1, vmax=1)
    """
    if not isinstance(fig, ImageFigure):
        raise TypeError(f"fig must be a figure made by plot_image; got {type(fig).__name__}")
    fig.update_image(image, **settings)
