"""Tests of specwidgets.display.plotting.plot_image (no browser: widget state only)."""

import struct

import bqplot
import ipywidgets
import numpy as np
import pytest

from specwidgets.display import raster
from specwidgets.display.plotting import ImageFigure, plot_image, update_image


def png_size(png):
    """``(rows, cols)`` from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return height, width


def color_axis(fig):
    (axis,) = [a for a in fig.axes if isinstance(a, bqplot.ColorAxis)]
    return axis


@pytest.fixture
def frame():
    rng = np.random.default_rng(2)
    image = rng.normal(600.0, 50.0, (120, 500))
    image[40:45] = np.nan
    return image


def test_returns_a_bqplot_figure_with_an_image_mark(frame):
    fig = plot_image(frame)
    assert isinstance(fig, bqplot.Figure) and isinstance(fig, ipywidgets.DOMWidget)
    (mark,) = fig.marks
    assert isinstance(mark, bqplot.Image) and mark is fig.image_mark
    assert isinstance(mark.image, ipywidgets.Image) and mark.image.format == "png"
    assert png_size(mark.image.value) == frame.shape
    # Whole image visible, pixel centres on integers, row 0 at the bottom.
    assert tuple(mark.x) == (-0.5, 499.5) and tuple(mark.y) == (-0.5, 119.5)
    assert (fig.x_scale.min, fig.x_scale.max) == (-0.5, 499.5)
    assert (fig.y_scale.min, fig.y_scale.max) == (-0.5, 119.5)
    assert mark.scales == {"x": fig.x_scale, "y": fig.y_scale}


def test_png_is_the_raster_rendering(frame):
    fig = plot_image(frame, norm="log", vmin=1e2, vmax=4e3, cmap="viridis")
    expected = raster.render_png(
        frame, cmap="viridis", norm="log", vmin=1e2, vmax=4e3, max_shape=fig._settings["max_shape"]
    )
    assert fig.image_mark.image.value == expected.png


def test_labels_title_and_colorbar(frame):
    fig = plot_image(
        frame, xlabel="X", ylabel="Y", cbar_label="Effective Pixel Location", title="T",
        cmap="magma", vmin=500, vmax=700,
    )
    assert fig.title == "T"
    labels = [a.label for a in fig.axes if not isinstance(a, bqplot.ColorAxis)]
    assert labels == ["X", "Y"]
    cbar = color_axis(fig)
    assert cbar is fig.color_axis and cbar.label == "Effective Pixel Location"
    assert cbar.scale is fig.color_scale
    assert (fig.color_scale.min, fig.color_scale.max) == (500.0, 700.0)
    assert fig.color_scale.colors == raster.colormap_hex("magma")
    assert fig.color_scale.colors[-1] == "#{:02x}{:02x}{:02x}".format(*raster.get_colormap("magma")[-1])


def test_default_labels_follow_the_seed(frame):
    fig = plot_image(frame)
    assert [a.label for a in fig.axes] == [
        "Dispersion axis [pix]", "Cross-dispersion axis [pix]", "Counts",
    ]
    assert fig.title == ""


def test_log_colorbar_is_logarithmic_with_value_labels(frame):
    fig = plot_image(frame, norm="log", vmin=1e2, vmax=4e3)
    scale, cbar = fig.color_scale, fig.color_axis
    assert scale.min == pytest.approx(2.0) and scale.max == pytest.approx(np.log10(4e3))
    np.testing.assert_allclose(10 ** np.asarray(cbar.tick_values), [100, 200, 500, 1000, 2000])
    assert sorted(cbar.tick_labels.values(), key=float) == ["100", "200", "500", "1000", "2000"]
    # bqplot looks a label up by JavaScript's String(tick value).
    assert cbar.tick_labels["2"] == "100" and cbar.tick_labels["2.3010299956639813"] == "200"


def test_linear_colorbar_uses_default_ticks(frame):
    cbar = plot_image(frame, vmin=0, vmax=1000).color_axis
    assert cbar.tick_values is None and not cbar.tick_labels


def test_xlim_restricts_view_and_rendering():
    effpix_map = np.tile(np.arange(500.0), (120, 1))
    effpix_map[40:80] = np.nan
    fig = plot_image(
        effpix_map, cbar_label="Effective Pixel Location", xlim=(20, 30), vmin=20, vmax=30
    )
    assert (fig.x_scale.min, fig.x_scale.max) == (20.0, 30.0)
    assert (fig.y_scale.min, fig.y_scale.max) == (-0.5, 119.5)
    # Only the 11 columns overlapping 20..30 are sent; the half pixels at
    # the edges are clipped by the plot area.
    assert tuple(fig.image_mark.x) == (19.5, 30.5)
    assert png_size(fig.image_mark.image.value) == (120, 11)


def test_pixel_edge_limits_match_the_mark_extents_exactly(frame):
    fig = plot_image(frame, xlim=(99.5, 199.5), ylim=(9.5, 59.5))
    assert tuple(fig.image_mark.x) == (99.5, 199.5) == (fig.x_scale.min, fig.x_scale.max)
    assert tuple(fig.image_mark.y) == (9.5, 59.5) == (fig.y_scale.min, fig.y_scale.max)
    assert png_size(fig.image_mark.image.value) == (50, 100)


def test_large_frames_are_rendered_at_screen_size():
    big = np.random.default_rng(0).normal(300.0, 40.0, (947, 2030))
    fig = plot_image(big, norm="log")
    rows, cols = png_size(fig.image_mark.image.value)
    assert rows <= 400 and cols <= 1000
    assert len(fig.image_mark.image.value) < 2**20
    assert tuple(fig.image_mark.x) == (-0.5, 2029.5)


def test_figsize_sets_the_layout_and_the_resolution():
    fig = plot_image(np.ones((947, 2030)), figsize=(8, 3))
    assert (fig.layout.width, fig.layout.height) == ("768px", "288px")
    rows, cols = png_size(fig.image_mark.image.value)
    assert rows < 288 and cols < 768


def test_seed_calls_work(frame):
    background = frame - 600.0  # about half the pixels <= 0
    for kwargs in (
        {"norm": "log", "vmin": 1e2, "vmax": 4e3},
        {"norm": "log"},
        {"title": "Resulting Correction", "norm": "log"},
    ):
        fig = plot_image(background, **kwargs)
        assert fig.color_scale.min < fig.color_scale.max


@pytest.mark.parametrize(
    "image, kwargs, error, match",
    [
        (np.ones((2, 3, 4)), {}, ValueError, r"2D.*\(2, 3, 4\)"),
        (np.ones(5), {}, ValueError, r"2D.*\(5,\)"),
        (np.ones((0, 3)), {}, ValueError, "empty"),
        ([["a", "b"]], {}, TypeError, "numeric"),
        (np.ones((4, 4)), {"norm": "cubic"}, ValueError, "norm must be"),
        (np.ones((4, 4)), {"interval": "auto"}, ValueError, "interval must be"),
        (np.ones((4, 4)), {"norm": "log", "symmetric": True}, ValueError, "symmetric limits"),
        (np.ones((4, 4)), {"scales": [1, 2]}, TypeError, "scales must be a dict"),
        (np.ones((4, 4)), {"vmin": 3, "vmax": 3}, ValueError, "vmin must be less than vmax"),
        (np.ones((4, 4)), {"vmin": 5, "vmax": 1}, ValueError, "vmin must be less than vmax"),
        (np.ones((4, 4)), {"norm": "log", "vmin": 0}, ValueError, "positive with norm='log'"),
        (np.ones((4, 4)), {"norm": "log", "vmin": -1, "vmax": 4}, ValueError, "positive"),
        (np.ones((4, 4)), {"cmap": "nojet"}, ValueError, "unknown colormap 'nojet'"),
        (np.ones((4, 4)), {"xlim": (10, 20)}, ValueError, "does not overlap"),
        (np.ones((4, 4)), {"ylim": (3, 1)}, ValueError, "ylim"),
        (np.ones((4, 4)), {"figsize": (0, 3)}, ValueError, "figsize"),
    ],
)
def test_invalid_inputs_raise(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_image(image, **kwargs)


# --------------------------------------------------------------------------
# Updating in place
# --------------------------------------------------------------------------


def test_update_keeps_the_figure_mark_scales_and_axes(frame):
    fig = plot_image(frame, norm="log", vmin=1e2, vmax=4e3)
    mark, picture, cbar = fig.image_mark, fig.image_mark.image, fig.color_axis
    x_axis, y_axis = fig.axes[:2]
    scales = (fig.x_scale, fig.y_scale, fig.color_scale)
    fig.update_image(frame * 3.0)
    assert fig.marks == [mark] and fig.image_mark is mark
    assert (fig.x_scale, fig.y_scale, fig.color_scale) == scales
    assert fig.axes == [x_axis, y_axis, cbar] and fig.color_axis is cbar  # same ticks
    assert fig.color_scale.min == pytest.approx(2.0)  # settings not passed are kept
    # bqplot redraws the picture only when ``image`` is another widget.
    assert mark.image is not picture and mark.image.value != picture.value
    assert picture.comm is None  # the old picture was closed


def test_update_with_new_log_ticks_replaces_only_the_colorbar(frame):
    fig = plot_image(frame, norm="log", vmin=1e2, vmax=4e3)
    old = fig.color_axis
    fig.update_image(vmin=10, vmax=1e5)
    assert fig.color_axis is not old and old.comm is None
    assert fig.axes[-1] is fig.color_axis and fig.color_axis.scale is fig.color_scale
    assert fig.color_axis.label == "Counts"
    labels = sorted(fig.color_axis.tick_labels.values(), key=float)
    assert labels == ["10", "100", "1000", "10000", "1e5"]


def test_update_settings_without_a_new_image(frame):
    fig = plot_image(frame)
    fig.update_image(xlim=(10, 20), norm="log", vmin=10, vmax=1e3, cmap="gray")
    assert (fig.x_scale.min, fig.x_scale.max) == (10.0, 20.0)
    assert tuple(fig.image_mark.x) == (9.5, 20.5)
    assert fig.color_scale.colors == raster.colormap_hex("gray")
    assert fig.color_axis.tick_labels  # now a log colorbar
    fig.update_image(xlim=None, norm=None, vmin=None, vmax=None)
    assert (fig.x_scale.min, fig.x_scale.max) == (-0.5, 499.5)
    assert fig.color_axis.tick_values is None


def test_update_with_a_new_shape_follows_it():
    fig = plot_image(np.ones((10, 20)))
    update_image(fig, np.ones((30, 40)))
    assert tuple(fig.image_mark.x) == (-0.5, 39.5) and fig.y_scale.max == 29.5
    assert png_size(fig.image_mark.image.value) == (30, 40)


def test_update_sends_one_message_per_widget(frame, monkeypatch):
    fig = plot_image(frame)
    widgets = [fig.image_mark, fig.x_scale, fig.y_scale, fig.color_scale]
    sent = {id(w): 0 for w in widgets}
    for widget in widgets:
        original = widget.send_state

        def counting(key=None, _widget=widget, _original=original):
            sent[id(_widget)] += 1
            return _original(key=key)

        monkeypatch.setattr(widget, "send_state", counting)
    fig.update_image(frame + 1000.0, xlim=(5, 50), ylim=(3, 30), vmin=100, vmax=2000)
    assert list(sent.values()) == [1, 1, 1, 1]


def test_failed_update_leaves_the_figure_unchanged(frame):
    fig = plot_image(frame, vmin=-10, vmax=10)
    before = (fig.image_mark.image.value, fig.color_scale.min, fig._settings["norm"])
    with pytest.raises(ValueError, match="positive with norm='log'"):
        fig.update_image(norm="log")
    with pytest.raises(ValueError, match="2D"):
        fig.update_image(np.ones(3))
    assert (fig.image_mark.image.value, fig.color_scale.min, fig._settings["norm"]) == before


def test_update_image_rejects_other_figures():
    with pytest.raises(TypeError, match="made by plot_image"):
        update_image(bqplot.Figure(), np.ones((2, 2)))


def test_figure_is_an_image_figure(frame):
    assert isinstance(plot_image(frame), ImageFigure)


# --------------------------------------------------------------------------
# Display conventions and navigation
# --------------------------------------------------------------------------


def test_residual_view_diverging_symmetric_zscale(frame):
    residual = frame - 600.0
    residual[60:70] += 5000.0  # a bright trace must not wash out the residuals
    fig = plot_image(residual, cmap="RdBu_r", interval="zscale", symmetric=True)
    lo, hi = fig.color_scale.min, fig.color_scale.max
    assert lo == -hi and 100 < hi < 400  # sky noise is 50: zscale, not the trace
    assert fig.color_scale.colors[0] == "#053061" and fig.color_scale.colors[-1] == "#67001f"
    expected = raster.render_png(residual, cmap="RdBu_r", interval="zscale", symmetric=True,
                                 max_shape=fig._settings["max_shape"])
    assert fig.image_mark.image.value == expected.png
    # Deterministic from redraw to redraw.
    before = fig.image_mark.image.value
    fig.update_image(residual)
    assert fig.image_mark.image.value == before


@pytest.mark.parametrize("norm", ["sqrt", "asinh"])
def test_stretched_colorbars_are_labelled_in_data_units(frame, norm):
    fig = plot_image(frame, norm=norm, vmin=400, vmax=800)
    axis = color_axis(fig)
    assert (fig.color_scale.min, fig.color_scale.max) == (0.0, 1.0)
    labels = sorted(float(v) for v in axis.tick_labels.values())
    assert labels[0] >= 400 and labels[-1] <= 800 and len(labels) >= 3
    # A tick at value t sits where the stretch puts t.
    t = labels[1]
    pos = float(raster.stretch((t - 400) / 400, norm))
    assert any(abs(p - pos) < 1e-9 for p in axis.tick_values)


def test_wheel_zoom_and_drag_pan_by_default(frame):
    fig = plot_image(frame)
    assert isinstance(fig.interaction, bqplot.interacts.PanZoom)
    assert fig.interaction.scales == {"x": [fig.x_scale], "y": [fig.y_scale]}
    assert plot_image(frame, panzoom=False).interaction is None


def test_zoom_renders_the_visible_part_at_screen_resolution():
    image = np.random.default_rng(0).normal(size=(900, 3000))
    fig = plot_image(image, figsize=(10, 5))
    full = png_size(fig.image_mark.image.value)
    assert full[1] < 1000  # block-averaged
    # What a wheel zoom sends (outside an event loop each trait re-renders at once).
    fig.x_scale.set_state({"min": 1000.0, "max": 1300.0})
    assert fig.n_zoom_renders >= 1
    x0, x1 = fig.image_mark.x
    assert x0 <= 1000 and x1 >= 1300 and x1 - x0 < 700  # visible range, half of it padded each side
    assert (fig.x_scale.min, fig.x_scale.max) == (1000.0, 1300.0)  # the view is the user's
    # A new image keeps the zoom.
    fig.update_image(image * 2)
    assert (fig.x_scale.min, fig.x_scale.max) == (1000.0, 1300.0)
    assert tuple(fig.image_mark.x) == (x0, x1)
    fig.reset_zoom()
    assert (fig.x_scale.min, fig.x_scale.max) == (-0.5, 2999.5)


def test_shared_scales_zoom_both_figures(frame):
    a = plot_image(frame)
    b = plot_image(frame * 2, scales={"x": a.x_scale, "y": a.y_scale})
    assert b.x_scale is a.x_scale
    a.x_scale.set_state({"min": 100.0, "max": 200.0})
    assert a.n_zoom_renders >= 1 and b.n_zoom_renders >= 1
    assert b.image_mark.x[1] - b.image_mark.x[0] < 300
