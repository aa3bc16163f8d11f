"""Tests of specwidgets.display.raster: reduction, normalisation, colormaps, PNG."""

import ast
import struct
import zlib

import numpy as np
import pytest

from specwidgets.display import raster
from specwidgets.display.raster import (
    N_DISPLAY_COLORS,
    apply_colormap,
    colormap_hex,
    colormap_names,
    display_limits,
    get_colormap,
    normalize,
    reduce_for_display,
    render_png,
    to_indexed_png,
    to_png,
)


def decode_png(data):
    """Decode the 8-bit, non-interlaced RGBA or palette PNGs we write -> RGBA array.

    Independent of the encoder on purpose: it checks the signature, every
    chunk's CRC and the filter bytes, then expands palette images via PLTE/tRNS.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks[kind] = chunks.get(kind, b"") + body  # IDAT may be split
        pos += 12 + length
    assert kind == b"IEND"
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and interlace == 0
    channels = {6: 4, 3: 1}[color_type]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8)
    raw = raw.reshape(height, 1 + width * channels)
    assert (raw[:, 0] == 0).all(), "only filter type 0 is expected"
    pixels = raw[:, 1:].reshape(height, width, channels)
    if color_type == 6:
        return pixels
    rgb = np.frombuffer(chunks[b"PLTE"], dtype=np.uint8).reshape(-1, 3)
    alpha = np.full(len(rgb), 255, dtype=np.uint8)
    trns = np.frombuffer(chunks.get(b"tRNS", b""), dtype=np.uint8)
    alpha[: len(trns)] = trns
    palette = np.column_stack([rgb, alpha])
    return palette[pixels[..., 0]]


def sky_frame(rows=947, cols=2030, seed=1):
    """A long-slit-like frame: noisy sky, sky lines, a trace and a NaN band."""
    rng = np.random.default_rng(seed)
    row = np.arange(rows)[:, None]
    frame = rng.normal(300.0, 40.0, (rows, cols))
    frame += 5000.0 * np.exp(-0.5 * ((row - rows / 2) / 6.0) ** 2)
    frame += 3000.0 * (rng.random(cols) < 0.02)
    frame[100:110] = np.nan
    return frame


# --------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------


def test_to_png_round_trips_rgba():
    rgba = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(to_png(rgba)), rgba)


def test_to_indexed_png_round_trips_with_transparency():
    palette = np.array([[255, 0, 0, 255], [0, 255, 0, 128], [0, 0, 0, 0]], dtype=np.uint8)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(to_indexed_png(indices, palette)), palette[indices])


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 4), np.float64), np.zeros((0, 2, 4), np.uint8)],
)
def test_to_png_rejects_non_rgba(bad):
    with pytest.raises(ValueError, match="rgba must be"):
        to_png(bad)


def test_to_indexed_png_rejects_index_outside_palette():
    palette = np.zeros((2, 4), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        to_indexed_png(np.array([[0, 2]], np.uint8), palette)


# --------------------------------------------------------------------------
# Reduction
# --------------------------------------------------------------------------


def test_reduce_shrinks_a_large_frame_below_the_limit_with_exact_extents():
    reduced, x, y = reduce_for_display(sky_frame(), max_shape=(400, 1000))
    assert reduced.shape == (400, 1000)
    assert x == (-0.5, 2029.5)
    assert y == (-0.5, 946.5)


def test_reduce_honours_the_requested_aspect():
    reduced, _, _ = reduce_for_display(np.ones((947, 2030)), max_shape=(900, 300))
    assert reduced.shape == (900, 300)


def test_reduce_leaves_small_images_alone():
    image = np.arange(12.0).reshape(3, 4)
    reduced, x, y = reduce_for_display(image, max_shape=(400, 1000))
    np.testing.assert_array_equal(reduced, image)
    assert (x, y) == ((-0.5, 3.5), (-0.5, 2.5))


def test_reduce_is_a_nan_ignoring_block_mean():
    # 5 rows -> 2 bins of 2 and 3 rows; 7 cols -> 3 bins of 2, 2 and 3 cols.
    rng = np.random.default_rng(3)
    image = rng.normal(size=(5, 7))
    image[0, 0] = np.nan
    image[2:5, 4:7] = np.nan  # a whole block
    reduced, _, _ = reduce_for_display(image, max_shape=(2, 3))
    row_bins, col_bins = [slice(0, 2), slice(2, 5)], [slice(0, 2), slice(2, 4), slice(4, 7)]
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty"):
        expected = np.array([[np.nanmean(image[r, c]) for c in col_bins] for r in row_bins])
    np.testing.assert_allclose(reduced, expected)
    assert np.isnan(reduced[1, 2])


def test_reduce_keeps_a_one_pixel_line_visible():
    image = np.zeros((100, 3000))
    image[:, 1234] = 1000.0
    reduced, _, _ = reduce_for_display(image, max_shape=(100, 1000))
    assert reduced.max() >= 1000.0 / 3  # diluted by at most its block width


def test_reduce_crops_to_the_pixels_overlapping_the_limits():
    image = np.arange(50.0 * 40).reshape(50, 40)
    reduced, x, y = reduce_for_display(image, xlim=(20, 30), ylim=(9.5, 19.5))
    assert x == (19.5, 30.5)  # pixels 20..30 are (partly) visible
    assert y == (9.5, 19.5)  # pixels 10..19
    np.testing.assert_array_equal(reduced, image[10:20, 20:31])


def test_reduce_clips_limits_to_the_image():
    _, x, y = reduce_for_display(np.ones((10, 20)), xlim=(-100, 5.2), ylim=(8, 1000))
    assert x == (-0.5, 5.5)
    assert y == (7.5, 9.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"xlim": (30, 40)}, "xlim.*does not overlap"),
        ({"ylim": (5, 1)}, r"ylim\[0\] < ylim\[1\]"),
        ({"max_shape": (0, 10)}, "max_shape must be positive"),
        ({"max_shape": 10}, "max_shape must be a"),
    ],
)
def test_reduce_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reduce_for_display(np.ones((10, 20)), **kwargs)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_non_2d_input_names_its_shape(shape):
    with pytest.raises(ValueError, match=rf"2D.*{shape}".replace("(", r"\(").replace(")", r"\)")):
        render_png(np.ones(shape))


def test_masked_entries_are_blank():
    image = np.ma.masked_array(np.ones((2, 2)), mask=[[True, False], [False, False]])
    reduced, _, _ = reduce_for_display(image)
    assert np.isnan(reduced[0, 0]) and reduced[1, 1] == 1.0


# --------------------------------------------------------------------------
# Limits and normalisation
# --------------------------------------------------------------------------


def test_auto_limits_are_robust_percentiles():
    image = np.arange(1.0, 10001.0).reshape(100, 100)
    image[0, 0] = 1e9  # one hot pixel must not stretch the scale
    vmin, vmax = display_limits(image)
    assert vmin == pytest.approx(np.percentile(image, 1.0), rel=0.01)
    assert vmax == pytest.approx(np.percentile(image, 99.5), rel=0.01)
    assert vmax < 1e5


def test_auto_limits_under_log_use_positive_values_only():
    image = np.concatenate([np.full(5000, -100.0), np.logspace(0, 4, 5000)]).reshape(100, 100)
    vmin, _ = display_limits(image, norm="log")
    assert vmin > 0


def test_auto_limits_of_a_blank_image_are_still_valid():
    assert display_limits(np.full((3, 3), np.nan)) == (0.0, 1.0)
    assert display_limits(np.full((3, 3), -1.0), norm="log") == (1.0, 10.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"norm": "cubic"}, "norm must be None or one of 'linear', 'log', 'sqrt', 'asinh'"),
        ({"interval": "auto"}, "interval must be 'minmax', 'zscale' or a percentile"),
        ({"interval": 0}, "interval must be"),
        ({"interval": True}, "interval must be"),
        ({"norm": "log", "symmetric": True}, "symmetric limits need a norm"),
        ({"vmin": 2, "vmax": 1}, "vmin must be less than vmax"),
        ({"vmin": 1, "vmax": 1}, "vmin must be less than vmax"),
        ({"norm": "log", "vmin": 0}, "vmin must be positive with norm='log'"),
        ({"norm": "log", "vmin": -5, "vmax": 10}, "vmin must be positive"),
        ({"vmin": np.nan}, "vmin must be finite"),
        ({"vmin": 1e9}, r"vmin must be less than vmax.*vmax taken from the data"),
    ],
)
def test_bad_limits_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        display_limits(np.arange(100.0).reshape(10, 10), **kwargs)


def test_normalize_clips_and_blanks():
    image = np.array([[-5.0, 0.0, 10.0, 55.0, 100.0, 500.0, np.nan, np.inf]])
    linear = normalize(image, vmin=10, vmax=100)
    np.testing.assert_allclose(linear[0, :6], [0, 0, 0, 0.5, 1, 1])
    assert np.isnan(linear[0, 6:]).all()
    log = normalize(image, "log", vmin=10, vmax=100)
    assert np.isnan(log[0, [6, 7]]).all()  # NaN, inf: blank
    # <= 0 has no logarithm: the lowest colour, not blank (blank reads as a hot pixel).
    np.testing.assert_array_equal(log[0, [0, 1]], [0.0, 0.0])
    np.testing.assert_allclose(log[0, 2:6], [0, np.log10(5.5), 1, 1], rtol=1e-6)


# --------------------------------------------------------------------------
# Colormaps
# --------------------------------------------------------------------------


def test_known_colormaps_and_reversals():
    names = colormap_names()
    for base in ("viridis", "gray", "inferno", "magma", "plasma"):
        assert base in names and base + "_r" in names
        table = get_colormap(base)
        assert table.shape == (256, 3) and table.dtype == np.uint8
        np.testing.assert_array_equal(get_colormap(base + "_r"), table[::-1])
    # Spot-check against matplotlib's published end colours.
    assert colormap_hex("viridis", 2) == ["#440154", "#fde725"]
    assert colormap_hex("inferno", 2) == ["#000004", "#fcffa4"]


def test_unknown_colormap_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown colormap 'nojet'.*viridis"):
        get_colormap("nojet")
    with pytest.raises(ValueError, match="unknown colormap"):
        render_png(np.ones((2, 2)), cmap="nojet")


def test_colormap_hex_matches_the_rendered_colours():
    colors = colormap_hex("magma")
    assert len(colors) == N_DISPLAY_COLORS
    ramp = np.linspace(0.0, 1.0, N_DISPLAY_COLORS)[None, :]
    rgba = apply_colormap(ramp, "magma")
    assert ["#{:02x}{:02x}{:02x}".format(*c) for c in rgba[0, :, :3]] == colors


@pytest.mark.parametrize("cmap", ["inferno", "viridis_r", "gray"])
def test_extremes_get_the_end_colours(cmap):
    image = np.linspace(0.0, 1.0, 50).reshape(5, 10)
    rgba = decode_png(render_png(image, cmap=cmap, vmin=0.0, vmax=1.0, origin="upper").png)
    table = get_colormap(cmap)
    np.testing.assert_array_equal(rgba[-1, -1], [*table[-1], 255])  # max value -> top colour
    np.testing.assert_array_equal(rgba[0, 0], [*table[0], 255])


# --------------------------------------------------------------------------
# render_png
# --------------------------------------------------------------------------


def test_render_blanks_nan_and_paints_non_positive_log_values_lowest():
    image = np.array([[1.0, np.nan, 100.0], [-3.0, 0.0, 10.0]])
    rgba = decode_png(render_png(image, norm="log", vmin=1, vmax=100, origin="upper").png)
    assert rgba.shape == (2, 3, 4)
    np.testing.assert_array_equal(rgba[..., 3], [[255, 0, 255], [255, 255, 255]])
    lowest = [*get_colormap("inferno")[0], 255]
    np.testing.assert_array_equal(rgba[1, 0], lowest)
    np.testing.assert_array_equal(rgba[1, 1], lowest)
    linear = decode_png(render_png(image, vmin=-3, vmax=100, origin="upper").png)
    np.testing.assert_array_equal(linear[..., 3], [[255, 0, 255], [255, 255, 255]])


def test_render_origin_lower_puts_row_zero_at_the_bottom():
    image = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    lower = decode_png(render_png(image, cmap="gray", vmin=0, vmax=2).png)
    upper = decode_png(render_png(image, cmap="gray", vmin=0, vmax=2, origin="upper").png)
    np.testing.assert_array_equal(lower[:, 0, 0], [255, 128, 0])
    np.testing.assert_array_equal(upper, lower[::-1])


def test_render_keeps_colours_when_zoomed():
    image = np.arange(200.0).reshape(10, 20)
    full = render_png(image)
    zoomed = render_png(image, xlim=(2, 5))
    assert (zoomed.vmin, zoomed.vmax) == (full.vmin, full.vmax)
    assert zoomed.x == (1.5, 5.5) and zoomed.shape == (10, 4)


def test_render_of_a_large_frame_is_small():
    """One screen-sized picture of a full frame fits the 1 MiB-per-update budget."""
    frame = sky_frame()
    for norm in (None, "log"):
        out = render_png(frame, norm=norm, max_shape=(400, 1000))
        rgba = decode_png(out.png)
        assert rgba.shape == (400, 1000, 4) == out.shape + (4,)
        assert len(out.png) < 2**20
        assert (rgba[..., 3] == 0).any()  # the NaN band


def test_render_of_worst_case_noise_stays_under_one_mib():
    noise = np.random.default_rng(5).random((947, 2030))
    out = render_png(noise, vmin=0.0, vmax=1.0, max_shape=(400, 1000))
    assert len(out.png) < 2**20 / 2


def test_raster_needs_only_numpy_and_the_standard_library():
    # The interactive viewer reuses this module; it must not pull in widgets
    # or matplotlib.
    tree = ast.parse(open(raster.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    # matplotlib only inside the optional fallback for colormaps not shipped here.
    allowed = {"__future__", "math", "struct", "typing", "zlib", "numpy"}
    assert imported <= allowed | {"matplotlib"}
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add(node.module.split(".")[0])
    assert top <= allowed


# --------------------------------------------------------------------------
# Stretches, intervals, diverging maps
# --------------------------------------------------------------------------


def test_sqrt_and_asinh_follow_astropy_visualization():
    from astropy.visualization import AsinhStretch, SqrtStretch

    x = np.linspace(0.0, 1.0, 11)
    image = x[None, :] * 40.0 + 10.0  # vmin 10, vmax 50 -> x
    np.testing.assert_allclose(normalize(image, "sqrt", 10, 50)[0], SqrtStretch()(x), atol=1e-6)
    np.testing.assert_allclose(normalize(image, "asinh", 10, 50)[0], AsinhStretch()(x), atol=1e-6)
    # Out-of-range values are clipped before the stretch.
    assert normalize(np.array([[0.0, 99.0]]), "asinh", 10, 50).tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zscale_matches_astropy_and_is_deterministic(seed):
    from astropy.visualization import ZScaleInterval

    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, (120, 800))
    image[50:60] += rng.uniform(0, 5000, (10, 800))  # a bright trace
    lo, hi = raster.zscale_limits(image)
    np.testing.assert_allclose((lo, hi), ZScaleInterval().get_limits(image), rtol=1e-12)
    assert 75 < lo < 100 < hi < 150  # the 5000-count trace hardly stretches the sky's limits
    first = display_limits(image, interval="zscale")
    assert all(display_limits(image, interval="zscale") == first for _ in range(3))


def test_interval_minmax_and_percentile():
    image = np.arange(1.0, 10001.0).reshape(100, 100)
    assert display_limits(image, interval="minmax") == (1.0, 10000.0)
    lo, hi = display_limits(image, interval=99.0)
    assert lo == pytest.approx(np.percentile(image, 0.5), rel=1e-3)
    assert hi == pytest.approx(np.percentile(image, 99.5), rel=1e-3)
    assert display_limits(image, interval="99") == (lo, hi)


def test_symmetric_limits_for_residuals():
    image = np.r_[np.linspace(-2.0, 0, 50), np.linspace(0, 300.0, 50)].reshape(10, 10)
    lo, hi = display_limits(image, interval="minmax", symmetric=True)
    assert (lo, hi) == (-300.0, 300.0)
    assert display_limits(image, vmax=5, symmetric=True) == (-5.0, 5.0)
    assert display_limits(image, vmin=-4, symmetric=True) == (-4.0, 4.0)
    # Zero sits in the middle of the map: the neutral colour of a diverging map.
    rgba = decode_png(render_png(np.array([[0.0]]), cmap="RdBu_r", vmin=-1, vmax=1).png)
    assert rgba[0, 0, :3].min() > 230  # near white


def test_diverging_and_matplotlib_colormaps():
    assert {"RdBu", "RdBu_r", "coolwarm", "coolwarm_r"} <= set(colormap_names())
    assert colormap_hex("RdBu_r", 2) == ["#053061", "#67001f"]
    mpl = pytest.importorskip("matplotlib")
    np.testing.assert_array_equal(
        get_colormap("cividis"), np.asarray(mpl.colormaps["cividis"](np.linspace(0, 1, 256), bytes=True))[:, :3]
    )
    np.testing.assert_array_equal(
        get_colormap("coolwarm"), np.asarray(mpl.colormaps["coolwarm"](np.linspace(0, 1, 256), bytes=True))[:, :3]
    )
    with pytest.raises(ValueError, match="matplotlib does not know it either"):
        get_colormap("no_such_map")


def test_without_matplotlib_an_unshipped_name_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    monkeypatch.setattr(raster, "_MPL_CACHE", {})
    with pytest.raises(ValueError, match="need matplotlib"):
        get_colormap("cividis")
    assert get_colormap("RdBu_r").shape == (256, 3)  # shipped maps need nothing


def test_auto_log_limits_span_at_most_four_decades():
    """A bias-subtracted arc: most pixels ~0 (some 1e-13 above), lines at 1000: not 1e-13..1000 (speckle)."""
    from specwidgets.display.raster import display_limits

    rng = np.random.default_rng(0)
    arc = np.abs(rng.normal(0.0, 1e-13, (50, 400)))
    arc[:, ::40] = 1000.0
    lo, hi = display_limits(arc, norm="log")
    assert hi / lo <= 1e4 + 1e-6 and hi == 1000.0
    # Given limits are kept as given.
    assert display_limits(arc, norm="log", vmin=1e-13, vmax=1000.0) == (1e-13, 1000.0)
