"""A session saved from the page replays in batch: ``run_batch(settings=...)`` gives the page's sky."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from specwidgets.io.settings import SESSION_VERSION, batch_arguments, read_session, validate_session

SHAPE = (70, 400)
LEVEL = 300.0


def write_night(folder, seed=11):
    """Bias, two arcs of different 'lamps' (each has half of the lines), two science frames, as FITS."""
    from specwidgets.io.synthetic import make_synthetic_longslit

    folder.mkdir(parents=True, exist_ok=True)
    frames = make_synthetic_longslit(shape=SHAPE, n_exposures=2, n_arc_lines=16, n_sky_lines=14, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(3):
        fits.writeto(folder / f"bias_{i:03d}.fits", (LEVEL + rng.normal(0, 4, SHAPE)).astype(np.float32))
    cols = np.arange(SHAPE[1])
    # Lamp A lights the lines left of the middle, lamp B the others: a median
    # of the two would lose half of them, their sum keeps all.
    for i, lit in enumerate((cols < SHAPE[1] // 2, cols >= SHAPE[1] // 2)):
        arc = np.where(lit[None, :], frames.arc, rng.normal(0, 4, SHAPE))
        fits.writeto(folder / f"arc_lamp{i}.fits", (LEVEL + arc).astype(np.float32))
    for i, image in enumerate(frames.science):
        fits.writeto(folder / f"sci_{i:03d}.fits", (LEVEL + image).astype(np.float32))
    return frames


def load_app(folder, data_root=None):
    from specwidgets.app.page import DashboardApp

    app = DashboardApp(data_root=data_root, output_root=folder.parent if data_root is None else data_root)
    app.source.value = "folder"
    app.folder.value = str(folder)
    app._apply_preset({"instrument": "generic", "arc_tag": "arc_", "bias_tag": "bias_", "science_tag": "sci_",
                       "crop": "3:68", "mask": ""})
    assert app.load(), app.message.value
    return app


def sky_of(path):
    with fits.open(path) as hdul:
        return hdul["SKY"].data.astype(float)


def max_relative(a, b):
    scale = np.nanmax(np.abs(b))
    return float(np.nanmax(np.abs(a - b)) / scale)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    folder = root / "night"
    write_night(folder)
    app = load_app(folder, data_root=root)
    dash = app.dashboard
    state = dash.state
    # Tweak what a user tunes: masks, a guess removed, tolerance, warp order, sky options, noise model.
    with state.hold():
        state.mask_region = [(20, 34), (50, 55)]
        state.tolerance = 12.0
        state.warp_order = 2
        state.guesses = state.guesses[1:]
        state.spatial_order = 1
        state.knot_spacing = 0.7
        state.reject_sigma = 4.0
        state.read_noise = 4.0
        state.gain = "estimate"
    # Nudge the mask and back, as a slider drag does: the sky must not depend on that history.
    state.mask_region = [(20, 36), (50, 55)]
    state.mask_region = [(20, 34), (50, 55)]
    assert not state.error, state.error
    return app, root, folder


def test_session_records_what_batch_needs(page):
    app, root, folder = page
    path = app.save_session("night_session.json")
    assert path == root / "night_session.json"
    data = json.loads(path.read_text())
    assert data["version"] == SESSION_VERSION
    assert data["source"] == {"kind": "folder", "folder": "night", "root": "data root", "instrument": "generic",
                              "arc_tag": "arc_", "bias_tag": "bias_", "science_tag": "sci_", "flat_tag": "",
                              "crop": "3:68", "arc_combine": "sum"}
    state = data["state"]
    assert state["mask_region"] == ["20:34", "50:55"]
    assert state["tolerance"] == 12.0 and state["warp_order"] == 2 and state["gain"] == "estimate"
    args = batch_arguments(read_session(path), data_root=root)
    assert args["folder"] == folder and args["masks"] == [(20, 34), (50, 55)]
    assert args["sky_options"] == {"knot_spacing": 0.7, "reject_sigma": 4.0}
    assert args["crop"] == (3, 68) and args["arc_combine"] == "sum"


def test_batch_with_the_session_gives_the_pages_sky(page, tmp_path):
    from specwidgets.batch.runner import run_batch

    app, root, folder = page
    path = app.save_session("replay.json")
    summary = run_batch(out_dir=tmp_path / "out", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, dtype="float64")
    assert summary.ok and len(summary.done) == 2, summary.report()
    background = app.dashboard.background
    worst = 0.0
    for k, name in enumerate(("sci_000", "sci_001")):
        sky = sky_of(tmp_path / "out" / f"{name}_sky.fits")
        assert sky.shape == background.shape[1:]
        worst = max(worst, max_relative(sky, background[k]))
    print(f"max relative difference page vs batch: {worst:.2e}")
    assert worst <= 1e-6

    # A command-line option given with --settings wins over the file's.
    from specwidgets.batch import main

    out2 = tmp_path / "out2"
    code = main(["batch", "--settings", str(path), "--data-root", str(root), "--method", "median",
                 "--out", str(out2), "--workers", "1", "--no-progress"])
    assert code == 0
    with fits.open(out2 / "sci_000_sky.fits") as hdul:
        assert "median" in repr(hdul[0].header).lower()
    assert max_relative(sky_of(out2 / "sci_000_sky.fits"), background[0]) > 1e-4


def test_the_page_export_matches_batch(page, tmp_path):
    """The page's Export and batch --settings write the same SKY."""
    from specwidgets.batch.runner import run_batch

    app, root, folder = page
    path = app.save_session("export_check.json")
    written = app.export(root / "exported", overwrite=True)
    summary = run_batch(out_dir=tmp_path / "out", settings=path, data_root=root, workers=1, processes=False,
                        progress=False)
    assert summary.ok
    for out in written:
        assert max_relative(sky_of(tmp_path / "out" / out.name), sky_of(out)) <= 1e-6


def test_exports_of_frames_stored_transposed_lie_as_their_inputs(tmp_path):
    """Frames stored with the dispersion along y (DISPAXIS = 2): the page turns them to fit, and its
    Export turns every image back, so each lies on its input pixel for pixel (trial L2: transposed);
    batch with the session keeps those exports, as it keeps any of the same data."""
    from specwidgets.batch.runner import run_batch

    root = tmp_path / "data"
    plain, turned = root / "plain", root / "turned"
    write_night(plain)
    turned.mkdir()
    for path in sorted(plain.glob("*.fits")):
        fits.writeto(turned / path.name, fits.getdata(path).T, fits.Header({"DISPAXIS": 2}))
    exported = {}
    for folder in (plain, turned):
        app = load_app(folder, data_root=root)
        exported[folder.name] = app.export(root / f"out_{folder.name}", overwrite=True)
    app.save_session("turned.json")
    for a, b in zip(exported["plain"], exported["turned"]):
        assert fits.getval(b, "SWTRANSP") is True and fits.getval(b, "DISPAXIS") == 2
        for name in ("SCI", "SKY", "VAR", "MASK"):
            np.testing.assert_allclose(fits.getdata(b, name), fits.getdata(a, name).T, rtol=1e-5, atol=1e-3)
    # SCI + SKY is the stored frame less the master bias, in the stored frame's columns 3:68 (the crop's rows).
    bias = np.median([fits.getdata(turned / f"bias_{i:03d}.fits") for i in range(3)], axis=0)
    first = exported["turned"][0]
    np.testing.assert_allclose(fits.getdata(first, "SCI") + fits.getdata(first, "SKY"),
                               (fits.getdata(turned / "sci_000.fits") - bias)[:, 3:68], atol=0.05)
    summary = run_batch(out_dir=root / "out_turned", settings=root / "turned.json", data_root=root, workers=1,
                        processes=False, progress=False)
    assert summary.ok and len(summary.skipped) == 2, summary.report()


def test_bad_sessions_name_the_key(page, tmp_path):
    from specwidgets.batch.runner import run_batch

    app, root, folder = page
    good = json.loads(app.save_session("good.json").read_text())
    dash = app.dashboard
    masks_before = dash.state.masks
    cases = [
        ({"version": 99}, "'version'"),
        ({"colour": "red"}, "'colour'"),
        ({"state": {**good["state"], "mask_region": ["30:10"]}}, "'state.mask_region'"),
        ({"state": {**good["state"], "mask_region": ["a:b"]}}, "'state.mask_region'"),
        ({"state": {**good["state"], "knots": 3}}, "'state.knots'"),
        ({"state": {**good["state"], "warp_order": "two"}}, "'state.warp_order'"),
        ({"source": {**good["source"], "kind": "ftp"}}, "'source.kind'"),
    ]
    for change, key in cases:
        bad = root / "bad.json"
        bad.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=key):
            run_batch(out_dir=tmp_path / "out", settings=bad, data_root=root, workers=1, processes=False,
                      progress=False)
        # The page: the error in words next to the buttons and in the banner; the settings kept.
        dash.session_path.value = "bad.json"
        dash.load_session_button.click()
        assert key in dash.session_message.value, dash.session_message.value
        assert "could not load" in dash.session_message.value
        assert key.strip("'") in dash.status.banner.value
        assert dash.state.masks == masks_before
    # A mask outside the frames: named too, settings kept.
    bad.write_text(json.dumps({**good, "state": {**good["state"], "mask_region": ["60:90"]}}))
    dash.load_session_button.click()
    assert "state.mask_region" in dash.session_message.value and dash.state.masks == masks_before
    with pytest.raises(ValueError, match="state.mask_region"):
        validate_session({**good, "state": {"mask_region": [[1, 2, 3]]}})


def test_a_relative_folder_without_its_root_is_explained(page, tmp_path, monkeypatch):
    from specwidgets.batch.runner import run_batch

    app, root, folder = page
    path = app.save_session("rel.json")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--data-root"):
        run_batch(out_dir=tmp_path / "out", settings=path, workers=1, processes=False, progress=False)


def test_batch_and_a_folder_of_dashboard_exports(page, tmp_path):
    """Exports as science input are refused in words; batch into a folder of exports accepts those made
    with its settings and data (they are its output: see the test above) and names the others, unclobbered."""
    from specwidgets.batch.runner import run_batch

    app, root, folder = page
    exported = app.dashboard.export(tmp_path / "exports", overwrite=True)
    with pytest.raises(ValueError, match="dashboard exports or batch outputs"):
        run_batch(tmp_path / "exports", folder / "arc_lamp0.fits", out_dir=tmp_path / "out", masks=[(20, 34)],
                  workers=1, processes=False, progress=False)
    path = app.save_session("exports.json")
    before = [p.read_bytes() for p in exported]
    summary = run_batch(out_dir=tmp_path / "exports", settings=path, data_root=root, workers=1, processes=False,
                        progress=False)
    assert summary.ok and len(summary.skipped) == 2 and not summary.done, summary.report()
    assert [p.read_bytes() for p in exported] == before
    # Other settings: named, not clobbered.
    summary = run_batch(out_dir=tmp_path / "exports", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, method="median")
    assert len(summary.failed) == 2 and all("dashboard's Export" in m and "method 'bspline', this run's is "
                                            "'median'" in m for _, m in summary.failed), summary.failed
    summary = run_batch(out_dir=tmp_path / "exports", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, masks="20:34, 50:56")
    assert len(summary.failed) == 2 and all("mask 20:34,50:55, this run's is 20:34,50:56" in m
                                            for _, m in summary.failed), summary.failed
    # The same settings on other data (an exposure rewritten since the export): named, not clobbered.
    import shutil

    other_root = tmp_path / "other_root"
    shutil.copytree(folder, other_root / folder.name)
    with fits.open(other_root / folder.name / "sci_001.fits", mode="update") as hdul:
        hdul[0].data = hdul[0].data + np.float32(5.0)
    summary = run_batch(out_dir=tmp_path / "exports", settings=path, data_root=other_root, workers=1,
                        processes=False, progress=False)
    assert len(summary.failed) == 2 and all("other data" in m for _, m in summary.failed), summary.failed
    assert [p.read_bytes() for p in exported] == before
    summary = run_batch(out_dir=tmp_path / "exports", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, overwrite=True)
    assert summary.ok and len(summary.done) == 2


def test_goodman_session_replays_in_batch(tmp_path):
    """The Goodman sample in the page (real frames, header noise model), replayed by batch --settings."""
    from specwidgets.app.page import DashboardApp
    from specwidgets.batch.runner import run_batch
    from specwidgets.io.fits_output import output_name
    from specwidgets.io.sample_data import goodman_available

    if not goodman_available():
        pytest.skip("the Goodman sample is not available offline")
    app = DashboardApp(output_root=tmp_path)
    app.source.value = "goodman"
    assert app.load(), app.message.value
    state = app.dashboard.state
    state.mask_region = [(25, 90)]
    state.spatial_order = 1
    path = app.save_session("goodman.json")
    assert json.loads(path.read_text())["source"]["kind"] == "goodman"
    summary = run_batch(out_dir=tmp_path / "out", settings=path, workers=1, processes=False, progress=False,
                        dtype="float64")
    assert summary.ok and len(summary.done) == 2, summary.report()
    background = app.dashboard.background
    exported = app.export(tmp_path / "exported", overwrite=True)
    for k, name in enumerate(app.dashboard.exposure_names):
        assert max_relative(sky_of(tmp_path / "out" / output_name(name)), background[k]) <= 1e-6
        # The page's export records the inputs as batch does: the raw files' gain (1.4 e-/ADU in
        # the Goodman headers), the arc lines the warp was fit to, the calibration files.
        mine, theirs = fits.getheader(exported[k]), fits.getheader(tmp_path / "out" / output_name(name))
        assert mine["SWINGAIN"] == theirs["SWINGAIN"] == 1.4 and mine["GAIN"] == theirs["GAIN"] == 1.0
        for card in ("SWNGUESS", "SWINSTR", "SWNARC", "SWNBIAS", "SWCROP", "SWUNIT"):
            assert mine[card] == theirs[card], card


def test_a_demo_session_needs_files(tmp_path):
    from specwidgets.batch.runner import run_batch
    from specwidgets.interactive import Dashboard

    dash = Dashboard.from_demo()
    dash.session_source = {"kind": "demo"}
    path = dash.save_session(tmp_path / "demo.json")
    with pytest.raises(ValueError, match="synthetic demo: give the SCIENCE files"):
        run_batch(out_dir=tmp_path / "out", settings=path, progress=False)


def test_other_file_sets_are_fit_one_by_one(page, tmp_path):
    """The page's exposure set is fit together (its sky); another set, or fit_together=False, one by one."""
    from specwidgets.batch.runner import run_batch
    from specwidgets.core.sky.api import fit_sky

    app, root, folder = page
    path = app.save_session("sets.json")
    summary = run_batch([folder / "sci_001.fits"], out_dir=tmp_path / "one", settings=path, data_root=root,
                        workers=1, processes=False, progress=False, dtype="float64")
    assert summary.ok and len(summary.done) == 1
    summary = run_batch(out_dir=tmp_path / "apart", settings=path, data_root=root, fit_together=False, workers=1,
                        processes=False, progress=False, dtype="float64")
    assert summary.ok and len(summary.done) == 2
    one = sky_of(tmp_path / "one" / "sci_001_sky.fits")
    apart = sky_of(tmp_path / "apart" / "sci_001_sky.fits")
    assert max_relative(one, apart) == 0.0  # each alone either way
    state = app.dashboard.state
    alone = fit_sky(state.science[1:2], state.warp_model, state.masks, **_state_options(state)).background[0]
    assert max_relative(apart, alone) <= 1e-6
    with pytest.raises(ValueError, match="fit_together=True"):
        run_batch([folder / "sci_001.fits"], out_dir=tmp_path / "x", settings=path, data_root=root,
                  fit_together=True, progress=False)


def _state_options(state):
    opts = {k: getattr(state, k) for k in ("spatial_order", "knot_spacing", "reject_sigma")
            if getattr(state, k) is not None}
    if isinstance(state.read_noise, float):
        opts["read_noise"] = state.read_noise
    return opts


def _hdus(path):
    with fits.open(path) as hdul:
        return {h.name: (None if h.data is None else np.array(h.data)) for h in hdul[1:]}, hdul[0].header.copy()


def test_dashboard_export_equals_batch_output(page, tmp_path):
    """Export and ``batch --settings`` of the same settings: same files, same numbers (float64, difference 0)."""
    from specwidgets.batch.runner import run_batch
    from specwidgets.core.rows import RowRanges

    app, root, folder = page
    path = app.save_session("equal.json")
    written = app.dashboard.export(tmp_path / "exported", dtype="float64")
    summary = run_batch(out_dir=tmp_path / "batch", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, dtype="float64")
    assert summary.ok and len(summary.done) == 2, summary.report()
    batch_files = sorted(p.name for p in (tmp_path / "batch").glob("*_sky.fits"))
    assert sorted(p.name for p in written) == batch_files == ["sci_000_sky.fits", "sci_001_sky.fits"]
    worst = {}
    for out in written:
        mine, mine_header = _hdus(out)
        theirs, their_header = _hdus(tmp_path / "batch" / out.name)
        assert list(mine) == list(theirs) == ["SCI", "SKY", "VAR", "MASK"]
        for name in mine:
            a, b = mine[name], theirs[name]
            assert a.dtype == b.dtype and a.shape == b.shape
            if name == "MASK":
                assert np.array_equal(a, b)
                continue
            both = np.isfinite(a) & np.isfinite(b)
            assert np.array_equal(np.isfinite(a), np.isfinite(b))
            diff = np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), np.finfo(float).tiny)
            worst[name] = max(worst.get(name, 0.0), float(diff.max()))
        for card in ("SWMETHOD", "SWMASK", "SWRDNOIS", "SWGAIN", "SWNREJ", "SWINSTR", "SWNARC", "SWNBIAS",
                     "SWNGUESS", "SWINGAIN"):
            assert mine_header.get(card) == their_header.get(card), card
        assert "SWINGAIN" not in mine_header  # these frames have no gain: they stay in ADU
        assert RowRanges.from_header(mine_header) == app.dashboard.state.mask_region
    print("max relative difference export vs batch:", worst)
    assert worst == {"SCI": 0.0, "SKY": 0.0, "VAR": 0.0}


def test_every_other_file_as_science_leaves_out_the_flats_in_page_and_batch_alike(tmp_path):
    """A blank science tag in a folder with flats: the page and the batch replay take the same two exposures
    (batch took the flats too, then fit each file alone: its sky differed from the page's by 5e-3)."""
    from specwidgets.app.page import DashboardApp
    from specwidgets.batch.runner import run_batch

    root = tmp_path / "data"
    folder = root / "night"
    write_night(folder)
    (folder / "flat").mkdir()
    for i in range(2):
        fits.writeto(folder / "flat" / f"f{i}.fits", np.full(SHAPE, LEVEL + 5000.0, np.float32))
    app = DashboardApp(data_root=root, output_root=root)
    app.source.value = "folder"
    app.folder.value = "night"
    app._apply_preset({"instrument": "generic", "arc_tag": "arc_", "bias_tag": "bias_", "science_tag": "",
                       "crop": "3:68", "mask": "20:34"})
    assert app.load(), app.message.value
    assert app.dashboard.state.science.shape[0] == 2 and "flat/f0.fits" in app.message.value
    path = app.save_session("replay.json")
    summary = run_batch(out_dir=tmp_path / "out", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, dtype="float64")
    assert summary.ok and len(summary.done) == 2, summary.report()
    assert any("flat/f1.fits" in n for n in summary.notes)
    background = app.dashboard.background
    for k, name in enumerate(("sci_000", "sci_001")):
        assert max_relative(sky_of(tmp_path / "out" / f"{name}_sky.fits"), background[k]) <= 1e-6


def test_a_session_folder_found_from_the_wrong_place_is_refused(tmp_path, monkeypatch):
    """The page's data root was the night itself (folder "."); replayed from its parent, "." found the parent,
    whose two nights' files were mixed (6 exposures for 5, another night's bias and arc), exit 0 (trial J1)."""
    from specwidgets.batch.runner import run_batch

    night, other = tmp_path / "tonight", tmp_path / "lastnight"
    write_night(night)
    write_night(other, seed=12)
    app = load_app(night, data_root=night)
    path = app.save_session("s.json")
    assert json.loads(path.read_text())["source"]["folder"] == "."
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"none of the session's \d+ exposure\(s\) .* taken from the current "
                                         r"folder: pass the page's data root \(--data-root DIR"):
        run_batch(out_dir=tmp_path / "out", settings=path, workers=1, processes=False, progress=False)
    assert not (tmp_path / "out").exists()
    summary = run_batch(out_dir=tmp_path / "out", settings=path, data_root=night, workers=1, processes=False,
                        progress=False)
    assert summary.n_inputs == len(app.dashboard.exposure_names)
    assert not any("not the session's exposures" in n for n in summary.notes)


def write_flats(folder, frames, seed=3, amplitude=0.08):
    """Science frames seen through a pixel response (``amplitude`` rms) and three lamp flats of it.

    The lamp's colour runs across the columns, as a quartz lamp's does: the
    pixel-to-pixel normalisation must take it out. Returns the response.
    """
    rng = np.random.default_rng(seed)
    response = 1 + amplitude * rng.standard_normal(SHAPE)
    for i, image in enumerate(frames.science):
        fits.writeto(folder / f"sci_{i:03d}.fits", (LEVEL + image * response).astype(np.float32), overwrite=True)
    lamp = 20000.0 * np.linspace(0.6, 1.2, SHAPE[1])[None, :]
    (folder / "flat").mkdir()
    for i in range(3):
        flat = LEVEL + rng.poisson(lamp * response) + rng.normal(0, 4, SHAPE)
        fits.writeto(folder / "flat" / f"f{i}.fits", flat.astype(np.float32))
    return response


def test_a_flat_tag_divides_the_science_and_batch_replays_it(tmp_path):
    """The page's Flat tag divides the science frames by the normalised flats, as ``batch --flat`` does: the
    residuals in the sky rows drop to the noise; the session's replay takes the same flats and gives the same
    sky, and keeps the page's exports (batch used to refuse them: "the dashboard does not divide by flats")."""
    from specwidgets.app.page import DashboardApp
    from specwidgets.batch.runner import run_batch

    root = tmp_path / "data"
    folder = root / "night"
    frames = write_night(folder)
    write_flats(folder, frames)
    lo, hi = frames.trace_rows
    mask = f"{lo - 3 - 6}:{hi - 3 + 6}"  # rows of the frame cropped 3:68, trace and wings
    sky_rows = np.r_[0:lo - 3 - 6, hi - 3 + 6:SHAPE[0] - 5]
    truth = frames.sky[:, 3:68][:, sky_rows]
    sigma = np.sqrt(truth / frames.gain + frames.read_noise ** 2)
    apps, chi = {}, {}
    for tag in ("", "flat"):
        app = DashboardApp(data_root=root, output_root=root)
        app.source.value = "folder"
        app.folder.value = "night"
        app._apply_preset({"instrument": "generic", "arc_tag": "arc_", "bias_tag": "bias_", "science_tag": "",
                           "flat_tag": tag, "crop": "3:68", "mask": mask})
        assert app.load(), app.message.value
        dash = app.dashboard
        assert dash.state.science.shape[0] == 2 and not dash.state.error
        resid = (np.asarray(dash.state.science) - dash.background)[:, sky_rows]
        chi[tag] = float(np.sqrt(np.nanmean((resid / sigma) ** 2)))
        apps[tag] = app
    print("residual RMS / noise in the sky rows, without and with the flats:", chi)
    # 8 % of a 60-count sky is 0.6 of the noise: the response adds it in quadrature unless divided out.
    assert chi[""] > 1.1 and chi["flat"] < 1.05
    assert "flat tag" in apps[""].message.value  # the left-out flats say how to use them

    app = apps["flat"]
    path = app.save_session("flat.json")
    assert json.loads(path.read_text())["source"]["flat_tag"] == "flat"
    written = app.dashboard.export(tmp_path / "out", dtype="float64")
    with fits.open(written[0]) as hdul:
        assert hdul[0].header["SWNFLAT"] == 3 and hdul[0].header["SWFLNORM"] == "pixel"
    summary = run_batch(out_dir=tmp_path / "out", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, dtype="float64")
    assert summary.ok and len(summary.skipped) == 2, summary.report()  # the exports kept, not refused
    summary = run_batch(out_dir=tmp_path / "batch", settings=path, data_root=root, workers=1, processes=False,
                        progress=False, dtype="float64")
    assert summary.ok and len(summary.done) == 2, summary.report()
    assert not any("flat/" in n for n in summary.notes)  # taken, not left out
    for k, out in enumerate(written):
        assert max_relative(sky_of(tmp_path / "batch" / out.name), app.dashboard.background[k]) <= 1e-6
        with fits.open(tmp_path / "batch" / out.name) as hdul:
            assert hdul[0].header["SWNFLAT"] == 3
