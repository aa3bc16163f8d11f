"""One FITS discovery rule for the API, the dashboard and batch: compressed frames included."""

from __future__ import annotations

import bz2
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from specwidgets.io.discovery import find_fits_files, fits_stem, is_fits_name
from specwidgets.io.fits_output import output_name


@pytest.mark.parametrize("name", ["a.fits", "a.FIT", "a.fts", "a.fits.gz", "a.fits.bz2", "a.fits.fz", "A.FITS.BZ2",
                                  "a.fit.gz", "a.fts.fz"])
def test_fits_names(name):
    assert is_fits_name(name)


@pytest.mark.parametrize("name", ["a.fz", "a.gz", "a.bz2", "a.txt", "a.fits.zip", ".a.fits", "fits", "a.fits.gz.txt"])
def test_not_fits_names(name):
    assert not is_fits_name(name)


def test_stems_strip_every_fits_and_compression_suffix():
    assert fits_stem("night1_sci.fits.bz2") == "night1_sci"
    assert fits_stem("x/0069_PKS.fits.fz") == "0069_PKS"
    assert fits_stem("a.fits.fits.gz") == "a"
    assert output_name("night1_sci.fits.bz2") == "night1_sci_sky.fits"
    assert output_name("frame.FTS.GZ") == "frame_sky.fits"


def test_symlink_loops_and_duplicate_links_count_each_frame_once(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.fits", "sub/a.fits.bz2", "notes.txt", ".hidden.fits"):
        (tmp_path / name).write_bytes(b"")
    os.symlink(tmp_path, tmp_path / "self")  # a folder holding a link to itself
    os.symlink(tmp_path / "b.fits", tmp_path / "c.fits")  # a second name for b.fits
    found = find_fits_files(tmp_path, depth=1, match="path")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["b.fits", "sub/a.fits.bz2"]
    assert [p.name for p in find_fits_files(tmp_path, depth=3, resolve=True)] == ["b.fits", "a.fits.bz2"]
    assert [p.name for p in find_fits_files(tmp_path, "sub/", depth=1, match="path")] == ["a.fits.bz2"]
    with pytest.raises(TypeError, match="tag"):
        find_fits_files(tmp_path, tag=3)


def test_listing_is_linear(tmp_path):
    """Each folder listed once: 2000 files in a folder with a self-link take one pass, not a blow-up."""
    import time

    for i in range(2000):
        (tmp_path / f"f{i:04d}.fits").write_bytes(b"")
    os.symlink(tmp_path, tmp_path / "loop")
    start = time.perf_counter()
    found = find_fits_files(tmp_path, depth=5)
    assert len(found) == 2000
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------- .fits.bz2 end to end
def _write_bz2(path, data):
    from astropy.io import fits

    raw = Path(str(path)[: -len(".bz2")])
    fits.PrimaryHDU(np.asarray(data, np.float32)).writeto(raw)
    path.write_bytes(bz2.compress(raw.read_bytes()))
    raw.unlink()
    return path


@pytest.fixture(scope="module")
def bz2_night(tmp_path_factory):
    from specwidgets.io.synthetic import make_synthetic_longslit

    folder = tmp_path_factory.mktemp("bz2") / "night1"
    folder.mkdir()
    frames = make_synthetic_longslit(shape=(40, 300), n_exposures=2, n_arc_lines=10, n_sky_lines=10, seed=4)
    level = 300.0
    rng = np.random.default_rng(2)
    for i in range(2):
        _write_bz2(folder / f"bias_{i}.fits.bz2", level + rng.normal(0, 1, (40, 300)))
    _write_bz2(folder / "arc_1.fits.bz2", level + frames.arc)
    for i, image in enumerate(frames.science):
        _write_bz2(folder / f"night1_sci{i}.fits.bz2", level + image)
    return folder, frames


def test_bz2_frames_load_in_the_api(bz2_night):
    from astropy.io import fits

    import specwidgets as sw

    folder, frames = bz2_night
    with fits.open(folder / "arc_1.fits.bz2") as hdul:  # astropy reads bzip2 directly
        assert hdul[0].data.shape == (40, 300)
    science = sw.collect_images_array(folder, tag="night1_sci")
    assert science.shape == (2, 40, 300)
    np.testing.assert_allclose(science[1] - 300.0, frames.science[1], atol=1e-2)


def test_bz2_frames_load_in_the_dashboard(bz2_night):
    from specwidgets.app.page import DashboardApp

    folder, _ = bz2_night
    app = DashboardApp()
    app.source.value = "folder"
    app.folder.value = str(folder)
    app.arc_tag.value, app.bias_tag.value, app.science_tag.value = "arc", "bias", "sci"
    assert app.load(), app.message.value
    assert app.dashboard.background.shape == (2, 40, 300)
    assert "no FITS file" not in app.message.value


def test_bz2_frames_in_batch_are_named_by_their_stem(bz2_night, tmp_path):
    pytest.importorskip("distributed")
    from specwidgets.batch.runner import run_batch

    folder, _ = bz2_night
    summary = run_batch(sorted(folder.glob("night1_sci*")), [folder / "arc_1.fits.bz2"],
                        bias=[folder / "bias_0.fits.bz2", folder / "bias_1.fits.bz2"], masks=[(12, 26)],
                        out_dir=tmp_path / "out", workers=1, processes=False, progress=False)
    assert not summary.failed, summary.failed
    assert sorted(p.name for p in (tmp_path / "out").glob("*.fits")) == ["night1_sci0_sky.fits",
                                                                           "night1_sci1_sky.fits"]
    # A folder given as science finds the compressed frames too (not the arc or biases by tag: all of them).
    from specwidgets.batch.calibrations import _expand

    assert [p.name for p in _expand([folder], "science")][:2] == ["arc_1.fits.bz2", "bias_0.fits.bz2"]


def test_an_exposure_stored_twice_is_refused_by_the_api_as_by_batch(tmp_path):
    """``x.fits`` and a compressed copy ``x.fits.gz`` beside it (trial F1): collect_images_array stacked the
    exposure twice, silently, where batch refused the folder; both refuse it now, by one rule."""
    import gzip

    from specwidgets.batch import run_batch
    from specwidgets.io.loading import average_matching_files, collect_images_array

    data = np.arange(48.0, dtype=np.float32).reshape(6, 8)
    for name in ("x.fits", "y.fits"):
        fits.writeto(tmp_path / name, data)
    with gzip.open(tmp_path / "x.fits.gz", "wb") as out:
        out.write((tmp_path / "x.fits").read_bytes())
    message = r"same name but for their FITS or compression ending \(x\.fits, x\.fits\.gz\).*ignore=\['x\.fits\.gz'\]"
    with pytest.raises(ValueError, match=message):
        collect_images_array(tmp_path)
    with pytest.raises(ValueError, match=message):
        average_matching_files(tmp_path)
    with pytest.raises(ValueError, match=message):
        average_matching_files(tmp_path, mode="sum")
    with pytest.raises(ValueError, match=r"same output file: x_sky\.fits <- .*x\.fits, .*x\.fits\.gz"):
        run_batch(sorted(tmp_path.iterdir()), out_dir=tmp_path / "out", masks=[(2, 4)], progress=False)
    # Left out as the message says, the folder reads.
    assert collect_images_array(tmp_path, ignore=["x.fits.gz"]).shape == (2, 6, 8)
    from specwidgets.io.discovery import stem_clashes

    assert stem_clashes(sorted(tmp_path.iterdir())) == {"x": [tmp_path / "x.fits", tmp_path / "x.fits.gz"]}


def test_the_pages_folder_loader_refuses_an_exposure_stored_twice(tmp_path):
    """The page's folder loader (and batch from a saved session) by the same rule: ``sci_1.fits`` beside
    ``sci_1.fits.gz`` in one folder is one exposure, not two; the same name in two nights' folders is two."""
    import gzip

    from specwidgets.io.folder import folder_files

    data = np.arange(48.0, dtype=np.float32).reshape(6, 8)
    for name in ("arc_1.fits", "sci_1.fits", "sci_2.fits"):
        fits.writeto(tmp_path / name, data)
    with gzip.open(tmp_path / "sci_1.fits.gz", "wb") as out:
        out.write((tmp_path / "sci_1.fits").read_bytes())
    with pytest.raises(ValueError, match=r"science frames stored twice .*sci_1\.fits, sci_1\.fits\.gz"):
        folder_files(tmp_path, bias_tag="", science_tag="sci_")
    (tmp_path / "sci_1.fits.gz").unlink()
    for night in ("n1", "n2"):
        (tmp_path / night).mkdir()
        fits.writeto(tmp_path / night / "sci_9.fits", data)
    roles, _ = folder_files(tmp_path, bias_tag="", science_tag="sci_")
    assert len(roles["science"]) == 4
