"""Tests of specwidgets.io.loading and specwidgets.io.instruments.

Synthetic FITS files written here cover the instrument rules and every error;
tests marked ``goodman`` check the real SOAR/Goodman frames when present.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits

from specwidgets.io import instruments
from specwidgets.io.instruments import (
    Frame,
    Instrument,
    get_instrument,
    known_instruments,
    parse_fits_section,
    register_instrument,
)
from specwidgets.io.loading import average_matching_files, collect_images_array
from specwidgets.io.sample_data import goodman_available, goodman_path

needs_goodman = pytest.mark.skipif(not goodman_available(), reason="Goodman sample not on this machine")


def gradient(n_rows, n_cols, offset=0):
    """Every pixel distinct, so any turn or shift shows up."""
    return (offset + 1000 * np.arange(n_rows)[:, None] + np.arange(n_cols)[None, :]).astype(np.float32)


def write(path, data, header=None, extension=False):
    """Write ``data`` to ``path``, in the primary HDU or in extension 1."""
    hdr = fits.Header(header or {})
    if extension:
        hdul = fits.HDUList([fits.PrimaryHDU(header=fits.Header({"ORIGIN": "test"})), fits.ImageHDU(data, hdr)])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data, hdr)])
    hdul.writeto(path, overwrite=True)
    return path


@pytest.fixture
def isolated_registry(monkeypatch):
    """Let a test register instruments without leaking them into others, from the built-in ones only
    (register_instrument's doctest, run first when the package's doctests are collected first, registers "mycam")."""
    monkeypatch.setattr(instruments, "_REGISTRY", dict(instruments._BUILTINS))


# ------------------------------------------------------------------ KOSMOS
KOSMOS_RAW = (60, 40)  # raw rows run along the dispersion
KOSMOS_BSEC11 = "[31:40,1:60]"  # raw columns 31-40 are overscan


@pytest.fixture
def kosmos_folder(tmp_path):
    for i, name in enumerate(["kosmos_bias_01.fits", "kosmos_bias_02.fits", "kosmos_neon_01.fits"]):
        write(tmp_path / name, gradient(*KOSMOS_RAW, offset=10 * i), {"BSEC11": KOSMOS_BSEC11, "EXPTIME": 1.0})
    return tmp_path


def test_kosmos_rotates_drops_overscan_and_applies_gain(kosmos_folder):
    images, meta = collect_images_array(kosmos_folder, tag="bias", instrument="kosmos", return_metadata=True)
    raw = gradient(*KOSMOS_RAW)
    # Clockwise turn: rotated[i, j] == raw[n_raw_rows - 1 - j, i]; overscan rows 30+ go.
    expected = np.rot90(raw, k=3)[:30] * 0.6
    assert images.shape == (2, 30, 60)
    assert images.dtype == np.float64
    np.testing.assert_allclose(images[0], expected)
    assert images[0, 2, 5] == pytest.approx(raw[60 - 1 - 5, 2] * 0.6)
    assert [m["file"] for m in meta] == ["kosmos_bias_01.fits", "kosmos_bias_02.fits"]
    assert meta[0]["gain"] == 0.6 and meta[0]["unit"] == "electron"
    assert meta[0]["read_noise"] is None  # no RDNOISE card: unknown, not invented


def test_kosmos_crop_and_average(kosmos_folder):
    bias = average_matching_files(kosmos_folder, tag="bias", instrument="kosmos", crop_bds=(5, 25))
    rotated = np.rot90(gradient(*KOSMOS_RAW), k=3)[:30]
    expected = np.median([rotated, np.rot90(gradient(*KOSMOS_RAW, offset=10), k=3)[:30]], axis=0)[5:25] * 0.6
    assert bias.shape == (20, 60)
    np.testing.assert_allclose(bias, expected)
    mean = average_matching_files(kosmos_folder, tag="bias", instrument="kosmos", crop_bds=(5, 25), mode="mean")
    np.testing.assert_allclose(mean, expected)


def test_kosmos_reads_rdnoise_when_present(tmp_path):
    write(tmp_path / "a.fits", gradient(*KOSMOS_RAW), {"BSEC11": KOSMOS_BSEC11, "RDNOISE": 3.9})
    _, meta = collect_images_array(tmp_path, instrument="kosmos", return_metadata=True)
    assert meta[0]["read_noise"] == 3.9


def test_kosmos_without_bsec11_names_file_and_keyword(tmp_path):
    write(tmp_path / "nobsec.fits", gradient(*KOSMOS_RAW))
    with pytest.raises(ValueError, match=r"nobsec\.fits.*BSEC11"):
        collect_images_array(tmp_path, instrument="kosmos")


def test_options_override_a_builtin_instrument(kosmos_folder):
    images, meta = collect_images_array(
        kosmos_folder, tag="bias_01", instrument="kosmos", gain=None, read_noise=5.0, return_metadata=True
    )
    np.testing.assert_allclose(images[0], np.rot90(gradient(*KOSMOS_RAW), k=3)[:30])
    assert meta[0]["unit"] == "adu" and meta[0]["read_noise"] == 5.0


# ------------------------------------------------------------------ generic
def test_generic_defaults_keep_frame_as_stored_in_adu(tmp_path):
    write(tmp_path / "f.fits", gradient(8, 12))
    images, meta = collect_images_array(tmp_path, return_metadata=True)
    np.testing.assert_array_equal(images[0], gradient(8, 12))
    assert meta[0]["gain"] is None and meta[0]["read_noise"] is None and meta[0]["unit"] == "adu"


def test_generic_dispersion_axis_0_with_trim_section(tmp_path):
    raw = gradient(30, 20)
    write(tmp_path / "f.fits", raw)
    # The section is in raw FITS coordinates: columns 2-19, rows 3-28.
    images = collect_images_array(
        tmp_path, dispersion_axis=0, trimsec="[2:19,3:28]", gain=2.0, crop_bds=(1, 10)
    )
    expected = (raw[2:28, 1:19].T * 2.0)[1:10]
    assert images.shape == (1, 9, 26)
    np.testing.assert_allclose(images[0], expected)


def test_generic_finds_image_in_extension_and_by_name(tmp_path):
    write(tmp_path / "ext.fits", gradient(5, 7), {"EXTNAME": "SCI", "DATE-OBS": "2024-01-01"}, extension=True)
    images, meta = collect_images_array(tmp_path, return_metadata=True)
    assert meta[0]["hdu"] == 1 and images.shape == (1, 5, 7)
    # Primary and image cards are merged into one header.
    assert meta[0]["header"]["ORIGIN"] == "test" and meta[0]["header"]["DATE-OBS"] == "2024-01-01"
    by_name = collect_images_array(tmp_path, hdu="SCI")
    np.testing.assert_array_equal(by_name, images)


def test_compressed_and_gzipped_files_are_read(tmp_path):
    data = gradient(16, 24)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data.astype(np.int32))]).writeto(tmp_path / "a.fits.fz")
    write(tmp_path / "b.fits.gz", data)
    (tmp_path / "notes.txt").write_text("not FITS, not read")
    images = collect_images_array(tmp_path)
    assert images.shape == (2, 16, 24)
    np.testing.assert_array_equal(images[0], images[1])


def test_tag_ignore_and_sorting(tmp_path):
    for name in ["c_sci.fits", "a_sci.fits", "b_sci_bad.fits", "arc.fits"]:
        write(tmp_path / name, gradient(4, 4))
    _, meta = collect_images_array(tmp_path, tag="sci", ignore="bad", return_metadata=True)
    assert [m["file"] for m in meta] == ["a_sci.fits", "c_sci.fits"]
    _, meta = collect_images_array(tmp_path, ignore=["bad", "arc"], return_metadata=True)
    assert [m["file"] for m in meta] == ["a_sci.fits", "c_sci.fits"]


def test_debug_prints_a_table(tmp_path, capsys):
    write(tmp_path / "one.fits", gradient(4, 4))
    collect_images_array(tmp_path, debug=True)
    out = capsys.readouterr().out
    assert "one.fits" in out and "(4, 4)" in out


def test_average_returns_metadata(tmp_path):
    write(tmp_path / "a.fits", np.zeros((4, 4), np.float32))
    write(tmp_path / "b.fits", np.full((4, 4), 2, np.float32))
    write(tmp_path / "c.fits", np.full((4, 4), 10, np.float32))
    median, meta = average_matching_files(tmp_path, return_metadata=True)
    assert len(meta) == 3
    np.testing.assert_array_equal(median, np.full((4, 4), 2.0))
    np.testing.assert_array_equal(average_matching_files(tmp_path, mode="mean"), np.full((4, 4), 4.0))


# ------------------------------------------------------------------ registry
def test_known_and_unknown_instruments():
    assert {"generic", "goodman", "kosmos"} <= set(known_instruments())
    assert get_instrument("GOODMAN") is get_instrument("goodman")
    with pytest.raises(ValueError, match="unknown instrument 'nope'.*generic, goodman, kosmos"):
        get_instrument("nope")


def test_register_custom_instrument(tmp_path, isolated_registry):
    write(tmp_path / "f.fits", gradient(10, 6), {"MYGAIN": 3.0, "TRIM": "[1:6,2:9]"})
    cam = Instrument("mycam", transpose=True, trimsec_keyword="TRIM", gain_keyword="MYGAIN", read_noise=2.5)
    register_instrument("MyCam", cam)
    assert "mycam" in known_instruments()
    images, meta = collect_images_array(tmp_path, instrument="mycam", return_metadata=True)
    np.testing.assert_allclose(images[0], gradient(10, 6)[1:9, 0:6].T * 3.0)
    assert meta[0]["gain"] == 3.0 and meta[0]["read_noise"] == 2.5
    register_instrument("mycam", cam)  # same instrument again: harmless
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_instrument("mycam", Instrument("other"))
    register_instrument("mycam", Instrument("other"), overwrite=True)
    assert get_instrument("mycam").name == "other"


def test_register_reader_function(tmp_path, isolated_registry):
    write(tmp_path / "f.fits", gradient(10, 6))

    def read_flipped(path, scale=1.0):
        with fits.open(path) as hdul:
            data = hdul[0].data[:, ::-1] * scale
            return Frame(data=data, header=hdul[0].header.copy(), gain=2.0, read_noise=1.0)

    register_instrument("flipcam", read_flipped)
    images = collect_images_array(tmp_path, instrument="flipcam", scale=0.5)
    np.testing.assert_allclose(images[0], gradient(10, 6)[:, ::-1] * 0.5 * 2.0)
    # An Instrument object works without registering it too.
    direct = collect_images_array(tmp_path, instrument=Instrument("x", gain=2.0))
    np.testing.assert_allclose(direct[0], gradient(10, 6) * 2.0)


def test_parse_fits_section():
    assert parse_fits_section("[26:2055,2:948]", (948, 2071)) == (slice(1, 948), slice(25, 2055))
    with pytest.raises(ValueError, match="not a FITS section"):
        parse_fits_section("26:2055,2:948", (948, 2071))
    with pytest.raises(ValueError, match="out of range.*2071 columns"):
        parse_fits_section("[26:2100,2:948]", (948, 2071))
    with pytest.raises(ValueError, match="reversed"):
        parse_fits_section("[30:26,2:948]", (948, 2071))


# ------------------------------------------------------------------ errors
def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect_images_array(tmp_path / "nowhere")


def test_path_is_a_file(tmp_path):
    path = write(tmp_path / "single.fits", gradient(4, 4))
    with pytest.raises(NotADirectoryError, match=r"single\.fits.*is a file, not a folder"):
        collect_images_array(path)


def test_tag_matching_nothing_names_tag_folder_and_count(tmp_path):
    for name in ["a.fits", "b.fits", "c.fits.fz"]:
        write(tmp_path / name, gradient(4, 4))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path.name}.*'flat'.*3 FITS files"):
        average_matching_files(tmp_path, tag="flat")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no FITS file in folder .*empty.*subfolders are not searched\)"):
        collect_images_array(empty)
    # A night's top folder, its frames in subfolders: they are named (a new user's trial read "tag ''").
    (empty / "bias").mkdir()
    (empty / "notes").mkdir()
    write(empty / "bias" / "b.fits", gradient(4, 4))
    with pytest.raises(FileNotFoundError, match=r"these hold FITS files: bias/\)$"):
        collect_images_array(empty)


def test_corrupt_file_names_it(tmp_path):
    write(tmp_path / "a_good.fits", gradient(4, 4))
    (tmp_path / "b_corrupt.fits").write_bytes(b"this is not FITS" * 10)
    with pytest.raises(ValueError, match=r"b_corrupt\.fits"):
        collect_images_array(tmp_path)


def test_truncated_file_names_it(tmp_path):
    good = write(tmp_path / "full.fits", gradient(100, 200))
    (tmp_path / "truncated.fits").write_bytes(good.read_bytes()[:40000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"truncated\.fits"):
            collect_images_array(tmp_path, tag="truncated")


def test_different_shapes_name_files_and_shapes(tmp_path):
    write(tmp_path / "a.fits", gradient(4, 4))
    write(tmp_path / "b.fits", gradient(4, 4))
    write(tmp_path / "c.fits", gradient(5, 4))
    with pytest.raises(ValueError, match=r"\(4, 4\) in a\.fits, b\.fits; \(5, 4\) in c\.fits"):
        collect_images_array(tmp_path)


def test_unknown_instrument_lists_known(tmp_path):
    write(tmp_path / "a.fits", gradient(4, 4))
    with pytest.raises(ValueError, match="unknown instrument 'hubble'.*generic, goodman, kosmos"):
        collect_images_array(tmp_path, instrument="hubble")


@pytest.mark.parametrize(
    ("crop_bds", "match"),
    [((2, 50), "out of range.*has 8 rows"), ((9, None), "out of range"), ((-1, 4), "out of range"),
     ((5, 2), "reversed"), ((3, 3), "empty")],
)
def test_bad_crop_bds(tmp_path, crop_bds, match):
    write(tmp_path / "a.fits", gradient(8, 4))
    with pytest.raises(ValueError, match=match):
        collect_images_array(tmp_path, crop_bds=crop_bds)


def test_amplifier_pieces_of_one_exposure_are_refused(tmp_path):
    """Raw multi-amplifier files (SCI,1..3, each with its DETSEC): reading only the first was silent."""
    data = gradient(6, 12)
    pieces = [fits.ImageHDU(data[:, 4 * k:4 * k + 4], name="SCI", ver=k + 1) for k in range(3)]
    for k, hdu in enumerate(pieces):
        hdu.header["DETSEC"] = f"[{4 * k + 1}:{4 * k + 4},1:6]"
    fits.HDUList([fits.PrimaryHDU(), *pieces]).writeto(tmp_path / "amps.fits")
    with pytest.raises(ValueError, match=r"amps\.fits holds 3 images of one exposure .*join them"):
        collect_images_array(tmp_path)
    # Named apart, they are still pieces when each says where on the detector it goes.
    for k, hdu in enumerate(pieces):
        hdu.name = f"AMP{k}"
    fits.HDUList([fits.PrimaryHDU(), *pieces]).writeto(tmp_path / "amps.fits", overwrite=True)
    with pytest.raises(ValueError, match="holds 3 images of one exposure"):
        collect_images_array(tmp_path)
    # One image with its variance and quality planes is one frame (the first image read).
    planes = [fits.ImageHDU(data, name=n) for n in ("SCI", "VAR", "DQ")]
    fits.HDUList([fits.PrimaryHDU(), *planes]).writeto(tmp_path / "amps.fits", overwrite=True)
    assert collect_images_array(tmp_path).shape == (1, 6, 12)
    # hdu= reads one piece on purpose.
    fits.HDUList([fits.PrimaryHDU(), *pieces]).writeto(tmp_path / "amps.fits", overwrite=True)
    assert collect_images_array(tmp_path, hdu="AMP1").shape == (1, 6, 4)


def test_file_without_2d_image_names_it(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "table_only.fits")
    with pytest.raises(ValueError, match=r"table_only\.fits has no HDU holding a 2D image"):
        collect_images_array(tmp_path)
    write(tmp_path / "cube.fits", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"HDU 0 of .*cube\.fits holds no 2D image"):
        collect_images_array(tmp_path, tag="cube", hdu=0)
    with pytest.raises(ValueError, match=r"cube\.fits has no HDU 5"):
        collect_images_array(tmp_path, tag="cube", hdu=5)


def test_thumbnail_in_the_primary_hdu_is_not_read_as_the_frame(tmp_path):
    """A 10 x 10 preview in the primary HDU and the frame in a SCI extension (trial F1): the thumbnail was
    read, silently, and the SCI header's GAIN lost. The SCI image is read, its cards used, and a warning
    names the HDU read."""
    def thumbnail_file(path, name="SCI", extra=()):
        primary = fits.PrimaryHDU(np.zeros((10, 10), np.float32), fits.Header({"ORIGIN": "test"}))
        frame = fits.ImageHDU(gradient(6, 40), fits.Header({"GAIN": 2.0, "RDNOISE": 4.0}), name=name)
        fits.HDUList([primary, frame, *extra]).writeto(path, overwrite=True)

    thumbnail_file(tmp_path / "a.fits")
    with pytest.warns(UserWarning, match=r"2 2D images \(0: PRIMARY 10 x 10, 1: SCI 6 x 40\): HDU 1 \(SCI\) is read, "
                                         r"as its EXTNAME is SCI.*pass hdu="):
        images, meta = collect_images_array(tmp_path, return_metadata=True)
    assert meta[0]["hdu"] == 1 and images.shape == (1, 6, 40)
    # The cards are the image HDU's, after the primary's (merged as for any extension).
    assert images.unit == "electron" and meta[0]["gain"] == 2.0 and meta[0]["header"]["ORIGIN"] == "test"
    np.testing.assert_allclose(images[0], 2.0 * gradient(6, 40))
    # hdu= still reads the thumbnail on purpose, without a word.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert collect_images_array(tmp_path, hdu=0).shape == (1, 10, 10)
    # No SCI name: the largest image is read, and named.
    thumbnail_file(tmp_path / "a.fits", name="FRAME")
    with pytest.warns(UserWarning, match=r"HDU 1 \(FRAME\) is read, as the largest image"):
        assert collect_images_array(tmp_path).shape == (1, 6, 40)
    # The science image with its companions (variance, quality) is no surprise: no warning.
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(gradient(6, 40), name="SCI"),
                  fits.ImageHDU(gradient(6, 40), name="VAR")]).writeto(tmp_path / "a.fits", overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert collect_images_array(tmp_path).shape == (1, 6, 40)
    # Amplifier pieces behind a thumbnail are still refused (the thumbnail has no DETSEC of its own).
    pieces = [fits.ImageHDU(gradient(6, 4, 10 * k), name=f"AMP{k}") for k in range(3)]
    for k, hdu in enumerate(pieces):
        hdu.header["DETSEC"] = f"[{4 * k + 1}:{4 * k + 4},1:6]"
    fits.HDUList([fits.PrimaryHDU(np.zeros((2, 2), np.float32)), *pieces]).writeto(tmp_path / "a.fits", overwrite=True)
    with pytest.raises(ValueError, match="holds 3 images of one exposure"):
        collect_images_array(tmp_path)


def test_a_primary_copy_or_a_variance_first_is_not_read_as_the_frame(tmp_path):
    """Trial A2: a primary image of the SCI frame's shape had the file refused as two amplifiers, and a
    VARIANCE extension before the FLUX was read as "the largest image" (the first of two alike)."""
    fits.HDUList([fits.PrimaryHDU(np.zeros((6, 40), np.float32)),
                  fits.ImageHDU(gradient(6, 40), name="SCI")]).writeto(tmp_path / "a.fits")
    with pytest.warns(UserWarning, match=r"HDU 1 \(SCI\) is read"):
        np.testing.assert_allclose(collect_images_array(tmp_path)[0], gradient(6, 40))
    # Two SCI pieces are still pieces.
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(gradient(6, 40), name="SCI"),
                  fits.ImageHDU(gradient(6, 40), name="SCI")]).writeto(tmp_path / "a.fits", overwrite=True)
    with pytest.raises(ValueError, match="amplifiers or CCDs"):
        collect_images_array(tmp_path)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.full((6, 40), 25.0, np.float32), name="VARIANCE"),
                  fits.ImageHDU(gradient(6, 40), name="FLUX")]).writeto(tmp_path / "a.fits", overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(collect_images_array(tmp_path)[0], gradient(6, 40))


def test_the_advice_for_an_exposure_stored_twice_drops_it_alone(tmp_path):
    """``ignore=`` drops every name containing a pattern: ``ignore=['1.fits.gz']`` would drop 11.fits.gz too
    (trial A2), so it is offered only when it drops the copy alone."""
    import gzip

    for name in ("1.fits", "12.fits"):
        fits.writeto(tmp_path / name, gradient(6, 40))
    for name in ("1.fits.gz", "11.fits.gz"):
        (tmp_path / name).write_bytes(gzip.compress((tmp_path / "1.fits").read_bytes()))
    with pytest.raises(ValueError, match=r"\(1\.fits, 1\.fits\.gz\).*Keep one: move the others away \(batch"):
        collect_images_array(tmp_path)
    (tmp_path / "11.fits.gz").unlink()
    with pytest.raises(ValueError, match=r"ignore=\['1\.fits\.gz'\]"):
        collect_images_array(tmp_path)


def test_cube_of_one_plane_is_read_and_a_real_cube_is_named(tmp_path):
    """3-D data with NAXIS3 = 1 (trial F1) were refused as "no HDU holding a 2D image": read as their one
    plane; a cube of several planes is refused, saying it is one and how to read a plane."""
    from specwidgets.io.loading import read_frame

    write(tmp_path / "one.fits", gradient(5, 8)[None], {"GAIN": 2.0})
    for options in ({}, {"hdu": 0}):
        frame = read_frame(tmp_path / "one.fits", **options)
        assert frame.shape == (5, 8) and frame.unit == "electron"
        np.testing.assert_allclose(frame, 2.0 * gradient(5, 8))
    write(tmp_path / "one.fits", gradient(5, 8)[None], {"GAIN": 2.0}, extension=True)
    assert collect_images_array(tmp_path, tag="one").shape == (1, 5, 8)
    write(tmp_path / "three.fits", np.stack([gradient(5, 8)] * 3))
    for options in ({}, {"hdu": 0}):
        with pytest.raises(ValueError, match=r"HDU 0 of .*three\.fits holds no 2D image: it is a cube of 3 planes "
                                             r"of 5 x 8 pixels \(NAXIS3 = 3\).*write the plane.*k = 0\.\.2"):
            read_frame(tmp_path / "three.fits", **options)


def test_bad_mode_and_option(tmp_path):
    write(tmp_path / "a.fits", gradient(4, 4))
    with pytest.raises(ValueError, match="unknown mode 'max'.*'median', 'mean'"):
        average_matching_files(tmp_path, mode="max")
    with pytest.raises(TypeError, match="unknown instrument option.*gian.*valid options"):
        collect_images_array(tmp_path, gian=1.4)
    with pytest.raises(ValueError, match="dispersion_axis"):
        collect_images_array(tmp_path, dispersion_axis=2)
    with pytest.raises(ValueError, match="gain must be a positive"):
        collect_images_array(tmp_path, gain=0)


def test_header_numbers_written_as_strings(tmp_path):
    write(tmp_path / "good.fits", gradient(4, 4), {"GAIN": "2.0", "RDNOISE": "3.5"})
    write(tmp_path / "b_bad.fits", gradient(4, 4), {"GAIN": "high"})
    inst = Instrument("s", gain_keyword="GAIN", read_noise_keyword="RDNOISE")
    images, meta = collect_images_array(tmp_path, tag="good", instrument=inst, return_metadata=True)
    assert meta[0]["gain"] == 2.0 and meta[0]["read_noise"] == 3.5
    np.testing.assert_allclose(images[0], gradient(4, 4) * 2.0)
    # A gain card that is no number (a gain setting's name, a placeholder) is left out, not the folder.
    with pytest.warns(UserWarning, match=r"GAIN = 'high' in b_bad\.fits is not a gain .*pass gain="):
        _, meta = collect_images_array(tmp_path, tag="b_bad", instrument=inst, return_metadata=True)
    assert meta[0]["gain"] is None


def test_mixed_electrons_and_adu_refused(tmp_path, isolated_registry):
    write(tmp_path / "a.fits", gradient(4, 4), {"GAIN": 2.0})
    write(tmp_path / "b_nogain.fits", gradient(4, 4))
    with pytest.raises(ValueError, match=r"b_nogain\.fits.*gain="):
        collect_images_array(tmp_path, instrument=Instrument("g", gain_keyword="GAIN"))


# ------------------------------------------------------------------ Goodman
GOODMAN_ROWS, GOODMAN_COLS = 947, 2030


@pytest.mark.goodman
@needs_goodman
def test_goodman_bias_full_frame_and_metadata():
    images, meta = collect_images_array(goodman_path() / "bias", instrument="goodman", return_metadata=True)
    assert images.shape == (5, GOODMAN_ROWS, GOODMAN_COLS)
    assert images.dtype == np.float64
    first = meta[0]
    assert first["hdu"] == 1 and first["file"] == "0056_BIAS_13-05-2023.fits.fz"
    assert first["gain"] == 1.4 and first["read_noise"] == 4.74 and first["unit"] == "electron"
    assert first["header"]["DATE-OBS"].startswith("2023-05-13") and first["header"]["EXPTIME"] == 0.0
    # Bias level about 481 ADU.
    assert 470 * 1.4 < np.median(images[0]) < 490 * 1.4


@pytest.mark.goodman
@needs_goodman
def test_goodman_crop_and_gain_against_raw_pixels():
    folder = goodman_path() / "spec_PKSJ0049_5738"
    science, meta = collect_images_array(folder, instrument="goodman", crop_bds=(680, 800), return_metadata=True)
    assert science.shape == (2, 120, GOODMAN_COLS)
    assert meta[0]["header"]["EXPTIME"] == 800
    with fits.open(meta[0]["path"]) as hdul:
        raw = hdul[1].data
        # TRIMSEC [26:2055,2:948]: output (r, c) is raw (1 + 680 + r, 25 + c).
        for r, c in [(0, 0), (60, 1000), (119, 2029)]:
            assert science[0, r, c] == pytest.approx(float(raw[681 + r, 25 + c]) * 1.4)


@pytest.mark.goodman
@needs_goodman
def test_goodman_average_lamp():
    arc, meta = average_matching_files(
        goodman_path() / "lamp", tag="comp", instrument="goodman", crop_bds=(680, 800), return_metadata=True
    )
    assert arc.shape == (120, GOODMAN_COLS) and len(meta) == 3
    assert arc.max() > 10 * np.median(arc)  # arc lines stand out


def test_every_other_file_as_science_leaves_out_flats_and_darks(tmp_path):
    """A bias/arc/flat/sci layout with no science tag: the flats are not science (by name or by IMAGETYP)."""
    from specwidgets.io.folder import load_folder

    rng = np.random.default_rng(0)

    def write(rel, imagetyp):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        header = fits.Header({"IMAGETYP": imagetyp})
        fits.writeto(path, rng.normal(100.0, 1.0, (8, 32)), header)

    write("arc/r0001.fits", "COMP")
    write("bias/r0002.fits", "BIAS")
    write("flat/r0003.fits", "FLAT")
    write("calib/r0004.fits", "DOMEFLAT")  # no word in its name: its IMAGETYP tells
    write("sci/r0005.fits", "OBJECT")
    write("sci/r0006.fits", "OBJECT")
    # A batch output kept in the data folder, in a folder whose name holds the arc tag.
    (tmp_path / "out_onearc").mkdir()
    fits.writeto(tmp_path / "out_onearc" / "r0005_sky.fits", np.zeros((8, 32)), fits.Header({"SWDONE": True}))
    data = load_folder(tmp_path)
    assert data.files["arc"] == ["arc/r0001.fits"]
    assert any(s.startswith("out_onearc/r0005_sky.fits: a specwidgets output") for s in data.skipped)
    assert data.files["science"] == ["sci/r0005.fits", "sci/r0006.fits"]
    assert any(s.startswith("flat/r0003.fits: flat in its name") for s in data.skipped)
    assert any(s.startswith("calib/r0004.fits: IMAGETYP = 'DOMEFLAT'") for s in data.skipped)
    # Words, not letters: a "darkcloud" folder is science.
    write("darkcloud/r0007.fits", "OBJECT")
    assert "darkcloud/r0007.fits" in load_folder(tmp_path).files["science"]
    (tmp_path / "darkcloud" / "r0007.fits").unlink()
    # A science tag takes what it names, flats included.
    assert load_folder(tmp_path, science_tag="r000").files["science"] == [
        "calib/r0004.fits", "flat/r0003.fits", "sci/r0005.fits", "sci/r0006.fits"]


@pytest.mark.parametrize(
    "cards, shape",
    [
        ({"TRIMSEC": "[1:28,2:9]"}, (8, 28)),  # an overscan of 4 columns and a row: trimmed
        ({"TRIMSEC": "[1:28,2:9]", "TRIM": "trimmed before"}, (10, 32)),  # IRAF's mark: kept as is
        ({"TRIMSEC": "[1:32,1:10]"}, (10, 32)),  # the whole frame
        ({"TRIMSEC": "[5:60,1:10]"}, (10, 32)),  # beyond the frame: a card kept through an earlier trim
        ({"TRIMSEC": "junk"}, (10, 32)),
        ({}, (10, 32)),
    ],
)
def test_generic_trims_to_a_smaller_trimsec_only(tmp_path, cards, shape):
    path = tmp_path / "f.fits"
    fits.writeto(path, np.arange(320.0).reshape(10, 32), fits.Header(cards))
    frame = instruments.get_instrument("generic").read(path)
    assert frame.data.shape == shape
    if shape == (8, 28):
        assert frame.data[0, 0] == 32.0  # FITS row 2, column 1
        # trimsec=None keeps every pixel.
        assert instruments.get_instrument("generic").with_options(trimsec=None).read(path).data.shape == (10, 32)


def test_generic_says_how_to_trim_a_smaller_datasec(tmp_path):
    path = tmp_path / "f.fits"
    fits.writeto(path, np.zeros((10, 32)), fits.Header({"DATASEC": "[1:28,1:10]"}))
    with pytest.warns(UserWarning, match=r"trimsec='\[1:28,1:10\]'") as caught:
        frame = instruments.get_instrument("generic").read(path)
    assert frame.data.shape == (10, 32) and caught[0].filename == __file__


def test_a_folder_of_only_calibrations_says_the_rest_are_flats(tmp_path):
    from specwidgets.io.folder import load_folder

    for name in ("arc_1.fits", "flat_1.fits", "flat_2.fits"):
        fits.writeto(tmp_path / name, np.ones((8, 32)))
    with pytest.raises(FileNotFoundError, match="left are not science frames .flat_1.fits: flat in its name"):
        load_folder(tmp_path, bias_tag="")


def test_the_median_of_arcs_of_different_lamps_warns_that_it_lost_their_lines(tmp_path):
    """Three arcs of three lamps: their median keeps almost no line; the loader says so (mode='sum' keeps them)."""
    from specwidgets.io.loading import average_matching_files

    rng = np.random.default_rng(4)
    cols = np.arange(400)
    centres = np.sort(rng.choice(np.arange(20, 380), 24, replace=False)).reshape(3, 8)
    for k, lamp in enumerate(centres):
        profile = sum(3000 * np.exp(-0.5 * ((cols - c) / 1.5) ** 2) for c in lamp)
        image = 500 + profile[None, :] + rng.normal(0, 5, (60, 400))
        fits.writeto(tmp_path / f"arc_{k}.fits", image.astype(np.float32))
    with pytest.warns(UserWarning, match=r"the median of these 3 frames loses \d+ line\(s\).*mode='sum'"):
        average_matching_files(tmp_path, tag="arc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summed = average_matching_files(tmp_path, tag="arc", mode="sum")
    assert summed.shape == (60, 400)
    # Three frames of one lamp (noise and rays apart): no warning.
    for k in range(3):
        image = 500 + sum(3000 * np.exp(-0.5 * ((cols - c) / 1.5) ** 2) for c in centres[0])[None, :]
        image = image + rng.normal(0, 5, (60, 400))
        image[rng.integers(0, 60, 5), rng.integers(0, 400, 5)] += 5000
        fits.writeto(tmp_path / f"same_{k}.fits", image.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        average_matching_files(tmp_path, tag="same")


def test_default_tags_take_arcs_and_biases_by_their_type_cards(tmp_path):
    """Numbered files whose type is in a card only (many instruments): the default tags find them."""
    from specwidgets.io.folder import load_folder

    rng = np.random.default_rng(1)

    def write(name, card, value):
        header = fits.Header()
        header[card] = value
        fits.writeto(tmp_path / name, rng.normal(100.0, 1.0, (8, 32)), header)

    write("r0001.fits", "IMAGETYP", "comp")
    write("r0002.fits", "IMAGETYP", "Line")
    write("r0003.fits", "HIERARCH ESO DPR TYPE", "LAMP,WAVE")
    write("r0004.fits", "OBSTYPE", "ZERO")
    write("r0005.fits", "IMAGETYP", "Bias Frame")
    write("r0006.fits", "OBSTYPE", "LAMPFLAT")  # a lamp flat is a flat, not an arc
    write("r0007.fits", "IMAGETYP", "object")
    write("r0008.fits", "IMAGETYP", "Light Frame")
    data = load_folder(tmp_path)
    assert data.files["arc"] == ["r0001.fits", "r0002.fits", "r0003.fits"]
    assert data.files["bias"] == ["r0004.fits", "r0005.fits"]
    assert data.files["science"] == ["r0007.fits", "r0008.fits"]
    assert any(s.startswith("r0006.fits: OBSTYPE = 'LAMPFLAT', a flat, so not science (a flat tag") for s in data.skipped)
    # A tag of the user's own matches paths only: the other arcs are then not science either.
    data = load_folder(tmp_path, arc_tag="r0001")
    assert data.files["arc"] == ["r0001.fits"]
    assert data.files["science"] == ["r0007.fits", "r0008.fits"]
    assert any(s.startswith("r0002.fits: IMAGETYP = 'Line', so not science") for s in data.skipped)
    # No arc by name or card: the message says both were looked for.
    for name in ("r0001.fits", "r0002.fits", "r0003.fits"):
        (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match="or a type card .* naming an arc frame"):
        load_folder(tmp_path)


def test_type_cards_are_read_in_the_header_of_the_image_read(tmp_path):
    """Files holding a preview in the primary HDU and the frame in a SCI extension whose header alone has the
    frame-type card: the frame is read from SCI, but the type was looked for in the primary header only, so
    the arcs and biases were taken as science (trial F1's layout)."""
    from specwidgets.io.folder import folder_files

    rng = np.random.default_rng(2)
    for name, kind in (("r1.fits", "COMP"), ("r2.fits", "ZERO"), ("r3.fits", "OBJECT"), ("r4.fits", "OBJECT")):
        preview = fits.PrimaryHDU(np.zeros((10, 10), "float32"))
        sci = fits.ImageHDU(rng.normal(100.0, 1.0, (40, 64)), fits.Header({"IMAGETYP": kind}), name="SCI")
        fits.HDUList([preview, sci]).writeto(tmp_path / name)
    roles, _ = folder_files(tmp_path)
    assert [p.name for p in roles["arc"]] == ["r1.fits"] and [p.name for p in roles["bias"]] == ["r2.fits"]
    assert [p.name for p in roles["science"]] == ["r3.fits", "r4.fits"]


def test_a_science_tag_takes_the_target_named_in_object(tmp_path):
    """Numbered files with the target in OBJECT only: a tag could not pick one target of two ("no science frame:
    no FITS file ... has 'SN2026abc' in its path"), so both were stacked (trial J1)."""
    from specwidgets.io.folder import load_folder

    rng = np.random.default_rng(2)

    def write(name, **cards):
        fits.writeto(tmp_path / name, rng.normal(100.0, 1.0, (8, 32)), fits.Header(cards))

    write("n0001.fits", IMAGETYP="comp", OBJECT="SN2026abc")  # an arc taken at the target: not science
    write("n0002.fits", IMAGETYP="object", OBJECT="SN2026abc")
    write("n0003.fits", IMAGETYP="object", OBJECT="SN 2026abc")
    write("n0004.fits", IMAGETYP="object", OBJECT="HD 12345")
    write("n0005.fits", IMAGETYP="flat", OBJECT="SN2026abc")  # a flat named after it: not science
    data = load_folder(tmp_path, science_tag="sn2026ABC", bias_tag="")
    assert data.files["arc"] == ["n0001.fits"]
    assert data.files["science"] == ["n0002.fits", "n0003.fits"]
    assert load_folder(tmp_path, science_tag="HD 12345", bias_tag="").files["science"] == ["n0004.fits"]
    with pytest.raises(FileNotFoundError, match="has 'M31' in its path or its OBJECT card"):
        load_folder(tmp_path, science_tag="M31", bias_tag="")


def test_folder_of_frames_whose_wavelength_runs_down_the_rows(tmp_path):
    """The page's folder form on a generic camera that stores the dispersion along y: turned by the arc,
    or by a DISPAXIS card; a crop counts the turned frames' rows."""
    from specwidgets.io.folder import load_folder
    from specwidgets.io.synthetic import make_synthetic_longslit

    frames = make_synthetic_longslit(shape=(40, 300), n_exposures=2, seed=4)
    for name, data in (("arc_1.fits", frames.arc), ("sci_1.fits", frames.science[0]), ("sci_2.fits", frames.science[1])):
        fits.writeto(tmp_path / name, np.asarray(data).T)
    data = load_folder(tmp_path, bias_tag="", crop_bds=(5, 35))
    assert data.science.shape == (2, 30, 300) and data.instrument_options == {"dispersion_axis": 0}
    np.testing.assert_allclose(data.science, np.asarray(frames.science)[:, 5:35])
    assert len(data.notes) == 1 and "lie along the rows (arc_1.fits" in data.notes[0]
    # Arcs of two lamps, the first with only 2 lines: their sum decides.
    lamps = make_synthetic_longslit(shape=(40, 300), n_exposures=1, seed=4, n_arc_lines=5, n_lamps=2).arc_lamps
    fits.writeto(tmp_path / "arc_1.fits", np.asarray(lamps[1]).T, overwrite=True)  # lines 1 and 3
    fits.writeto(tmp_path / "arc_2.fits", np.asarray(lamps[0]).T)
    data = load_folder(tmp_path, bias_tag="")
    assert data.instrument_options == {"dispersion_axis": 0} and "(arc_1.fits, arc_2.fits" in data.notes[0]
    (tmp_path / "arc_2.fits").unlink()
    fits.writeto(tmp_path / "arc_1.fits", np.asarray(frames.arc).T, overwrite=True)
    # A DISPAXIS card says how the frames lie: read by it, and no guess is made.
    for path in tmp_path.iterdir():
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["DISPAXIS"] = 2
    data = load_folder(tmp_path, bias_tag="")
    assert data.science.shape == (2, 40, 300) and data.instrument_options == {"dispersion_axis": 0}
    assert data.notes == []
    # The arcs' card decides for science frames that have none.
    for name in ("sci_1.fits", "sci_2.fits"):
        with fits.open(tmp_path / name, mode="update") as hdul:
            del hdul[0].header["DISPAXIS"]
    assert load_folder(tmp_path, bias_tag="").science.shape == (2, 40, 300)
    # As stored, the frames are as specwidgets wants them: nothing is turned.
    for name, data in (("arc_1.fits", frames.arc), ("sci_1.fits", frames.science[0])):
        fits.writeto(tmp_path / name, np.asarray(data), overwrite=True)
    (tmp_path / "sci_2.fits").unlink()
    data = load_folder(tmp_path, bias_tag="")
    assert data.science.shape == (1, 40, 300) and data.notes == []


@pytest.mark.parametrize("stored_turned", [False, True])
def test_folder_whose_dispaxis_card_the_arc_contradicts(tmp_path, stored_turned):
    """A DISPAXIS card the arc's own lines contradict (trial F1: frames stored as specwidgets wants them, with
    DISPAXIS = 2): the page turned them by the card, then failed to find a line and advised dispersion_axis=0,
    the way they were read. The lines decide, the note names the card and the option that follows it; a card
    the lines agree with is followed silently (above)."""
    from specwidgets.io.folder import load_folder
    from specwidgets.io.synthetic import make_synthetic_longslit

    frames = make_synthetic_longslit(shape=(40, 300), n_exposures=2, seed=4)
    names = ("arc_1.fits", "sci_1.fits", "sci_2.fits")
    for name, data in zip(names, (frames.arc, *frames.science)):
        # Stored turned with a card saying "along x" (1), or as wanted with one saying "along y" (2).
        stored = np.asarray(data).T if stored_turned else np.asarray(data)
        fits.writeto(tmp_path / name, stored, fits.Header({"DISPAXIS": 1 if stored_turned else 2}))
    data = load_folder(tmp_path, bias_tag="")
    assert data.science.shape == (2, 40, 300)
    np.testing.assert_allclose(data.science, np.asarray(frames.science))
    assert data.instrument_options == {"dispersion_axis": 0 if stored_turned else 1}
    assert len(data.notes) == 1 and f"the DISPAXIS = {1 if stored_turned else 2} card of arc_1.fits" in data.notes[0]
    assert "the card is not followed" in data.notes[0]
    assert f"pass dispersion_axis={1 if stored_turned else 0} to follow the card" in data.notes[0]


def test_a_right_dispaxis_card_stays_followed_beside_hot_columns(tmp_path):
    """A correct DISPAXIS = 2 card, an arc of 2 lines and 12 hot detector columns (trial A3): read by the card,
    the hot columns are 12 bright rows of one pixel each, which outnumbered the arc's lines, so the card was
    taken for contradicted and every frame turned. Lines are wider than a row; a hot column is not."""
    from specwidgets.io.folder import load_folder
    from specwidgets.io.synthetic import make_synthetic_longslit

    f = make_synthetic_longslit(shape=(120, 800), n_arc_lines=2, arc_peak=(3000.0, 5000.0), seed=0)
    hot = np.random.default_rng(0).choice(np.arange(10, 110), 12, replace=False)
    for name, image in (("arc_0.fits", f.arc), ("sci_0.fits", f.science[0])):
        image = np.asarray(image, float) + 300.0
        image[hot, :] += 3000.0  # (rows as read; columns as stored, transposed below)
        fits.writeto(tmp_path / name, image.T.astype(np.float32), fits.Header({"DISPAXIS": 2}))
    data = load_folder(tmp_path, bias_tag="")
    assert data.science.shape[-2:] == (120, 800) and data.instrument_options == {"dispersion_axis": 0}
    assert not any("DISPAXIS" in note for note in data.notes)


def test_dispaxis_card_of_the_generic_instrument(tmp_path):
    from specwidgets.io.loading import read_frame

    image = np.arange(12.0).reshape(3, 4)
    for value, shape in ((1, (3, 4)), (2, (4, 3)), ("2", (4, 3)), (2.0, (4, 3)), (1.0, (3, 4))):
        path = tmp_path / f"f{value}.fits"
        fits.writeto(path, image, fits.Header({"DISPAXIS": value}), overwrite=True)
        assert read_frame(path).shape == shape
        # An explicit dispersion_axis is the user's word, over the card.
        assert read_frame(path, dispersion_axis=1).shape == (3, 4)
    fits.writeto(tmp_path / "bad.fits", image, fits.Header({"DISPAXIS": 3}))
    with pytest.raises(ValueError, match="DISPAXIS = 3 in bad.fits: must be 1"):
        read_frame(tmp_path / "bad.fits")


def test_frames_read_in_different_orientations_are_named_as_such(tmp_path):
    """Spectra with DISPAXIS = 2 and bias frames without it (the README's ``science - bias``): the error
    says the frames were read turned one against the other and which option reads them alike (trial L2:
    it spoke of crops and binning)."""
    rng = np.random.default_rng(0)
    for i in range(2):
        fits.writeto(tmp_path / f"bias_{i}.fits", rng.normal(300, 4, (40, 12)).astype(np.float32))
        fits.writeto(tmp_path / f"sci_{i}.fits", rng.normal(400, 4, (40, 12)).astype(np.float32),
                     fits.Header({"DISPAXIS": 2}))
    science = collect_images_array(tmp_path, "sci_")
    bias = average_matching_files(tmp_path, "bias_")
    with pytest.raises(ValueError, match=r"one is the other turned.*DISPAXIS 2; no DISPAXIS card.*dispersion_axis=0"):
        science - bias
    fixed = collect_images_array(tmp_path, "sci_", dispersion_axis=0) - average_matching_files(
        tmp_path, "bias_", dispersion_axis=0)
    assert fixed.shape == (2, 12, 40)


def test_each_frames_overscan_level_is_subtracted(tmp_path):
    """BIASSEC: each frame's own bias level (it drifts between frames) comes off before anything else.

    Left in, a drift of +4/-15/-7 ADU against the master bias went into the
    sky (1.6 sigma RMS) and its variance (26 % low), "good".
    """
    from specwidgets.io.loading import read_frame

    image = np.full((6, 12), 100.0, np.float32)
    image[:, 10:] = 1000.0 + np.arange(6)[:, None]  # the overscan strip: the level and a little noise
    image[:, :10] += 1000.0
    cards = {"BIASSEC": "[11:12,1:6]", "TRIMSEC": "[1:10,1:6]"}
    path = write(tmp_path / "a.fits", image, cards)
    frame = read_frame(path)
    assert frame.shape == (6, 10)
    np.testing.assert_allclose(np.asarray(frame), 100.0 - 2.5)  # the overscan's median, 1002.5
    assert any("overscan BIASSEC [11:12,1:6] median 1002.5" in str(h) for h in frame.header["HISTORY"])
    # An overscan inside the part kept (no TRIMSEC, so every pixel is kept) is not subtracted from itself;
    # nor one outside the stored image (a frame trimmed already).
    for cards in ({"BIASSEC": "[11:12,1:6]"}, {"BIASSEC": "[20:24,1:6]", "TRIMSEC": "[1:10,1:6]"}):
        frame = read_frame(write(tmp_path / "b.fits", image, cards))
        assert float(np.asarray(frame)[0, 0]) == 1100.0 and "HISTORY" not in frame.header
    # Kept, but a DATASEC says it is not data: the level comes off all the same (trial B1: each frame's
    # +-7 e- offset from the master bias went into its sky, "good"; the warning asks for trimsec).
    cards = {"BIASSEC": "[11:12,1:6]", "DATASEC": "[1:10,1:6]"}
    with pytest.warns(UserWarning, match="DATASEC"):
        frame = read_frame(write(tmp_path / "c.fits", image, cards))
    assert frame.shape == (6, 12)
    np.testing.assert_allclose(np.asarray(frame)[:, :10], 100.0 - 2.5)
    assert any("overscan BIASSEC [11:12,1:6] median 1002.5 subtracted (its" in str(h)
               for h in frame.header["HISTORY"])
    # A BIASSEC inside the DATASEC (a wrong card) is no overscan: nothing comes off.
    frame = read_frame(write(tmp_path / "d.fits", image, {"BIASSEC": "[9:10,1:6]", "DATASEC": "[1:10,1:6]"}))
    assert float(np.asarray(frame)[0, 0]) == 1100.0


def test_a_stack_of_frames_of_several_kinds_is_named(tmp_path):
    """Files whose names do not say their kind (N20261129S0101.fits ...): bias, arc and science frames
    were stacked as one, and fit as science, without a word (and the median's lost-lines warning
    blamed arcs of different lamps)."""
    for i, kind in enumerate(["BIAS", "BIAS", "ARC", "OBJECT", "OBJECT"]):
        write(tmp_path / f"N0{i}.fits", gradient(4, 6, offset=i), {"OBSTYPE": kind})
    with pytest.warns(UserWarning, match=r"of 3 kinds .*2 bias \(N00\.fits, \.\.\.\); 1 arc \(N02\.fits\); 2 science"):
        collect_images_array(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert collect_images_array(tmp_path, ignore=["N00", "N01", "N02"]).shape == (2, 4, 6)
    # A list of files is not a folder: said so, with the way to read them.
    with pytest.raises(TypeError, match=r"path is a list of 2 item\(s\).*read_frame"):
        collect_images_array([tmp_path / "N03.fits", tmp_path / "N04.fits"])


def test_a_gain_card_the_instrument_does_not_read_is_named(tmp_path):
    """CCDGAIN = 1.4 where generic reads GAIN/EGAIN: the gain was estimated from the sky (1.19-1.33)
    without a word; now the card is named, with the option that takes it."""
    from specwidgets.io.loading import read_frame

    path = write(tmp_path / "a.fits", gradient(4, 6), {"CCDGAIN": 1.4, "RDNOISE": 5.0})
    with pytest.warns(UserWarning, match=r"CCDGAIN = 1\.4, but instrument 'generic' reads the gain from "
                                         r"GAIN/EGAIN/ESO DET OUT1 CONAD: pass gain=1\.4 \(batch: --gain 1\.4\)"):
        frame = read_frame(path)
    assert frame.gain is None and frame.read_noise == 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given, or read: no word
        assert read_frame(path, gain=1.4).gain == 1.0
        read_frame(write(tmp_path / "b.fits", gradient(4, 6), {"GAIN": 1.4, "CCDGAIN": 1.4}))


# ------------------------------------------------------------------ bad pixels (DQ extensions, mask files)
def _sci_dq_file(path, data, dq, header=None):
    sci = fits.ImageHDU(data, fits.Header(header or {}), name="SCI", ver=1)
    fits.HDUList([fits.PrimaryHDU(), sci, fits.ImageHDU(np.ones_like(data), name="VAR", ver=1),
                  fits.ImageHDU(dq, name="DQ", ver=1)]).writeto(path, overwrite=True)
    return path


def test_a_dq_extension_is_named_until_applied_then_its_pixels_are_nan(tmp_path):
    """A pipeline's data-quality plane was read past in silence: its bad pixels went into the sky fit."""
    from specwidgets.io.loading import read_frame

    data = gradient(6, 12).astype(np.float32)
    dq = np.zeros((6, 12), np.int16)
    dq[2, 3] = 1
    dq[:, 7] = 4
    _sci_dq_file(tmp_path / "g.fits", data, dq)
    with pytest.warns(UserWarning, match=r"frames have a DQ extension \(data quality\) that is not applied: pass bad_pixels='DQ' "
                                         r"\(batch: --bad-pixels DQ\)"):
        plain = read_frame(tmp_path / "g.fits")
    assert np.isfinite(plain).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = read_frame(tmp_path / "g.fits", bad_pixels="dq")  # EXTNAMEs in any case
    np.testing.assert_array_equal(np.isnan(frame), dq != 0)
    np.testing.assert_array_equal(np.asarray(frame)[dq == 0], data[dq == 0])
    assert any("7 pixels flagged in the DQ extension set to NaN" in str(h) for h in frame.header["HISTORY"])
    # The loaders take it as they take the other instrument options.
    assert np.isnan(collect_images_array(tmp_path, bad_pixels="DQ")).sum() == 7


def test_a_mask_file_is_applied_in_the_stored_or_the_read_layout(tmp_path):
    """A detector's bad-pixel mask is kept as the raw file is stored; a mask made on read frames has their
    shape. Both mark the same pixels of a frame stored transposed (DISPAXIS = 2) and trimmed."""
    from specwidgets.io.loading import read_frame

    stored = gradient(14, 6).astype(np.float32)  # dispersion along y: read as 6 x 12 after the trim
    write(tmp_path / "t.fits", stored, {"DISPAXIS": 2, "TRIMSEC": "[1:6,2:13]"})
    bad_stored = np.zeros((14, 6), np.uint8)
    bad_stored[5, 2] = bad_stored[9, 0] = bad_stored[0, 4] = 1  # the last is trimmed away
    write(tmp_path / "m_stored.fits", bad_stored)
    write(tmp_path / "m_read.fits", bad_stored[1:13].T.copy())
    expected = bad_stored[1:13].T != 0
    for mask in ("m_stored.fits", "m_read.fits"):
        frame = read_frame(tmp_path / "t.fits", bad_pixels=tmp_path / mask)
        assert frame.shape == (6, 12)
        np.testing.assert_array_equal(np.isnan(frame), expected)
    write(tmp_path / "m_other.fits", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"bad-pixel mask m_other\.fits of t\.fits has shape \(5, 5\); the stored "
                                         r"image is \(14, 6\) and the frame read \(6, 12\)"):
        read_frame(tmp_path / "t.fits", bad_pixels=tmp_path / "m_other.fits")
    with pytest.raises(FileNotFoundError, match="bad_pixels mask file .*nothing.fits does not exist"):
        read_frame(tmp_path / "t.fits", bad_pixels=tmp_path / "nothing.fits")
    with pytest.raises(ValueError, match=r"t\.fits has no DQ extension for bad_pixels \(its HDUs: 0: PRIMARY\)"):
        read_frame(tmp_path / "t.fits", bad_pixels="DQ")
    with pytest.raises(TypeError, match="bad_pixels must be a data-quality EXTNAME"):
        read_frame(tmp_path / "t.fits", bad_pixels=3)


def test_frames_of_another_binning_in_a_folder_are_named_with_their_binning(tmp_path):
    """A folder mixing 1x1 biases with 2x2 science frames: the shape error now shows each shape's CCDSUM and
    says what to do, as ``science - bias`` does (trial K1)."""
    from specwidgets.io.folder import load_folder

    rng = np.random.default_rng(0)
    for i in range(2):
        fits.writeto(tmp_path / f"bias_{i}.fits", rng.normal(300, 4, (60, 200)).astype(np.float32),
                     fits.Header({"CCDSUM": "1 1"}))
    fits.writeto(tmp_path / "arc_0.fits", rng.normal(300, 4, (30, 100)).astype(np.float32),
                 fits.Header({"CCDSUM": "2 2"}))
    fits.writeto(tmp_path / "sci_0.fits", rng.normal(300, 4, (30, 100)).astype(np.float32),
                 fits.Header({"CCDSUM": "2 2"}))
    with pytest.raises(ValueError, match=r"30 x 100 \(CCDSUM '2 2'\): arc_0.fits, sci_0.fits; 60 x 200 \(CCDSUM "
                                         r"'1 1'\): bias_0.fits, bias_1.fits\): frames of another binning\? Use "
                                         r"calibrations of the science"):
        load_folder(tmp_path)


# ------------------------------------------------------------------ header conventions of other observatories (trial H)
def _hdr(cards):
    """A header from ``(key, value, comment)`` triples (HIERARCH keywords included)."""
    header = fits.Header()
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header


@pytest.mark.parametrize("cards, gain, read_noise, source", [
    # ESO: CONAD is e-/ADU; DET OUT1 GAIN is ADU/e-; RON is in electrons.
    ([("HIERARCH ESO DET OUT1 GAIN", 0.5, "Conversion from electrons to ADU"),
      ("HIERARCH ESO DET OUT1 CONAD", 2.0, "Conversion from ADUs to electrons"),
      ("HIERARCH ESO DET OUT1 RON", 5.0, "Readout noise per output (e-)")], 2.0, 5.0, "CONAD"),
    ([("HIERARCH ESO DET OUT1 GAIN", 0.5, "Conversion from electrons to ADU"),
      ("HIERARCH ESO DET OUT1 RON", 5.0, "Readout noise per output (e-)")], 2.0, 5.0, "inverted"),
    ([("INVGAIN", 0.5, "ADU per electron")], 2.0, None, "inverted"),
    ([("GAIN", 0.5, "[ADU/e-]"), ("RDNOISE", 6.0, "[e-]")], 2.0, 6.0, "inverted"),
    # A read noise in ADU: times the gain (it had been taken as electrons, VAR 27 % low, "good").
    ([("GAIN", 2.0, "[e-/ADU]"), ("RDNOISE", 2.5, "[ADU]")], 2.0, 5.0, "ADU, times the gain"),
    # Numbers written with their units.
    ([("GAIN", "2.0 e-/ADU", ""), ("RDNOISE", "5.0 e-", "")], 2.0, 5.0, "GAIN"),
    # In electrons already, and no gain card: their gain is 1 (it was estimated).
    ([("BUNIT", "electrons", "")], 1.0, None, "BUNIT"),
])
def test_noise_cards_of_other_observatories(tmp_path, cards, gain, read_noise, source):
    """Trial H: header conventions the loader had read wrong (an ADU read noise as electrons, an inverse
    gain advised as the gain) or not at all (ESO's CONAD and RON, numbers with their units)."""
    fits.PrimaryHDU(gradient(4, 6), _hdr(cards)).writeto(tmp_path / "a.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read, not advised
        images, meta = collect_images_array(tmp_path, return_metadata=True)
    assert meta[0]["gain"] == pytest.approx(gain)
    np.testing.assert_allclose(images[0], gradient(4, 6) * gain)
    assert (meta[0]["read_noise"] is None) if read_noise is None else meta[0]["read_noise"] == pytest.approx(read_noise)
    assert source in meta[0]["noise_source"], meta[0]["noise_source"]


@pytest.mark.parametrize("cards, what", [
    ([("GAIN", 0.0, "placeholder"), ("RDNOISE", 5.0, "")], "gain"),
    ([("GAIN", "HIGH", "gain setting"), ("RDNOISE", 5.0, "")], "gain"),
    ([("GAIN", 2.0, ""), ("RDNOISE", 0.0, "")], "read noise"),
])
def test_placeholder_noise_cards_are_left_out_with_a_word(tmp_path, cards, what):
    """GAIN = 0 (a placeholder) had refused the whole folder, in batch with no way out; now the card is
    named and left out, and the noise model estimated."""
    from specwidgets.io.loading import read_frame

    path = tmp_path / "a.fits"
    fits.PrimaryHDU(gradient(4, 6), _hdr(cards)).writeto(path)
    with pytest.warns(UserWarning, match=f"in a.fits is not a {what} .*estimated from the data"):
        frame = read_frame(path)
    assert (frame.gain if what == "gain" else frame.read_noise) is None


def test_a_read_noise_in_adu_without_a_gain_is_left_out(tmp_path):
    from specwidgets.io.loading import read_frame

    path = tmp_path / "a.fits"
    fits.PrimaryHDU(gradient(4, 6), _hdr([("RDNOISE", 2.5, "[ADU]")])).writeto(path)
    with pytest.warns(UserWarning, match=r"RDNOISE = 2.5 in a.fits is in ADU .* no gain"):
        frame = read_frame(path)
    assert frame.read_noise is None and frame.gain is None


def test_an_inverse_gain_card_not_read_is_advised_inverted(tmp_path):
    """A card in ADU/e- the instrument does not read: the advice is its inverse (it said the card's value)."""
    from specwidgets.io.loading import read_frame

    path = tmp_path / "a.fits"
    fits.PrimaryHDU(gradient(4, 6), _hdr([("CCDGAIN", 0.5, "ADU/e-")])).writeto(path)
    with pytest.warns(UserWarning, match=r"CCDGAIN = 0.5 \(ADU/e-, i.e. 2 e-/ADU\).*pass gain=2 \(batch: --gain 2\)"):
        read_frame(path)


def test_amplifiers_under_names_of_their_own_are_refused(tmp_path):
    """Four amplifier images AMP1..AMP4 without DETSEC: the first had been read as the whole exposure,
    a quarter of the detector, with no word."""
    from specwidgets.io.loading import read_frame

    path = tmp_path / "amps.fits"
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(gradient(4, 6), name=f"AMP{i}") for i in range(1, 5)]
                 ).writeto(path)
    with pytest.raises(ValueError, match=r"holds 4 images of one exposure \(1: AMP1, 2: AMP2, 3: AMP3, 4: AMP4\)"):
        read_frame(path)
    assert read_frame(path, hdu="AMP2").data.shape == (4, 6)
    # A pipeline's science image and its companions are one frame.
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(gradient(4, 6), name="SCI"), fits.ImageHDU(gradient(4, 6), name="ERR"),
                  fits.ImageHDU(np.zeros((4, 6), np.int16), name="DQ")]).writeto(tmp_path / "sci.fits")
    with pytest.warns(UserWarning, match="DQ extension"):
        np.testing.assert_allclose(read_frame(tmp_path / "sci.fits"), gradient(4, 6))
