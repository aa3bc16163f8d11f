"""The widget layer, driven as the front end drives it (no browser).

Slider values are set as the browser sets them on release, clicks arrive
as ``element_click`` custom messages through a mark's
``_handle_custom_msgs`` (with the payload bqplot 0.13.1's JavaScript
sends: ``{"click_x", "click_y"}`` for an Image, the element's datum
``{"x", "y", "index", ...}`` for a Scatter), hovers as ``hover`` messages,
and brushes as ``brushing=True``, ``selected=...``, ``brushing=False``.
"""

import asyncio

import ipywidgets
import numpy as np
import pytest

from specwidgets.interactive import (
    Dashboard,
    Debounced,
    ImageViewer,
    SEDExplorer,
    WarpGuessPicker,
    aggregate_sed,
)
from specwidgets.interactive.state import SkyState
from specwidgets.io.sample_data import goodman_available
from specwidgets.io.synthetic import make_synthetic_longslit
from specwidgets.testing import PayloadMeter

MIB = 2**20


@pytest.fixture(scope="module")
def frames():
    return make_synthetic_longslit(shape=(60, 400), n_exposures=2, tilt=2.0, n_sky_lines=12, n_arc_lines=10, seed=5)


@pytest.fixture()
def dash(frames):
    return Dashboard(frames.science, frames.arc, mask_region=frames.trace_rows, read_noise=4.0)


def click(mark, **data):
    mark._handle_custom_msgs(None, {"event": "element_click", "data": data})


def hover(mark, **data):
    mark._handle_custom_msgs(None, {"event": "hover", "data": data})


def brush(selector, *values):
    """A drag: brushing starts, the range moves, the mouse is released."""
    selector.brushing = True
    for v in values:
        selector.selected = list(v)
    selector.brushing = False


# ----------------------------------------------------------------- dashboard
def test_dashboard_composes_one_state(dash, frames):
    assert dash.error == ""
    assert dash.viewer.state is dash.state and dash.sed.state is dash.state and dash.picker.state is dash.state
    assert dash.mask_region == [frames.trace_rows]
    assert dash.background.shape == frames.science.shape
    assert dash.warp_model is dash.state.warp_model
    assert isinstance(dash, ipywidgets.VBox)


def test_mask_slider_recomputes_in_place(dash):
    viewer, state = dash.viewer, dash.state
    slider = viewer.mask_slider
    assert isinstance(slider, ipywidgets.IntRangeSlider)
    assert "Mask rows" in slider.description and slider.continuous_update is False
    fig, marks, image_mark = viewer.figure, list(viewer.figure.marks), viewer.image_mark
    envelope_x = dash.sed.envelope.x
    before, fits = dash.background, state.n_sky_fits

    slider.value = (15, 30)

    assert state.n_sky_fits == fits + 1 and state.n_warp_fits == 1
    assert dash.mask_region == [(15, 30)]
    assert not np.array_equal(before, dash.background)
    np.testing.assert_allclose(np.atleast_2d(viewer.mask_bands.y), [[14.5, 14.5, 29.5, 29.5, 14.5]])
    # Updated in place: same figure, marks and mark objects.
    assert viewer.figure is fig and list(fig.marks) == marks and viewer.image_mark is image_mark
    assert dash.sed.envelope.x is not envelope_x  # new data in the same mark


def test_add_and_remove_mask_ranges(dash, frames):
    viewer, state = dash.viewer, dash.state
    viewer.add_button.click()
    assert len(state.masks) == 2 and viewer.active_range == 1
    assert len(viewer.mask_bands.y) == 2
    viewer.mask_slider.value = (50, 55)
    assert state.masks[1] == (50, 55) and state.masks[0] == frames.trace_rows
    assert state.result.mask[50:55].all()
    viewer.mask_select.value = 0
    assert viewer.mask_slider.value == frames.trace_rows
    viewer.remove_button.click()
    assert state.masks == [(50, 55)] and np.atleast_2d(viewer.mask_bands.y).shape == (1, 5)
    viewer.remove_button.click()
    assert state.masks == [] and viewer.mask_slider.disabled
    assert state.error == ""


def test_a_range_dragged_over_another_says_they_became_one(dash, frames):
    """Overlapping ranges mask the same rows and the state keeps them as one; the viewer says so (the selector
    used to drop one without a word), and the next edit clears the note."""
    viewer, state = dash.viewer, dash.state
    lo, hi = frames.trace_rows
    viewer.add_range(hi + 5, hi + 9)
    assert len(state.masks) == 2 and viewer.mask_note.value == ""
    viewer.mask_slider.value = (hi - 2, hi + 9)  # the second range's lower handle dragged over the trace's
    assert len(state.masks) == 1 and state.masks[0] == (lo, hi + 9)
    assert f"{lo}:{hi} and {hi - 2}:{hi + 9} overlap: now one range {lo}:{hi + 9}" in viewer.mask_note.value
    viewer.mask_slider.value = (lo, hi + 8)
    assert viewer.mask_note.value == ""
    dash.undo_button.click()
    dash.undo_button.click()
    assert len(state.masks) == 2


def test_mask_over_every_row_is_shown_and_last_result_kept(dash):
    good = dash.background
    dash.viewer.mask_slider.value = (0, 60)  # no exception escapes
    assert "covers every" in dash.state.error
    assert dash.status.banner.layout.display is None and "covers every" in dash.status.banner.value
    assert dash.background is good
    dash.viewer.mask_slider.value = (10, 40)
    assert dash.state.error == "" and dash.status.banner.layout.display == "none"
    assert dash.background is not good


def test_the_exposure_menu_names_the_files_and_their_targets(frames):
    """A night's exposures are told apart by file and target, not "exposure 0", "exposure 1" (trial J1)."""
    from astropy.io import fits

    dash = Dashboard(frames.science, frames.arc, mask_region=frames.trace_rows, read_noise=4.0,
                     exposure_names=["night/r0012.fits", "night/r0013.fits"],
                     input_headers=[fits.Header({"OBJECT": "NGC 253"}), fits.Header({"OBJECT": "Feige 110"})])
    assert [label for label, _ in dash.viewer.exposure.options] == ["0: r0012.fits (NGC 253)",
                                                                     "1: r0013.fits (Feige 110)"]
    dash.viewer.exposure.value = 1
    assert dash.state.exposure == 1


def test_views_exposures_and_stretch(dash):
    viewer, state = dash.viewer, dash.state
    pictures = {viewer.image_mark.image.value}
    for view in ("background", "corrected", "chi"):
        viewer.view_buttons.value = view
        assert viewer.view == view and viewer.figure.title.startswith(view.capitalize())
        pictures.add(viewer.image_mark.image.value)
    assert len(pictures) == 4
    assert viewer.stretch.value == "linear"  # chi's natural stretch
    np.testing.assert_allclose(viewer._view_array(), state.result.chi[0])

    n = dash.sed.n_aggregations
    viewer.exposure.value = 1
    assert state.exposure == 1 and viewer.figure.title.endswith("exposure 1")
    assert dash.sed.n_aggregations == n + 1

    viewer.auto_limits.value = False
    viewer.vmin.value, viewer.vmax.value = -3.0, 3.0
    assert (viewer.figure.color_scale.min, viewer.figure.color_scale.max) == (-3.0, 3.0)
    viewer.view = "science"
    assert viewer.stretch.value == "log" and viewer.auto_limits.value


def test_colour_bar_names_the_frames_unit(frames):
    # A new user's trial: frames read in electrons showed "Counts".
    from specwidgets.core.frames import FrameArray

    plain = Dashboard(np.array(frames.science), frames.arc, mask_region=frames.trace_rows, read_noise=4.0)
    assert plain.viewer.figure.color_axis.label == "Counts"  # (a plain array: no unit known)
    assert plain.sed.figure.axes[1].label == "Counts"
    plain.close()
    science = FrameArray(np.asarray(frames.science), gain=1.0, read_noise=4.0, unit="electron")
    dash = Dashboard(science, frames.arc, mask_region=frames.trace_rows)
    assert dash.viewer.figure.color_axis.label == "Electrons"
    dash.viewer.view = "chi"
    assert dash.viewer.figure.color_axis.label == "(data - sky) / sigma"
    dash.viewer.view = "corrected"
    assert dash.viewer.figure.color_axis.label == "Electrons"
    assert dash.sed.figure.axes[1].label == "Electrons"
    dash.close()


def test_hover_and_click_readout(dash):
    viewer, state = dash.viewer, dash.state
    grid = viewer.hover_mark
    assert 0 < grid.x.size <= 4000 and grid.opacities == [0.0]
    i = grid.x.size // 2 + 7
    hover(grid, x=float(grid.x[i]), y=float(grid.y[i]), index=i)
    r = viewer.readout
    assert (r["x"], r["y"]) == (int(round(grid.x[i])), int(round(grid.y[i])))
    assert r["value"] == state.science[0][r["y"], r["x"]]
    assert r["effpix"] == pytest.approx(state.warp_model.effpix_map()[r["y"], r["x"]])
    assert f"col {r['x']}" in viewer.readout_label.value and f"row {r['y']}" in viewer.readout_label.value

    grid.hovered_point = 3  # the other path the browser uses
    assert (viewer.readout["x"], viewer.readout["y"]) == (int(round(grid.x[3])), int(round(grid.y[3])))

    viewer.view = "background"
    click(viewer.image_mark, click_x=123.4, click_y=29.6)
    assert (viewer.readout["x"], viewer.readout["y"]) == (123, 30)
    assert viewer.readout["value"] == state.background[0, 30, 123]
    assert viewer.readout["masked"] == (state.masks[0][0] <= 30 < state.masks[0][1])
    click(viewer.image_mark, click_x=-50.0, click_y=5.0)
    assert viewer.readout == {} and dash.status.widget_error == ""


# -------------------------------------------------------------------- picker
def test_profile_click_adds_and_guess_click_removes(dash):
    picker, state = dash.picker, dash.state
    n, fits = len(state.guesses), state.n_warp_fits
    true_line = float(state.lines[3])
    # A click where the profile has no line says so and adds nothing.
    empty = next(x for x in np.arange(5.0, 395.0, 7.0) if picker.line_near(x) is None)
    click(picker.click_mark, click_x=float(empty), click_y=0.0)
    assert len(state.guesses) == n and state.n_warp_fits == fits
    assert "No arc line within" in picker.click_message.value
    click(picker.click_mark, click_x=true_line + 1.3, click_y=0.0)
    assert len(state.guesses) == n + 1 and state.guesses[-1] == pytest.approx(true_line + 1.3)
    assert state.n_warp_fits == fits + 1 and picker.guess_mark.x.size == n + 1
    assert picker.click_message.value == ""

    # Remove the guess on a real line through its marker.
    index = int(np.argmin(np.abs(np.asarray(state.guesses) - true_line)))
    click(picker.guess_mark, x=float(picker.guess_mark.x[index]), y=0.0, index=index)
    assert len(state.guesses) == n and all(abs(g - true_line) > 1e-6 for g in state.guesses)
    assert state.n_warp_fits == fits + 2
    assert picker.curves_mark.x.shape[0] == np.isfinite(state.warp_model.traces.ref_positions).sum()


def test_tolerance_and_threshold_sliders(dash):
    picker, state = dash.picker, dash.state
    assert picker.tolerance.continuous_update is False and picker.threshold.continuous_update is False
    warp_fits, searches = state.n_warp_fits, state.n_line_searches
    picker.tolerance.value = 8.0
    assert state.tolerance == 8.0 and state.n_warp_fits == warp_fits + 1
    picker.threshold.value = 20.0
    assert state.std_variation == 20.0 and state.n_line_searches == searches + 1
    assert picker.found_mark.x.size == len(state.lines)
    assert "<table" in picker.residuals.value


def test_poor_warp_model_warning(dash):
    picker, state = dash.picker, dash.state
    assert picker.warning.layout.display == "none"
    with state.hold():  # the seed's "Bad Warp Models": few guesses in a dim region
        state.guesses = [100.0, 110.0, 120.0]
        state.tolerance = 2.0
    assert state.warp_model.is_poor and state.error == ""
    assert picker.warning.layout.display is None
    for w in state.warp_model.quality_warnings:
        assert w.split(":")[0][:30] in picker.warning.value.replace("&#x27;", "'")
    assert "not found" in picker.residuals.value


def test_guesses_that_fit_nothing(dash):
    dash.picker.tolerance.value = 0.5
    model, background = dash.warp_model, dash.background
    with dash.state.hold():
        dash.state.guesses = [5.0, 15.0]  # no line within 0.5 px of either
    assert "no line could be fit" in dash.state.error
    assert "no line could be fit" in dash.status.banner.value
    assert dash.warp_model is model and dash.background is background


# ----------------------------------------------------------------------- SED
def test_brush_highlights_on_release_only(dash):
    sed, viewer, state = dash.sed, dash.viewer, dash.state
    fits, aggregations = state.n_sky_fits, sed.n_aggregations
    sed.brush.brushing = True
    for v in ([100.0, 101.0], [100.0, 110.0], [100.0, 140.0]):
        sed.brush.selected = v
        # Mid-drag: nothing recomputed, nothing sent to the image viewer.
        assert viewer.highlight is None and sed.selected_range is None
        assert viewer.highlight_mark.x.size == 0
    sed.brush.brushing = False
    assert viewer.highlight == (100.0, 140.0)
    assert state.n_sky_fits == fits and sed.n_aggregations == aggregations

    # The outline follows the iso-effective-pixel curves e0, e1.
    model = state.warp_model
    x, y = viewer.highlight_mark.x, viewer.highlight_mark.y
    n = (x.size - 1) // 2
    np.testing.assert_allclose(x[:n], model.column_of(np.full(n, 100.0), y[:n]), atol=1e-3)
    np.testing.assert_allclose(x[n : 2 * n], model.column_of(np.full(n, 140.0), y[n : 2 * n]), atol=1e-3)
    pixels = viewer.highlight_pixels()
    emap = model.effpix_map()
    assert pixels.any() and np.all((emap[pixels] >= 100) & (emap[pixels] <= 140))

    sed.clear_button.click()
    assert viewer.highlight is None and viewer.highlight_mark.x.size == 0


def test_zoom_reaggregates_visible_range(dash):
    sed = dash.sed
    full = sed.aggregate
    sed.mode.value = "zoom"
    assert sed.figure.interaction is sed.panzoom
    with sed.x_scale.hold_sync():  # what PanZoom does in the browser
        sed.x_scale.min, sed.x_scale.max = 150.0, 170.0
    agg = sed.aggregate
    assert agg is not full and agg.x.min() >= 150 and agg.x.max() <= 170
    assert agg.n_samples < full.n_samples and agg.x.size > 0
    sed.reset_button.click()
    assert sed.x_range[0] == pytest.approx(full.edges[0])
    sed.mode.value = "brush"
    assert sed.figure.interaction is sed.brush


def test_million_samples_are_aggregated():
    big = make_synthetic_longslit(shape=(640, 2048), n_exposures=1, tilt=3.0, n_sky_lines=30, n_arc_lines=10, seed=7)
    state = SkyState(big.science, warp_model=big.warp, mask_region=[big.trace_rows], read_noise=4.0)
    assert state.result.samples.effpix.size > 1_000_000
    sed = SEDExplorer(state, n_bins=1000)
    with PayloadMeter() as meter:
        sed.refresh()
    for mark in (sed.envelope, sed.p99_line, sed.median_line, sed.model_line):
        assert mark.x.shape[-1] <= 2 * sed.n_bins + 2
    assert meter.total_bytes < 100_000
    rng = np.random.default_rng(0)
    e = np.sort(rng.uniform(0, 2048, 2_000_000))
    agg = aggregate_sed(e, rng.normal(100, 10, e.size), n_bins=1000)
    assert agg.x.size == 1000 and agg.count.sum() == e.size


def test_trace_leak_is_visible():
    frames = make_synthetic_longslit(shape=(80, 600), n_exposures=1, tilt=2.0, n_arc_lines=12, seed=9)
    a, b = frames.trace_rows
    state = SkyState(frames.science, warp_model=frames.warp, mask_region=[(a, b)], read_noise=4.0)
    sed = SEDExplorer(state, n_bins=300)
    assert sed.leaking_rows == [] and sed.leak_banner.layout.display == "none"
    clean_excess = _excess(sed)

    state.mask_region = [(a, (a + b) // 2)]  # half the trace left in the sky rows
    leak = _excess(sed)
    # The envelope's maximum rises far above the model at many positions.
    assert np.mean(leak > 5.0) > 0.5 and np.mean(clean_excess > 5.0) < 0.05
    assert sed.leaking_rows and sed.leaking_rows[0][0] == (a + b) // 2
    assert "Light well above the sky model" in sed.leak_banner.value and "widen the mask" in sed.leak_banner.value
    # A second source far from the mask is not called the trace's wings.
    rows = np.arange(frames.science.shape[1])
    far = 8 if a > 30 else frames.science.shape[1] - 8
    state.mask_region = [(a, b)]
    state.science = frames.science + 300.0 * np.exp(-0.5 * ((rows - far) / 1.5) ** 2)[None, :, None]
    assert sed.leaking_rows and "another source" in sed.leak_banner.value
    assert "widen" not in sed.leak_banner.value


def _excess(sed):
    """Envelope maximum over the model's highest value in the bin, in photon-noise units."""
    half = 0.5 * np.diff(sed.aggregate.edges)[0]
    model = np.max([np.interp(sed.envelope.x + d, sed.model_line.x, sed.model_line.y) for d in (-half, 0, half)], 0)
    return (sed.envelope.y[0] - model) / np.sqrt(model + 16.0)


# ------------------------------------------------------------------- method
def test_method_toggle(dash):
    dash.method.value = "median"
    assert dash.state.method == "median" and dash.state.result.method == "median"
    assert dash.sed.model_line.x.size > 0
    dash.state.method = "bspline"
    assert dash.method.value == "bspline"


# ---------------------------------------------------------- busy and errors
def test_busy_indicator_and_duration(dash):
    seen = []
    dash.status.busy_label.observe(lambda c: seen.append(c["new"]), names="value")
    dash.viewer.mask_slider.value = (12, 40)
    assert any("computing" in s for s in seen)
    assert "ready" in seen[-1] and "ms" in seen[-1]
    assert dash.state.last_duration > 0


def test_widget_callback_errors_are_reported_not_raised(dash, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(dash.viewer.figure, "update_image", broken)
    dash.viewer.view_buttons.value = "corrected"  # would raise without the guard
    assert "renderer exploded" in dash.status.banner.value
    monkeypatch.undo()
    dash.viewer.view_buttons.value = "background"
    assert dash.status.widget_error == ""


# ------------------------------------------------------------------ debounce
def test_rapid_changes_coalesce_in_a_running_loop(dash):
    state = dash.state
    fits = state.n_sky_fits

    async def drag():
        for stop in range(31, 41):  # ten releases in quick succession
            dash.viewer.mask_slider.value = (10, stop)
        assert state.n_sky_fits == fits  # nothing yet: the burst is not over
        await asyncio.sleep(0.3)

    asyncio.run(drag())
    assert state.n_sky_fits == fits + 1 and dash.mask_region == [(10, 40)]


def test_debounced_errors_go_to_the_handler():
    errors = []
    fn = Debounced(lambda: 1 / 0, delay=0.01, on_error=errors.append)

    async def run():
        fn()
        await asyncio.sleep(0.05)

    asyncio.run(run())
    fn()
    assert len(errors) == 2 and all(isinstance(e, ZeroDivisionError) for e in errors)


# ------------------------------------------------------------------- payload
def test_one_mask_change_sends_under_a_mebibyte():
    dash = Dashboard.from_demo()
    dash.viewer.view = "corrected"
    with PayloadMeter() as meter:
        dash.viewer.mask_slider.value = (40, 75)
    assert dash.state.error == ""
    assert 0 < meter.total_bytes <= MIB
    assert "ImageModel" in meter.by_widget()  # the new picture was part of it


def test_standalone_components(frames):
    state = SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows], read_noise=4.0)
    for cls in (ImageViewer, WarpGuessPicker, SEDExplorer):
        widget = cls(state)
        assert widget.own_status and widget.children[0] is widget.status


def test_starts_without_a_result_then_recovers(frames):
    dash = Dashboard(frames.science, frames.arc, mask_region=(0, 60), read_noise=4.0)
    assert dash.background is None and "covers every" in dash.status.banner.value
    # The status does not call the page ready without a fit.
    assert "no sky fit" in dash.status.busy_label.value and "ready" not in dash.status.busy_label.value
    assert "no sky fit yet" in dash.sed.info.value
    dash.viewer.view = "corrected"
    assert "no sky fit yet" in dash.viewer.figure.title
    dash.viewer.mask_slider.value = (20, 40)
    assert dash.background.shape == frames.science.shape and dash.status.banner.layout.display == "none"
    assert dash.sed.aggregate is not None and "no sky fit yet" not in dash.viewer.figure.title
    assert "no sky fit" not in dash.status.busy_label.value
    # A refused change keeps the last good fit, and says so beside it.
    dash.viewer.mask_slider.value = (0, 60)
    assert dash.background is not None and "last change not applied" in dash.status.busy_label.value
    dash.viewer.mask_slider.value = (22, 40)
    assert dash.mask_region == [(22, 40)] and "not applied" not in dash.status.busy_label.value


def test_dashboard_without_an_arc(frames):
    state = SkyState(frames.science, warp_model=frames.warp, mask_region=[frames.trace_rows])
    dash = Dashboard(state=state)
    assert dash.picker is None and len(dash.tabs.children) == 1
    dash.viewer.mask_slider.value = (5, 30)
    assert dash.mask_region == [(5, 30)] and dash.error == ""


@pytest.mark.skipif("Dashboard" not in getattr(__import__("specwidgets"), "_LAZY", {}),
                    reason="the widget names are not in specwidgets._LAZY yet")
def test_exported_from_the_package():
    import specwidgets

    for name in ("ImageViewer", "WarpGuessPicker", "SEDExplorer", "Dashboard"):
        assert getattr(specwidgets, name) is globals()[name]
        assert name in dir(specwidgets)


@pytest.mark.goodman
@pytest.mark.skipif(not goodman_available(), reason="Goodman sample not available")
def test_goodman_full_frame_payload_and_outputs():
    from specwidgets.io.sample_data import load_goodman

    sample = load_goodman(crop_bds=(0, None))
    dash = Dashboard(sample.science[:1], sample.arc, mask_region=(700, 790), read_noise=sample.read_noise)
    dash.viewer.view = "background"
    with PayloadMeter() as meter:
        dash.viewer.mask_slider.value = (698, 792)
    assert dash.error == "" and dash.mask_region == [(698, 792)]
    assert dash.background.shape == (1, 947, 2030)
    assert meter.total_bytes <= MIB


@pytest.mark.goodman
@pytest.mark.skipif(not goodman_available(), reason="Goodman sample not available")
def test_goodman_bad_warp_model_case():
    dash = Dashboard.from_goodman()
    assert dash.mask_region == [(20, 100)] and dash.background.shape == (2, 120, 2030)
    with dash.state.hold():
        dash.state.guesses = [250.0, 260.0, 270.0]
        dash.state.tolerance = 2.0
    assert dash.warp_model.is_poor
    assert dash.picker.warning.layout.display is None and "Poor warp model" in dash.picker.warning.value


def test_dashboard_export_writes_the_batch_files(tmp_path):
    from astropy.io import fits

    import specwidgets as sw
    from specwidgets.io.synthetic import make_synthetic_longslit

    frames = make_synthetic_longslit(shape=(40, 300), n_exposures=2, n_arc_lines=8, seed=3)
    dash = sw.Dashboard(frames.science, frames.arc, mask_region=frames.trace_rows, read_noise=4.0,
                        exposure_names=["a.fits", "b.fits"])
    dash.export_folder.value = str(tmp_path / "out")
    dash.export_button.click()
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["a_sky.fits", "b_sky.fits"]
    with fits.open(tmp_path / "out" / "b_sky.fits") as hdul:
        assert [h.name for h in hdul[1:]] == ["SCI", "SKY", "VAR", "MASK"]
        assert abs(hdul["SKY"].data - dash.background[1]).max() < 1e-2 * abs(dash.background[1]).max()
    assert "wrote 2 file(s)" in dash.export_message.value
    dash.export_folder.value = " "
    dash.export_button.click()  # reported in the banner, not raised
    assert "type the folder" in dash.status.banner.value


def test_dashboard_export_relative_folder_is_the_launcher_folder(tmp_path, monkeypatch):
    """Under Voila the kernel runs in the package: a relative export folder means the launcher's folder."""
    import specwidgets as sw
    from specwidgets.io.synthetic import make_synthetic_longslit

    start, elsewhere = tmp_path / "start", tmp_path / "kernel_cwd"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("SPECWIDGETS_DASHBOARD_CWD", str(start))
    frames = make_synthetic_longslit(shape=(40, 300), n_exposures=1, n_arc_lines=8, seed=3)
    dash = sw.Dashboard(frames.science, frames.arc, mask_region=frames.trace_rows, read_noise=4.0)
    assert dash.export_folder.value == "specwidgets_sky"
    dash.export_button.click()
    assert sorted(p.name for p in (start / "specwidgets_sky").iterdir()) == ["exposure_0_sky.fits"]
    assert not any(elsewhere.iterdir())
    assert str((start / "specwidgets_sky").resolve()) in dash.export_message.value


# ------------------------------------------------- preview, history, navigation
def test_preview_updates_after_a_mask_change(dash, frames):
    preview = dash.preview
    assert preview.extraction is not None and preview.score is not None
    assert preview.flux_line.x.size == frames.science.shape[2]
    assert "Sky-line residual" in preview.info.value
    n, first = preview.n_updates, preview.extraction.flux.copy()
    a, b = frames.trace_rows
    dash.viewer.mask_slider.value = (a - 3, b + 2)
    assert preview.n_updates == n + 1
    assert not np.array_equal(preview.extraction.flux, first)
    # The preview shares the image's column scale: zooming one zooms the other.
    assert preview.x_scale is dash.viewer.figure.x_scale
    preview.method.value = "boxcar"
    assert preview.extraction.method == "boxcar" and preview.n_updates == n + 2
    # The trace is editable: shift it, fix the aperture.
    rows = preview.trace.rows.copy()
    preview.shift.value = 1.5
    np.testing.assert_allclose(preview.trace.rows, rows + 1.5)
    preview.aperture.value = 9.0
    assert preview.extraction.width == 9.0


def test_undo_and_redo_of_mask_and_guesses(dash):
    state = dash.state
    assert dash.undo_button.disabled and dash.redo_button.disabled
    before = state.masks
    dash.viewer.mask_slider.value = (5, 15)
    assert state.masks == [(5, 15)] and not dash.undo_button.disabled
    dash.undo_button.click()
    assert state.masks == before and not dash.redo_button.disabled
    assert dash.viewer.mask_slider.value == before[0]
    dash.redo_button.click()
    assert state.masks == [(5, 15)]
    guesses = list(state.guesses)
    dash.picker.remove_guess(0)
    assert len(state.guesses) == len(guesses) - 1
    # Ctrl-Z as the browser sends it (ipyevents), and Ctrl-Shift-Z.
    assert dash.shortcuts.handle({"type": "keydown", "key": "z", "ctrlKey": True}) == "undo"
    assert state.guesses == guesses
    assert dash.shortcuts.handle({"type": "keydown", "key": "Z", "ctrlKey": True, "shiftKey": True}) == "redo"
    assert len(state.guesses) == len(guesses) - 1
    assert dash.shortcuts.handle({"type": "keydown", "key": "z"}) is None  # plain z: typing


def test_residual_views_are_diverging_and_symmetric(dash):
    viewer = dash.viewer
    for view in ("chi", "corrected"):
        viewer.view = view
        lo, hi = viewer.figure.limits
        assert lo == -hi and hi > 0
        assert viewer.figure.color_scale.colors[0] == "#053061"  # RdBu_r
        assert viewer.interval.value == "zscale"
    assert -10 < viewer.figure.limits[0] < 0 or view == "corrected"
    viewer.view = "chi"
    assert viewer.figure.limits[1] < 10  # chi of the sky is ~1: zscale, not the trace
    viewer.view = "science"
    assert viewer.stretch.value == "log" and viewer.cmap.value == "inferno"
    viewer.stretch.value = "asinh"
    viewer.cmap.value = "viridis"
    assert viewer.figure.color_scale.colors[0] == "#440154"
    viewer.cmap.value = "nojet"  # reported, not raised
    assert "unknown colormap" in dash.status.banner.value


def test_blink_and_cursor_readout(dash):
    viewer = dash.viewer
    viewer.blink_button.value = True  # no event loop: one step
    assert viewer.view == "corrected" and viewer.blink_button.value is False
    viewer.blink_mode.value = "exposures"
    viewer.blink_button.value = True
    assert dash.state.exposure == 1
    fig = viewer.figure
    m = fig.fig_margin
    width, height = 1000, 400
    plot_w, plot_h = width - m["left"] - m["right"], height - m["top"] - m["bottom"]
    viewer.cursor.handle({"type": "mousemove", "relativeX": m["left"] + plot_w / 2,
                          "relativeY": m["top"] + plot_h / 2, "boundingRectWidth": width,
                          "boundingRectHeight": height})
    n_rows, n_cols = dash.state.shape
    assert abs(viewer.readout["x"] - (n_cols - 1) / 2) <= 1 and abs(viewer.readout["y"] - (n_rows - 1) / 2) <= 1
    assert f"row {viewer.readout['y']}, col {viewer.readout['x']}" in viewer.readout_label.value
    # The other panels read out too: the arc image and the 1D preview.
    dash.picker._on_arc_cursor(10.2, 5.7)
    assert f"row 6, col 10: arc = {dash.state.arc[6, 10]:.5g}" in dash.picker.arc_readout.value
    dash.preview.show_readout(20.4)
    assert f"col 20: target = {dash.preview.extraction.flux[20]:.5g}" in dash.preview.readout.value


def test_zoom_in_the_image_moves_the_arc_image(dash):
    scale = dash.viewer.figure.x_scale
    assert dash.picker.arc_figure.x_scale is scale
    scale.set_state({"min": 100.0, "max": 150.0})
    assert dash.picker.arc_figure.n_zoom_renders >= 1
    x0, x1 = dash.picker.arc_figure.image_mark.x
    assert x0 <= 100 and x1 >= 150 and x1 - x0 < 200


def test_session_round_trip_gives_the_same_sky(dash, frames, tmp_path):
    state = dash.state
    dash.viewer.mask_slider.value = (8, 30)
    with state.hold():
        state.tolerance = 10.0
        state.std_variation = 30.0
    dash.picker.remove_guess(0)
    state.method = "median"
    dash.viewer.view = "chi"
    dash.viewer.cmap.value = "coolwarm"
    path = dash.save_session(tmp_path / "s.json")
    assert "saved" in dash.session_message.value

    other = Dashboard(frames.science, frames.arc, mask_region=frames.trace_rows, read_noise=4.0)
    assert other.load_session(path) == []
    for name in ("mask_region", "guesses", "tolerance", "std_variation", "method", "read_noise"):
        assert getattr(other.state, name) == getattr(state, name), name
    np.testing.assert_allclose(other.background, dash.background, rtol=1e-6, atol=0)
    assert other.viewer.view == "chi" and other.viewer.cmap.value == "coolwarm"
    other.undo()  # a load is undoable like any edit
    assert other.state.guesses != state.guesses or other.state.masks != state.masks


def test_session_errors_are_clear(dash, tmp_path):
    import json

    with pytest.raises(ValueError, match="no session file"):
        dash.load_session(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON session"):
        dash.load_session(bad)
    other = tmp_path / "other.json"
    data = json.loads(dash.save_session(tmp_path / "ok.json").read_text())
    data["frames"]["shape"] = [10, 20]
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="saved for frames of shape"):
        dash.load_session(other)
    with pytest.raises(ValueError, match="is a folder"):
        dash.save_session(tmp_path)
    dash.session_path.value = str(tmp_path / "missing.json")
    dash.load_session_button.click()  # reported in the banner, not raised
    assert "no session file" in dash.status.banner.value


# ------------------------------------------------------------ view switches
def test_view_switch_after_idle_sends_a_picture_already_made(dash):
    """In a running kernel the other views are rendered once idle: switching recomputes nothing."""
    viewer, state = dash.viewer, dash.state

    async def session():
        dash.viewer.mask_slider.value = (12, 30)  # a new result, as a slider release
        await asyncio.sleep(1.6)                  # idle: applied, then the other views rendered (chi after 1 s)
        fits, renders = state.n_sky_fits, viewer.figure.n_renders
        hrefs = []
        for view in ("background", "corrected", "chi", "science"):
            viewer.view = view
            hrefs.append(viewer.figure.image_mark.image.value)
        return fits, renders, hrefs

    fits, renders, hrefs = asyncio.run(session())
    assert viewer.n_prerenders >= 3  # the other views (and science, first drawn by plot_image)
    assert state.n_sky_fits == fits, "a view switch refit the sky"
    assert viewer.figure.n_renders == renders, "a view switch rendered a picture"
    assert viewer.figure.n_cached_renders >= 4
    assert len({bytes(h) for h in hrefs}) == 4  # four different pictures
    # The cached picture is the one a fresh render gives.
    from specwidgets.display.plotting import _render

    fresh = _render(dict(viewer.figure._settings, image=viewer._view_array("chi"),
                         **viewer._display_settings("chi")))
    viewer.view = "chi"
    assert bytes(viewer.figure.image_mark.image.value) == fresh["png"]


def test_a_new_result_drops_the_pictures_made_ahead(dash):
    viewer = dash.viewer

    async def session():
        viewer.mask_slider.value = (12, 30)
        await asyncio.sleep(0.6)
        viewer.view = "corrected"
        before = bytes(viewer.figure.image_mark.image.value)
        viewer.mask_slider.value = (8, 36)
        await asyncio.sleep(0.3)
        return before, bytes(viewer.figure.image_mark.image.value)

    before, after = asyncio.run(session())
    assert before != after, "the corrected view kept the picture of the old mask"


def test_a_single_slider_release_is_not_delayed(dash):
    """The first edit after a quiet spell applies on the next turn of the loop, not after the debounce delay."""
    dash.viewer._commit_mask.delay = 5.0  # a delay this long would fail the test
    fits = dash.state.n_sky_fits

    async def release():
        dash.viewer.mask_slider.value = (10, 33)
        await asyncio.sleep(0.05)
        return dash.state.n_sky_fits

    assert asyncio.run(release()) == fits + 1
    assert dash.mask_region == [(10, 33)]


def test_mask_passes_from_slider_to_fit_as_one_value(dash, monkeypatch):
    """Slider -> RowRanges (parsed once, resolved once) -> state -> fit_sky -> result: one object."""
    import inspect

    import specwidgets.interactive.state as state_module
    from specwidgets.core import rows
    from specwidgets.core.rows import RowRanges

    calls, parsed = [], []
    real_fit, real_parse = state_module.fit_sky, rows._pairs_of

    def fit(images, warp_model, mask_region, **kwargs):
        path = [f.function for f in inspect.stack() if "/specwidgets/" in f.filename.replace("\\", "/")]
        calls.append((mask_region, path))
        return real_fit(images, warp_model, mask_region, **kwargs)

    monkeypatch.setattr(state_module, "fit_sky", fit)
    monkeypatch.setattr(rows, "_pairs_of", lambda value, name: parsed.append(value) or real_parse(value, name))
    dash.viewer.mask_slider.value = (12, 31)
    (mask, path), = calls
    state = dash.state
    assert isinstance(mask, RowRanges) and mask == [(12, 31)] and mask.n_rows == state.shape[0]
    assert mask is state.mask_region and state.result.mask_region is mask
    assert parsed == [(12, 31)]  # the slider's tuple is read once, nowhere else
    # The hops the mask takes from the slider to the fit (callers of fit_sky,
    # outermost first, from the slider's handler): the viewer makes the value,
    # the state takes it (validated on assignment), the sky step fits it.
    hops = path[path.index("_on_slider")::-1]
    hops = [h for h in hops if h not in ("__call__", "_invoke", "wrapper", "_run", "step")]
    assert hops == ["_on_slider", "_commit_mask_now", "_assign_mask", "_on_sky_inputs", "_update_sky"], hops


def test_refused_slider_mask_never_lands_in_the_state(dash):
    state, viewer = dash.state, dash.viewer
    good_mask, good = state.mask_region, dash.background
    viewer.mask_slider.value = (0, state.shape[0])
    assert "covers every" in dash.status.banner.value
    assert state.mask_region is good_mask and dash.background is good
    assert viewer.mask_slider.value == good_mask[viewer.active_range]  # the slider went back


def test_two_ranges_that_share_rows_merge_and_the_slider_follows(dash):
    viewer, state = dash.viewer, dash.state
    viewer.add_range(50, 55)
    assert state.masks[-1] == (50, 55) and viewer.active_range == len(state.masks) - 1
    viewer.mask_slider.value = (45, 58)
    start = state.masks[0][0]
    viewer.mask_slider.value = (start + 1, 56) if start + 1 < 45 else (start, 56)
    assert len(state.masks) == 1 and viewer.active_range == 0 and state.error == ""


def test_the_picture_goes_first_and_the_other_views_follow(dash):
    """In a running kernel the picture of a new fit is sent before the sky spectrum, the preview and
    the status are redrawn, and before the fit's quality report is made (its first reader is the status)."""
    state, viewer = dash.state, dash.viewer
    viewer.view = "corrected"  # a view that changes with the fit
    seen = {}

    def on_result(change):  # registered last: runs right after the image viewer's observer
        result = change["new"]
        seen["picture"] = bytes(viewer.figure.image_mark.image.value)
        seen["pending"] = "_quality_steps" in result.__dict__
        seen["sed_aggregations"] = dash.sed.n_aggregations
        seen["preview_updates"] = dash.preview.n_updates

    async def release():
        before = (bytes(viewer.figure.image_mark.image.value), dash.sed.n_aggregations, dash.preview.n_updates)
        state.observe(on_result, names="result")
        viewer.mask_slider.value = (9, 35)
        await asyncio.sleep(0.01)  # the fit ran on this turn; the followers wait FOLLOW_DELAY
        middle = (dash.sed.n_aggregations, dash.preview.n_updates, dash.status.busy_label.value)
        await asyncio.sleep(0.2)
        return before, middle

    before, middle = asyncio.run(release())
    assert not dash.sed._follow.pending and not dash.preview._follow.pending
    assert seen["picture"] != before[0], "the picture was not redrawn by the new result's first observers"
    assert seen["pending"], "the quality report was made before the picture was sent"
    assert (seen["sed_aggregations"], seen["preview_updates"]) == before[1:]
    assert middle[:2] == before[1:], "the sky spectrum or the preview was redrawn before the picture went out"
    assert "computing" in middle[2]
    # Then every view follows, and the status reads the report (made now).
    assert dash.sed.n_aggregations > before[1] and dash.preview.n_updates > before[2]
    assert "_quality_steps" not in state.result.__dict__ and state.result.quality is not None
    assert "ready" in dash.status.busy_label.value or "suspect" in dash.status.busy_label.value
    # flush() finishes the followers at once.
    async def flushed():
        viewer.mask_slider.value = (8, 36)
        await asyncio.sleep(0.005)
        waiting = dash.sed._follow.pending and dash.preview._follow.pending
        n = dash.sed.n_aggregations
        dash.flush()
        return waiting, dash.sed.n_aggregations - n, "_quality_steps" in state.result.__dict__

    assert asyncio.run(flushed()) == (True, 1, False)
    # Without a running loop (a script, these tests elsewhere) everything is done by the time the call returns.
    n = dash.sed.n_aggregations
    viewer.mask_slider.value = (10, 34)
    assert dash.sed.n_aggregations == n + 1 and "_quality_steps" not in state.result.__dict__


def test_a_failed_quality_report_shows_as_a_suspect_fit(dash, monkeypatch):
    """A report made on first access that fails says so in the status bar (the fit is not called ready)."""
    import specwidgets.core.sky.api as api

    def broken(*args, **kwargs):
        raise RuntimeError("assessment exploded")

    monkeypatch.setattr(api, "_assess", broken)
    dash.viewer.mask_slider.value = (9, 33)
    text = dash.status.busy_label.value
    assert "suspect fit" in text and "assessment exploded" in text and "ready" not in text
    assert dash.state.noise_model is not None  # the result's own numbers
