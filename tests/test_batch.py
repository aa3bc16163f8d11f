"""Tests of the batch runner (specwidgets.batch.runner) and its FITS output (specwidgets.io.fits_output).

Most tests run the API on a Dask cluster of threads in this process (fast);
the kill-and-resume and bad-input tests run the real command in a
subprocess with worker processes.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits

import specwidgets as sw
from specwidgets.batch import BatchLockedError, add_batch_parser, run_batch, run_batch_command
from specwidgets.batch import runner as batch
from specwidgets.core.flat import FLAT_FLOOR, normalise_flat
from specwidgets.core.frames import median_frames
from specwidgets.core.rows import RowRanges
from specwidgets.io.fits_output import (
    MASK_BADFLAT,
    MASK_MASKED,
    MASK_NONFINITE,
    MASK_REJECTED,
    TMP_MARK,
    export_result,
    inspect_output,
    output_name,
    read_warp_model,
    sci_variance,
)
from specwidgets.io.sample_data import goodman_available
from specwidgets.io.synthetic import make_synthetic_longslit

pytest.importorskip("distributed")

SHAPE = (40, 300)
BIAS_LEVEL = 300.0


def _write(path, data, header=None):
    fits.PrimaryHDU(np.asarray(data), fits.Header(header or {})).writeto(path, overwrite=True)
    return path


@pytest.fixture(scope="module")
def frames():
    return make_synthetic_longslit(
        shape=SHAPE, n_exposures=6, tilt=2.0, n_sky_lines=10, n_arc_lines=10, cosmic_rays=3, seed=21
    )


@pytest.fixture
def raw(tmp_path, frames):
    """Six science exposures, an arc and two biases as float64 FITS files (generic instrument)."""
    folder = tmp_path / "raw"
    folder.mkdir()
    rng = np.random.default_rng(1)
    science = [_write(folder / f"sci_{i:02d}.fits", frames.science[i] + BIAS_LEVEL) for i in range(6)]
    arc = _write(folder / "arc_01.fits", frames.arc + BIAS_LEVEL)
    biases = [_write(folder / f"bias_{i}.fits", BIAS_LEVEL + rng.normal(0, 0.5, SHAPE)) for i in range(2)]
    return {"science": science, "arc": [arc], "bias": biases, "folder": folder}


def _api(raw, out, **kw):
    args = dict(bias=raw["bias"], masks=[make_mask()], out_dir=out, workers=2, processes=False, progress=False)
    args.update(kw)
    return run_batch(raw["science"], raw["arc"], **args)


def make_mask():
    return (12, 26)


def _library(raw, path, method="bspline", flat=None, **options):
    """The library's own result for one exposure: the reference the batch output must equal."""
    bias = np.median([fits.getdata(p).astype(float) for p in raw["bias"]], axis=0)
    arc = fits.getdata(raw["arc"][0]).astype(float) - bias
    locs, _ = sw.find_cal_lines(arc)
    model = sw.generate_warp_model(arc, locs)
    image = fits.getdata(path).astype(float) - bias
    if flat is not None:
        image = image / flat
    return sw.fit_sky(image, model, make_mask(), method=method, **options), model


def _outputs(folder):
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith("_sky.fits") and not p.name.startswith("."))


def _tmp_files(folder):
    return [p for p in Path(folder).iterdir() if TMP_MARK in p.name]


# ------------------------------------------------------------------ output files
def test_output_name():
    assert output_name("a/b/0069_PKS.fits.fz") == "0069_PKS_sky.fits"
    assert output_name("x.FITS") == "x_sky.fits"
    assert output_name("x.fit") == "x_sky.fits"
    assert output_name("x.fits.gz") == "x_sky.fits"


@pytest.mark.parametrize("method", ["bspline", "median"])
def test_batch_output_equals_library(raw, tmp_path, method):
    out = tmp_path / "out"
    summary = _api(raw, out, method=method, dtype="float64")
    assert summary.ok and len(summary.done) == 6 and summary.exit_code == 0
    target = raw["science"][2]
    ref, model = _library(raw, target, method=method)
    with fits.open(out / output_name(target)) as hdul:
        sci, sky, var, mask = (hdul[n].data for n in ("SCI", "SKY", "VAR", "MASK"))
        header = hdul[0].header
    np.testing.assert_array_equal(sky, ref.background[0])
    np.testing.assert_array_equal(sci, ref.corrected[0])
    np.testing.assert_array_equal(var, sci_variance(ref, 0))
    expected = np.where(ref.mask, MASK_MASKED, 0) | np.where(ref.rejected[0], MASK_REJECTED, 0)
    np.testing.assert_array_equal(mask, expected)
    if method == "bspline":
        assert (mask & MASK_REJECTED).any()  # the cosmic rays
    # Provenance.
    assert header["SWDONE"] is True
    assert header["SWINPUT"] == target.name
    assert header["SWMETHOD"] == method
    assert header["SWMASK"] == "12:26"
    assert header["SWNBIAS"] == 2 and header["SWNARC"] == 1
    assert header["SWVER"] == sw.__version__
    assert "DATE" in header
    assert read_warp_model(header).to_dict() == model.to_dict()
    assert header["SWW0100"] == model.coefficients[0, 0]


def test_float32_output_matches_to_float_precision(raw, tmp_path):
    out = tmp_path / "out"
    assert _api(raw, out).ok
    target = raw["science"][0]
    ref, _ = _library(raw, target)
    with fits.open(out / output_name(target)) as hdul:
        assert hdul["SCI"].data.dtype == np.dtype(">f4")
        scale = np.abs(ref.data[0]).max()
        np.testing.assert_allclose(hdul["SKY"].data, ref.background[0], rtol=1e-6, atol=1e-6 * scale)
        np.testing.assert_allclose(hdul["SCI"].data, ref.corrected[0], rtol=1e-6, atol=1e-6 * scale)


def test_spatial_order_and_guesses_are_used(raw, tmp_path, frames):
    out = tmp_path / "out"
    guesses = sw.find_cal_lines(frames.arc)[0][::2]
    summary = _api(raw, out, spatial_order=1, guesses=guesses, dtype="float64")
    assert summary.ok
    bias = np.median([fits.getdata(p) for p in raw["bias"]], axis=0)
    model = sw.generate_warp_model(fits.getdata(raw["arc"][0]) - bias, guesses)
    ref = sw.fit_sky(fits.getdata(raw["science"][1]) - bias, model, make_mask(), spatial_order=1)
    with fits.open(out / output_name(raw["science"][1])) as hdul:
        np.testing.assert_array_equal(hdul["SKY"].data, ref.background[0])
        assert hdul[0].header["SWSPORD"] == 1
        assert hdul[0].header["SWNGUESS"] == len(guesses)


@pytest.mark.parametrize("flat_norm", ["pixel", "column"])
def test_flat_is_normalised_and_divided(raw, tmp_path, frames, flat_norm):
    from scipy.ndimage import median_filter, uniform_filter1d

    rng = np.random.default_rng(3)
    response = 1 + 0.02 * rng.standard_normal(SHAPE)
    lamp = 5000 * (1 + np.linspace(0, 1, SHAPE[1]))[None, :]  # the lamp's spectrum: normalised away
    # The lamp lights the slit unevenly (the sky does not): only "column" keeps that in the flat.
    lamp = lamp * np.linspace(0.8, 1.0, SHAPE[0])[:, None]
    flat_raw = lamp * response
    flat_raw[5, 7] = 0.0  # a dead pixel
    flats = [_write(raw["folder"] / f"flat_{i}.fits", flat_raw + BIAS_LEVEL) for i in range(3)]
    out = tmp_path / "out"
    summary = _api(raw, out, flat=flats, dtype="float64", **({} if flat_norm == "pixel" else {"flat_norm": flat_norm}))
    assert summary.ok, summary.report()
    bias = np.median([fits.getdata(p) for p in raw["bias"]], axis=0)
    flat = np.median([fits.getdata(p) for p in flats], axis=0) - bias
    if flat_norm == "pixel":  # the default: over its 9-pixel median along the dispersion, averaged along the slit
        smooth = uniform_filter1d(median_filter(flat, size=(1, 9), mode="nearest"), 9, axis=0, mode="nearest")
        assert np.nanstd(flat / smooth / response - 1) < 0.01
        norm = normalise_flat(flat)  # the same, but the median alone where the two differ far beyond its noise
        assert np.nanstd(norm / response - 1) < 0.01
        assert np.count_nonzero(np.abs(norm - flat / smooth) > 1e-12) < 0.01 * norm.size
    else:
        norm = flat / np.median(flat, axis=0, keepdims=True)
        assert np.nanstd(norm / response - 1) > 0.05  # the lamp's illumination stays
    norm[norm <= FLAT_FLOOR] = np.nan
    ref, _ = _library(raw, raw["science"][3], flat=norm)
    with fits.open(out / output_name(raw["science"][3])) as hdul:
        np.testing.assert_array_equal(hdul["SKY"].data, ref.background[0])
        # VAR holds the flat's own noise (a median of 3 flats of `flat` counts) and the photon noise of
        # the counts before the division by `norm`.
        from specwidgets.core.flat import FlatNoise

        np.testing.assert_allclose(hdul["VAR"].data, sci_variance(ref, 0, FlatNoise(flat, median_frames(3), norm)),
                                   rtol=1e-9)
        assert not np.allclose(hdul["VAR"].data, sci_variance(ref, 0), rtol=1e-4, equal_nan=True)
        mask = hdul["MASK"].data
        assert mask[5, 7] & MASK_BADFLAT and mask[5, 7] & MASK_NONFINITE
        assert np.isnan(hdul["SCI"].data[5, 7])
        assert np.count_nonzero(mask & MASK_BADFLAT) == 1
        assert hdul[0].header["SWNFLAT"] == 3 and hdul[0].header["SWFLNORM"] == flat_norm


def test_warp_model_given_instead_of_arcs(raw, tmp_path, frames):
    out = tmp_path / "out"
    summary = run_batch(
        raw["science"][:2], (), out_dir=out, masks=make_mask(), warp_model=frames.warp.to_dict(),
        workers=1, processes=False, progress=False, dtype="float64",
    )
    assert summary.ok
    # run_batch's defaults are fit_sky's (spatial order "auto", slit correction).
    ref = sw.fit_sky(fits.getdata(raw["science"][0]), frames.warp, make_mask())
    with fits.open(out / output_name(raw["science"][0])) as hdul:
        np.testing.assert_array_equal(hdul["SKY"].data, ref.background[0])


def test_export_result_writes_the_same_files(raw, tmp_path, frames):
    result = sw.fit_sky(frames.science[:2], frames.warp, make_mask())
    names = ["night/a.fits", "night/b.fits.fz"]
    paths = export_result(result, tmp_path / "exp", names, warp_model=frames.warp, dtype="float64")
    assert [p.name for p in paths] == ["a_sky.fits", "b_sky.fits"]
    for k, p in enumerate(paths):
        assert inspect_output(p, SHAPE).complete
        with fits.open(p) as hdul:
            np.testing.assert_array_equal(hdul["SKY"].data, result.background[k])
            np.testing.assert_array_equal(hdul["SCI"].data, result.corrected[k])
            assert hdul[0].header["SWINPUT"] == Path(names[k]).name
    with pytest.raises(ValueError, match="2 exposure"):
        export_result(result, tmp_path / "exp", ["only-one.fits"])
    with pytest.raises(FileExistsError):
        export_result(result, tmp_path / "exp", names, overwrite=False)


def test_export_result_writes_the_frames_unit(tmp_path, frames):
    """Frames that carry their unit (the loaders' arrays): the files say it, as batch's do, and read as CCDData."""
    from astropy.nddata import CCDData

    from specwidgets.core.frames import FrameArray

    result = sw.fit_sky(FrameArray(np.asarray(frames.science[:1]), unit="electron"), frames.warp, make_mask())
    assert result.unit == "electron"
    (path,) = export_result(result, tmp_path / "exp", ["a.fits"], warp_model=frames.warp)
    assert fits.getheader(path)["SWUNIT"] == "electron"
    assert fits.getheader(path, "VAR")["BUNIT"] == "electron**2"
    assert str(CCDData.read(path, hdu="SCI").unit) == "electron"
    # A plain array says nothing: no unit is made up.
    plain = sw.fit_sky(np.asarray(frames.science[:1]), frames.warp, make_mask())
    (path,) = export_result(plain, tmp_path / "plain", ["a.fits"])
    assert "SWUNIT" not in fits.getheader(path) and "BUNIT" not in fits.getheader(path, "SCI")


# ------------------------------------------------------------------ resume
@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_resume_skips_complete_outputs_and_redoes_damaged_ones(raw, tmp_path):
    out = tmp_path / "out"
    assert _api(raw, out).ok
    files = _outputs(out)
    assert len(files) == 6
    # Damage: truncate one, flip a data byte in another, delete a third;
    # leave a stale temporary file as a killed writer would.
    truncated, flipped, deleted = files[0], files[1], files[2]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    data = bytearray(flipped.read_bytes())
    data[-200] ^= 0xFF
    flipped.write_bytes(bytes(data))
    deleted.unlink()
    stale = out / f".{files[3].name}{TMP_MARK}999999-deadbeef"
    stale.write_bytes(b"half a file")
    assert inspect_output(truncated).state == "invalid"
    assert inspect_output(flipped).state == "invalid"
    before = {p.name: p.stat().st_mtime_ns for p in files[3:]}

    summary = _api(raw, out)
    assert summary.ok
    assert sorted(Path(p).name for p in summary.done) == ["sci_00.fits", "sci_01.fits", "sci_02.fits"]
    assert len(summary.skipped) == 3
    assert summary.removed_temporary == 1
    assert not _tmp_files(out)
    assert {p.name: p.stat().st_mtime_ns for p in files[3:]} == before
    for p in _outputs(out):
        assert inspect_output(p, SHAPE).complete

    # overwrite=True redoes everything.
    summary = _api(raw, out, overwrite=True)
    assert len(summary.done) == 6 and not summary.skipped


def test_changed_settings_are_not_silently_kept_or_replaced(raw, tmp_path):
    out = tmp_path / "out"
    assert _api(raw, out).ok
    summary = _api(raw, out, masks=[(10, 28)])
    assert len(summary.failed) == 6 and summary.exit_code == 1
    assert all("other settings" in msg for _, msg in summary.failed)
    summary = _api(raw, out, masks=[(10, 28)], overwrite=True)
    assert summary.ok and len(summary.done) == 6
    assert fits.getheader(_outputs(out)[0])["SWMASK"] == "10:28"


def test_bad_input_is_reported_and_the_others_finish(raw, tmp_path):
    bad = raw["folder"] / "sci_bad.fits"
    bad.write_bytes(b"SIMPLE  =   this is not FITS" * 50)
    missing = raw["folder"] / "sci_missing.fits"
    out = tmp_path / "out"
    summary = run_batch(
        [*raw["science"], bad, missing], raw["arc"], bias=raw["bias"], masks=make_mask(), out_dir=out,
        workers=2, processes=False, progress=False,
    )
    assert summary.exit_code == 1
    assert len(summary.done) == 6
    assert sorted(Path(p).name for p, _ in summary.failed) == ["sci_bad.fits", "sci_missing.fits"]
    text = summary.report()
    assert "sci_bad.fits" in text and "sci_missing.fits" in text and "failed 2" in text
    assert len(_outputs(out)) == 6 and not _tmp_files(out)


def test_several_exposures_per_task_fail_alone_and_are_timed(raw, tmp_path, monkeypatch):
    assert batch._chunk_size(200, 2) == batch.MAX_CHUNK
    assert batch._chunk_size(6, 2) == 1 and batch._chunk_size(0, 4) == 1
    monkeypatch.setattr(batch, "_chunk_size", lambda n, threads: 3)
    bad = raw["folder"] / "sci_bad.fits"
    bad.write_bytes(b"SIMPLE  =   this is not FITS" * 50)
    files = [*raw["science"][:2], bad, *raw["science"][2:]]  # the bad file shares a task with two good ones
    summary = run_batch(files, raw["arc"], bias=raw["bias"], masks=make_mask(), out_dir=tmp_path / "out",
                        workers=1, processes=False, progress=False)
    assert len(summary.done) == 6 and [Path(p).name for p, _ in summary.failed] == ["sci_bad.fits"]
    assert len(_outputs(tmp_path / "out")) == 6
    t = summary.timings
    assert t["exposures_per_task"] == 3
    for key in ("calibrations", "cluster_start", "first_result", "tasks", "cluster_stop"):
        assert 0 <= t[key] <= summary.wall_time, key
    assert 0 < t["task_cpu"] <= t["task_wall"] * 1.5 + 0.1
    assert t["first_result"] <= t["tasks"]


def test_folder_input_and_shape_mismatch(raw, tmp_path):
    other = tmp_path / "sci"
    other.mkdir()
    for p in raw["science"][:3]:
        (other / p.name).write_bytes(p.read_bytes())
    _write(other / "sci_small.fits", np.ones((20, 300)))
    summary = _api({**raw, "science": [other]}, tmp_path / "out")
    assert len(summary.done) == 3
    (name, msg), = summary.failed
    assert Path(name).name == "sci_small.fits" and "shape" in msg


def test_outputs_in_the_science_folder_are_not_taken_for_science(raw, tmp_path):
    folder = raw["folder"]
    for p in [*raw["arc"], *raw["bias"]]:
        p.rename(tmp_path / p.name)
    arc, bias = [tmp_path / raw["arc"][0].name], [tmp_path / p.name for p in raw["bias"]]
    first = run_batch(folder, arc, bias=bias, masks=make_mask(), out_dir=folder, workers=2, processes=False, progress=False)
    assert first.ok and len(first.done) == 6
    again = run_batch(folder, arc, bias=bias, masks=make_mask(), out_dir=folder, workers=2, processes=False, progress=False)
    assert again.n_inputs == 6 and len(again.skipped) == 6


def test_setup_errors_raise_before_running(raw, tmp_path):
    with pytest.raises(FileNotFoundError, match="arc"):
        run_batch(raw["science"], [tmp_path / "nope.fits"], out_dir=tmp_path / "o", masks=make_mask(), progress=False)
    with pytest.raises(ValueError, match="method"):
        _api(raw, tmp_path / "o", method="mean")
    with pytest.raises(ValueError, match="bspline"):
        _api(raw, tmp_path / "o", method="median", spatial_order=1)
    with pytest.raises(ValueError, match="out of range"):
        _api(raw, tmp_path / "o", masks=[(30, 90)])
    twin = tmp_path / "twin"
    twin.mkdir()
    clash = twin / raw["science"][0].name
    clash.write_bytes(raw["science"][0].read_bytes())
    with pytest.raises(ValueError, match="same output file"):
        run_batch([raw["science"][0], clash], raw["arc"], out_dir=tmp_path / "o", masks=make_mask(), progress=False)


def test_a_second_run_on_the_same_folder_is_refused(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with batch._DirectoryLock(out):
        with pytest.raises(BatchLockedError):
            _api(raw, out)
    assert _api(raw, out).ok
    # Released after the run: the next one takes it at once.
    with batch._DirectoryLock(out):
        pass


def test_existing_cluster_by_address_or_client(raw, tmp_path):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        summary = run_batch(
            raw["science"][:3], raw["arc"], bias=raw["bias"], masks=make_mask(), out_dir=tmp_path / "a",
            scheduler=cluster.scheduler_address, progress=False,
        )
        assert summary.ok and len(summary.done) == 3
        with Client(cluster, set_as_default=False) as client:
            summary = run_batch(
                raw["science"][:3], raw["arc"], bias=raw["bias"], masks=make_mask(), out_dir=tmp_path / "b",
                client=client, progress=False,
            )
            assert summary.ok and len(summary.done) == 3
            assert client.status == "running"  # a client we were given is left open


def test_progress_bar_in_a_terminal_and_in_a_notebook(monkeypatch, capsys):
    bar = batch._Progress(3, True)
    for status in ("done", "skipped", "failed"):
        bar.update(status)
    bar.close()
    err = capsys.readouterr().err
    assert "3/3" in err and "failed 1" in err

    # In a notebook tqdm.auto is tqdm's notebook bar: the bar comes from there.
    import tqdm.auto

    made = []

    class Recorder(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    bar = batch._Progress(2, True)
    bar.update("done")
    bar.close()
    assert made and made[0]["total"] == 2 and isinstance(bar.bar, Recorder)
    assert batch._Progress(2, False).bar is None


# ------------------------------------------------------------------ command line
def test_parser_adds_the_batch_subcommand():
    parser = argparse.ArgumentParser(prog="specwidgets")
    sub = parser.add_subparsers(dest="command", required=True)
    add_batch_parser(sub)
    args = parser.parse_args(
        "batch a.fits b.fits --arc c.fits d.fits --bias e.fits --crop 680:800 --mask 20:40 --mask 60:100 "
        "--guesses 10.5,200 --method median --spatial-order 0 --out o --workers 2 --overwrite".split()
    )
    assert args.func is run_batch_command
    assert args.science == ["a.fits", "b.fits"] and args.arc == ["c.fits", "d.fits"]
    assert args.crop == (680, 800) and args.mask == [RowRanges("20:40"), RowRanges("60:100")]
    assert args.guesses == [10.5, 200.0] and args.workers == 2 and args.overwrite
    with pytest.raises(SystemExit):
        parser.parse_args("batch a.fits --arc c.fits --mask 20:40 --out o --workers 2 --scheduler tcp://x:1".split())
    with pytest.raises(SystemExit):
        parser.parse_args("batch a.fits --arc c.fits --mask twenty --out o".split())


def _command():
    """The real command line: ``specwidgets.cli`` once it has the subcommand, else the batch module's own."""
    from specwidgets import cli

    if "add_batch_parser" in inspect.getsource(cli):
        return [sys.executable, "-m", "specwidgets.cli", "batch"]
    return [sys.executable, "-m", "specwidgets.batch"]


def _cli_args(sci, arc, out, mask, workers=1):
    return [
        *map(str, sci), "--arc", *map(str, arc), "--mask", f"{mask[0]}:{mask[1]}",
        "--out", str(out), "--workers", str(workers), "--no-progress",
    ]


@pytest.mark.slow
def test_command_reports_a_bad_file_and_exits_nonzero(raw, tmp_path):
    bad = raw["folder"] / "sci_corrupt.fits"
    bad.write_bytes(b"\x00" * 5000)
    out = tmp_path / "out"
    cmd = _command() + _cli_args([*raw["science"][:3], bad], raw["arc"], out, make_mask())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "sci_corrupt.fits" in proc.stderr and "failed 1" in proc.stderr
    assert len(_outputs(out)) == 3


@pytest.mark.slow
def test_command_shows_a_workers_warning_once_and_plainly(raw, tmp_path):
    """A card every file has (a DATASEC smaller than the frame) warns once, as ``warning: ...``.

    Worker processes printed it per file with dask's source line
    (``dask/_task_spec.py:768: UserWarning: ...``), besides the driver's.
    """
    card = {"DATASEC": f"[1:{SHAPE[1] - 2},1:{SHAPE[0]}]"}
    sci = [_write(tmp_path / f"s{i}.fits", fits.getdata(p), card) for i, p in enumerate(raw["science"][:3])]
    arc = [_write(tmp_path / "a.fits", fits.getdata(raw["arc"][0]), card)]
    proc = subprocess.run(_command() + _cli_args(sci, arc, tmp_path / "out", make_mask()), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "DATASEC" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "--trimsec" in lines[0], proc.stderr
    assert "UserWarning" not in proc.stderr


def test_command_setup_error_exits_2(tmp_path):
    sci = _write(tmp_path / "s.fits", np.zeros(SHAPE))
    cmd = _command() + _cli_args([sci], [tmp_path / "no_arc.fits"], tmp_path / "out", make_mask())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no_arc.fits" in proc.stderr


def test_calibrations_of_another_binning_are_named_so(raw, tmp_path):
    """An arc binned 2 x 2 against the bias: the shapes alone were given; the binning is said."""
    binned = fits.getdata(raw["arc"][0]).reshape(SHAPE[0] // 2, 2, SHAPE[1] // 2, 2).sum(axis=(1, 3))
    arc = _write(tmp_path / "arc_binned.fits", binned, {"CCDSUM": "2 2"})
    with pytest.raises(ValueError, match=r"arc frames have shape \(20, 150\) but the bias frames \(40, 300\): "
                                         r"binned 2 x 2 against each other"):
        run_batch(raw["science"][:1], [arc], bias=raw["bias"], masks=[make_mask()], out_dir=tmp_path / "o",
                  workers=1, processes=False, progress=False)


SLOW_PRELOAD = """
# Dask worker preload for the kill test: slow each output's final rename so
# that the run is still going, with a temporary file open, when it is killed.
# Dask may run a preload twice in one process: patch only once.
import time
import specwidgets.io.fits_output as fo

if not hasattr(fo, "_unslowed_commit"):
    fo._unslowed_commit = fo._commit

    def _slow_commit(tmp, final):
        time.sleep({delay})
        fo._unslowed_commit(tmp, final)

    fo._commit = _slow_commit
"""


@pytest.mark.slow
def test_kill_minus_9_then_rerun_loses_nothing(tmp_path):
    n = 12
    frames = make_synthetic_longslit(shape=SHAPE, n_exposures=n, tilt=2.0, n_sky_lines=10, n_arc_lines=10, seed=8)
    raw = tmp_path / "raw"
    raw.mkdir()
    sci = [_write(raw / f"exp_{i:03d}.fits", frames.science[i]) for i in range(n)]
    arc = [_write(raw / "arc.fits", frames.arc)]
    out = tmp_path / "out"
    preload = tmp_path / "slow_preload.py"
    preload.write_text(textwrap.dedent(SLOW_PRELOAD.format(delay=0.3)))
    cmd = _command() + _cli_args(sci, arc, out, frames.trace_rows, workers=1)
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__PRELOAD": repr([str(preload)])}

    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, f"the run ended before it was killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no output appeared in time"
            if out.is_dir() and len(_outputs(out)) >= 3 and _tmp_files(out):
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its cluster and workers
        proc.communicate()
    # Give any worker the kill raced with a moment to be gone.
    time.sleep(0.5)
    done_before = {p.name: p.stat().st_mtime_ns for p in _outputs(out) if inspect_output(p, SHAPE).complete}
    assert 3 <= len(done_before) < n
    assert _tmp_files(out), "the kill should have caught a file being written"
    for p in _outputs(out):
        assert inspect_output(p, SHAPE).complete, f"{p.name} is under its final name but not complete"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped (already complete) {len(done_before)}" in rerun.stderr
    assert "temporary file(s) left by an interrupted run" in rerun.stderr
    outputs = _outputs(out)
    assert [p.name for p in outputs] == [output_name(p) for p in sci]
    for p in outputs:
        assert inspect_output(p, SHAPE).complete
    assert not _tmp_files(out)
    with batch._DirectoryLock(out):  # the killed run's lock went with it
        pass
    assert {n: (out / n).stat().st_mtime_ns for n in done_before} == done_before


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(procs):
    """Terminate, then kill, every process (and its children: each runs in its own session)."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.mark.slow
def test_scheduler_option_on_a_real_dask_cluster(raw, tmp_path):
    """`--scheduler` on a cluster of its own processes (`dask scheduler` + 2 `dask worker`) = a local run."""
    from dask.distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = dict(cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        **common,
    )]
    try:
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                 "--host", "127.0.0.1", "--local-directory", str(tmp_path / f"worker{i}"), "--death-timeout", "60"],
                **common,
            ))
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=90)
            assert len(client.scheduler_info()["workers"]) == 2
        out = tmp_path / "cluster"
        cmd = [*_command(), *map(str, raw["science"]), "--arc", *map(str, raw["arc"]), "--bias", *map(str, raw["bias"]),
               "--mask", "{}:{}".format(*make_mask()), "--out", str(out), "--scheduler", address, "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert "done 6" in proc.stderr and "failed 0" in proc.stderr
    finally:
        _stop(procs)
    local = _api(raw, tmp_path / "local")
    assert local.ok and len(local.done) == 6
    names = [p.name for p in _outputs(out)]
    assert names == [p.name for p in _outputs(tmp_path / "local")] == [output_name(p) for p in raw["science"]]
    for name in names:
        with fits.open(out / name) as a, fits.open(tmp_path / "local" / name) as b:
            for ext in ("SCI", "SKY", "VAR", "MASK"):
                np.testing.assert_array_equal(a[ext].data, b[ext].data, err_msg=f"{name} {ext}")


# ------------------------------------------------------------------ Goodman
@pytest.mark.goodman
@pytest.mark.skipif(not goodman_available(), reason="Goodman sample not on this machine")
def test_goodman_batch_equals_library(tmp_path):
    from specwidgets.io.sample_data import goodman_path, load_goodman

    folder = goodman_path(download=False)
    out = tmp_path / "out"
    summary = run_batch(
        folder / "spec_PKSJ0049_5738", folder / "lamp", bias=folder / "bias", instrument="goodman",
        crop=(680, 800), masks=[(20, 100)], out_dir=out, workers=2, processes=False, progress=False,
        arc_combine="median",  # as load_goodman (the seed flow) combines the three lamp frames
    )
    assert summary.ok and len(summary.done) == 2, summary.report()
    data = load_goodman(crop_bds=(680, 800), path=folder)
    locs, _ = sw.find_cal_lines(data.arc)
    model = sw.generate_warp_model(data.arc, locs)
    assert summary.warp_model == model.to_dict()
    # The sample is in electrons (the Goodman loader applies the gain). Batch
    # fits each exposure on its own, and fit_sky's automatic choices (knots,
    # spatial order, unlit rows) pool the exposures it is given: one at a time.
    # run_batch's defaults are fit_sky's (spatial order "auto", slit correction).
    # The read noise is the frames' with the master bias's (median of 5), in both.
    assert data.science.read_noise == pytest.approx(data.read_noise * np.sqrt(1 + 1 / median_frames(5)))
    fits_k = [sw.fit_sky(data.science[k], model, (20, 100), read_noise=data.science.read_noise, gain=1.0)
              for k in range(2)]
    files = sorted(out.glob("*_sky.fits"))
    assert [p.name for p in files] == [
        "0069_PKSJ0049-5738_13-05-2023_sky.fits",
        "0070_PKSJ0049-5738_13-05-2023_sky.fits",
    ]
    for k, p in enumerate(files):
        assert inspect_output(p, (120, 2030)).complete
        with fits.open(p) as hdul:
            h = hdul[0].header
            assert h["SWINSTR"] == "goodman" and h["SWCROP"] == "680:800" and h["SWMASK"] == "20:100"
            assert h["SWRDNOIS"] == pytest.approx(data.science.read_noise) and h["SWUNIT"] == "electron"
            ref = fits_k[k]
            scale = np.abs(ref.data[0]).max()
            np.testing.assert_allclose(hdul["SKY"].data, ref.background[0], rtol=1e-6, atol=1e-6 * scale)
            np.testing.assert_allclose(hdul["SCI"].data, ref.corrected[0], rtol=1e-6, atol=1e-6 * scale)
            assert (hdul["MASK"].data[20:100] & MASK_MASKED).all()


def test_pixels_at_the_frames_ceiling_are_left_out_before_the_flat_spreads_them(raw, tmp_path, frames):
    """Sky-line pixels clipped at the ADC's ceiling: divided by a flat of 1-2 % response, the clipped
    values spread beyond the sky fit's 0.2 % band and a trial's frame (590 pixels at 65535 ADU) came out
    "good" with its sky 3.1 sigma RMS off and the pixels unmarked. They are found as read, set to NaN and
    marked (MASK_SATURATED), and the sky is the library's with them NaN."""
    from specwidgets.io.fits_output import MASK_SATURATED

    rng = np.random.default_rng(5)
    response = 1 + 0.015 * rng.standard_normal(SHAPE)
    flats = [_write(raw["folder"] / f"flat_{i}.fits", 20000.0 * response + BIAS_LEVEL) for i in range(3)]
    data = (frames.science[0] + BIAS_LEVEL) * response  # the detector's response, then its ADC's ceiling
    ceiling = float(np.percentile(data, 99.5))  # the brightest sky line's peak (and the trace's) clipped
    clipped = data >= ceiling
    data = np.minimum(data, ceiling)
    path = _write(raw["folder"] / "sci_00.fits", data)
    out = tmp_path / "out"
    summary = _api(raw, out, flat=flats, dtype="float64")
    assert summary.ok, summary.report()
    with fits.open(out / output_name(path)) as hdul:
        # (Every clipped pixel, and the odd one within 0.2 % of the ceiling.)
        marked = hdul["MASK"].data & MASK_SATURATED > 0
        assert marked[clipped].all() and marked.sum() <= clipped.sum() + 3, (marked.sum(), clipped.sum())
        assert np.isnan(hdul["SCI"].data[marked]).all()
        bias = np.median([fits.getdata(p) for p in raw["bias"]], axis=0)
        flat = normalise_flat(np.median([fits.getdata(p) for p in flats], axis=0) - bias)
        flat[flat <= FLAT_FLOOR] = np.nan
        holed = np.where(marked, np.nan, data - bias) / flat
        locs, _ = sw.find_cal_lines(fits.getdata(raw["arc"][0]).astype(float) - bias)
        model = sw.generate_warp_model(fits.getdata(raw["arc"][0]).astype(float) - bias, locs)
        ref = sw.fit_sky(holed, model, make_mask())
        np.testing.assert_allclose(hdul["SKY"].data, ref.background[0], rtol=1e-9, atol=1e-9)
    # The page's folder loader does the same, and says so.
    from specwidgets.io.folder import load_folder

    loaded = load_folder(raw["folder"], science_tag="sci_", flat_tag="flat_")
    assert np.isnan(np.asarray(loaded.science)[0][marked]).all()
    assert any("sci_00.fits" in note and "ceiling" in note for note in loaded.notes), loaded.notes


def test_a_frame_of_another_shape_is_named_for_it_against_what_set_the_shape(raw, tmp_path):
    """Without an arc the run's shape comes from the bias: a frame of another camera was said to differ from
    "the arc and warp model" (none given), or, with no gain card, to be in other units (trial B1)."""
    odd = _write(raw["folder"] / "sci_other.fits", np.full((SHAPE[0] + 10, SHAPE[1]), BIAS_LEVEL + 50.0))
    summary = run_batch([raw["science"][0], odd], None, bias=raw["bias"], masks=[make_mask()], out_dir=tmp_path / "out",
                        workers=1, processes=False, progress=False, gain=1.5)
    (name, reason), = summary.failed
    assert Path(name).name == "sci_other.fits"
    assert f"has shape ({SHAPE[0] + 10}, {SHAPE[1]})" in reason and f"the bias frames {SHAPE}" in reason, reason


def test_var_holds_the_flats_own_noise(tmp_path):
    # Trial M1: three flats of 10000 e-, a bright sky: the variance of SCI was 1.09-1.65x VAR. Exported
    # (the page) and batch outputs add the flat's photon noise; here with the library's writer.
    from specwidgets.core.flat import FlatNoise
    from specwidgets.core.frames import with_noise

    rng = np.random.default_rng(3)
    f = make_synthetic_longslit(shape=(100, 600), n_exposures=2, sky_continuum=3000.0, read_noise=5.0, seed=4,
                                n_sky_lines=15)
    raw = np.median(rng.poisson(10000.0, (3, 100, 600)).astype(float), axis=0)
    science = with_noise(np.asarray(f.science) / (raw / 10000.0), 1.0, 5.0, "truth")
    result = sw.fit_sky(science, f.warp, f.trace_rows)
    rows = np.ones(100, bool)
    rows[slice(*f.trace_rows)] = False
    resid2 = np.mean((np.asarray(science) - f.sky)[:, rows] ** 2)
    ratios = [resid2 / np.mean(np.stack([sci_variance(result, k, noise) for k in range(2)])[:, rows])
              for noise in (None, FlatNoise(raw, median_frames(3)))]
    # Measured 1.172 without the flat's noise, 0.993 with it.
    assert ratios[0] > 1.1 and abs(ratios[1] - 1) < 0.03, ratios
    out = export_result(result, tmp_path, ["a.fits", "b.fits"], flat_noise=FlatNoise(raw, median_frames(3)))
    np.testing.assert_allclose(fits.getdata(out[0], "VAR"), sci_variance(result, 0, FlatNoise(raw, median_frames(3))),
                               rtol=1e-6)


def test_var_of_frames_divided_by_a_flat_that_is_not_near_one():
    """A flat normalised by column keeps the lamp's light along the slit (here 0.6-1.4): a pixel divided
    by f holds data * f counts, so its variance is data / (gain f) + ... . VAR read the divided data as
    counts: 1.56x and 0.74x the true variance at the slit's two ends (a trial). Now within 6 %."""
    from specwidgets.core.flat import FlatNoise, usable_flat
    from specwidgets.core.warp import WarpModel

    rng = np.random.default_rng(0)
    shape = (100, 1024)
    light = np.linspace(0.6, 1.4, shape[0])[:, None] * np.ones(shape)
    raw = np.median([rng.poisson(30000 * light) + rng.normal(0, 4.0, shape) for _ in range(5)], axis=0)
    flat = usable_flat(raw, "column")
    noise = FlatNoise(raw, median_frames(5), flat)
    science = (rng.poisson(500.0 * light) + rng.normal(0, 4.0, shape)) / flat
    result = sw.fit_sky(science, WarpModel.from_tilt(shape, 2.5), (45, 55), gain=1.0, read_noise=4.0)
    chi2 = (result.data[0] - result.background[0]) ** 2 / sci_variance(result, 0, noise)
    ends = [float(np.mean(chi2[:15])), float(np.mean(chi2[85:]))]
    assert all(abs(c - 1) < 0.06 for c in ends), ends


def test_local_workers_get_one_thread_per_library():
    env = batch._worker_environ(numba_threads=1)
    assert env["NUMBA_NUM_THREADS"] == 1
    assert all(int(env[k]) == 1 for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    assert batch._worker_environ(numba_threads=3)["NUMBA_NUM_THREADS"] == 3


# ------------------------------------------------------------------ issue 11: one reader, observation keywords kept
OBS = {"OBJECT": "NGC 253", "EXPTIME": 300.0, "AIRMASS": 1.234, "RA": "00:47:33.1", "DEC": "-25:17:18",
       "INSTRUME": "SynthCam", "TELESCOP": "SW 1m"}


def _observed_folder(tmp_path, frames):
    folder = tmp_path / "night"
    folder.mkdir()
    for i in range(2):
        _write(folder / f"sci_{i:02d}.fits", frames.science[i] + BIAS_LEVEL,
               {**OBS, "DATE-OBS": f"2026-11-28T0{i}:00:00", "GAIN": 2.0, "RDNOISE": 3.0})
    _write(folder / "arc_01.fits", frames.arc + BIAS_LEVEL, {"OBJECT": "arc", "GAIN": 2.0, "RDNOISE": 3.0})
    _write(folder / "bias_0.fits", np.full(SHAPE, BIAS_LEVEL), {"OBJECT": "bias", "GAIN": 2.0, "RDNOISE": 3.0})
    return folder


def _check_observation_cards(path, k):
    header = fits.getheader(path)
    for key, value in OBS.items():
        assert header[key] == value, key
    assert header["DATE-OBS"] == f"2026-11-28T0{k}:00:00"
    assert header["GAIN"] == 1.0  # the output's (electrons), not the input's 2.0


def test_batch_carries_the_observation_keywords(tmp_path, frames):
    folder = _observed_folder(tmp_path, frames)
    sci = sorted(folder.glob("sci_*.fits"))
    summary = run_batch(sci, [folder / "arc_01.fits"], bias=[folder / "bias_0.fits"], masks=[make_mask()],
                        out_dir=tmp_path / "out", processes=False, progress=False, method="median")
    assert summary.ok, summary.failed
    for k, path in enumerate(sci):
        _check_observation_cards(tmp_path / "out" / output_name(path), k)


@pytest.mark.slow
def test_worker_processes_keep_the_master_bias_read_noise(tmp_path, frames):
    # A new user's trial: Dask sends the master bias to worker processes as a plain ndarray, so its read
    # noise was dropped there (Goodman: SWRDNOIS 4.74 for the 5.38 e- of the page and the API), and the
    # stack of a fit-together group never had it. One bias frame of 3 e-: 3 * sqrt(2) with it.
    folder = _observed_folder(tmp_path, frames)
    sci = sorted(folder.glob("sci_*.fits"))
    expected = 3.0 * np.sqrt(2.0)
    for together in (False, True):
        out = tmp_path / f"out_{together}"
        summary = run_batch(sci, [folder / "arc_01.fits"], bias=[folder / "bias_0.fits"], masks=[make_mask()],
                            out_dir=out, workers=1, processes=True, progress=False, method="median",
                            fit_together=together)
        assert summary.ok, summary.failed
        for path in sci:
            header = fits.getheader(out / output_name(path))
            assert header["SWRDNOIS"] == pytest.approx(expected, rel=1e-6), (together, header["SWRDNOIS"])


def test_workers_get_the_bad_pixel_mask_by_absolute_path(tmp_path, monkeypatch):
    # A trial: an external cluster's workers, running in another folder, read a relative mask path there
    # (the file missing, or another mask of that name applied).
    from specwidgets.io.instruments import resolve_instrument

    (tmp_path / "night").mkdir()
    fits.PrimaryHDU(np.zeros(SHAPE, np.uint8)).writeto(tmp_path / "night" / "bad.fits")
    monkeypatch.chdir(tmp_path)
    reader = resolve_instrument("generic").with_options(bad_pixels="night/bad.fits")
    assert reader.bad_pixels_file == "night/bad.fits"
    assert batch._with_absolute_paths(reader).bad_pixels == str(tmp_path / "night" / "bad.fits")
    assert batch._with_absolute_paths(resolve_instrument("generic").with_options(bad_pixels="DQ")).bad_pixels == "DQ"


def test_a_file_rewritten_with_its_old_time_is_noticed(tmp_path):
    # A trial: a science frame (or mask) rewritten with its modification time put back (cp -p, rsync -t)
    # kept its cached hash (or mask) in a process that had read it: a worker kept across runs skipped it.
    from specwidgets.io.instruments import _bad_pixel_image

    path = tmp_path / "a.fits"
    fits.PrimaryHDU(np.zeros(SHAPE, np.uint8)).writeto(path)
    before = batch.file_fingerprint(path)["sha256"]
    mask_before, _ = _bad_pixel_image(str(path), None, 0, path)
    times = os.stat(path)
    data = np.zeros(SHAPE, np.uint8)
    data[:, 7] = 1
    fits.PrimaryHDU(data).writeto(path, overwrite=True)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == times.st_mtime_ns and os.stat(path).st_size == times.st_size
    assert batch.file_fingerprint(path)["sha256"] != before
    mask_after, _ = _bad_pixel_image(str(path), None, 0, path)
    assert not mask_before[:, 7].any() and mask_after[:, 7].all()


def test_a_workers_warning_keeps_its_category_and_place(monkeypatch):
    # A trial: relayed from a worker process, astropy's warning came back as a plain UserWarning at a
    # line of the runner, so a filter on its category caught it in-process only.
    import warnings

    from astropy.utils.exceptions import AstropyUserWarning

    job = SimpleNamespace(driver_pid=-1)  # (as a worker process sees it)
    records = [{}]
    with batch._relay_warnings(job, records):
        warnings.warn_explicit("File may have been truncated", AstropyUserWarning, "/x/astropy/io/fits/file.py", 12)
        warnings.warn_explicit("a specwidgets note", RuntimeWarning, batch.__file__, 1)  # (raised in the package)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch._show_relayed(records[0], set())
    by_message = {str(w.message): w for w in caught}
    assert by_message["File may have been truncated"].category is AstropyUserWarning
    assert by_message["File may have been truncated"].filename == "/x/astropy/io/fits/file.py"
    assert by_message["a specwidgets note"].category is RuntimeWarning
    assert by_message["a specwidgets note"].filename == __file__  # the caller's line, not the runner's
    assert batch._warning_category("nowhere.module:Missing") is UserWarning
    assert batch._warning_category("builtins:ValueError") is UserWarning  # not a Warning


def test_dashboard_export_carries_the_observation_keywords(tmp_path, frames):
    from specwidgets.interactive import Dashboard
    from specwidgets.io.folder import load_folder
    from specwidgets.io.loading import read_frame

    folder = _observed_folder(tmp_path, frames)
    one = read_frame(folder / "sci_01.fits", "generic")
    assert one.unit == "electron" and one.gain == 1.0 and one.read_noise == 3.0 and one.shape == SHAPE
    np.testing.assert_allclose(one, 2.0 * (frames.science[1] + BIAS_LEVEL))
    assert one.header["OBJECT"] == "NGC 253"
    data = load_folder(folder, science_tag="sci_")
    assert [h["DATE-OBS"] for h in data.headers] == ["2026-11-28T00:00:00", "2026-11-28T01:00:00"]
    dash = Dashboard(data.science, data.arc, mask_region=[make_mask()], method="median",
                     exposure_names=data.files["science"], input_headers=data.headers)
    written = dash.export(tmp_path / "export")
    for k, path in enumerate(written):
        _check_observation_cards(path, k)
    dash.close()


def test_local_processes_leave_this_process_environment_alone():
    """Dask's nanny writes the workers' variables into the parent's os.environ; run_batch puts them back.

    Left there, NUMBA_NUM_THREADS=1 makes the next numba compile in a notebook
    that ran a batch fail ("Cannot set NUMBA_NUM_THREADS ... once the threads
    have been launched").
    """
    names = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED")
    before = {name: os.environ.get(name) for name in names}
    client, to_close = batch._open_client(1, None, None, True, numba_threads=1)
    try:
        # The worker got them ...
        seen = client.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))
        assert list(seen.values()) == ["1"]
    finally:
        for thing in to_close:
            thing.close()
    # ... and this process has its own back.
    assert {name: os.environ.get(name) for name in names} == before


def test_the_pixel_flat_keeps_the_rows_next_to_the_slit_ends():
    """A lamp flat whose slit ends (and a slit bar) are dark: the rows beside them keep their response.

    The mean along the slit mixed lit and dark rows there: the normalised
    flat was 1.75, 1.47, 1.27 of the response on the first lit rows, and the
    science came out 0.6-0.8 of the truth there (trial K1)."""
    rng = np.random.default_rng(4)
    response = 1 + 0.01 * rng.standard_normal((60, 300))
    lamp = np.linspace(0.5, 1.5, 300)[None, :] * np.linspace(0.8, 1.0, 60)[:, None]
    light = np.ones(60)
    light[:5] = light[55:] = 0.02  # the slit's ends
    light[28:31] = 0.05  # a slit bar
    flat = 30000 * lamp * response * light[:, None]
    flat = flat + rng.normal(0, np.sqrt(flat / 3))  # three lamp flats' Poisson noise
    ratio = normalise_flat(flat) / response
    lit = light[:, None] * np.ones(300) == 1
    for rows in (slice(5, 8), slice(25, 28), slice(31, 34), slice(52, 55)):  # beside each edge
        assert abs(np.median(ratio[rows]) - 1) < 0.003, rows
    assert np.std(ratio[lit]) < 0.006  # the flat's own noise (~0.33 %) and its smoothing's


@pytest.mark.parametrize("value", [0.0, -50.0, np.nan])
def test_an_unusable_flat_is_refused_before_any_fit(raw, tmp_path, value):
    flats = [_write(raw["folder"] / f"badflat_{i}.fits", np.full(SHAPE, value) + BIAS_LEVEL) for i in range(2)]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"the flat frames \(badflat_0.fits, badflat_1.fits\) are unusable in 100 %"):
        _api(raw, out, flat=flats)
    assert not out.exists()


def test_an_arc_without_usable_lines_names_the_options_and_the_way_out(raw, tmp_path):
    """A weak arc stopped batch with "lower std_variation" (batch's option is --std-variation), and never
    said that without --arc each frame's warp is fit on its own sky lines, which gave good skies (trial K2)."""
    weak = _write(raw["folder"] / "weak_arc.fits", np.random.default_rng(1).normal(BIAS_LEVEL, 4.0, SHAPE))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"lower --std-variation .*; or leave out the arc frames \(no --arc\): each "
                                         r"science frame's warp is then fit on its own sky lines"):
        run_batch(raw["science"], [weak], masks=[make_mask()], out_dir=out, workers=1, processes=False,
                  progress=False)
    assert not out.exists()
