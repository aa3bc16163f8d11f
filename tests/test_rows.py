"""RowRanges: the one row-range value (text, pairs, headers; resolve; validate; print back)."""

import pickle

import numpy as np
import pytest
from astropy.io import fits

from specwidgets.core.rows import RowRanges


@pytest.mark.parametrize(
    "given, pairs",
    [
        ("20:100, 104:113", ((20, 100), (104, 113))),
        ("20:100;104..113", ((20, 100), (104, 113))),
        ("5:", ((5, None),)),
        (":12", ((None, 12),)),
        ("", ()),
        ("none", ()),
        ((20, 100), ((20, 100),)),
        ((None, None), ()),
        (None, ()),
        ([], ()),
        ([(6, 8), (1, 3)], ((6, 8), (1, 3))),
        ([[6, 8], "1:3"], ((6, 8), (1, 3))),
        (np.array([[1, 3], [6, 8]]), ((1, 3), (6, 8))),
        ((np.int64(2), np.int32(5)), ((2, 5),)),
    ],
)
def test_forms(given, pairs):
    ranges = RowRanges(given)
    assert ranges.pairs == pairs
    assert all(type(v) is int for p in ranges for v in p if v is not None)


@pytest.mark.parametrize("text", ["20:100,104:113", "5:", ":12", "none", "3:4,3:9"])
def test_prints_back_to_the_same_text(text):
    assert RowRanges(text).text == text
    assert RowRanges(RowRanges(text).text) == RowRanges(text)


def test_resolve_sorts_merges_and_fills_ends():
    r = RowRanges("40:, 10:20, 15:25, 25:30").resolve(60)
    # 10:20 and 15:25 share rows: one range; 25:30 only touches it: kept apart.
    assert r.pairs == ((10, 25), (25, 30), (40, 60)) and r.n_rows == 60
    assert r.resolve(60) is r  # already resolved: the same object
    assert r.resolve(80) == [(10, 25), (25, 30), (40, 60)] and r.resolve(80).n_rows == 80
    assert r.rows().sum() == 40 and r.rows(80).sum() == 40
    assert RowRanges().resolve(10).rows().sum() == 0


@pytest.mark.parametrize(
    "given, n_rows, error, words",
    [
        ("100:20", None, ValueError, "reversed"),
        ((3, 3), None, ValueError, "empty"),
        ((-1, 4), None, ValueError, "out of range: rows count from 0"),
        ("-5:", None, ValueError, "out of range"),
        ("rows 3 to 5", None, ValueError, "not row-range text"),
        ("3:4:5", None, ValueError, "not row-range text"),
        ((1.5, 3), None, TypeError, "pair of row indices"),
        ([(1, 2), 3], None, TypeError, "the item 3"),
        ((True, 3), None, TypeError, "pair"),
        ((2, 11), 10, ValueError, "out of range: the images have 10 rows"),
        ("10:", 10, ValueError, "out of range"),
        ([(0, 6), (5, 10)], 10, ValueError, "covers every one of the 10 rows"),
        ("2:4", 0, TypeError, "n_rows must be a positive integer"),
    ],
)
def test_refused(given, n_rows, error, words):
    with pytest.raises(error, match=words):
        RowRanges(given, n_rows)


def test_names_the_argument():
    with pytest.raises(ValueError, match="crop rows"):
        RowRanges.parse("9:2", "crop rows")
    with pytest.raises(TypeError, match="masks"):
        RowRanges.coerce("20:30", "masks", text=False)
    assert RowRanges.coerce(r := RowRanges("1:2")) is r


def test_equality_hash_and_immutability():
    a, b = RowRanges("1:3, 6:8"), RowRanges([(1, 3), (6, 8)])
    assert a == b and hash(a) == hash(b) and a == [(1, 3), (6, 8)] and a == ((1, 3), (6, 8))
    assert a != RowRanges("1:3") and a != "1:3, 6:8" and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.extra = 1
    with pytest.raises(TypeError):
        a[0] = (2, 3)
    assert a.replace(1, (7, 9)) == [(1, 3), (7, 9)] and a == [(1, 3), (6, 8)]
    assert a.replace(2, (10, 12)) == [(1, 3), (6, 8), (10, 12)] and a.remove(0) == [(6, 8)]
    assert a.index_of(7) == 1 and a.index_of(4) is None


def test_pickles_resolved():
    r = RowRanges("5:9").resolve(20)
    back = pickle.loads(pickle.dumps(r))
    assert back == r and back.n_rows == 20 and back.resolve(20) is back


def test_fits_header_round_trip(tmp_path):
    r = RowRanges("20:100,104:113")
    header = fits.Header()
    header["SWMASK"] = r.header_value()
    fits.PrimaryHDU(header=header).writeto(tmp_path / "h.fits")
    assert RowRanges.from_header(fits.getheader(tmp_path / "h.fits")) == r
    assert RowRanges.from_header("none") == RowRanges()
    with pytest.raises(ValueError, match="no SWMASK card"):
        RowRanges.from_header(fits.Header())


@pytest.mark.parametrize("n_ranges", [1, 5, 12])
def test_the_output_header_holds_many_ranges_without_a_warning(tmp_path, n_ranges):
    """Five mask ranges (a standard star's frame with its neighbours masked) made astropy warn "Card is
    too long, comment will be truncated" on each file written; twelve go on CONTINUE cards."""
    import warnings

    import specwidgets as sw
    from specwidgets.io.fits_output import sky_header

    f = sw.datasets.make_synthetic_longslit(shape=(120, 256), seed=1)
    ranges = RowRanges([(8 * i, 8 * i + 4) for i in range(n_ranges)])
    res = sw.fit_sky(f.science, f.warp, ranges, read_noise=f.read_noise, gain=1.0, spatial_order=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        header = sky_header(res)
        fits.PrimaryHDU(header=header).writeto(tmp_path / "h.fits")
    assert RowRanges.from_header(fits.getheader(tmp_path / "h.fits")) == ranges


def test_the_seed_function_uses_it():
    from specwidgets.core.inputs import mask_ranges, mask_rows

    assert mask_ranges([(6, 8), (1, 3), (2, 4)], 10) == [(1, 4), (6, 8)]
    assert mask_rows(RowRanges("1:3"), 5).tolist() == [False, True, True, False, False]


def test_fit_sky_result_holds_the_value_it_was_given():
    from specwidgets import fit_sky
    from specwidgets.io.synthetic import make_synthetic_longslit

    frames = make_synthetic_longslit(shape=(40, 200), n_arc_lines=8, seed=3)
    mask = RowRanges([frames.trace_rows]).resolve(40)
    result = fit_sky(frames.science, frames.warp, mask, method="median")
    assert result.mask_region is mask
    assert fit_sky(frames.science, frames.warp, [frames.trace_rows], method="median").mask_region == mask
