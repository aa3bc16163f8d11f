"""Issue 14: inputs that cannot hurt, a batch that keeps no stale result, a dashboard safe to share.

Each test names the finding it covers (``#8`` is item 8 of the issue) and
fails on the behaviour the issue reported. The dashboard's server tests
live in ``tests/test_dashboard_security.py`` (they start Voila).
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import specwidgets as sw
from specwidgets.core.inputs import MAX_IMAGE_PIXELS, MAX_SPATIAL_ORDER, check_spatial_order
from specwidgets.core.warp import WarpModel
from specwidgets.io.instruments import get_instrument
from specwidgets.io.synthetic import make_synthetic_longslit

SHAPE = (40, 300)


@pytest.fixture(scope="module")
def frames():
    return make_synthetic_longslit(shape=SHAPE, n_exposures=2, tilt=2.0, n_sky_lines=10, n_arc_lines=10, seed=7)


@pytest.fixture(scope="module")
def model(frames):
    locs, _ = sw.find_cal_lines(frames.arc)
    return sw.generate_warp_model(frames.arc, locs)


# ------------------------------------------------------------------ #10 silent wrong results
def test_complex_images_are_refused_naming_the_argument(frames, model):
    with pytest.raises(TypeError, match=r"images is complex.*\.real"):
        sw.fit_sky(frames.science.astype(complex) + 1j, model, frames.trace_rows)
    with pytest.raises(TypeError, match="image \\(the arc frame\\) is complex"):
        sw.find_cal_lines(frames.arc + 0j)


def test_bool_images_are_refused(frames, model):
    with pytest.raises(TypeError, match="images is a boolean array"):
        sw.fit_sky(frames.science > 100, model, frames.trace_rows)


@pytest.mark.parametrize("order", [5, 40, -1])
def test_spatial_order_above_the_limit_is_refused(frames, model, order):
    with pytest.raises(ValueError, match=f"the limit is {MAX_SPATIAL_ORDER}|integer 0..{MAX_SPATIAL_ORDER}"):
        sw.fit_sky(frames.science, model, frames.trace_rows, spatial_order=order)


def test_check_spatial_order_accepts_auto_and_small_ints():
    assert [check_spatial_order(v) for v in ("auto", 0, 4, "3", np.int64(2))] == ["auto", 0, 4, 3, 2]
    with pytest.raises(TypeError):
        check_spatial_order(1.5)


def test_batch_command_line_refuses_a_high_spatial_order(capsys):
    import argparse

    from specwidgets.batch import add_batch_parser

    parser = argparse.ArgumentParser(prog="specwidgets")
    add_batch_parser(parser.add_subparsers(dest="command"))
    base = ["batch", "s.fits", "--arc", "a.fits", "--mask", "1:2", "--out", "o"]
    assert parser.parse_args([*base, "--spatial-order", "2"]).spatial_order == 2
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--spatial-order", "40"])
    assert "limit is 4" in capsys.readouterr().err


def test_bscale_zero_names_the_file(tmp_path):
    hdu = fits.PrimaryHDU(np.arange(600, dtype=np.int16).reshape(20, 30))
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0, 5
    path = tmp_path / "zero_scale.fits"
    hdu.writeto(path)
    with pytest.raises(ValueError, match=r"zero_scale\.fits has BSCALE = 0"):
        get_instrument("generic").read(path)


def test_goodman_frame_without_trimsec_is_refused(tmp_path):
    path = tmp_path / "no_trim.fits"
    fits.PrimaryHDU(np.ones((20, 30), np.uint16), fits.Header({"GAIN": 1.4, "RDNOISE": 4.7})).writeto(path)
    with pytest.raises(ValueError, match=r"no_trim\.fits has no TRIMSEC.*trimsec="):
        get_instrument("goodman").read(path)
    # The way out the message gives works.
    frame = get_instrument("goodman").with_options(trimsec="[2:29,1:20]").read(path)
    assert frame.data.shape == (20, 28)


def test_saturated_arc_lines_are_left_out_with_a_warning(frames):
    clean, _ = sw.find_cal_lines(frames.arc)
    rng = np.random.default_rng(0)
    ceiling = 0.3 * frames.arc.max()
    clipped = np.minimum(frames.arc, ceiling) + rng.normal(0, 2.0, frames.arc.shape)
    n_saturated = int(np.sum(frames.arc[SHAPE[0] // 2].max() * 0 + (np.max(frames.arc[18:23], axis=0) > ceiling)))
    assert n_saturated > 0
    with pytest.warns(UserWarning, match="saturated arc line"):
        found, _ = sw.find_cal_lines(clipped)
    assert 0 < found.size < clean.size
    # What is kept is what was not clipped: each kept line is one of the clean lines.
    assert np.min(np.abs(found[:, None] - clean[None]), axis=1).max() < 0.2
    # No warning on the clean arc.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sw.find_cal_lines(frames.arc)


def test_an_explicit_saturation_level_flags_lines_reaching_it(frames):
    clean, _ = sw.find_cal_lines(frames.arc)
    level = 0.5 * frames.arc.max()
    with pytest.warns(UserWarning, match="saturated"):
        found, _ = sw.find_cal_lines(frames.arc, saturation=level)
    assert found.size < clean.size


# ------------------------------------------------------------------ #11 obscure errors
def test_one_column_image_gets_a_clear_error():
    image = np.ones((20, 1))
    with pytest.raises(ValueError, match="1 column"):
        sw.fit_sky(image, WarpModel.identity((20, 1)), (5, 8))


def test_nan_warp_coefficients_get_a_clear_error(frames, model):
    # Refused where the model is made (it was at the fit before).
    with pytest.raises(ValueError, match="coefficients hold NaN or infinite values"):
        model.replace(coefficients=np.full_like(model.coefficients, np.nan))


@pytest.mark.parametrize("value", ["abc", None, "5", [1.0]])
def test_non_numbers_for_tolerance_std_variation_read_noise_name_the_argument(frames, model, value):
    locs, _ = sw.find_cal_lines(frames.arc)
    with pytest.raises(TypeError, match="tolerance must be a number"):
        sw.generate_warp_model(frames.arc, locs, tolerance=value)
    with pytest.raises(TypeError, match="std_variation must be a number"):
        sw.find_cal_lines(frames.arc, std_variation=value)
    if value is not None:  # read_noise=None means 0
        with pytest.raises(TypeError, match="read_noise must be a number"):
            sw.fit_sky(frames.science, model, frames.trace_rows, read_noise=value)


def test_ragged_lists_say_rectangular(model):
    ragged = [[1.0, 2.0, 3.0], [1.0, 2.0]]
    with pytest.raises(ValueError, match="images must be a rectangular array"):
        sw.fit_sky(ragged, model, (0, 1))
    with pytest.raises(ValueError, match="must be a rectangular array"):
        sw.find_cal_lines(ragged)


# ------------------------------------------------------------------ #12 unbounded resources
def test_huge_tolerance_is_refused_before_allocating(frames):
    import time

    locs, _ = sw.find_cal_lines(frames.arc)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"tolerance must be at most {SHAPE[1]} columns"):
        sw.generate_warp_model(frames.arc, locs, tolerance=1e7)
    assert time.perf_counter() - t0 < 1.0


def test_header_claiming_a_huge_image_is_refused_naming_the_file(tmp_path):
    header = fits.Header()
    header["SIMPLE"], header["BITPIX"], header["NAXIS"] = True, 16, 2
    header["NAXIS1"], header["NAXIS2"] = 200000, 200000
    path = tmp_path / "liar.fits"
    with open(path, "wb") as handle:
        handle.write(header.tostring().encode())
        handle.write(b"\0" * 2880)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy: "file may have been truncated"
        with pytest.raises(ValueError, match=rf"liar\.fits claims a 200000 x 200000 image.*limit of {MAX_IMAGE_PIXELS:,}"):
            get_instrument("generic").read(path)


# ------------------------------------------------------------------ batch: #8 resume, #9 disk full
pytest.importorskip("distributed")

BIAS = 300.0


def _write(path, data):
    fits.PrimaryHDU(np.asarray(data, float)).writeto(path, overwrite=True)
    return path


@pytest.fixture
def raw(tmp_path, frames):
    folder = tmp_path / "raw"
    folder.mkdir()
    rng = np.random.default_rng(3)
    science = [_write(folder / f"sci_{i}.fits", frames.science[i] + BIAS) for i in range(2)]
    arc = _write(folder / "arc.fits", frames.arc + BIAS)
    bias = [_write(folder / f"bias_{i}.fits", BIAS + rng.normal(0, 0.5, SHAPE)) for i in range(2)]
    return {"science": science, "arc": [arc], "bias": bias}


def _run(raw, out, **kw):
    from specwidgets.batch.runner import run_batch

    args = dict(bias=raw["bias"], masks=[(12, 26)], out_dir=out, workers=1, processes=False, progress=False)
    args.update(kw)
    return run_batch(raw["science"], raw["arc"], **args)


def test_resume_redoes_an_input_whose_content_changed(raw, tmp_path, frames):
    out = tmp_path / "out"
    assert _run(raw, out).ok
    first = fits.getdata(out / "sci_0_sky.fits", "SKY").copy()
    # Triple the level of one input, under the same name (and, on a coarse
    # clock, possibly the same mtime): its output must be recomputed.
    _write(raw["science"][0], 3 * frames.science[0] + BIAS)
    summary = _run(raw, out)
    assert summary.ok, summary.report()
    assert [Path(p).name for p in summary.done] == ["sci_0.fits"]
    assert [Path(p).name for p in summary.skipped] == ["sci_1.fits"]
    second = fits.getdata(out / "sci_0_sky.fits", "SKY")
    assert np.median(second) > 2.5 * np.median(first)


def test_resume_redoes_every_output_when_a_calibration_changed(raw, tmp_path):
    out = tmp_path / "out"
    assert _run(raw, out).ok
    rng = np.random.default_rng(9)
    for p in raw["bias"]:
        _write(p, BIAS + 50 + rng.normal(0, 0.5, SHAPE))
    summary = _run(raw, out)
    assert summary.ok and len(summary.done) == 2 and not summary.skipped


def test_disk_full_is_named_and_nothing_partial_is_left(raw, tmp_path, monkeypatch):
    from specwidgets.io import fits_output

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real_open = fits_output._open_tmp

    def full_disk(tmp):
        real_open(tmp).close()  # the temporary file exists, as with a real write
        return open("/dev/full", "wb")  # every write fails with ENOSPC

    monkeypatch.setattr(fits_output, "_open_tmp", full_disk)
    out = tmp_path / "out"
    summary = _run(raw, out)
    assert len(summary.failed) == 2
    for _, message in summary.failed:
        assert "disk full while writing" in message and "_sky.fits" in message, message
        assert "AttributeError" not in message
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".specwidgets-batch")) == []


def test_permission_error_is_named(raw, tmp_path, monkeypatch):
    from specwidgets.io import fits_output

    def refuse(tmp):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    monkeypatch.setattr(fits_output, "_open_tmp", refuse)
    summary = _run(raw, tmp_path / "out")
    assert all("permission denied while writing" in m for _, m in summary.failed) and len(summary.failed) == 2


def test_short_write_without_errno_is_called_disk_full():
    from specwidgets.io.fits_output import named_write_error

    err = named_write_error(OSError("1000000 requested and 471648 written"), "/x/y_sky.fits")
    assert "disk full" in str(err) and "/x/y_sky.fits" in str(err)


def test_nan_rows_leak_no_runtime_warnings():
    """Blank rows (all NaN) are a frame's business, not numpy's All-NaN warnings; all NaN is an error only."""
    from specwidgets.io.synthetic import make_synthetic_longslit

    frames = make_synthetic_longslit(shape=(60, 400), n_arc_lines=8, seed=1)
    warp = sw.generate_warp_model(frames.arc, sw.find_cal_lines(frames.arc)[0])
    edge_blank = np.where(np.arange(60)[:, None] < 10, np.nan, frames.science[0])[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert np.isfinite(sw.fit_sky(edge_blank, warp, [frames.trace_rows]).background[0, 20:]).all()
        with pytest.raises(ValueError, match="every unmasked pixel is NaN"):
            sw.fit_sky(np.full((1, 60, 400), np.nan), warp, [frames.trace_rows])


def test_warnings_at_caller_moves_only_the_packages_own_warnings():
    """specwidgets' warnings go to the user's line; another library's keep their place and the filters."""
    from specwidgets.core._warnings import warnings_at_caller
    from specwidgets.core.lines import find_cal_lines

    space = {}
    exec(compile("import warnings\ndef third_party():\n    warnings.warn('old API', DeprecationWarning)\n",
                 "/elsewhere/thirdparty.py", "exec"), space)
    third_party = space["third_party"]
    clipped = np.minimum(make_arc(), 200.0)  # flat-topped lines: find_cal_lines warns
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", UserWarning)
        # As Python's defaults: DeprecationWarning hidden, but shown for the user's own module.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("always", category=DeprecationWarning, module=__name__)
        with warnings_at_caller():
            third_party()
            find_cal_lines(clipped, std_variation=5)
    assert not any(issubclass(w.category, DeprecationWarning) for w in seen)  # still hidden
    ours = [w for w in seen if "saturated" in str(w.message)]
    assert ours and {w.filename for w in ours} == {__file__}


def make_arc():
    from specwidgets.io.synthetic import make_synthetic_longslit

    frames = make_synthetic_longslit(shape=(60, 400), n_arc_lines=8, seed=1)
    return np.asarray(frames.arc) * (800.0 / float(np.max(frames.arc)))


def test_the_core_leaves_the_warning_filters_alone():
    """``warnings.catch_warnings`` swaps the process's filters: fits in several threads
    (``run_batch(processes=False)``, a user's Dask) restored each other's, which could leave the sky
    lines' search's "ignore" (every warning) in place for good, or hide another thread's warnings while
    it was on. The core computes around what it would warn of instead (``_stats.quiet_nanmedian``)."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    core = Path(sw.core.__file__).parent
    swapping = sorted(str(p.relative_to(core)) for p in core.rglob("*.py") if p.name != "_warnings.py"
                      and re.search(r"warnings\.(catch_warnings|simplefilter|filterwarnings)\(", p.read_text()))
    assert not swapping, swapping
    # Frames whose blank column and rows meet the paths that warned (All-NaN slices in the sky lines'
    # spectrum and the arc's row profile), fit side by side: no filter changed, nothing said of them.
    f = make_synthetic_longslit(shape=(60, 512), n_exposures=2, seed=4)
    science = np.array(f.science, dtype=float)
    science[:, :, 200] = np.nan
    science[:, 3:6] = np.nan
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda warp: sw.fit_sky(science, warp, [f.trace_rows]), [f.warp, None] * 2))
        assert warnings.filters == inside
    assert warnings.filters == before
    assert not [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
